"""Built-in recipes: the CPU demo's training config (``ired_video/recipes/demo_micro.yaml``, also
the base of ``configs/train/demo_micro.yaml``) and reducer settings in its ``key=value`` form."""
from __future__ import annotations

import json
from pathlib import Path

from ired_video.config import ReducerConfig, to_dict
from ired_video.engine.config import TrainConfig, load_train_config

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_micro.yaml"


def demo_config(data_dir: Path, output: Path, *extra: str) -> TrainConfig:
    """The demo recipe on the demo dataset in ``data_dir`` (train.csv, val.csv), writing to
    ``output``; ``extra`` are further ``key=value`` settings."""
    return load_train_config(DEMO_RECIPE, [f"data.train={data_dir / 'train.csv'}", f"data.val={data_dir / 'val.csv'}",
                                           f"output={output}", *extra])


def reducer_settings(cfg: ReducerConfig) -> list[str]:
    """A ReducerConfig as ``reducer.key=value`` settings for ``demo_config``/``load_train_config``."""
    return [f"reducer.{k}={json.dumps(v)}" for k, v in to_dict(cfg).items() if v is not None]
