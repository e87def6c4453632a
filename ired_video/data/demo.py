"""A small generated dataset in the official Kinetics layout, with ground-truth masks.

Each video shows one target shape (circle, square, triangle) crossing the frame among
distractors on a textured background; the class is ``"<shape> moving <direction>"``.
Four tasks (``TASKS``): ``easy`` (6 classes, left/right; a large vivid target with a motion
trail among slower muted distractors of other shapes: the default), ``moderate`` (easy's look
with 12 classes, left/right/up/down: the plain demo model does not saturate it), ``medium``
and ``hard`` (12 classes; distractors of the target shapes; ``hard``: a target about
one 8-px patch wide at 64 px, coloured like the distractors, no trail, always panning
background: only its steady, fast motion tells it apart). Written under ``out_dir``,
deterministic from ``seed``: ``train/`` and ``val/`` class folders of H.264 MP4s with a
``.npz`` mask per video (``mask`` bool (T, H, W) on the target's pixels), Kinetics CSVs, list
files, ``classes.txt`` and the ``data_config.yaml`` to train on it.

Design notes: docs/design.md, "ired_video.data.demo".
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import yaml
from tqdm import tqdm

from ired_video.config import DataConfig, to_dict
from ired_video.data.video_io import write_video

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right")
DISTRACTOR_SHAPES = ("diamond", "cross")
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class TaskSpec:
    """How one demo task draws its videos (``easy`` has its own renderer, kept as it was).

    Sizes are in 8-px patches of the 64-px model input (the short side scaled to 64);
    speeds in those patches per frame. ``actor_vivid``: the target has a saturated colour
    and the distractors muted ones (else all share one colour distribution).
    """

    directions: tuple[str, ...]
    actor_patches: tuple[float, float]  # target diameter range
    actor_speed: tuple[float, float]  # target speed range (steady, straight)
    distractors: tuple[int, int]  # count range, inclusive
    distractor_speed: float  # random-walk step scale (well under the target's speed)
    actor_vivid: bool
    trail: bool  # the easy task's fading copies behind the target
    pan: tuple[float, float]  # background pan speed range (px of the video per frame), each axis
    static_share: float  # share of videos whose background does not pan
    hue_coded: bool = False  # the target's hue family names its shape (as in easy; implies vivid)
    distractor_shapes: tuple[str, ...] = SHAPES  # SHAPES: distractors look like targets


TASKS: dict[str, Optional[TaskSpec]] = {
    "easy": None,
    "moderate": TaskSpec(("down", "left", "right", "up"), (2.3, 2.9), (0.12, 0.2), (1, 3), 0.015,
                         True, True, (0.2, 0.6), 0.3, hue_coded=True, distractor_shapes=DISTRACTOR_SHAPES),
    "medium": TaskSpec(("down", "left", "right", "up"), (1.6, 1.9), (0.12, 0.2), (2, 3), 0.015,
                       True, False, (0.2, 0.6), 0.3),
    "hard": TaskSpec(("down", "left", "right", "up"), (1.0, 1.2), (0.12, 0.2), (2, 4), 0.015,
                     False, False, (0.3, 0.8), 0.0),
}


def _task_spec(task: str) -> Optional[TaskSpec]:
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")
    return TASKS[task]


def demo_class_names(task: str = "easy") -> list[str]:
    """The task's class names in label order (sorted, as every annotation form sorts them):
    6 for ``easy``, 12 for the others."""
    spec = _task_spec(task)
    directions = DIRECTIONS if spec is None else spec.directions
    return sorted(f"{s} moving {d}" for s in SHAPES for d in directions)


def class_name_parts(names: Sequence[str]) -> Optional[list[tuple[str, str]]]:
    """(shape, direction) of each ``"<shape> moving <direction>"`` class name; None when any
    name has another form."""
    parts = [name.split(" moving ") for name in names]
    if not parts or any(len(part) != 2 for part in parts):
        return None
    return [(shape, direction) for shape, direction in parts]


def label_factor_shares(predicted: Sequence[int], truth: Sequence[int], names: Sequence[str]
                        ) -> Optional[dict[str, float]]:
    """Share (0-1) of predictions whose class has the true class's shape, and its direction,
    for demo-style class names (indices into ``names``); None for other names or no predictions."""
    parts = class_name_parts(names)
    if parts is None or not truth:
        return None
    return {factor: sum(parts[p][i] == parts[t][i] for p, t in zip(predicted, truth)) / len(truth)
            for i, factor in enumerate(("shape", "direction"))}


def demo_data_config(fps: int = 20, height: int = 96, task: str = "easy") -> DataConfig:
    """DataConfig for the demo videos: 8 frames 4 apart at the video rate, 64 px crops,
    no flips (a flip turns "moving left" into "moving right")."""
    short = min(height, 80)
    return DataConfig(num_frames=8, sampling_rate=4, target_fps=float(fps), crop_size=64,
                      train_short_side=(64, max(64, short)), test_short_side=64,
                      class_names=demo_class_names(task), flip=False)


def shape_mask(kind: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray
               ) -> np.ndarray:
    """Boolean (H, W) mask of a shape of radius ``r`` centred at (cx, cy)."""
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if kind == "triangle":  # apex up, base at cy + r/2
        return (dy >= -r) & (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) * 0.577)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))
    raise ValueError(f"unknown shape {kind!r}")


# Each target shape has its own hue family (red, green, blue): appearance a tiny model can
# pick up in minutes. Distractors are muted (low saturation), so only the target is vivid.
SHAPE_HUES = {"circle": 0.0, "square": 1 / 3, "triangle": 2 / 3}


# A motion-blur trail: copies of the target (offset behind it in radii, opacity), oldest
# first. Direction then shows within each frame as well as across frames.
TRAIL = ((1.5, 0.2), (1.0, 0.35), (0.5, 0.5))


def _hsv_to_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    """One HSV colour (each in [0, 1], hue wrapping) -> RGB floats in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + (hue % 1.0) * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return 255 * rgb


