"""Benchmark: faithfulness and localisation of every explanation method on the demo dataset.

    python tools/bench_explain.py --data runs/demo/data --out runs/explain --seeds 0 1 2

For each seed, a plain demo checkpoint (``--checkpoint``, one per seed, or trained here with
the demo recipe) is scored on the demo split: the table of ``ired-video faithfulness`` for
interpreter, class attention, attention rollout, the interaction indicator and random, plus
the share of object patches each reducer keeps. Each cell is the mean over seeds and videos
with a 95% bootstrap interval over both (videos without a visible object are left out of
the localisation cells), and each method's paired difference to class attention (the
raw attention IA-RED² claims to beat; same seeds and videos resampled together), written as
``OUT/bench_explain.md`` and ``.json``.

The interpreter column needs IA-RED² interpreters. When the checkpoint has none, a short
IA-RED² stage is trained on the *frozen* checkpoint first (the paper's first stage:
REINFORCE policy with a keep-ratio term, backbone frozen; ``--interpreter-epochs``
epochs with the demo recipe, keep 0.7 per stage, tube mode) into ``OUT/interpreter/``;
its interpreters then explain the unchanged backbone.

A run split over processes (e.g. ``--seeds 0 1 --out A`` and ``--seeds 2 --out B``, same
data, split and ``--steps``) is combined into one table with ``--merge A B --out OUT``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ired_video.commands.common import reducer_from_args
from ired_video.engine.recipes import demo_config, plain_per_seed, reducer_settings, train_or_resume
from ired_video.explain.methods import METHODS
from ired_video.explain.table import DEFAULT_REDUCERS, METRICS, Table, build_table, demo_items
from ired_video.inference import load_model
from ired_video.reducers import reducer_config
from ired_video.stats import accuracy_interval, difference_interval


def train_interpreter(checkpoint: Path, data_dir: Path, out: Path, epochs: int) -> Path:
    """A short IA-RED² stage on the frozen ``checkpoint``; returns its best checkpoint."""
    iared2 = reducer_config("iared2", keep=0.7, mode="tube")
    clips = len((data_dir / "train.csv").read_text().splitlines())
    batch = min(16, max(clips // 2, 1))  # small datasets still get steps (as ired-video demo)
    train_or_resume(demo_config(data_dir, out, *reducer_settings(iared2), f"init.checkpoint={checkpoint}",
                                f"train.batch_size={batch}", "init.drop_head=false", f"train.epochs={epochs}",
                                "optim.lr=0.001", "optim.weight_decay=0.0", "schedule.warmup_epochs=0",
                                "eval.every=0", "objective.ce=0.0", "objective.policy=1.0", "objective.keep_ratio=1.0",
                                "objective.keep_target=0.343", "objective.freeze_backbone=true"))
    return out / "best.pth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_explain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=None,
                        help="plain demo checkpoints, one per seed (default: train one per seed with the demo recipe)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one model per seed")
    parser.add_argument("--plain-epochs", type=int, default=24, help="epochs of each plain model trained here")
    parser.add_argument("--data", help="the demo dataset it was trained on (e.g. runs/demo/data); required "
                                       "unless --merge")
    parser.add_argument("--out", default="runs/bench_explain", help="output folder (default: %(default)s)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--interpreter-data", type=Path, default=None,
                        help="demo dataset whose train.csv trains the interpreters (default: --data)")
    parser.add_argument("--limit", type=int, default=None, help="first N videos only (default: all)")
    parser.add_argument("--per-class", type=int, default=None, metavar="N",
                        help="first N videos of each class only, in list order (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="points per deletion/insertion curve minus one")
    parser.add_argument("--interpreter-epochs", type=int, default=4,
                        help="epochs of the IA-RED² stage when the checkpoint has no interpreter "
                             "(default: %(default)s)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="PART",
                        help="combine the OUT folders of runs split over seeds into one table in --out "
                             "(nothing is evaluated)")
    return parser


def seed_table(checkpoint: Path, args: argparse.Namespace, out: Path) -> tuple[Table, Optional[Path]]:
    """One seed's table, after training its interpreter when the checkpoint has none."""
    loaded = load_model(checkpoint, device="cpu")
    interpreter_ckpt = None
    if not any(r.name == "iared2" for r in loaded.model.reducers.values()):
        print(f"{checkpoint} has no interpreter: training an IA-RED² stage on it, frozen -> {out / 'interpreter'}")
        interpreter_ckpt = train_interpreter(checkpoint, Path(args.interpreter_data or args.data), out / "interpreter",
                                             args.interpreter_epochs)
        loaded = load_model(interpreter_ckpt, device="cpu")
    reducers = [reducer_from_args(spec.split()) for spec in DEFAULT_REDUCERS] + [loaded.model.reducer_config]
    items = demo_items(Path(args.data), args.split, args.limit, args.per_class)
    return build_table(loaded.model, items, list(METHODS), reducers, args.steps), interpreter_ckpt


