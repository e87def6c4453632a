"""Decoding the sampled frames of one video: PyAV, decord as the fallback, torchcodec on request.

:func:`read_clip` opens a reader *per call* (never shared, never made in the parent
process), asks a chooser for the frame indices given the frame count and fps the backend
sees, and returns only those frames as uint8 ``(T, H, W, 3)`` RGB, upright. Frame ``i`` is
the ``i``-th frame in presentation order, in every backend (tested against a sequential
decode, frame by frame).

Design notes: docs/design.md, "ired_video.data.decoding".
"""
from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

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
DECODERS = ("pyav", "decord", "torchcodec")
BACKENDS = ("auto",) + DECODERS
AUTO_ORDER = ("pyav", "decord")  # fastest first (README, "Data loader"); pip installs both
RESIZE_MIN_RATIO = 1.25
SKIP_NONREF_CODECS = ("h264",)  # codecs whose non-reference pictures nothing refers to


class DecodeError(RuntimeError):
    """A video cannot be decoded; ``str()`` names the file and the reason."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class DecodedClip(NamedTuple):
    """Frames ``(T, H, W, 3)`` uint8 RGB and how they were obtained.

    ``frames`` is a numpy array, except from torchcodec on a GPU (a tensor on that device).
    """

    frames: Any
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


@functools.lru_cache(maxsize=1)
def _torchcodec_decoder() -> tuple[Any, str]:
    """(torchcodec's ``VideoDecoder`` class, "") or (None, why it cannot be used here)."""
    try:
        from torchcodec.decoders import VideoDecoder  # loads FFmpeg: 1 s, so on first use
    except ImportError:
        return None, "torchcodec is not installed (pip install torchcodec)"
    except (RuntimeError, OSError):  # its C++ core finds no FFmpeg 4-8 shared libraries
        return None, ("torchcodec cannot load FFmpeg: it needs FFmpeg's shared libraries, which pip "
                      "does not install: the system's (e.g. apt-get install libavcodec59 libavformat59 "
                      "libavdevice59 libavfilter8 libswscale6), or PyAV's bundled copy, linked by "
                      "'eval \"$(python tools/ffmpeg_from_pyav.py runs/ffmpeg)\"' before Python starts")
    return VideoDecoder, ""


def available_backends() -> dict[str, str]:
    """Each decoder -> "" if usable here, else the reason it is not."""
    return {"pyav": "", "decord": "" if decord is not None else "decord is not installed",
            "torchcodec": _torchcodec_decoder()[1]}


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` naming the reason if ``backend`` is unknown or unusable here."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    why = "" if backend == "auto" else available_backends()[backend]
    if why:
        raise ValueError(f"backend={backend!r} cannot be used here: {why}")


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


def read_clip_torchcodec(path: PathLike, choose: IndexChooser,
                         short_side: Optional[int] = None, max_frames: Optional[int] = None,
                         device: str = "cpu", seek_mode: str = "exact") -> DecodedClip:
    """Decode the chosen frames with torchcodec; raise :class:`DecodeError` on any failure."""
    decoder_class, why = _torchcodec_decoder()
    if decoder_class is None:
        raise DecodeError(path, why)
    options = dict(dimension_order="NHWC", num_ffmpeg_threads=1, device=device,
                   seek_mode=seek_mode)
    try:
        decoder = decoder_class(os.fspath(path), **options)
        meta = decoder.metadata  # width/height are upright (after rotation)
        size = _resized_size(meta.height, meta.width, short_side) if short_side else None
        if size is not None:
            from torchcodec.transforms import Resize  # importable once the decoder is
            decoder = decoder_class(os.fspath(path), transforms=[Resize(size)], **options)
        num = int(meta.num_frames or 0)
        if num < 1:
            raise DecodeError(path, "torchcodec found no video frames")
        num = min(num, max_frames) if max_frames else num
        fps = float(meta.average_fps_from_header or meta.average_fps or 0.0)
        indices = _clamp(choose(num, fps), num)
        frames = decoder.get_frames_at(list(indices)).data  # (T, H, W, 3) uint8
        del decoder
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 -- FFmpeg errors surface as several types
        raise DecodeError(path, f"torchcodec: {_reason(err)}") from None
    return DecodedClip(frames.numpy() if frames.device.type == "cpu" else frames, indices,
                       num, fps, "torchcodec", "")


def _rgb(frame: "av.VideoFrame", size: Optional[tuple[int, int]]) -> np.ndarray:
    """One PyAV frame -> upright (H, W, 3) uint8, resized first if ``size`` (upright) given."""
    rot = frame.rotation // 90  # counter-clockwise quarter turns, as decord applies them
    if size is not None:
        height, width = size if rot % 2 == 0 else size[::-1]  # coded = before rotation
        image = frame.to_ndarray(format="rgb24", width=width, height=height)
    else:
        image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, rot)) if rot % 4 else image


def _upright_size(frame: "av.VideoFrame", short_side: Optional[int]) -> Optional[tuple[int, int]]:
    """Decode-time target (H', W') after rotation for this frame's source, or None."""
    if not short_side:
        return None
    turned = (frame.rotation // 90) % 2  # quarter turn: upright W = coded H
    upright = (frame.width, frame.height) if turned else (frame.height, frame.width)
    return _resized_size(*upright, short_side)


class PacketIndex(NamedTuple):
    """What one demux pass tells: frame count, fps, and (if trustworthy) timestamps.

    ``pts``: presentation timestamps in presentation order (frame ``i`` has ``pts[i]``), or
    ``None`` when some packet has none or two share one (then only sequential decoding is
    exact). ``keyframes``: indices of the keyframes, ascending.
    """

    count: int
    fps: float
    codec: str
    pts: Optional[tuple[int, ...]]
    keyframes: tuple[int, ...]


def index_packets(path: PathLike) -> PacketIndex:
    """Demux the first video stream without decoding; see :class:`PacketIndex`."""
    with av.open(os.fspath(path)) as container:
        return _index(container, path)


def _index(container: "av.container.InputContainer", path: PathLike) -> PacketIndex:
    """:func:`index_packets` on an open container (which is left at the end of the file)."""
    if not container.streams.video:
        raise DecodeError(path, "pyav: no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream)
               if packet.size and not packet.is_discard]  # discarded: never output
    codec = stream.codec_context.name
    stamps = [pts for pts, _ in packets]
    if None in stamps or len(set(stamps)) != len(stamps):
        return PacketIndex(len(packets), float(rate) if rate else 0.0, codec, None, ())
    order = sorted(stamps)
    position = {pts: i for i, pts in enumerate(order)}
    keys = sorted(position[pts] for pts, key in packets if key)
    return PacketIndex(len(packets), float(rate) if rate else 0.0, codec, tuple(order),
                       tuple(keys))


def _decode_seeking(container: "av.container.InputContainer", index: PacketIndex,
                    needed: set[int], short_side: Optional[int]
                    ) -> Optional[dict[int, np.ndarray]]:
    """The needed frames by seek + skip (module doc), or None if the file does not allow it.

    ``container``: open on the file ``index`` describes, anywhere (it is seeked first).
    None means "use the sequential decode": timestamps that do not match the index, a
    first frame that is not a keyframe, an error, or a needed frame not reached.
    """
    if index.pts is None:
        return None
    first, last = min(needed), max(needed)
    start = max((k for k in index.keyframes if k <= first), default=None)
    if start is None:
        return None
    position = {pts: i for i, pts in enumerate(index.pts)}
    skip = index.codec in SKIP_NONREF_CODECS
    frames: dict[int, np.ndarray] = {}
    previous = -1
    size: Optional[tuple[int, int]] = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        context = stream.codec_context
        container.seek(index.pts[start], stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            if skip:  # per packet: decode every reference picture and every needed one
                wanted = position.get(packet.pts, -1) in needed or not packet.size
                context.skip_frame = "DEFAULT" if wanted else "NONREF"
            for frame in packet.decode():
                i = position.get(frame.pts, -1)
                if i <= previous or (previous < 0 and (i > first or i not in index.keyframes)):
                    return None  # not in the index, out of order, or not a keyframe start
                if previous < 0:
                    size = _upright_size(frame, short_side)
                previous = i
                if i in needed:
                    frames[i] = _rgb(frame, size)
                if i >= last:
                    return frames
    except Exception:  # noqa: BLE001 -- any trouble: the sequential path decides and reports
        return None
    return None  # the stream ended before the last needed frame


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
                if seen == 0:
                    size = _upright_size(frame, short_side)
                if seen in needed:
                    frames[seen] = _rgb(frame, size)
                seen += 1
                if seen > last:
                    break
    except Exception as err:  # noqa: BLE001 -- corrupt data raises several av error types
        return frames, seen, _reason(err)
    return frames, seen, None


def read_clip_pyav(path: PathLike, choose: IndexChooser, short_side: Optional[int] = None,
                   max_frames: Optional[int] = None, seek: bool = True) -> DecodedClip:
    """Decode the chosen frames with PyAV; raise :class:`DecodeError` on failure.

    ``seek=False`` always decodes sequentially from frame 0 (the reference decode).
    """
    try:  # one open for the index and the fast path (a second open is 13% of a small clip)
        container = av.open(os.fspath(path))
    except Exception as err:  # noqa: BLE001
        raise DecodeError(path, f"pyav: {_reason(err)}") from None
    try:
        try:
            index = _index(container, path)
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DecodeError(path, f"pyav: {_reason(err)}") from None
        num = min(index.count, max_frames) if max_frames else index.count
        if num < 1:
            raise DecodeError(path, "pyav: no video packets")
        indices = _clamp(choose(num, index.fps), num)
        fast = _decode_seeking(container, index, set(indices), short_side) if seek else None
    finally:
        container.close()
    if fast is not None:
        return DecodedClip(np.stack([fast[i] for i in indices]), indices, num, index.fps,
                           "pyav", "")
    frames, seen, error = _decode_sequential(path, set(indices), short_side)
    note = ""
    if len(frames) < len(set(indices)):  # stopped before the last needed frame
        if seen == 0:
            raise DecodeError(path, f"pyav: no frame decodes ({error or 'empty stream'})")
        note = (f"decodes only {seen} of {num} frames ({error or 'stream ended'}); "
                f"clip sampled from those")
        num = seen
        indices = _clamp(choose(num, index.fps), num)
        frames, seen, error = _decode_sequential(path, set(indices), short_side)
        if len(frames) < len(set(indices)):
            raise DecodeError(path, f"pyav: decoding is not repeatable ({error})")
    stacked = np.stack([frames[i] for i in indices])  # (T, H, W, 3) uint8
    return DecodedClip(stacked, indices, num, index.fps, "pyav", note)


READERS: dict[str, Callable[..., DecodedClip]] = {
    "pyav": read_clip_pyav, "decord": read_clip_decord, "torchcodec": read_clip_torchcodec}


def auto_order() -> tuple[str, ...]:
    """The decoders ``"auto"`` tries, in order: :data:`AUTO_ORDER` less those not installed."""
    usable = available_backends()
    return tuple(name for name in AUTO_ORDER if not usable[name])


def read_clip(path: PathLike, choose: IndexChooser, backend: str = "auto",
              short_side: Optional[int] = None, max_frames: Optional[int] = None
              ) -> DecodedClip:
    """Decode the frames ``choose(num_frames, fps)`` of ``path`` as uint8 ``(T, H, W, 3)``.

    ``backend``: ``"auto"`` (:func:`auto_order`: PyAV, then decord if PyAV fails; the note
    records why), ``"pyav"``, ``"decord"`` or ``"torchcodec"``. ``short_side``: resize at
    decode when the source is much larger (see module doc). ``max_frames``: a verified
    frame count to clamp to (from ``check-videos``). Raises :class:`DecodeError` naming the
    file and every reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if not os.path.isfile(path):
        raise DecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    chain = auto_order() if backend == "auto" else (backend,)
    failures: list[DecodeError] = []
    for name in chain:
        try:
            clip = READERS[name](path, choose, short_side, max_frames)
        except DecodeError as err:
            failures.append(err)
            continue
        if not failures:
            return clip
        note = "; ".join(f"{failed} failed ({err.reason})"
                         for failed, err in zip(chain, failures)) + f"; decoded with {name}"
        return clip._replace(note=f"{note}; {clip.note}" if clip.note else note)
    if len(failures) == 1:
        raise failures[0]
    raise DecodeError(path, "; ".join(err.reason for err in failures)) from None