def _target_colour(rng: np.random.Generator, shape: str) -> np.ndarray:
    """A vivid colour of the shape's hue family (hue jittered by up to 1/20 of a turn)."""
    return _hsv_to_rgb(SHAPE_HUES[shape] + rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.0),
                       rng.uniform(0.85, 1.0))


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """A muted colour of any hue: saturation at most 0.3."""
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.35, 1.0))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour blobs plus fine grain, (height, width, 3) float, mid-grey range."""
    coarse = rng.uniform(70, 180, (height // 8 + 2, width // 8 + 2, 3))
    rows = np.linspace(0, coarse.shape[0] - 1.001, height)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    smooth = (coarse[r0][:, c0] * (1 - fr) * (1 - fc) + coarse[r0 + 1][:, c0] * fr * (1 - fc)
              + coarse[r0][:, c0 + 1] * (1 - fr) * fc + coarse[r0 + 1][:, c0 + 1] * fr * fc)
    return smooth + rng.normal(0, 6, (height, width, 1))


@dataclass
class _Spec:
    """Everything needed to render one video (picklable for worker processes)."""

    path: str
    seed: int
    shape: str
    direction: str
    label: int
    width: int
    height: int
    num_frames: int
    fps: int
    task: str = "easy"


def render_video(spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (T, H, W, 3), target mask bool (T, H, W)) for one spec."""
    task = _task_spec(spec.task)
    if task is not None:
        return _render_task_video(spec, task)
    rng = np.random.default_rng(spec.seed)
    t_count, h, w = spec.num_frames, spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) pixel coordinates each
    pan = 0.0 if rng.random() < 0.3 else rng.uniform(-0.5, 0.5)  # background px / frame
    margin = int(abs(pan) * t_count) + 2
    background = _background(rng, h, w + margin)
    radius = rng.uniform(0.13, 0.17) * min(h, w) * 1.1  # about 2.5 patches across at 64 px
    speed = rng.uniform(0.6, 1.0) * (w - 2 * radius - 4) / (t_count - 1)
    sign = 1.0 if spec.direction == "right" else -1.0
    travel = speed * (t_count - 1)
    x0 = rng.uniform(radius + 2, w - radius - 2 - travel)
    x0 = x0 if sign > 0 else w - x0
    y0 = rng.uniform(radius + 2, h - radius - 2)
    wobble, phase = rng.uniform(0, 2), rng.uniform(0, 2 * np.pi)
    target_colour = _target_colour(rng, spec.shape)
    distractors = []
    for _ in range(int(rng.integers(1, 4))):
        moving = rng.random() < 0.6
        distractors.append({
            "kind": DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))],
            "pos": np.array([rng.uniform(0, w), rng.uniform(0, h)]),
            "vel": rng.normal(0, 0.25, 2) if moving else np.zeros(2),  # drifts, far slower than the target
            "moving": moving, "r": radius * rng.uniform(0.8, 1.2), "colour": _distractor_colour(rng)})
    frames = np.empty((t_count, h, w, 3), np.uint8)
    masks = np.empty((t_count, h, w), bool)
    for t in range(t_count):
        offset = int(round(margin / 2 + pan * (t - t_count / 2)))
        offset = min(max(offset, 0), margin)
        image = background[:, offset:offset + w].copy()
        for d in distractors:
            if d["moving"]:  # slow random walk, bouncing off the borders
                d["vel"] = 0.9 * d["vel"] + rng.normal(0, 0.1, 2)
                d["pos"] = d["pos"] + d["vel"]
                for axis, size in ((0, w), (1, h)):
                    if not 0 <= d["pos"][axis] <= size:
                        d["vel"][axis] *= -1
                        d["pos"][axis] = min(max(d["pos"][axis], 0), size)
            image[shape_mask(d["kind"], d["pos"][0], d["pos"][1], d["r"], yy, xx)] = d["colour"]
        cx = x0 + sign * speed * t
        cy = y0 + wobble * np.sin(phase + t / 4)
        for step, alpha in TRAIL:  # fading copies behind the target, oldest first
            ghost = shape_mask(spec.shape, cx - sign * step * radius, cy, radius, yy, xx)
            image[ghost] = (1 - alpha) * image[ghost] + alpha * target_colour
        masks[t] = shape_mask(spec.shape, cx, cy, radius, yy, xx)
        image[masks[t]] = target_colour
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, masks


