r"""Deletion and insertion curves: does removing (adding) the patches an explanation ranks
first change the class score fastest?

Design notes: docs/design.md, "ired_video.explain.faithfulness".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from ired_video.models.timesformer import evaluating


@dataclass
class Curves:
    """Deletion and insertion curves of a batch: fractions (S,), scores (B, S) each."""

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor

    def deletion_auc(self) -> Tensor:
        """(B,) area under the deletion curve."""
        return torch.trapezoid(self.deletion, self.fractions, dim=-1)

    def insertion_auc(self) -> Tensor:
        """(B,) area under the insertion curve."""
        return torch.trapezoid(self.insertion, self.fractions, dim=-1)


def forward_kept(model: nn.Module, video: Tensor, keep: Tensor) -> Tensor:
    """Logits (B, classes) of the unreduced model seeing only the patches ``keep`` (B, T, N) marks."""
    def mask_tokens(module: nn.Module, args: tuple) -> tuple:
        state = args[0]
        return (replace(state, valid=keep.reshape(state.x.shape[:3]).to(state.x.device)),) + tuple(args[1:])

    handle = model.blocks[0].register_forward_pre_hook(mask_tokens)
    try:
        with evaluating(model), model.reducers_set_aside(), torch.no_grad():
            return model(video)
    finally:
        handle.remove()


def ranks(importance: Tensor) -> Tensor:
    """(B, T, N) importance -> (B, T, N) long rank of each patch, 0 = most important."""
    flat = importance.flatten(1)  # (B, T*N)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank.reshape(importance.shape)


def curves(model: nn.Module, video: Tensor, importance: Tensor, target: Optional[Tensor] = None,
           steps: int = 20, chunk: int = 32) -> Curves:
    """Deletion and insertion curves at ``steps`` + 1 equally spaced fractions.

    Every (fraction, direction, clip) is one view of a batched forward pass, ``chunk``
    views at a time; clips do not affect each other in the model, so this equals one
    forward per view.
    """
    batch, frames, num_patches = importance.shape
    total = frames * num_patches
    if target is None:
        target = forward_kept(model, video, torch.ones_like(importance, dtype=torch.bool)).argmax(dim=-1)
    rank = ranks(importance)
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.tensor([round(f * total) for f in fractions.tolist()], device=rank.device)
    top = rank[None] < counts[:, None, None, None]  # (S, B, T, N): the most important patches
    keep = torch.cat([~top, top]).flatten(0, 1)  # (2*S*B, T, N): deletion views, then insertion
    videos = video[None].expand(2 * len(fractions), *video.shape).flatten(0, 1)  # (2*S*B, C, T, H, W)
    targets = target.to(video.device).repeat(2 * len(fractions))  # (2*S*B,)
    scores = []
    for start in range(0, len(keep), chunk):
        part = slice(start, start + chunk)
        probs = forward_kept(model, videos[part], keep[part]).float().softmax(dim=-1)
        scores.append(probs.gather(1, targets[part, None])[:, 0].cpu())
    scores_by_view = torch.cat(scores).reshape(2, len(fractions), batch)  # (direction, S, B)
    return Curves(fractions, scores_by_view[0].T, scores_by_view[1].T)
