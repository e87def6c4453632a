"""Accuracy vs GMACs on the demo dataset: every reducer at matched keep ratios, trained alike.

From one trained plain checkpoint (``ired-video demo`` writes ``runs/demo/plain/best.pth``),
each reducer at each keep ratio is evaluated training-free, then fine-tuned with the same
recipe (the demo's, for ``--epochs`` epochs at ``--lr``, cross-entropy; with ``--distill W``
also distillation from the frozen plain model, logits (KL) and final tokens (MSE), each
weighted W) and evaluated on ``--test`` (default: the validation split). IA-RED²'s
interpreters learn only through their own objective, so its run adds the REINFORCE policy
term and the keep-ratio target (keep per stage, compounded over the stages); the interaction
reducer's predictor is first fitted to the indicator on the plain model (training clips;
``ired-video fit-interaction``), and both its rows start from that checkpoint. ToMe's ``r``
is chosen so its GMACs match top-k's at the same keep. Writes a Markdown table (stdout and
``--out``/table.md), the rows as JSON and an SVG plot (``--replot`` redraws them).

    python tools/bench_demo.py --plain runs/demo/plain/best.pth --data runs/demo/data --out runs/bench_demo

A larger held-out split resolves smaller differences (96 validation videos: 1 video = 1.04
points); ``ired-video make-demo-data runs/demo_test --seed 1 --videos-per-class 101
--val-fraction 0.99`` writes 600 videos to pass as ``--test runs/demo_test/val.csv``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ired_video.budget import tome_r_for_gmacs
from ired_video.config import ReducerConfig, to_dict
from ired_video.engine.evaluate import evaluate_checkpoint
from ired_video.engine.interaction_fit import reducer_start
from ired_video.engine.recipes import demo_config, reducer_settings
from ired_video.engine.train import train
from ired_video.models.registry import create_model
from ired_video.reducers import default_stages, reducer_config

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
    """The reducer a row belongs to: its name up to the keep ("topk+fuse 0.5" -> "topk+fuse")."""
    return row["name"].split(" ")[0]


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


def write_results(rows: list[dict[str, Any]], out: Path) -> str:
    """table.md, rows.json and accuracy_vs_gmacs.svg under ``out``; returns the table."""
    base = rows[0]
    table = ["| model | top-1 (%) | Δ top-1 vs plain | GMACs/view | GMACs saved |", "|---|---|---|---|---|"]
    for row in rows:
        saved = 1 - row["gmacs_per_view"] / base["gmacs_per_view"]
        table.append(f"| {row['name']} | {100 * row['top1']:.1f} | {100 * (row['top1'] - base['top1']):+.1f} "
                     f"| {row['gmacs_per_view']:.4f} | {100 * saved:.0f}% |")
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    svg_plot(rows, out / "accuracy_vs_gmacs.svg")
    return "\n".join(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", type=Path, help="trained plain checkpoint (our format)")
    parser.add_argument("--data", type=Path, help="demo dataset folder (train.csv, val.csv)")
    parser.add_argument("--out", required=True, type=Path, help="folder for runs, table, JSON and plot")
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--test", type=Path, default=None,
                        help="annotations to report on (default: DATA/val.csv; see above for a larger split)")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs per reducer (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--distill", type=float, default=0.0,
                        help="weight of logit and token distillation from the plain model (default: off)")
    parser.add_argument("--reducers", nargs="+", choices=list(REDUCERS), default=list(REDUCERS),
                        help="which reducers to run (default: all; tome needs topk, whose GMACs it matches)")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite table.md and the plot from OUT/rows.json of an earlier run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        print(write_results(json.loads((args.out / "rows.json").read_text()), args.out))
        return 0
    if args.plain is None or args.data is None:
        parser.error("--plain and --data are required (unless --replot)")
    if "tome" in args.reducers and "topk" not in args.reducers:
        parser.error("--reducers tome needs topk too: ToMe's r is chosen to match top-k's GMACs")

    test = str(args.test or args.data / "val.csv")
    depth = create_model(checkpoint=args.plain).config.depth
    recipe = [f"init.checkpoint={args.plain}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
              f"optim.lr={args.lr}", "schedule.warmup_epochs=0", "eval.every=0"]
    if args.distill:
        recipe += [f"objective.distill={args.distill}", f"objective.distill_tokens={args.distill}"]
    rows = [{"name": "plain", "trained": True, **evaluate_checkpoint(args.plain, test)}]
    for keep in args.keeps:
        topk_gmacs = None
        for key in [key for key in REDUCERS if key in args.reducers]:  # REDUCERS' order: tome after topk
            name, extra = REDUCERS[key]
            knobs = {"r": tome_r_for(args.plain, topk_gmacs)} if name == "tome" else {"keep": keep}
            cfg = reducer_config(name, **extra, **knobs)
            label = f"{key} {keep}"
            run = args.out / label.replace(" ", "_")
            start, free_reducer, fit = reducer_start(args.plain, cfg, args.data, run / "fit")
            if fit is not None:
                print(f"{label}: predictor fitted, Spearman per frame on val "
                      f"{ {b: round(a['spearman_frame'], 3) for b, a in fit['agreement_after'].items()} }", flush=True)
            free = evaluate_checkpoint(start, test, reducer=free_reducer)
            rows.append({"name": f"{label} (no training)", "trained": False, "reducer": to_dict(cfg), **free})
            train(demo_config(args.data, run, *reducer_settings(cfg), *objective_settings(cfg, depth), *recipe,
                              f"init.checkpoint={start}"), overwrite=True)
            tuned = evaluate_checkpoint(run / "last.pth", test)
            rows.append({"name": label, "trained": True, "reducer": to_dict(cfg), **tuned})
            if key == "topk":
                topk_gmacs = tuned["gmacs_per_view"]
            print(f"{label}: top-1 {tuned['top1']:.3f} ({free['top1']:.3f} without training), "
                  f"{tuned['gmacs_per_view']:.4f} GMACs/view", flush=True)
    print(write_results(rows, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
