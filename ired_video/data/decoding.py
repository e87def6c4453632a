"""Decoding the sampled frames of one video: decord first, PyAV as the fallback.

:func:`read_clip` opens a reader *per call* (never shared, never made in the parent
process), asks a chooser for the frame indices given the frame count and fps the backend
sees, and returns only those frames as uint8 ``(T, H, W, 3)`` RGB, upright.

* **decord** (``num_threads=1``; ``.asnumpy()``, never the thread-local torch bridge;
  ``torch`` imported first, which avoids decord's import-order crashes). ``len(vr)`` comes
  from the packet index decord builds when it opens the file, and indices are clamped to
  it. Any decord error (they are many, see the pitfalls notes) counts as a failure.
* **PyAV** (``thread_type="SLICE"``: frame threading hangs in DataLoader workers): the
  frame count is the number of video packets (a cheap demux pass, not the header, which
  may lie or be absent); frames are decoded *sequentially* up to the last index needed and
  only the needed ones are converted to RGB. If decoding stops early (a file that decodes
  only partway), the decodable prefix is taken as the video, the chooser is asked again
  with that count and the note says so.
* **Rotation**: decord 0.6 applies the display matrix (phone videos come out upright);
  PyAV reports it as ``frame.rotation`` and we rotate the same way (``np.rot90``), so both
  backends return identical frames.
* **Decode-time resize** pays when the source is much larger than what the transforms
  need (a 4K phone video for a 224 model: 25x less memory and colour conversion); with
  ``short_side`` set, frames of sources whose short side exceeds it by ``1.25x`` are
  resized while decoding, keeping the aspect ratio (decord resizes each axis
  independently, so we compute both sides from a PyAV header probe).

Why not pytorchvideo's ``EncodedVideo`` (PyAV): it selects frames by time, decodes the whole
time window and converts *every* frame in it to RGB float32 (an 8.5 s window at 240x320 is
~225 MB, and colour conversion dominates the cost), logs decode errors at debug level and
returns ``None``, and decodes the whole file when the header has no duration. We need
exact frame indices, conversion of the sampled frames only, and errors that name the file.

**Hang guard.** decord's ``get_batch`` past the frames that really decode spins forever
*holding the GIL* (decord#373), so no thread, signal or timeout inside the process can stop
it; only killing the process can. Per item, the affordable guards are the ones here:
indices clamped to decord's packet-index length (truncated files fail at open or report
only their complete packets; corrupt packets raise instead of spinning), errors turned into
PyAV fallbacks, and frame counts verified offline by ``ired-video check-videos`` (which
decodes each file in a killable process with a timeout; pass its report to the dataset to
drop bad files and clamp to verified counts). A subprocess per item would cost a process
start (~10 ms fork, far more with spawn) and a copy of every clip through a pipe on every
sample of every epoch; that price buys nothing once the dataset has been checked.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch  # noqa: F401  -- must be imported before decord (decord#293, #324)

try:
    import decord
except ImportError:  # no wheel for this platform: PyAV only
    decord = None
import av

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
IndexChooser = Callable[[int, float], Sequence[int]]
BACKENDS = ("auto", "decord", "pyav")
RESIZE_MIN_RATIO = 1.25


class DecodeError(RuntimeError):
    """A video cannot be decoded; ``str()`` names the file and the reason."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class DecodedClip(NamedTuple):
    """Frames ``(T, H, W, 3)`` uint8 RGB and how they were obtained."""

    frames: np.ndarray
    indices: tuple[int, ...]
    num_frames: int
    fps: float
    backend: str
    note: str


