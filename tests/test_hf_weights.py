"""Hugging Face transformers TimeSformer snapshots: load, equal logits, export, bad input.

The snapshots are small random models that transformers itself builds from a
``TimesformerConfig`` and writes with ``save_pretrained`` (no download). Skipped when
transformers is not installed (it is in the ``dev`` extra only).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ired_video import CheckpointError, ConfigError, create_model
from ired_video.cli import main as cli_main
from ired_video.commands.export import main as export_main
from ired_video.commands.infer import main as infer_main
from ired_video.inference import decode_views
from ired_video.models.hf_weights import save_snapshot
from ired_video.reducers import apply_reducer

transformers = pytest.importorskip("transformers")

NAMES = ["abseiling", "air drumming", "answering questions", "applauding", "applying cream"]
REAL_CLIP = Path("/work/shared/testdata/videos/arm_wrestling_340x256_28fps.mp4")


def _hf_model(attention: str = "divided_space_time", head: bool = True, seed: int = 0, **overrides):
    """A random transformers TimeSformer, every tensor perturbed so none is trivially zero or one."""
    torch.manual_seed(seed)
    values = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=96, attention_type=attention,
                  id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    config = transformers.TimesformerConfig(**{**values, **overrides})
    cls = transformers.TimesformerForVideoClassification if head else transformers.TimesformerModel
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _snapshot(folder: Path, hf_model, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225)) -> Path:
    """save_pretrained, plus the preprocessor file the hub's TimeSformer snapshots carry."""
    hf_model.save_pretrained(folder)
    size = hf_model.config.image_size
    transformers.VideoMAEImageProcessor(
        image_mean=list(mean), image_std=list(std), size={"shortest_edge": size + 8},
        crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def _hf_logits(hf_model, video: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = hf_model(pixel_values=video.transpose(1, 2))  # ours (B, C, T, H, W) -> theirs (B, T, C, H, W)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state[:, 0]


@pytest.mark.parametrize("attention,extra", [
    ("divided_space_time", {}), ("joint_space_time", {}), ("divided_space_time", {"qkv_bias": False}),
    ("divided_space_time", {"layer_norm_eps": 0.5}), ("joint_space_time", {"layer_norm_eps": 0.5})])
def test_snapshot_logits_equal_transformers(tmp_path, attention, extra):
    hf = _hf_model(attention, **extra)
    model = create_model(checkpoint=_snapshot(tmp_path / "snap", hf, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)))
    model.eval()
    cfg = model.config
    assert (cfg.attention_type, cfg.img_size, cfg.patch_size, cfg.num_frames, cfg.embed_dim, cfg.depth,
            cfg.num_heads, cfg.mlp_ratio, cfg.num_classes) == (attention, 32, 8, 4, 32, 2, 2, 3.0, 5)
    assert cfg.qkv_bias == extra.get("qkv_bias", True) and cfg.layer_norm_eps == extra.get("layer_norm_eps", 1e-6)
    assert model.blocks[1].norm2.eps == cfg.layer_norm_eps and model.norm.eps == cfg.layer_norm_eps
    data = model.data_config
    assert data.class_names == NAMES
    assert (data.mean, data.std, data.crop_size, data.test_short_side, data.num_frames) == \
        ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 32, 40, 4)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model(video)
    torch.testing.assert_close(ours, _hf_logits(hf, video), atol=1e-4, rtol=0)


def test_space_only_transformers_classifies_each_frame(tmp_path):
    """transformers' space-only model returns one logit row per frame (B*T rows, never
    averaged); each equals our model on that frame alone. Our clip logits average the
    class tokens over frames before the final norm, as the official model (docs/weights.md)."""
    hf = _hf_model("space_only")
    model = create_model(checkpoint=_snapshot(tmp_path / "snap", hf)).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    theirs = _hf_logits(hf, video)
    assert theirs.shape == (8, 5)
    with torch.no_grad():
        per_frame = torch.stack([model(video[:, :, t:t + 1]) for t in range(4)], dim=1)  # (B, T, classes)
    torch.testing.assert_close(per_frame.reshape(8, 5), theirs, atol=1e-4, rtol=0)


def test_backbone_only_snapshot(tmp_path):
    """A TimesformerModel snapshot (no classifier) gives the final class-token feature."""
    hf = _hf_model(head=False)
    hf.save_pretrained(tmp_path / "snap")
    model = create_model(checkpoint=tmp_path / "snap").eval()
    assert model.config.num_classes == 0 and model.data_config.class_names == []
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(video), _hf_logits(hf, video), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", ["pytorch_model.bin", "sharded", "weights_file", "weights_file_alone"])
def test_weight_file_layouts(tmp_path, layout):
    hf = _hf_model()
    folder = tmp_path / "snap"
    video = torch.randn(1, 3, 4, 32, 32)
    if layout == "sharded":
        hf.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
        model = create_model(checkpoint=folder)
    elif layout == "pytorch_model.bin":  # what transformers 4 wrote: torch.save of the state dict
        hf.save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
        model = create_model(checkpoint=folder)
    elif layout == "weights_file":  # the weights file inside a snapshot: its config.json is used
        hf.save_pretrained(folder)
        model = create_model(checkpoint=folder / "model.safetensors")
        assert model.data_config.class_names == NAMES
    else:  # the weights file alone: weights only, the architecture from a name and overrides
        hf.save_pretrained(folder)
        alone = tmp_path / "alone.safetensors"
        (folder / "model.safetensors").rename(alone)
        with pytest.raises(ConfigError, match="create_model needs a model name"):
            create_model(checkpoint=alone)
        model = create_model("timesformer_test", checkpoint=alone, embed_dim=32, mlp_ratio=3.0)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(video), _hf_logits(hf, video), atol=1e-4, rtol=0)


