"""Accuracy vs GMACs on the demo dataset: every reducer at matched keep ratios, trained alike,
with several seeds and 95% confidence intervals.

For each seed, a plain model is trained with the demo recipe (or given with ``--plain``, one
checkpoint per seed), and from it each reducer at each keep ratio is evaluated
training-free, then fine-tuned with the same
recipe (the demo's, for ``--epochs`` epochs at ``--lr``, cross-entropy; with ``--distill W``
also distillation from the frozen plain model, logits (KL) and final tokens (MSE), each
weighted W) and evaluated on ``--test`` (default: the validation split). IA-RED²'s
interpreters learn only through their own objective, so its run adds the REINFORCE policy
term and the keep-ratio target (keep per stage, compounded over the stages); the interaction
reducer's predictor is first fitted to the indicator on the plain model (training clips;
``ired-video fit-interaction``), and both its rows start from that checkpoint. ToMe's ``r``
is chosen so its GMACs match top-k's at the same keep. A control row, the plain model trained
the same ``--epochs`` further without a reducer, separates what the reducer costs from what
the extra epochs give: each fine-tuned row is also paired with it. Writes a Markdown table (stdout and
``--out``/table.md), the rows as JSON and an SVG plot (``--replot`` redraws them). Top-1 is
the mean over seeds with a bootstrap interval over seeds and test videos; the difference to
the plain model is paired (same seed, same videos: ``ired_video.stats``).

    python tools/bench_demo.py --data runs/demo/data --test runs/demo_test/val.csv --seeds 0 1 2 --out runs/bench_demo

A larger held-out split resolves smaller differences (96 validation videos: 1 video = 1.04
points); ``ired-video make-demo-data runs/demo_test --seed 1 --videos-per-class 101
--val-fraction 0.99`` writes 600 videos to pass as ``--test runs/demo_test/val.csv``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ired_video.budget import tome_r_for_gmacs
from ired_video.build import create_model
from ired_video.config import ReducerConfig, to_dict
from ired_video.engine.earlier_outputs import current_report
from ired_video.engine.evaluate import evaluate_checkpoint, views_file
from ired_video.engine.interaction_fit import reducer_start
from ired_video.engine.recipes import demo_config, plain_per_seed, reducer_settings, train_or_resume
from ired_video.reducers import default_stages, reducer_config
from ired_video.stats import accuracy_interval, difference_interval, signed_points

REDUCERS = {"random": ("random", {}), "topk": ("topk", {}), "topk+fuse": ("topk", {"fuse": True}),
            "attention_received": ("attention_received", {}), "interaction": ("interaction", {}),
            "bat": ("bat", {}), "iared2": ("iared2", {}), "tome": ("tome", {})}


def tome_r_for(plain: Path, target_gmacs: float) -> int:
    """The constant r whose GMACs per view come closest to ``target_gmacs``."""
    return tome_r_for_gmacs(create_model(checkpoint=plain), target_gmacs)[0]


def objective_settings(cfg: ReducerConfig, depth: int) -> list[str]:
    """Cross-entropy for every reducer; IA-RED² adds its policy and keep-ratio terms."""
    if cfg.name != "iared2":
        return []
    stages = len(cfg.stages or default_stages(depth))
    return ["objective.policy=1.0", "objective.keep_ratio=1.0", f"objective.keep_target={cfg.keep ** stages}"]


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _family(row: dict[str, Any]) -> str:
    """The reducer a row belongs to: its name up to the keep ("topk+fuse 0.5" -> "topk+fuse");
    the control row ("plain, 6 more epochs") is its own family."""
    return "plain, trained as long" if row["name"].startswith("plain,") else row["name"].split(" ")[0]


def svg_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Top-1 against GMACs per view: one colour per reducer, filled when fine-tuned (joined
    across keeps), hollow when training-free; the plain model in black; a legend."""
    width, height, pad, legend_w = 760, 440, 60, 170
    xs = [r["gmacs_per_view"] for r in rows]
    ys = [100 * r["top1"] for r in rows]
    x_lo, x_hi = min(xs) * 0.95, max(xs) * 1.03
    y_lo, y_hi = max(min(ys) - 3, 0), max(ys) + 1
    x_ticks = [i * 0.05 for i in range(math.ceil(x_lo / 0.05), math.floor(x_hi / 0.05) + 1)]
    y_ticks = list(range(5 * math.ceil(y_lo / 5), int(y_hi) + 1, 5))
    plot_w = width - legend_w

    def px(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x_lo) / (x_hi - x_lo) * (plot_w - 2 * pad),
                height - pad - (y - y_lo) / (y_hi - y_lo) * (height - 2 * pad))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for x_val in x_ticks:  # grid and ticks
        x, _ = px(x_val, y_lo)
        parts += [f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" stroke="#eeeeee"/>',
                  f'<text x="{x:.1f}" y="{height - pad + 16}" text-anchor="middle">{x_val:.2f}</text>']
    for y_val in y_ticks:
        _, y = px(x_lo, y_val)
        parts += [f'<line x1="{pad}" y1="{y:.1f}" x2="{plot_w - pad}" y2="{y:.1f}" stroke="#eeeeee"/>',
                  f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{y_val}</text>']
    parts += [f'<line x1="{pad}" y1="{height - pad}" x2="{plot_w - pad}" y2="{height - pad}" stroke="black"/>',
              f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
              f'<text x="{plot_w / 2}" y="{height - 20}" text-anchor="middle">GMACs per view</text>',
              f'<text x="18" y="{height / 2}" transform="rotate(-90 18 {height / 2})" text-anchor="middle">'
              f'top-1 (%)</text>']
    families = list(dict.fromkeys(_family(row) for row in rows if row["name"] != "plain"))
    colour = {family: PALETTE[i % len(PALETTE)] for i, family in enumerate(families)}
    for family in families:
        tuned = sorted((row for row in rows if row["trained"] and _family(row) == family),
                       key=lambda row: row["gmacs_per_view"])
        points = " ".join("{:.1f},{:.1f}".format(*px(r["gmacs_per_view"], 100 * r["top1"])) for r in tuned)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour[family]}" stroke-width="1.5"/>')
    for row in rows:
        x, y = px(row["gmacs_per_view"], 100 * row["top1"])
        if row["name"] == "plain":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="black"/>')
            parts.append(f'<text x="{x - 8:.1f}" y="{y + 16:.1f}" text-anchor="end">plain</text>')
            continue
        fill = colour[_family(row)]
        style = f'fill="{fill}"' if row["trained"] else f'fill="white" stroke="{fill}" stroke-width="1.5"'
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" {style}><title>{row["name"]}: '
                     f'{100 * row["top1"]:.1f}%, {row["gmacs_per_view"]:.4f} GMACs</title></circle>')
    legend_x = plot_w - pad + 20
    for i, family in enumerate(families):
        y = pad + 16 * i
        parts += [f'<circle cx="{legend_x}" cy="{y}" r="4" fill="{colour[family]}"/>',
                  f'<text x="{legend_x + 10}" y="{y + 4}">{family}</text>']
    y = pad + 16 * len(families) + 12
    parts += [f'<circle cx="{legend_x}" cy="{y}" r="4" fill="#555555"/>',
              f'<text x="{legend_x + 10}" y="{y + 4}">fine-tuned</text>',
              f'<circle cx="{legend_x}" cy="{y + 16}" r="4" fill="white" stroke="#555555" stroke-width="1.5"/>',
              f'<text x="{legend_x + 10}" y="{y + 20}">training-free</text>',
              "</svg>"]
    path.write_text("\n".join(parts))


