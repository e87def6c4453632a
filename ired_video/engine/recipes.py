"""Built-in recipes: the CPU demo's training config (``ired_video/recipes/demo_micro.yaml``, also
the base of ``configs/train/demo_micro.yaml``) and reducer settings in its ``key=value`` form."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from ired_video.config import ReducerConfig, to_dict
from ired_video.engine.checkpoints import latest
from ired_video.engine.config import TrainConfig, dump, load_train_config
from ired_video.engine.train import train

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_micro.yaml"


def demo_config(data_dir: Path, output: Path, *extra: str) -> TrainConfig:
    """The demo recipe on the demo dataset in ``data_dir`` (train.csv, val.csv), writing to
    ``output``; ``extra`` are further ``key=value`` settings."""
    return load_train_config(DEMO_RECIPE, [f"data.train={data_dir / 'train.csv'}", f"data.val={data_dir / 'val.csv'}",
                                           f"output={output}", *extra])


def reducer_settings(cfg: ReducerConfig) -> list[str]:
    """A ReducerConfig as ``reducer.key=value`` settings for ``demo_config``/``load_train_config``."""
    return [f"reducer.{k}={json.dumps(v)}" for k, v in to_dict(cfg).items() if v is not None]


def train_or_resume(cfg: TrainConfig) -> None:
    """Train ``cfg`` into its output folder, losing at most one epoch to a kill: a run of the
    same settings found there continues from its newest checkpoint (a finished one is only
    reloaded); a folder holding other settings, no checkpoint, or a run older than the file
    ``init.checkpoint`` names now (it was remade since), starts over."""
    run = Path(cfg.output)
    newest = latest(run)
    if (newest is not None and _saved_settings(run) == yaml.safe_load(yaml.safe_dump(dump(cfg)))
            and _not_older_than_init(newest, cfg.init.checkpoint)):
        train(cfg, resume="auto")
    else:
        train(cfg, overwrite=True)


def _not_older_than_init(checkpoint: Path, init: Optional[str]) -> bool:
    """Whether ``checkpoint`` was saved after the file the run started from (or there is none)."""
    return init is None or not Path(init).is_file() or Path(init).stat().st_mtime <= checkpoint.stat().st_mtime


def _saved_settings(run: Path) -> Any:
    """The settings an earlier run wrote to ``run/config.yaml``; None when missing or unreadable."""
    try:
        return yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def plain_per_seed(data_dir: Path, out: Path, seeds: list[int], epochs: int) -> list[Path]:
    """One plain demo-recipe model per seed (``out/plain_seed<S>/last.pth``): the benchmarks'
    starting points, trained, continued after a kill, or reused when finished."""
    paths = []
    for seed in seeds:
        run = out / f"plain_seed{seed}"
        train_or_resume(demo_config(data_dir, run, f"train.seed={seed}", f"train.epochs={epochs}", "eval.every=0"))
        paths.append(run / "last.pth")
    return paths
