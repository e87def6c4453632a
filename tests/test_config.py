"""Typed YAML configs with key=value overrides."""
from __future__ import annotations

import pytest

from ired_video.config import ConfigError, DataConfig, ModelConfig, load_config, to_dict


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("embed_dim: 96\ndepth: 2\nnum_heads: 4\n")
    cfg = load_config(ModelConfig, path, ["depth=3", "drop_path_rate=0", "attention_type=space_only"])
    assert (cfg.embed_dim, cfg.depth, cfg.drop_path_rate, cfg.attention_type) == (96, 3, 0.0, "space_only")
    assert isinstance(cfg.drop_path_rate, float)


def test_lists_become_tuples_and_round_trip():
    cfg = load_config(DataConfig, None, ["mean=[0.5,0.5,0.5]", "class_names=[a, b]"])
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.class_names == ["a", "b"]
    assert load_config(DataConfig, None, [f"{k}={v}" for k, v in to_dict(cfg).items()
                                          if k != "class_names"]) .mean == cfg.mean


@pytest.mark.parametrize("override,message", [
    ("detph=3", "unknown key.*detph"),
    ("depth=three", "depth: expected an integer, got 'three'"),
    ("depth=2.5", "depth: expected an integer"),
    ("qkv_bias=maybe", "qkv_bias: expected true/false"),
    ("depth", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ModelConfig, None, [override])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: no such config file"):
        load_config(ModelConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(ModelConfig, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("mean: [1, 2]\n")
    with pytest.raises(ConfigError, match="wrong.yaml: mean: expected 3 values, got 2"):
        load_config(DataConfig, wrong)
