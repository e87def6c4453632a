"""Fit the interaction reducer's predictors to the indicator, and measure how well they agree.

Both run the model with every interaction reducer scoring by the indicator itself (so
each stage sees the tokens the indicator would keep) and read, from each stage's record,
the indicator of every token and the predictor's inputs and scores on the same state.

Design notes: docs/design.md, "ired_video.reducers.interaction_fit".
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from ired_video.reducers.interaction import InteractionDrop


def interaction_stages(model: nn.Module) -> dict[int, InteractionDrop]:
    """The model's interaction reducers by block."""
    return {r.block: r for r in model.reducers.values() if isinstance(r, InteractionDrop)}


@contextmanager
def indicator_scoring(model: nn.Module) -> Iterator[dict[int, InteractionDrop]]:
    """Every interaction reducer of ``model`` scores by the indicator inside the block; eval mode."""
    stages = interaction_stages(model)
    if not stages:
        raise ValueError("the model runs no interaction reducer: apply_reducer(model, 'interaction', keep=...) first")
    scores, training = {block: r.score for block, r in stages.items()}, model.training
    model.eval()
    for reducer in stages.values():
        reducer.score = "indicator"
    try:
        yield stages
    finally:
        for block, reducer in stages.items():
            reducer.score = scores[block]
        model.train(training)


def collect(model: nn.Module, videos: Iterable[Tensor]) -> dict[int, dict[str, Tensor]]:
    """Per stage: ``features`` (R, K', D+1), ``indicator`` and ``predicted`` (R, K') over
    every frame-row R of every clip, and ``tube_indicator``/``tube_predicted`` (C, K'),
    frame means per clip."""
    parts: dict[int, dict[str, list[Tensor]]] = {}
    with indicator_scoring(model) as stages, torch.no_grad():
        device = next(model.parameters()).device
        for video in videos:
            _, info = model(video.to(device), return_info=True)
            for record in info.records:
                if record.reducer != "interaction" or record.block not in stages:
                    continue
                assert record.features is not None and record.indicator is not None and record.predicted is not None
                row = parts.setdefault(record.block, {})
                passes = {"features": record.features, "indicator": record.indicator, "predicted": record.predicted}
                for key, values in passes.items():
                    row.setdefault(key, []).append(values.reshape(-1, *values.shape[2:]).cpu())  # (B*F, K', ...)
                for key in ("indicator", "predicted"):
                    row.setdefault(f"tube_{key}", []).append(passes[key].mean(dim=1).cpu())  # (B, K')
    return {block: {key: torch.cat(values) for key, values in row.items()} for block, row in parts.items()}


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Rank correlation of a and b along the last dim, (..., L) -> (...)."""
    def centred_ranks(values: Tensor) -> Tensor:
        ranks = values.argsort(dim=-1).argsort(dim=-1).double()
        return ranks - ranks.mean(dim=-1, keepdim=True)
    ra, rb = centred_ranks(a), centred_ranks(b)
    return (ra * rb).sum(-1) / ((ra * ra).sum(-1) * (rb * rb).sum(-1)).sqrt()


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Correlation along the last dim, (..., L) -> (...)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-12)


def log_indicator(indicator: Tensor) -> Tensor:
    """The fitting target: log of the (non-negative) indicator."""
    return indicator.double().clamp(min=1e-30).log().float()


def agreement(model: nn.Module, videos: Iterable[Tensor]) -> dict[int, dict[str, float]]:
    """Per stage: mean Spearman correlation of predictor and indicator per frame and per
    clip (tube scores), the same for class attention alone (the predictor's last input:
    what the head adds), and the number of rows each mean is over."""
    out = {}
    for block, data in collect(model, videos).items():
        frame = spearman(data["predicted"], data["indicator"])
        tube = spearman(data["tube_predicted"], data["tube_indicator"])
        cls_attention = spearman(data["features"][..., -1], data["indicator"])
        out[block] = {"spearman_frame": float(frame.mean()), "spearman_tube": float(tube.mean()),
                      "spearman_frame_cls_attention": float(cls_attention.mean()),
                      "frames": len(frame), "clips": len(tube)}
    return out


def fit_interaction_predictors(model: nn.Module, videos: Iterable[Tensor], steps: int = 300, lr: float = 3e-3,
                               seed: int = 0) -> dict[int, dict[str, float]]:
    """Fit every interaction reducer's predictor to the indicator on ``videos`` (an iterable
    of (B, C, T, H, W) batches) and mark it fitted. Returns per stage the loss (1 - mean
    per-frame Pearson correlation with log indicator) before and after."""
    data = collect(model, videos)
    stages = interaction_stages(model)
    report = {}
    for block, reducer in stages.items():
        features, target = data[block]["features"], log_indicator(data[block]["indicator"])
        predictor = reducer.predictor
        device = next(predictor.parameters()).device
        features, target = features.to(device), target.to(device)
        generator = torch.Generator().manual_seed(seed + block)
        for param in predictor.parameters():  # a fresh start, the same for the same seed
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.02 if param.ndim > 1
                             else torch.zeros(param.shape))
        optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
        losses = []
        with torch.enable_grad():
            for _ in range(steps + 1):
                loss = 1 - _pearson(predictor(features), target).mean()
                losses.append(float(loss.detach()))
                if len(losses) > steps:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        reducer.fitted = True
        report[block] = {"loss_start": losses[0], "loss_end": losses[-1], "rows": len(target)}
    return report
