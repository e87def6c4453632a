"""``ired-video explain``: per-frame heatmaps of what a model looked at, as arrays and images."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ired_video.commands.common import parse_clip
from ired_video.commands.infer import add_model_arguments, load_from_args
from ired_video.data.decoding import DecodeError
from ired_video.explain.methods import METHODS, MissingInterpreter, explain
from ired_video.inference import decode_views, top_k
from ired_video.overlay_view import default_scale
from ired_video.viz.draw import blend_heatmap, denormalize, scale_image, tile_grid, with_caption

EPILOG = """examples:
  ired-video explain clip.mp4 --checkpoint best.pth --out explain/        # every method it can run
  ired-video explain clip.mp4 --checkpoint best.pth --method rollout interaction --out explain/
  ired-video explain clip.mp4 --checkpoint iared2/best.pth --method interpreter --out explain/

Methods (all explain the unreduced model; docs/explain.md has the definitions):
  interpreter  IA-RED2 keep probability (needs a checkpoint with an iared2 reducer)
  attention    class-token attention of the last block
  rollout      attention rollout through temporal and spatial attention
  interaction  first-order patch-interaction indicator (every attention edge's effect
               on the class logit, summed per patch over blocks)
  random       noise, the control

Writes, per method M: M.npy, float32 (T, h, w) importance per patch of each sampled frame;
M_frame<t>.png, the heatmap blended over frame t (the crop the model saw); M.png, all
frames side by side with a caption. Colours are scaled per method over the whole clip.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video explain", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Explain a model's prediction on VIDEO: a heatmap per sampled frame for each "
                    "explanation method, saved as NumPy arrays and PNG images.")
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    add_model_arguments(parser)
    parser.add_argument("--method", nargs="+", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"one or more of {', '.join(METHODS)} (default: all; interpreter only when "
                             "the model has one)")
    parser.add_argument("--target", default=None,
                        help="class to explain, by name or index (default: the predicted class)")
    parser.add_argument("--out", required=True, help="folder for the arrays and images")
    parser.add_argument("--clip", default="0/1", metavar="I/N",
                        help="temporal clip I of N spread over the video (default: %(default)s, the centre)")
    parser.add_argument("--scale", type=int, default=None,
                        help="enlarge the crop this many times, nearest (default: about 224 px)")
    return parser


def _target(text: Optional[str], names: list[str], predicted: int) -> int:
    if text is None:
        return predicted
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise SystemExit(f"ired-video explain: --target {text!r} is neither a class name nor an index below "
                     f"{len(names)}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    clip_index, num_clips = parse_clip(args.clip, "ired-video explain")
    if not Path(args.video).is_file():
        print(f"ired-video explain: error: {args.video}: no such file", file=sys.stderr)
        return 2
    loaded = load_from_args(args)

    data = loaded.data_config
    try:
        decoded = decode_views(args.video, data, num_clips, 1, args.backend)
    except DecodeError as err:
        print(f"ired-video explain: error: cannot read {err}", file=sys.stderr)
        return 2
    video = decoded.videos[clip_index:clip_index + 1].to(loaded.device)  # (1, C, T, H, W)
    model = loaded.model
    with torch.no_grad():
        probs = model(video).float().softmax(dim=-1)[0].cpu()
    target = _target(args.target, loaded.class_names, int(probs.argmax()))
    has_interpreter = any(r.name == "iared2" for r in model.reducers.values())
    methods = args.method or [m for m in METHODS if m != "interpreter" or has_interpreter]
    frames = scale_image_all(denormalize(video[0], data.mean, data.std), args.scale)  # (T, H', W', 3)
    grid = model.patch_grid
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(exist_ok=True)
    best = top_k(probs, loaded.class_names, 1)[0]
    for method in methods:
        try:
            heat = explain(model, video, method, torch.tensor([target], device=loaded.device))
        except MissingInterpreter as err:
            print(f"ired-video explain: error: {loaded.name}: {err}", file=sys.stderr)
            return 2
        heat = heat[0].reshape(-1, *grid).float().cpu().numpy()  # (T, N) -> (T, h, w)
        np.save(out / f"{method}.npy", heat.astype(np.float32))
        lo, hi = float(heat.min()), float(heat.max())
        tiles = [blend_heatmap(frame, heat[t], vmin=lo, vmax=hi) for t, frame in enumerate(frames)]
        for t, tile in enumerate(tiles):
            Image.fromarray(tile).save(out / f"{method}_frame{t}.png")
        caption = [f"{method}: class {loaded.class_names[target]} (predicted {best['label']}, {best['prob']:.1%})",
                   f"{Path(args.video).name}, frames {decoded.views[clip_index].frame_indices}"]
        Image.fromarray(with_caption(tile_grid([tiles]), caption)).save(out / f"{method}.png")
        print(f"{method:<12} -> {out / method}.npy, .png and {len(tiles)} frame images")
    return 0


def scale_image_all(frames: np.ndarray, scale: Optional[int]) -> np.ndarray:
    """(T, H, W, 3) frames enlarged ``scale`` times (default: to about 224 px)."""
    factor = scale or default_scale(frames.shape[1])
    return np.stack([scale_image(frame, factor) for frame in frames])
