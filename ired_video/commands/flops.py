"""``ired-video flops``: GMACs per view of the named variants, analytic and measured."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from ired_video.build import create_model
from ired_video.flops import count_flops
from ired_video.models import list_models

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
DEFAULT_MODELS = ("timesformer_base_patch16_224", "timesformer_small_patch16_224",
                  "timesformer_tiny_patch16_224", "timesformer_micro")

EPILOG = """GMACs are multiply-accumulates (the fvcore convention papers call "GFLOPs").
'analytic' is the per-layer formula the models bill each clip with; '--measure' also runs
PyTorch's FlopCounterMode (2 FLOPs per MAC) on one view, which takes a while for big models.

examples:
  ired-video flops
  ired-video flops --models timesformer_base_patch16_224 --measure
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video flops", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print a Markdown table of GMACs per view and parameters for named variants "
                    "under each attention type.")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list_models(),
                        metavar="MODEL", help="variants to list (default: the four main ones)")
    parser.add_argument("--measure", action="store_true",
                        help="also count with torch.utils.flop_counter.FlopCounterMode")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    header = "| model | attention | frames x size | params (M) | GMACs/view (analytic) |"
    rule = "|---|---|---|---|---|"
    if args.measure:
        header += " GMACs/view (FlopCounterMode / 2) |"
        rule += "---|"
    print(header)
    print(rule)
    for name in args.models:
        for attention in ATTENTION_TYPES:
            model = create_model(name, attention_type=attention).eval()
            cfg = model.config
            params = sum(p.numel() for p in model.parameters()) / 1e6
            row = (f"| {name} | {attention} | {cfg.num_frames} x {cfg.img_size} | {params:.2f} "
                   f"| {model.static_gmacs():.2f} |")
            if args.measure:
                video = torch.zeros(1, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size)
                row += f" {count_flops(model, video) / 2e9:.2f} |"
            print(row, flush=True)
    return 0
