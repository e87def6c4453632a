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
from ired_video.models.window import chebyshev_distances


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


def block_summaries(fields: ResponsiveFields, dim: int) -> list[dict[str, Any]]:
    """Per block: radius/span statistics, masked share of spatial/temporal edges, attention MACs
    of one clip (full = what we spend; gathered = analytic, kept pairs only)."""
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
            "attention_macs_gathered": 2 * dim * (spatial_kept + temporal_kept),
        })
    return out


def summarize(fields: ResponsiveFields, dim: int, billed_gmacs: float) -> dict[str, Any]:
    """Blocks plus per-clip totals: the GMACs we bill (dense masked attention = the plain
    model's) and the analytic gathered-kernel GMACs (not spent by this implementation)."""
    blocks = block_summaries(fields, dim)
    saved = sum(b["attention_macs_full"] - b["attention_macs_gathered"] for b in blocks)
    return {"blocks": blocks, "gmacs_billed": billed_gmacs,
            "gmacs_gathered_kernel_analytic": billed_gmacs - saved / 1e9,
            "note": "gmacs_billed is what the windowed model spends (dense masked attention); "
                    "gmacs_gathered_kernel_analytic counts only kept attention pairs and is NOT spent "
                    "by this implementation"}


def format_summary(summary: dict[str, Any]) -> str:
    """A compact table of ``summarize``'s output."""
    lines = ["block  radius mean [min,max]  span mean [min,max]  masked spatial  masked temporal",
             *(f"{index:>5}  {b['radius']['mean']:>11.2f} [{b['radius']['min']},{b['radius']['max']}]"
               f"  {b['span']['mean']:>9.2f} [{b['span']['min']},{b['span']['max']}]"
               f"  {b['spatial_masked_share']:>14.1%}  {b['temporal_masked_share']:>15.1%}"
               for index, b in enumerate(summary["blocks"]))]
    lines.append(f"GMACs per clip: {summary['gmacs_billed']:.4f} billed (dense masked attention = plain model); "
                 f"{summary['gmacs_gathered_kernel_analytic']:.4f} with a gathered kernel "
                 "(analytic, not implemented)")
    return "\n".join(lines)

