"""DVT's feature and relationship reuse between cascade stages, defined for video.

Two structures of each reuse, chosen by ``CascadeConfig.feature_variant`` /
``relation_variant`` (docs/cascade.md compares them with the official code):

Feature reuse, "official" (default; DVT's ``Block.feature_resuse_mlp``). The previous
stage's final patch tokens (its last block's output, before the final norm; class token
removed) feed one module per downstream block: LayerNorm -> MLP (D -> 128 -> 48, GELU),
laid out as a (T1, h1, w1) grid, upsampled by nearest neighbour to twice that grid and
average-pooled to the block's (T2, h2, w2) grid (DVT: 7x7 -> 14x14 -> 10x10 and 10x10 ->
20x20 -> 14x14; time is a third axis here); the class token gets zeros. The block's MLP
branch takes the concatenation: norm2 runs over [x; f] (D + 48 entries, one mean and
variance) and fc1 over D + 48 inputs. We keep the backbone's ``norm2`` and ``mlp.fc1`` and
hold the 48 extra affine entries (``NormExtension``) and fc1's 48 extra columns (a
bias-free ``Linear(48, 4D)``, zero-initialised) apart, and join them in the forward: the
arithmetic of ``LayerNorm(D + 48)`` and ``Linear(D + 48, 4D)``, with parameter names a
plain checkpoint loads into.

Feature reuse, "shared" (this package's first version): one LN -> MLP per downstream
stage shared by all its blocks, trilinear resizing, norm2 on x alone, fc1(x) + W_f f. Its
zero W_f make an untrained reuse an exact no-op; the official norm over [x; f] does not.

Features are kept per *original* patch (index t * N + n) and gathered by ``state.pos``
at each block, so they follow a token reducer in the stage.

Relationship reuse (divided space-time attention). A stage's pre-softmax logits of all
layers and heads (reuse bias included, as DVT keeps them) are channels of one tensor per
attention kind, channel layer * H + head:
    spatial:  (B, T1, L*H, 1+N1, 1+N1)  one map per frame (class token first)
    temporal: (B, N1, L*H, T1, T1)      one map per spatial location
"official" (default; DVT's ``relation_reuse_conv``): only the previous stage's logits go
through 1x1 convolutions L*H -> 3*L*H -> L*H (GELU, biases) per downstream stage and kind,
are resized like the features (nearest x2, average pool; class-token row and column kept,
the class-class entry kept) on every axis that changes (spatial: frames and both token
axes; temporal: the location grid and both frame axes) and chunked into one (H, P, P) bias
per downstream layer, added to its logits. "all_upstream" (first version): every upstream
stage's logits, three ``Linear`` layers of width ``relation_hidden``, bilinear in space and
nearest index in time, summed over upstream stages. Both zero-initialise the last layer
(DVT trains from scratch; starting from a plain checkpoint, zero keeps its attention).

Billing (``flops`` convention): every ``Linear`` / 1x1 convolution on every row it
processes; norms, GELU and resizing are not billed (neither does FlopCounterMode). A clip
pays for a stage's reuse modules only if it runs that stage.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ired_video.tokens import BlockHooks, TokenState

KINDS = ("temporal", "spatial")
FEATURE_VARIANTS = ("official", "shared")
RELATION_VARIANTS = ("official", "all_upstream")
RELATION_EXPANSION = 3  # DVT: L*H -> 3*L*H -> L*H


def nearest_indices(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Indices (size_out,) of the input positions nearest to each output segment's centre."""
    centres = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * size_in / size_out
    return centres.floor().long().clamp(max=size_in - 1)


def resize_axis(x: Tensor, axis: int, size_out: int, mode: str) -> Tensor:
    """Resize one axis: "dvt" (nearest to twice the size, then adaptive average pooling)
    or "nearest" (the input position nearest each output segment's centre)."""
    size_in = x.shape[axis]
    if size_in == size_out:
        return x
    if mode == "nearest":
        return x.index_select(axis, nearest_indices(size_in, size_out, x.device))
    moved = x.movedim(axis, -1)
    lead = moved.shape[:-1]
    rows = moved.reshape(-1, 1, size_in)  # (M, 1, n_in)
    rows = F.adaptive_avg_pool1d(F.interpolate(rows, size=2 * size_in, mode="nearest"), size_out)
    return rows.reshape(*lead, size_out).movedim(-1, axis)  # (..., n_out, ...)


