"""Overlays as pure functions of frames and the token state.

``masks``: per-stage keep / merge-group / score masks on the patch grid from a forward
pass's records; ``draw``: drawing on uint8 arrays; ``overlay``: frames x stages layouts;
``attention``: the class token's attention in one block, captured during a forward pass.
"""
from ired_video.viz.attention import AttentionCapture, capture_class_attention
from ired_video.viz.draw import blend_heatmap, denormalize, dim_dropped, outline_groups
from ired_video.viz.masks import StageMasks, stage_masks, stage_masks_from_info
from ired_video.viz.overlay import Heatmap, overlay_frames, overlay_grid

__all__ = ["AttentionCapture", "Heatmap", "StageMasks", "blend_heatmap", "capture_class_attention", "denormalize",
           "dim_dropped", "outline_groups", "overlay_frames", "overlay_grid", "stage_masks", "stage_masks_from_info"]
