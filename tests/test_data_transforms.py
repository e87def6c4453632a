"""Transforms on uint8 (T, C, H, W) clips."""
import numpy as np
import pytest
import torch

from ired_video.data.transforms import (
    eval_transform,
    horizontal_flip,
    normalize,
    random_crop,
    short_side_scale,
    spatial_crop,
    to_tchw,
    train_transform,
)


def ramp(t=2, h=6, w=10):
    """(T, 3, H, W) uint8 whose value at column x is x (all channels, all frames)."""
    return torch.arange(w, dtype=torch.uint8).expand(t, 3, h, w).clone()


def test_to_tchw_and_short_side_scale_keep_aspect():
    frames = np.zeros((4, 240, 320, 3), np.uint8)
    video = to_tchw(frames)
    assert video.shape == (4, 3, 240, 320)
    assert short_side_scale(video, 120).shape == (4, 3, 120, 160)
    assert short_side_scale(to_tchw(np.zeros((2, 427, 240, 3), np.uint8)), 224).shape == (
        2, 3, 399, 224)
    assert short_side_scale(video, 240) is video


def test_three_crops_along_the_long_side():
    video = ramp(w=10)
    assert [spatial_crop(video, 6, k, 3)[0, 0, 0, 0].item() for k in range(3)] == [0, 2, 4]
    assert spatial_crop(video, 6, 0, 1)[0, 0, 0, 0].item() == 2
    tall = ramp(h=6, w=10).transpose(-1, -2)  # value = row index
    assert [spatial_crop(tall, 6, k, 3)[0, 0, 0, 0].item() for k in range(3)] == [0, 2, 4]
    with pytest.raises(ValueError, match="outside"):
        spatial_crop(video, 8, 1, 3)


def test_flip_and_normalise_values_and_layout():
    video = ramp(w=4)
    assert horizontal_flip(video)[0, 0, 0].tolist() == [3, 2, 1, 0]
    out = normalize(torch.full((2, 3, 1, 1), 255, dtype=torch.uint8), (0.5, 0.4, 0.3), (0.5, 0.2, 0.1))
    assert out.shape == (3, 2, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([1.0, 3.0, 7.0]))


def test_train_and_eval_transforms_shapes_and_determinism():
    video = to_tchw(np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8))
    a = train_transform(video, (40, 50), 32, (0.45,) * 3, (0.225,) * 3, np.random.default_rng(1))
    b = train_transform(video, (40, 50), 32, (0.45,) * 3, (0.225,) * 3, np.random.default_rng(1))
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    c = eval_transform(video, 32, 32, (0.45,) * 3, (0.225,) * 3, 2, 3)
    assert c.shape == (3, 3, 32, 32)
    crop = random_crop(video, 48, np.random.default_rng(0))
    assert crop.shape[-2:] == (48, 48)