def resize_grid_axis(x: Tensor, axis: int, grid_in: tuple[int, int], grid_out: tuple[int, int],
                     mode: str = "bilinear") -> Tensor:
    """Resize one axis of ``x`` holding a flattened (h, w) grid to another grid:
    "bilinear", or "dvt" (nearest to twice the grid, then adaptive average pooling)."""
    if grid_in == grid_out:
        return x
    moved = x.movedim(axis, -1)
    lead = moved.shape[:-1]
    images = moved.reshape(-1, 1, *grid_in)  # (M, 1, h1, w1)
    if mode == "dvt":
        doubled = F.interpolate(images, size=(2 * grid_in[0], 2 * grid_in[1]), mode="nearest")
        images = F.adaptive_avg_pool2d(doubled, grid_out)
    else:
        images = F.interpolate(images, size=grid_out, mode="bilinear", align_corners=False)
    return images.reshape(*lead, grid_out[0] * grid_out[1]).movedim(-1, axis)  # (..., h2*w2, ...)


def resize_pair_map(x: Tensor, axes: tuple[int, int], grid_in: tuple[int, int], grid_out: tuple[int, int],
                    mode: str = "bilinear") -> Tensor:
    """Resize a (1+N) x (1+N) token-pair map (class token first on both ``axes``); the
    class-token row and column are resized along their patch part only."""
    if grid_in == grid_out:
        return x
    q_axis, k_axis = axes
    cls_q, patch_q = x.narrow(q_axis, 0, 1), x.narrow(q_axis, 1, x.shape[q_axis] - 1)
    rows = []
    for part in (cls_q, patch_q):
        cls_k, patch_k = part.narrow(k_axis, 0, 1), part.narrow(k_axis, 1, part.shape[k_axis] - 1)
        rows.append(torch.cat([cls_k, resize_grid_axis(patch_k, k_axis, grid_in, grid_out, mode)], dim=k_axis))
    patches = resize_grid_axis(rows[1], q_axis, grid_in, grid_out, mode)
    return torch.cat([rows[0], patches], dim=q_axis)


def mlp_macs(rows: int | Tensor, widths: list[int]) -> int | Tensor:
    """MACs of a chain of Linear layers (or 1x1 convolutions) of ``widths`` over ``rows`` rows."""
    return rows * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


class FeatureReuse(nn.Module):
    """Upstream final patch tokens -> LN -> MLP (D -> hidden -> out) -> a downstream grid.

    ``resize``: "dvt" (nearest to twice the upstream (T, h, w) grid, then adaptive average
    pooling; the official structure) or "trilinear" (the shared variant)."""

    def __init__(self, dim: int, hidden: int, out: int, resize: str = "dvt") -> None:
        super().__init__()
        if resize not in ("dvt", "trilinear"):
            raise ValueError(f"resize must be 'dvt' or 'trilinear', got {resize!r}")
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)
        self.resize = resize
        self.widths = [dim, hidden, out]

    def forward(self, tokens: Tensor, grid_in: tuple[int, int], frames_out: int, grid_out: tuple[int, int]
                ) -> tuple[Tensor, int]:
        """(B, T1, N1, D) -> (B, T2*N2, out) features indexed by original patch t*N2+n,
        and the MACs spent per clip."""
        batch, frames, patches, _ = tokens.shape
        feats = self.fc2(self.act(self.fc1(self.norm(tokens))))  # (B, T1, N1, out)
        feats = feats.permute(0, 3, 1, 2).reshape(batch, -1, frames, *grid_in)  # (B, out, T1, h1, w1)
        size_out = (frames_out, *grid_out)
        if (frames, *grid_in) != size_out:
            if self.resize == "dvt":
                doubled = F.interpolate(feats, size=(2 * frames, 2 * grid_in[0], 2 * grid_in[1]), mode="nearest")
                feats = F.adaptive_avg_pool3d(doubled, size_out)  # (B, out, T2, h2, w2)
            else:
                feats = F.interpolate(feats, size=size_out, mode="trilinear", align_corners=False)
        feats = feats.flatten(2).transpose(1, 2)  # (B, T2*N2, out)
        return feats, int(mlp_macs(frames * patches, self.widths))


