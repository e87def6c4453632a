"""Drawing on uint8 RGB arrays: pure functions, no state, no plotting library.

Token masks stay at patch resolution ((h, w) per frame) until drawn, and are upsampled
with nearest (``np.repeat``), so every patch is a crisp block of pixels. Images are
``(H, W, 3)`` uint8; a frame of H x W pixels with an (h, w) mask has patches of H/h x W/w
pixels (both must divide). Text uses Pillow's default font.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

GREY = 128
DIM = 0.7  # how far a dropped patch is pulled towards grey
BACKGROUND = 255
TEXT = (20, 20, 20)
# Colour ramp for heatmaps: dark blue -> purple -> red -> orange -> pale yellow (anchors, 0..1).
RAMP = np.array([[0, 0, 64], [100, 20, 140], [200, 40, 60], [250, 140, 20], [252, 240, 160]], np.float64)


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")


def upsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) patch-level array -> (H, W) by nearest (each patch a block of H/h x W/w)."""
    rows, cols = mask.shape[:2]
    if height % rows or width % cols:
        raise ValueError(f"a {height}x{width} image is not a whole number of {rows}x{cols} patches")
    return np.repeat(np.repeat(mask, height // rows, axis=0), width // cols, axis=1)


def scale_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge ``image`` (H, W, ...) by an integer ``factor``, nearest (crisp patches)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def denormalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float (C, T, H, W) -> uint8 (T, H, W, 3): the frames the model saw."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    pixels = (video.detach().float().cpu() * std_t + mean_t) * 255.0
    pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()  # (C, T, H, W) -> (T, H, W, C)


def dim_dropped(frame: np.ndarray, keep: np.ndarray, strength: float = DIM, grey: int = GREY) -> np.ndarray:
    """Pull the pixels of dropped patches (``keep`` (h, w) False) towards grey; kept ones unchanged.

    A dropped pixel becomes ``round((1 - strength) * value + strength * grey)``.
    """
    _check_image(frame, "frame")
    keep_px = upsample(keep.astype(bool), *frame.shape[:2])  # (H, W)
    dimmed = np.rint((1.0 - strength) * frame.astype(np.float64) + strength * grey).astype(np.uint8)
    return np.where(keep_px[..., None], frame, dimmed)


def group_colour(group: int) -> tuple[int, int, int]:
    """A saturated colour per group id, hues spread by the golden ratio (neighbours differ)."""
    hue = (group * 0.6180339887) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def outline_groups(frame: np.ndarray, slot: np.ndarray, merged: np.ndarray, width: int = 1) -> np.ndarray:
    """Outline each merged group of patches in its own colour.

    ``slot`` (h, w): the token holding each patch (-1 dropped); ``merged`` (h, w): the patch
    shares its token. Along every side of a merged patch whose neighbour belongs to another
    token (or lies outside the frame), the ``width`` pixels inside the patch take the
    group's colour (``group_colour(slot)``). Other pixels are unchanged.
    """
    _check_image(frame, "frame")
    rows, cols = slot.shape
    height, width_px = frame.shape[:2]
    ph, pw = height // rows, width_px // cols
    if height % rows or width_px % cols:
        raise ValueError(f"a {height}x{width_px} frame is not a whole number of {rows}x{cols} patches")
    line = max(1, min(width, ph // 2, pw // 2))
    out = frame.copy()
    padded = np.pad(slot, 1, constant_values=-2)  # (h+2, w+2): outside differs from every token
    for r, c in zip(*np.nonzero(merged)):
        colour = group_colour(int(slot[r, c]))
        top, left = r * ph, c * pw
        mine = slot[r, c]
        if padded[r, c + 1] != mine:  # neighbour above
            out[top:top + line, left:left + pw] = colour
        if padded[r + 2, c + 1] != mine:  # below
            out[top + ph - line:top + ph, left:left + pw] = colour
        if padded[r + 1, c] != mine:  # left
            out[top:top + ph, left:left + line] = colour
        if padded[r + 1, c + 2] != mine:  # right
            out[top:top + ph, left + pw - line:left + pw] = colour
    return out


def heat_colours(heat: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
                 missing: int = GREY) -> np.ndarray:
    """(h, w) float (NaN = no value) -> (h, w, 3) uint8 along ``RAMP``; NaN becomes grey.

    ``vmin``/``vmax`` default to the finite values' range (a constant map is mid-ramp).
    """
    finite = np.isfinite(heat)
    values = heat[finite]
    lo = vmin if vmin is not None else (float(values.min()) if values.size else 0.0)
    hi = vmax if vmax is not None else (float(values.max()) if values.size else 1.0)
    span = hi - lo
    norm = np.full(heat.shape, 0.5) if span <= 0 else (np.nan_to_num(heat, nan=lo) - lo) / span
    position = np.clip(norm, 0.0, 1.0) * (len(RAMP) - 1)
    index = np.minimum(position.astype(int), len(RAMP) - 2)
    frac = (position - index)[..., None]
    colours = RAMP[index] * (1.0 - frac) + RAMP[index + 1] * frac  # (h, w, 3)
    colours = np.rint(colours).astype(np.uint8)
    colours[~finite] = missing
    return colours


def blend_heatmap(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.6, vmin: Optional[float] = None,
                  vmax: Optional[float] = None) -> np.ndarray:
    """Blend the (h, w) heatmap (nearest-upsampled patches) over ``frame``: alpha x colour +
    (1 - alpha) x pixel. Patches without a value (NaN) are greyed like dropped ones."""
    _check_image(frame, "frame")
    scored = np.isfinite(heat)
    colours = upsample(heat_colours(heat, vmin, vmax), *frame.shape[:2])  # (H, W, 3)
    blended = np.rint(alpha * colours + (1.0 - alpha) * frame.astype(np.float64)).astype(np.uint8)
    blended = np.where(upsample(scored, *frame.shape[:2])[..., None], blended, frame)
    return dim_dropped(blended, scored)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def text_height(lines: int = 1) -> int:
    """Pixels a strip of ``lines`` lines of the default font takes (with margins)."""
    box = _font().getbbox("Ag")
    return lines * (box[3] - box[1] + 4) + 4


def text_strip(lines: Sequence[str], width: int, background: int = BACKGROUND) -> np.ndarray:
    """(text_height(len(lines)), width, 3) uint8 strip with ``lines`` left-aligned."""
    height = text_height(len(lines))
    image = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(image)
    step = (height - 4) // max(len(lines), 1)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * step), line, fill=TEXT, font=_font())
    return np.asarray(image)


def fit_text(text: str, width: int) -> str:
    """``text``, shortened with an ellipsis until the default font fits it in ``width`` pixels."""
    font = _font()
    while len(text) > 1 and font.getlength(text) > width - 6:
        text = text[:-2] + "…"
    return text


def with_caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``image`` with a caption strip below it."""
    _check_image(image)
    return np.concatenate([image, text_strip(lines, image.shape[1])], axis=0)


def tile_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, background: int = BACKGROUND) -> np.ndarray:
    """Equal-sized (H, W, 3) tiles laid out row by row with ``gap`` pixels between them."""
    if not rows or not rows[0]:
        raise ValueError("tile_grid needs at least one tile")
    height, width = rows[0][0].shape[:2]
    cols = max(len(row) for row in rows)
    out = np.full((len(rows) * (height + gap) - gap, cols * (width + gap) - gap, 3), background, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if tile.shape[:2] != (height, width):
                raise ValueError(f"tile ({i}, {j}) is {tile.shape[:2]}, expected {(height, width)}")
            top, left = i * (height + gap), j * (width + gap)
            out[top:top + height, left:left + width] = tile
    return out

