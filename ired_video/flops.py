"""Analytic multiply-accumulate (MAC) counts for TimeSformer layers.

Papers' "GFLOPs" for ViTs and TimeSformer are fvcore counts, which are MACs (one fused
multiply-add = 1). We count the matrix products: linear layers, the two attention
products (q k^T and attn v), the patch-embedding convolution and the head. Norms,
softmax, GELU and additions are not counted (fvcore counts layer norms, about 0.1% of a
ViT; ``torch.utils.flop_counter.FlopCounterMode`` does not, and counts 2 FLOPs per MAC).

Every function takes token counts as float tensors of shape (B,) (or plain numbers) so
the model bills each clip for the tokens it really used.

Divided block over T frames x S tokens per frame, width D, MLP ratio r:
    temporal:  qkv + proj + temporal_fc    5 T S D^2      attention   2 S T^2 D
    spatial:   qkv + proj (CLS per frame)  4 T (S+1) D^2  attention   2 T (S+1)^2 D
    MLP:                                   2 r (T S + 1) D^2
Joint block over n = T S + 1 tokens:       (4 + 2r) n D^2 + 2 n^2 D
Space-only block (T frames of S + 1):      T [(4 + 2r)(S+1) D^2 + 2 (S+1)^2 D]
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

Count = Union[Tensor, float, int]


def attention_macs(tokens: Count, dim: int, groups: Count = 1) -> Count:
    """q k^T and attn v for ``groups`` independent sequences of ``tokens`` tokens."""
    return 2 * groups * tokens * tokens * dim


def linear_macs(tokens: Count, in_features: int, out_features: int) -> Count:
    return tokens * in_features * out_features


def divided_block_macs(frames: Count, per_frame: Count, dim: int, mlp_ratio: float) -> Count:
    """One divided space-time block: temporal attention, spatial attention, MLP."""
    patches = frames * per_frame
    temporal = 5 * linear_macs(patches, dim, dim) + attention_macs(frames, dim, groups=per_frame)
    spatial = 4 * linear_macs(frames * (per_frame + 1), dim, dim) \
        + attention_macs(per_frame + 1, dim, groups=frames)
    mlp = 2 * mlp_ratio * linear_macs(patches + 1, dim, dim)
    return temporal + spatial + mlp


def joint_block_macs(frames: Count, per_frame: Count, dim: int, mlp_ratio: float) -> Count:
    """One joint space-time block: one attention over all patches and the class token."""
    tokens = frames * per_frame + 1
    return (4 + 2 * mlp_ratio) * linear_macs(tokens, dim, dim) + attention_macs(tokens, dim)


def space_only_block_macs(frames: Count, per_frame: Count, dim: int, mlp_ratio: float) -> Count:
    """One space-only block: each frame (with its own class token) on its own."""
    tokens = per_frame + 1
    per_frame_macs = (4 + 2 * mlp_ratio) * linear_macs(tokens, dim, dim) + attention_macs(tokens, dim)
    return frames * per_frame_macs


BLOCK_MACS = {
    "divided_space_time": divided_block_macs,
    "joint_space_time": joint_block_macs,
    "space_only": space_only_block_macs,
}


def embed_macs(frames: int, num_patches: int, in_chans: int, patch_size: int, dim: int) -> int:
    """The patch-embedding convolution: one (C p p) -> D projection per patch."""
    return frames * num_patches * in_chans * patch_size * patch_size * dim


def head_macs(dim: int, num_classes: int) -> int:
    return dim * num_classes


def model_macs(attention_type: str, frames: int, num_patches: int, depth: int, dim: int,
               mlp_ratio: float, in_chans: int, patch_size: int, num_classes: int) -> float:
    """MACs of one unreduced forward pass of one clip (one view)."""
    block = BLOCK_MACS[attention_type](frames, num_patches, dim, mlp_ratio)
    return float(embed_macs(frames, num_patches, in_chans, patch_size, dim)
                 + depth * block + head_macs(dim, num_classes))


def count_flops(model: torch.nn.Module, *inputs: Tensor) -> int:
    """FLOPs (2 per MAC) of ``model(*inputs)`` measured by PyTorch's FlopCounterMode.

    Attention runs on the explicit path while counting: on the CPU the fused kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP formula registered, so
    FlopCounterMode would silently skip the attention products.
    """
    from torch.utils.flop_counter import FlopCounterMode

    fused = getattr(getattr(model, "config", None), "fused_attention", None)
    if fused:
        model.set_fused_attention(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        if fused:
            model.set_fused_attention(True)
    return int(counter.get_total_flops())
