"""DVT's feature and relationship reuse between cascade stages, defined for video.

Feature reuse (DVT §3.2). The previous stage's final patch tokens (B, T1, N1, D) go
through LayerNorm and an MLP (D -> hidden -> e, GELU), are laid out as a (T1, h1, w1)
grid and resized (trilinear) to the next stage's (T2, h2, w2) grid; the class token gets
zeros. Every block of the next stage concatenates them to its MLP input: fc1 sees
[x; f] (D + e). We hold fc1's extra columns as a separate bias-free ``Linear(e, hidden)``
per block, so fc1([x; f]) = fc1(x) + W_f f, the stage keeps the backbone's parameter
names, and zero-initialised W_f make an untrained reuse an exact no-op. Features are kept
per *original* patch (index t * N + n) and gathered by ``state.pos`` at each block, so they
follow any token reducer running in the stage.

Relationship reuse (DVT §3.3), for divided space-time attention. Every upstream stage's
pre-softmax logits of all layers and heads are channels of one tensor per attention kind:
    spatial:  (B, T1, 1+N1, 1+N1, L1*H)  one map per frame (class token first)
    temporal: (B, N1, T1, T1, L1*H)      one map per spatial location
An MLP over channels (DVT's three 1x1 convolutions with GELU; here ``Linear`` layers on
channels-last tensors, the same arithmetic) maps them to L2*H channels, one bias per
downstream layer and head; then they are resized to the downstream geometry:
    spatial:  frames by nearest index in time; the patch part of both token axes as
              (h1, w1) grids, bilinear, to (h2, w2); the class-token row and column
              likewise along their patch axis; the class-class entry kept;
    temporal: locations as an (h1, w1) grid, bilinear, to (h2, w2); both frame axes
              by nearest index to T2.
So spatial logits inform spatial attention of the matching frame and temporal logits
inform temporal attention at the matching location. With several upstream stages each
has its own MLP and their resized outputs are summed (DVT concatenates them at one
resolution; summing avoids resizing the inputs first). The last layer is zero-initialised.

Billing. MLPs are matrix products and are billed (``flops`` convention: MACs of every
``Linear``, on every row they process); norms, GELU and resizing are not (neither does
FlopCounterMode). A clip pays for the reuse modules of a stage only if it runs that stage.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ired_video.tokens import TokenState

KINDS = ("temporal", "spatial")


def nearest_indices(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Indices (size_out,) of the input positions nearest to each output segment's centre."""
    centres = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * size_in / size_out
    return centres.floor().long().clamp(max=size_in - 1)


def resize_grid_axis(x: Tensor, axis: int, grid_in: tuple[int, int], grid_out: tuple[int, int]) -> Tensor:
    """Resize one axis of ``x`` holding a flattened (h, w) grid to another grid (bilinear)."""
    if grid_in == grid_out:
        return x
    moved = x.movedim(axis, -1)
    lead = moved.shape[:-1]
    images = moved.reshape(-1, 1, *grid_in)  # (M, 1, h1, w1)
    images = F.interpolate(images, size=grid_out, mode="bilinear", align_corners=False)
    return images.reshape(*lead, grid_out[0] * grid_out[1]).movedim(-1, axis)  # (..., h2*w2, ...)


def resize_pair_map(x: Tensor, axes: tuple[int, int], grid_in: tuple[int, int], grid_out: tuple[int, int]) -> Tensor:
    """Resize a (1+N) x (1+N) token-pair map (class token first on both ``axes``)."""
    if grid_in == grid_out:
        return x
    q_axis, k_axis = axes
    cls_q, patch_q = x.narrow(q_axis, 0, 1), x.narrow(q_axis, 1, x.shape[q_axis] - 1)
    rows = []
    for part in (cls_q, patch_q):
        cls_k, patch_k = part.narrow(k_axis, 0, 1), part.narrow(k_axis, 1, part.shape[k_axis] - 1)
        rows.append(torch.cat([cls_k, resize_grid_axis(patch_k, k_axis, grid_in, grid_out)], dim=k_axis))
    patches = resize_grid_axis(rows[1], q_axis, grid_in, grid_out)
    return torch.cat([rows[0], patches], dim=q_axis)


def mlp_macs(rows: int | Tensor, widths: list[int]) -> int | Tensor:
    """MACs of a chain of Linear layers of ``widths`` over ``rows`` rows."""
    return rows * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


class FeatureReuse(nn.Module):
    """Upstream final patch tokens -> LN -> MLP (D -> hidden -> out) -> next stage's grid."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)
        self.widths = [dim, hidden, out]

    def forward(self, tokens: Tensor, grid_in: tuple[int, int], frames_out: int, grid_out: tuple[int, int]
                ) -> tuple[Tensor, int]:
        """(B, T1, N1, D) -> (B, T2*N2, out) features indexed by original patch t*N2+n,
        and the MACs spent per clip."""
        batch, frames, patches, _ = tokens.shape
        feats = self.fc2(self.act(self.fc1(self.norm(tokens))))  # (B, T1, N1, out)
        feats = feats.permute(0, 3, 1, 2).reshape(batch, -1, frames, *grid_in)  # (B, out, T1, h1, w1)
        if (frames, *grid_in) != (frames_out, *grid_out):
            feats = F.interpolate(feats, size=(frames_out, *grid_out), mode="trilinear", align_corners=False)
        feats = feats.flatten(2).transpose(1, 2)  # (B, T2*N2, out)
        return feats, int(mlp_macs(frames * patches, self.widths))


class RelationReuse(nn.Module):
    """One upstream stage's logits of one attention kind -> biases for a downstream stage."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out_channels)
        self.act = nn.GELU()
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)
        self.widths = [in_channels, hidden, hidden, out_channels]

    def forward(self, logits: Tensor) -> tuple[Tensor, int]:
        """(B, A, P, P, C_in) channels-last maps -> (B, A, P, P, C_out), MACs per clip."""
        out = self.fc3(self.act(self.fc2(self.act(self.fc1(logits)))))
        return out, int(mlp_macs(logits[0, ..., 0].numel(), self.widths))


