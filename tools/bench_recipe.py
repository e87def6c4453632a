"""One training run of a recipe, timed in CPU seconds: for docs/recipes.md's table.

Runs ``ired-video train --config CONFIG`` in a child process on the train/val lists of
``--data`` (a generated demo dataset folder, or ``--train``/``--val``), with ``KEY=VALUE``
overrides, and appends one row to ``--out`` (JSON list): the settings, validation top-1 at
every evaluated epoch (with the wall seconds since the start), the best and last top-1, wall
seconds and the CPU seconds (user + sys) of the training process and its data-loader
workers (``getrusage(RUSAGE_CHILDREN)``); when the val list's folder has a ``classes.txt`` of
generated ``"<shape> moving <direction>"`` names, also ``val_shape`` / ``val_direction``: the
share of the last evaluation's views whose top class has the right shape / direction. On a
shared machine the wall time is inflated; the CPU seconds are the budget (20 core-minutes =
1200 s = 10 minutes on 2 idle cores).

    nice -n 5 python tools/bench_recipe.py --name baseline --data runs/data/hard200 \\
        --config ired_video/recipes/demo_micro.yaml --out docs/bench/recipe_hard.json train.epochs=24
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ired_video.data.demo import label_factor_shares

EPOCH_LINE = re.compile(r"^epoch (\d+): top-1 ([0-9.]+), top-5 ([0-9.]+), ([0-9.]+) GMACs/view over (\d+) videos")


def run(name: str, config: str, train: str, val: str, output: str, overrides: list[str]) -> dict[str, Any]:
    """Train once in a child process; the row described in the module doc."""
    command = [sys.executable, "-m", "ired_video.cli", "train", "--config", config, "--overwrite",
               f"data.train={train}", f"data.val={val}", f"output={output}", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode:
        raise SystemExit(f"{name}: training failed (exit {child.returncode}); command: {' '.join(command)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    gmacs = json.loads((Path(output) / "eval_report.json").read_text()).get("gmacs_per_view")
    return {"name": name, "config": config, "train": train, "val": val, "overrides": overrides,
            "epochs": epochs, "best_top1": max((e["top1"] for e in epochs), default=None),
            "last_top1": epochs[-1]["top1"] if epochs else None, "val_videos": None,
            "gmacs_per_view": gmacs, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_min": round(cpu / 60, 2)}


def factor_shares(views: Path, classes: Path) -> dict[str, float]:
    """``val_shape`` / ``val_direction`` of the views in ``views`` (eval_views.jsonl), when
    ``classes`` holds demo-style class names; empty otherwise."""
    if not classes.is_file() or not views.is_file():
        return {}
    rows = [json.loads(line) for line in views.read_text(encoding="utf-8").splitlines() if line.strip()]
    scored = [row for row in rows if row.get("top_k")]
    shares = label_factor_shares([row["top_k"][0]["index"] for row in scored], [row["label"] for row in scored],
                                 classes.read_text(encoding="utf-8").splitlines())
    return {f"val_{factor}": round(share, 3) for factor, share in (shares or {}).items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="row name")
    parser.add_argument("--config", default="ired_video/recipes/demo_micro.yaml")
    parser.add_argument("--data", help="dataset folder with train.csv and val.csv")
    parser.add_argument("--train", help="train list (default: DATA/train.csv)")
    parser.add_argument("--val", help="val list (default: DATA/val.csv)")
    parser.add_argument("--output", help="run folder (default: runs/recipe/NAME)")
    parser.add_argument("--out", required=True, help="JSON file the row is appended to")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    train = args.train or (args.data and f"{args.data}/train.csv")
    val = args.val or (args.data and f"{args.data}/val.csv")
    if not train or not val:
        parser.error("give --data, or --train and --val")
    output = args.output or f"runs/recipe/{args.name}"
    row = run(args.name, args.config, train, val, output, args.overrides)
    row["val_videos"] = len(Path(val).read_text().splitlines())
    row.update(factor_shares(Path(output) / "eval_views.jsonl", Path(val).parent / "classes.txt"))
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    rows = [r for r in rows if r["name"] != args.name] + [row]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(json.dumps({k: row[k] for k in ("name", "best_top1", "last_top1", "wall_s", "cpu_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
