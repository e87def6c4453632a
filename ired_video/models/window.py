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
  query patches; each tile reads only the class token and the keys of one rectangle of
  the grid holding the union of its queries' fields (shifted to stay inside the grid),
  with the same -inf mask for keys outside each query's own field. Only those (query,
  key) pairs are computed and billed (``SpatialPlan.pairs_per_frame``). Same outputs as
  the masked kernel up to float rounding.

Temporal windows are always masked (dense over the T frames, billed so).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WINDOW_KERNELS = ("gathered", "masked")
DEFAULT_TILE = (2, 2)  # query tile (rows, cols); docs/fields.md has the timing that chose it
CHUNK_ELEMENTS = 1 << 24  # logits per chunk of tiles: bounds the gathered kernel's memory


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


def check_fields(radius: Optional[list[list[int]]], span: Optional[list[list[int]]], depth: int,
                 num_patches: int) -> Optional[str]:
    """None if the per-block, per-location fields fit the model, else what is wrong."""
    for key, values in (("window_radius", radius), ("window_span", span)):
        if values is None:
            continue
        if len(values) != depth:
            return f"{key}: {len(values)} blocks given, the model has depth={depth}"
        for block, row in enumerate(values):
            if len(row) != num_patches or min(row) < 0:
                return f"{key}[{block}]: expected {num_patches} non-negative values (one per patch location)"
    return None


