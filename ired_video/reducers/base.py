"""The reducer contract and the selection helpers every dropping reducer shares.

A reducer is a small ``nn.Module`` called with the token state, returning a new one:
``reducer(state, maps) -> state``. Its ``placement`` says where the model calls it:
``"before"`` block i (IA-RED² interpreters, random drop), or ``"inside"`` block i between
the attention and the MLP with that block's ``AttentionMaps`` (ToMe, top-k, BAT,
interaction drop), as their papers place them. ``needs`` names the maps it reads.

Design notes: docs/design.md, "ired_video.reducers.base".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ired_video.tokens import ReducerRecord, TokenState, flatten_frames, keep_slots

MODES = ("tube", "frame", "flat")


class Reducer(nn.Module):
    """Base class: mode handling and the record every reducer call leaves."""

    name = "reducer"
    placement = "before"
    needs: frozenset[str] = frozenset()

    def __init__(self, block: int, mode: str = "tube") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        self.block = block
        self.mode = mode

    def extra_repr(self) -> str:
        return f"block={self.block}, mode={self.mode!r}"

    def prepare(self, state: TokenState) -> TokenState:
        """Flatten frames into one sequence in ``flat`` mode."""
        return flatten_frames(state) if self.mode == "flat" else state

    def unit_scores(self, scores: Tensor, state: TokenState) -> Tensor:
        """(B, F, K) per-token scores -> (B, U, K) per decision unit: U = 1 in tube mode
        (mean over the frames where the slot is real), else U = F."""
        if self.mode != "tube":
            return scores
        valid = state.valid_mask().to(scores.dtype)
        return (scores * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp(min=1)

    def unit_valid(self, state: TokenState) -> Tensor:
        """(B, U, K) bool: which decision units are real."""
        valid = state.valid_mask()
        return valid.any(dim=1, keepdim=True) if self.mode == "tube" else valid

    def record(self, state: TokenState, **fields: Any) -> None:
        """Leave a ``ReducerRecord`` of this call with ``fields`` (its optional attributes)."""
        state.records.append(ReducerRecord(self.name, self.block, self.mode, **fields))

    def __call__(self, state: TokenState, maps: Optional[Any] = None) -> TokenState:
        """Run ``forward``; every record the call leaves also gets ``slot_of`` (B, F, N') of
        the state it returns: where each original patch ended up after this stage (-1:
        dropped; a shared slot: merged), which overlays draw per stage (``ired_video.viz``)."""
        count = len(state.records)
        out = super().__call__(state, maps)
        for record in out.records[count:]:
            if record.slot_of is None:
                record.slot_of = out.slot_of
        return out


@dataclass(frozen=True)
class Counts:
    """How many units each decision unit keeps.

    most: the largest count, a Python int; per_unit: (B, U) long when units keep different
    counts, None when every unit keeps ``most``. A fixed ratio of a state without padding
    gives ``Counts(n)`` from the shapes alone (no host synchronisation: one compiled graph);
    adaptive counts are read back from the device once per decision (``from_tensor``).
    """

    most: int
    per_unit: Optional[Tensor] = None

    @classmethod
    def from_tensor(cls, counts: Tensor) -> "Counts":
        """(B, U) counts -> Counts, reading their least and largest value in one transfer."""
        least, most = (int(v) for v in torch.stack([counts.min(), counts.max()]).tolist())
        return cls(most, None if least == most else counts)


def keep_count(available: Tensor, keep: float) -> Tensor:
    """Units to keep of ``available`` (any shape, long): ceil(keep * n), at least 1."""
    return torch.clamp(torch.ceil(available.double() * keep).long(), min=1).minimum(available.clamp(min=1))


def static_keep_count(slots: int, keep: float) -> int:
    """``keep_count`` of ``slots`` real units, as a Python int (same double arithmetic)."""
    return min(max(math.ceil(slots * keep), 1), max(slots, 1))


def select_top(scores: Tensor, counts: Counts, valid: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """Keep the ``counts`` best-scoring real slots of each unit.

    scores: (B, U, K); valid: (B, U, K) bool. Returns slot indices (B, U, K') in ascending
    slot order, K' = ``counts.most``, and a (B, U, K') validity mask when units keep
    different counts (None when all keep K').
    """
    ranked = scores.masked_fill(~valid, float("-inf"))
    top = ranked.topk(counts.most, dim=-1).indices  # (B, U, K'), best first
    if counts.per_unit is None:
        return top.sort(dim=-1).values, None  # ascending slot order keeps the spatial layout readable
    rank = torch.arange(counts.most, device=scores.device).expand_as(top)
    keep = rank < counts.per_unit[..., None]  # (B, U, K')
    order = top.argsort(dim=-1)
    return top.gather(-1, order), keep.gather(-1, order)


def drop_to(reducer: Reducer, state: TokenState, scores: Tensor, counts: Counts) -> TokenState:
    """Keep each unit's ``counts`` best slots by ``scores`` (B, U, K), U = 1 for tubes."""
    index, valid = select_top(scores, counts, reducer.unit_valid(state))
    frames = state.num_frames
    if reducer.mode == "tube":
        index = index.expand(-1, frames, -1)  # (B, F, K'): the same slots in every frame
        valid = None if valid is None else valid.expand(-1, frames, -1)
    return keep_slots(state, index, valid, aligned=state.aligned if reducer.mode == "tube" else False)


def ratio_counts(reducer: Reducer, state: TokenState, keep: float) -> Counts:
    """Units to keep at ratio ``keep`` of each unit's real slots: from the shapes while no
    slot is padding or masked (every unit has ``num_slots``), else read from the device."""
    if state.valid is None:
        return Counts(static_keep_count(state.num_slots, keep))
    return Counts.from_tensor(keep_count(reducer.unit_valid(state).sum(dim=-1), keep))


def removes_nothing(counts: Counts, state: TokenState) -> bool:
    """True when every unit keeps all its slots and none is padding (return the state as is)."""
    return state.valid is None and counts.per_unit is None and counts.most >= state.num_slots


def check_fraction(name: str, value: float, allow_one: bool = True) -> float:
    upper_ok = value <= 1 if allow_one else value < 1
    if not (0 < value and upper_ok) or math.isnan(value):
        raise ValueError(f"{name}={value}: expected a fraction in (0, 1{']' if allow_one else ')'}")
    return value
