"""One training run of a recipe, timed in CPU seconds: for docs/recipes.md's table.

Runs ``ired-video train --config CONFIG`` in a child process on the train/val lists of
``--data`` (a generated demo dataset folder, or ``--train``/``--val``), with ``KEY=VALUE``
overrides, and appends one row to ``--out`` (JSON list): the settings, validation top-1 at
every evaluated epoch (with the wall seconds since the start), the best and last top-1, wall
seconds and the CPU seconds (user + sys) of the training process and its data-loader
workers (the rusage ``os.wait4`` returns for that child, so runs sharing the machine each
count only their own); when the val list's folder has a ``classes.txt`` of
generated ``"<shape> moving <direction>"`` names, also ``val_shape`` / ``val_direction``: the
share of the last evaluation's views whose top class has the right shape / direction. On a
shared machine the wall time is inflated; the CPU seconds are the budget (20 core-minutes =
1200 s = 10 minutes on 2 idle cores).

With ``--seeds 3`` it trains once per seed (0, 1, 2) and adds a row with the mean last-epoch
top-1 and its 95% interval, bootstrapped over seeds and validation videos; seeds already
in ``--out`` (same overrides, evaluation on disk) are reused, so a killed run resumes.
``--jobs 2`` trains two seeds at once (one per core with ``OMP_NUM_THREADS=1``).

    nice -n 5 python tools/bench_recipe.py --name baseline --data runs/data/hard200 \\
        --config ired_video/recipes/demo_micro.yaml --out docs/bench/recipe_hard.json train.epochs=24
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ired_video.data.demo import label_factor_shares
from ired_video.paths import write_atomically
from ired_video.stats import accuracy_interval

EPOCH_LINE = re.compile(r"^epoch (\d+): top-1 ([0-9.]+), top-5 ([0-9.]+), ([0-9.]+) GMACs/view over (\d+) videos")


def run(name: str, config: str, train: str, val: str, output: str, overrides: list[str]) -> dict[str, Any]:
    """Train once in a child process; the row described in the module doc."""
    command = [sys.executable, "-m", "ired_video.cli", "train", "--config", config, "--overwrite",
               f"data.train={train}", f"data.val={val}", f"output={output}", *overrides]
    start = time.perf_counter()
    epochs: list[dict[str, Any]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            for part in line.replace("\r", "\n").split("\n"):
                match = EPOCH_LINE.search(part.strip())
                if match:
                    epochs.append({"epoch": int(match[1]), "top1": float(match[2]), "top5": float(match[3]),
                                   "wall_s": round(time.perf_counter() - start, 1)})
                    print(f"[{name}] {part.strip()} ({epochs[-1]['wall_s']:.0f} s)", flush=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's CPU, its reaped loader workers included
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"{name}: training failed (exit {child.returncode}); command: {' '.join(command)}")
    cpu = usage.ru_utime + usage.ru_stime
    gmacs = json.loads((Path(output) / "eval_report.json").read_text()).get("gmacs_per_view")
    return {"name": name, "config": config, "train": train, "val": val, "overrides": overrides,
            "epochs": epochs, "best_top1": max((e["top1"] for e in epochs), default=None),
            "last_top1": epochs[-1]["top1"] if epochs else None, "val_videos": None,
            "gmacs_per_view": gmacs, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_min": round(cpu / 60, 2)}


def read_views(views: Path) -> list[dict[str, Any]]:
    """The rows of a run's eval_views.jsonl, one per evaluated view."""
    return [json.loads(line) for line in views.read_text(encoding="utf-8").splitlines() if line.strip()]


def factor_shares(views: Path, classes: Path) -> dict[str, float]:
    """``val_shape`` / ``val_direction`` of the views in ``views`` (eval_views.jsonl), when
    ``classes`` holds demo-style class names; empty otherwise."""
    if not classes.is_file() or not views.is_file():
        return {}
    scored = [row for row in read_views(views) if row.get("top_k")]
    shares = label_factor_shares([row["top_k"][0]["index"] for row in scored], [row["label"] for row in scored],
                                 classes.read_text(encoding="utf-8").splitlines())
    return {f"val_{factor}": round(share, 3) for factor, share in (shares or {}).items()}


