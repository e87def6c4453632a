"""Weight loading: timm ViT mapping, embedding resizing, our checkpoints, bad files."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from ired_video import CheckpointError, create_model, save_checkpoint
from ired_video.models.weights import load_checkpoint
from tests.reference_timesformer import official_state_dict


def _tiny_vit(num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=num_classes).eval()


@pytest.mark.parametrize("fmt", ["pth", "deit_pth", "safetensors"])
def test_vit_weights_make_a_per_frame_vit(tmp_path, fmt):
    """ViT weights -> TimeSformer that, on a clip of one repeated image, gives the ViT's logits."""
    vit = _tiny_vit()
    for p in vit.parameters():  # timm zero-inits some tensors; make every one distinctive
        p.data.add_(torch.randn_like(p) * 0.05)
    state = vit.state_dict()
    path = tmp_path / f"vit.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif fmt == "deit_pth":
        torch.save({"model": state}, path)
    else:
        torch.save(state, path)
    model = create_model("timesformer_test", checkpoint=path).eval()
    block = model.blocks[0]
    torch.testing.assert_close(block.temporal_attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(block.temporal_norm1.weight, state["blocks.0.norm1.weight"])
    assert torch.count_nonzero(block.temporal_fc.weight) == 0
    image = torch.randn(2, 3, 32, 32)
    video = image[:, :, None].expand(2, 3, 4, 32, 32)  # (B, C, T, H, W), every frame the image
    with torch.no_grad():
        torch.testing.assert_close(model(video), vit(image), atol=1e-5, rtol=0)


def test_vit_head_with_other_class_count_is_dropped(tmp_path, caplog):
    path = tmp_path / "vit1k.pth"
    torch.save(_tiny_vit(num_classes=1000).state_dict(), path)
    with caplog.at_level(logging.INFO, logger="ired_video"):
        model = create_model("timesformer_test", checkpoint=path)
    assert model.head.weight.shape == (5, 32)
    assert "classifier not loaded (1000 classes in the file, 5 in the model)" in caplog.text


def test_deit_distilled_tokens_are_dropped(tmp_path):
    state = _tiny_vit().state_dict()
    state["dist_token"] = torch.zeros(1, 1, 32)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], torch.ones(1, 1, 32), state["pos_embed"][:, 1:]], 1)
    state["head_dist.weight"], state["head_dist.bias"] = torch.zeros(5, 32), torch.zeros(5)
    path = tmp_path / "deit_distilled.pth"
    torch.save({"model": state}, path)
    model = create_model("timesformer_test", checkpoint=path)
    torch.testing.assert_close(model.pos_embed[:, 1:], state["pos_embed"][:, 2:])


def test_embeddings_resized_2d_and_1d_with_log(tmp_path, caplog):
    state = official_state_dict("divided_space_time", dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    path = tmp_path / "official.pyth"
    torch.save({"model_state": state}, path)
    with caplog.at_level(logging.INFO, logger="ired_video"):
        model = create_model("timesformer_test", img_size=48, num_frames=8, checkpoint=path)
    assert "resized pos_embed from a 4x4 to a 6x6 patch grid (2-D bicubic)" in caplog.text
    assert "resized time_embed from 4 to 8 frames (1-D nearest)" in caplog.text
    assert model.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(model.pos_embed[:, :1], state["model.pos_embed"][:, :1])  # class token as is
    old_time = state["model.time_embed"][0]
    torch.testing.assert_close(model.time_embed[0], old_time[[0, 0, 1, 1, 2, 2, 3, 3]])


def test_resized_pos_embed_is_two_dimensional(tmp_path):
    """A pos_embed that varies only along rows must still vary only along rows."""
    rows = torch.arange(4.0)[:, None, None].expand(4, 4, 32).reshape(1, 16, 32)
    state = official_state_dict("space_only", dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    state["model.pos_embed"] = torch.cat([torch.zeros(1, 1, 32), rows], dim=1)
    path = tmp_path / "rows.pyth"
    torch.save({"model_state": state}, path)
    model = create_model("timesformer_test", attention_type="space_only", img_size=64, checkpoint=path)
    grid = model.pos_embed[0, 1:].reshape(8, 8, 32)
    assert torch.allclose(grid, grid[:, :1].expand(8, 8, 32), atol=1e-5)  # constant along each row
    assert grid[0, 0, 0] < grid[-1, 0, 0]  # increasing down the columns


def test_our_checkpoint_round_trip(tmp_path):
    model = create_model("timesformer_test", num_classes=3).eval()
    model.data_config.class_names = ["a b", "c (d)", "e"]
    path = tmp_path / "run" / "best.pth"
    save_checkpoint(path, model, epoch=2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pth"]  # no temporary left behind
    restored = create_model(checkpoint=path).eval()
    assert restored.config == model.config
    assert restored.data_config.class_names == ["a b", "c (d)", "e"]
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(video), model(video))
    assert load_checkpoint(path).extra["epoch"] == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth: no such checkpoint file"):
        create_model("timesformer_test", checkpoint=tmp_path / "nope.pth")


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n", b"", bytes(range(256)) * 4])
def test_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
        create_model("timesformer_test", checkpoint=path)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(CheckpointError, match="evil.pth: not a readable PyTorch checkpoint"):
        create_model("timesformer_test", checkpoint=path)


def test_non_dict_and_non_tensor_files_are_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list.pth: expected a dict of weights, found a list"):
        create_model("timesformer_test", checkpoint=path)
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 1, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="meta.pth: not a state dict"):
        create_model("timesformer_test", checkpoint=path)


def test_misfit_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = official_state_dict("divided_space_time", dim=32, depth=3, grid=4, frames=4, patch_size=8, classes=6)
    del state["model.blocks.0.temporal_fc.bias"]
    path = tmp_path / "misfit.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointError) as err:
        create_model("timesformer_test", checkpoint=path)
    text = str(err.value)
    assert "misfit.pyth: weights do not fit the model" in text
    assert "missing keys: blocks.0.temporal_fc.bias" in text
    assert "unexpected keys: blocks.2." in text
    assert "head.weight: file (6, 32) vs model (5, 32)" in text


def test_drop_head_keeps_model_classifier_for_new_label_sets(tmp_path):
    state = official_state_dict("divided_space_time", dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=400)
    path = tmp_path / "k400.pyth"
    torch.save({"model_state": state}, path)
    model = create_model("timesformer_test", checkpoint=path, drop_head=True)
    assert model.head.weight.shape == (5, 32)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, state["model.blocks.1.mlp.fc2.weight"])


