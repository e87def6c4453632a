"""``ired-video fields``: measure each patch location's effective responsive field on data
and write it as JSON, ready for ``model.responsive_fields`` in a training config."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ired_video.commands.common import add_annotation_arguments
from ired_video.config import ConfigError
from ired_video.data.annotations import AnnotationError, load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.decoding import BACKENDS
from ired_video.explain.field_summary import format_summary, summarize
from ired_video.explain.fields import accumulate_fields
from ired_video.inference import LoadedModel, load_model

EPILOG = """examples:
  ired-video fields --checkpoint runs/demo/plain/best.pth --data runs/demo/data/val.csv --out fields.json
  ired-video fields --checkpoint best.pth --data k400/val.csv --root k400/val --limit 200 --coverage 0.95 \\
      --out runs/fields_k400.json

then train a model whose attention is restricted to them (window-free attention):
  ired-video train --config cfg.yaml model.responsive_fields=fields.json

Each clip (test-mode preprocessing from the checkpoint: its frames, sampling, crop) gets
the first-order effect of every attention edge on the target logit (docs/explain.md);
their magnitudes are summed per block and query location by distance: Chebyshev distance
in patches (spatial) and frame gap (temporal). A location's radius / span is the smallest
distance holding --coverage of its interaction mass. The summary shows, per block, the
radius and span (mean [min,max]) and the share of spatial and temporal attention edges the
window would mask. GMACs per clip: "billed" is what the windowed model spends with the
gathered kernel (the default, model.window_kernel=gathered: per frame the class token's row
plus each row tile's band of keys), "masked" with window_kernel=masked (= the plain model),
"kept pairs" an analytic lower bound no kernel here reaches.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video fields", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure per-patch effective responsive fields (how far in space and time each "
                    "location's useful interactions reach) of a checkpoint on annotated videos; write JSON.")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint of a divided-attention model")
    add_annotation_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="use the first N videos only")
    parser.add_argument("--coverage", type=float, default=0.9,
                        help="share of each location's interaction mass its field holds (default: %(default)s)")
    parser.add_argument("--target", choices=["predicted", "label"], default="predicted",
                        help="logit whose edge effects are measured: the predicted class or the "
                             "annotated one (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per forward/backward (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default: %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser


def _fail(message: str) -> int:
    print(f"ired-video fields: error: {message}", file=sys.stderr)
    return 2


def _load(checkpoint: str, device: str) -> LoadedModel:
    """Our checkpoint, or a ConfigError naming it."""
    try:
        return load_model(checkpoint, device=device)
    except ConfigError as err:
        raise ConfigError(f"{checkpoint}: {err}") from None


def _batches(loader: DataLoader, device: torch.device, use_label: bool
             ) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
    for batch in tqdm(loader, desc="fields", unit="batch"):
        yield batch["video"].to(device), batch["label"].to(device) if use_label else None


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.coverage <= 1:
        return _fail(f"--coverage {args.coverage}: expected a fraction in (0, 1]")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        return _fail("--batch-size and --limit must be >= 1")
    if not Path(args.checkpoint).exists():  # a file, or a transformers snapshot folder
        return _fail(f"{args.checkpoint}: no such checkpoint file")
    loaded = _load(args.checkpoint, args.device)
    model = loaded.model
    if model.config.attention_type != "divided_space_time":
        return _fail(f"{args.checkpoint}: responsive fields need divided_space_time attention, "
                     f"the model has {model.config.attention_type}")

    try:
        ann = load_annotations(args.data, video_root=args.root, split=args.split,
                               class_names=model.data_config.class_names or None)
    except AnnotationError as err:
        return _fail(str(err))
    records = ann.records[:args.limit]
    if not records:
        return _fail(f"{args.data}: no videos")
    dataset = VideoDataset(records, model.data_config, "test", backend=args.backend)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    accumulator = accumulate_fields(model, _batches(loader, loaded.device, args.target == "label"))
    fields = accumulator.fields(args.coverage)
    summary = summarize(fields, model.config.embed_dim, loaded.model.static_gmacs())
    fields.summary = {"checkpoint": args.checkpoint, "data": args.data, "videos": len(records),
                      "target": args.target, **summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields.save(out)
    print(f"{loaded.name}: {fields.clips} clips of {fields.frames} frames, grid {fields.grid[0]}x{fields.grid[1]}, "
          f"coverage {fields.coverage:g}")
    print(format_summary(summary))
    print(f"wrote {out}  (use: model.responsive_fields={out})")
    return 0
