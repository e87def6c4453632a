"""``ired-video demo``: the whole product on a CPU in minutes (data, training, a reducer, overlay).

Generates the demo dataset, trains the micro TimeSformer on it, then puts a token reducer
in: evaluated as is (training-free) and after a short fine-tune, next to the unreduced
model, with accuracy and GMACs per clip. Everything goes under one folder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from ired_video.commands.common import add_reducer_argument, reducer_from_args
from ired_video.commands.overlay import main as overlay_main
from ired_video.config import ReducerConfig, to_dict
from ired_video.data.demo import TASKS, make_demo_dataset
from ired_video.engine.evaluate import evaluate_checkpoint
from ired_video.engine.interaction_fit import reducer_start
from ired_video.engine.recipes import demo_config, reducer_settings
from ired_video.engine.train import train

EPILOG = """examples:
  ired-video demo                                  # everything under runs/demo
  ired-video demo --out /tmp/demo --epochs 8       # quicker, less accurate
  ired-video demo --reducer tome r=6               # another reducer
  ired-video demo --reducer iared2 keep=0.5 mode=frame
  ired-video demo --task moderate --out runs/demo_moderate   # 12 classes: reducers differ more
  ired-video demo --task medium --out runs/demo_medium       # 12 classes: the recipe stays near chance

Outputs: data/ (the generated videos and annotations), plain/ and <reducer>/ (training
runs: logs, checkpoints, eval reports, per-view JSONL), overlay.mp4/.png (what the
reducer kept, stage by stage, on a validation clip), summary.json.
"""

DEFAULT_REDUCER = ["topk", "keep=0.5", "mode=tube"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video demo", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate the demo dataset, train a tiny TimeSformer on the CPU, and compare it with "
                    "a token reducer (training-free and fine-tuned): accuracy and GMACs per clip.")
    parser.add_argument("--out", default="runs/demo", help="folder for everything (default: %(default)s)")
    parser.add_argument("--task", choices=sorted(TASKS), default="easy",
                        help="demo task (see make-demo-data): easy (default, 6 classes), moderate (12 classes, "
                             "not saturated by the plain model), medium or hard (12 classes; the demo recipe does "
                             "not learn them, docs/recipes.md)")
    parser.add_argument("--epochs", type=int, default=24, help="epochs for the plain model (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=4,
                        help="epochs of fine-tuning with the reducer (default: %(default)s)")
    parser.add_argument("--videos-per-class", type=int, default=64, help="demo dataset size (default: %(default)s)")
    add_reducer_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _row(name: str, report: dict[str, Any], base_gmacs: float) -> str:
    saved = 1 - report["gmacs_per_view"] / base_gmacs
    return (f"| {name} | {100 * report['top1']:.1f} | {report['gmacs_per_view']:.4f} | {100 * saved:.0f}% |")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    reducer: ReducerConfig = reducer_from_args(args.reducer or DEFAULT_REDUCER)
    started = time.perf_counter()
    data_dir = out / "data"
    print(f"[1/5] demo dataset -> {data_dir}")
    if not (data_dir / "train.csv").is_file():
        make_demo_dataset(data_dir, videos_per_class=args.videos_per_class, seed=args.seed, jobs=2, task=args.task)
    train_clips = len((data_dir / "train.csv").read_text().splitlines())
    batch = f"train.batch_size={min(16, max(train_clips // 2, 1))}"  # small datasets still get steps
    seed = f"train.seed={args.seed}"

    print(f"[2/5] training the plain micro TimeSformer for {args.epochs} epochs -> {out / 'plain'}")
    plain = train(demo_config(data_dir, out / "plain", f"train.epochs={args.epochs}", seed, batch), overwrite=True)

    settings = reducer_settings(reducer)
    plain_best = out / "plain" / "best.pth"
    tag = reducer.name
    print(f"[3/5] {tag}: evaluating training-free, then fine-tuning {args.finetune_epochs} epochs -> {out / tag}")
    start, free_reducer, _ = reducer_start(plain_best, reducer, data_dir, out / f"{tag}_fit")  # fits interaction's
    as_is = evaluate_checkpoint(start, str(data_dir / "val.csv"), reducer=free_reducer,
                                output=out / f"{tag}_training_free.json")
    tuned = train(demo_config(data_dir, out / tag, *settings, seed, batch,
                              f"init.checkpoint={start}", f"train.epochs={args.finetune_epochs}",
                              "optim.lr=0.0003", "schedule.warmup_epochs=0", "eval.every=0"), overwrite=True)

    first_val = (data_dir / "val.csv").read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    overlay_video = data_dir / first_val
    print(f"[4/5] overlay of what the fine-tuned {tag} kept on {overlay_video.name} -> {out / 'overlay.mp4'}")
    overlay_main([str(overlay_video), "--checkpoint", str(out / tag / "best.pth"),
                  "--output", str(out / "overlay.mp4"), "--png", str(out / "overlay.png")])

    print("[5/5] results on the demo validation split (one centred view per video)\n")
    base = plain["gmacs_per_view"]
    table = ["| model | top-1 (%) | GMACs/view | GMACs saved |", "|---|---|---|---|",
             _row("timesformer_micro (unreduced)", plain, base),
             _row(f"+ {tag} {reducer_summary(reducer)}, training-free", as_is, base),
             _row(f"+ {tag} {reducer_summary(reducer)}, fine-tuned {args.finetune_epochs} epochs", tuned, base)]
    print("\n".join(table))
    summary = {"task": args.task, "plain": plain, f"{tag}_training_free": as_is, tag: tuned,
               "reducer": to_dict(reducer), "minutes": (time.perf_counter() - started) / 60}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nfinished in {summary['minutes']:.1f} min. Outputs:")
    print(f"  dataset            {data_dir}  (videos, Kinetics CSV + list annotations, masks)")
    print(f"  plain model        {out / 'plain' / 'best.pth'}  (logs: {out / 'plain' / 'train_log.csv'})")
    print(f"  with {tag:<13} {out / tag / 'best.pth'}  (per-view compute: {out / tag / 'eval_views.jsonl'})")
    print(f"  training-free eval {out / f'{tag}_training_free.json'}")
    print(f"  overlay            {out / 'overlay.mp4'}  and  {out / 'overlay.png'}")
    print(f"  summary            {out / 'summary.json'}")
    print(f"  TensorBoard        tensorboard --logdir {out}")
    return 0


def reducer_summary(cfg: ReducerConfig) -> str:
    knobs = {"keep": cfg.keep, "r": cfg.r if cfg.name == "tome" else None, "threshold": cfg.threshold}
    shown = ", ".join(f"{k}={v}" for k, v in knobs.items() if v is not None)
    return f"({shown}, {cfg.mode})"
