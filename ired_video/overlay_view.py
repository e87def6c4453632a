"""One view of a video rendered as an overlay: decode it as the model's data config says,
run the model (capturing the last block's class attention), and draw every reducer stage's
kept and merged patches, a heatmap and a caption, as video frames and a frames x stages grid."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ired_video.inference import LoadedModel, decode_views, top_k, unreduced_gmacs
from ired_video.viz.attention import capture_class_attention
from ired_video.viz.draw import denormalize
from ired_video.viz.masks import StageMasks, stage_masks_from_info
from ired_video.viz.overlay import Heatmap, caption_lines, choose_heatmap, overlay_frames, overlay_grid


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
