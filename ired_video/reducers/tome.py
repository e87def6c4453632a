"""ToMe, token merging (Bolya et al., ICLR 2023), on the token state, as the official code.

In every block with r > 0, between the attention residual and the MLP (ToMe's
placement), ``bipartite_soft_matching`` builds a merge plan from this block's head-mean
attention keys and the tokens merge by size-weighted mean; sizes add up, and with
``prop_attn`` attention adds log(size) to its logits.

Design notes: docs/design.md, "ired_video.reducers.tome".
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ired_video.models.blocks import AttentionMaps
from ired_video.reducers.base import Reducer
from ired_video.tokens import TokenState, merge_into_representatives

Schedule = Union[int, Sequence[int], tuple[int, float]]


def parse_r(depth: int, r: Schedule) -> list[int]:
    """Tokens to merge in each block, as ToMe's ``parse_r``: an int is constant; a list
    gives one value per block (padded with 0); a tuple ``(r, inflection)`` is the ramp
    ``int(first + step * i)`` from first = int(r * (1 - inflection)) towards
    2r - first (inflection -1: ToMe's "decreasing schedule", 2r down to 0).

    Negative values and lists longer than the model are errors (ToMe ignores both).
    """
    if isinstance(r, list):
        schedule = list(r)
        if len(schedule) > depth:
            raise ValueError(f"r schedule has {len(schedule)} entries for {depth} blocks")
        schedule += [0] * (depth - len(schedule))
    else:
        mean, inflection = r if isinstance(r, tuple) else (r, 0.0)
        if not -1.0 <= inflection <= 1.0:
            raise ValueError(f"r inflection {inflection}: expected a value in [-1, 1]")
        first = int(mean * (1.0 - inflection))
        last = 2 * mean - first
        step = (last - first) / (depth - 1) if depth > 1 else 0.0  # ToMe divides by zero on one block
        schedule = [int(first + step * i) for i in range(depth)]
    bad = [v for v in schedule if not isinstance(v, int) or v < 0]
    if bad:
        raise ValueError(f"r schedule {schedule}: tokens to merge must be integers >= 0")
    return schedule


def bipartite_soft_matching(metric: Tensor, r: int, class_token: bool = True) -> tuple[Tensor, Tensor]:
    """ToMe's merge plan for (G, K, C) metrics of the K patch tokens of G sequences.

    ``class_token``: the sequences also hold a class token before slot 0 (kept apart by
    the caller), which takes part in the split as the official code's index 0: A = the
    class token and the odd slots, B = the even slots (without one: A even, B odd).
    Returns ``assign`` (G, K): the new slot of every old slot, and ``representative``
    (G, K - r'): the old slot whose position each new slot takes, r' = min(r, K // 2).
    The sides are slices and their slots arithmetic, not index tensors (docs/design.md,
    "Reducer overhead at batch 1").
    """
    groups, slots, _ = metric.shape
    r = min(r, slots // 2)  # official: (tokens - protected) // 2, tokens = K + 1 with a class token
    device = metric.device
    first_a = 1 if class_token else 0
    metric = metric / metric.norm(dim=-1, keepdim=True)
    side_a, side_b = metric[:, first_a::2], metric[:, 1 - first_a::2]  # (G, Ka, C), (G, Kb, C)
    scores = side_a @ side_b.transpose(-1, -2)  # (G, Ka, Kb) cosine similarity
    node_max, node_idx = scores.max(dim=-1)  # best B for every A (first on ties)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)  # A tokens, most similar first
    unmerged = edge_idx[:, r:]  # (G, Ka - r) positions in A that stay; the first r merge
    if class_token:
        unmerged = unmerged.sort(dim=-1).values  # back to their original order, as ToMe does
    num_b, num_unmerged = side_b.shape[1], unmerged.shape[1]
    assign_a = num_unmerged + node_idx  # (G, Ka): every A token to the new slot of its best B, ...
    assign_a.scatter_(1, unmerged, torch.arange(num_unmerged, device=device).expand(groups, -1))  # ... or its own
    assign = torch.empty(groups, slots, dtype=torch.long, device=device)
    assign[:, first_a::2] = assign_a
    assign[:, 1 - first_a::2] = num_unmerged + torch.arange(num_b, device=device)
    b_slots = 2 * torch.arange(num_b, device=device) + (1 - first_a)  # (Kb,) old slots of the B tokens
    representative = torch.cat([2 * unmerged + first_a, b_slots.expand(groups, -1)], dim=1)  # (G, K - r)
    return assign, representative


def _per_frame(index: Tensor, batch: int, frames: int) -> Tensor:
    """(B*U, n) slots per decision unit -> (B, F, n): U = 1 (tube mode) repeats over frames."""
    return index.reshape(batch, -1, index.shape[-1]).expand(-1, frames, -1)  # (B, U, n) -> (B, F, n)


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
        if min(self.r, slots // 2) == 0:
            return state
        metric = keys.mean(dim=1, keepdim=True) if self.mode == "tube" else keys  # (B, U, K, C)
        units = metric.shape[1]
        assign, representative = bipartite_soft_matching(metric.reshape(batch * units, slots, -1), self.r)
        assign, representative = _per_frame(assign, batch, frames), _per_frame(representative, batch, frames)
        merged = merge_into_representatives(state, assign, representative,
                                            aligned=state.aligned and self.mode == "tube")
        merged.prop_attn = self.prop_attn
        self.record(merged)
        return merged
