"""Interaction drop: remove the patches whose interactions matter least to the prediction
(the "indiscriminative patches" of Ma et al., TNNLS 2023), by the package's
patch-interaction indicator (``ired_video.explain.interaction``).

Score of a token at block l: the first-order indicator of that block, role "key", in
magnitude: the summed |effect on the predicted class's logit| of removing each edge
through which another token reads it in block l's attention,

    I_p = sum_{i != p} |Delta_{p -> i}|,   Delta_{p -> i} = sum_h A^h_ip (g^h_ip - sum_k A^h_ik g^h_ik),

Design notes: docs/design.md, "ired_video.reducers.interaction".
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from ired_video.models.attention import AttentionProbe
from ired_video.models.blocks import AttentionMaps, Tail
from ired_video.reducers.base import Reducer, check_fraction, drop_to, ratio_counts, removes_nothing
from ired_video.tokens import TokenState, pool_to_slots

SCORES = ("predictor", "indicator")
# An indicator run bills its extra pass as this many times the tail's forward MACs: the
# forward, and a backward of about as many (only activation gradients are computed, no
# weight gradients); tests/test_interaction_reducer.py holds it to FlopCounterMode.
INDICATOR_PASSES = 2


def edge_effects(probs: Tensor, grads: Tensor) -> Tensor:
    """First-order effect of removing each edge (explain formula (2)), summed over heads.

    probs, grads: (G, heads, L, L) probabilities and dS/dprobs -> (G, L, L), rows = queries."""
    centred = grads - (probs * grads).sum(dim=-1, keepdim=True)  # g_ij - sum_k A_ik g_ik
    return (probs * centred).sum(dim=1)


def read_by_others(effects: Tensor) -> Tensor:
    """(G, L, L) edge effects -> (G, L): per key, the summed magnitudes over the other queries."""
    magnitude = effects.abs()
    return magnitude.sum(dim=1) - magnitude.diagonal(dim1=1, dim2=2)


def block_indicator(tail: Tail, state_in: TokenState) -> tuple[Tensor, Tensor]:
    """Indicator of every token of ``state_in`` (B, F, K) at the block ``tail`` starts
    from, and the (B,) MACs of the tail's forward pass.

    Runs ``tail`` with gradients on that block's attention probabilities; the class is
    each clip's predicted one. Nothing flows back into ``state_in``.
    """
    batch, frames, slots, _ = state_in.x.shape
    spatial = AttentionProbe(want_probs=True)
    temporal = AttentionProbe(want_probs=True)
    with torch.inference_mode(False), torch.enable_grad():
        logits, macs = tail(_detached_copy(state_in), spatial, temporal)
        score = logits.gather(1, logits.detach().argmax(dim=-1, keepdim=True)).sum()
        sites = [probe.probs for probe in (spatial, temporal) if probe.probs is not None]
        grads = torch.autograd.grad(score, sites)
    key = read_by_others(edge_effects(spatial.probs.detach(), grads[0]))  # (B*F, 1+K) or (B, 1+F*K)
    total = key[:, 1:].reshape(batch, frames, slots)
    if temporal.probs is not None:
        total = total + _temporal_part(read_by_others(edge_effects(temporal.probs.detach(), grads[1])), state_in)
    return total, macs


def _detached_copy(state: TokenState) -> TokenState:
    """A copy of ``state`` whose tensors are fresh (usable by autograd even when ``state``
    was made under ``torch.inference_mode``), nothing spent, no records."""
    def fresh(value: Optional[Tensor]) -> Optional[Tensor]:
        return None if value is None else value.detach().clone()
    return replace(state, cls=fresh(state.cls), x=fresh(state.x), pos=fresh(state.pos), slot_of=fresh(state.slot_of),
                   size=fresh(state.size), valid=fresh(state.valid), macs=torch.zeros_like(state.macs),
                   tokens=[], records=[])


def _temporal_part(key: Tensor, state: TokenState) -> Tensor:
    """Temporal key totals -> (B, F, K): per slot while aligned ((B*K, F) groups), else per
    patch location ((B*N, F) groups) summed over the patches each token holds."""
    batch, frames, slots, _ = state.x.shape
    if state.aligned:
        return key.reshape(batch, slots, frames).transpose(1, 2)  # (B*K, F) -> (B, F, K)
    per_patch = key.reshape(batch, state.num_patches, frames).transpose(1, 2)  # (B, F, N)
    mean, held = pool_to_slots(state, per_patch[..., None])  # (B, F, K, 1), (B, F, K)
    return mean[..., 0] * held


class InteractionPredictor(nn.Module):
    """A per-token head that ranks tokens like the indicator: the token normalised (no
    affine) and its log class attention -> Linear -> GELU -> Linear -> score."""

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)

    def features(self, x: Tensor, cls_attn: Tensor) -> Tensor:
        """(..., D) tokens and (...) class attention -> (..., D + 1) inputs."""
        log_attn = cls_attn.clamp(min=torch.finfo(cls_attn.dtype).tiny).log()
        return torch.cat([self.norm(x), log_attn[..., None].to(x.dtype)], dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        """(..., D + 1) -> (...) scores (higher: interactions matter more)."""
        return self.fc2(self.act(self.fc1(features)))[..., 0]

    def macs_per_token(self) -> int:
        return self.fc1.in_features * self.fc1.out_features + self.fc2.in_features * self.fc2.out_features


class InteractionDrop(Reducer):
    """Keep the ``keep`` fraction of tokens with the highest interaction indicator (or its
    predictor's estimate); the record of an indicator run carries the indicator, the
    predictor's inputs and its scores, for fitting and for measuring their agreement."""

    name = "interaction"
    placement = "inside"

    def __init__(self, block: int, keep: float, mode: str, dim: int, score: str = "predictor",
                 hidden: int = 32) -> None:
        super().__init__(block, mode)
        self.keep = check_fraction("keep", keep)
        if score not in SCORES:
            raise ValueError(f"score={score!r}: expected one of {SCORES}")
        self.score = score
        self.predictor = InteractionPredictor(dim, hidden)
        self.fitted = False

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        if self.keep == 1:  # nothing to remove: leave the attention untouched
            return frozenset()
        return frozenset({"cls_attn", "input", "tail"}) if self.score == "indicator" else frozenset({"cls_attn"})

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep}, score={self.score!r}, fitted={self.fitted}"

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.fitted)

    def set_extra_state(self, state: Tensor) -> None:
        self.fitted = bool(state)

    def forward(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState:
        if maps is None or maps.cls_attn is None:
            return state
        cls_attn = maps.cls_attn  # (B, F, K)
        state = self.prepare(state)
        counts = ratio_counts(self, state, self.keep)
        if removes_nothing(counts, state):
            return state
        if self.score == "predictor" and not self.fitted:
            raise ValueError(f"interaction reducer at block {self.block}: its predictor is not fitted to the "
                             "indicator; fit it (ired_video.reducers.fit_interaction_predictors, "
                             "tools/fit_interaction.py) or use score=indicator")
        features = self.predictor.features(state.x, cls_attn.reshape(state.x.shape[:3]))  # (B, F', K', D+1)
        predicted = self.predictor(features)  # (B, F', K')
        state.spend(state.real_tokens().double() * self.predictor.macs_per_token())
        scores, extra = predicted, {}
        if self.score == "indicator":
            if maps.tail is None or maps.state_in is None:
                raise ValueError(f"interaction reducer at block {self.block}: score=indicator needs the model "
                                 "to run the rest of its blocks (a TimeSformer's forward_blocks)")
            indicator, tail_macs = block_indicator(maps.tail, maps.state_in)
            scores = indicator.reshape(state.x.shape[:3])
            state.spend(INDICATOR_PASSES * tail_macs)
            extra = dict(indicator=scores.detach(), predicted=predicted.detach(), features=features.detach())
        unit_scores = self.unit_scores(scores, state)
        self.record(state, scores=unit_scores.detach(), pos=state.pos, **extra)
        return drop_to(self, state, unit_scores, counts)
