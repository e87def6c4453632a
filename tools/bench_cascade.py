"""Accuracy vs mean GMACs per clip of a DVT cascade on the demo dataset, next to static models
and token reducers at the same budgets, with and without each kind of reuse.

From one trained plain demo checkpoint (``--init``; ``ired-video demo`` writes
``runs/demo/plain/best.pth``):

1. thresholds are calibrated on ``--calibration`` (best: clips no model trained on), or
   else the demo training split is divided into a fitting part and a held-out part
   (``--holdout``, by class) and calibrated on the held-out part only;
2. four cascades (configs/cascade/demo_micro.yaml: 4 frames x 4x4 then 8 x 8x8 tokens) are
   fine-tuned from ``--init`` on the fitting part with the demo recipe and the summed exit
   losses: no reuse, feature reuse, relation reuse, both;
3. each is calibrated (DVT's p sweep) and evaluated on ``--test`` (default: the validation
   split) at every budget
   (``--budgets``, fractions of the plain model's GMACs per clip), with the share of clips
   exiting at each stage;
4. baselines at the same budgets, training-free from ``--init``: the plain model (its one
   cost), top-k (tube; the keep whose GMACs come closest to the budget without exceeding
   it, or its cheapest) and ToMe (the r whose analytic GMACs come closest, either side); and
   each cascade's stage 1 alone as a static model (every clip exits there).

Writes table.md, results.json under ``--out``. Without ``--calibration`` the plain model saw
the held-out clips in its own training (they come from the demo training split), so
calibration is slightly optimistic about stage 1; the test split is never used for fitting
or calibration.

    python tools/bench_cascade.py --init runs/demo/plain/best.pth --data runs/demo/data --out runs/bench_cascade
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ired_video.budget import tome_r_for_gmacs
from ired_video.cascade_calibration import calibrate
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.engine.evaluate import evaluate_checkpoint
from ired_video.engine.recipes import demo_config
from ired_video.engine.train import train
from ired_video.models.registry import create_model
from ired_video.models.weights import save_checkpoint
from ired_video.reducers import apply_reducer, reducer_config

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"no reuse": (False, False), "feature reuse": (True, False), "relation reuse": (False, True),
            "feature + relation reuse": (True, True)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--init", required=True, help="plain demo checkpoint every cascade stage starts from")
    parser.add_argument("--data", required=True, help="demo dataset folder (train.csv, val.csv)")
    parser.add_argument("--out", default="runs/bench_cascade", help="output folder (default: %(default)s)")
    parser.add_argument("--cascade", default=str(REPO / "configs/cascade/demo_micro.yaml"),
                        help="cascade YAML (default: configs/cascade/demo_micro.yaml)")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per cascade (default: %(default)s)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.3, 0.45, 0.6, 0.8, 1.0],
                        help="budgets as fractions of the plain model's GMACs per clip (default: %(default)s)")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="share of each class of the training split held out for calibration")
    parser.add_argument("--calibration", default=None,
                        help="annotations to calibrate on instead of a held-out part of the training split "
                             "(then every training clip is used for fitting)")
    parser.add_argument("--test", default=None, help="annotations to report on (default: DATA/val.csv)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    return parser


def split_train(data: Path, out: Path, holdout: float, seed: int) -> tuple[Path, Path]:
    """train.csv -> fit.txt and holdout.txt (absolute paths), ``holdout`` of each class held out."""
    lines = [line for line in (data / "train.csv").read_text().splitlines() if line.strip()]
    by_class: dict[str, list[str]] = {}
    for line in lines:
        path, label = line.rsplit(" ", 1)
        by_class.setdefault(label, []).append(f"{(data / path).resolve()} {label}")
    fit, held = [], []
    rng = random.Random(seed)
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        count = max(1, round(holdout * len(items))) if len(items) > 1 else 0
        held += items[:count]
        fit += items[count:]
    if not held:
        raise SystemExit(f"{data / 'train.csv'}: too few videos to hold any out for calibration "
                         "(need at least 2 per class; make the demo set with --videos-per-class 4 or more)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.txt").write_text("\n".join(fit) + "\n")
    (out / "holdout.txt").write_text("\n".join(held) + "\n")
    return out / "fit.txt", out / "holdout.txt"


def reducer_at_budget(init: Path, name: str, budget: float) -> tuple[dict[str, Any], float]:
    """The keep (top-k) or r (ToMe) whose GMACs per clip come closest to ``budget`` from below."""
    model = create_model(checkpoint=init).eval()
    frames = model.data_config.num_frames
    if name == "tome":
        r, gmacs = tome_r_for_gmacs(model, budget)
        return {"name": "tome", "r": r}, gmacs
    size = model.data_config.crop_size
    video = torch.zeros(1, model.config.in_chans, frames, size, size)
    options = []
    for step in range(1, 21):
        apply_reducer(model, name, keep=step / 20)
        with torch.no_grad():
            options.append((step / 20, float(model(video, return_info=True)[1].gmacs[0])))
    feasible = [option for option in options if option[1] <= budget]
    keep, gmacs = max(feasible, key=lambda o: o[1]) if feasible else min(options, key=lambda o: o[1])
    return {"name": name, "keep": keep}, gmacs


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    began = time.perf_counter()
    data, out, init = Path(args.data), Path(args.out), Path(args.init)
    if args.calibration:
        fit, holdout = (data / "train.csv").resolve(), Path(args.calibration)
    else:
        fit, holdout = split_train(data, out, args.holdout, args.seed)
    fit_clips = len(fit.read_text().splitlines())
    batch = f"train.batch_size={min(16, max(fit_clips // 2, 1))}"  # as the demo: small sets still get steps
    val = str(args.test or data / "val.csv")
    plain = evaluate_checkpoint(init, val, workers=args.workers, output=out / "plain.json")
    full = plain["gmacs_per_view"]
    budgets = [fraction * full for fraction in args.budgets]
    rows: list[dict[str, Any]] = [{"method": "plain (static)", "budget": None, "gmacs": full, "top1": plain["top1"]}]

    for label in args.variants:
        feature, relation = VARIANTS[label]
        run = out / label.replace(" + ", "_").replace(" ", "_")
        train(demo_config(data, run, f"data.train={fit}", f"init.checkpoint={init}", "init.drop_head=false",
                          f"train.epochs={args.epochs}", batch, "optim.lr=0.0003", "schedule.warmup_epochs=0",
                          "eval.every=0", f"train.seed={args.seed}", f"cascade.config={args.cascade}",
                          f"cascade.feature_reuse={str(feature).lower()}",
                          f"cascade.relation_reuse={str(relation).lower()}"), overwrite=True)
        model = create_model(checkpoint=run / "best.pth")
        ann = load_annotations(holdout, class_names=model.data_config.class_names)
        loader = DataLoader(VideoDataset(ann.records, model.data_config, "test"), batch_size=8,
                            num_workers=args.workers)
        calibrate(model, loader, budgets[-1])
        save_checkpoint(run / "calibrated.pth", model)
        model.set_thresholds([0.0] * (len(model.stages) - 1))  # every clip exits at stage 1: a static model
        save_checkpoint(run / "stage1_only.pth", model)
        alone = evaluate_checkpoint(run / "stage1_only.pth", val, workers=args.workers)
        rows.append({"method": f"stage 1 alone (static), {label}", "budget": None, "gmacs": alone["gmacs_per_view"],
                     "top1": alone["top1"]})
        for budget in budgets:
            try:
                report = evaluate_checkpoint(run / "calibrated.pth", val, workers=args.workers, budget=budget,
                                             output=run / f"eval_{budget:.4f}.json")
            except ValueError as err:  # the budget is below the cascade's cheapest setting
                rows.append({"method": f"cascade, {label}", "budget": budget, "error": str(err)})
                continue
            rows.append({"method": f"cascade, {label}", "budget": budget, "gmacs": report["gmacs_per_view"],
                         "top1": report["top1"], "exit_shares": report.get("exit_shares"),
                         "thresholds": report["thresholds"]})

    for name in ("topk", "tome"):
        for budget in budgets:
            reducer, _ = reducer_at_budget(init, name, budget)
            cfg = {k: v for k, v in reducer.items() if k != "name"}
            report = evaluate_checkpoint(init, val, reducer=reducer_config(name, **cfg), workers=args.workers)
            rows.append({"method": f"{name} ({', '.join(f'{k}={v}' for k, v in cfg.items())}), training-free",
                         "budget": budget, "gmacs": report["gmacs_per_view"], "top1": report["top1"]})

    table = markdown(rows, full)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "plain_gmacs": full, "budgets": budgets,
                                                  "minutes": (time.perf_counter() - began) / 60}, indent=1))
    print(table)
    print(f"\n{(time.perf_counter() - began) / 60:.1f} min; wrote {out / 'table.md'} and {out / 'results.json'}")
    return 0


def markdown(rows: list[dict[str, Any]], full: float) -> str:
    lines = ["| method | budget (GMACs/clip) | GMACs/clip | of plain | top-1 (%) | exit shares (stage 1, 2, ...) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        budget = "" if row["budget"] is None else f"{row['budget']:.4f}"
        if "error" in row:
            lines.append(f"| {row['method']} | {budget} | - | - | - | {row['error']} |")
            continue
        shares = row.get("exit_shares") or {}
        lines.append(f"| {row['method']} | {budget} | {row['gmacs']:.4f} | {row['gmacs'] / full:.0%} | "
                     f"{100 * row['top1']:.1f} | {', '.join(f'{v:.2f}' for v in shares.values())} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