def per_video_correct(views_file: Path) -> np.ndarray:
    """Share of each test video's views predicted right, ordered by video index, from an
    evaluation's ``*_views.jsonl``."""
    right: dict[int, list[float]] = {}
    for line in views_file.read_text().splitlines():
        view = json.loads(line)
        right.setdefault(view["video_index"], []).append(float(view["top_k"][0]["index"] == view["label"]))
    return np.array([np.mean(right[index]) for index in sorted(right)])


def evaluate_scores(checkpoint: Path, test: str, out: Path, reducer: Any = None) -> tuple[dict[str, Any], np.ndarray]:
    """The evaluation report and per-video scores of ``checkpoint`` on ``test`` (files under
    ``out``); a report already there for this checkpoint, test split and reducer, written
    after the checkpoint, is reused (a rerun of a killed benchmark skips what it evaluated)."""
    report = earlier_report(checkpoint, test, out, reducer)
    if report is None:
        report = evaluate_checkpoint(checkpoint, test, reducer=reducer, output=out)
    return report, per_video_correct(views_file(out))


def earlier_report(checkpoint: Path, test: str, out: Path, reducer: Any) -> Optional[dict[str, Any]]:
    """The report in ``out`` if it evaluated this very checkpoint file (not newer than the
    report) on ``test`` with ``reducer``, and its per-view file is there; else None."""
    expected = {"checkpoint": str(checkpoint), "data": str(test), "reducer": None if reducer is None else str(reducer)}
    return current_report(out, views_file(out), checkpoint, expected)


