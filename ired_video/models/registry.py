"""Named TimeSformer variants and ``create_model``.

A variant is a ModelConfig plus the DataConfig of the recipe it is trained with. Keyword
arguments to ``create_model`` override any ModelConfig field; building a model never
downloads anything, and weights come only from a local ``checkpoint`` path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from ired_video.config import ConfigError, DataConfig, ModelConfig, ReducerConfig, from_dict
from ired_video.models.timesformer import TimeSformer
from ired_video.models.weights import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    check_stored_config,
    load_checkpoint,
    load_weights,
)


@dataclass(frozen=True)
class Variant:
    description: str
    model: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)


# TimeSformer K400 recipes (paper App. A): 8x32 at 224; HR 16x16 at 448; L 96x4 at 224.
_K400_HR = dict(num_frames=16, sampling_rate=16, crop_size=448, train_short_side=(448, 512), test_short_side=448)
_K400_L = dict(num_frames=96, sampling_rate=4)

VARIANTS: dict[str, Variant] = {
    "timesformer": Variant("TimeSformer-B 8x224 divided; set every field yourself", {}),
    "timesformer_base_patch16_224": Variant(
        "the paper's TimeSformer: ViT-B/16, 8 frames, 224 px, 400 classes", {}),
    "timesformer_base_hr_patch16_448": Variant(
        "TimeSformer-HR: ViT-B/16, 16 frames, 448 px", dict(num_frames=16, img_size=448), _K400_HR),
    "timesformer_base_l_patch16_224": Variant(
        "TimeSformer-L: ViT-B/16, 96 frames, 224 px", dict(num_frames=96), _K400_L),
    "timesformer_small_patch16_224": Variant(
        "DeiT-S width (384, 6 heads), 12 blocks, 8 frames, 224 px", dict(embed_dim=384, num_heads=6)),
    "timesformer_tiny_patch16_224": Variant(
        "DeiT-T width (192, 3 heads), 12 blocks, 8 frames, 224 px", dict(embed_dim=192, num_heads=3)),
    "timesformer_micro": Variant(
        "a tiny model for CPU demos: 64 px, patch 8, 8 frames, 4 blocks of width 96",
        dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, num_classes=8,
             drop_path_rate=0.0),
        dict(crop_size=64, train_short_side=(64, 80), test_short_side=64)),
    "timesformer_test": Variant(
        "a minute model for unit tests: 32 px, patch 8, 4 frames, 2 blocks of width 32",
        dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=2, num_heads=2,
             num_classes=5, drop_path_rate=0.0),
        dict(num_frames=4, sampling_rate=2, crop_size=32, train_short_side=(32, 40), test_short_side=32)),
}


def list_models() -> list[str]:
    return sorted(VARIANTS)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named variant with ``overrides`` applied (types checked)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return from_dict(ModelConfig, {**VARIANTS[name].model, **overrides}, prefix="model.")


def data_config(name: str, model: ModelConfig) -> DataConfig:
    """The DataConfig of a named variant, its frames and crop following ``model``."""
    values = {**VARIANTS[name].data, "num_frames": model.num_frames, "crop_size": model.img_size}
    return from_dict(DataConfig, values)


def create_model(name: Optional[str] = None, checkpoint: Optional[Union[str, Path]] = None,
                 drop_head: bool = False, **overrides: Any) -> TimeSformer:
    """Build a TimeSformer by variant name, optionally loading weights from a local file.

    With ``name=None`` the checkpoint must state its config (ours, a transformers snapshot,
    mmaction2); it rebuilds the model (``overrides`` still apply), and a stored reducer is
    put back before loading. Such checkpoints also restore the data config
    (frames, sampling, mean/std, class names) so loaders and CLIs preprocess as trained.
    """
    stored = None
    if checkpoint is not None:
        stored = load_checkpoint(checkpoint)
        if stored.kind == FORMAT and (stored.extra or {}).get("cascade_config"):
            from ired_video.models.cascade import cascade_from_checkpoint
            return cascade_from_checkpoint(stored, **overrides)  # type: ignore[return-value]
    states_config = stored is not None and (stored.kind == FORMAT or stored.model_config is not None)
    ours = stored_configs(stored, overrides) if states_config else None
    if name is not None:
        config = model_config(name, **overrides)
        data = ours.data if ours is not None else data_config(name, config)
    elif ours is not None:
        config, data = ours.model, ours.data
    else:
        raise ConfigError("create_model needs a model name, or a checkpoint that states its config "
                          "(ours, a transformers snapshot folder, mmaction2)")
    model = TimeSformer(config, data)
    if ours is not None and ours.reducer is not None:
        from ired_video.reducers import apply_reducer  # reducers import the model package
        apply_reducer(model, ours.reducer)
    if stored is not None:
        load_weights(model, stored, drop_head=drop_head)
    return model


class StoredConfigs(NamedTuple):
    model: ModelConfig
    data: DataConfig
    reducer: Optional[ReducerConfig]


def stored_configs(stored: Checkpoint, overrides: Optional[dict[str, Any]] = None) -> StoredConfigs:
    """A checkpoint's model (with ``overrides``), data and reducer configs, each checked, and
    the model config against the stored weights, before anything is built;
    ``CheckpointError`` names the field."""
    try:
        for key in ("model_config", "data_config"):
            if not isinstance(getattr(stored, key), dict):
                raise ConfigError(f"{key}: missing (not a complete ired_video checkpoint)")
        configs = StoredConfigs(
            from_dict(ModelConfig, {**(stored.model_config or {}), **(overrides or {})}, prefix="model_config."),
            from_dict(DataConfig, dict(stored.data_config or {}), prefix="data_config."),
            None if stored.reducer_config is None else
            from_dict(ReducerConfig, stored.reducer_config, prefix="reducer_config."))
    except ConfigError as err:
        raise CheckpointError(f"{stored.path}: stored {err}") from None
    check_stored_config(stored.state_dict, configs.model, stored.path)
    return configs
