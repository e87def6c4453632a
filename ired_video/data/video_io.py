"""Writing H.264 MP4 files with PyAV (demo data, test videos, overlays).

The choices follow what plays everywhere and what PyAV 18 accepts: H.264 (libx264) in
yuv420p, whose chroma subsampling needs even width and height (odd frames are padded by
repeating the last row/column); the rate as an ``int`` or a ``Fraction`` (PyAV 18 rejects a
float rate); the encoder flushed before the file is closed.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Optional, Sequence, Union

import av
import numpy as np

PathLike = Union[str, os.PathLike]


def as_rate(fps: Union[int, float, Fraction]) -> Union[int, Fraction]:
    """A frame rate PyAV accepts: 30.0 -> 30, 29.97 -> Fraction(2997, 100)."""
    if isinstance(fps, int) or (isinstance(fps, float) and fps.is_integer()):
        return int(fps)
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, H', W', C) with H', W' even, repeating the last row/column."""
    t, h, w, c = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: PathLike, frames: Any, fps: Union[int, float, Fraction], *,
                crf: Optional[int] = None, preset: str = "medium", threads: int = 1,
                rotation: int = 0, timestamps: Optional[Sequence[float]] = None,
                options: Optional[dict[str, str]] = None) -> None:
    """Write uint8 RGB frames ``(T, H, W, 3)`` (numpy or torch) as an H.264 yuv420p MP4.

    ``crf``: x264 quality (lower is better; default x264's 23); ``threads=1`` keeps the
    bytes identical from run to run. ``rotation``: display rotation in degrees (counter-
    clockwise, as phones store it) written as stream side data; the pixels are stored
    unrotated. ``timestamps``: presentation time of each frame in seconds (variable frame
    rate); by default frame ``i`` is at ``i / fps``. ``options``: extra x264 options.
    """
    arr = np.asarray(frames.cpu() if hasattr(frames, "cpu") else frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] == 0:
        raise ValueError(f"{path}: expected uint8 frames (T>0, H, W, 3), got "
                         f"{arr.dtype} {arr.shape}")
    if timestamps is not None and len(timestamps) != arr.shape[0]:
        raise ValueError(f"{path}: {len(timestamps)} timestamps for {arr.shape[0]} frames")
    arr = pad_to_even(arr)
    rate = as_rate(fps)
    codec_options = {"preset": preset, **({"crf": str(crf)} if crf is not None else {}),
                     **(options or {})}
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options=codec_options)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = threads
        if timestamps is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation % 360:
            stream.set_display_rotation(rotation % 360)
        for i, image in enumerate(arr):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if timestamps is not None:
                frame.pts = round(timestamps[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