def view_correct(views: Path) -> np.ndarray:
    """(videos,) 1.0 where the video's top class is its label, in video order, from a run's
    eval_views.jsonl; an evaluation of several views per video is refused (top-1 then comes
    from the views' mean probabilities, which the file does not hold)."""
    rows = read_views(views)
    indices = [row["video_index"] for row in rows]
    if len(set(indices)) != len(indices):
        raise SystemExit(f"{views}: several views per video; per-video scores need one view each")
    ordered = sorted(rows, key=lambda row: row["video_index"])
    return np.array([float(bool(row["top_k"]) and row["top_k"][0]["index"] == row["label"]) for row in ordered])


def seed_summary(name: str, rows: list[dict[str, Any]], outputs: list[Path]) -> dict[str, Any]:
    """One row over the seeds' runs: last-epoch top-1 as mean with a 95% bootstrap interval
    over seeds and validation videos (ired_video.stats), mean CPU seconds and shares."""
    scores = np.stack([view_correct(output / "eval_views.jsonl") for output in outputs])  # (seeds, videos)
    summary: dict[str, Any] = {"name": name, "seeds": [row["name"] for row in rows],
                               **accuracy_interval(scores).fields("top1"),
                               "last_top1_per_seed": [row["last_top1"] for row in rows],
                               "cpu_s_mean": round(float(np.mean([row["cpu_s"] for row in rows])), 1),
                               "cpu_s_max": max(row["cpu_s"] for row in rows)}
    for key in ("val_shape", "val_direction"):
        if all(key in row for row in rows):
            summary[f"{key}_mean"] = round(float(np.mean([row[key] for row in rows])), 3)
    return summary


def finished(rows: list[dict[str, Any]], name: str, overrides: list[str], output: Path) -> Optional[dict[str, Any]]:
    """The row of an earlier run of ``name`` with these overrides whose evaluation is on disk."""
    for row in rows:
        if row["name"] == name and row["overrides"] == overrides and (output / "eval_views.jsonl").is_file():
            return row
    return None


def stored_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of the JSON list in ``out``; none when it does not exist yet."""
    return json.loads(out.read_text()) if out.is_file() else []


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """Put ``rows`` at the end of the JSON list in ``out``, replacing rows of the same names."""
    stored = stored_rows(out)
    names = {row["name"] for row in rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps([row for row in stored if row["name"] not in names] + rows, indent=1))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="row name")
    parser.add_argument("--config", default="ired_video/recipes/demo_micro.yaml")
    parser.add_argument("--data", help="dataset folder with train.csv and val.csv")
    parser.add_argument("--train", help="train list (default: DATA/train.csv)")
    parser.add_argument("--val", help="val list (default: DATA/val.csv)")
    parser.add_argument("--output", help="run folder (default: runs/recipe/NAME)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="train once per seed S = 0..N-1 (train.seed=S, rows NAME_seedS, folders "
                             "OUTPUT_seedS; a seed already in --out with the same overrides and its evaluation on "
                             "disk is not rerun) and add a row NAME with the mean top-1 and its 95%% interval")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="with --seeds, train up to J seeds at once (each counts only its own CPU seconds)")
    parser.add_argument("--out", required=True,
                        help="JSON file the rows are appended to (a row of the same name is replaced)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_intermixed_args(argv)  # settings before or after the options
    train = args.train or (args.data and f"{args.data}/train.csv")
    val = args.val or (args.data and f"{args.data}/val.csv")
    if not train or not val:
        parser.error("give --data, or --train and --val")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    out = Path(args.out)
    stored = stored_rows(out)
    base = args.output or f"runs/recipe/{args.name}"
    runs = ([(args.name, Path(base), args.overrides)] if args.seeds is None else
            [(f"{args.name}_seed{seed}", Path(f"{base}_seed{seed}"), [*args.overrides, f"train.seed={seed}"])
             for seed in range(args.seeds)])
    val_videos = len(Path(val).read_text().splitlines())
    saving = threading.Lock()

    def trained(name: str, output: Path, overrides: list[str]) -> dict[str, Any]:
        row = finished(stored, name, overrides, output) if args.seeds is not None else None
        if row is None:
            row = run(name, args.config, train, val, str(output), overrides)
            row["val_videos"] = val_videos
            row.update(factor_shares(output / "eval_views.jsonl", Path(val).parent / "classes.txt"))
            with saving:  # each finished seed is kept at once: a killed benchmark resumes after it
                write_rows(out, [row])
        print(json.dumps({k: row[k] for k in ("name", "best_top1", "last_top1", "wall_s", "cpu_s")}), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda spec: trained(*spec), runs))
    if args.seeds is not None:
        rows.append(seed_summary(args.name, rows, [output for _, output, _ in runs]))
        print(json.dumps(rows[-1]))
    write_rows(out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
