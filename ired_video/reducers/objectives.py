"""Training objectives that belong to reducers.

IA-RED²'s interpreters are trained by REINFORCE with a reward that values a correct
prediction and fewer tokens. The paper's exact reward is not public (methods.md 3.1); we
use the BlockDrop-style reward its reconstruction points to, with a weight on each term:

    R = accuracy - efficiency * f^2     if the prediction is correct   (f: share of tokens kept)
    R = accuracy * wrong_penalty        otherwise (wrong_penalty defaults to -1)

(accuracy = efficiency = 1 is the plain BlockDrop reward 1 - f^2 / -1.) The loss is
-mean_b (R_b - mean R) * sum_stages log pi(a_b), the batch mean as baseline. In the
adaptive regime f follows the interpreters' probabilities, so the efficiency term pulls
them down, harder as ``efficiency`` grows, until the accuracy term pushes back.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def policy_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of sampled (training-mode) IA-RED² decisions."""
    return [r for r in records if "log_prob" in r]


def kept_share(records: list[dict[str, Any]], key: str = "kept_fraction") -> Tensor:
    """(B,) share of the patch tokens that survive every sampled stage (fractions of the
    survivors multiply); ``key="expected_keep"`` gives its differentiable expectation."""
    sampled = policy_records(records)
    if not sampled:
        raise ValueError("no sampled interpreter decisions: run the model in train mode with an "
                         "iared2 reducer before computing the policy reward")
    kept = sampled[0][key]
    for record in sampled[1:]:
        kept = kept * record[key]
    return kept


def policy_reward(logits: Tensor, labels: Tensor, records: list[dict[str, Any]], wrong_penalty: float = -1.0,
                  accuracy: float = 1.0, efficiency: float = 1.0) -> Tensor:
    """(B,) reward: ``accuracy - efficiency * f^2`` when correct, ``accuracy * wrong_penalty`` when wrong."""
    kept = kept_share(records).to(logits.dtype)
    correct = logits.argmax(dim=-1) == labels
    return torch.where(correct, accuracy - efficiency * kept ** 2, torch.full_like(kept, accuracy * wrong_penalty))


def policy_gradient_loss(logits: Tensor, labels: Tensor, records: list[dict[str, Any]],
                         wrong_penalty: float = -1.0, accuracy: float = 1.0,
                         efficiency: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE loss for the interpreters, and its parts for logging."""
    reward = policy_reward(logits.detach(), labels, records, wrong_penalty, accuracy, efficiency)
    advantage = reward - reward.mean()
    log_prob = torch.stack([r["log_prob"] for r in policy_records(records)]).sum(dim=0)  # (B,)
    loss = -(advantage * log_prob).mean()
    return loss, {"reward": float(reward.mean()), "policy_loss": float(loss.detach())}
