"""Accuracy vs mean GMACs per clip of a DVT cascade on the demo dataset, next to static models
and token reducers at the same budgets, with and without each kind of reuse, and with the
official reuse structure against this package's first version.

For each seed (``--seeds``, default 0 1 2) from that seed's plain demo checkpoint
(``--init``, one per seed, or trained here with the demo recipe for ``--plain-epochs``):

1. thresholds are calibrated on ``--calibration`` (best: clips no model trained on), or
   else the demo training split is divided into a fitting part and a held-out part
   (``--holdout``, by class) and calibrated on the held-out part only;
2. one cascade per ``--variants`` entry (configs/cascade/demo_micro.yaml: 4 frames x 4x4
   then 8 x 8x8 tokens) is fine-tuned from ``--init`` on the fitting part with the demo
   recipe and the summed exit losses: "official" (DVT's reuse structure, both reuses),
   "ours-shared" (the first version: shared feature MLP, all-upstream relation MLP),
   "no feature reuse" and "no relation reuse" (official, one reuse off), "no reuse";
3. each is calibrated (DVT's p sweep) on the held-out clips; every stage is run once on
   every ``--test`` clip (default: the validation split) and the clips are routed with the
   thresholds chosen for each budget (``--budgets``, fractions of the plain model's GMACs
   per clip), as ``eval --budget`` routes them: accuracy, mean GMACs (reuse included) and
   the share of clips exiting at each stage; the reuse modules' GMACs are listed apart;
4. baselines at the same budgets, training-free from ``--init`` (``--baselines``): the
   plain model (its one cost), top-k (tube; the keep whose GMACs come closest to the budget
   without exceeding it, or its cheapest) and ToMe (the r whose analytic GMACs come
   closest, either side); and each cascade's stage 1 alone (every clip exits there);
5. the control (``--control``, default on): the plain model fine-tuned exactly as the
   cascades are (same clips, epochs, rate and seed) without a cascade, since extra epochs
   alone can raise accuracy.

Every row reports mean top-1 over the seeds with a 95% bootstrap interval over seeds and
test clips, and its paired difference to the plain model (``ired_video.stats``); the
fine-tuned rows (cascades, stage 1 alone) also to the control.
Writes table.md, results.json (with every row's per-clip right answers) under ``--out``.
Without ``--calibration`` the plain model saw the held-out clips in its own training (they
come from the demo training split), so calibration is slightly optimistic about stage 1;
the test split is never used for fitting or calibration.

    python tools/bench_cascade.py --data runs/demo/data --out runs/bench_cascade --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ired_video.budget import tome_r_for_gmacs
from ired_video.build import apply_reducer, create_model
from ired_video.cascade.calibration import calibrate, choose, collect_exits, routed_answers, score
from ired_video.cascade.model import Cascade
from ired_video.config import ConfigError
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.engine.recipes import demo_config, plain_per_seed, train_or_resume
from ired_video.models.weights import save_checkpoint
from ired_video.stats import accuracy_interval, difference_interval, signed_points

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = {"feature_variant": "official", "relation_variant": "official"}
VARIANTS: dict[str, dict[str, Any]] = {
    "official": {"feature_reuse": True, "relation_reuse": True, **OFFICIAL},
    "ours-shared": {"feature_reuse": True, "relation_reuse": True, "feature_variant": "shared",
                    "relation_variant": "all_upstream"},
    "no feature reuse": {"feature_reuse": False, "relation_reuse": True, **OFFICIAL},
    "no relation reuse": {"feature_reuse": True, "relation_reuse": False, **OFFICIAL},
    "no reuse": {"feature_reuse": False, "relation_reuse": False, **OFFICIAL},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--init", nargs="+", type=Path, default=None,
                        help="plain demo checkpoints the cascade stages start from, one per seed "
                             "(default: train one per seed with the demo recipe)")
    parser.add_argument("--plain-epochs", type=int, default=24, help="epochs of each plain model trained here")
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
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="also evaluate training-free top-k and ToMe at every budget (default: on)")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="also fine-tune each plain model as the cascades are, without a cascade, and pair "
                             "the fine-tuned rows with it (default: on)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one plain model, hold-out split and cascade fine-tuning per seed")
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


def decoded(annotations: Path, model: torch.nn.Module, workers: int) -> list[dict[str, Any]]:
    """Every clip of an annotation file, decoded once, as batches of 16 (kept in memory:
    every variant sees the same tensors)."""
    ann = load_annotations(annotations, class_names=model.data_config.class_names or None)
    loader = DataLoader(VideoDataset(ann.records, model.data_config, "test"), batch_size=16, num_workers=workers)
    return list(loader)


def cpu_minutes() -> float:
    """CPU time of this process and its finished children (data-loading workers), minutes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) / 60


