"""Training objectives that belong to reducers.

IA-RED²'s interpreters are trained by REINFORCE with a reward that values a correct
prediction and fewer tokens. The paper's exact reward is not public (methods.md 3.1); we
use the BlockDrop-style reward its reconstruction points to:

    R = 1 - f^2   if the prediction is correct      (f: fraction of tokens kept)
    R = penalty   otherwise (default -1)

and the loss -mean_b (R_b - mean R) * sum_stages log pi(a_b), the batch mean as baseline.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def policy_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of sampled (training-mode) IA-RED² decisions."""
    return [r for r in records if "log_prob" in r]


def policy_reward(logits: Tensor, labels: Tensor, records: list[dict[str, Any]],
                  wrong_penalty: float = -1.0) -> Tensor:
    """(B,) reward: 1 - (kept fraction)^2 when correct, ``wrong_penalty`` when wrong."""
    sampled = policy_records(records)
    if not sampled:
        raise ValueError("no sampled interpreter decisions: run the model in train mode with an "
                         "iared2 reducer before computing the policy reward")
    kept = torch.ones_like(logits[:, 0])
    for record in sampled:  # hierarchical: fractions of the survivors multiply
        kept = kept * record["kept_fraction"].to(kept.dtype)
    correct = logits.argmax(dim=-1) == labels
    return torch.where(correct, 1 - kept ** 2, torch.full_like(kept, wrong_penalty))


def policy_gradient_loss(logits: Tensor, labels: Tensor, records: list[dict[str, Any]],
                         wrong_penalty: float = -1.0) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE loss for the interpreters, and its parts for logging."""
    reward = policy_reward(logits.detach(), labels, records, wrong_penalty)
    advantage = reward - reward.mean()
    log_prob = torch.stack([r["log_prob"] for r in policy_records(records)]).sum(dim=0)  # (B,)
    loss = -(advantage * log_prob).mean()
    return loss, {"reward": float(reward.mean()), "policy_loss": float(loss.detach())}
