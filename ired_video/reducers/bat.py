"""BAT, "Beyond Attentive Tokens" (Long et al., CVPR 2023): importance and diversity.

After attention, before the MLP: keep the ``keep`` fraction of tokens the class token
attends to most; fold the inattentive rest into ``cluster_ratio`` x their count tokens by
DPC-KNN clustering (weighted by size x attention); merge the ``match_ratio`` x (attentive
count) most similar attentive pairs by bipartite matching. Merged tokens carry their size
(proportional attention with ``prop_attn``). No parameters; BAT's pair rule and DPC
parameters are not public, ours are stated in docs/reducers.md.

Design notes: docs/design.md, "ired_video.reducers.bat".
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ired_video.models.blocks import AttentionMaps
from ired_video.reducers.base import Reducer, check_fraction
from ired_video.reducers.tome import bipartite_soft_matching
from ired_video.tokens import TokenState, merge_into_representatives


def dpc_knn(features: Tensor, num_clusters: int, k: int = 5) -> tuple[Tensor, Tensor]:
    """Density-peak clustering on k nearest neighbours.

    features: (G, M, C). Density rho_i = exp(-mean squared distance to the k nearest
    points, itself included); delta_i = distance to the nearest denser point (the
    densest point gets the largest distance); the ``num_clusters`` points with the
    largest rho * delta are centres, every point joins its nearest centre. Ties in
    density are broken by index, so the result is deterministic.
    Returns ``assign`` (G, M) in [0, num_clusters) and ``centres`` (G, num_clusters).
    """
    groups, points, channels = features.shape
    num_clusters = min(num_clusters, points)
    dist = torch.cdist(features.float(), features.float()) / math.sqrt(channels)  # (G, M, M)
    nearest = dist.topk(min(k, points), dim=-1, largest=False).values  # (G, M, k)
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density - 1e-6 * torch.arange(points, device=features.device) / points  # tie-break
    denser = density[:, None, :] > density[:, :, None]  # (G, M, M): point j denser than point i
    farthest = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, farthest.expand_as(dist)).min(dim=-1).values  # (G, M)
    centres = (density * delta).topk(num_clusters, dim=-1).indices  # (G, m)
    to_centres = dist.gather(2, centres[:, None, :].expand(-1, points, -1))  # (G, M, m)
    assign = to_centres.argmin(dim=-1)
    assign.scatter_(1, centres, torch.arange(num_clusters, device=features.device).expand(groups, -1))
    return assign, centres


class BAT(Reducer):
    """Keep attentive tokens, cluster-merge inattentive ones, pair-merge similar attentive ones."""

    name = "bat"
    placement = "inside"
    needs = frozenset({"cls_attn"})

    def __init__(self, block: int, keep: float, mode: str = "tube", cluster_ratio: float = 0.25,
                 match_ratio: float = 0.1, knn: int = 5, prop_attn: bool = True) -> None:
        super().__init__(block, mode)
        self.keep = check_fraction("keep", keep)
        self.cluster_ratio = check_fraction("cluster_ratio", cluster_ratio)
        if not 0 <= match_ratio <= 0.5:
            raise ValueError(f"match_ratio={match_ratio}: expected a fraction in [0, 0.5]")
        self.match_ratio = match_ratio
        self.knn = knn
        self.prop_attn = prop_attn

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep}, prop_attn={self.prop_attn}"

    def counts(self, slots: int) -> tuple[int, int, int]:
        """(attentive kept, attentive pairs merged, clusters) for ``slots`` tokens."""
        attentive = min(slots, max(1, math.ceil(self.keep * slots)))
        pairs = min(int(self.match_ratio * attentive), attentive // 2)
        rest = slots - attentive
        clusters = min(rest, max(1, round(self.cluster_ratio * rest))) if rest else 0
        return attentive, pairs, clusters

    def forward(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState:
        scores = maps.cls_attn  # (B, F, K)
        state = self.prepare(state)
        batch, frames, slots, dim = state.x.shape
        scores = scores.reshape(batch, frames, slots)
        attentive, pairs, clusters = self.counts(slots)
        if attentive == slots and pairs == 0:
            return state
        unit_scores = self.unit_scores(scores, state)  # (B, U, K)
        features = state.x.mean(dim=1, keepdim=True) if self.mode == "tube" else state.x  # (B, U, K, D)
        units = unit_scores.shape[1]
        order = unit_scores.argsort(dim=-1, descending=True)  # (B, U, K)
        top, rest = order[..., :attentive].sort(dim=-1).values, order[..., attentive:].sort(dim=-1).values

        def flat(values: Tensor) -> Tensor:
            return values.reshape(batch * units, *values.shape[2:])  # (B, U, ...) -> (B*U, ...)

        top_features = flat(features).gather(1, flat(top)[..., None].expand(-1, -1, dim))
        match_assign, match_rep = bipartite_soft_matching(top_features, pairs, class_token=False)  # attentive slots
        kept = attentive - pairs
        assign = torch.empty(batch * units, slots, dtype=torch.long, device=state.x.device)
        assign.scatter_(1, flat(top), match_assign)
        representative = [flat(top).gather(1, match_rep)]
        if clusters:
            rest_features = flat(features).gather(1, flat(rest)[..., None].expand(-1, -1, dim))
            cluster_of, centres = dpc_knn(rest_features, clusters, self.knn)
            assign.scatter_(1, flat(rest), kept + cluster_of)
            representative.append(flat(rest).gather(1, centres))
        representative = torch.cat(representative, dim=1).reshape(batch, units, -1).expand(-1, frames, -1)
        assign = assign.reshape(batch, units, slots).expand(-1, frames, -1)  # (B, F, K)
        attentive_slot = assign < kept
        weights = state.sizes() * torch.where(attentive_slot, torch.ones_like(scores), scores)
        self.record(state, scores=unit_scores.detach(), pos=state.pos)
        merged = merge_into_representatives(state, assign, representative, weights=weights,  # every slot assigned
                                            aligned=state.aligned and self.mode == "tube")
        merged.prop_attn = self.prop_attn
        return merged
