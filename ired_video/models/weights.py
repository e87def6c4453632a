"""Weights from local files: official TimeSformer, timm/DeiT ViT, transformers snapshots,
mmaction2, and our own checkpoints.

Nothing here downloads. Every file is read with ``weights_only=True`` (or safetensors), so
a checkpoint cannot run code. Loading is strict: a state dict that does not fit the model
raises ``CheckpointError`` naming the missing, unexpected and mis-shaped keys (in the
file's own names).

Design notes: docs/design.md, "ired_video.models.weights".
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ired_video.config import to_dict
from ired_video.models.checkpoint_file import Checkpoint, CheckpointError, PathLike, read_file, tensors_only
from ired_video.models.hf_weights import (
    looks_like_transformers,
    read_snapshot,
    snapshot_weights_file,
    transformers_state,
)
from ired_video.models.mmaction_weights import looks_like_mmaction, mmaction_checkpoint
from ired_video.paths import write_atomically

log = logging.getLogger(__name__)

FORMAT = "ired_video"
FORMAT_VERSION = 1
__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "check_fits", "load_checkpoint", "load_weights",
           "parse_checkpoint", "read_file", "save_checkpoint"]


def parse_checkpoint(obj: dict[str, Any], path: PathLike) -> Checkpoint:
    """Find the state dict in a loaded file and tell which kind of checkpoint it is."""
    path = Path(path)
    if obj.get("format") == FORMAT:
        return Checkpoint(path, FORMAT, tensors_only(obj.get("model_state"), path),
                          obj.get("model_config"), obj.get("data_config"),
                          {k: v for k, v in obj.items() if k not in ("model_state",)},
                          obj.get("reducer_config"))
    official = "model_state" in obj
    found = obj
    for key in ("model_state", "model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            found = obj[key]
            break
    state = tensors_only(found, path)
    if looks_like_mmaction(state):
        return mmaction_checkpoint(obj, state, path)
    if looks_like_transformers(state):
        return transformers_state(state, path)
    if any(k.startswith("model.") for k in state):
        official = True
    state = {_strip(k, ("module.", "model.")): v for k, v in state.items()}
    if official or any(k == "time_embed" or ".temporal_" in k for k in state):
        return Checkpoint(path, "timesformer", state)
    return Checkpoint(path, "vit", state)


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def vit_to_timesformer(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map ImageNet ViT/DeiT weights onto a TimeSformer, initialising temporal parts as
    TimeSformer does: temporal attention and its norm copy the spatial ones, the
    ``temporal_fc`` projections and the time embedding are zero."""
    state = dict(state)
    if "dist_token" in state:  # DeiT distilled: drop the distillation token and head
        del state["dist_token"]
        state.pop("head_dist.weight", None)
        state.pop("head_dist.bias", None)
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    target = model.state_dict()
    for i, block in enumerate(model.blocks):
        if not hasattr(block, "temporal_attn"):
            continue
        for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            if f"blocks.{i}.attn.{name}" in state:
                state[f"blocks.{i}.temporal_attn.{name}"] = state[f"blocks.{i}.attn.{name}"].clone()
        for name in ("weight", "bias"):
            if f"blocks.{i}.norm1.{name}" in state:
                state[f"blocks.{i}.temporal_norm1.{name}"] = state[f"blocks.{i}.norm1.{name}"].clone()
            state[f"blocks.{i}.temporal_fc.{name}"] = torch.zeros_like(target[f"blocks.{i}.temporal_fc.{name}"])
    if "time_embed" in target:
        state["time_embed"] = torch.zeros_like(target["time_embed"])
    return state


def adapt_embeddings(state: dict[str, Tensor], model: nn.Module, source: PathLike) -> dict[str, Tensor]:
    """Resize ``pos_embed`` (2-D) and ``time_embed`` (1-D) to the model's grid and frames."""
    state = dict(state)
    target = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape != target["pos_embed"].shape \
            and pos.shape[-1] == target["pos_embed"].shape[-1]:
        old_side = math.isqrt(pos.shape[1] - 1)
        if old_side * old_side != pos.shape[1] - 1:
            raise CheckpointError(f"{source}: pos_embed {tuple(pos.shape)} is not a square grid "
                                  "plus a class token; cannot resize it")
        new_grid = list(model.patch_grid)
        state["pos_embed"] = resample_abs_pos_embed(pos, new_grid, [old_side, old_side], num_prefix_tokens=1)
        log.info("%s: resized pos_embed from a %dx%d to a %dx%d patch grid (2-D bicubic)",
                 source, old_side, old_side, *new_grid)
    time = state.get("time_embed")
    if time is not None and "time_embed" in target and time.ndim == 3 \
            and time.shape[1] != target["time_embed"].shape[1] and time.shape[-1] == target["time_embed"].shape[-1]:
        frames = target["time_embed"].shape[1]
        state["time_embed"] = F.interpolate(time.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)
        log.info("%s: resized time_embed from %d to %d frames (1-D nearest)", source, time.shape[1], frames)
    return state


