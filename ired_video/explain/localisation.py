r"""Localisation scores of a per-patch importance map against a known object mask.

Object masks come at pixel resolution; the model sees patches. ``patch_coverage`` turns a
(T, H, W) mask into the share of each patch's pixels that belong to the object,
(T, h, w) in [0, 1]; demo masks are first mapped through the test-time preprocessing
(frame selection, short-side resize, centre crop: ``demo_patch_coverage``).

Design notes: docs/design.md, "ired_video.explain.localisation".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ired_video.config import DataConfig
from ired_video.data.transforms import short_side_scale, spatial_crop


def patch_coverage(mask: Tensor, patch: int) -> Tensor:
    """(T, H, W) bool or float mask -> (T, H/p, W/p) share of object pixels per patch."""
    frames, height, width = mask.shape
    if height % patch or width % patch:
        raise ValueError(f"a {height}x{width} mask is not a whole number of {patch}-pixel patches")
    return F.avg_pool2d(mask.float()[:, None], patch)[:, 0]  # (T, 1, H, W) -> (T, h, w)


def demo_patch_coverage(mask: np.ndarray, frame_indices: Sequence[int], data: DataConfig, patch: int,
                        crop_index: int = 0, num_crops: int = 1) -> Tensor:
    """A demo video's native (T_all, H, W) mask -> (T, h, w) coverage of the view the model saw:
    the sampled frames, short side ``data.test_short_side`` (antialiased bilinear, as the
    frames), crop ``crop_index`` of ``num_crops``, then per-patch coverage."""
    index = np.clip(np.asarray(frame_indices), 0, len(mask) - 1)
    frames = torch.from_numpy(mask[index].astype(np.float32))[:, None]  # (T, 1, H, W)
    frames = short_side_scale(frames, data.test_short_side)
    frames = spatial_crop(frames, data.crop_size, crop_index, num_crops)[:, 0]  # (T, S, S)
    return patch_coverage(frames.clamp(0, 1), patch)


def pointing_game(importance: Tensor, coverage: Tensor) -> float:
    """Share of frames with a visible object whose most important patch touches it (NaN if none)."""
    importance, coverage = importance.flatten(1), coverage.flatten(1)  # (T, N)
    visible = coverage.amax(dim=1) > 0
    if not bool(visible.any()):
        return float("nan")
    best = importance.argmax(dim=1, keepdim=True)  # (T, 1)
    hits = coverage.gather(1, best)[:, 0] > 0
    return float(hits[visible].float().mean())


def object_patches(coverage: Tensor, min_cover: float = 0.5) -> Tensor:
    """(T, ...) bool: patches at least ``min_cover`` object (any touched one if none is)."""
    objects = coverage >= min_cover
    return objects if bool(objects.any()) else coverage > 0


def mask_iou(importance: Tensor, coverage: Tensor, min_cover: float = 0.5) -> float:
    """IoU of the |O| most important patches with the object patches O (NaN without object)."""
    objects = object_patches(coverage, min_cover).flatten()
    count = int(objects.sum())
    if count == 0:
        return float("nan")
    top = torch.zeros_like(objects)
    top[importance.flatten().topk(count).indices] = True
    return float((top & objects).sum()) / float((top | objects).sum())


def object_share_kept(keep: Tensor, coverage: Tensor, min_cover: float = 0.5) -> tuple[float, float]:
    """(share of object patches kept, share of all patches kept) for a keep mask like coverage."""
    objects = object_patches(coverage, min_cover)
    keep = keep.bool().reshape(objects.shape)
    if not bool(objects.any()):
        return float("nan"), float(keep.float().mean())
    return float((keep & objects).sum()) / float(objects.sum()), float(keep.float().mean())
