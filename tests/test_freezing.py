"""train.freeze: named parameters stay fixed (weights and BatchNorm statistics), the rest trains."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ired_video import ConfigError
from ired_video.engine import train
from ired_video.engine.freezing import freeze, hold_frozen_modules
from tests.training import config


def test_a_prefix_covers_its_module_not_a_sibling_sharing_its_first_characters():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    assert freeze(model, ["1"]) == 6  # layer 1's weight (4) and bias (2)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen == {"1.weight", "1.bias"}


def test_a_prefix_that_names_nothing_is_an_error_listing_the_names():
    with pytest.raises(ConfigError, match=r"train.freeze: 'blocks.7' names no parameter.*top-level names: 0, 1"):
        freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), ["blocks.7"])


def test_frozen_modules_run_in_evaluation_mode_while_the_rest_trains():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.5)).train()
    hold_frozen_modules(model, ["0"])
    assert not model[0].training and model[1].training


def test_a_frozen_conv_stem_keeps_weights_and_statistics_while_the_blocks_train(demo_data, tmp_path):
    init = tmp_path / "init"
    train(config(demo_data, init, "model.patch_stem=conv", "train.epochs=1"))
    train(config(demo_data, tmp_path / "run", "model.patch_stem=conv", "train.epochs=1",
                  f"init.checkpoint={init / 'last.pth'}", "init.drop_head=false", "train.freeze=[patch_embed]"))
    before = torch.load(init / "last.pth", weights_only=True)["model_state"]
    after = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model_state"]
    stem = [key for key in before if key.startswith("patch_embed.")]
    assert any("running_mean" in key for key in stem)  # the BatchNorm statistics are compared too
    assert all(torch.equal(after[key], before[key]) for key in stem)
    blocks = [key for key in before if key.startswith("blocks.") and key.endswith("weight")]
    assert all(not torch.equal(after[key], before[key]) for key in blocks)


def test_freeze_with_freeze_backbone_is_refused(demo_data, tmp_path):
    with pytest.raises(ConfigError, match="train.freeze: objective.freeze_backbone"):
        config(demo_data, tmp_path, "reducer.name=iared2", "train.freeze=[patch_embed]",
               "objective.freeze_backbone=true")
