"""Fit the interaction reducer's predictor on a checkpoint's model and data (what
``ired-video fit-interaction`` and the demo run): the fitted checkpoint and a JSON report of
the predictor's rank agreement with the indicator on held-out clips, before and after."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ired_video.build import apply_reducer, create_model
from ired_video.config import ConfigError, ReducerConfig, to_dict
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.engine.earlier_outputs import current_report
from ired_video.models.weights import save_checkpoint
from ired_video.reducers.interaction_fit import agreement, fit_interaction_predictors


def load_clips(annotations: str, model: torch.nn.Module, root: Optional[str], batch_size: int,
               limit: Optional[int] = None) -> list[torch.Tensor]:
    """Centre views (B, C, T, H, W) of annotated videos, preprocessed as ``model`` was trained."""
    records = load_annotations(annotations, video_root=root,
                               class_names=model.data_config.class_names or None).records
    dataset = VideoDataset(records[:limit] if limit else records, model.data_config, "test")
    return [batch["video"] for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


def fit_checkpoint(checkpoint: Path, cfg: ReducerConfig, data: str, val: str, out: Path, root: Optional[str] = None,
                   steps: int = 300, batch_size: int = 8, limit: Optional[int] = None,
                   model_name: Optional[str] = None) -> dict[str, Any]:
    """Fit the interaction reducer ``cfg`` on ``checkpoint``'s model; write ``out``/interaction.pth
    and ``out``/fit.json; return the report."""
    if cfg.name != "interaction":
        raise ConfigError(f"fit-interaction fits the interaction reducer, not {cfg.name!r}")
    model = apply_reducer(create_model(model_name, checkpoint=checkpoint).eval(), cfg)
    train_clips = load_clips(data, model, root, batch_size, limit)
    val_clips = load_clips(val, model, root, batch_size, limit)
    before = agreement(model, val_clips)
    start = time.process_time()
    losses = fit_interaction_predictors(model, train_clips, steps=steps)
    fit_cpu_s = time.process_time() - start
    after = agreement(model, val_clips)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "interaction.pth", model)
    report = {"checkpoint": str(checkpoint), "reducer": to_dict(cfg), "data": data, "val": val,
              "train_clips": sum(len(c) for c in train_clips),
              "val_clips": sum(len(c) for c in val_clips), "steps": steps, "fit_cpu_seconds": fit_cpu_s,
              "fit": {str(k): v for k, v in losses.items()},
              "agreement_before": {str(k): v for k, v in before.items()},
              "agreement_after": {str(k): v for k, v in after.items()}}
    (out / "fit.json").write_text(json.dumps(report, indent=1))
    return report


def reducer_start(checkpoint: Path, cfg: ReducerConfig, data_dir: Path, out: Path
                  ) -> tuple[Path, Optional[ReducerConfig], Optional[dict[str, Any]]]:
    """Where a run with reducer ``cfg`` starts from ``checkpoint`` (a plain model trained on
    ``data_dir``/train.csv): the checkpoint and the reducer to apply to it, and the fit
    report when the interaction predictor is fitted first (into ``out``; a fit already there
    for this checkpoint file, reducer and data is reused)."""
    if cfg.name != "interaction" or cfg.score != "predictor":
        return checkpoint, cfg, None
    data, val = str(data_dir / "train.csv"), str(data_dir / "val.csv")
    report = earlier_fit(checkpoint, cfg, data, val, out) or fit_checkpoint(checkpoint, cfg, data, val, out)
    return out / "interaction.pth", None, report


def earlier_fit(checkpoint: Path, cfg: ReducerConfig, data: str, val: str, out: Path) -> Optional[dict[str, Any]]:
    """The report of the fit in ``out`` if it fitted ``cfg`` on this very checkpoint file (not
    newer than the fit) with these annotations; else None."""
    reducer = json.loads(json.dumps(to_dict(cfg)))  # as fit.json holds it: tuples as lists
    expected = {"checkpoint": str(checkpoint), "reducer": reducer, "data": data, "val": val}
    return current_report(out / "fit.json", out / "interaction.pth", checkpoint, expected)
