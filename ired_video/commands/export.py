"""``ired-video export``: write a model in the format other tools load."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ired_video.build import create_model
from ired_video.models import list_models, save_checkpoint
from ired_video.models.hf_weights import save_snapshot

FORMATS = ("transformers", "ired_video")
EPILOG = """examples:
  ired-video export --checkpoint runs/k400/best.pth --format transformers --out my-timesformer/
  ired-video export --checkpoint timesformer-base-finetuned-k400/ --format ired_video --out k400.pth
  ired-video export --checkpoint timesformer_divST_8xb8-8x32x1-15e_kinetics400-rgb.pth \\
      --format transformers --out k400-hf/   # mmaction2
  ired-video export --checkpoint TimeSformer_divST_8x32_224_K400.pyth --model timesformer_base_patch16_224 \\
      --format transformers --out k400-official-hf/

transformers: a folder with config.json (architecture, id2label = our class names),
model.safetensors and preprocessor_config.json (resize, crop, mean/std), which
TimesformerForVideoClassification.from_pretrained(folder) loads with the same logits
(its input is (B, T, C, H, W)). A reducer is a run-time option and is not written; a
reducer with trained parameters (IA-RED²) or a cascade cannot be exported this way.
ired_video: one of our checkpoints (model, data and reducer configs inside).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video export", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read weights from any source ired_video loads (our checkpoint, a transformers "
                    "snapshot folder, mmaction2, official .pyth with --model) and write them as a "
                    "transformers snapshot or as our checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="weights to read (file or snapshot folder)")
    parser.add_argument("--model", default=None, choices=list_models(),
                        help="named variant, for weights that carry no config (official .pyth, timm)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, help="output folder (transformers) or file (ired_video)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model = create_model(args.model, checkpoint=args.checkpoint)
    out = Path(args.out)
    try:
        if args.format == "transformers":
            written = save_snapshot(model, out, overwrite=args.force)
        else:
            if out.exists() and not args.force:
                raise FileExistsError(f"{out}: already exists (--force to replace)")
            save_checkpoint(out, model)
            written = [out]
    except FileExistsError as err:
        print(f"ired-video export: error: {err}", file=sys.stderr)
        return 2
    cfg = model.config
    names = model.data_config.class_names
    print(f"{args.checkpoint} -> {args.format}: {cfg.attention_type}, {cfg.depth} blocks of {cfg.embed_dim}, "
          f"{cfg.num_frames}x{cfg.img_size}, {cfg.num_classes} classes"
          f"{' (' + ', '.join(names[:3]) + (', ...' if len(names) > 3 else '') + ')' if names else ''}")
    for path in written:
        print(f"wrote {path}")
    return 0
