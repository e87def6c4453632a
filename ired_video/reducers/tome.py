"""ToMe, token merging (Bolya et al., ICLR 2023), on the token state.

In every block with r > 0, between the attention and the MLP (ToMe's placement): split
the tokens alternately into sets A (even slots) and B (odd slots), match each A token to
its most similar B token by cosine similarity of this block's head-mean attention keys,
and merge the r best-matched A tokens into their B tokens by size-weighted averaging.
Sizes add up, and with ``prop_attn`` attention adds log(size) to its logits. The class
token is kept apart and never merged. The new order is: unmerged A tokens (best match
first, as ToMe orders them), then B tokens, so a schedule gives ToMe's outputs.

Modes: ``tube`` matches locations by their keys averaged over frames and merges the same
locations in every frame; ``frame`` matches within each frame (same r per frame);
``flat`` (joint models) matches across all frames.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ired_video.models.blocks import AttentionMaps
from ired_video.reducers.base import Reducer
from ired_video.tokens import TokenState, merge_slots

Schedule = Union[int, Sequence[int], tuple[int, float]]


def parse_r(depth: int, r: Schedule) -> list[int]:
    """Tokens to merge in each block: a constant ``r``; a list per block (padded with 0);
    or ``(r, inflection)``, a linear ramp with mean r from r*(1-inflection) to
    r*(1+inflection) (inflection -1: decreasing from 2r to 0), as ToMe's ``parse_r``."""
    if isinstance(r, int):
        return [r] * depth
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], float):
        mean, inflection = r
        low = int(mean * (1.0 - inflection))
        high = 2 * mean - low
        step = (high - low) / max(depth - 1, 1)
        return [int(low + step * i) for i in range(depth)]
    schedule = [int(v) for v in r]
    if len(schedule) > depth:
        raise ValueError(f"r schedule has {len(schedule)} entries for {depth} blocks")
    return schedule + [0] * (depth - len(schedule))


def bipartite_soft_matching(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """ToMe's merge plan for (G, K, C) token metrics.

    Returns ``assign`` (G, K): the new slot of every old slot, and ``representative``
    (G, K - r): the old slot whose position each new slot takes. ``r`` is capped at K // 2.
    """
    groups, slots, _ = metric.shape
    r = min(r, slots // 2)
    device = metric.device
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]  # (G, Ka, C), (G, Kb, C)
    scores = a @ b.transpose(-1, -2)  # (G, Ka, Kb) cosine similarity
    node_max, node_idx = scores.max(dim=-1)  # best B for every A
    edge_idx = node_max.argsort(dim=-1, descending=True)  # A tokens, most similar first
    unmerged, merged = edge_idx[:, r:], edge_idx[:, :r]  # (G, Ka - r), (G, r)
    destination = node_idx.gather(1, merged)  # (G, r) B index each merged A goes to
    num_unmerged, num_b = unmerged.shape[1], b.shape[1]

    assign_a = torch.empty(groups, a.shape[1], dtype=torch.long, device=device)
    assign_a.scatter_(1, unmerged, torch.arange(num_unmerged, device=device).expand(groups, -1))
    assign_a.scatter_(1, merged, num_unmerged + destination)
    assign = torch.empty(groups, slots, dtype=torch.long, device=device)
    assign[:, ::2] = assign_a
    assign[:, 1::2] = num_unmerged + torch.arange(num_b, device=device)
    b_slots = 2 * torch.arange(num_b, device=device) + 1
    representative = torch.cat([2 * unmerged, b_slots.expand(groups, -1)], dim=1)  # (G, K - r)
    return assign, representative


class ToMe(Reducer):
    """Merge ``r`` tokens (per frame, per tube or per clip by mode) inside one block."""

    name = "tome"
    placement = "inside"
    needs = frozenset({"keys"})

    def __init__(self, block: int, r: int, mode: str = "tube", prop_attn: bool = True) -> None:
        super().__init__(block, mode)
        if r < 0:
            raise ValueError(f"r={r}: tokens to merge cannot be negative")
        self.r = r
        self.prop_attn = prop_attn

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, prop_attn={self.prop_attn}"

    def forward(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState:
        keys = maps.keys  # (B, F, K, C)
        state = self.prepare(state)
        batch, frames, slots = state.x.shape[:3]
        keys = keys.reshape(batch, frames, slots, -1)
        if self.r == 0 or slots < 2:
            return state
        metric = keys.mean(dim=1, keepdim=True) if self.mode == "tube" else keys  # (B, U, K, C)
        units = metric.shape[1]
        assign, representative = bipartite_soft_matching(metric.reshape(batch * units, slots, -1), self.r)
        assign = assign.reshape(batch, units, slots).expand(-1, frames, -1)  # (B, F, K)
        representative = representative.reshape(batch, units, -1).expand(-1, frames, -1)
        merged = merge_slots(state, assign, representative, aligned=state.aligned and self.mode == "tube")
        merged.prop_attn = self.prop_attn
        self.record(merged, merged=slots - representative.shape[-1])
        return merged
