"""``ired-video eval``: multi-view accuracy and compute of a checkpoint on annotated videos."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ired_video.commands.common import add_annotation_arguments, add_reducer_argument, reducer_from_args
from ired_video.engine.evaluate import evaluate_checkpoint
from ired_video.inference import parse_views
from ired_video.paths import writable_file

EPILOG = """examples:
  ired-video eval --checkpoint runs/demo_micro/best.pth --data data/demo/val.csv
  ired-video eval --checkpoint best.pth --data k400/val.csv --root k400/val --views 1x3
  ired-video eval --checkpoint best.pth --data data/demo/val.csv --reducer tome r=8
  ired-video eval --checkpoint cascade.pth --data data/demo/val.csv --budget 0.3   # calibrated cascade
  torchrun --nproc_per_node 2 -m ired_video.cli eval --checkpoint best.pth --data val.csv --cpu

Views are CLIPSxCROPS per video (TimeSformer reports 1x3). Scores are averaged per
video over its views, across all processes without duplicates. Writes the report
(--output, JSON) and one JSON line per view (<output>_views.jsonl): the video (video,
video_index, label, bad_file, replaced_by) and the same view record as `ired-video infer`
(clip_index, crop_index, frame_indices, padded, top_k, gmacs, tokens_per_block, stages,
latency_ms, exit_stage).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video eval", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate one of our checkpoints: top-1/top-5/mean class accuracy and GMACs per view "
                    "and per video. Preprocessing comes from the checkpoint's data config.")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint (.pth, e.g. runs/x/best.pth)")
    add_annotation_arguments(parser)
    parser.add_argument("--views", default="1x1", help="CLIPSxCROPS per video (default: %(default)s)")
    add_reducer_argument(parser)
    parser.add_argument("--budget", type=float, default=None, metavar="GMACS",
                        help="cascade checkpoints: mean GMACs per clip; exit thresholds from the stored "
                             "calibration table (run 'ired-video calibrate' first)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where a GPU is")
    parser.add_argument("--output", default="eval_report.json", help="report file (default: %(default)s)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    clips, crops = parse_views(args.views)
    output = writable_file(args.output, "--output")  # before evaluating anything
    report = evaluate_checkpoint(Path(args.checkpoint), args.data, reducer=reducer_from_args(args.reducer),
                                 root=args.root, split=args.split, clips=clips, crops=crops,
                                 batch_size=args.batch_size, workers=args.workers, cpu=args.cpu, output=output,
                                 budget=args.budget)
    if report:  # the main process
        print(f"top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}  mean class {report['mean_class_accuracy']:.4f}"
              f"  GMACs/view {report['gmacs_per_view']:.4f}  GMACs/video {report['gmacs_per_video']:.4f}"
              f"  ({report['videos']} videos, {report['bad_views']} unreadable views)")
        print(f"report: {output}  views: {output.with_name(output.stem + '_views.jsonl')}")
    return 0
