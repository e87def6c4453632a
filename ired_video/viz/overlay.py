"""Frames x stages overlays: which patches each stage kept, merged groups, a heatmap, a caption.

Columns: the input frame, the heatmap (if any), then one column per reducer stage with
the patches that stage dropped dimmed towards grey and its merged groups outlined, one
colour per group. :func:`overlay_frames` makes one image per sampled frame (the columns
side by side, for a video); :func:`overlay_grid` stacks the frames as rows (the figure
style of the IA-RED² paper). Inputs are the uint8 frames the model saw and the per-stage
masks of ``ired_video.viz.masks``; nothing here runs a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ired_video.viz.draw import (
    blend_heatmap,
    dim_dropped,
    fit_text,
    outline_groups,
    scale_image,
    text_strip,
    tile_grid,
    with_caption,
)
from ired_video.viz.masks import StageMasks

HEATMAPS = ("auto", "attention", "none")


@dataclass
class Heatmap:
    """(T, h, w) values per patch (NaN = none) and what they are."""

    values: np.ndarray
    label: str


def choose_heatmap(stages: Sequence[StageMasks], attention: Optional[Heatmap], kind: str = "auto"
                   ) -> Optional[Heatmap]:
    """``auto``: the first stage's own scores (IA-RED² keep probability, class attention, ...)
    when the reducer records any, else ``attention``; ``attention``: always it; ``none``."""
    if kind not in HEATMAPS:
        raise ValueError(f"heatmap={kind!r}: expected one of {HEATMAPS}")
    if kind == "none":
        return None
    if kind == "auto":
        for stage in stages:
            if stage.heat_name is not None:
                what = stage.heat_name.replace("_", " ")
                return Heatmap(stage.heat, f"{stage.reducer} {what} @ block {stage.block}")
    return attention


def stage_tile(frame: np.ndarray, stage: StageMasks, t: int) -> np.ndarray:
    """Frame ``t`` as stage ``stage`` left it: dropped patches dimmed, merged groups outlined."""
    tile = dim_dropped(frame, stage.keep[t])
    width = max(1, frame.shape[0] // (stage.keep.shape[1] * 12))  # ~1/12 of a patch
    return outline_groups(tile, stage.slot[t], stage.merged[t], width)


def column_labels(stages: Sequence[StageMasks], heat: Optional[Heatmap]) -> list[str]:
    """Header of every column: input, heatmap, then each stage with its token share."""
    labels = ["input"] + ([heat.label] if heat is not None else [])
    return labels + [f"{s.label}: {s.kept_fraction:.0%}" for s in stages]


def frame_tiles(frame: np.ndarray, t: int, stages: Sequence[StageMasks], heat: Optional[Heatmap],
                scale: int = 1) -> list[np.ndarray]:
    """The tiles of frame ``t``: input, heatmap, stages (each enlarged ``scale`` times first)."""
    frame = scale_image(frame, scale)
    tiles = [frame]
    if heat is not None:
        tiles.append(blend_heatmap(frame, heat.values[t]))
    return tiles + [stage_tile(frame, stage, t) for stage in stages]


def _check(frames: np.ndarray, stages: Sequence[StageMasks], heat: Optional[Heatmap]) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    grids = [s.keep.shape for s in stages] + ([heat.values.shape] if heat is not None else [])
    for shape in grids:
        if shape[0] != frames.shape[0]:
            raise ValueError(f"masks cover {shape[0]} frames, the clip has {frames.shape[0]}")


def _header(labels: Sequence[str], tile_width: int, gap: int) -> np.ndarray:
    strips = [text_strip([fit_text(label, tile_width)], tile_width) for label in labels]
    return tile_grid([strips], gap=gap)


def overlay_frames(frames: np.ndarray, stages: Sequence[StageMasks], heat: Optional[Heatmap] = None,
                   caption: Sequence[str] = (), scale: int = 1, frame_labels: Optional[Sequence[str]] = None,
                   gap: int = 4) -> np.ndarray:
    """(T, H, W, 3) frames -> (T, H', W', 3): per frame, the columns side by side under
    their headers, above the caption (plus that frame's label)."""
    _check(frames, stages, heat)
    out = []
    for t, frame in enumerate(frames):
        tiles = frame_tiles(frame, t, stages, heat, scale)
        row = tile_grid([tiles], gap=gap)
        header = _header(column_labels(stages, heat), tiles[0].shape[1], gap)
        lines = list(caption) + ([frame_labels[t]] if frame_labels is not None else [])
        out.append(with_caption(np.concatenate([header, row], axis=0), lines))
    return np.stack(out)  # (T, H', W', 3)


def overlay_grid(frames: np.ndarray, stages: Sequence[StageMasks], heat: Optional[Heatmap] = None,
                 caption: Sequence[str] = (), scale: int = 1, gap: int = 4) -> np.ndarray:
    """One image: rows = sampled frames, columns = input, heatmap, stages; caption below."""
    _check(frames, stages, heat)
    rows = [frame_tiles(frame, t, stages, heat, scale) for t, frame in enumerate(frames)]
    body = tile_grid(rows, gap=gap)
    header = _header(column_labels(stages, heat), rows[0][0].shape[1], gap)
    spacer = np.full((gap, body.shape[1], 3), 255, np.uint8)
    return with_caption(np.concatenate([header, spacer, body], axis=0), caption)


def caption_lines(label: str, prob: float, gmacs: float, full_gmacs: float,
                  stages: Sequence[StageMasks]) -> list[str]:
    """Caption: the prediction, the GMACs spent (and of the unreduced model), the tokens kept."""
    kept = stages[-1].kept_fraction if stages else 1.0
    share = f" ({gmacs / full_gmacs:.0%})" if full_gmacs > 0 else ""
    return [f"prediction: {label} ({prob:.1%})",
            f"GMACs: {gmacs:.3f} of {full_gmacs:.3f}{share}   tokens kept: {kept:.0%}"]
