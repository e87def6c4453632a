"""``ired-video overlay``: a video (and a PNG grid) of which patches each reducer stage kept."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ired_video.commands.infer import add_model_arguments, load_from_args
from ired_video.data.decoding import DecodeError
from ired_video.data.video_io import write_video
from ired_video.inference import LoadedModel, decode_views, top_k, unreduced_gmacs
from ired_video.paths import writable_file
from ired_video.viz.attention import capture_class_attention
from ired_video.viz.draw import denormalize
from ired_video.viz.masks import StageMasks, stage_masks_from_info
from ired_video.viz.overlay import HEATMAPS, Heatmap, caption_lines, choose_heatmap, overlay_frames, overlay_grid

EPILOG = """examples:
  ired-video overlay clip.mp4 --checkpoint best.pth --output overlay.mp4 --png grid.png
  ired-video overlay clip.mp4 --checkpoint best.pth --reducer iared2 keep=0.7 --output o.mp4
  ired-video overlay clip.mp4 --checkpoint best.pth --reducer tome r=4 mode=frame --output o.mp4
  ired-video overlay clip.mp4 --reducer topk keep=0.5 --output o.mp4   # demo, RANDOM weights

Columns: the input the model saw (its crop, de-normalised), a heatmap (the reducer's own
scores at its first stage, e.g. the IA-RED2 interpreter's keep probability, or else the
last block's class attention), then each stage: dropped patches greyed, merged groups
outlined in one colour per group. Video frames: one per sampled frame, shown --fps per
second; H.264 yuv420p with even sizes (plays in browsers). PNG: rows = sampled frames.
"""


@dataclass
class Overlay:
    """Rendered overlay of one view and what it shows."""

    frames: np.ndarray  # (T, H', W', 3) uint8 video frames
    grid: np.ndarray  # (H'', W'', 3) uint8 frames x stages figure
    stages: list[StageMasks]
    label: str
    prob: float
    gmacs: float


def default_scale(crop_size: int) -> int:
    """Integer enlargement so small demo crops (32, 64 px) are drawn at about 200 px."""
    return max(1, 224 // crop_size)


def build_overlay(loaded: LoadedModel, path: str, clip_index: int = 0, num_clips: int = 1,
                  heatmap: str = "auto", scale: Optional[int] = None, backend: str = "auto") -> Overlay:
    """Decode the centre-crop view ``clip_index`` of ``num_clips`` of ``path``, run the model
    (capturing the last block's class attention) and render the video frames and the grid."""
    data = loaded.data_config
    decoded = decode_views(path, data, num_clips, 1, backend)
    video = decoded.videos[clip_index:clip_index + 1]  # (1, C, T, H, W)
    with torch.inference_mode(), capture_class_attention(loaded.model) as capture:
        logits, info = loaded.model(video.to(loaded.device), return_info=True)
    stages = stage_masks_from_info(info, clip=0)
    attention = Heatmap(capture.heat(0), f"class attention @ block {capture.block}")
    heat = choose_heatmap(stages, attention, heatmap)
    best = top_k(logits[0].float().softmax(dim=-1).cpu(), loaded.class_names, 1)[0]
    gmacs = float(info.gmacs[0])
    caption = caption_lines(best["label"], best["prob"], gmacs, unreduced_gmacs(loaded.model), stages)
    frames = denormalize(video[0], data.mean, data.std)  # (T, H, W, 3): the crop the model saw
    scale = scale or default_scale(frames.shape[1])
    indices = decoded.views[clip_index].frame_indices
    labels = [f"{Path(path).name}  frame {i} ({t + 1}/{len(indices)})" for t, i in enumerate(indices)]
    return Overlay(overlay_frames(frames, stages, heat, caption, scale, labels),
                   overlay_grid(frames, stages, heat, caption + [f"{Path(path).name}, frames {indices}"], scale),
                   stages, best["label"], best["prob"], gmacs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video overlay", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw, on the frames a model sampled from VIDEO, which patches every reducer stage "
                    "kept or merged, a heatmap and the prediction, GMACs and tokens kept; write an MP4 "
                    "and optionally a PNG grid (frames x stages).")
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, help="MP4 file to write")
    parser.add_argument("--png", default=None, help="also write the frames x stages grid as a PNG")
    parser.add_argument("--heatmap", default="auto", choices=HEATMAPS,
                        help="auto: the reducer's first-stage scores, else class attention of the last "
                             "block; attention: always the latter; none (default: %(default)s)")
    parser.add_argument("--clip", default="0/1", metavar="I/N",
                        help="temporal clip I of N spread over the video (default: %(default)s, the centre)")
    parser.add_argument("--scale", type=int, default=None,
                        help="enlarge the crop this many times, nearest (default: about 224 px)")
    parser.add_argument("--fps", type=float, default=2.0, help="overlay frames per second (default: %(default)s)")
    return parser


def parse_clip(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (clip 1, of 4)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"ired-video overlay: --clip {text!r}: expected I/N, e.g. 0/1") from None
    if not 0 <= index < count:
        raise SystemExit(f"ired-video overlay: --clip {text!r}: need 0 <= I < N")
    return index, count


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    clip_index, num_clips = parse_clip(args.clip)
    if args.scale is not None and args.scale < 1 or args.fps <= 0:
        raise SystemExit("ired-video overlay: --scale must be >= 1 and --fps > 0")
    out = writable_file(args.output, "--output")  # before rendering anything
    png = None if args.png is None else writable_file(args.png, "--png")
    loaded = load_from_args(args)

    try:
        result = build_overlay(loaded, args.video, clip_index, num_clips, args.heatmap, args.scale, args.backend)
    except DecodeError as err:
        print(f"ired-video overlay: error: cannot read {err}", file=sys.stderr)
        return 2
    write_video(out, result.frames, args.fps, crf=18)
    print(f"wrote {out}: {result.frames.shape[0]} frames of {result.frames.shape[2]}x{result.frames.shape[1]} "
          f"(padded to even) at {args.fps:g} fps")
    if png is not None:
        Image.fromarray(result.grid).save(png, optimize=True)
        print(f"wrote {png}: {result.grid.shape[1]}x{result.grid.shape[0]}")
    stages = ", ".join(f"{s.label} {s.kept_fraction:.0%}" for s in result.stages) or "no reducer stages"
    print(f"prediction {result.label} ({result.prob:.1%}), {result.gmacs:.4f} GMACs, tokens kept: {stages}")
    return 0