# unit motion of the actor per direction name, in image axes (x right, y down)
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _shape_colour(rng: np.random.Generator, vivid: bool) -> np.ndarray:
    """Any hue; saturated (0.8-1) if ``vivid``, else anywhere from muted to saturated."""
    if vivid:
        return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0))


def _render_task_video(spec: _Spec, task: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """``moderate``/``medium``/``hard`` video: the target crosses the centre square of the
    frame in a straight line at a steady speed; distractors (of the target shapes unless the
    task says otherwise) random-walk slowly or sit still; the background pans in both axes.
    Returns (frames, target mask)."""
    rng = np.random.default_rng(spec.seed)
    t_count, h, w = spec.num_frames, spec.height, spec.width
    patch = min(h, w) / 8  # video px per 8-px patch of the 64-px model input
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) pixel coordinates each
    static = rng.random() < task.static_share
    pan = np.zeros(2) if static else rng.uniform(*task.pan, 2) * rng.choice([-1.0, 1.0], 2)
    margin = (np.abs(pan) * t_count).astype(int) + 2  # (x, y) background border
    background = _background(rng, h + margin[1], w + margin[0])
    radius = rng.uniform(*task.actor_patches) * patch / 2
    speed = rng.uniform(*task.actor_speed) * patch
    ux, uy = DIRECTION_VECTORS[spec.direction]
    travel = speed * (t_count - 1)
    side = min(h, w)  # the target stays inside the centred square the evaluation crop sees
    lo_x, lo_y = (w - side) / 2 + radius + 1, (h - side) / 2 + radius + 1
    hi_x, hi_y = lo_x + side - 2 * radius - 2, lo_y + side - 2 * radius - 2
    travel = min(travel, side - 2 * radius - 2)
    speed = travel / (t_count - 1)
    along = rng.uniform(0, side - 2 * radius - 2 - travel)  # start offset along the path
    x0 = rng.uniform(lo_x, hi_x) if ux == 0 else (lo_x + along if ux > 0 else hi_x - along)
    y0 = rng.uniform(lo_y, hi_y) if uy == 0 else (lo_y + along if uy > 0 else hi_y - along)
    target_colour = _target_colour(rng, spec.shape) if task.hue_coded else _shape_colour(rng, task.actor_vivid)
    distractors = []
    for _ in range(int(rng.integers(task.distractors[0], task.distractors[1] + 1))):
        distractors.append({
            "kind": task.distractor_shapes[int(rng.integers(len(task.distractor_shapes)))],
            "pos": np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)]),
            "vel": np.zeros(2), "moving": rng.random() < 0.7,
            "r": rng.uniform(*task.actor_patches) * patch / 2,
            "colour": _distractor_colour(rng) if task.actor_vivid else _shape_colour(rng, False)})
    frames = np.empty((t_count, h, w, 3), np.uint8)
    masks = np.empty((t_count, h, w), bool)
    step = task.distractor_speed * patch
    for t in range(t_count):
        offset = np.clip(np.round(margin / 2 + pan * (t - t_count / 2)).astype(int), 0, margin)  # (x, y)
        image = background[offset[1]:offset[1] + h, offset[0]:offset[0] + w].copy()
        for d in distractors:
            if d["moving"]:  # slow random walk, bouncing off the centred square's borders
                d["vel"] = 0.8 * d["vel"] + rng.normal(0, step, 2)
                d["pos"] = d["pos"] + d["vel"]
                for axis, (lo, hi) in enumerate(((lo_x, hi_x), (lo_y, hi_y))):
                    if not lo <= d["pos"][axis] <= hi:
                        d["vel"][axis] *= -1
                        d["pos"][axis] = min(max(d["pos"][axis], lo), hi)
            image[shape_mask(d["kind"], d["pos"][0], d["pos"][1], d["r"], yy, xx)] = d["colour"]
        cx, cy = x0 + ux * speed * t, y0 + uy * speed * t
        if task.trail:
            for back, alpha in TRAIL:
                ghost = shape_mask(spec.shape, cx - ux * back * radius, cy - uy * back * radius, radius, yy, xx)
                image[ghost] = (1 - alpha) * image[ghost] + alpha * target_colour
        masks[t] = shape_mask(spec.shape, cx, cy, radius, yy, xx)
        image[masks[t]] = target_colour
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, masks


