"""Exit thresholds of a cascade for a compute budget, fitted on held-out clips (DVT §3.4).

Given every stage's softmax on a held-out split (all stages run on all clips) and each
clip's cumulative GMACs to the end of each stage:

1. for p in {0.05, 0.10, ..., 2.95} set exit shares q_k ∝ p^k (k = 1..K, normalised);
2. fit thresholds so that a share q_k of the split exits at stage k: among the clips not
   yet exited, the threshold of stage k is the confidence of the (q_k * n)-th most
   confident one (DVT's ``dynamic_find_threshold``); the last stage takes the rest;
3. route the split with those thresholds: accuracy, mean GMACs per clip (each clip's
   cumulative GMACs at its exit stage), share exiting at each stage.

The table also holds the two ends (everything exits at stage 1; nothing exits). For a
budget G, ``choose`` takes the row whose mean GMACs come closest to G without exceeding it
(ties: the more accurate). Spending the budget rather than maximising held-out accuracy
keeps small calibration splits from picking a lucky cheap setting.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch
from torch import Tensor

from ired_video.config import ConfigError
from ired_video.models.timesformer import evaluating

P_GRID = [round(0.05 * i, 2) for i in range(1, 60)]  # DVT's 59 values 0.05 .. 2.95
NEVER_EXIT = 2.0


def exit_shares(p: float, stages: int) -> list[float]:
    """DVT's shares q_k ∝ p^k, k = 1..K, summing to 1."""
    weights = [p ** k for k in range(1, stages + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def fit_thresholds(confidence: Tensor, shares: list[float]) -> list[float]:
    """(K, n) max softmax of every stage on every clip -> K-1 thresholds giving ``shares``."""
    stages, count = confidence.shape
    remaining = torch.ones(count, dtype=torch.bool)
    thresholds = []
    for k in range(stages - 1):
        wanted = math.floor(count * shares[k])
        candidates = confidence[k][remaining].sort(descending=True).values
        threshold = float(candidates[wanted - 1]) if 0 < wanted <= len(candidates) else NEVER_EXIT
        thresholds.append(threshold)
        remaining &= confidence[k] < threshold
    return thresholds


def route(confidence: Tensor, thresholds: list[float]) -> Tensor:
    """(K, n) confidences -> (n,) exit stage of each clip (first stage whose confidence clears it)."""
    stages, count = confidence.shape
    exits = torch.full((count,), stages - 1, dtype=torch.long)
    for k in reversed(range(stages - 1)):
        exits = torch.where(confidence[k] >= thresholds[k], torch.full_like(exits, k), exits)
    return exits


def routed_answers(probs: Tensor, labels: Tensor, thresholds: list[float]) -> tuple[Tensor, Tensor]:
    """Route (K, n, classes) probabilities: (n,) exit stage and (n,) bool right answer of each clip."""
    exits = route(probs.amax(dim=-1), thresholds)
    correct = probs[exits, torch.arange(probs.shape[1])].argmax(dim=-1) == labels
    return exits, correct


def score(probs: Tensor, labels: Tensor, cumulative_gmacs: Tensor, thresholds: list[float]) -> dict[str, Any]:
    """Route (K, n, classes) probabilities; accuracy, mean GMACs per clip, exit shares."""
    stages, count = probs.shape[:2]
    exits, correct = routed_answers(probs, labels, thresholds)
    gmacs = cumulative_gmacs[torch.arange(count), exits]
    shares = torch.bincount(exits, minlength=stages).double() / max(count, 1)
    return {"thresholds": [float(t) for t in thresholds], "gmacs": float(gmacs.double().mean()),
            "top1": float(correct.float().mean()), "exit_shares": shares.tolist()}


def calibration_table(probs: Tensor, labels: Tensor, cumulative_gmacs: Tensor,
                      grid: Optional[list[float]] = None) -> list[dict[str, Any]]:
    """Every p of the grid plus both ends, scored on the held-out split, cheapest first.

    probs: (K, n, classes) softmax; labels: (n,); cumulative_gmacs: (n, K).
    """
    stages = probs.shape[0]
    confidence = probs.amax(dim=-1)
    rows = [dict(score(probs, labels, cumulative_gmacs, [0.0] * (stages - 1)), p=0.0),
            dict(score(probs, labels, cumulative_gmacs, [NEVER_EXIT] * (stages - 1)), p=math.inf)]
    for p in grid or P_GRID:
        thresholds = fit_thresholds(confidence, exit_shares(p, stages))
        rows.append(dict(score(probs, labels, cumulative_gmacs, thresholds), p=p))
    rows.sort(key=lambda r: (r["gmacs"], -r["top1"]))
    for row in rows:  # JSON- and YAML-friendly: "inf" for the no-exit end
        row["p"] = "inf" if row["p"] == math.inf else row["p"]
    return rows


def choose(table: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    """The row closest to ``budget`` mean GMACs per clip from below (ties: the more accurate)."""
    feasible = [row for row in table if row["gmacs"] <= budget * (1 + 1e-9)]
    if not feasible:
        cheapest = min(row["gmacs"] for row in table)
        raise ConfigError(f"budget {budget:g} GMACs per clip is below the cheapest setting "
                          f"({cheapest:.6g} GMACs: every clip exits at stage 1)")
    return max(feasible, key=lambda row: (row["gmacs"], row["top1"]))


@torch.no_grad()
def collect_exits(model: torch.nn.Module, loader: Any, device: Optional[torch.device] = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Every stage on every clip of a loader: (K, n, classes) softmax, (n,) labels, (n, K)
    cumulative GMACs. Clips whose file failed to decode are left out."""
    probs, labels, gmacs = [], [], []
    with evaluating(model):
        for batch in loader:
            video = batch["video"] if device is None else batch["video"].to(device)
            _, info = model(video, return_info=True, all_exits=True)
            ok = batch.get("num_failed", torch.zeros(len(video), dtype=torch.long)) == 0
            probs.append(torch.stack([out.float().softmax(dim=-1) for out in info.stage_logits]).cpu()[:, ok])
            labels.append(batch["label"][ok])
            gmacs.append(info.stage_gmacs.cpu()[ok])
    return torch.cat(probs, dim=1), torch.cat(labels), torch.cat(gmacs)


def calibrate(model: torch.nn.Module, loader: Any, budget: float, device: Optional[torch.device] = None
              ) -> dict[str, Any]:
    """Fit the table on a held-out loader, set the cascade's thresholds for ``budget`` and
    store the table in its config. Returns {budget, chosen row, table}."""
    probs, labels, gmacs = collect_exits(model, loader, device)
    if labels.numel() == 0:
        raise ConfigError("calibration split: no readable labelled clips")
    table = calibration_table(probs, labels, gmacs)
    model.cascade_config = dataclasses.replace(model.cascade_config, calibration=table)
    chosen = model.set_budget(budget)
    return {"budget": budget, "chosen": chosen, "clips": int(labels.numel()), "table": table}
