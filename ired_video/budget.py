"""Reducer settings for a compute budget, measured with the forward pass's own billing.

``tome_r_for_gmacs`` finds the constant ToMe ``r`` whose GMACs per view come closest to a
target (for example top-k's at some keep, so the two are compared at equal compute). Each
candidate's cost is ``info.gmacs`` of one forward of a batch-1 clip: ToMe's token counts
follow from r and the shapes alone, so one clip gives the cost of every clip, and no
second formula can drift from what the model bills.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ired_video.build import apply_reducer


def reduced_gmacs(model: nn.Module, reducer: str, **settings: Any) -> float:
    """GMACs per view of ``model`` with ``reducer`` set as given, for a reducer whose
    token counts do not depend on the clip (a fixed keep or r). ``model`` is not changed."""
    probe = copy.deepcopy(model).eval()
    apply_reducer(probe, reducer, **settings)
    cfg = probe.config
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size, generator=generator)
    device = next(probe.parameters()).device
    with torch.inference_mode():
        _, info = probe(video.to(device), return_info=True)
    return float(info.gmacs[0])


def tome_r_for_gmacs(model: nn.Module, target_gmacs: float, mode: str = "tube",
                     **settings: Any) -> tuple[int, float]:
    """The constant r in 0..N/2 whose GMACs per view come closest to ``target_gmacs`` (the
    smaller r on a tie), and those GMACs. GMACs never rise with r, so a bisection over r
    needs about log2(N/2) forwards."""
    half = (model.patch_grid[0] * model.patch_grid[1]) // 2
    cache: dict[int, float] = {}

    def gmacs(r: int) -> float:
        if r not in cache:
            cache[r] = reduced_gmacs(model, "tome", r=r, mode=mode, **settings)
        return cache[r]

    low, high = 0, half  # find the smallest r whose GMACs are at or below the target
    while low < high:
        middle = (low + high) // 2
        if gmacs(middle) > target_gmacs:
            low = middle + 1
        else:
            high = middle
    candidates = [r for r in (low - 1, low) if 0 <= r <= half]
    best = min(candidates, key=lambda r: (abs(gmacs(r) - target_gmacs), r))
    return best, gmacs(best)