def _reason(err: BaseException) -> str:
    """One line: exception type and message, without decord's timestamp/source prefixes."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", " ".join(str(err).split()))
    if "Check failed" in text or len(text) > 300:  # decord's C++ traces are long
        text = text[:300] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _clamp(indices: Sequence[int], num_frames: int) -> tuple[int, ...]:
    return tuple(min(max(int(i), 0), num_frames - 1) for i in indices)


def _resized_size(height: int, width: int, short_side: Optional[int]) -> Optional[tuple[int, int]]:
    """(H', W') with short side ``short_side`` if resizing at decode pays, else None."""
    if not short_side or min(height, width) <= short_side * RESIZE_MIN_RATIO:
        return None
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def probe_size(path: PathLike) -> tuple[int, int]:
    """Coded (height, width) of the first video stream from the header (before rotation)."""
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise DecodeError(path, "no video stream")
        stream = container.streams.video[0]
        return stream.height, stream.width


def read_clip_decord(path: PathLike, choose: IndexChooser,
                     short_side: Optional[int] = None,
                     max_frames: Optional[int] = None) -> DecodedClip:
    """Decode the chosen frames with decord; raise :class:`DecodeError` on any failure."""
    if decord is None:
        raise DecodeError(path, "decord is not installed")
    try:
        vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
        num = len(vr)
        if num < 1:
            raise DecodeError(path, "decord found no video frames")
        if short_side:
            size = _resized_size(*probe_size(path), short_side)
            if size is not None:
                height, width = vr[0].shape[:2]  # upright size (decord applies rotation)
                size = _resized_size(height, width, short_side)
                del vr
                vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1,
                                        width=size[1], height=size[0])
                num = len(vr)
        num = min(num, max_frames) if max_frames else num
        fps = float(vr.get_avg_fps() or 0.0)
        indices = _clamp(choose(num, fps), num)
        frames = vr.get_batch(list(indices)).asnumpy()  # (T, H, W, 3) uint8
        vr.seek(0)  # releases decoder buffers (decord#208)
        del vr
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 -- decord raises many types, all mean "cannot"
        raise DecodeError(path, f"decord: {_reason(err)}") from None
    return DecodedClip(frames, indices, num, fps, "decord", "")


def _rgb(frame: "av.VideoFrame", size: Optional[tuple[int, int]]) -> np.ndarray:
    """One PyAV frame -> upright (H, W, 3) uint8, resized first if ``size`` (upright) given."""
    rot = frame.rotation // 90  # counter-clockwise quarter turns, as decord applies them
    if size is not None:
        height, width = size if rot % 2 == 0 else size[::-1]  # coded = before rotation
        image = frame.to_ndarray(format="rgb24", width=width, height=height)
    else:
        image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, rot)) if rot % 4 else image


def _count_packets(path: PathLike) -> tuple[int, float]:
    """(number of video packets, average fps) by demuxing without decoding."""
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise DecodeError(path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        count = sum(1 for packet in container.demux(stream) if packet.size)
        return count, float(rate) if rate else 0.0


def _decode_sequential(path: PathLike, needed: set[int], short_side: Optional[int]
                       ) -> tuple[dict[int, np.ndarray], int, Optional[str]]:
    """Decode frames 0.. up to max(needed); return (needed frames, frames seen, error)."""
    frames: dict[int, np.ndarray] = {}
    seen, last = 0, max(needed)
    size: Optional[tuple[int, int]] = None
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            for frame in container.decode(stream):
                if seen == 0 and short_side:
                    turned = (frame.rotation // 90) % 2  # quarter turn: upright W = coded H
                    upright = (frame.width, frame.height) if turned else (frame.height, frame.width)
                    size = _resized_size(*upright, short_side)
                if seen in needed:
                    frames[seen] = _rgb(frame, size)
                seen += 1
                if seen > last:
                    break
    except Exception as err:  # noqa: BLE001 -- corrupt data raises several av error types
        return frames, seen, _reason(err)
    return frames, seen, None


def read_clip_pyav(path: PathLike, choose: IndexChooser, short_side: Optional[int] = None,
                   max_frames: Optional[int] = None) -> DecodedClip:
    """Decode the chosen frames with PyAV, sequentially; raise :class:`DecodeError` on failure."""
    try:
        num, fps = _count_packets(path)
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DecodeError(path, f"pyav: {_reason(err)}") from None
    num = min(num, max_frames) if max_frames else num
    if num < 1:
        raise DecodeError(path, "pyav: no video packets")
    indices = _clamp(choose(num, fps), num)
    frames, seen, error = _decode_sequential(path, set(indices), short_side)
    note = ""
    if len(frames) < len(set(indices)):  # stopped before the last needed frame
        if seen == 0:
            raise DecodeError(path, f"pyav: no frame decodes ({error or 'empty stream'})")
        note = (f"decodes only {seen} of {num} frames ({error or 'stream ended'}); "
                f"clip sampled from those")
        num = seen
        indices = _clamp(choose(num, fps), num)
        frames, seen, error = _decode_sequential(path, set(indices), short_side)
        if len(frames) < len(set(indices)):
            raise DecodeError(path, f"pyav: decoding is not repeatable ({error})")
    stacked = np.stack([frames[i] for i in indices])  # (T, H, W, 3) uint8
    return DecodedClip(stacked, indices, num, fps, "pyav", note)


def read_clip(path: PathLike, choose: IndexChooser, backend: str = "auto",
              short_side: Optional[int] = None, max_frames: Optional[int] = None
              ) -> DecodedClip:
    """Decode the frames ``choose(num_frames, fps)`` of ``path`` as uint8 ``(T, H, W, 3)``.

    ``backend``: ``"auto"`` (decord, then PyAV if decord fails; the note records why),
    ``"decord"`` or ``"pyav"``. ``short_side``: resize at decode when the source is much
    larger (see module doc). ``max_frames``: a verified frame count to clamp to (from
    ``check-videos``). Raises :class:`DecodeError` naming the file and every reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if not os.path.isfile(path):
        raise DecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    if backend == "pyav":
        return read_clip_pyav(path, choose, short_side, max_frames)
    try:
        return read_clip_decord(path, choose, short_side, max_frames)
    except DecodeError as first:
        if backend == "decord":
            raise
        try:
            clip = read_clip_pyav(path, choose, short_side, max_frames)
        except DecodeError as second:
            raise DecodeError(path, f"{first.reason}; {second.reason}") from None
        note = f"decord failed ({first.reason}); decoded with PyAV"
        return clip._replace(note=f"{note}; {clip.note}" if clip.note else note)