@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="shared test clip absent")
def test_real_clip_logits_and_infer_prints_label_names(tmp_path, capsys):
    """A real clip preprocessed as the snapshot says: our logits equal transformers', and
    ``ired-video infer`` prints the snapshot's id2label names."""
    hf = _hf_model()
    folder = _snapshot(tmp_path / "snap", hf)
    model = create_model(checkpoint=folder).eval()
    video = decode_views(REAL_CLIP, model.data_config).videos  # (1, C, T, H, W)
    assert video.shape == (1, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model(video)
    theirs = _hf_logits(hf, video)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    out = tmp_path / "preds.json"
    assert infer_main([str(REAL_CLIP), "--checkpoint", str(folder), "--top-k", "2", "--no-progress",
                       "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    prediction = doc["videos"][0]["prediction"]
    assert prediction["label"] == NAMES[int(theirs.argmax())]
    assert prediction["label"] in capsys.readouterr().out


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time"])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, attention):
    torch.manual_seed(1)
    model = create_model("timesformer_test", attention_type=attention, layer_norm_eps=1e-5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.data_config.class_names = NAMES
    model.data_config.mean, model.data_config.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    apply_reducer(model, "topk", keep=0.5)  # a run-time option: not written
    written = save_snapshot(model, tmp_path / "out")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert not any(k.startswith("reducers") for k in load_file(tmp_path / "out" / "model.safetensors"))
    hf = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.id2label == dict(enumerate(NAMES)) and hf.config.layer_norm_eps == 1e-5
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.crop_size["height"] == 32
    video = torch.randn(2, 3, 4, 32, 32)
    model.reducers.clear()
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, video), model(video), atol=1e-4, rtol=0)
    again = create_model(checkpoint=tmp_path / "out").eval()
    assert again.data_config.class_names == NAMES and again.data_config.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(again(video), model(video), atol=1e-6, rtol=0)


def test_export_refuses_trained_reducer_and_existing_files(tmp_path):
    model = create_model("timesformer_test")
    save_snapshot(model, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds config.json, preprocessor_config.json, model.safetensors"):
        save_snapshot(model, tmp_path / "out")
    save_snapshot(model, tmp_path / "out", overwrite=True)
    apply_reducer(model, "iared2", keep=0.5)
    with pytest.raises(ConfigError, match="reducer has trained parameters"):
        save_snapshot(model, tmp_path / "other")


def test_export_command_from_a_snapshot_and_back(tmp_path, capsys):
    hf = _hf_model("joint_space_time")
    folder = _snapshot(tmp_path / "snap", hf)
    ours = tmp_path / "ours.pth"
    assert export_main(["--checkpoint", str(folder), "--format", "ired_video", "--out", str(ours)]) == 0
    assert export_main(["--checkpoint", str(ours), "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert "5 classes (abseiling, air drumming, answering questions, ...)" in capsys.readouterr().out
    back = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    video = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(_hf_logits(back, video), _hf_logits(hf, video), atol=1e-5, rtol=0)
    assert export_main(["--checkpoint", str(ours), "--format", "ired_video", "--out", str(ours)]) == 2
    assert "already exists (--force to replace)" in capsys.readouterr().err


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes,message", [
    ({"model_type": "videomae"}, "config.json: model_type='videomae': only 'timesformer' snapshots are supported"),
    ({"attention_type": "divided_space_time_x"}, "config.json: attention_type='divided_space_time_x': expected one of"),
    ({"hidden_act": "relu"}, "config.json: hidden_act='relu': only 'gelu'"),
    ({"image_size": [32, 48]}, "config.json: image_size=[32, 48]: expected one integer"),
    ({"num_frames": "4"}, "config.json: num_frames='4': expected int"),
])
def test_unsupported_config_is_refused_naming_the_field(tmp_path, changes, message, capsys):
    folder = tmp_path / "snap"
    _hf_model().save_pretrained(folder)
    _edit_config(folder, **changes)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        create_model(checkpoint=folder)
    capsys.readouterr()  # transformers' save progress bar
    code = cli_main(["smoke", "--checkpoint", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_config_without_weights_and_misfit_weights(tmp_path):
    folder = tmp_path / "snap"
    _hf_model().save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="config.json but no weights"):
        create_model(checkpoint=folder)
    del state["timesformer.encoder.layer.1.temporal_dense.weight"]
    state["timesformer.encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["classifier.weight"] = torch.zeros(7, 32)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        create_model(checkpoint=folder)
    text = str(err.value)
    assert "missing keys: timesformer.encoder.layer.1.temporal_dense.weight" in text
    assert "unexpected keys: timesformer.encoder.layer.0.extra.weight" in text
    assert "classifier.weight: file (7, 32) vs model (5, 32)" in text
    with pytest.raises(CheckpointError, match="a folder without config.json"):
        create_model(checkpoint=tmp_path)


def test_smoke_command_reads_the_snapshot_config(tmp_path, capsys):
    folder = _snapshot(tmp_path / "snap", _hf_model("joint_space_time"))
    capsys.readouterr()
    assert cli_main(["smoke", "--checkpoint", str(folder), "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "(joint_space_time," in out and "input      (1, 3, 4, 32, 32)" in out and "logits     (1, 5)" in out