def aggregate(tables: list[Table]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row (method or reducer) and score: mean over seeds and videos with its interval;
    videos whose score is NaN in any seed (no visible object) are left out."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for row, scores in tables[0].per_video.items():
        for score in scores:
            matrix = np.array([table.per_video[row][score] for table in tables])  # (seeds, videos)
            finite = matrix[:, ~np.isnan(matrix).any(axis=0)]
            if finite.size == 0:
                cells.setdefault(row, {})[score] = {"mean": float("nan"), "low": float("nan"),
                                                    "high": float("nan"), "videos": 0}
                continue
            interval = accuracy_interval(finite)
            cells.setdefault(row, {})[score] = {"mean": interval.mean, "low": interval.low, "high": interval.high,
                                                "videos": int(finite.shape[1])}
    return cells


def paired_differences(tables: list[Table], reference: str = "attention") -> dict[str, dict[str, dict[str, float]]]:
    """Per method other than ``reference`` and per explanation score: method - reference, mean
    with a paired interval (same seeds, same videos resampled together); videos whose score
    is NaN for either in any seed are left out."""
    differences: dict[str, dict[str, dict[str, float]]] = {}
    if reference not in tables[0].per_video:
        return differences
    for row, scores in tables[0].per_video.items():
        if row == reference or "deletion_auc" not in scores:
            continue
        for score in METRICS:
            ours = np.array([table.per_video[row][score] for table in tables])  # (seeds, videos)
            theirs = np.array([table.per_video[reference][score] for table in tables])  # (seeds, videos)
            both = ~(np.isnan(ours) | np.isnan(theirs)).any(axis=0)
            interval = difference_interval(ours[:, both], theirs[:, both])
            differences.setdefault(row, {})[score] = {"mean": interval.mean, "low": interval.low,
                                                      "high": interval.high, "videos": int(both.sum())}
    return differences


def markdown(cells: dict[str, dict[str, dict[str, float]]], seeds: int, videos: int,
             differences: Optional[dict[str, dict[str, dict[str, float]]]] = None) -> str:
    def fmt(cell: dict[str, float]) -> str:
        return "n/a" if math.isnan(cell["mean"]) else f"{cell['mean']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"

    def signed(cell: dict[str, float]) -> str:
        return f"{cell['mean']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"
    lines = [f"Explanation methods ({seeds} seeds x {videos} videos, mean [95% CI]; deletion AUC: lower is better, "
             "others higher)", "", "| method | deletion AUC | insertion AUC | pointing game | mask IoU |",
             "|---|---|---|---|---|"]
    lines += [f"| {row} | " + " | ".join(fmt(scores[m]) for m in METRICS) + " |"
              for row, scores in cells.items() if "deletion_auc" in scores]
    lines += ["", "| reducer | object patches kept | all patches kept |", "|---|---|---|"]
    lines += [f"| {row} | {fmt(scores['object_kept'])} | {fmt(scores['all_kept'])} |"
              for row, scores in cells.items() if "object_kept" in scores]
    if differences:
        lines += ["", "Paired difference to class attention (method - attention, same seeds and videos, "
                  "mean [95% CI])", "", "| method | deletion AUC | insertion AUC | pointing game | mask IoU |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row} | " + " | ".join(signed(scores[m]) for m in METRICS) + " |"
                  for row, scores in differences.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "tools/bench_explain.py", *(argv if argv is not None else sys.argv[1:])])
    if args.merge:
        return write_report(Path(args.out), command, *merge_parts(args.merge))
    if args.data is None:
        print("bench_explain: error: --data is required (or --merge PART...)", file=sys.stderr)
        return 2
    out, data_dir = Path(args.out), Path(args.data)
    if not (data_dir / f"{args.split}.csv").is_file():
        print(f"bench_explain: error: {data_dir / f'{args.split}.csv'}: no such file", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        if len(args.checkpoint) != len(args.seeds):
            print(f"bench_explain: error: --checkpoint: give one per seed ({len(args.seeds)}), "
                  f"got {len(args.checkpoint)}", file=sys.stderr)
            return 2
        missing = [path for path in args.checkpoint if not path.is_file()]
        if missing:
            print(f"bench_explain: error: {missing[0]}: no such file", file=sys.stderr)
            return 2
    started = time.perf_counter()
    checkpoints = args.checkpoint or plain_per_seed(data_dir, out, args.seeds, args.plain_epochs)
    tables, interpreters = [], []
    for seed, checkpoint in zip(args.seeds, checkpoints):
        table, interpreter = seed_table(Path(checkpoint), args, out / f"seed{seed}")
        tables.append(table)
        interpreters.append(str(interpreter or checkpoint))
    run = {"checkpoints": [str(c) for c in checkpoints], "interpreter_checkpoints": interpreters,
           "seeds": args.seeds, "data": str(data_dir), "split": args.split, "steps": args.steps,
           "minutes": (time.perf_counter() - started) / 60}
    return write_report(out, command, run, tables)


def write_report(out: Path, command: str, run: dict[str, Any], tables: list[Table]) -> int:
    """bench_explain.md, bench_explain.json and per_video.json (what --merge reads) under ``out``."""
    cells, differences = aggregate(tables), paired_differences(tables)
    text = markdown(cells, len(tables), tables[0].videos, differences)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_explain.md").write_text(text + "\n")
    report = {"command": command, **run, "videos": tables[0].videos, "cells": cells,
              "versus_attention": differences, "per_seed": [table.to_dict() for table in tables]}
    (out / "bench_explain.json").write_text(json.dumps(report, indent=1))
    (out / "per_video.json").write_text(json.dumps([table.per_video for table in tables]))
    print(f"wrote {out / 'bench_explain.md'} and .json ({run['minutes']:.1f} min of evaluation)")
    return 0


def merge_parts(parts: list[Path]) -> tuple[dict[str, Any], list[Table]]:
    """The runs in ``parts`` (OUT folders of this tool) as one: their seeds in the order given.
    They must share the data, split, curve steps and videos, and no seed may repeat."""
    run: dict[str, Any] = {}
    tables: list[Table] = []
    for part in parts:
        try:
            report = json.loads((part / "bench_explain.json").read_text())
            per_video = json.loads((part / "per_video.json").read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"bench_explain: error: --merge {part}: {err}") from err
        shared = {key: report[key] for key in ("data", "split", "steps", "videos")}
        if run and shared != {key: run[key] for key in shared}:
            raise SystemExit(f"bench_explain: error: --merge {part}: data, split, steps or videos {shared} "
                             f"differ from the first part's")
        if set(report["seeds"]) & set(run.get("seeds", [])):
            raise SystemExit(f"bench_explain: error: --merge {part}: seeds {report['seeds']} appear twice")
        run = {**shared, "parts": run.get("parts", []) + [str(part)],
               "part_commands": run.get("part_commands", []) + [report["command"]],
               "seeds": run.get("seeds", []) + report["seeds"],
               "checkpoints": run.get("checkpoints", []) + report["checkpoints"],
               "interpreter_checkpoints": run.get("interpreter_checkpoints", []) + report["interpreter_checkpoints"],
               "minutes": run.get("minutes", 0.0) + report["minutes"]}
        tables += [Table(seed["methods"], seed["reducers"], seed["videos"], videos)
                   for seed, videos in zip(report["per_seed"], per_video)]
    return run, tables


if __name__ == "__main__":
    sys.exit(main())
