"""``create_model``: a TimeSformer by variant name or from a local checkpoint, with the reducer
or the cascade the checkpoint holds; ``apply_reducer`` for either kind of model. Above the
models, the reducers and the cascade; building never downloads anything."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ired_video import reducers
from ired_video.cascade.model import Cascade, cascade_from_checkpoint
from ired_video.config import ConfigError, ReducerConfig
from ired_video.models.registry import data_config, model_config, stored_configs
from ired_video.models.timesformer import TimeSformer
from ired_video.models.weights import FORMAT, load_checkpoint, load_weights


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
        reducers.apply_reducer(model, ours.reducer)
    if stored is not None:
        load_weights(model, stored, drop_head=drop_head)
    return model


def apply_reducer(model: nn.Module, name: Union[str, ReducerConfig], **kwargs: Any) -> nn.Module:
    """Put a token reducer into a TimeSformer or into a cascade's last stage (settings as
    ``ired_video.reducers.apply_reducer``); returns the model."""
    if isinstance(model, Cascade):
        model.apply_last_stage_reducer(name, **kwargs)
        return model
    return reducers.apply_reducer(model, name, **kwargs)
