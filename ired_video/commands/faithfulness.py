"""``ired-video faithfulness``: deletion/insertion AUC and localisation of every explanation
method, side by side, on a demo dataset whose object masks are known."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ired_video.commands.common import reducer_from_args
from ired_video.data.decoding import BACKENDS
from ired_video.explain.methods import METHODS
from ired_video.explain.table import DEFAULT_REDUCERS, build_table, demo_items
from ired_video.inference import load_model

EPILOG = """examples:
  ired-video faithfulness --checkpoint runs/demo/plain/best.pth --data runs/demo/data --out faith/
  ired-video faithfulness --checkpoint best.pth --data data/demo --methods attention rollout random \\
      --reducer "topk keep=0.5" --reducer "random keep=0.5" --limit 20

Columns: deletion AUC (probability of the true class while the most important patches
are removed, area over the removed fraction 0..1: lower is better), insertion AUC (only
the most important patches kept: higher is better), pointing game (the top patch of a
frame touches the object), mask IoU (top-|O| patches vs the object patches O). Reducers:
share of object patches their last stage kept, next to the share of all patches kept.
The interpreter column needs a checkpoint with an iared2 reducer (tools/bench_explain.py
trains one). Writes OUT/faithfulness.md and OUT/faithfulness.json.
"""
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video faithfulness", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure how faithful each explanation method is (deletion and insertion curves) and "
                    "how well it localises the object (demo masks), and how many object patches each "
                    "reducer keeps; print and write the table.")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint of a model trained on the demo data")
    parser.add_argument("--data", required=True, help="demo dataset folder (ired-video make-demo-data)")
    parser.add_argument("--split", default="val", help="list file <data>/<split>.csv (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"of {', '.join(METHODS)} (default: all; interpreter when the model has one)")
    parser.add_argument("--reducer", action="append", default=None, metavar="'NAME KEY=VALUE ...'",
                        help="a reducer whose object-patch share to measure; repeat for more "
                             f"(default: {'; '.join(DEFAULT_REDUCERS)})")
    parser.add_argument("--steps", type=int, default=20, help="points of each curve minus one (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N videos only")
    parser.add_argument("--out", default=None, help="folder for faithfulness.md and .json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit("ired-video faithfulness: --steps must be >= 1")
    if not Path(args.checkpoint).exists():  # a file, or a transformers snapshot folder
        print(f"ired-video faithfulness: error: {args.checkpoint}: no such checkpoint", file=sys.stderr)
        return 2
    loaded = load_model(args.checkpoint, device=args.device)
    model = loaded.model
    has_interpreter = any(r.name == "iared2" for r in model.reducers.values())
    methods = args.methods or [m for m in METHODS if m != "interpreter" or has_interpreter]
    reducers = [reducer_from_args(spec.split()) for spec in (args.reducer or DEFAULT_REDUCERS)]
    items = demo_items(Path(args.data), args.split, args.limit)
    table = build_table(model, items, methods, reducers, args.steps, args.backend, loaded.device)
    text = table.markdown()
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "faithfulness.md").write_text(text + "\n")
        report = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, "steps": args.steps,
                  **table.to_dict()}
        (out / "faithfulness.json").write_text(json.dumps(report, indent=1))
        print(f"wrote {out / 'faithfulness.md'} and {out / 'faithfulness.json'}")
    return 0
