r"""The patch-interaction indicator: how much each attention edge, and each patch's
interactions, matter to the prediction.

Edge effect Delta_ij: change of the class logit when token i stops reading token j (its
attention row renormalised without j), exact by one forward per edge
(``exact_edge_effects``) or to first order by gradient x attention centred per row
(``first_order_edge_effects``, one backward for every edge). A patch's indicator sums
|Delta| over its spatial and temporal edges and blocks. Our definition: Ma et al.'s
formula is not public.

Design notes: docs/design.md, "ired_video.explain.interaction".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ired_video.explain.capture import Site, attention_calls, explain_mode, to_patch_layout

ROLES = ("key", "query", "both")


@dataclass
class EdgeEffects:
    """Delta of (1) for every edge of one attention site, in the site's patch layout.

    values: temporal (B, N, T, T); spatial / space_only (B, T, 1+N, 1+N); joint
        (B, 1+T*N, 1+T*N). Rows are queries i, columns keys j: values[..., i, j] is the
        effect of removing "i reads j".
    """

    site: Site
    values: Tensor
    geometry: tuple[int, int, int]  # (B, T, N)


@dataclass
class PatchInteractions:
    """Per-patch indicator (3), per block.

    spatial, temporal: (B, depth, T, N); temporal is zero for space-only models.
    """

    spatial: Tensor
    temporal: Tensor

    def total(self) -> Tensor:
        """(B, T, N): summed over blocks and over spatial and temporal interactions."""
        return (self.spatial + self.temporal).sum(dim=1)


def target_scores(logits: Tensor, target: Tensor) -> Tensor:
    """(B, classes), (B,) -> (B,) the target class logit of each clip."""
    return logits.gather(1, target[:, None])[:, 0]


def _default_target(model: nn.Module, video: Tensor, target: Optional[Tensor]) -> Tensor:
    if target is not None:
        return target.to(video.device).long()
    with torch.no_grad():
        return model(video).argmax(dim=-1)


def _geometry(model: nn.Module, video: Tensor) -> tuple[int, int, int]:
    """(B, T, N) of a (B, C, T, H, W) clip."""
    patch = model.config.patch_size
    return video.shape[0], video.shape[2], (video.shape[3] // patch) * (video.shape[4] // patch)


def first_order_edge_effects(model: nn.Module, video: Tensor, target: Optional[Tensor] = None
                             ) -> list[EdgeEffects]:
    """Estimate (2) of every edge of every attention site: one forward, one backward.

    video: (B, C, T, H, W); target: (B,) class per clip (default: the predicted class).
    Clips are independent (the batch's scores are summed before the backward pass).
    """
    batch, frames, num_patches = _geometry(model, video)
    with explain_mode(model):
        target = _default_target(model, video, target)
        gates: list[Tensor] = []

        def zero_bias(site: Site, groups: int, length: int, x: Tensor) -> Tensor:
            gates.append(torch.zeros(groups, 1, length, length, dtype=x.dtype, device=x.device, requires_grad=True))
            return gates[-1]

        with torch.enable_grad(), attention_calls(model, zero_bias) as calls:
            score = target_scores(model(video), target).sum()
            grads = torch.autograd.grad(score, gates)
    geometry = (batch, frames, num_patches)
    return [EdgeEffects(call.site, to_patch_layout(grad[:, 0].detach(), call.site.kind, *geometry), geometry)
            for call, grad in zip(calls, grads)]


def exact_edge_effects(model: nn.Module, video: Tensor, site: Site, target: Optional[Tensor] = None,
                       chunk: int = 64) -> EdgeEffects:
    """(1) for every edge of one site, by one forward pass per removed edge.

    Edges are batched ``chunk`` at a time: the clip is repeated and copy c removes its own
    edge. Cost: (groups x L^2) forwards per clip; meant for small models and for tests.
    """
    batch, frames, num_patches = _geometry(model, video)
    out = []
    with explain_mode(model), torch.no_grad():
        target = _default_target(model, video, target)
        full = target_scores(model(video), target)
        for b in range(batch):
            out.append(_exact_one_clip(model, video[b:b + 1], site, int(target[b]), float(full[b]), chunk,
                                       frames, num_patches))
    return EdgeEffects(site, torch.stack(out), (batch, frames, num_patches))


def _exact_one_clip(model: nn.Module, clip: Tensor, site: Site, target: int, full: float, chunk: int,
                    frames: int, num_patches: int) -> Tensor:
    """(G1, L, L) effects of one clip (G1 groups per clip) in the site's patch layout."""
    groups, length = _site_shape(site.kind, frames, num_patches)
    edges = torch.cartesian_prod(torch.arange(groups), torch.arange(length), torch.arange(length))  # (E, 3)
    effects = torch.empty(len(edges), dtype=torch.float64)
    for start in range(0, len(edges), chunk):
        part = edges[start:start + chunk]
        copies = len(part)

        def remove_edges(call_site: Site, total_groups: int, call_length: int, x: Tensor,
                         part: Tensor = part, copies: int = copies) -> Optional[Tensor]:
            if call_site != site:
                return None
            bias = torch.zeros(total_groups, 1, call_length, call_length, dtype=x.dtype, device=x.device)
            group_index = torch.arange(copies) * groups + part[:, 0]  # clip-major groups
            bias[group_index, 0, part[:, 1], part[:, 2]] = float("-inf")
            return bias

        with attention_calls(model, remove_edges):
            logits = model(clip.expand(copies, *clip.shape[1:]))
        effects[start:start + copies] = full - logits[:, target].double()
    return to_patch_layout(effects.reshape(groups, length, length), site.kind, 1, frames, num_patches)[0]


def _site_shape(kind: str, frames: int, num_patches: int) -> tuple[int, int]:
    """(groups per clip, sequence length) of a site kind."""
    return {"temporal": (num_patches, frames), "spatial": (frames, 1 + num_patches),
            "space_only": (frames, 1 + num_patches), "joint": (1, 1 + frames * num_patches)}[kind]


def patch_interactions(effects: list[EdgeEffects], depth: int, role: str = "key", absolute: bool = True
                       ) -> PatchInteractions:
    """Indicator (3) per patch and block from the edge effects of every site."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}: expected 'key' (others read the patch), 'query' (it reads "
                         "others) or 'both'")
    if not effects:
        raise ValueError("no edge effects given")
    batch, frames, num_patches = effects[0].geometry
    spatial = effects[0].values.new_zeros(batch, depth, frames, num_patches)
    temporal = torch.zeros_like(spatial)
    for effect in effects:
        values = effect.values.abs() if absolute else effect.values
        for as_query in {"key": (False,), "query": (True,), "both": (False, True)}[role]:
            by_patch = values if as_query else values.transpose(-2, -1)  # rows: the patch in its role
            s_part, t_part = _site_totals(effect.site.kind, by_patch, frames, num_patches)
            spatial[:, effect.site.block] += s_part
            temporal[:, effect.site.block] += t_part
    return PatchInteractions(spatial, temporal)


def _site_totals(kind: str, by_patch: Tensor, frames: int, num_patches: int) -> tuple[Tensor, Tensor]:
    """Edge values with rows = the patch in its role, columns = its partners -> (B, T, N)
    spatial and temporal sums, self-edges excluded."""
    eye = torch.eye(by_patch.shape[-1], dtype=torch.bool, device=by_patch.device)
    by_patch = by_patch.masked_fill(eye, 0)
    if kind == "temporal":
        per = by_patch.sum(dim=-1).transpose(1, 2)  # (B, N, T) -> (B, T, N)
        return torch.zeros_like(per), per
    if kind in ("spatial", "space_only"):
        per = by_patch[:, :, 1:].sum(dim=-1)  # (B, T, N): patch rows, every partner incl. the class token
        return per, torch.zeros_like(per)
    batch = by_patch.shape[0]
    rows = by_patch[:, 1:]  # (B, T*N, 1+T*N): patch rows
    frame_of = torch.arange(frames * num_patches, device=rows.device) // num_patches  # (T*N,)
    same = frame_of[:, None] == frame_of[None, :]  # (T*N, T*N)
    spatial = (rows[:, :, 1:] * same).sum(dim=-1) + rows[:, :, 0]  # the class token counts as spatial
    temporal = (rows[:, :, 1:] * ~same).sum(dim=-1)
    return spatial.reshape(batch, frames, num_patches), temporal.reshape(batch, frames, num_patches)


def interaction_indicator(model: nn.Module, video: Tensor, target: Optional[Tensor] = None, role: str = "key",
                          absolute: bool = True) -> PatchInteractions:
    """The first-order indicator (2)+(3) of every patch of ``video`` (B, C, T, H, W)."""
    effects = first_order_edge_effects(model, video, target)
    return patch_interactions(effects, len(model.blocks), role, absolute)
