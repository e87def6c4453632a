"""Learning-rate schedules, stepped once per optimizer step."""
from __future__ import annotations

import math

import pytest

from ired_video.engine.config import ScheduleSection
from ired_video.engine.schedule import lr_multiplier


def test_warmup_is_linear_then_cosine_reaches_the_floor():
    multiplier = lr_multiplier(ScheduleSection(name="cosine", warmup_epochs=1, min_lr_ratio=0.1),
                               steps_per_epoch=4, total_steps=12)
    assert [multiplier(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert multiplier(4) == 1.0  # cosine starts at the top
    assert multiplier(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert multiplier(12) == pytest.approx(0.1)
    assert multiplier(50) == pytest.approx(0.1)  # stays at the floor past the end
    values = [multiplier(s) for s in range(4, 13)]
    assert values == sorted(values, reverse=True)


def test_step_decay_at_epoch_milestones():
    multiplier = lr_multiplier(ScheduleSection(name="step", milestones=[11, 14], gamma=0.1),
                               steps_per_epoch=10, total_steps=150)
    assert multiplier(0) == multiplier(109) == 1.0
    assert multiplier(110) == pytest.approx(0.1) and multiplier(139) == pytest.approx(0.1)
    assert multiplier(140) == pytest.approx(0.01)


def test_constant_after_warmup():
    multiplier = lr_multiplier(ScheduleSection(name="constant", warmup_epochs=0.5), steps_per_epoch=4,
                               total_steps=8)
    assert [multiplier(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
