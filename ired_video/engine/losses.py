"""The training objective: cross-entropy, distillation, keep-ratio and policy terms.

    loss = ce * CE(student, target)                          (a cascade: the sum over its exits, DVT)
         + distill * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + distill_tokens * MSE(final tokens, teacher's final tokens pooled the same way)
         + keep_ratio * mean_b (kept_b - keep_target)^2     (learned dropping, masks in training)
         + policy * REINFORCE(interpreters)                  (IA-RED², see reducers.objectives)

Targets may be soft (mixup/cutmix, label smoothing).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ired_video.engine.config import ObjectiveSection
from ired_video.reducers.objectives import kept_share, policy_gradient_loss, policy_records
from ired_video.tokens import ReducerRecord, TokenState, pool_to_slots


def soft_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B,) labels -> (B, classes) label-smoothed one-hot targets."""
    targets = F.one_hot(labels, num_classes).float()
    return targets * (1 - smoothing) + smoothing / num_classes


def mix(video: Tensor, targets: Tensor, mixup: float, cutmix: float, rng: np.random.Generator
        ) -> tuple[Tensor, Tensor]:
    """Mixup or cutmix (chosen at random when both are on) of a batch with its reverse.

    video (B, C, T, H, W); the cutmix box is the same in every frame. Targets mix by the
    share of pixels each clip contributes.
    """
    if mixup <= 0 and cutmix <= 0:
        return video, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    other = video.flip(0)
    if use_cutmix:
        height, width = video.shape[-2:]
        cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
        top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
        video = video.clone()
        video[..., top:top + cut_h, left:left + cut_w] = other[..., top:top + cut_h, left:left + cut_w]
        lam = 1 - cut_h * cut_w / (height * width)
    else:
        video = lam * video + (1 - lam) * other
    return video, lam * targets + (1 - lam) * targets.flip(0)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of (B, classes) logits against (B, classes) soft targets."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def token_distillation(student: TokenState, teacher: TokenState) -> Tensor:
    """Mean squared error between the student's final patch tokens and the unreduced
    teacher's, over the student's real tokens.

    DynamicViT's token distillation, extended to merged tokens: a token standing for
    several patches is matched with the mean of the teacher's tokens at those patches
    (``pool_to_slots``); dropped patches have no target. Both sides go through a
    parameter-free layer norm first, so the loss does not depend on the residual
    stream's scale (and touches no parameter outside the model's forward).
    """
    dim = student.x.shape[-1]
    target, count = pool_to_slots(student, F.layer_norm(teacher.x, (dim,)))  # (B, F, K, D), (B, F, K)
    real = ((count > 0) & student.valid_mask()).to(student.x.dtype)
    error = (F.layer_norm(student.x, (dim,)) - target).pow(2).mean(dim=-1)  # (B, F, K)
    return (error * real).sum() / real.sum().clamp(min=1)


def objective(cfg: ObjectiveSection, logits: Tensor, targets: Tensor, labels: Tensor,
              records: list[ReducerRecord], teacher_logits: Optional[Tensor] = None,
              exit_logits: Optional[list[Tensor]] = None,
              token_states: Optional[tuple[TokenState, TokenState]] = None) -> tuple[Tensor, dict[str, float]]:
    """Total loss and its parts (floats, for logging; with ``policy`` also the mean reward).

    ``exit_logits``: every exit of a cascade, whose CEs are summed (parts ``ce_exit1``,
    ``ce_exit2``, ...) instead of ``ce``. ``token_states``: the final (student, teacher)
    token states, for ``distill_tokens``.
    """
    parts: dict[str, Tensor] = {}
    if cfg.ce and exit_logits:
        for index, exit_out in enumerate(exit_logits, start=1):
            parts[f"ce_exit{index}"] = cfg.ce * soft_cross_entropy(exit_out, targets)
    elif cfg.ce:
        parts["ce"] = cfg.ce * soft_cross_entropy(logits, targets)
    if cfg.distill:
        if teacher_logits is None:
            raise ValueError("objective.distill needs the teacher's logits")
        temp = cfg.temperature
        parts["distill"] = cfg.distill * temp * temp * F.kl_div(
            F.log_softmax(logits / temp, dim=-1), F.log_softmax(teacher_logits / temp, dim=-1),
            reduction="batchmean", log_target=True)
    if cfg.distill_tokens:
        if token_states is None:
            raise ValueError("objective.distill_tokens needs the student's and the teacher's final token states")
        parts["distill_tokens"] = cfg.distill_tokens * token_distillation(*token_states)
    if cfg.keep_ratio:
        if not policy_records(records):
            raise ValueError("objective.keep_ratio needs a learned reducer sampling decisions in training")
        kept = kept_share(records, expected=True)
        parts["keep_ratio"] = cfg.keep_ratio * ((kept - cfg.keep_target) ** 2).mean()
    logged: dict[str, float] = {}
    if cfg.policy:
        policy, stats = policy_gradient_loss(logits, labels, records, cfg.wrong_penalty, cfg.reward_accuracy,
                                             cfg.reward_efficiency)
        parts["policy"] = cfg.policy * policy
        logged["reward"] = stats["reward"]  # logged, not part of the loss
    total = sum(parts.values())
    return total, {**{name: float(value.detach()) for name, value in parts.items()}, **logged}
