"""Fixtures for the data tests: synthetic videos written with PyAV, the shared real clips."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from ired_video.data.video_io import write_video

STRIPE = 8  # pixels per bit of the frame-index pattern
BITS = 8


def bitpattern_frames(num_frames: int, height: int = 32, start: int = 0) -> np.ndarray:
    """(T, H, 64, 3) uint8 frames whose 8 vertical stripes spell the frame index in binary."""
    frames = np.zeros((num_frames, height, STRIPE * BITS, 3), np.uint8)
    for t in range(num_frames):
        for bit in range(BITS):
            if (start + t) >> bit & 1:
                frames[t, :, bit * STRIPE:(bit + 1) * STRIPE] = 255
    return frames


def read_bitpattern(frames: np.ndarray) -> list[int]:
    """Frame indices spelt by decoded (T, H, W, 3) bit-pattern frames."""
    centre = frames[:, frames.shape[1] // 2, STRIPE // 2::STRIPE, 0]  # (T, BITS)
    return [int(sum(1 << b for b in range(BITS) if row[b] > 127)) for row in centre]


@pytest.fixture
def bitpattern_video(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a bit-pattern MP4 of ``num_frames`` frames at ``fps``; return its path."""
    def make(num_frames: int = 48, fps: float = 30, name: str = "bits.mp4", **kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, bitpattern_frames(num_frames), fps, crf=10, **kwargs)
        return path
    return make


@pytest.fixture(scope="session")
def shared_videos_dir() -> Path:
    """``../shared/testdata/videos`` beside the repository root, or skip."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"
    if not path.is_dir():
        pytest.skip(f"real test clips not found at {path} (../shared/testdata/videos beside "
                    f"the repository)")
    return path


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory):
    """A tiny demo dataset (2 videos per class, 16 frames of 64x48), made once."""
    from ired_video.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), videos_per_class=2, seed=3,
                             width=64, height=48, num_frames=16, fps=10, progress=False)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset the training tests use (4 videos per class, 20 frames of 64x48)."""
    from ired_video.data.demo import make_demo_dataset
    root = tmp_path_factory.mktemp("demo_train")
    make_demo_dataset(root, videos_per_class=4, num_frames=20, width=64, height=48, progress=False)
    return root
