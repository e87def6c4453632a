"""Spatiotemporal token reducers and the one call that puts them into a model.

    from ired_video import create_model, apply_reducer
    model = create_model("timesformer_base_patch16_224")
    apply_reducer(model, "tome", r=16)
    apply_reducer(model, "iared2", stages=(0, 4, 8))               # adaptive: each clip keeps p > 0.5
    apply_reducer(model, "iared2", regime="fixed_ratio", keep=0.7)  # or a set share per stage

Every reducer follows one contract (``ired_video.reducers.base``): a module called with
the token state, at a block, returning a new state.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

from torch import nn

from ired_video.config import ConfigError, ReducerConfig, from_dict
from ired_video.reducers.attention_received import AttentionReceivedDrop
from ired_video.reducers.base import MODES, Reducer
from ired_video.reducers.bat import BAT
from ired_video.reducers.drop import ClassAttentionTopK, RandomDrop
from ired_video.reducers.iared2 import IARED2, Interpreter
from ired_video.reducers.interaction import InteractionDrop, InteractionPredictor
from ired_video.reducers.tome import ToMe, bipartite_soft_matching, parse_r


def default_stages(depth: int) -> list[int]:
    """Blocks at a quarter, half and three quarters of the depth (3, 6, 9 of 12: EViT's)."""
    return sorted({min(depth - 1, max(1, round(depth * f))) for f in (0.25, 0.5, 0.75)})


def _need_keep(cfg: ReducerConfig) -> float:
    if cfg.keep is None:
        raise ConfigError(f"reducer {cfg.name!r} needs keep=<fraction of tokens kept per stage>")
    return cfg.keep


def _build_stages(cfg: ReducerConfig, model: nn.Module) -> dict[int, Reducer]:
    depth = len(model.blocks)
    stages = cfg.stages if cfg.stages is not None else default_stages(depth)
    if not stages:
        raise ConfigError(f"reducer {cfg.name!r} with stages=[] reduces nowhere: name its blocks, or use reducer none")
    bad = [s for s in stages if not 0 <= s < depth]
    if bad:
        raise ConfigError(f"stages {bad} are outside the model's blocks 0..{depth - 1}")
    makers: dict[str, Callable[[int], Reducer]] = {
        "random": lambda b: RandomDrop(b, _need_keep(cfg), cfg.mode, cfg.seed),
        "topk": lambda b: ClassAttentionTopK(b, _need_keep(cfg), cfg.mode, cfg.fuse),
        "attention_received": lambda b: AttentionReceivedDrop(b, _need_keep(cfg), cfg.mode),
        "interaction": lambda b: InteractionDrop(b, _need_keep(cfg), cfg.mode, model.config.embed_dim, cfg.score),
        "bat": lambda b: BAT(b, _need_keep(cfg), cfg.mode, cfg.cluster_ratio, cfg.match_ratio,
                            prop_attn=cfg.prop_attn),
        "iared2": lambda b: _interpreter(cfg, model, b),
    }
    return {stage: makers[cfg.name](stage) for stage in stages}


def _interpreter(cfg: ReducerConfig, model: nn.Module, block: int) -> IARED2:
    """An IA-RED² stage before ``block``, started as that block's class attention unless asked not to."""
    mc = model.config
    reducer = IARED2(block, mc.embed_dim, cfg.interpreter_heads or mc.num_heads, cfg.keep, cfg.threshold, cfg.mode)
    if cfg.interpreter_init == "attention":
        guarded = model.blocks[block]
        reducer.interpreter.init_from_attention(guarded.norm1, guarded.attn)
    elif cfg.interpreter_init != "random":
        raise ConfigError(f"interpreter_init={cfg.interpreter_init!r}: expected 'attention' or 'random'")
    return reducer


def _build_tome(cfg: ReducerConfig, model: nn.Module) -> dict[int, Reducer]:
    if cfg.stages is not None:
        raise ConfigError("tome acts at every block with r > 0: give r as a per-block list, not stages")
    if isinstance(cfg.r, list) and cfg.r_inflection:
        raise ConfigError("r_inflection applies to a constant r, not to a per-block list")
    r = (cfg.r, cfg.r_inflection) if cfg.r_inflection else cfg.r
    schedule = parse_r(len(model.blocks), r)
    patches = model.patch_grid[0] * model.patch_grid[1]
    tokens, unit = (model.config.num_frames * patches, "clip") if cfg.mode == "flat" else (patches, "frame")
    if max(schedule) > tokens:
        raise ConfigError(f"r schedule {schedule} asks to merge more tokens in one block than the {tokens} patch "
                          f"tokens per {unit} of this model (at most half of them merge per block)")
    return {block: ToMe(block, count, cfg.mode, cfg.prop_attn) for block, count in enumerate(schedule) if count > 0}


BUILDERS: dict[str, Callable[[ReducerConfig, nn.Module], dict[int, Reducer]]] = {
    "random": _build_stages, "topk": _build_stages, "attention_received": _build_stages,
    "interaction": _build_stages, "bat": _build_stages, "iared2": _build_stages, "tome": _build_tome,
}
REDUCERS = ("none", *BUILDERS)


def reducer_config(name: Union[str, ReducerConfig], **kwargs: Any) -> ReducerConfig:
    """A checked ReducerConfig from a name and keyword arguments (or a config as is)."""
    if isinstance(name, ReducerConfig):
        return dataclasses.replace(name, **kwargs)
    if "stages" in kwargs and kwargs["stages"] is not None:
        kwargs["stages"] = list(kwargs["stages"])
    return from_dict(ReducerConfig, {"name": name, **kwargs}, prefix="reducer.")


def apply_reducer(model: nn.Module, name: Union[str, ReducerConfig], **kwargs: Any) -> nn.Module:
    """Put a reducer into ``model`` (replacing any other), configured by keyword arguments.
    Asked for the configuration it already runs, the model keeps its reducers as they are.

    Names: ``random``, ``topk``, ``attention_received``, ``interaction``, ``bat`` (act at
    ``stages``, keeping ``keep`` of the tokens each time), ``iared2`` (at ``stages``: each
    clip keeps the tokens its interpreter gives p > 0.5, or ``regime="fixed_ratio"`` with
    ``keep``), ``tome`` (merges ``r`` tokens per block),
    ``none`` (removes reducers). ``mode``: ``tube`` (default), ``frame``, or ``flat`` for
    joint-attention models. Returns the model.
    """
    cfg = reducer_config(name, **kwargs)
    if model.reducer_config == cfg and len(model.reducers):
        return model  # already running it: keep what its reducers learned (interpreters, fitted predictors)
    if cfg.name not in REDUCERS:
        raise ConfigError(f"unknown reducer {cfg.name!r}; known: {', '.join(REDUCERS)}")
    if cfg.mode not in MODES:
        raise ConfigError(f"reducer mode {cfg.mode!r}: expected one of {MODES}")
    if cfg.mode == "flat" and model.config.attention_type != "joint_space_time":
        raise ConfigError("mode='flat' mixes frames, which only joint_space_time models allow; "
                          "use 'tube' or 'frame'")
    model.reducers = nn.ModuleDict()
    if cfg.name != "none":
        try:
            built = BUILDERS[cfg.name](cfg, model)
        except ValueError as err:
            raise ConfigError(f"reducer {cfg.name!r}: {err}") from None
        model.reducers = nn.ModuleDict({str(block): reducer for block, reducer in built.items()})
        model.reducers.to(next(model.parameters()).device)
        model.reducers.train(model.training)  # new modules would otherwise start in training mode
    model.reducer_config = cfg
    return model


__all__ = ["BAT", "IARED2", "REDUCERS", "AttentionReceivedDrop", "ClassAttentionTopK", "InteractionDrop",
           "InteractionPredictor", "Interpreter", "RandomDrop",
           "Reducer", "ReducerConfig", "ToMe", "apply_reducer", "bipartite_soft_matching", "default_stages",
           "parse_r", "reducer_config"]
