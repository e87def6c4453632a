"""One ``Accelerator`` per run, even when a process runs many.

accelerate keeps its settings (mixed precision, CPU) in a process-wide singleton and
refuses a second ``Accelerator`` whose settings differ ("AcceleratorState has already been
initialized"). ``train`` and ``evaluate_checkpoint`` run many times in one process in
benchmarks, notebooks and tests, so the per-run part of that state is cleared first; the
distributed set-up (``PartialState``: process group, ranks, device) is kept.
"""
from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState


def new_accelerator(**kwargs: Any) -> Accelerator:
    """``Accelerator(**kwargs)`` after clearing the settings an earlier run left behind."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(**kwargs)
