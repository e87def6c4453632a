"""Benchmark: faithfulness and localisation of every explanation method on the demo dataset.

    python tools/bench_explain.py --checkpoint runs/demo/plain/best.pth --data runs/demo/data --out runs/explain

For a demo checkpoint (``ired-video demo`` trains one) and its dataset this writes the
table of ``ired-video faithfulness`` for interpreter, class attention, attention rollout,
the interaction indicator and random, plus the share of object patches each reducer keeps,
as ``OUT/bench_explain.md`` and ``.json``.

The interpreter column needs IA-RED² interpreters. When the checkpoint has none, a short
IA-RED² stage is trained on the *frozen* checkpoint first (the paper's first stage:
REINFORCE policy with a keep-ratio term, backbone frozen; ``--interpreter-epochs``
epochs with the demo recipe, keep 0.7 per stage, tube mode) into ``OUT/interpreter/``;
its interpreters then explain the unchanged backbone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from ired_video.commands.common import reducer_from_args
from ired_video.engine.recipes import demo_config, reducer_settings
from ired_video.engine.train import train
from ired_video.explain.methods import METHODS
from ired_video.explain.table import DEFAULT_REDUCERS, build_table, demo_items
from ired_video.inference import load_model
from ired_video.reducers import reducer_config


def train_interpreter(checkpoint: Path, data_dir: Path, out: Path, epochs: int) -> Path:
    """A short IA-RED² stage on the frozen ``checkpoint``; returns its best checkpoint."""
    iared2 = reducer_config("iared2", keep=0.7, mode="tube")
    clips = len((data_dir / "train.csv").read_text().splitlines())
    batch = min(16, max(clips // 2, 1))  # small datasets still get steps (as ired-video demo)
    train(demo_config(data_dir, out, *reducer_settings(iared2), f"init.checkpoint={checkpoint}",
                      f"train.batch_size={batch}",
                      "init.drop_head=false", f"train.epochs={epochs}", "optim.lr=0.001", "optim.weight_decay=0.0",
                      "schedule.warmup_epochs=0", "eval.every=0", "objective.ce=0.0", "objective.policy=1.0",
                      "objective.keep_ratio=1.0", "objective.keep_target=0.343", "objective.freeze_backbone=true"),
          overwrite=True)
    return out / "best.pth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_explain.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="demo checkpoint (e.g. runs/demo/plain/best.pth)")
    parser.add_argument("--data", required=True, help="the demo dataset it was trained on (e.g. runs/demo/data)")
    parser.add_argument("--out", default="runs/bench_explain", help="output folder (default: %(default)s)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N videos only (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="points per deletion/insertion curve minus one")
    parser.add_argument("--interpreter-epochs", type=int, default=4,
                        help="epochs of the IA-RED² stage when the checkpoint has no interpreter "
                             "(default: %(default)s)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out, data_dir, checkpoint = Path(args.out), Path(args.data), Path(args.checkpoint)
    for path in (checkpoint, data_dir / f"{args.split}.csv"):
        if not path.is_file():
            print(f"bench_explain: error: {path}: no such file", file=sys.stderr)
            return 2
    started = time.perf_counter()
    loaded = load_model(checkpoint, device="cpu")
    interpreter_ckpt = None
    if not any(r.name == "iared2" for r in loaded.model.reducers.values()):
        print(f"{checkpoint} has no interpreter: training an IA-RED² stage on it, frozen -> {out / 'interpreter'}")
        interpreter_ckpt = train_interpreter(checkpoint, data_dir, out / "interpreter", args.interpreter_epochs)
        loaded = load_model(interpreter_ckpt, device="cpu")
    reducers = [reducer_from_args(spec.split()) for spec in DEFAULT_REDUCERS] + [loaded.model.reducer_config]
    items = demo_items(data_dir, args.split, args.limit)
    table = build_table(loaded.model, items, list(METHODS), reducers, args.steps)
    text = table.markdown()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_explain.md").write_text(text + "\n")
    report = {"checkpoint": str(checkpoint), "interpreter_checkpoint": str(interpreter_ckpt or checkpoint),
              "data": str(data_dir), "split": args.split, "steps": args.steps,
              "minutes": (time.perf_counter() - started) / 60, **table.to_dict()}
    (out / "bench_explain.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_explain.md'} and .json in {report['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