class NormExtension(nn.Module):
    """The ``extra`` affine entries norm2 gains when it runs over [x; f] (official feature
    reuse: ``LayerNorm(D + extra)``); ones and zeros, as a new LayerNorm starts."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(extra))
        self.bias = nn.Parameter(torch.zeros(extra))


class RelationReuse(nn.Module):
    """All-upstream variant: one upstream stage's logits of one kind -> biases for a
    downstream stage; three ``Linear`` layers on channels-last maps, GELU, last one zero."""

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


class OfficialRelationReuse(nn.Module):
    """Official variant: the previous stage's logits of one kind (L*H channels) -> 1x1
    convolutions L*H -> 3*L*H -> L*H with GELU (DVT's ``relation_reuse_conv``); the last
    one is zero-initialised (ours: an untrained reuse leaves the logits as they are)."""

    def __init__(self, channels: int, expansion: int = RELATION_EXPANSION) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, expansion * channels, kernel_size=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(expansion * channels, channels, kernel_size=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.widths = [channels, expansion * channels, channels]

    def forward(self, maps: Tensor) -> tuple[Tensor, int]:
        """(B, A, C, P, P) maps -> (B, A, C, P, P), MACs per clip."""
        batch, groups, channels, length, _ = maps.shape
        flat = maps.reshape(batch * groups, channels, length, length)  # (B*A, C, P, P)
        out = self.conv2(self.act(self.conv1(flat)))
        return out.reshape(batch, groups, channels, length, length), int(mlp_macs(groups * length * length,
                                                                                  self.widths))


def concat_logits(per_layer: list[Tensor], batch: int) -> Tensor:
    """L tensors (B*A, H, P, P) -> one (B, A, L*H, P, P), channel layer * H + head."""
    groups, heads, length, _ = per_layer[0].shape
    maps = torch.cat(per_layer, dim=1)  # (B*A, L*H, P, P)
    return maps.reshape(batch, groups // batch, len(per_layer) * heads, length, length)


def resize_relations(maps: Tensor, kind: str, t_out: int, grids: tuple[tuple[int, int], ...]) -> Tensor:
    """All-upstream variant: channels-last maps at the upstream geometry -> the downstream
    geometry (bilinear in space, nearest index in time)."""
    g_in, g_out = grids
    if kind == "spatial":  # (B, T, 1+N, 1+N, C)
        maps = resize_axis(maps, 1, t_out, "nearest")
        return resize_pair_map(maps, (2, 3), g_in, g_out)
    maps = resize_grid_axis(maps, 1, g_in, g_out)  # (B, N2, T1, T1, C)
    return resize_axis(resize_axis(maps, 2, t_out, "nearest"), 3, t_out, "nearest")  # (B, N2, T2, T2, C)


def resize_relations_dvt(maps: Tensor, kind: str, frames_out: int, grids: tuple[tuple[int, int], ...]) -> Tensor:
    """Official variant: (B, A, C, P, P) maps -> the downstream geometry, every changing
    axis by nearest x2 then average pooling (DVT's upsample + adaptive pool)."""
    g_in, g_out = grids
    if kind == "spatial":  # (B, T1, C, 1+N1, 1+N1) -> (B, T2, C, 1+N2, 1+N2)
        maps = resize_axis(maps, 1, frames_out, "dvt")
        return resize_pair_map(maps, (3, 4), g_in, g_out, "dvt")
    maps = resize_grid_axis(maps, 1, g_in, g_out, "dvt")  # (B, N2, C, T1, T1)
    return resize_axis(resize_axis(maps, 3, frames_out, "dvt"), 4, frames_out, "dvt")  # (B, N2, C, T2, T2)


def split_layers(maps: Tensor, heads: int) -> list[Tensor]:
    """(B, A, P, P, L*H) channels-last -> L biases (B*A, H, P, P), ready to add to logits."""
    batch, groups, length = maps.shape[:3]
    per_layer = maps.reshape(batch, groups, length, length, -1, heads).permute(4, 0, 1, 5, 2, 3)
    return list(per_layer.reshape(-1, batch * groups, heads, length, length).unbind(0))  # L x (B*A, H, P, P)


def chunk_layers(maps: Tensor, heads: int) -> list[Tensor]:
    """(B, A, L*H, P, P) -> L biases (B*A, H, P, P) (DVT's ``chunk(depth, 1)``)."""
    batch, groups, channels, length, _ = maps.shape
    flat = maps.reshape(batch * groups, channels, length, length)  # (B*A, L*H, P, P)
    return list(flat.split(heads, dim=1))


class CascadeHooks(BlockHooks):
    """The hooks of one cascade stage's blocks: what it reuses from upstream, and its own
    attention logits kept for downstream.

    Built per forward by the cascade and carried in ``TokenState.hooks`` (never stored on a
    module). ``features``: per block (B, T*N, e) per original patch, or None;
    ``feature_in``: per block the ``Linear(e, hidden)`` extra fc1 columns; ``feature_norm``:
    per block the ``NormExtension`` (official: norm2 over [x; f]) or None (shared: norm2 on
    x); ``biases[kind]``: per block a (G, H, P, P) logit bias; ``keeps_logits``: record this
    stage's logits (``logits[kind]``, per block).
    """

    replayable = False

    def __init__(self, blocks: nn.ModuleList, features: Optional[list[Tensor]] = None,
                 feature_in: Optional[nn.ModuleList] = None, feature_norm: Optional[nn.ModuleList] = None,
                 biases: Optional[dict[str, list[Tensor]]] = None, keeps_logits: bool = False) -> None:
        self.index = {id(block): i for i, block in enumerate(blocks)}
        self.features, self.feature_in, self.feature_norm = features, feature_in, feature_norm
        self.biases = biases or {}
        self.keeps_logits = keeps_logits
        self.logits: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}

    def attention_bias(self, block: nn.Module, kind: str, state: TokenState) -> Optional[Tensor]:
        per_block = self.biases.get(kind)
        return None if per_block is None else per_block[self.index[id(block)]]

    def wants_logits(self, block: nn.Module, kind: str) -> bool:
        return self.keeps_logits

    def keep_logits(self, block: nn.Module, kind: str, logits: Tensor) -> None:
        self.logits[kind].append(logits)

    def feed_forward(self, block: nn.Module, tokens: Tensor, state: TokenState) -> Tensor:
        """The block's MLP on [tokens; features] (G, L, D + e); bills the extra fc1 columns."""
        if self.features is None or self.feature_in is None:
            return block.mlp(block.norm2(tokens))
        index = self.index[id(block)]
        mlp, norm, extra_in = block.mlp, block.norm2, self.feature_in[index]
        feats = self._features_like(self.features[index], tokens, state)  # (G, L, e)
        if self.feature_norm is None:  # shared: norm2 on x, fc1(x) + W_f f
            hidden = mlp.fc1(norm(tokens)) + extra_in(feats)
        else:  # official: LayerNorm(D + e) over [x; f], then Linear(D + e, hidden)
            extension = self.feature_norm[index]
            joint = torch.cat([tokens, feats], dim=-1)  # (G, L, D + e)
            joint = F.layer_norm(joint, joint.shape[-1:], torch.cat([norm.weight, extension.weight]),
                                 torch.cat([norm.bias, extension.bias]), norm.eps)
            hidden = F.linear(joint, torch.cat([mlp.fc1.weight, extra_in.weight], dim=1), mlp.fc1.bias)
        rows = state.real_tokens().double() + state.cls.shape[1]
        state.spend(rows * extra_in.in_features * extra_in.out_features)
        return mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(mlp.act(hidden)))))

    @staticmethod
    def _features_like(features: Tensor, tokens: Tensor, state: TokenState) -> Tensor:
        """Features (B, T*N, e) of the tokens' original patches in the tokens' layout, zeros
        for class tokens."""
        batch, frames, slots = state.pos.shape
        dim = features.shape[-1]
        index = state.pos.reshape(batch, frames * slots, 1).expand(-1, -1, dim)
        feats = features.gather(1, index)  # (B, F*K, e)
        if tokens.shape[0] == batch:  # (B, C + F*K, D): class token(s) first
            zeros = feats.new_zeros(batch, tokens.shape[1] - frames * slots, dim)
            return torch.cat([zeros, feats], dim=1)
        feats = feats.reshape(batch * frames, slots, dim)  # space-only: (B*F, 1 + K, D) per frame
        return torch.cat([feats.new_zeros(batch * frames, 1, dim), feats], dim=1)
