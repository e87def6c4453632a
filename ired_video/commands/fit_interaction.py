"""``ired-video fit-interaction``: fit the interaction reducer's predictor to the indicator.

The interaction reducer ranks tokens by a small per-token head fitted to the
patch-interaction indicator (computing the indicator itself at inference costs a forward
and a backward pass through the rest of the model at every stage). This command puts the
reducer into a checkpoint's model, computes the indicator at each of its stages on the
training clips, fits each stage's head to it, and measures their agreement (Spearman rank
correlation, per frame and per clip over tube scores) on held-out clips before and after.
It writes the checkpoint with the fitted reducer (evaluate it, or fine-tune from it with
the same reducer settings) and a JSON report.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ired_video.commands.common import add_reducer_argument, reducer_from_args
from ired_video.config import ConfigError, ReducerConfig, to_dict
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.models.registry import create_model
from ired_video.models.weights import save_checkpoint
from ired_video.reducers import apply_reducer, reducer_config
from ired_video.reducers.interaction_fit import agreement, fit_interaction_predictors

EPILOG = """examples:
  ired-video fit-interaction --checkpoint runs/demo/plain/best.pth --data runs/demo/data/train.csv \\
      --val runs/demo/data/val.csv --reducer interaction keep=0.5 --out runs/interaction_fit
  ired-video eval --checkpoint runs/interaction_fit/interaction.pth --data runs/demo/data/val.csv
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video fit-interaction", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1].split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="weights: our checkpoint (e.g. the plain model), or with --model any weights file")
    parser.add_argument("--model", default=None, help="variant name, for weights that are not our checkpoint")
    parser.add_argument("--data", required=True, help="annotations of the clips to fit on")
    parser.add_argument("--val", required=True, help="annotations of held-out clips to measure agreement on")
    parser.add_argument("--root", default=None, help="folder the annotations' videos live in")
    add_reducer_argument(parser)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per stage (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many clips of each split")
    parser.add_argument("--out", required=True, type=Path, help="folder for interaction.pth and fit.json")
    return parser


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
    report = {"checkpoint": str(checkpoint), "reducer": to_dict(cfg), "train_clips": sum(len(c) for c in train_clips),
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
    report when the interaction predictor had to be fitted first (into ``out``)."""
    if cfg.name != "interaction" or cfg.score != "predictor":
        return checkpoint, cfg, None
    report = fit_checkpoint(checkpoint, cfg, str(data_dir / "train.csv"), str(data_dir / "val.csv"), out)
    return out / "interaction.pth", None, report


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = reducer_from_args(args.reducer) or reducer_config("interaction", keep=0.5)
    report = fit_checkpoint(args.checkpoint, cfg, args.data, args.val, args.out, args.root, args.steps,
                            args.batch_size, args.limit, args.model)
    print("| stage (block) | Spearman per frame, before -> after fitting | per clip (tube scores) "
          "| class attention alone, per frame |")
    print("|---|---|---|---|")
    for block, after in report["agreement_after"].items():
        before = report["agreement_before"][block]
        print(f"| {block} | {before['spearman_frame']:.3f} -> {after['spearman_frame']:.3f} "
              f"| {before['spearman_tube']:.3f} -> {after['spearman_tube']:.3f} "
              f"| {after['spearman_frame_cls_attention']:.3f} |")
    print(f"wrote {args.out / 'interaction.pth'} and {args.out / 'fit.json'}")
    return 0
