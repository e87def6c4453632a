"""Clip samplers: which frame indices of a video make a clip.

Every sampler is a small object called with the video's frame count and fps, the mode and
the clip's position among ``num_clips`` views; it returns a :class:`ClipSample` (a named
tuple) of ``num_frames`` indices in ``[0, num_video_frames)``.

Design notes: docs/design.md, "ired_video.data.sampling".
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, Optional

import numpy as np

from ired_video.config import DataConfig

logger = logging.getLogger(__name__)

MODES = ("train", "val", "test")
PAD_MODES = ("repeat_last", "loop")


class ClipSample(NamedTuple):
    """Frame indices of one clip, where it starts (native frames), its view, and padding."""

    indices: tuple[int, ...]
    start: float
    clip_index: int
    padded: bool


def _pad(raw: np.ndarray, num_video_frames: int, pad: str) -> tuple[tuple[int, ...], bool]:
    """Apply the pad rule to integer indices that may run past the video."""
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    padded = bool((raw >= num_video_frames).any())
    if pad == "loop":
        out = raw % num_video_frames
    else:
        out = np.minimum(raw, num_video_frames - 1)
    return tuple(int(i) for i in out), padded


def _check(mode: str, clip_index: int, num_clips: int, pad: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if pad not in PAD_MODES:
        raise ValueError(f"pad={pad!r}: expected one of {PAD_MODES}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index={clip_index} is not in [0, num_clips={num_clips})")


class DenseSampler:
    """``num_frames`` frames ``sampling_rate`` frames apart at ``target_fps`` (see module doc)."""

    def __init__(self, num_frames: int, sampling_rate: int, target_fps: float,
                 pad: str = "repeat_last") -> None:
        if num_frames < 1 or sampling_rate < 1 or target_fps <= 0:
            raise ValueError(f"DenseSampler needs num_frames>=1, sampling_rate>=1, "
                             f"target_fps>0; got {num_frames}, {sampling_rate}, {target_fps}")
        _check("train", 0, 1, pad)
        self.num_frames, self.sampling_rate, self.target_fps, self.pad = (
            num_frames, sampling_rate, float(target_fps), pad)

    def stride(self, video_fps: float) -> float:
        """Native frames between two sampled frames (``rate`` when fps is unknown)."""
        if not video_fps or not math.isfinite(video_fps) or video_fps <= 0:
            return float(self.sampling_rate)
        return self.sampling_rate * video_fps / self.target_fps

    def __call__(self, num_video_frames: int, video_fps: float, mode: str = "val",
                 clip_index: int = 0, num_clips: int = 1,
                 rng: Optional[np.random.Generator] = None) -> ClipSample:
        """Indices of clip ``clip_index`` of ``num_clips`` (``rng`` needed for ``train``)."""
        _check(mode, clip_index, num_clips, self.pad)
        stride = self.stride(video_fps)
        max_start = max(num_video_frames - self.num_frames * stride, 0.0)
        if mode == "train":
            if rng is None:
                raise ValueError("train sampling needs an rng (numpy Generator)")
            start = float(rng.integers(0, math.floor(max_start) + 1))
        else:
            start = max_start * (clip_index + 0.5) / num_clips
        raw = np.floor(start + np.arange(self.num_frames) * stride + 1e-6).astype(np.int64)
        indices, padded = _pad(raw, num_video_frames, self.pad)
        return ClipSample(indices, start, clip_index, padded)


class SegmentSampler:
    """One frame from each of ``num_frames`` equal segments of the whole video (TSN)."""

    def __init__(self, num_frames: int, pad: str = "repeat_last") -> None:
        if num_frames < 1:
            raise ValueError(f"SegmentSampler needs num_frames>=1, got {num_frames}")
        _check("train", 0, 1, pad)
        self.num_frames, self.pad = num_frames, pad

    def __call__(self, num_video_frames: int, video_fps: float = 0.0, mode: str = "val",
                 clip_index: int = 0, num_clips: int = 1,
                 rng: Optional[np.random.Generator] = None) -> ClipSample:
        """Indices of clip ``clip_index`` of ``num_clips``; ``video_fps`` is not used."""
        _check(mode, clip_index, num_clips, self.pad)
        if num_video_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
        seg = num_video_frames / self.num_frames
        if mode == "train":
            if rng is None:
                raise ValueError("train sampling needs an rng (numpy Generator)")
            offset = rng.random(self.num_frames)
        else:
            offset = np.full(self.num_frames, (clip_index + 0.5) / num_clips)
        raw = np.floor((np.arange(self.num_frames) + offset) * seg).astype(np.int64)
        indices, padded = _pad(raw, num_video_frames, self.pad)
        return ClipSample(indices, 0.0, clip_index, padded)


Sampler = DenseSampler | SegmentSampler


def make_sampler(kind: str, num_frames: int, sampling_rate: int = 1, target_fps: float = 30.0,
                 pad: str = "repeat_last") -> Sampler:
    """``"dense"`` -> :class:`DenseSampler`, ``"uniform"`` -> :class:`SegmentSampler`."""
    if kind == "dense":
        return DenseSampler(num_frames, sampling_rate, target_fps, pad)
    if kind == "uniform":
        return SegmentSampler(num_frames, pad)
    raise ValueError(f"sampling={kind!r}: expected 'dense' or 'uniform'")


def sampler_for(cfg: DataConfig) -> Sampler:
    """The sampler a data config describes (``sampling``, frames, rate, fps, pad)."""
    return make_sampler(cfg.sampling, cfg.num_frames, cfg.sampling_rate, cfg.target_fps, cfg.temporal_pad)
