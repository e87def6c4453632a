"""The class token's attention in one block, captured during a normal forward pass.

Reducers that record no scores (ToMe, random drop, none) still deserve a heatmap: this
captures the head-mean attention of the class token to every patch token in a block's
(spatial, or joint) attention, recomputed on the explicit path from that attention's own
input, and spreads it over the patches each token stands for. Hooks live only inside the
``with`` block; nothing stays on the model.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
from torch import Tensor, nn

from ired_video.viz.masks import heat_from_tokens


@dataclass
class AttentionCapture:
    """Filled by :func:`capture_class_attention`: the block's input state and its class attention.

    cls_attn: (B, F, K) head-mean attention of the class token to each patch token (per
        frame for divided and space-only blocks, over all tokens for joint blocks).
    pos, slot_of: the state's (B, F, K) positions and (B, F, N') slots at that block.
    """

    block: int
    grid: tuple[int, int] = (0, 0)
    num_frames: int = 0
    cls_attn: Optional[Tensor] = None
    pos: Optional[Tensor] = None
    slot_of: Optional[Tensor] = None
    layout: tuple[int, int, int] = field(default=(0, 0, 0))

    def heat(self, clip: int = 0) -> np.ndarray:
        """(T, h, w) class attention per original patch of clip ``clip`` (NaN where dropped)."""
        if self.cls_attn is None or self.pos is None or self.slot_of is None:
            raise RuntimeError(f"block {self.block} did not run inside capture_class_attention")
        return heat_from_tokens(self.cls_attn[clip], self.pos[clip], self.slot_of[clip], self.grid,
                                self.num_frames)


@contextmanager
def capture_class_attention(model: nn.Module, block: int = -1) -> Iterator[AttentionCapture]:
    """``with capture_class_attention(model) as cap: model(video)``; then ``cap.heat(0)``.

    ``block``: which block (default the last). Costs one extra explicit attention there.
    """
    index = block % len(model.blocks)
    target = model.blocks[index]
    capture = AttentionCapture(block=index)

    def before_block(module: nn.Module, args: tuple[Any, ...]) -> None:
        state = args[0]
        capture.layout = tuple(state.x.shape[:3])  # (B, F, K)
        capture.pos, capture.slot_of = state.pos.detach(), state.slot_of.detach()
        capture.grid, capture.num_frames = state.grid, state.num_frames_in

    def after_attention(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        tokens, bias = args[0], args[1] if len(args) > 1 else None
        _, probs = module.forward_with_attn(tokens, bias)  # (G, heads, 1+L, 1+L)
        cls_row = probs[:, :, 0, 1:].mean(dim=1)  # (G, L) class token over patch tokens
        capture.cls_attn = cls_row.reshape(capture.layout).detach()  # (G, L) -> (B, F, K)

    handles = [target.register_forward_pre_hook(before_block),
               target.attn.register_forward_hook(after_attention)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