def stack_logits(per_layer: list[Tensor], batch: int) -> Tensor:
    """L tensors (B*A, H, P, P) -> one (B, A, P, P, L*H) channels-last tensor."""
    maps = []
    for logits in per_layer:
        groups, heads, length, _ = logits.shape
        maps.append(logits.reshape(batch, groups // batch, heads, length, length).permute(0, 1, 3, 4, 2))
    return torch.cat(maps, dim=-1)  # (B, A, P, P, L*H)


def resize_relations(maps: Tensor, kind: str, frames: tuple[int, int], grids: tuple[tuple[int, int], ...]
                     ) -> Tensor:
    """Transformed maps at the upstream geometry -> the downstream geometry (module docstring)."""
    (t_in, t_out), (g_in, g_out) = frames, grids
    index = nearest_indices(t_in, t_out, maps.device)
    if kind == "spatial":  # (B, T, 1+N, 1+N, C)
        maps = maps.index_select(1, index) if t_in != t_out else maps
        return resize_pair_map(maps, (2, 3), g_in, g_out)
    maps = resize_grid_axis(maps, 1, g_in, g_out)  # (B, N2, T1, T1, C)
    if t_in != t_out:
        maps = maps.index_select(2, index).index_select(3, index)  # (B, N2, T2, T2, C)
    return maps


def split_layers(maps: Tensor, heads: int) -> list[Tensor]:
    """(B, A, P, P, L*H) -> L biases (B*A, H, P, P), ready to add to attention logits."""
    batch, groups, length = maps.shape[:3]
    per_layer = maps.reshape(batch, groups, length, length, -1, heads).permute(4, 0, 1, 5, 2, 3)
    return list(per_layer.reshape(-1, batch * groups, heads, length, length).unbind(0))  # L x (B*A, H, P, P)


class StageReuse:
    """What one cascade stage's forward takes from upstream and keeps for downstream.

    Built per forward by the cascade and carried in ``TokenState.reuse`` (never stored on
    a module). ``features``: (B, T*N, e) per original patch, or None; ``feature_in``: one
    ``Linear(e, hidden)`` per block; ``biases[kind]``: per block a (G, H, P, P) logit bias,
    or None; ``keeps_logits``: record this stage's logits (``logits[kind]``, per block).
    """

    def __init__(self, blocks: nn.ModuleList, features: Optional[Tensor] = None,
                 feature_in: Optional[nn.ModuleList] = None, biases: Optional[dict[str, list[Tensor]]] = None,
                 keeps_logits: bool = False) -> None:
        self.index = {id(block): i for i, block in enumerate(blocks)}
        self.features, self.feature_in = features, feature_in
        self.biases = biases or {}
        self.keeps_logits = keeps_logits
        self.logits: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}

    def logit_bias(self, block: nn.Module, kind: str) -> Optional[Tensor]:
        per_block = self.biases.get(kind)
        return None if per_block is None else per_block[self.index[id(block)]]

    def keep_logits(self, block: nn.Module, kind: str, logits: Tensor) -> None:
        self.logits[kind].append(logits)

    def mlp(self, block: nn.Module, tokens: Tensor, state: TokenState) -> Tensor:
        """The block's MLP on [tokens; features] (G, L, D + e) as fc1(x) + W_f f; billed here."""
        mlp = block.mlp
        hidden = mlp.fc1(tokens)
        if self.features is not None and self.feature_in is not None:
            layer = self.feature_in[self.index[id(block)]]
            hidden = hidden + layer(self._features_like(tokens, state))
            rows = state.real_tokens().double() + state.cls.shape[1]
            state.spend(rows * layer.in_features * layer.out_features)
        return mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(mlp.act(hidden)))))

    def _features_like(self, tokens: Tensor, state: TokenState) -> Tensor:
        """Features of the tokens' original patches in the tokens' layout, zeros for class tokens."""
        assert self.features is not None
        batch, frames, slots = state.pos.shape
        dim = self.features.shape[-1]
        index = state.pos.reshape(batch, frames * slots, 1).expand(-1, -1, dim)
        feats = self.features.gather(1, index)  # (B, F*K, e)
        if tokens.shape[0] == batch:  # (B, C + F*K, D): class token(s) first
            zeros = feats.new_zeros(batch, tokens.shape[1] - frames * slots, dim)
            return torch.cat([zeros, feats], dim=1)
        feats = feats.reshape(batch * frames, slots, dim)  # space-only: (B*F, 1 + K, D) per frame
        return torch.cat([feats.new_zeros(batch * frames, 1, dim), feats], dim=1)
