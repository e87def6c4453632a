"""Shared by the training tests: the tiny recipe on the demo data (``demo_data`` fixture in conftest)."""
from __future__ import annotations

from pathlib import Path

from ired_video.engine import TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=timesformer_test", "data.num_workers=0", "train.batch_size=4", "train.epochs=2",
    "train.log_every=1", "eval.batch_size=6", "data.preprocess.num_frames=4", "data.preprocess.sampling_rate=2",
    "data.preprocess.crop_size=32", "data.preprocess.train_short_side=[32,40]", "data.preprocess.test_short_side=32",
    "train.mixup=0.2",
]  # 18 training clips / batch 4 = 4 steps an epoch


def settings(demo_data: Path, out: Path, *extra: str) -> list[str]:
    """key=value settings of the tiny recipe on ``demo_data``, writing to ``out``."""
    return [f"data.train={demo_data / 'train.csv'}", f"data.val={demo_data / 'val.csv'}", f"output={out}",
            *TINY, *extra]


def config(demo_data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_train_config(REPO / "configs/train/demo_micro.yaml", settings(demo_data, out, *extra))
