"""``ired-video train``: train or fine-tune from a YAML config, on one CPU or many GPUs."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from ired_video.engine import TrainingError, load_train_config, train

EPILOG = """examples:
  ired-video make-demo-data data/demo
  ired-video train --config configs/train/demo_micro.yaml
  ired-video train --config configs/train/demo_micro.yaml reducer.name=topk reducer.keep=0.5 output=runs/topk
  ired-video train --config configs/train/demo_micro.yaml --resume auto        # continue a killed run
  ired-video train --config configs/train/demo_micro.yaml --overwrite          # start that run over
  accelerate launch --num_processes 8 -m ired_video.cli train --config configs/train/k400_timesformer_base.yaml
  torchrun --nproc_per_node 2 tools/train.py --config configs/train/demo_micro.yaml train.cpu=true

Settings are 'section.key=value' (YAML values), checked before anything runs. The run
folder (output=) gets config.yaml, train_log.jsonl/.csv (per step), tensorboard/,
resumable checkpoints/step_*, last.pth and best.pth (our checkpoint format, with the
model, data and reducer configs), eval_log.jsonl (one line per evaluation),
eval_report.json (the latest) and eval_views.jsonl (one line per view).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video train", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a TimeSformer, with or without a token reducer, as a YAML config says.")
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/train/demo_micro.yaml")
    parser.add_argument("--resume", default=None, metavar="auto|CHECKPOINT_DIR",
                        help="continue from the run's latest checkpoint (auto) or a given one")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run folder that holds an earlier run (its checkpoints and logs are "
                             "deleted); without it such a folder is an error")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config settings, e.g. train.epochs=3")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # settings before or after the options
    cfg = load_train_config(args.config, args.overrides)
    try:
        report = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except TrainingError as err:
        print(f"ired-video train: {err}", file=sys.stderr)
        return 1
    if report:
        print(json.dumps({k: report[k] for k in ("top1", "top5", "gmacs_per_view", "videos")}))
    return 0
