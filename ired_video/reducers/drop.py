"""Dropping baselines: random drop, and top-k by class attention (EViT).

Top-k keeps the ``ceil(keep * K)`` patch tokens the class token attends to most (head
mean, this block's spatial attention) and, with ``fuse=True``, folds the dropped ones
into one extra token per frame, sum_i a_i x_i with a_i their class attention, as EViT
does (Liang et al., ICLR 2022). It runs inside the block, after attention and before the
MLP, as EViT. Random drop keeps a uniformly random subset: reviewers' first baseline,
and one that is hard to beat on Kinetics (LITE, "Principles of Visual Tokens for Efficient Video Understanding", 2024).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ired_video.models.blocks import AttentionMaps
from ired_video.reducers.base import Counts, Reducer, check_fraction, drop_to, ratio_counts, removes_nothing, select_top
from ired_video.tokens import TokenState, merge_slots


class RandomDrop(Reducer):
    """Keep a random ``keep`` fraction of tokens before a block.

    Training draws from torch's global generator (a new subset every step). Evaluation
    keeps the same subset on every call and for every clip, whatever the batch: scores
    are a fixed hash of (``seed``, block, patch position) (another ``seed``, another
    subset), computed on the device with no generator object, so it compiles to one graph.
    """

    name = "random"
    placement = "before"

    def __init__(self, block: int, keep: float, mode: str = "tube", seed: int = 0) -> None:
        super().__init__(block, mode)
        self.keep = check_fraction("keep", keep)
        self.seed = seed

    def forward(self, state: TokenState, maps: Optional[AttentionMaps] = None) -> TokenState:
        state = self.prepare(state)
        counts = ratio_counts(self, state, self.keep)
        if removes_nothing(counts, state):
            return state
        if self.training:
            scores = torch.rand(self.unit_valid(state).shape, device=state.x.device)
        else:
            position = state.pos[:, :1] % state.num_patches if self.mode == "tube" else state.pos  # (B, U, K)
            scores = hash_uniform(position, self.seed * 1_000_003 + self.block)
        state = drop_to(self, state, scores, counts)
        self.record(state)
        return state


def hash_uniform(values: Tensor, salt: int) -> Tensor:
    """Pseudo-random numbers in [0, 1), one per integer of ``values`` (long tensor), a fixed
    function of (value, salt): a 32-bit multiply-xorshift mix in int64, no overflow."""
    mask = 0xFFFFFFFF
    x = (values * 0x9E3779B1 + (salt * 0x85EBCA77 & mask)) & mask
    x = (((x >> 16) ^ x) * 0x45D9F3B) & mask
    x = (((x >> 16) ^ x) * 0x45D9F3B) & mask
    x = (x >> 16) ^ x
    return x.double().div(2.0 ** 32).float()


class ClassAttentionTopK(Reducer):
    """EViT: keep the tokens the class token attends to most, optionally fusing the rest."""

    name = "topk"
    placement = "inside"
    needs = frozenset({"cls_attn"})

    def __init__(self, block: int, keep: float, mode: str = "tube", fuse: bool = False) -> None:
        super().__init__(block, mode)
        self.keep = check_fraction("keep", keep)
        self.fuse = fuse

    def forward(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState:
        scores = maps.cls_attn  # (B, F, K)
        state = self.prepare(state)
        scores = scores.reshape(state.x.shape[:3])  # (B, F', K') after flattening
        counts = ratio_counts(self, state, self.keep)
        if removes_nothing(counts, state):
            return state
        unit_scores = self.unit_scores(scores, state)
        self.record(state, scores=unit_scores.detach(), pos=state.pos)
        if not self.fuse:
            return drop_to(self, state, unit_scores, counts)
        return self._keep_and_fuse(state, scores, unit_scores, counts)

    def _keep_and_fuse(self, state: TokenState, scores: Tensor, unit_scores: Tensor, counts: Counts) -> TokenState:
        """Kept slots stay as they are; the dropped ones of each frame fold into one token."""
        index, padding = select_top(unit_scores, counts, self.unit_valid(state))
        if padding is not None:
            raise ValueError("topk with fuse=True needs the same count in every clip")
        batch, frames, slots = state.x.shape[:3]
        index = index.expand(-1, frames, -1)  # (B, F, K')
        kept = index.shape[-1]
        assign = torch.full((batch, frames, slots), kept, dtype=torch.long, device=index.device)
        assign.scatter_(2, index, torch.arange(kept, device=index.device).expand_as(index))
        dropped = assign == kept
        # The fused token sits at the most attended dropped patch.
        best_dropped = scores.masked_fill(~dropped, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, F, 1)
        representative = torch.cat([index, best_dropped], dim=-1)  # (B, F, K'+1)
        weights = torch.where(dropped, scores, torch.ones_like(scores))
        merged = merge_slots(state, assign, representative, weights=weights,
                             aligned=state.aligned and self.mode == "tube")
        # EViT's extra token is sum_i a_i x_i (not normalised): undo merge_slots' division.
        attention_mass = (scores * dropped).sum(dim=-1, keepdim=True)  # (B, F, 1)
        fused = merged.x[:, :, -1:] * attention_mass[..., None]
        merged.x = torch.cat([merged.x[:, :, :-1], fused], dim=2)
        return merged
