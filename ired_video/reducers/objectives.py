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

import torch
from torch import Tensor

from ired_video.tokens import ReducerRecord


def policy_records(records: list[ReducerRecord]) -> list[ReducerRecord]:
    """The records of sampled (training-mode) IA-RED² decisions."""
    return [r for r in records if r.policy is not None]


def kept_share(records: list[ReducerRecord], expected: bool = False) -> Tensor:
    """(B,) share of the patch tokens that survive every sampled stage (fractions of the
    survivors multiply); ``expected=True`` gives its differentiable expectation."""
    sampled = policy_records(records)
    if not sampled:
        raise ValueError("no sampled interpreter decisions: run the model in train mode with an "
                         "iared2 reducer before computing the policy reward")
    kept = None
    for record in sampled:
        assert record.policy is not None
        share = record.policy.expected_keep if expected else record.policy.kept_fraction
        kept = share if kept is None else kept * share
    assert kept is not None
    return kept


def policy_reward(logits: Tensor, labels: Tensor, records: list[ReducerRecord], wrong_penalty: float = -1.0,
                  accuracy: float = 1.0, efficiency: float = 1.0) -> Tensor:
    """(B,) reward: ``accuracy - efficiency * f^2`` when correct, ``accuracy * wrong_penalty`` when wrong."""
    kept = kept_share(records).to(logits.dtype)
    correct = logits.argmax(dim=-1) == labels
    return torch.where(correct, accuracy - efficiency * kept ** 2, torch.full_like(kept, accuracy * wrong_penalty))


def policy_gradient_loss(logits: Tensor, labels: Tensor, records: list[ReducerRecord],
                         wrong_penalty: float = -1.0, accuracy: float = 1.0,
                         efficiency: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE loss for the interpreters, and its parts for logging."""
    reward = policy_reward(logits.detach(), labels, records, wrong_penalty, accuracy, efficiency)
    advantage = reward - reward.mean()
    log_prob = torch.stack([r.policy.log_prob for r in policy_records(records) if r.policy]).sum(dim=0)  # (B,)
    loss = -(advantage * log_prob).mean()
    return loss, {"reward": float(reward.mean()), "policy_loss": float(loss.detach())}
