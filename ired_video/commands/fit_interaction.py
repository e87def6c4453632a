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
from pathlib import Path
from typing import Optional

from ired_video.commands.common import add_reducer_argument, reducer_from_args
from ired_video.engine.interaction_fit import fit_checkpoint
from ired_video.reducers import reducer_config

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
