"""Analytic multiply-accumulate (MAC) counts for TimeSformer layers.

Papers' "GFLOPs" for ViTs and TimeSformer are fvcore counts, which are MACs (one fused
multiply-add = 1). We count the matrix products: linear layers, the two attention
products (q k^T and attn v), the patch-embedding convolution and the head. Norms,
softmax, GELU and additions are not counted (fvcore counts layer norms, about 0.1% of a
ViT; ``torch.utils.flop_counter.FlopCounterMode`` does not, and counts 2 FLOPs per MAC).

Design notes: docs/design.md, "ired_video.flops".
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

Count = Union[Tensor, float, int]


def attention_macs(tokens: Count, dim: int, groups: Count = 1) -> Count:
    """q k^T and attn v for ``groups`` independent sequences of ``tokens`` tokens."""
    return 2 * groups * tokens * tokens * dim


def linear_macs(tokens: Count, in_features: int, out_features: int) -> Count:
    return tokens * in_features * out_features


def mlp_macs(tokens: Count, dim: int, mlp_ratio: float) -> Count:
    """The two MLP layers over ``tokens`` tokens."""
    return 2 * mlp_ratio * linear_macs(tokens, dim, dim)


def divided_attention_macs(frame_counts: Tensor, dim: int, temporal_pairs: Optional[Tensor] = None,
                           spatial_pairs: Optional[Tensor] = None) -> Tensor:
    """Temporal then spatial attention of a divided block (no MLP), per clip.

    frame_counts: (B, F) real tokens in each frame. temporal_pairs: (B,) (query, key) pairs
    of temporal attention; by default every slot attends over all frames (K * F^2).
    spatial_pairs: (B,) (query, key) pairs spatial attention computed over all frames (a
    gathered window kernel); by default each frame's (S_t + 1)^2.
    """
    frames = frame_counts.shape[-1]
    if temporal_pairs is None:
        temporal_pairs = frame_counts.amax(dim=-1) * frames * frames
    temporal = 5 * linear_macs(frame_counts.sum(-1), dim, dim) + 2 * temporal_pairs * dim
    per_frame = frame_counts + 1  # each frame's copy of the class token
    spatial = 4 * linear_macs(per_frame, dim, dim).sum(-1)
    if spatial_pairs is None:
        spatial = spatial + attention_macs(per_frame, dim).sum(-1)
    else:
        spatial = spatial + 2 * spatial_pairs * dim
    return temporal + spatial


def joint_attention_macs(frame_counts: Tensor, dim: int) -> Tensor:
    """One attention over all patch tokens and the class token (no MLP), per clip."""
    tokens = frame_counts.sum(-1) + 1
    return 4 * linear_macs(tokens, dim, dim) + attention_macs(tokens, dim)


def space_only_attention_macs(frame_counts: Tensor, dim: int) -> Tensor:
    """Each frame, with its own class token, attends within itself (no MLP), per clip."""
    tokens = frame_counts + 1
    return (4 * linear_macs(tokens, dim, dim) + attention_macs(tokens, dim)).sum(-1)


def embed_macs(frames: int, num_patches: int, in_chans: int, patch_size: int, dim: int) -> int:
    """The patch-embedding convolution: one (C p p) -> D projection per patch."""
    return frames * num_patches * in_chans * patch_size * patch_size * dim


def conv_stem_widths(patch_size: int, dim: int) -> list[int]:
    """Channel widths of the conv patch stem's log2(p) stride-2 stages: doubling up to ``dim``
    (patch 8, dim 96: 24, 48, 96), at least 8."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or 1 << stages != patch_size:
        raise ValueError(f"the conv patch stem needs a power-of-two patch_size >= 2, got {patch_size}")
    return [max(8, dim >> (stages - 1 - k)) for k in range(stages)]


def conv_stem_macs(frames: int, grid: tuple[int, int], in_chans: int, patch_size: int, dim: int,
                   temporal_kernels: Optional[Sequence[int]] = None) -> int:
    """The conv patch stem on ``frames`` frames of (grid * patch) px: each 3x3 stride-2 stage
    over ``temporal_kernels[k]`` frames (9 k C_in C_out per output pixel; zero padding billed
    as the counters do; default 1 each) and the final 1x1 projection (C D per patch)."""
    widths = conv_stem_widths(patch_size, dim)
    kernels = list(temporal_kernels or [1] * len(widths))
    total, width_in = 0, in_chans
    for k, (width, span) in enumerate(zip(widths, kernels), start=1):
        scale = patch_size >> k  # output pixels per patch side after k halvings
        total += grid[0] * scale * grid[1] * scale * 9 * span * width_in * width
        width_in = width
    return frames * (total + grid[0] * grid[1] * width_in * dim)


def head_macs(dim: int, num_classes: int) -> int:
    return dim * num_classes


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
