"""Map-style video dataset: one item per (video, temporal clip, spatial crop) view.

Map-style on purpose: under multi-process training every rank decodes only its shard of
indices and ``accelerate``'s ``gather_for_metrics`` drops the padding exactly (an iterable
dataset, pytorchvideo's included, is duplicated or broadcast instead). Item ``i`` is view
``(video_index, clip_index, crop_index) = divmod``-decoded from ``i`` with crops innermost,
so the views of one video are consecutive; aggregate test predictions by ``video_index``.

Design notes: docs/design.md, "ired_video.data.dataset".
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ired_video.config import ConfigError, DataConfig
from ired_video.data.annotations import VideoRecord
from ired_video.data.decoding import DecodedClip, DecodeError, check_backend, read_clip
from ired_video.data.sampling import MODES, PAD_MODES, ClipSample, Sampler, sampler_for
from ired_video.data.transforms import eval_transform, to_tchw, train_transform

logger = logging.getLogger(__name__)


def check_data_config(cfg: DataConfig) -> None:
    """Refuse, naming the key, what a DataConfig cannot check value by value: crops that do
    not fit the short sides, unknown sampling or pad names."""
    lo, hi = cfg.train_short_side
    if not cfg.crop_size <= lo <= hi:
        raise ConfigError(f"train_short_side={list(cfg.train_short_side)}: must satisfy "
                          f"crop_size ({cfg.crop_size}) <= low <= high")
    if cfg.test_short_side < cfg.crop_size:
        raise ConfigError(f"test_short_side={cfg.test_short_side}: below crop_size={cfg.crop_size}")
    if cfg.temporal_pad not in PAD_MODES:
        raise ConfigError(f"temporal_pad={cfg.temporal_pad!r}: expected one of {PAD_MODES}")
    try:
        sampler_for(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def read_sampled_clip(path: str, sampler: Sampler, mode: str, clip_index: int, num_clips: int, backend: str,
                      short_side: Optional[int], rng: Optional[np.random.Generator] = None,
                      max_frames: Optional[int] = None) -> tuple[DecodedClip, ClipSample]:
    """Decode the frames ``sampler`` picks for clip ``clip_index`` of ``num_clips`` (``mode``:
    train, val or test) from ``path``; the decoded clip and the sample it came from. The one
    decode path of the dataset and of inference. Raises ``DecodeError`` naming the file."""
    chosen: list[ClipSample] = []

    def choose(num_frames: int, fps: float) -> tuple[int, ...]:
        chosen.append(sampler(num_frames, fps, mode, clip_index, num_clips, rng))
        return chosen[-1].indices

    clip = read_clip(path, choose, backend, short_side=short_side, max_frames=max_frames)
    return clip, chosen[-1]


class VideoDataset(Dataset):
    """Clips of ``records`` made as ``data_config`` says; ``len`` = videos x clips x crops.

    Each item is a dict: ``video`` float ``(C, T, H, W)`` normalised; ``label``,
    ``video_index``, ``clip_index``, ``crop_index``, ``index`` (ints); ``path`` (the file
    decoded); ``frame_indices`` long ``(T,)`` (the frames used, after the pad rule);
    ``padded`` (bool: the video was shorter than the window); ``backend`` (the decoder
    used: ``"pyav"``, ``"decord"`` or ``"torchcodec"``); ``note`` (why a fallback or
    partial decode happened, else ``""``);
    ``failed_paths`` (str) and ``num_failed`` (int): files replaced to make this item.

    ``mode``: ``"train"`` (random clip, scale jitter, random crop, flip) or ``"val"``/
    ``"test"`` (clips spread and centred, short side ``test_short_side``, crop
    ``crop_index`` of ``num_crops``: 1 = centre, 3 = along the long side).
    ``frame_counts``: verified frame counts by path (from a check-videos report) to clamp to.
    ``backend``: ``"auto"`` (PyAV, decord if it fails), ``"pyav"``, ``"decord"`` or
    ``"torchcodec"`` (see ``ired_video.data.decoding``).
    """

    def __init__(self, records: Sequence[VideoRecord], data_config: DataConfig,
                 mode: str = "train", num_clips: int = 1, num_crops: int = 1,
                 backend: str = "auto", max_retries: int = 10, seed: int = 0,
                 frame_counts: Optional[Mapping[str, int]] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if not records:
            raise ValueError("VideoDataset needs at least one record")
        if num_clips < 1 or num_crops < 1:
            raise ValueError(f"num_clips and num_crops must be >= 1, got {num_clips}, {num_crops}")
        check_data_config(data_config)
        check_backend(backend)  # before any item: an unusable decoder fails every one
        self.records = list(records)
        self.cfg, self.mode, self.backend = data_config, mode, backend
        self.num_clips, self.num_crops = num_clips, num_crops
        self.max_retries, self.seed = max_retries, seed
        self.epoch = 0
        self.frame_counts = dict(frame_counts or {})
        self.sampler = sampler_for(data_config)
        self.bad_files: dict[str, str] = {}  # path -> reason, seen by *this* process only
        self._cache: tuple[Any, Any] = (None, None)  # last decoded (key, clip) for crops

    def __len__(self) -> int:
        return len(self.records) * self.num_clips * self.num_crops

    def set_epoch(self, epoch: int) -> None:
        """Training augmentation is a function of (seed, epoch, index): call once per epoch."""
        self.epoch = epoch

    def view(self, index: int) -> tuple[int, int, int]:
        """``index`` -> (video_index, clip_index, crop_index), crops innermost."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} views")
        rest, crop_index = divmod(index, self.num_crops)
        video_index, clip_index = divmod(rest, self.num_clips)
        return video_index, clip_index, crop_index

    def _decode(self, video_index: int, clip_index: int, rng: np.random.Generator
                ) -> tuple[Any, ClipSample]:
        """Decoded clip of one video (cached across the crops of one val/test view)."""
        key = (video_index, clip_index)
        if self.mode != "train" and self._cache[0] == key:
            return self._cache[1]
        path = self.records[video_index].path
        short = self.cfg.train_short_side[1] if self.mode == "train" else self.cfg.test_short_side
        result = read_sampled_clip(path, self.sampler, self.mode, clip_index, self.num_clips, self.backend,
                                   short, rng, self.frame_counts.get(path))
        if result[0].note:
            logger.warning("%s: %s", path, result[0].note)
        if self.mode != "train":
            self._cache = (key, result)
        return result

    def _replacement(self, index: int, attempt: int, exclude: int) -> int:
        """Deterministic replacement video for ``index`` at retry ``attempt``."""
        count = len(self.records)
        if count == 1:
            return exclude
        rng = np.random.default_rng([self.seed, index, attempt])
        pick = int(rng.integers(0, count - 1))
        return pick + 1 if pick >= exclude else pick  # any video but the failing one

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_index, clip_index, crop_index = self.view(index)
        # A function of (seed, epoch, index), not of a process's RNG state: the same item
        # gets the same augmentation in any worker, process count, or after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index])
        failed: list[str] = []
        current = video_index
        for attempt in range(self.max_retries + 1):
            try:
                clip, sample = self._decode(current, clip_index, rng)
                break
            except DecodeError as err:
                if err.path not in self.bad_files:
                    logger.warning("bad video, replaced: %s", err)
                self.bad_files[err.path] = err.reason
                failed.append(err.path)
                current = self._replacement(index, attempt, video_index)
        else:
            raise RuntimeError(f"item {index}: {len(failed)} videos failed to decode in a row "
                               f"(max_retries={self.max_retries}): "
                               + "; ".join(f"{p}: {self.bad_files[p]}" for p in failed))
        video = to_tchw(clip.frames)  # (T, H, W, C) -> (T, C, H, W)
        cfg = self.cfg
        if self.mode == "train":
            video = train_transform(video, cfg.train_short_side, cfg.crop_size, cfg.mean,
                                    cfg.std, rng, flip=cfg.flip)
        else:
            video = eval_transform(video, cfg.test_short_side, cfg.crop_size, cfg.mean,
                                   cfg.std, crop_index, self.num_crops)
        record = self.records[current]
        return {
            "video": video, "label": record.label, "video_index": current,
            "clip_index": clip_index, "crop_index": crop_index, "index": index,
            "path": record.path, "frame_indices": torch.tensor(clip.indices),
            "padded": sample.padded, "backend": clip.backend, "note": clip.note,
            "failed_paths": "\n".join(failed), "num_failed": len(failed),
        }


