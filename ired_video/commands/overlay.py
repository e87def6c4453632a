"""``ired-video overlay``: a video (and a PNG grid) of which patches each reducer stage kept."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from PIL import Image

from ired_video.commands.common import parse_clip
from ired_video.commands.infer import add_model_arguments, load_from_args
from ired_video.data.decoding import DecodeError
from ired_video.data.video_io import write_video
from ired_video.overlay_view import build_overlay
from ired_video.paths import writable_file
from ired_video.viz.overlay import HEATMAPS

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


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    clip_index, num_clips = parse_clip(args.clip, "ired-video overlay")
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