def check_fits(state: dict[str, Tensor], model: nn.Module, source: PathLike,
               file_key: Optional[Callable[[str], str]] = None) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and mis-shaped key, as the
    file names it (``file_key``: our name -> the file's)."""
    name = file_key or (lambda key: key)
    target = model.state_dict()
    missing = sorted(name(k) for k in set(target) - set(state))
    unexpected = sorted(name(k) for k in set(state) - set(target))
    mismatched = sorted(f"{name(k)}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                        for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{source}: weights do not fit the model"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError("\n  ".join(parts))


def check_stored_config(state: dict[str, Tensor], config: Any, source: PathLike) -> None:
    """Our checkpoint's model config against its own weights, before a model is built (a
    ``depth`` of 400 over 4 stored blocks is refused here, not after building 400)."""
    stored_depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    if stored_depth != config.depth:
        raise CheckpointError(f"{source}: stored model_config.depth={config.depth}, but the weights hold "
                              f"{stored_depth} blocks")
    cls, pos = state.get("cls_token"), state.get("pos_embed")
    if cls is not None and tuple(cls.shape) != (1, 1, config.embed_dim):
        raise CheckpointError(f"{source}: stored model_config.embed_dim={config.embed_dim}, but the weights' "
                              f"cls_token is {tuple(cls.shape)}")
    positions = (config.img_size // config.patch_size) ** 2 + 1
    if pos is not None and tuple(pos.shape) != (1, positions, config.embed_dim):
        raise CheckpointError(f"{source}: stored model_config.img_size={config.img_size}, patch_size="
                              f"{config.patch_size} make {positions} positions; the weights' pos_embed is "
                              f"{tuple(pos.shape)}")


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Read and parse a checkpoint: a file, or a transformers snapshot folder (also when
    given the weights file inside one)."""
    path = Path(path)
    if path.is_dir():
        return read_snapshot(path)
    if snapshot_weights_file(path):
        return read_snapshot(path.parent, weights_file=path)
    return parse_checkpoint(read_file(path), path)


def load_weights(model: nn.Module, source: Union[PathLike, Checkpoint], drop_head: bool = False) -> Checkpoint:
    """Load a checkpoint (a path, or one already read) into ``model`` (strict).

    ``drop_head=True`` keeps the model's own classifier when the file's has another
    number of classes (fine-tuning on a new label set). ViT ImageNet heads are always
    dropped when their class count differs.
    """
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    path = ckpt.path
    state = ckpt.state_dict
    if ckpt.kind == "vit":
        state = vit_to_timesformer(state, model)
    state = adapt_embeddings(state, model, path)
    target = model.state_dict()
    head_differs = any(k in state and k in target and state[k].shape != target[k].shape
                       for k in ("head.weight", "head.bias"))
    if head_differs and (drop_head or ckpt.kind == "vit"):
        log.info("%s: classifier not loaded (%d classes in the file, %d in the model)",
                 path, state["head.weight"].shape[0], target["head.weight"].shape[0])
        state["head.weight"], state["head.bias"] = target["head.weight"], target["head.bias"]
    check_fits(state, model, path, ckpt.file_key)
    model.load_state_dict(state, strict=True)
    return ckpt


def save_checkpoint(path: PathLike, model: nn.Module, **extra: Any) -> None:
    """Write our checkpoint atomically: a temporary file in the same folder, then rename.

    The file carries the model, data and reducer configs, so ``create_model(checkpoint=path)``
    rebuilds the model (reducer and interpreter weights included) and loaders read their
    preprocessing from it. ``extra`` entries
    (optimizer state, epoch, ...) must be weights-only-loadable (tensors, numbers, str,
    lists, dicts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "model_config": to_dict(model.config), "data_config": to_dict(model.data_config),
               "model_state": model.state_dict(), **extra}
    reducer = model.reducer_config
    if reducer is not None:
        payload["reducer_config"] = to_dict(reducer)
    extras = getattr(model, "checkpoint_extras", None)  # a cascade adds its cascade config
    if extras is not None:
        payload.update(extras())
    write_atomically(path, lambda tmp: torch.save(payload, tmp))
