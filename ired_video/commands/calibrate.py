"""``ired-video calibrate``: a cascade's exit thresholds for a GMACs budget, from held-out videos."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader

from ired_video.build import create_model
from ired_video.cascade.calibration import calibrate
from ired_video.cascade.model import Cascade
from ired_video.config import ConfigError
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.models.weights import save_checkpoint

EPILOG = """examples:
  ired-video calibrate --checkpoint runs/cascade/best.pth --data data/demo/val.csv --budget 0.3
  ired-video calibrate --checkpoint c.pth --data heldout.csv --budget 50 --output c_50g.pth --report cal.json

Use a split the model was not trained on and that you will not report accuracy on (DVT
used 50,000 held-out training images). Every stage runs on every clip (one centred view
each); DVT's sweep of exit shares q_k ~ p^k (p = 0.05 .. 2.95) gives a table of
thresholds with the mean GMACs per clip and accuracy each reaches on this split; the row
closest to --budget from below is chosen. The thresholds and the whole table are stored in
the checkpoint (--output, default: in place), so 'eval'/'infer --budget G' can pick another
budget later without this split.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video calibrate", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Choose a cascade's exit thresholds so that its mean GMACs per clip on held-out "
                    "videos stays within a budget; report the budget reached and the accuracy.")
    parser.add_argument("--checkpoint", required=True, help="our cascade checkpoint (e.g. runs/cascade/best.pth)")
    parser.add_argument("--data", required=True, help="held-out annotations: Kinetics CSV, list file or folders")
    parser.add_argument("--budget", type=float, required=True, metavar="GMACS", help="mean GMACs per clip")
    parser.add_argument("--root", default=None, help="folder the annotation's videos live in")
    parser.add_argument("--split", default=None, help="keep only this CSV split")
    parser.add_argument("--output", default=None, help="checkpoint to write (default: overwrite --checkpoint)")
    parser.add_argument("--report", default=None, help="also write the table and choice as JSON here")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model = create_model(checkpoint=args.checkpoint)
    if not isinstance(model, Cascade):
        raise ConfigError(f"{args.checkpoint}: not a cascade checkpoint (train one with a 'cascade:' section)")
    ann = load_annotations(args.data, video_root=args.root, split=args.split,
                           class_names=model.data_config.class_names or None)
    dataset = VideoDataset(ann.records, model.data_config, "test")
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    result = calibrate(model, loader, args.budget)
    output = Path(args.output or args.checkpoint)
    save_checkpoint(output, model, calibration_budget=args.budget)
    print("| p | thresholds | GMACs/clip | top-1 | exit shares |\n|---|---|---|---|---|")
    for row in result["table"]:
        print(f"| {row['p']} | {', '.join(f'{t:.3f}' for t in row['thresholds'])} | {row['gmacs']:.4f} | "
              f"{row['top1']:.3f} | {', '.join(f'{s:.2f}' for s in row['exit_shares'])} |")
    chosen = result["chosen"]
    print(f"\nbudget {args.budget:g} GMACs/clip -> thresholds {chosen['thresholds']}: {chosen['gmacs']:.4f} "
          f"GMACs/clip, top-1 {chosen['top1']:.3f} on {result['clips']} held-out clips; exit shares "
          f"{[round(s, 3) for s in chosen['exit_shares']]}\nwrote {output}")
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=1))
    return 0
