"""``ired-video smoke``: build a model, run it on a generated clip, report what it spent."""
from __future__ import annotations

import argparse
import time
from typing import Optional

import torch

from ired_video.build import apply_reducer, create_model
from ired_video.commands.common import add_reducer_argument, reducer_from_args
from ired_video.models import list_models

DEFAULT_MODEL = "timesformer_micro"

EPILOG = """examples:
  ired-video smoke                                   # the CPU demo model, random weights
  ired-video smoke --model timesformer_base_patch16_224 --batch 1
  ired-video smoke --model timesformer_test --attention joint_space_time
  ired-video smoke --checkpoint runs/demo/best.pth   # one of our checkpoints
  ired-video smoke --checkpoint timesformer-base-finetuned-k400/   # a transformers snapshot folder
  ired-video smoke --reducer tome r=8                # ToMe, 8 tokens merged per block
  ired-video smoke --reducer configs/reducers/iared2_keep07.yaml stages=[1,2,3]
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video smoke", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a TimeSformer on a random clip of the model's own size and print the "
                    "logits' shape, the patch tokens each block saw and the GMACs per clip. "
                    "Nothing is downloaded: weights come only from --checkpoint.")
    parser.add_argument("--model", default=None, choices=list_models(),
                        help=f"named variant (default: {DEFAULT_MODEL}, or the checkpoint's own config)")
    parser.add_argument("--checkpoint", default=None,
                        help="local weights: a file (.pyth, .pth, .safetensors) or a transformers snapshot folder")
    parser.add_argument("--attention", default=None,
                        choices=["divided_space_time", "joint_space_time", "space_only"],
                        help="override the variant's attention type")
    add_reducer_argument(parser)
    parser.add_argument("--batch", type=int, default=2, help="clips in the batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and clip (default: %(default)s)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    overrides = {"attention_type": args.attention} if args.attention else {}
    name = args.model or (None if args.checkpoint else DEFAULT_MODEL)
    model = create_model(name, checkpoint=args.checkpoint, **overrides).eval()
    reducer = reducer_from_args(args.reducer)
    if reducer is not None:
        apply_reducer(model, reducer)
    cfg = model.config
    video = torch.randn(args.batch, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size)
    start = time.perf_counter()
    with torch.inference_mode():
        logits, info = model(video, return_info=True)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"model      {name or args.checkpoint} ({cfg.attention_type}, {params / 1e6:.2f}M parameters)")
    print(f"reducer    {getattr(model, 'reducer_config', None) or 'none'}")
    print(f"input      {tuple(video.shape)}  (B, C, T, H, W)")
    print(f"logits     {tuple(logits.shape)}  finite: {bool(torch.isfinite(logits).all())}")
    print(f"tokens     {info.tokens[0].tolist()}  patch tokens per block (clip 0)")
    print(f"GMACs      {[round(g, 4) for g in info.gmacs.tolist()]}  per clip (one view; "
          f"{model.static_gmacs():.4f} unreduced)")
    print(f"time       {seconds * 1000:.1f} ms for the batch on {video.device.type}")
    return 0