def finetune_overrides(fit: Path, init: Path, epochs: int, seed: int) -> list[str]:
    """The fine-tuning recipe the cascades and the control share (demo recipe, lr 3e-4, no warm-up)."""
    fit_clips = len(fit.read_text().splitlines())
    batch = min(16, max(fit_clips // 2, 1))  # as the demo: small sets still get steps
    return [f"data.train={fit}", f"init.checkpoint={init}", "init.drop_head=false", f"train.epochs={epochs}",
            f"train.batch_size={batch}", "optim.lr=0.0003", "schedule.warmup_epochs=0", "eval.every=0",
            f"train.seed={seed}"]


def right_answers(model: torch.nn.Module, batches: list[dict[str, Any]]) -> tuple[np.ndarray, float]:
    """(n,) 1.0 where ``model`` is right on each clip of ``batches``, and its mean GMACs per clip."""
    correct, gmacs = [], []
    with torch.no_grad():
        for item in batches:
            logits, info = model(item["video"], return_info=True)
            correct.append((logits.argmax(-1) == item["label"]).double())
            gmacs.append(info.gmacs.double())
    return torch.cat(correct).numpy(), float(torch.cat(gmacs).mean())


def run_seed(args: argparse.Namespace, seed: int, init: Path, test_batches: list[dict[str, Any]]
             ) -> tuple[dict[tuple[str, Optional[float]], dict[str, Any]], dict[str, dict[str, float]]]:
    """Every row of one seed, keyed by (method, budget fraction): per-clip right answers,
    GMACs per clip and routing; and the reuse modules' cost per variant."""
    data, out = Path(args.data), Path(args.out) / f"seed{seed}"
    if args.calibration:
        fit, holdout = (data / "train.csv").resolve(), Path(args.calibration)
    else:
        fit, holdout = split_train(data, out, args.holdout, seed)
    recipe = finetune_overrides(fit, init, args.epochs, seed)
    plain_model = create_model(checkpoint=init).eval()
    held_batches = decoded(holdout, plain_model, args.workers)
    plain_correct, full = right_answers(plain_model, test_batches)
    rows: dict[tuple[str, Optional[float]], dict[str, Any]] = {
        ("plain (static)", None): {"correct": plain_correct, "gmacs": full}}
    if args.control:
        run = out / "plain_continued"
        train_or_resume(demo_config(data, run, *recipe))
        correct, gmacs = right_answers(create_model(checkpoint=run / "best.pth").eval(), test_batches)
        rows[(f"plain, {args.epochs} more epochs (control)", None)] = {"correct": correct, "gmacs": gmacs,
                                                                      "control": True}
    reuse: dict[str, dict[str, float]] = {}
    for label in args.variants:
        started = time.perf_counter()
        run = out / label.replace(" ", "_")
        switches = [f"cascade.{key}={str(value).lower()}" for key, value in VARIANTS[label].items()]
        train_or_resume(demo_config(data, run, *recipe, f"cascade.config={args.cascade}", *switches))
        model = create_model(checkpoint=run / "best.pth")
        assert isinstance(model, Cascade)
        calibration = calibrate(model, held_batches, args.budgets[-1] * full)
        save_checkpoint(run / "calibrated.pth", model)
        probs, labels, cumulative = collect_exits(model, test_batches)
        stages, all_stages = len(model.stages), model.static_gmacs()
        reuse[label] = {"reuse_gmacs": all_stages - sum(stage.static_gmacs() for stage in model.stages),
                        "all_stages_gmacs": all_stages, "minutes": (time.perf_counter() - started) / 60}
        for fraction in (None, *args.budgets):
            method = f"stage 1 alone (static), {label}" if fraction is None else f"cascade, {label}"
            try:
                thresholds = [0.0] * (stages - 1) if fraction is None else \
                    choose(calibration["table"], fraction * full)["thresholds"]
            except ConfigError as err:  # the budget is below the cascade's cheapest setting
                rows[(method, fraction)] = {"error": str(err)}
                continue
            routed = score(probs, labels, cumulative, thresholds)
            _, correct = routed_answers(probs, labels, thresholds)
            rows[(method, fraction)] = {"correct": correct.double().numpy(), "gmacs": routed["gmacs"],
                                        "exit_shares": routed["exit_shares"], "fine_tuned": True}
    for name in ("topk", "tome") if args.baselines else ():
        for fraction in args.budgets:
            reducer, _ = reducer_at_budget(init, name, fraction * full)
            settings = {k: v for k, v in reducer.items() if k != "name"}
            model = create_model(checkpoint=init).eval()
            apply_reducer(model, name, **settings)
            correct, gmacs = right_answers(model, test_batches)
            method = f"{name}, training-free (closest setting)"
            rows[(method, fraction)] = {"correct": correct, "gmacs": gmacs, "setting": settings}
    return rows, reuse


def aggregate(per_seed: list[dict[tuple[str, Optional[float]], dict[str, Any]]], full: float) -> list[dict[str, Any]]:
    """Rows over seeds: mean top-1 with its interval, paired difference to the plain model
    (and, for fine-tuned rows, to the control when there is one), mean GMACs and exit shares,
    per-seed settings and per-clip right answers; a row failing in any seed reports why."""
    plain = np.stack([seed[("plain (static)", None)]["correct"] for seed in per_seed])  # (seeds, clips)
    control_keys = [key for key, entry in per_seed[0].items() if entry.get("control")]
    control = np.stack([seed[control_keys[0]]["correct"] for seed in per_seed]) if control_keys else None
    rows = []
    for key in per_seed[0]:
        method, fraction = key
        entries = [seed[key] for seed in per_seed]
        row: dict[str, Any] = {"method": method, "budget": None if fraction is None else fraction * full,
                               "budget_fraction": fraction}
        errors = [entry["error"] for entry in entries if "error" in entry]
        if errors:
            rows.append({**row, "error": errors[0]})
            continue
        scores = np.stack([entry["correct"] for entry in entries])  # (seeds, clips)
        accuracy, difference = accuracy_interval(scores), difference_interval(scores, plain)
        row.update(gmacs=float(np.mean([entry["gmacs"] for entry in entries])), **accuracy.fields("top1"),
                   **difference.fields("delta"), top1_per_seed=[float(s.mean()) for s in scores],
                   correct=scores.astype(int).tolist())
        if control is not None and entries[0].get("fine_tuned"):
            row.update(difference_interval(scores, control).fields("delta_control"))
        if "exit_shares" in entries[0]:
            row["exit_shares"] = np.mean([entry["exit_shares"] for entry in entries], axis=0).tolist()
        if "setting" in entries[0]:
            row["settings"] = [entry["setting"] for entry in entries]
        rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    began = time.perf_counter()
    data, out = Path(args.data), Path(args.out)
    if args.init is not None and len(args.init) != len(args.seeds):
        raise SystemExit(f"--init: give one checkpoint per seed ({len(args.seeds)}), got {len(args.init)}")
    inits = args.init or plain_per_seed(data, out, args.seeds, args.plain_epochs)
    val = Path(args.test or data / "val.csv")
    test_batches = decoded(val, create_model(checkpoint=inits[0]), args.workers)
    per_seed, reuse = [], {}
    for seed, init in zip(args.seeds, inits):
        rows, reuse = run_seed(args, seed, Path(init), test_batches)
        per_seed.append(rows)
    full = per_seed[0][("plain (static)", None)]["gmacs"]
    rows = aggregate(per_seed, full)
    table = markdown(rows, full)
    (out / "table.md").write_text(table + "\n")
    minutes = (time.perf_counter() - began) / 60
    (out / "results.json").write_text(json.dumps({
        "command": shlex.join(["python", "tools/bench_cascade.py", *(argv if argv is not None else sys.argv[1:])]),
        "rows": rows, "plain_gmacs": full, "budget_fractions": args.budgets, "epochs": args.epochs,
        "seeds": args.seeds, "reuse": reuse, "test_clips": int(sum(len(b["label"]) for b in test_batches)),
        "minutes": minutes, "cpu_minutes": cpu_minutes()}, indent=1))
    print(table)
    print(f"\n{minutes:.1f} min ({cpu_minutes():.1f} CPU min); wrote {out / 'table.md'} and {out / 'results.json'}")
    return 0


def markdown(rows: list[dict[str, Any]], full: float) -> str:
    """The table; a column of differences to the control when a row has one."""
    controlled = any("delta_control" in row for row in rows)
    header = ("| method | budget (GMACs/clip) | GMACs/clip | of plain | top-1 (%) [95% CI] | Δ vs plain [95% CI] "
              + ("| Δ vs plain trained as long [95% CI] " if controlled else "") + "| exit shares (stage 1, 2, ...) |")
    lines = [header, "|---|---|---|---|---|---|---|" + ("---|" if controlled else "")]
    for row in rows:
        budget = "" if row["budget"] is None else f"{row['budget']:.4f}"
        if "error" in row:
            lines.append(f"| {row['method']} | {budget} | - | - | - | - |{' - |' if controlled else ''} "
                         f"{row['error']} |")
            continue
        shares = ", ".join(f"{v:.2f}" for v in row.get("exit_shares", []))
        delta = "" if row["method"] == "plain (static)" else signed_points(row, "delta")
        control = f" {signed_points(row, 'delta_control')} |" if controlled else ""
        lines.append(f"| {row['method']} | {budget} | {row['gmacs']:.4f} | {row['gmacs'] / full:.0%} | "
                     f"{100 * row['top1']:.1f} [{100 * row['top1_low']:.1f}, {100 * row['top1_high']:.1f}] | "
                     f"{delta} |{control} {shares} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
