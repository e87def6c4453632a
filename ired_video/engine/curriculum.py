"""IA-RED²'s group-wise curriculum: interpreters learn one group at a time, then the backbone.

The paper splits the model into groups of blocks with an interpreter before each group
and trains the interpreters group by group; the reconstruction (methods.md 3.1) makes the
later groups reuse the earlier policies. With G interpreters (one per ``reducer.stages``
entry, in block order) training runs G + 1 phases:

    phase g < G: interpreter g learns (samples its decisions, REINFORCE); interpreters
                 before it are fixed (frozen, deciding as in evaluation); those after it
                 are off (every token passes); the backbone is frozen.
    phase G:     the backbone is fine-tuned (cross-entropy/distillation) with every
                 interpreter fixed, so it adapts to the token sets inference will see.

Freezing is ``requires_grad=False`` plus ``drop_frozen_grads`` before each optimizer step
(an optimizer skips a parameter without a gradient: no update, no weight decay, no stale
momentum), so the optimizer may hold every parameter from the start.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from ired_video.engine.config import ObjectiveSection
from ired_video.reducers.iared2 import IARED2


def interpreters(model: nn.Module) -> list[IARED2]:
    """The model's IA-RED² stages in block order (the curriculum's groups)."""
    stages = [r for r in model.reducers.values() if isinstance(r, IARED2)]
    return sorted(stages, key=lambda r: r.block)


def phase_of_epoch(epochs_per_phase: list[int], epoch: int) -> int:
    """The phase (0-based) that ``epoch`` (0-based) falls in; past the end: the last phase."""
    end = 0
    for phase, epochs in enumerate(epochs_per_phase):
        end += epochs
        if epoch < end:
            return phase
    return len(epochs_per_phase) - 1


def set_phase(model: nn.Module, phase: int) -> None:
    """Roles and trainable parameters of curriculum ``phase`` (see the module docstring)."""
    stages = interpreters(model)
    if not stages:
        raise ValueError("the group-wise curriculum needs IA-RED² interpreters in the model (reducer iared2)")
    if not 0 <= phase <= len(stages):
        raise ValueError(f"phase {phase}: expected 0..{len(stages)} for {len(stages)} interpreter groups")
    finetune = phase == len(stages)
    for param in model.parameters():
        param.requires_grad = finetune
    for index, stage in enumerate(stages):
        stage.set_role("learn" if index == phase else "fixed" if index < phase else "off")
        stage.requires_grad_(index == phase)
    if finetune:
        for stage in stages:
            stage.requires_grad_(False)


def end_curriculum(model: nn.Module) -> None:
    """Every interpreter back to its default role (learn) and every parameter trainable."""
    for stage in interpreters(model):
        stage.set_role("learn")
    model.requires_grad_(True)


def drop_frozen_grads(model: nn.Module) -> None:
    """Remove the gradients of frozen parameters (a data-parallel wrapper may have filled
    them with zeros), so an optimizer step leaves those parameters exactly as they are."""
    for param in model.parameters():
        if not param.requires_grad:
            param.grad = None


def phase_objective(cfg: ObjectiveSection, phase: int, groups: int) -> ObjectiveSection:
    """The objective of ``phase``: as configured while interpreters learn; without the
    policy and keep-ratio terms while the backbone is fine-tuned (no interpreter samples)."""
    if phase < groups:
        return cfg
    return dataclasses.replace(cfg, policy=0.0, keep_ratio=0.0)
