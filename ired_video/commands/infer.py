"""``ired-video infer``: predictions, GMACs and tokens kept for every view of users' videos."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional

from ired_video.commands.common import add_reducer_argument, reducer_from_args
from ired_video.data.decoding import BACKENDS
from ired_video.inference import (
    DEFAULT_MODEL,
    RANDOM_WEIGHTS_WARNING,
    LoadedModel,
    collect_videos,
    infer_paths,
    load_model,
    parse_views,
    report,
    summary_table,
)
from ired_video.models import list_models
from ired_video.models.cascade import apply_budget
from ired_video.paths import writable_file, write_atomically

EPILOG = """examples:
  ired-video infer clip.mp4 --checkpoint runs/k400/best.pth
  ired-video infer videos/ --checkpoint best.pth --views 1x3 --output preds.json
  ired-video infer clip.mp4 --checkpoint best.pth --reducer tome r=8 --top-k 3
  ired-video infer clip.mp4 --checkpoint timesformer-base-finetuned-k400/   # a transformers snapshot
  ired-video infer clip.mp4 --checkpoint best.pth --reducer iared2 threshold=0.5 --device cuda
  ired-video infer clip.mp4 --checkpoint cascade.pth --budget 0.5   # a calibrated cascade at 0.5 GMACs/clip
  ired-video infer clip.mp4                      # demo: timesformer_micro with RANDOM weights

The JSON holds, per video: path, status ("ok"/"error"), error, num_frames, fps, backend,
note, prediction {label, index, prob, top_k}, gmacs (all views), gmacs_per_view, decode_ms,
model_ms, and views [clip_index, crop_index, frame_indices, padded, top_k, gmacs,
tokens_per_block, stages [{reducer, block, mode, tokens, kept_fraction}], latency_ms,
exit_stage]; plus model, data_config, views, batch_size, top_k, seconds and summary.
A video's prediction is the mean of its views' softmax probabilities; latency_ms is the
model time of a view's batch shared among its views. Exit status: 0 when at least one
input was read, 2 when none was (the report is still written) or on a bad setting.
"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --model, --reducer, --device (shared with ``overlay``)."""
    parser.add_argument("--checkpoint", default=None,
                        help="our checkpoint (model, reducer and preprocessing inside), a transformers "
                             "snapshot folder or an mmaction2 checkpoint (config and preprocessing inside), "
                             "or official/timm weights together with --model")
    parser.add_argument("--model", default=None, choices=list_models(),
                        help=f"named variant; without --checkpoint it has random weights (default: "
                             f"{DEFAULT_MODEL} when no checkpoint is given)")
    add_reducer_argument(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1 ... "
                                                         "(default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="video decoder (default: %(default)s: PyAV, decord if it fails)")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model the arguments name, with a loud warning when its weights are random."""
    loaded = load_model(args.checkpoint, args.model, reducer_from_args(args.reducer), args.device)
    if loaded.random_weights:
        banner = "!" * 78
        print(f"{banner}\n{RANDOM_WEIGHTS_WARNING.format(name=loaded.name)}\n{banner}", file=sys.stderr)
    return loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video infer", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify videos: every view (temporal clip x spatial crop) preprocessed as the "
                    "checkpoint's data config says, its top-k classes, the GMACs it really spent and the "
                    "tokens each reducer stage kept; per video the views' mean prediction. Files that "
                    "cannot be read are reported with their reason and the run goes on.")
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR",
                        help="video files, or folders searched recursively for videos")
    add_model_arguments(parser)
    parser.add_argument("--views", default="1x1", help="CLIPSxCROPS per video, e.g. 1x3 = 1 clip x 3 crops "
                                                      "(TimeSformer's test protocol) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="views per forward pass (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per view and video "
                                                             "(default: %(default)s)")
    parser.add_argument("--budget", type=float, default=None, metavar="GMACS",
                        help="cascade checkpoints: mean GMACs per clip; sets the exit thresholds from the "
                             "calibration table stored by 'ired-video calibrate'")
    parser.add_argument("--output", default=None, help="write the JSON report here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    num_clips, num_crops = parse_views(args.views)
    if args.batch_size < 1 or args.top_k < 1:
        raise SystemExit("ired-video infer: --batch-size and --top-k must be at least 1")
    out = None if args.output is None else writable_file(args.output, "--output")
    paths = collect_videos(args.inputs)
    if not paths:
        print(f"ired-video infer: no video files in {', '.join(args.inputs)}", file=sys.stderr)
        return 2
    loaded = load_from_args(args)
    if args.budget is not None:
        row = apply_budget(loaded.model, args.budget)
        print(f"budget {args.budget:g} GMACs/clip: thresholds {row['thresholds']} (held-out: "
              f"{row['gmacs']:.4f} GMACs/clip, top-1 {row['top1']:.3f})")
    began = time.perf_counter()
    results = infer_paths(loaded, paths, num_clips, num_crops, args.batch_size, args.top_k, args.backend,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - began
    doc = report(loaded, results, args.views, args.batch_size, args.top_k, seconds)
    print(summary_table(results))
    s = doc["summary"]
    mean = "n/a" if s["mean_gmacs_per_view"] is None else f"{s['mean_gmacs_per_view']:.4f}"
    print(f"\n{s['ok']} of {s['videos']} videos, {s['views']} views in {seconds:.1f} s on {loaded.device}; "
          f"reducer: {doc['model']['reducer']['name'] if doc['model']['reducer'] else 'none'}; "
          f"mean GMACs/view {mean} (unreduced {doc['model']['unreduced_gmacs_per_view']:.4f})")
    for r in results:
        if r.status != "ok":
            print(f"unreadable: {r.path}: {r.error}", file=sys.stderr)
    if out is not None:
        write_atomically(out, json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    if not s["ok"]:
        print(f"ired-video infer: error: none of the {s['videos']} inputs could be read", file=sys.stderr)
        return 2
    return 0  # some unreadable files are results (listed above and in the JSON), not a failure of the run
