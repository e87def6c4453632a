"""Decoding: exact frames on a bit-pattern video, every backend, rotation, real clips, bad files."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ired_video.config import DataConfig
from ired_video.data import decoding
from ired_video.data.annotations import VideoRecord
from ired_video.data.dataset import VideoDataset
from ired_video.data.decoding import (
    DECODERS,
    DecodeError,
    _decode_seeking,
    auto_order,
    index_packets,
    read_clip,
    read_clip_pyav,
)
from ired_video.data.sampling import DenseSampler
from ired_video.data.video_io import as_rate, write_video

from .conftest import bitpattern_frames, read_bitpattern


def pick(*indices):
    return lambda num_frames, fps: list(indices)


@pytest.fixture(params=DECODERS)
def backend(request) -> str:
    """Each decoder; one that is not usable here is skipped with the reason."""
    why = decoding.available_backends()[request.param]
    if why:
        pytest.skip(f"{request.param}: {why}")
    return request.param


def test_seeks_return_exactly_the_requested_frames(bitpattern_video, backend):
    path = bitpattern_video(48, fps=30)
    clip = read_clip(path, pick(40, 3, 3, 17, 47, 0), backend)
    assert read_bitpattern(clip.frames) == [40, 3, 3, 17, 47, 0]
    assert clip.frames.shape == (6, 32, 64, 3) and clip.frames.dtype == np.uint8
    assert (clip.num_frames, clip.fps, clip.backend) == (48, 30.0, backend)


def test_every_backend_matches_a_sequential_pyav_decode(bitpattern_video, backend):
    # 200 frames, a keyframe every 25 and x264's B-frames: seeks land mid-file and
    # PyAV's fast path skips non-reference pictures; frame by frame against frame 0.. decode.
    path = bitpattern_video(200, options={"g": "25", "bf": "3"})
    rng = np.random.default_rng(0)
    for _ in range(4):
        indices = sorted(int(i) for i in rng.integers(0, 200, 8))
        clip = read_clip(path, pick(*indices), backend)
        reference = read_clip_pyav(path, pick(*indices), seek=False)
        assert read_bitpattern(clip.frames) == read_bitpattern(reference.frames) == indices
        assert np.array_equal(clip.frames, reference.frames)


def test_pyav_fast_path_seeks_and_skips_on_h264(bitpattern_video):
    path = bitpattern_video(200, options={"g": "25", "bf": "3"})
    index = index_packets(path)
    assert index.codec == "h264" and index.count == 200 and index.pts is not None
    assert index.keyframes[0] == 0 and len(index.keyframes) >= 8
    wanted = [index.keyframes[-3] + 1, index.keyframes[-2] - 1, 199]  # after a mid-file seek
    with av.open(str(path)) as container:
        frames = _decode_seeking(container, index, set(wanted), None)
    assert frames is not None and sorted(frames) == wanted  # the fast path, not the fallback
    assert read_bitpattern(np.stack([frames[i] for i in wanted])) == wanted


def test_indices_past_the_end_are_clamped(bitpattern_video, backend):
    clip = read_clip(bitpattern_video(20), pick(5, 19, 20, 500), backend)
    assert clip.indices == (5, 19, 19, 19)
    assert read_bitpattern(clip.frames) == [5, 19, 19, 19]


def test_chooser_sees_the_frame_count_and_fps(bitpattern_video):
    seen = []
    read_clip(bitpattern_video(30, fps=Fraction(30000, 1001)),
              lambda n, fps: seen.append((n, round(fps, 3))) or [0])
    assert seen == [(30, 29.97)]


def test_fewer_frames_than_the_clip_repeat_the_last(bitpattern_video):
    sampler = DenseSampler(8, 4, 30.0)
    clip = read_clip(bitpattern_video(10), lambda n, fps: sampler(n, fps, "val").indices)
    assert read_bitpattern(clip.frames) == [0, 4, 8, 9, 9, 9, 9, 9]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_is_upright_and_identical_in_every_backend(tmp_path, rotation, backend):
    frames = np.zeros((6, 32, 64, 3), np.uint8)
    frames[:, :8, :16] = 255  # a white block at the top-left of the stored picture
    write_video(tmp_path / "r.mp4", frames, 15, rotation=rotation, crf=10)
    a = read_clip(tmp_path / "r.mp4", pick(0, 5), backend).frames
    b = read_clip_pyav(tmp_path / "r.mp4", pick(0, 5), seek=False).frames
    upright = np.rot90(frames[0], rotation // 90)  # counter-clockwise display rotation
    assert a.shape[1:] == b.shape[1:] == upright.shape
    assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(a[0].astype(int) - upright).mean() < 8


def test_variable_frame_rate_is_sampled_by_frame_index(tmp_path, backend):
    times = [0, 0.03, 0.1, 0.5, 0.52, 0.9, 1.0, 1.6, 1.65, 2.0]
    write_video(tmp_path / "vfr.mp4", bitpattern_frames(10), 30, timestamps=times, crf=10)
    clip = read_clip(tmp_path / "vfr.mp4", pick(0, 3, 9), backend)
    assert read_bitpattern(clip.frames) == [0, 3, 9] and clip.num_frames == 10


def test_large_resolution_is_resized_while_decoding(tmp_path, backend):
    write_video(tmp_path / "big.mp4", np.full((2, 2160, 3840, 3), 90, np.uint8), 30,
                preset="ultrafast", rotation=90)
    clip = read_clip(tmp_path / "big.mp4", pick(0, 1), backend, short_side=64)
    assert clip.frames.shape == (2, 114, 64, 3)  # upright, short side 64, aspect kept


def test_as_rate_gives_pyav_acceptable_rates():
    assert as_rate(30.0) == 30 and isinstance(as_rate(30.0), int)
    assert as_rate(30000 / 1001) == Fraction(30000, 1001)


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def corrupt_second_half(path: Path) -> None:
    """Overwrite the second half of the media data with noise (container index intact)."""
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat"), data.find(b"moov")
    assert 0 < start < end, "expected mdat before moov"
    mid = start + (end - start) // 2
    data[mid:end - 8] = np.random.default_rng(0).integers(0, 256, end - 8 - mid, np.uint8).tobytes()
    path.write_bytes(bytes(data))


BAD = {
    "missing": (lambda p: None, "file not found"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "empty file"),
    "text": (lambda p: p.write_text("this is not a video\n" * 50), "Invalid data"),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(20000)), "pyav"),
    "audio_only": (write_audio_only, "no video stream"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unreadable_files_raise_a_decode_error_naming_file_and_reason(tmp_path, kind, backend):
    make, reason = BAD[kind]
    path = tmp_path / f"{kind}.mp4"
    make(path)
    with pytest.raises(DecodeError) as info:
        read_clip(path, pick(0), backend)
    assert str(path) in str(info.value) and info.value.reason
    if kind in ("missing", "zero_bytes"):
        assert reason in str(info.value)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_auto_reports_the_reason_of_every_backend_it_tried(tmp_path, kind):
    make, reason = BAD[kind]
    path = tmp_path / f"{kind}.mp4"
    make(path)
    with pytest.raises(DecodeError) as info:
        read_clip(path, pick(0))
    assert str(path) in str(info.value) and reason in str(info.value)
    if kind not in ("missing", "zero_bytes") and len(auto_order()) > 1:
        assert "pyav: " in info.value.reason and "decord: " in info.value.reason


def test_auto_tries_pyav_then_decord_and_leaves_out_what_is_missing(monkeypatch):
    assert decoding.AUTO_ORDER == ("pyav", "decord")
    assert "torchcodec" not in auto_order()  # needs system FFmpeg: never implicit
    monkeypatch.setattr(decoding, "decord", None)
    assert auto_order() == ("pyav",)


def partway_file(tmp_path: Path) -> Path:
    frames = np.random.default_rng(2).integers(0, 255, (60, 48, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "p.mp4", frames, 15, options={"g": "10"})
    corrupt_second_half(tmp_path / "p.mp4")
    return tmp_path / "p.mp4"


def test_file_that_decodes_partway_uses_the_decodable_prefix(tmp_path):
    sampler = DenseSampler(4, 2, 15.0)
    clip = read_clip(partway_file(tmp_path), lambda n, fps: sampler(n, fps, "val").indices)
    assert clip.backend == "pyav" and clip.note.startswith("decodes only")
    assert 0 < clip.num_frames < 60
    assert max(clip.indices) < clip.num_frames and clip.frames.shape == (4, 48, 64, 3)


def test_fallback_chain_moves_on_when_the_first_choice_fails_on_a_corrupt_file(
        tmp_path, monkeypatch):
    if decoding.decord is None:
        pytest.skip("decord is not installed")
    path = partway_file(tmp_path)
    with pytest.raises(DecodeError, match="decord"):
        read_clip(path, pick(0, 59), "decord")  # decord refuses this file outright
    monkeypatch.setattr(decoding, "AUTO_ORDER", ("decord", "pyav"))
    sampler = DenseSampler(4, 2, 15.0)
    clip = read_clip(path, lambda n, fps: sampler(n, fps, "val").indices)
    assert clip.backend == "pyav" and clip.note.startswith("decord failed (decord: ")
    assert "decoded with pyav" in clip.note and "decodes only" in clip.note


def test_unusable_torchcodec_is_a_decode_error_with_the_reason(bitpattern_video, monkeypatch):
    monkeypatch.setattr(decoding, "_torchcodec_decoder", lambda: (None, "no FFmpeg libraries"))
    path = bitpattern_video(4)
    with pytest.raises(DecodeError, match="no FFmpeg libraries") as info:
        read_clip(path, pick(0), "torchcodec")
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="backend='torchcodec' cannot be used here: no FFmpeg"):
        VideoDataset([VideoRecord(str(path), 0)], DataConfig(), backend="torchcodec")
    with pytest.raises(ValueError, match="expected one of"):
        VideoDataset([VideoRecord(str(path), 0)], DataConfig(), backend="ffmpeg")


def test_truncated_file_is_an_error_or_a_noted_partial_decode(tmp_path, bitpattern_video):
    path = bitpattern_video(60, options={"g": "10"})
    data = path.read_bytes()
    for cut in (0.1, 0.5, 0.9):
        short = tmp_path / f"cut{cut}.mp4"
        short.write_bytes(data[:int(len(data) * cut)])
        try:
            clip = read_clip(short, pick(0, 59))
        except DecodeError as err:
            assert str(short) in str(err)
            continue
        assert clip.note and read_bitpattern(clip.frames)[0] == 0  # never silently partial


REAL = {  # name -> (frames, fps)
    "arm_wrestling_340x256_28fps.mp4": (280, 28.0),
    "h264_340x256_30fps_10s.mp4": (300, 30.0),
    "mpeg4_320x240_25fps_audio.avi": (164, 25.0),
    "flipping_a_pancake_426x240_audio.mkv": (310, 30.0),
}


# torchcodec 0.17 returns frame i-1 for frame i >= 1 of this AVI (packed MPEG-4 B-frames)
KNOWN_WRONG = {("torchcodec", "mpeg4_320x240_25fps_audio.avi")}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_clips_load_identically_with_every_backend(shared_videos_dir, name, backend):
    cfg = DataConfig()  # 8x32 at 30 fps
    sampler = DenseSampler(cfg.num_frames, cfg.sampling_rate, cfg.target_fps)
    choose = lambda n, fps: sampler(n, fps, "val").indices  # noqa: E731
    a = read_clip(shared_videos_dir / name, choose, backend)
    b = read_clip_pyav(shared_videos_dir / name, choose, seek=False)
    frames, fps = REAL[name]
    assert (a.num_frames, a.fps) == (b.num_frames, b.fps) == (frames, fps)
    assert a.indices == b.indices == sampler(frames, fps, "val").indices
    assert np.array_equal(a.frames, b.frames) != ((backend, name) in KNOWN_WRONG)


def test_pyav_fast_path_falls_back_on_avi_packed_b_frames(shared_videos_dir):
    path = shared_videos_dir / "mpeg4_320x240_25fps_audio.avi"
    with av.open(str(path)) as container:
        assert _decode_seeking(container, index_packets(path), {0, 40, 80}, None) is None


def test_real_clip_8x32_indices_by_hand(shared_videos_dir):
    # 28 fps: stride 32*28/30 = 29.867, window 238.9, max start 41.07, centre 20.53
    clip = read_clip(shared_videos_dir / "arm_wrestling_340x256_28fps.mp4",
                     lambda n, fps: DenseSampler(8, 32, 30.0)(n, fps, "val").indices)
    assert clip.indices == (20, 50, 80, 110, 140, 169, 199, 229)
