"""Window-free attention: each patch attends only inside its own responsive field.

Ma et al. derive adaptive, per-patch attention windows ("WinfT") from each patch's
effective responsive field; their rule is not public (methods.md 3.3). Ours takes the
fields from data (``ired_video.explain.fields``) and applies them in a divided block:

- spatial attention: a query patch at location n reads key patch m of its frame only if
  the Chebyshev distance between their grid cells is <= radius[l][n]; the class token
  reads and is read by every patch (it is the model's summary and the head reads it);
- temporal attention: location n at frame t reads frame t' only if |t - t'| <= span[l][n].

Two kernels compute the spatial window (``ModelConfig.window_kernel``):

- ``masked``: dense attention with a -inf logit bias outside each field; costs and is
  billed as full attention.
- ``gathered`` (``SpatialPlan`` + ``gathered_attention``): the grid is cut into tiles of
  whole grid rows; the queries of a tile read only the class token and the band of grid
  rows holding the union of their fields (shifted to stay inside the grid), with the
  same -inf mask for keys outside each query's own field. Only those (query, key) pairs
  are computed and billed (``SpatialPlan.pairs_per_frame``). Same outputs as the masked
  kernel up to float rounding.

  Layout: keys and values are laid out once per call as h rows of [class token, w
  patches], so every tile's band is a contiguous slice (no gather, no copy per tile);
  each band thus holds b copies of the class token, all but the first masked (and
  billed: they are computed).

Temporal windows are always masked (dense over the T frames, billed so).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WINDOW_KERNELS = ("gathered", "masked")
DEFAULT_TILE_ROWS = 2  # grid rows per query tile: the fastest of 1-4 on a CPU at 14x14 (docs/fields.md)


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


class SpatialPlan(nn.Module):
    """Which (query, key) pairs the gathered kernel computes for one block's radii on a grid.

    Query patches are cut into tiles of ``tile_rows`` whole grid rows (the last tile may
    have fewer). A tile of q rows whose largest radius is R reads the band of
    b = min(h, q + 2R) grid rows around it, shifted to lie inside the grid: it holds every
    key any of the tile's queries may read. In the kernel's key layout (h rows of
    [class token, w patches]) the band is b * (w + 1) consecutive keys.

    ``tiles``: per tile (first query row, query rows q, first band row, band rows b).
    Buffers ``mask_i`` (q*w, b*(w+1)) float: 0 where tile i's query may read the key (the
    band's first class-token copy and the patches in its field), -inf elsewhere.
    ``allowed`` (1 + N, 1 + N) bool is the same window for the masked kernel.
    """

    def __init__(self, radius: Sequence[int], grid: tuple[int, int], tile_rows: int = DEFAULT_TILE_ROWS) -> None:
        super().__init__()
        height, width = grid
        if len(radius) != height * width:
            raise ValueError(f"{len(radius)} radii for a {height}x{width} grid")
        if tile_rows < 1:
            raise ValueError(f"tile_rows={tile_rows}: expected at least 1")
        self.grid, self.tile_rows = (height, width), tile_rows
        reach = torch.tensor(list(radius))  # (N,)
        window = spatial_window(radius, grid)
        window = torch.ones(height * width, height * width, dtype=torch.bool) if window is None else window
        self.tiles: list[tuple[int, int, int, int]] = []
        for index, row in enumerate(range(0, height, tile_rows)):
            lines = min(tile_rows, height - row)
            band = _key_span(row, lines, int(reach[row * width:(row + lines) * width].max()), height)
            self.tiles.append((row, lines, int(band[0]), len(band)))
            inside = window[row * width:(row + lines) * width].reshape(lines * width, height, width)  # (q*w, h, w)
            inside = inside[:, band]  # (q*w, b, w)
            first_cls = torch.zeros(lines * width, len(band), 1, dtype=torch.bool)
            first_cls[:, 0] = True
            inside = torch.cat([first_cls, inside], dim=2).flatten(1)  # (q*w, b*(w+1))
            self.register_buffer(f"mask_{index}", torch.zeros(inside.shape).masked_fill(~inside, float("-inf")),
                                 persistent=False)
        self.register_buffer("allowed", spatial_allowed(window, torch.arange(height * width)[None])[0],
                             persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def pairs_per_frame(self) -> int:
        """(query, key) pairs the gathered kernel computes per frame: the class token's full
        row plus, per tile, its q*w queries x b*(w+1) band keys."""
        width = self.grid[1]
        return 1 + self.num_patches + sum(lines * width * band * (width + 1) for _, lines, _, band in self.tiles)

    def mask(self, index: int) -> Tensor:
        return getattr(self, f"mask_{index}")

    def key_positions(self, index: int) -> Tensor:
        """(b*(w+1),) positions in the [class token, patches] sequence of tile ``index``'s keys."""
        _, _, first, band = self.tiles[index]
        width = self.grid[1]
        rows = torch.arange(first, first + band)[:, None] * width + torch.arange(width)  # (b, w)
        return torch.cat([torch.zeros(band, 1, dtype=torch.long), 1 + rows], dim=1).flatten()