def summarise(name: str, trained: bool, reports: list[dict[str, Any]], scores: np.ndarray,
              plain_scores: np.ndarray, reducer: Optional[dict[str, Any]] = None,
              control_scores: Optional[np.ndarray] = None) -> dict[str, Any]:
    """One table row from per-seed reports and the (seeds, videos) score matrix: mean top-1
    with its interval, and the paired difference to the plain model's matrix (and, when
    given, to the control's: the plain model trained as long as the fine-tuned reducer)."""
    accuracy = accuracy_interval(scores)
    difference = difference_interval(scores, plain_scores)
    row = {"name": name, "trained": trained, "reducer": reducer, "seeds": len(reports), "videos": scores.shape[1],
           **accuracy.fields("top1"), **difference.fields("delta"),
           "top1_per_seed": [float(r["top1"]) for r in reports],
           "gmacs_per_view": float(np.mean([r["gmacs_per_view"] for r in reports])),
           "scores": scores.tolist()}
    if control_scores is not None:
        _pair_with_control(row, control_scores)
    return row


def _pair_with_control(row: dict[str, Any], control_scores: np.ndarray) -> None:
    """Add the paired difference of ``row``'s (seeds, videos) scores to the control's."""
    row.update(difference_interval(np.array(row["scores"]), control_scores).fields("delta_control"))


def write_results(rows: list[dict[str, Any]], out: Path) -> str:
    """table.md, rows.json and accuracy_vs_gmacs.svg under ``out``; returns the table."""
    base = rows[0]
    controlled = any("delta_control" in row for row in rows)
    table = ["| model | top-1 (%) [95% CI] | Δ top-1 vs plain [95% CI] "
             + ("| Δ vs plain trained as long [95% CI] " if controlled else "")
             + "| GMACs/view | GMACs saved | seeds x videos |",
             "|---|---|---|---|---|---|" + ("---|" if controlled else "")]
    for row in rows:
        saved = 1 - row["gmacs_per_view"] / base["gmacs_per_view"]
        delta = "" if row is base else signed_points(row, "delta")
        control = f" {signed_points(row, 'delta_control')} |" if controlled else ""
        table.append(f"| {row['name']} | {100 * row['top1']:.1f} [{100 * row['top1_low']:.1f}, "
                     f"{100 * row['top1_high']:.1f}] | {delta} |{control} {row['gmacs_per_view']:.4f} | "
                     f"{100 * saved:.0f}% | {row['seeds']} x {row['videos']} |")
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    svg_plot(rows, out / "accuracy_vs_gmacs.svg")
    return "\n".join(table)


