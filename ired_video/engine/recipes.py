"""Built-in recipes: the CPU demo's training configs (``ired_video/recipes/demo_micro.yaml`` for the
easy and medium demo tasks, ``hard_micro.yaml`` for the hard one; each the base of the config of
the same name under ``configs/train/``) and reducer settings in their ``key=value`` form."""
from __future__ import annotations

import json
from pathlib import Path

from ired_video.config import ReducerConfig, to_dict
from ired_video.engine.config import TrainConfig, load_train_config

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
DEMO_RECIPE = RECIPE_DIR / "demo_micro.yaml"
HARD_RECIPE = RECIPE_DIR / "hard_micro.yaml"
# The recipe ``ired-video demo --task`` trains with on each demo task.
TASK_RECIPES = {"easy": DEMO_RECIPE, "medium": DEMO_RECIPE, "hard": HARD_RECIPE}


def demo_config(data_dir: Path, output: Path, *extra: str, recipe: Path = DEMO_RECIPE) -> TrainConfig:
    """A built-in recipe (default: the demo's) on the demo dataset in ``data_dir`` (train.csv,
    val.csv), writing to ``output``; ``extra`` are further ``key=value`` settings."""
    return load_train_config(recipe, [f"data.train={data_dir / 'train.csv'}", f"data.val={data_dir / 'val.csv'}",
                                      f"output={output}", *extra])


def reducer_settings(cfg: ReducerConfig) -> list[str]:
    """A ReducerConfig as ``reducer.key=value`` settings for ``demo_config``/``load_train_config``."""
    return [f"reducer.{k}={json.dumps(v)}" for k, v in to_dict(cfg).items() if v is not None]
