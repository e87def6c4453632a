"""What a set of responsive fields would restrict: per-block statistics, the share of
attention edges the window masks, and the attention MACs a gathered kernel would need.

Edges are the (query, key) pairs of divided attention in one clip: spatial attention has
T frames x (1+N)^2 pairs (the class token's row and column are never masked), temporal
attention N locations x T^2 pairs. A window masks the pairs outside a query's field.

Design notes: docs/design.md, "ired_video.explain.field_summary".
"""
from __future__ import annotations

from typing import Any

import torch

from ired_video.explain.fields import ResponsiveFields
from ired_video.models.window import chebyshev_distances, gathered_plan


def spatial_kept_pairs(radius: list[int], grid: tuple[int, int]) -> int:
    """(query, key) pairs one frame's spatial attention keeps, class token included."""
    num_patches = grid[0] * grid[1]
    within = chebyshev_distances(grid) <= torch.tensor(radius)[:, None]  # (N, N)
    return (1 + num_patches) + num_patches + int(within.sum())  # class row, class column, patch pairs


def temporal_kept_pairs(span: list[int], frames: int) -> int:
    """(query, key) pairs the temporal attention of one clip keeps, over all locations."""
    steps = torch.arange(frames)
    gap = (steps[:, None] - steps[None, :]).abs()  # (T, T)
    return int((gap[None] <= torch.tensor(span)[:, None, None]).sum())  # (N, T, T) summed


def _stats(values: list[int]) -> dict[str, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(tensor.mean()), "min": int(tensor.min()), "max": int(tensor.max())}


def gathered_spatial_pairs(radius: list[int], grid: tuple[int, int]) -> int:
    """(query, key) pairs one full-grid frame's spatial attention computes with the gathered
    kernel (dense (1 + N)^2 where the block keeps the masked kernel)."""
    plan = gathered_plan(radius, grid)
    return (1 + grid[0] * grid[1]) ** 2 if plan is None else plan.pairs_per_frame()


def block_summaries(fields: ResponsiveFields, dim: int) -> list[dict[str, Any]]:
    """Per block: radius/span statistics, masked share of spatial/temporal edges, attention MACs
    of one clip (full = dense, the masked kernel; computed = the gathered kernel, billed;
    kept = analytic, kept pairs only)."""
    grid, frames = tuple(fields.grid), fields.frames
    num_patches = grid[0] * grid[1]
    spatial_total = frames * (1 + num_patches) ** 2
    temporal_total = num_patches * frames * frames
    out = []
    for radius, span in zip(fields.radius, fields.span):
        spatial_kept = frames * spatial_kept_pairs(radius, grid)
        temporal_kept = temporal_kept_pairs(span, frames)
        out.append({
            "radius": _stats(radius), "span": _stats(span),
            "spatial_masked_share": 1 - spatial_kept / spatial_total,
            "temporal_masked_share": 1 - temporal_kept / temporal_total,
            "attention_macs_full": 2 * dim * (spatial_total + temporal_total),
            "attention_macs_computed": 2 * dim * (frames * gathered_spatial_pairs(radius, grid) + temporal_total),
            "attention_macs_kept": 2 * dim * (spatial_kept + temporal_kept),
        })
    return out


def summarize(fields: ResponsiveFields, dim: int, plain_gmacs: float) -> dict[str, Any]:
    """Blocks plus per-clip totals: the GMACs the windowed model bills with the gathered
    kernel (the default), with the masked kernel (= the plain model's), and the analytic
    kept-pairs figure (not reached by any kernel here)."""
    blocks = block_summaries(fields, dim)
    computed = sum(b["attention_macs_full"] - b["attention_macs_computed"] for b in blocks)
    kept = sum(b["attention_macs_full"] - b["attention_macs_kept"] for b in blocks)
    return {"blocks": blocks, "gmacs_billed": plain_gmacs - computed / 1e9, "gmacs_masked": plain_gmacs,
            "gmacs_kept_pairs_analytic": plain_gmacs - kept / 1e9,
            "note": "gmacs_billed: the windowed model with the gathered kernel (window_kernel: gathered, "
                    "the default); gmacs_masked: with window_kernel: masked (= the plain model); "
                    "gmacs_kept_pairs_analytic counts only kept attention pairs and is NOT spent by any kernel here"}


def format_summary(summary: dict[str, Any]) -> str:
    """A compact table of ``summarize``'s output."""
    lines = ["block  radius mean [min,max]  span mean [min,max]  masked spatial  masked temporal",
             *(f"{index:>5}  {b['radius']['mean']:>11.2f} [{b['radius']['min']},{b['radius']['max']}]"
               f"  {b['span']['mean']:>9.2f} [{b['span']['min']},{b['span']['max']}]"
               f"  {b['spatial_masked_share']:>14.1%}  {b['temporal_masked_share']:>15.1%}"
               for index, b in enumerate(summary["blocks"]))]
    lines.append(f"GMACs per clip: {summary['gmacs_billed']:.4f} billed (gathered kernel); "
                 f"{summary['gmacs_masked']:.4f} with window_kernel=masked (= plain model); "
                 f"{summary['gmacs_kept_pairs_analytic']:.4f} kept pairs only (analytic)")
    return "\n".join(lines)

