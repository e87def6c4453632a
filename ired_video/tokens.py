"""The token state: what travels down the block loop with the tokens.

Layout. Patch tokens are stored frame-major as ``x: (B, T, K, D)``: clip, frame, token
slot, channel. Before any reduction K = N = (H/p)*(W/p) and slot k of every frame is
spatial patch k (row-major over the grid). The official TimeSformer keeps one flat
sequence in ``(n t)`` order (spatial outer, frame inner); the two layouts hold the same
numbers and give the same outputs, ours just makes "one frame" and "one location" plain
reshapes. The class token is kept apart: ``cls: (B, 1, D)``, or ``(B, T, D)`` for the
space-only model, which carries one class token per frame.

A state is built by the model on every forward and never stored on a module. Reducers
(``ired_video.reducers``) take a state and return a new one, keeping ``x``, ``pos``,
``size`` and ``valid`` consistent with each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class TokenState:
    """Tokens of a batch of clips plus what each token stands for.

    Attributes:
        cls: (B, C, D) class token(s); C = 1, or T for the space-only model.
        x: (B, T, K, D) patch tokens.
        pos: (B, T, K) long, original spatial index (0..N-1) of each token; for a merged
            token, the index of the token it was merged into.
        size: (B, T, K) float, how many original patches each token stands for, or None
            while every token is one patch.
        valid: (B, T, K) bool, False on padding slots (clips of one batch that kept
            different counts), or None while every slot is real.
        grid: (h, w) patch grid of the input; N = h * w.
        macs: (B,) float64, multiply-accumulates spent so far on each clip.
        tokens: per block run, a (B,) long tensor of the patch tokens (T x K, real slots
            only, class tokens excluded) that block processed for each clip.
        records: per reducer run, a dict describing what it did (stage, scores, kept
            indices), for overlays and analysis.
    """

    cls: Tensor
    x: Tensor
    pos: Tensor
    grid: tuple[int, int]
    macs: Tensor
    size: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    tokens: list[Tensor] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_patches(cls, cls_tokens: Tensor, patches: Tensor, grid: tuple[int, int]) -> "TokenState":
        """Start state: every patch of every frame, one patch per token, nothing spent."""
        batch, frames, num_patches, _ = patches.shape
        pos = torch.arange(num_patches, device=patches.device)
        pos = pos.expand(batch, frames, num_patches)  # (B, T, N)
        macs = torch.zeros(batch, dtype=torch.float64, device=patches.device)
        return cls(cls=cls_tokens, x=patches, pos=pos, grid=grid, macs=macs)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_frames(self) -> int:
        return self.x.shape[1]

    @property
    def num_slots(self) -> int:
        """K: token slots per frame (padding included)."""
        return self.x.shape[2]

    def tokens_per_frame(self) -> Tensor:
        """(B,) float: real tokens per frame of each clip (mean over frames if they differ)."""
        if self.valid is None:
            return torch.full((self.batch_size,), float(self.num_slots), device=self.x.device)
        return self.valid.float().sum(dim=2).mean(dim=1)

    def real_tokens(self) -> Tensor:
        """(B,) long: real patch tokens of each clip over all frames."""
        if self.valid is None:
            count = self.num_frames * self.num_slots
            return torch.full((self.batch_size,), count, dtype=torch.long, device=self.x.device)
        return self.valid.sum(dim=(1, 2))

    def with_tokens(self, cls_tokens: Tensor, patches: Tensor) -> "TokenState":
        """Same bookkeeping, new token values (shapes unchanged)."""
        return replace(self, cls=cls_tokens, x=patches)

    def spend(self, macs: Tensor) -> None:
        """Add (B,) multiply-accumulates to each clip's bill."""
        self.macs = self.macs + macs.to(self.macs.dtype)