def merge_rows(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row list from runs split over processes (same plain checkpoints, seeds and test
    split): the first run's plain row, then every other row once, in order; fine-tuned rows
    are paired with the control row if any part has one."""
    plain, rows = parts[0][0], []
    for part in parts:
        if part[0]["scores"] != plain["scores"]:
            raise SystemExit(f"--merge: the parts have different plain models or test videos ({part[0]['name']})")
        rows += [row for row in part[1:] if row["name"] not in {r["name"] for r in rows}]
    controls = [row for row in rows if row["reducer"] is None]
    if controls:
        control_scores = np.array(controls[0]["scores"])  # (seeds, videos)
        for row in rows:
            if row["trained"] and row["reducer"] is not None:
                _pair_with_control(row, control_scores)
    return [plain, *controls, *[row for row in rows if row["reducer"] is not None]]


def plain_checkpoints(args: argparse.Namespace) -> list[Path]:
    """One plain checkpoint per seed: the given ones, or trained now with the demo recipe."""
    if args.plain:
        if len(args.plain) != len(args.seeds):
            raise SystemExit(f"--plain: give one checkpoint per seed ({len(args.seeds)}), got {len(args.plain)}")
        return list(args.plain)
    return plain_per_seed(args.data, args.out, args.seeds, args.plain_epochs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="demo dataset folder (train.csv, val.csv)")
    parser.add_argument("--out", required=True, type=Path, help="folder for runs, table, JSON and plot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds: one plain model and one fine-tune per reducer each (default: 0 1 2)")
    parser.add_argument("--plain", type=Path, nargs="+", default=None,
                        help="trained plain checkpoints, one per seed (default: train them with the demo recipe)")
    parser.add_argument("--plain-epochs", type=int, default=24, help="epochs of each plain model (default: 24)")
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--test", type=Path, default=None,
                        help="annotations to report on (default: DATA/val.csv; see above for a larger split)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="fine-tuning epochs per reducer; 0: training-free rows only (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--distill", type=float, default=0.0,
                        help="weight of logit and token distillation from the plain model (default: off)")
    parser.add_argument("--reducers", nargs="*", choices=list(REDUCERS), default=list(REDUCERS),
                        help="which reducers to run (default: all; tome needs topk, whose GMACs it matches; "
                             "none: the plain and control rows only)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="PART",
                        help="only combine the rows.json of runs split over processes (e.g. --reducers halves and "
                             "a control-only run) into OUT")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite table.md and the plot from OUT/rows.json of an earlier run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        if not (args.out / "rows.json").is_file():
            parser.error(f"--replot: {args.out / 'rows.json'} does not exist (run the benchmark into --out first)")
        print(write_results(json.loads((args.out / "rows.json").read_text()), args.out))
        return 0
    if args.merge:
        missing = [str(part / "rows.json") for part in args.merge if not (part / "rows.json").is_file()]
        if missing:
            parser.error(f"--merge: no rows.json in {', '.join(missing)}")
        print(write_results(merge_rows([json.loads((part / "rows.json").read_text()) for part in args.merge]),
                            args.out))
        return 0
    if args.data is None:
        parser.error("--data is required (unless --replot or --merge)")
    if "tome" in args.reducers and "topk" not in args.reducers:
        parser.error("--reducers tome needs topk too: ToMe's r is chosen to match top-k's GMACs")
    plains = plain_checkpoints(args)
    test = str(args.test or args.data / "val.csv")
    evaluations = [evaluate_scores(path, test, args.out / f"plain_seed{seed}_test.json")
                   for seed, path in zip(args.seeds, plains)]
    plain_scores = np.stack([scores for _, scores in evaluations])  # (seeds, videos)
    rows = [summarise("plain", True, [report for report, _ in evaluations], plain_scores, plain_scores)]
    control_scores = None
    if args.epochs > 0:
        rows.append(control_row(args, plains, test, plain_scores))
        control_scores = np.array(rows[-1]["scores"])  # (seeds, videos)
    depth = create_model(checkpoint=plains[0]).config.depth
    for keep in args.keeps:
        topk_gmacs: Optional[float] = None
        for key in [key for key in REDUCERS if key in args.reducers]:  # REDUCERS' order: tome after topk
            rows += reducer_rows(args, key, keep, plains, depth, test, plain_scores, topk_gmacs, control_scores)
            if key == "topk":
                topk_gmacs = rows[-1]["gmacs_per_view"]
            print(f"{rows[-1]['name']}: top-1 {rows[-1]['top1']:.3f} [{rows[-1]['top1_low']:.3f}, "
                  f"{rows[-1]['top1_high']:.3f}], {rows[-1]['gmacs_per_view']:.4f} GMACs/view", flush=True)
    print(write_results(rows, args.out))
    return 0


def finetune_recipe(args: argparse.Namespace) -> list[str]:
    """The settings every fine-tuning run shares, reducer or control."""
    recipe = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"optim.lr={args.lr}",
              "schedule.warmup_epochs=0", "eval.every=0"]
    if args.distill:
        recipe += [f"objective.distill={args.distill}", f"objective.distill_tokens={args.distill}"]
    return recipe


def control_row(args: argparse.Namespace, plains: list[Path], test: str, plain_scores: np.ndarray) -> dict[str, Any]:
    """Each seed's plain model trained ``--epochs`` further with the fine-tuning recipe and no
    reducer: the baseline for what fine-tuning alone gives."""
    runs = []
    for seed, plain in zip(args.seeds, plains):
        run = args.out / f"plain_continued_seed{seed}"
        train_or_resume(demo_config(args.data, run, *finetune_recipe(args), f"init.checkpoint={plain}",
                                    f"train.seed={seed}"))
        runs.append(evaluate_scores(run / "last.pth", test, run / "test.json"))
    return summarise(f"plain, {args.epochs} more epochs", True, [r for r, _ in runs],
                     np.stack([s for _, s in runs]), plain_scores)


def reducer_rows(args: argparse.Namespace, key: str, keep: float, plains: list[Path], depth: int, test: str,
                 plain_scores: np.ndarray, topk_gmacs: Optional[float],
                 control_scores: Optional[np.ndarray] = None) -> list[dict[str, Any]]:
    """The training-free and the fine-tuned row of one reducer at one keep, over the seeds
    (``depth``: the plain models' blocks; ``control_scores``: the control row's, paired with
    the fine-tuned row)."""
    name, extra = REDUCERS[key]
    recipe = finetune_recipe(args)
    label = f"{key} {keep}"
    free_runs, tuned_runs = [], []
    for seed, plain in zip(args.seeds, plains):
        knobs = {"r": tome_r_for(plain, topk_gmacs)} if name == "tome" else {"keep": keep}
        cfg = reducer_config(name, **extra, **knobs)
        run = args.out / f"{label.replace(' ', '_')}_seed{seed}"
        start, free_reducer, _ = reducer_start(plain, cfg, args.data, run / "fit")
        free_runs.append(evaluate_scores(start, test, run / "training_free.json", free_reducer))
        if args.epochs == 0:
            continue
        train_or_resume(demo_config(args.data, run, *reducer_settings(cfg), *objective_settings(cfg, depth),
                                    *recipe, f"init.checkpoint={start}", f"train.seed={seed}"))
        tuned_runs.append(evaluate_scores(run / "last.pth", test, run / "test.json"))
    settings = to_dict(cfg)
    rows = [summarise(f"{label} (no training)", False, [r for r, _ in free_runs],
                      np.stack([s for _, s in free_runs]), plain_scores, settings)]
    if tuned_runs:
        rows.append(summarise(label, True, [r for r, _ in tuned_runs], np.stack([s for _, s in tuned_runs]),
                              plain_scores, settings, control_scores))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
