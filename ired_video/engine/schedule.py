"""Learning-rate schedules as multipliers of the base rate, per optimizer step.

The scheduler is stepped once per optimizer step by the training loop and is *not*
prepared by accelerate: a prepared scheduler steps ``num_processes`` times per call
(accelerate multiplies scheduler steps by the process count), which would shorten every schedule on several GPUs.
"""
from __future__ import annotations

import math
from typing import Callable

from ired_video.engine.config import ScheduleSection


def lr_multiplier(cfg: ScheduleSection, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """step -> multiplier: linear warm-up, then cosine to ``min_lr_ratio``, step decay, or constant."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in cfg.milestones]

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "cosine":
            progress = (step - warmup) / max(total_steps - warmup, 1)
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine
        if cfg.name == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return multiplier
