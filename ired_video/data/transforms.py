"""Clip transforms on uint8 videos laid out ``(T, C, H, W)``, as torchvision v2 expects.

Train: short side scaled to a random size in ``train_short_side``, random square crop,
horizontal flip with probability 0.5, normalisation (TimeSformer's recipe). Test: short side
scaled to ``test_short_side``, then the centre crop or 3 crops along the long side (left/
top, centre, right/bottom: TimeSformer's 3-crop test). Normalisation returns float
``(C, T, H, W)``, the model's input layout.

Design notes: docs/design.md, "ired_video.data.transforms".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


def to_tchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Decoded ``(T, H, W, C)`` uint8 -> ``(T, C, H, W)`` uint8 tensor (a view when possible)."""
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(video.shape)}")
    return video.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)


def short_side_scale(video: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(T, C, H, W)`` so that min(H, W) == ``size``, keeping the aspect ratio."""
    height, width = video.shape[-2:]
    if min(height, width) == size:
        return video
    if height <= width:
        new = (size, max(size, round(width * size / height)))
    else:
        new = (max(size, round(height * size / width)), size)
    return TF.resize(video, list(new), antialias=True)


def crop(video: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """Square ``size`` crop of ``(T, C, H, W)`` at (top, left); must lie inside the frame."""
    height, width = video.shape[-2:]
    if not (0 <= top <= height - size and 0 <= left <= width - size):
        raise ValueError(f"crop {size}x{size} at ({top}, {left}) is outside a "
                         f"{height}x{width} frame")
    return video[..., top:top + size, left:left + size]


def random_crop(video: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Square crop at a uniformly random position."""
    height, width = video.shape[-2:]
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return crop(video, top, left, size)


def spatial_crop(video: torch.Tensor, size: int, crop_index: int = 1, num_crops: int = 3
                 ) -> torch.Tensor:
    """Crop ``crop_index`` of ``num_crops`` spread evenly along the long side, centred across.

    With ``num_crops=3``: 0 = left (or top), 1 = centre, 2 = right (or bottom); with
    ``num_crops=1`` the centre crop.
    """
    if not 0 <= crop_index < num_crops:
        raise ValueError(f"crop_index={crop_index} is not in [0, num_crops={num_crops})")
    height, width = video.shape[-2:]
    frac = 0.5 if num_crops == 1 else crop_index / (num_crops - 1)
    top, left = (height - size) // 2, (width - size) // 2
    if height > width:
        top = round((height - size) * frac)
    else:
        left = round((width - size) * frac)
    return crop(video, top, left, size)


def horizontal_flip(video: torch.Tensor) -> torch.Tensor:
    """Mirror ``(T, C, H, W)`` left-right."""
    return video.flip(-1)


def normalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` -> float32 ``(C, T, H, W)``, ``(x / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    x = video.permute(1, 0, 2, 3).float().div_(255.0)  # (T, C, H, W) -> (C, T, H, W)
    return x.sub_(mean_t).div_(std_t)


def train_transform(video: torch.Tensor, short_side: tuple[int, int], crop_size: int,
                    mean: Sequence[float], std: Sequence[float], rng: np.random.Generator,
                    flip: bool = True) -> torch.Tensor:
    """Scale jitter, random crop, random flip, normalise: uint8 TCHW -> float CTHW."""
    video = short_side_scale(video, int(rng.integers(short_side[0], short_side[1] + 1)))
    video = random_crop(video, crop_size, rng)
    if flip and rng.random() < 0.5:
        video = horizontal_flip(video)
    return normalize(video, mean, std)


def eval_transform(video: torch.Tensor, short_side: int, crop_size: int,
                   mean: Sequence[float], std: Sequence[float], crop_index: int = 0,
                   num_crops: int = 1) -> torch.Tensor:
    """Resize short side, take crop ``crop_index`` of ``num_crops``, normalise."""
    video = short_side_scale(video, short_side)
    return normalize(spatial_crop(video, crop_size, crop_index, num_crops), mean, std)
