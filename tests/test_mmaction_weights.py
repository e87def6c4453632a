"""mmaction2 TimeSformer checkpoints: equal logits to an independent mmaction2-layout forward."""
from __future__ import annotations

import logging

import pytest
import torch

from ired_video import CheckpointError, create_model
from tests.reference_mmaction_timesformer import mmaction_reference_forward, mmaction_state_dict

ATTENTIONS = ["divided_space_time", "joint_space_time", "space_only"]


def _save(tmp_path, sd, name="mm.pth", classes=None):
    meta = {"mmengine_version": "0.10.0", "epoch": 15}
    if classes is not None:
        meta["dataset_meta"] = {"classes": classes}
    path = tmp_path / name
    torch.save({"meta": meta, "state_dict": sd}, path)
    return path


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_logits_equal_mmaction_reference(tmp_path, attention, caplog):
    """dim 24 and mmaction2's default 12 heads (2-wide), as the file does not store the heads."""
    sd = mmaction_state_dict(attention, dim=24, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    with caplog.at_level(logging.INFO, logger="ired_video"):
        model = create_model(checkpoint=_save(tmp_path, sd)).eval()
    assert "num_heads is not stored, using mmaction2's default 12" in caplog.text
    cfg = model.config
    frames = 8 if attention == "space_only" else 4  # space-only files have no time_embed: the recipe's 8
    assert (cfg.attention_type, cfg.img_size, cfg.patch_size, cfg.num_frames, cfg.embed_dim, cfg.depth,
            cfg.num_heads, cfg.num_classes) == (attention, 32, 8, frames, 24, 2, 12, 5)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model(video)
        reference = mmaction_reference_forward(sd, video, attention, num_heads=12)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_num_heads_override_and_recipe_data_config(tmp_path):
    sd = mmaction_state_dict("divided_space_time", dim=32, depth=1, grid=4, frames=4, patch_size=8, classes=3)
    names = ["abseiling", "archery", "bowling"]
    model = create_model(checkpoint=_save(tmp_path, sd, classes=names), num_heads=4).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(video), mmaction_reference_forward(sd, video, "divided_space_time", 4),
                                   atol=1e-4, rtol=0)
    data = model.data_config
    assert data.class_names == names
    assert (data.num_frames, data.sampling_rate, data.crop_size, data.mean, data.std) == \
        (4, 32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_misfit_names_mmaction_keys(tmp_path):
    sd = mmaction_state_dict("divided_space_time", dim=24, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    del sd["backbone.transformer_layers.layers.1.attentions.0.temporal_fc.weight"]
    sd["backbone.transformer_layers.layers.0.attentions.1.attn.extra"] = torch.zeros(3)
    sd["backbone.transformer_layers.layers.0.ffns.0.norm.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        create_model(checkpoint=_save(tmp_path, sd))
    text = str(err.value)
    assert "missing keys: backbone.transformer_layers.layers.1.attentions.0.temporal_fc.weight" in text
    assert "unexpected keys: backbone.transformer_layers.layers.0.attentions.1.attn.extra" in text
    assert "backbone.transformer_layers.layers.0.ffns.0.norm.bias: file (7,) vs model (24,)" in text


def test_checkpoint_without_backbone_tensors_is_refused(tmp_path):
    sd = mmaction_state_dict("space_only", dim=24, depth=1, grid=4, frames=4, patch_size=8, classes=5)
    del sd["backbone.pos_embed"]
    with pytest.raises(CheckpointError, match="an mmaction2 TimeSformer checkpoint without backbone.pos_embed"):
        create_model(checkpoint=_save(tmp_path, sd))