def test_divided_checkpoint_into_joint_model_is_refused(tmp_path):
    state = official_state_dict("divided_space_time", dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    path = tmp_path / "divided.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointError, match="unexpected keys: blocks.0.temporal_attn"):
        create_model("timesformer_test", attention_type="joint_space_time", checkpoint=path)


def _our_checkpoint_edited(tmp_path: Path, **edits) -> Path:
    """One of our checkpoints whose stored entries are replaced (a value of None deletes)."""
    path = tmp_path / "ours.pth"
    save_checkpoint(path, create_model("timesformer_test"))
    payload = torch.load(path, weights_only=True)
    for key, value in edits.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value(payload[key])
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("edit,message", [
    ({"data_config": lambda c: {**c, "num_frames": 0}}, "stored data_config.num_frames=0: expected at least 1"),
    ({"data_config": lambda c: {**c, "std": [0, 0, 0]}},
     r"stored data_config.std=\[0.0, 0.0, 0.0\]: expected numbers > 0"),
    ({"model_config": None}, "stored model_config: missing"),
    ({"data_config": None}, "stored data_config: missing"),
    ({"model_config": lambda c: {**c, "patch_size": 0}}, "stored model_config.patch_size=0: expected at least 1"),
    ({"model_config": lambda c: {**c, "depht": 2}}, "stored unknown key.*model_config.depht"),
    ({"model_state": None}, "no state dict found"),
    ({"model_config": lambda c: {**c, "embed_dim": 64}}, r"embed_dim=64, but the weights' cls_token is \(1, 1, 32\)"),
])
def test_a_broken_stored_config_is_a_checkpoint_error_naming_the_field(tmp_path, edit, message):
    path = _our_checkpoint_edited(tmp_path, **edit)
    with pytest.raises(CheckpointError, match=f"ours.pth: .*{message}"):
        create_model(checkpoint=path)


def test_a_stored_config_is_checked_against_the_weights_before_building(tmp_path, monkeypatch):
    """depth=400 over 2 stored blocks is refused before 400 blocks are built."""
    from ired_video.models import registry
    path = _our_checkpoint_edited(tmp_path, model_config=lambda c: {**c, "depth": 400})
    monkeypatch.setattr(registry, "TimeSformer", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(CheckpointError, match="stored model_config.depth=400, but the weights hold 2 blocks"):
        create_model(checkpoint=path)


def test_a_broken_checkpoint_is_a_one_line_error_of_every_command(tmp_path, capsys):
    from ired_video import cli
    path = _our_checkpoint_edited(tmp_path, data_config=lambda c: {**c, "num_frames": 0})
    for argv in (["infer", "x.mp4", "--checkpoint", str(path)], ["smoke", "--checkpoint", str(path)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "stored data_config.num_frames=0" in err, err
