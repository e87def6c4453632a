"""mmaction2 TimeSformer checkpoints (``backbone.*`` / ``cls_head.*``) as a ``Checkpoint``.

mmaction2 builds TimeSformer from mmcv transformer layers: block ``i`` is
``backbone.transformer_layers.layers.i``. Divided attention holds ``attentions.0``
(temporal: ``norm``, ``attn`` = ``nn.MultiheadAttention``, ``temporal_fc``),
``attentions.1`` (spatial: ``norm``, ``attn``) and ``ffns.0`` (``norm``, ``layers.0.0`` =
fc1, ``layers.1`` = fc2). Joint and space-only blocks hold ``norms.0``, ``attentions.0.attn``,
``norms.1`` and ``ffns.0``. ``in_proj_weight`` stacks the q, k, v projections as our
``qkv`` does and ``out_proj`` is our ``proj``, so every tensor maps one to one.

Design notes: docs/design.md, "ired_video.models.mmaction_weights".
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from ired_video.models.checkpoint_file import Checkpoint, CheckpointError
from ired_video.models.key_map import KeyMap

log = logging.getLogger(__name__)

KIND = "mmaction2"
LAYER = "backbone.transformer_layers.layers.{i}"
DEFAULT_HEADS = 12  # mmaction2's TimeSformer(num_heads=12), which its released configs keep
_LAYER_INDEX = re.compile(r"backbone\.transformer_layers\.layers\.(\d+)\.")
_TOP = {"cls_token": "backbone.cls_token", "pos_embed": "backbone.pos_embed", "time_embed": "backbone.time_embed",
        "patch_embed.proj": "backbone.patch_embed.projection", "norm": "backbone.norm", "head": "cls_head.fc_cls"}
_FFN = {"mlp.fc1": "ffns.0.layers.0.0", "mlp.fc2": "ffns.0.layers.1"}


def _attention(ours: str, theirs: str) -> dict[str, str]:
    """Our ``qkv``/``proj`` <-> ``nn.MultiheadAttention``'s ``in_proj_*``/``out_proj``."""
    return {f"{ours}.qkv.weight": f"{theirs}.in_proj_weight", f"{ours}.qkv.bias": f"{theirs}.in_proj_bias",
            f"{ours}.proj": f"{theirs}.out_proj"}


_DIVIDED = {"temporal_norm1": "attentions.0.norm", **_attention("temporal_attn", "attentions.0.attn"),
            "temporal_fc": "attentions.0.temporal_fc", "norm1": "attentions.1.norm",
            **_attention("attn", "attentions.1.attn"), "norm2": "ffns.0.norm", **_FFN}
_SINGLE = {"norm1": "norms.0", **_attention("attn", "attentions.0.attn"), "norm2": "norms.1", **_FFN}


def key_map(attention_type: str) -> KeyMap:
    """Our names <-> mmaction2's for one attention type."""
    return KeyMap(_TOP, _DIVIDED if attention_type == "divided_space_time" else _SINGLE, LAYER)


def looks_like_mmaction(state: dict[str, Any]) -> bool:
    """Whether a state dict is an mmaction2 TimeSformer recognizer's."""
    return any(k.startswith("backbone.transformer_layers.layers.") for k in state)


def mmaction_checkpoint(obj: dict[str, Any], state: dict[str, Tensor], path: Path) -> Checkpoint:
    """An mmaction2 file (``obj``, its ``state_dict`` already checked) -> Checkpoint with our
    names and the model and data configs its shapes and mmaction2's recipe give."""
    model_config = infer_model_config(state, path)
    keys = key_map(model_config["attention_type"])
    return Checkpoint(path, KIND, keys.state_to_ours(state), model_config,
                      recipe_data_config(model_config, _class_names(obj, model_config["num_classes"])),
                      file_key=keys.to_file)


def infer_model_config(state: dict[str, Tensor], path: Path) -> dict[str, Any]:
    """ModelConfig fields from tensor shapes (num_heads: mmaction2's default)."""
    needed = ["backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.projection.weight"]
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"{path}: an mmaction2 TimeSformer checkpoint without {', '.join(absent)}")
    dim = state["backbone.cls_token"].shape[-1]
    proj = state["backbone.patch_embed.projection.weight"]  # (D, C, p, p)
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{path}: backbone.patch_embed.projection.weight {tuple(proj.shape)}: "
                              "expected square patches (D, C, p, p)")
    patches = state["backbone.pos_embed"].shape[1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise CheckpointError(f"{path}: backbone.pos_embed has {patches} patch positions, not a square grid")
    if any(".attentions.1." in k for k in state):
        attention = "divided_space_time"
    else:
        attention = "joint_space_time" if "backbone.time_embed" in state else "space_only"
    depth = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_INDEX.match(k)))
    fc1 = state.get(f"{LAYER.format(i=0)}.ffns.0.layers.0.0.weight")
    time = state.get("backbone.time_embed")
    head = state.get("cls_head.fc_cls.weight")
    log.info("%s: mmaction2 checkpoint (%s); num_heads is not stored, using mmaction2's default %d "
             "(pass num_heads= if its config set another)", path, attention, DEFAULT_HEADS)
    return dict(img_size=side * proj.shape[-1], patch_size=proj.shape[-1], in_chans=proj.shape[1],
                num_frames=8 if time is None else time.shape[1], embed_dim=dim, depth=depth,
                num_heads=DEFAULT_HEADS, mlp_ratio=4.0 if fc1 is None else fc1.shape[0] / dim,
                qkv_bias=f"{LAYER.format(i=0)}.attentions.0.attn.in_proj_bias" in state,
                num_classes=0 if head is None else head.shape[0], attention_type=attention,
                layer_norm_eps=1e-6)


def recipe_data_config(model_config: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """mmaction2's TimeSformer recipe: T frames 32 apart, short side 256-320 for training and
    the crop size for testing, mean = std = 127.5 (0-255) = 0.5 (0-1 units)."""
    size = model_config["img_size"]
    return dict(num_frames=model_config["num_frames"], sampling_rate=32, crop_size=size,
                train_short_side=(round(size * 8 / 7), round(size * 10 / 7)), test_short_side=size,
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), class_names=class_names)


def _class_names(obj: dict[str, Any], count: int) -> list[str]:
    """``meta.dataset_meta.classes`` (mmengine stores the dataset's metainfo) when it fits."""
    meta = obj.get("meta")
    dataset = meta.get("dataset_meta") if isinstance(meta, dict) else None
    names = dataset.get("classes") if isinstance(dataset, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == count and all(isinstance(n, str) for n in names):
        return list(names)
    return []