class SpatialPlan(nn.Module):
    """Which (query, key) pairs the gathered kernel computes for one block's radii on a grid.

    Query patches are cut into tiles of ``tile`` (rows, cols) (smaller at the grid's
    bottom and right edges). A tile whose largest radius is R reads the key rectangle of
    (rows + 2R) x (cols + 2R) cells around it, clipped to the grid size and shifted to lie
    inside it: it holds every key any of the tile's queries may read. Tiles with the same
    query and key counts form one group, computed as one batch.

    Buffers per group i: ``queries_i`` (tiles, Q) and ``keys_i`` (tiles, 1 + Kw) long
    positions in the [class token, patches] sequence (class token = 0, first key of every
    tile); ``mask_i`` (tiles, Q, 1 + Kw) float, 0 where the query may read the key, -inf
    elsewhere. ``order`` (1 + N,) long puts [class row, group outputs...] back in sequence
    order; ``allowed`` (1 + N, 1 + N) bool is the same window for the masked kernel.
    """

    def __init__(self, radius: Sequence[int], grid: tuple[int, int],
                 tile: tuple[int, int] = DEFAULT_TILE) -> None:
        super().__init__()
        height, width = grid
        if len(radius) != height * width:
            raise ValueError(f"{len(radius)} radii for a {height}x{width} grid")
        if min(tile) < 1:
            raise ValueError(f"tile={tile}: expected positive (rows, cols)")
        self.grid, self.tile = (height, width), tuple(tile)
        distance = chebyshev_distances(grid)  # (N, N)
        radii = torch.tensor(list(radius))
        groups: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}
        for row in range(0, height, tile[0]):
            for col in range(0, width, tile[1]):
                rows = torch.arange(row, min(row + tile[0], height))
                cols = torch.arange(col, min(col + tile[1], width))
                queries = (rows[:, None] * width + cols[None, :]).flatten()  # (Q,)
                reach = int(radii[queries].max())
                key_rows = _key_span(row, len(rows), reach, height)
                key_cols = _key_span(col, len(cols), reach, width)
                keys = (key_rows[:, None] * width + key_cols[None, :]).flatten()  # (Kw,)
                groups.setdefault((len(queries), len(keys)), []).append((queries, keys))
        order, self.group_shapes = [torch.zeros(1, dtype=torch.long)], []
        for index, ((num_queries, num_keys), tiles) in enumerate(sorted(groups.items())):
            queries = torch.stack([q for q, _ in tiles])  # (tiles, Q)
            keys = torch.stack([k for _, k in tiles])  # (tiles, Kw)
            inside = distance[queries[:, :, None], keys[:, None, :]] <= radii[queries][:, :, None]  # (tiles, Q, Kw)
            inside = torch.cat([torch.ones(*inside.shape[:2], 1, dtype=torch.bool), inside], dim=-1)  # CLS first
            mask = torch.zeros(inside.shape).masked_fill(~inside, float("-inf"))
            with_cls = torch.cat([torch.zeros(len(tiles), 1, dtype=torch.long), 1 + keys], dim=1)  # (tiles, 1+Kw)
            self.register_buffer(f"queries_{index}", 1 + queries, persistent=False)
            self.register_buffer(f"keys_{index}", with_cls, persistent=False)
            self.register_buffer(f"mask_{index}", mask, persistent=False)
            self.group_shapes.append((len(tiles), num_queries, 1 + num_keys))
            order.append(1 + queries.flatten())
        self.register_buffer("order", torch.argsort(torch.cat(order)), persistent=False)
        window = spatial_window(radius, grid)
        window = torch.ones(height * width, height * width, dtype=torch.bool) if window is None else window
        self.register_buffer("allowed", spatial_allowed(window, torch.arange(height * width)[None])[0],
                             persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def pairs_per_frame(self) -> int:
        """(query, key) pairs the gathered kernel computes per frame: the class token's full
        row plus, per tile, its queries x (class token + key rectangle)."""
        return 1 + self.num_patches + sum(tiles * queries * keys for tiles, queries, keys in self.group_shapes)

    def group(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Group ``index``'s (queries, keys, mask) buffers."""
        return (getattr(self, f"queries_{index}"), getattr(self, f"keys_{index}"),
                getattr(self, f"mask_{index}"))


def _key_span(start: int, size: int, reach: int, length: int) -> Tensor:
    """Grid lines [start - reach, start + size + reach) clipped to ``length`` lines and
    shifted to lie in [0, length): (min(length, size + 2 reach),) long."""
    span = min(length, size + 2 * reach)
    first = min(max(start - reach, 0), length - span)
    return torch.arange(first, first + span)


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, plan: SpatialPlan, scale: float,
                       fused: bool, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
    """Windowed spatial attention computing only the plan's pairs.

    q, k, v: (G, heads, 1 + N, head_dim), class token first, patch n at 1 + n (the full
    grid, row-major). Returns the per-head outputs (G, heads, 1 + N, head_dim), equal to
    dense attention with ``plan.allowed`` as key mask, and the class token's head-mean
    attention row (G, 1 + N). ``fused`` runs each tile batch through
    ``F.scaled_dot_product_attention``, else explicit matmuls (what FlopCounterMode sees).
    """
    groups, heads, length, head_dim = q.shape
    if length != 1 + plan.num_patches:
        raise ValueError(f"the gathered window is for 1+{plan.num_patches} tokens, got {length}")
    cls_logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (G, heads, 1, 1+N)
    cls_probs = cls_logits.softmax(dim=-1)
    outs = [F.dropout(cls_probs, dropout) @ v]  # (G, heads, 1, head_dim)
    for index, (num_tiles, num_queries, num_keys) in enumerate(plan.group_shapes):
        queries, keys, mask = plan.group(index)
        step = max(1, CHUNK_ELEMENTS // (groups * heads * num_queries * num_keys))
        for first in range(0, num_tiles, step):
            part = slice(first, min(first + step, num_tiles))
            tiles = part.stop - part.start
            q_tile = q[:, :, queries[part].flatten()].reshape(groups, heads * tiles, num_queries, head_dim)
            k_tile = k[:, :, keys[part].flatten()].reshape(groups, heads * tiles, num_keys, head_dim)
            v_tile = v[:, :, keys[part].flatten()].reshape(groups, heads * tiles, num_keys, head_dim)
            bias = mask[part].expand(heads, tiles, num_queries, num_keys).reshape(1, heads * tiles, num_queries,
                                                                                  num_keys)
            if fused:
                out = F.scaled_dot_product_attention(q_tile, k_tile, v_tile, attn_mask=bias.to(q.dtype),
                                                     dropout_p=dropout)
            else:
                logits = (q_tile * scale) @ k_tile.transpose(-2, -1) + bias  # (G, heads*tiles, Q, 1+Kw)
                out = F.dropout(logits.softmax(dim=-1), dropout) @ v_tile
            outs.append(out.reshape(groups, heads, tiles * num_queries, head_dim))  # (G, heads, tiles*Q, hd)
    out = torch.cat(outs, dim=2).index_select(2, plan.order)  # (G, heads, 1+N, head_dim), sequence order
    return out, cls_probs[:, :, 0].mean(dim=1)
