"""Attention-received drop: remove the patches the other tokens read least from.

Score of patch j, from this block's spatial attention A (head mean, rows = queries over
[CLS, patches]):

    R_j = sum_{i != j} A_ij

Design notes: docs/design.md, "ired_video.reducers.attention_received".
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ired_video.models.blocks import AttentionMaps
from ired_video.reducers.base import Reducer, check_fraction, drop_to, ratio_counts, removes_nothing
from ired_video.tokens import TokenState


def attention_received(probs: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """(G, heads, 1+L, 1+L) attention over [CLS, tokens] -> (G, L) attention received.

    ``valid`` (G, L) marks real tokens; padding rows do not read from anyone.
    """
    attn = probs.mean(dim=1)  # (G, 1+L, 1+L) head mean
    if valid is not None:
        readers = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1).to(attn.dtype)  # (G, 1+L)
        attn = attn * readers[:, :, None]
    received = attn.sum(dim=1) - attn.diagonal(dim1=1, dim2=2)  # column sums minus self
    return received[:, 1:]


class AttentionReceivedDrop(Reducer):
    """Keep the ``keep`` fraction of patches that receive the most attention from the others."""

    name = "attention_received"
    placement = "inside"
    needs = frozenset({"probs"})

    def __init__(self, block: int, keep: float, mode: str = "tube") -> None:
        super().__init__(block, mode)
        self.keep = check_fraction("keep", keep)
        if self.keep == 1:  # nothing to remove: don't force the explicit attention path
            self.needs = frozenset()

    def forward(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState:
        if maps is None or maps.probs is None:
            return state
        groups = maps.probs.shape[0]
        valid = None if state.valid is None else state.valid.reshape(groups, -1)
        scores = attention_received(maps.probs, valid).reshape(state.x.shape[:3])  # (B, F, K)
        state = self.prepare(state)
        scores = scores.reshape(state.x.shape[:3])
        counts = ratio_counts(self, state, self.keep)
        if removes_nothing(counts, state):
            return state
        unit_scores = self.unit_scores(scores, state)
        self.record(state, scores=unit_scores.detach(), pos=state.pos)
        return drop_to(self, state, unit_scores, counts)