class BadFileTracker:
    """Counts the bad files reported by batches, in the main process (works with workers).

    Call :meth:`update` with every collated batch, :meth:`summary` at the end of an epoch,
    then :meth:`reset`. Under several processes each sees its own share: gather the
    ``paths``/``replaced_items`` of all and :meth:`merge` them for the epoch's summary.
    """

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.replaced_items = 0

    def update(self, batch: Mapping[str, Any]) -> None:
        """Add the failed paths of a collated batch (``failed_paths`` is a list of str)."""
        entries: Iterable[str] = batch.get("failed_paths", [])
        if isinstance(entries, str):
            entries = [entries]
        for entry in entries:
            if entry:
                self.replaced_items += 1
                self.paths.update(entry.split("\n"))

    def merge(self, paths: Iterable[str], replaced_items: int) -> None:
        """Add another tracker's findings (another process's share of the epoch)."""
        self.paths.update(paths)
        self.replaced_items += replaced_items

    @property
    def count(self) -> int:
        """Number of distinct bad files seen since the last reset."""
        return len(self.paths)

    def summary(self) -> str:
        """One line for the epoch log."""
        if not self.paths:
            return "bad files: 0"
        shown = ", ".join(sorted(self.paths)[:3]) + (", ..." if len(self.paths) > 3 else "")
        return (f"bad files: {self.count} ({self.replaced_items} items replaced): {shown}")

    def reset(self) -> None:
        self.paths.clear()
        self.replaced_items = 0
