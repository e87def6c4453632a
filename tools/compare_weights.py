"""Compare our logits on foreign weights with that format's own forward, on one clip.

- ``transformers SNAPSHOT``: ours (``create_model(checkpoint=SNAPSHOT)``) against
  transformers' ``TimesformerForVideoClassification.from_pretrained(SNAPSHOT)`` (needs
  transformers: ``pip install -e .[dev]``).
- ``mmaction2 FILE``: ours against the independent mmaction2-layout forward of
  ``tests/reference_mmaction_timesformer.py`` (run from the repository root).

``--random ATTENTION`` first writes random weights in that format (transformers: by
transformers itself, no download) at the test size or ViT-B size. The clip is a real video
preprocessed as the checkpoint's data config says (``--clip``), or a random normal clip.
Prints the largest logit difference and the logits' span.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

try:
    import transformers
except ImportError:  # only the transformers mode needs it
    transformers = None

from ired_video import DataConfig, create_model
from ired_video.inference import decode_views
from ired_video.models.checkpoint_file import read_file
from tests.reference_mmaction_timesformer import mmaction_reference_forward, mmaction_state_dict

EPILOG = """\
examples:
  python tools/compare_weights.py transformers path/to/timesformer-base-finetuned-k400 --clip clip.mp4
  python tools/compare_weights.py transformers --random divided_space_time --size base --clip clip.mp4
  python tools/compare_weights.py transformers --random space_only   # theirs: one logit row per frame
  python tools/compare_weights.py mmaction2 timesformer_divST_8xb8-8x32x1-15e_kinetics400-rgb_20220815-a4d0d01f.pth
  python tools/compare_weights.py mmaction2 --random joint_space_time --size base --clip clip.mp4
"""
ATTENTIONS = ["divided_space_time", "joint_space_time", "space_only"]
HF_SIZES = {"test": dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=128),
            "base": {}}  # transformers' defaults are ViT-B/16, 8 frames, 224 px
MM_SIZES = {"test": dict(dim=24, depth=2, grid=4, frames=4, patch_size=8, classes=5),
            "base": dict(dim=768, depth=12, grid=14, frames=8, patch_size=16, classes=400)}


def input_clip(data: DataConfig, clip: Optional[Path], seed: int) -> Tensor:
    """(1, C, T, H, W): ``clip`` preprocessed as ``data`` says, or random normal values."""
    if clip is not None:
        return decode_views(clip, data).videos
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, data.num_frames, data.crop_size, data.crop_size, generator=generator)


def span(logits: Tensor) -> str:
    return f"logits span {logits.min().item():.3g} .. {logits.max().item():.3g}"


def random_snapshot(folder: Path, attention: str, size: str, seed: int) -> Path:
    """A random transformers TimeSformer with 400 labels, written by transformers itself."""
    torch.manual_seed(seed)
    config = transformers.TimesformerConfig(attention_type=attention, num_labels=400, **HF_SIZES[size])
    model = transformers.TimesformerForVideoClassification(config)
    with torch.no_grad():  # transformers initialises small; widen so differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    return folder


def compare_transformers(folder: Path, clip: Optional[Path], seed: int) -> None:
    ours = create_model(checkpoint=folder).eval()
    theirs = transformers.TimesformerForVideoClassification.from_pretrained(folder).eval()
    video = input_clip(ours.data_config, clip, seed)
    with torch.no_grad():
        mine = ours(video)
        other = theirs(pixel_values=video.transpose(1, 2)).logits  # theirs takes (B, T, C, H, W)
    print(f"transformers {folder} ({ours.config.attention_type}, {ours.config.depth} blocks of "
          f"{ours.config.embed_dim}), input {tuple(video.shape)} {'from ' + str(clip) if clip else 'random'}")
    if other.shape == mine.shape:
        print(f"max |logit diff| {(mine - other).abs().max().item():.3g} ({span(mine)}); top-1 equal: "
              f"{bool(mine.argmax() == other.argmax())}")
        return
    with torch.no_grad():  # space-only: transformers gives one row per frame
        per_frame = torch.cat([ours(video[:, :, t:t + 1]) for t in range(video.shape[2])])  # (T, classes)
    print(f"transformers gives {tuple(other.shape)} (one row per frame), ours {tuple(mine.shape)}")
    print(f"per frame: ours on each frame alone vs their rows: max |logit diff| "
          f"{(per_frame - other).abs().max().item():.3g}")
    print(f"clip: mean of their rows vs our clip logits: max |diff| "
          f"{(other.mean(0, keepdim=True) - mine).abs().max().item():.3g} ({span(mine)})")


def random_mmaction(path: Path, attention: str, size: str, seed: int) -> Path:
    state = mmaction_state_dict(attention, seed=seed, **MM_SIZES[size])
    if size == "base":  # a ViT-like weight scale keeps a 12-block residual stream in range
        state = {k: v if "norm" in k else v * 0.1 for k, v in state.items()}
    torch.save({"meta": {}, "state_dict": state}, path)
    return path


def compare_mmaction(path: Path, clip: Optional[Path], num_heads: int, seed: int) -> None:
    model = create_model(checkpoint=path, num_heads=num_heads).eval()
    video = input_clip(model.data_config, clip, seed)
    with torch.no_grad():
        ours = model(video)
        reference = mmaction_reference_forward(read_file(path)["state_dict"], video,
                                               model.config.attention_type, num_heads)
    print(f"mmaction2 {path} ({model.config.attention_type}, {model.config.depth} blocks of "
          f"{model.config.embed_dim}, {num_heads} heads), input {tuple(video.shape)} "
          f"{'from ' + str(clip) if clip else 'random'}")
    print(f"max |logit diff| {(ours - reference).abs().max().item():.3g} ({span(reference)}); top-1 equal: "
          f"{bool(ours.argmax() == reference.argmax())}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=["transformers", "mmaction2"])
    parser.add_argument("checkpoint", nargs="?", help="a snapshot folder (transformers) or .pth (mmaction2)")
    parser.add_argument("--random", choices=ATTENTIONS, help="random weights of this attention type instead")
    parser.add_argument("--size", choices=["test", "base"], default="test", help="random weights' size")
    parser.add_argument("--num-heads", type=int, default=12, help="mmaction2: heads (not stored; default 12)")
    parser.add_argument("--clip", type=Path, default=None, help="a video, preprocessed as the checkpoint says")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.random):
        parser.error("give a checkpoint or --random ATTENTION")
    if args.format == "transformers" and transformers is None:
        parser.error("transformers is not installed (pip install -e .[dev])")
    with tempfile.TemporaryDirectory() as tmp:
        if args.format == "transformers":
            folder = Path(args.checkpoint) if args.checkpoint else random_snapshot(
                Path(tmp), args.random, args.size, args.seed)
            compare_transformers(folder, args.clip, args.seed)
        else:
            path = Path(args.checkpoint) if args.checkpoint else random_mmaction(
                Path(tmp) / "mmaction.pth", args.random, args.size, args.seed)
            compare_mmaction(path, args.clip, args.num_heads, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
