"""Window-free attention: each patch attends only inside its own responsive field.

Ma et al. derive adaptive, per-patch attention windows ("WinfT") from each patch's
effective responsive field; their rule is not public (methods.md 3.3). Ours takes the
fields from data (``ired_video.explain.fields``) and applies them as key masks in a
divided block:

- spatial attention: a query patch at location n reads key patch m of its frame only if
  the Chebyshev distance between their grid cells is <= radius[l][n]; the class token
  reads and is read by every patch (it is the model's summary and the head reads it);
- temporal attention: location n at frame t reads frame t' only if |t - t'| <= span[l][n].

Compute. The masked attention is computed densely (a logit bias of -inf), so it costs
exactly what full attention costs, and is billed so: the GMACs of a windowed model equal
the plain model's. Gathering each query's window would save
2 * D * (L - w_i) MACs per query i, but would need a gather per query; we do not
implement it, so we do not bill it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def chebyshev_distances(grid: tuple[int, int]) -> Tensor:
    """(N, N) long Chebyshev distance between the cells of an (h, w) patch grid."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (N,)
    return torch.maximum((rows[:, None] - rows[None, :]).abs(), (cols[:, None] - cols[None, :]).abs())


def spatial_window(radius: Sequence[int], grid: tuple[int, int]) -> Optional[Tensor]:
    """(N, N) bool: query n may read key m; None when every query may read every key."""
    allowed = chebyshev_distances(grid) <= torch.tensor(list(radius))[:, None]
    return None if bool(allowed.all()) else allowed


def temporal_window(span: Sequence[int], frames: int) -> Optional[Tensor]:
    """(N, T, T) bool: location n at frame t may read frame t'; None when nothing is masked."""
    steps = torch.arange(frames)
    gap = (steps[:, None] - steps[None, :]).abs()  # (T, T)
    allowed = gap[None] <= torch.tensor(list(span))[:, None, None]
    return None if bool(allowed.all()) else allowed


def add_window(bias: Optional[Tensor], allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Logit bias (G, 1, 1|L, L) or None plus a (G, L, L) key mask -> (G, 1, L, L).

    A row left without any key (only possible for padding tokens) is unmasked, so that the
    softmax never sees a row of -inf.
    """
    window = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    window = window.masked_fill(~allowed, float("-inf"))[:, None]  # (G, 1, L, L)
    total = window if bias is None else bias + window
    dead = torch.isinf(total).all(dim=-1, keepdim=True) & (total < 0).all(dim=-1, keepdim=True)
    return total.masked_fill(dead, 0.0)


def spatial_allowed(window: Tensor, location: Tensor) -> Tensor:
    """(N, N) window and (G, K) slot locations -> (G, 1+K, 1+K), class token first, always allowed."""
    groups, slots = location.shape
    allowed = torch.ones(groups, 1 + slots, 1 + slots, dtype=torch.bool, device=location.device)
    allowed[:, 1:, 1:] = window.to(location.device)[location[:, :, None], location[:, None, :]]
    return allowed