def gathered_plan(radius: Sequence[int], grid: tuple[int, int]) -> Optional[SpatialPlan]:
    """The gathered kernel's plan for these radii, or None where it would not compute fewer
    pairs than dense attention (bands covering the grid: no mask, or only the masked kernel
    pays)."""
    if spatial_window(radius, grid) is None:
        return None
    plan = SpatialPlan(radius, grid)
    return plan if plan.pairs_per_frame() < (1 + plan.num_patches) ** 2 else None


def _key_span(start: int, size: int, reach: int, length: int) -> Tensor:
    """Grid lines [start - reach, start + size + reach) clipped to ``length`` lines and
    shifted to lie in [0, length): (min(length, size + 2 reach),) long."""
    span = min(length, size + 2 * reach)
    first = min(max(start - reach, 0), length - span)
    return torch.arange(first, first + span)


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, plan: SpatialPlan, scale: float,
                       fused: bool, dropout: float = 0.0) -> Tensor:
    """Windowed spatial attention computing only the plan's pairs.

    q, k, v: (G, heads, 1 + N, head_dim), class token first, patch n at 1 + n (the full
    grid, row-major). Returns the per-head outputs (G, heads, 1 + N, head_dim), equal to
    dense attention with ``plan.allowed`` as key mask (the class token reads every key).
    ``fused`` runs each tile through ``F.scaled_dot_product_attention``, else explicit
    matmuls (what FlopCounterMode sees).
    """
    groups, heads, length, head_dim = q.shape
    height, width = plan.grid
    if length != 1 + plan.num_patches:
        raise ValueError(f"the gathered window is for 1+{plan.num_patches} tokens, got {length}")
    q = q.contiguous()  # tiles are slices of it; strided slices slow the CPU kernels down
    outs = [_attention(q[:, :, :1], k, v, None, scale, fused, dropout)]  # the class token reads every key
    k_rows, v_rows = (_rows_with_class_token(t, height, width) for t in (k, v))  # (G, heads, h*(w+1), hd)
    for index, (row, lines, first, band) in enumerate(plan.tiles):
        q_tile = q[:, :, 1 + row * width:1 + (row + lines) * width]  # (G, heads, q*w, head_dim)
        keys = slice(first * (width + 1), (first + band) * (width + 1))
        outs.append(_attention(q_tile, k_rows[:, :, keys], v_rows[:, :, keys], plan.mask(index).to(q.dtype),
                               scale, fused, dropout))  # (G, heads, q*w, head_dim)
    return torch.cat(outs, dim=2)


def _attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float, fused: bool,
               dropout: float) -> Tensor:
    """softmax(q k^T scale + bias) v over (G, heads, L, head_dim) inputs."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    logits = (q * scale) @ k.transpose(-2, -1)  # (G, heads, Lq, Lk)
    if bias is not None:
        logits = logits + bias
    return F.dropout(logits.softmax(dim=-1), dropout) @ v


def _rows_with_class_token(tokens: Tensor, height: int, width: int) -> Tensor:
    """(G, heads, 1 + h*w, head_dim) -> (G, heads, h * (w + 1), head_dim): each grid row
    preceded by a copy of the class token."""
    groups, heads, _, head_dim = tokens.shape
    cls = tokens[:, :, :1, None].expand(groups, heads, height, 1, head_dim)
    rows = tokens[:, :, 1:].reshape(groups, heads, height, width, head_dim)  # (G, heads, h, w, hd)
    return torch.cat([cls, rows], dim=3).reshape(groups, heads, height * (width + 1), head_dim)