def _write_one(spec: _Spec) -> None:
    frames, masks = render_video(spec)
    write_video(spec.path, frames, spec.fps, crf=18, threads=1)
    np.savez_compressed(os.path.splitext(spec.path)[0] + ".npz", mask=masks, label=spec.label,
                        class_name=f"{spec.shape} moving {spec.direction}", shape=spec.shape,
                        direction=spec.direction, fps=float(spec.fps))


def _youtube_ids(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` unique 11-character ids; every 7th starts with ``-``."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        chars = [ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), 11)]
        if len(ids) % 7 == 3:
            chars[0] = "-"
        new = "".join(chars)
        if new not in seen:
            seen.add(new)
            ids.append(new)
    return ids


class DemoDataset(NamedTuple):
    """Where the parts of a generated demo dataset are."""

    root: Path
    class_names: list[str]
    train_list: Path
    val_list: Path
    kinetics_train: Path
    kinetics_val: Path
    data_config: DataConfig


def make_demo_dataset(out_dir: Union[str, os.PathLike], videos_per_class: int = 32,
                      seed: int = 0, val_fraction: float = 0.25, width: int = 128,
                      height: int = 96, num_frames: int = 40, fps: int = 20,
                      jobs: int = 1, progress: bool = True, task: str = "easy") -> DemoDataset:
    """Write the demo dataset of ``task`` (see module doc) and return where its parts are.

    ``videos_per_class`` videos of each class (6 classes easy, 12 the others), ``val_fraction`` of
    them (at least one when there are two or more) in ``val``. ``jobs`` worker processes
    encode in parallel; the output does not depend on it.
    """
    broken = [rule for rule, holds in {
        f"videos_per_class >= 1 (got {videos_per_class})": videos_per_class >= 1,
        f"num_frames >= 2 (got {num_frames})": num_frames >= 2,
        f"width and height >= 32 (got {width}x{height})": min(width, height) >= 32,
        f"fps >= 1 (got {fps})": fps >= 1,
        f"jobs >= 1 (got {jobs})": jobs >= 1,
        f"val_fraction in [0, 1) (got {val_fraction})": 0.0 <= val_fraction < 1.0,
    }.items() if not holds]
    if broken:
        raise ValueError("need " + "; ".join(broken))
    root = Path(out_dir)
    names = demo_class_names(task)
    specs, rows = _plan_videos(root, names, videos_per_class, seed, val_fraction, (width, height, num_frames, fps),
                               task)
    _encode(specs, jobs, progress)
    paths = {split: _write_annotations(root, split, rows) for split in ("train", "val")}
    (root / "classes.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    cfg = demo_data_config(fps, height, task)
    (root / "data_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False),
                                           encoding="utf-8")
    return DemoDataset(root, names, paths["train"][0], paths["val"][0], paths["train"][1],
                       paths["val"][1], cfg)


def _plan_videos(root: Path, names: list[str], videos_per_class: int, seed: int, val_fraction: float,
                 geometry: tuple[int, int, int, int], task: str = "easy") -> tuple[list[_Spec], list[tuple]]:
    """Every video to write (its spec) and its annotation row (split, path, class, id,
    start, label), all drawn from ``seed``; the class folders are created."""
    width, height, num_frames, fps = geometry
    rng = np.random.default_rng(seed)
    ids = _youtube_ids(rng, len(names) * videos_per_class)
    n_val = min(videos_per_class - 1, max(1, round(videos_per_class * val_fraction))) \
        if videos_per_class > 1 else 0
    specs, rows = [], []
    for label, name in enumerate(names):
        shape, _, direction = name.split(" ")
        for i in range(videos_per_class):
            split = "val" if i < n_val else "train"
            vid = ids[label * videos_per_class + i]
            start = int(rng.integers(0, 290))
            rel = f"{split}/{name}/{vid}_{start:06d}_{start + 10:06d}.mp4"
            specs.append(_Spec(str(root / rel), int(rng.integers(2**31)), shape, direction,
                               label, width, height, num_frames, fps, task))
            rows.append((split, rel, name, vid, start, label))
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
    return specs, rows


def _encode(specs: list[_Spec], jobs: int, progress: bool) -> None:
    """Render and encode every video, in ``jobs`` processes."""
    bar = tqdm(total=len(specs), desc="demo videos", unit="video", disable=not progress)
    if jobs > 1:
        with get_context("fork").Pool(jobs) as pool:
            for _ in pool.imap_unordered(_write_one, specs):
                bar.update()
    else:
        for spec in specs:
            _write_one(spec)
            bar.update()
    bar.close()


def _write_annotations(root: Path, split: str, rows: list[tuple]) -> tuple[Path, Path]:
    """The list file and the Kinetics CSV of one split."""
    kinetics = root / f"kinetics_{split}.csv"
    with open(kinetics, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        for s, _, name, vid, start, _ in rows:
            if s == split:
                writer.writerow([name, vid, start, start + 10, split, 0])
    listing = root / f"{split}.csv"
    listing.write_text("".join(f"{rel} {label}\n" for s, rel, _, _, _, label in rows if s == split),
                       encoding="utf-8")
    return listing, kinetics


def load_mask(video_path: Union[str, os.PathLike]) -> np.ndarray:
    """The bool (T, H, W) target mask saved next to a demo video."""
    with np.load(os.path.splitext(os.fspath(video_path))[0] + ".npz") as data:
        return data["mask"]


__all__ = ["DIRECTION_VECTORS", "TASKS", "DemoDataset", "TaskSpec", "demo_class_names", "demo_data_config", "load_mask",
           "make_demo_dataset", "render_video", "shape_mask"]
