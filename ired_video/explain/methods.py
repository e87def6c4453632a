r"""Explanation methods: one function per method, each clip -> importance per patch (B, T, N).

``interpreter`` (IA-RED²'s keep probabilities, product over stages), ``attention`` (the
class token's last-block attention), ``rollout`` (Abnar & Zuidema, divided blocks as two
factors), ``interaction`` (the first-order patch-interaction indicator) and ``random`` (the
control). Explanations are always of the unreduced model (``capture.explain_mode``).

Design notes: docs/design.md, "ired_video.explain.methods".
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ired_video.explain.capture import AttentionCall, attention_calls, explain_mode
from ired_video.explain.interaction import interaction_indicator
from ired_video.reducers.iared2 import IARED2

Method = Callable[[nn.Module, Tensor, Optional[Tensor]], Tensor]


class MissingInterpreter(ValueError):
    """The model has no IA-RED² interpreter to explain with."""


def _geometry(model: nn.Module, video: Tensor) -> tuple[int, int, int]:
    patch = model.config.patch_size
    return video.shape[0], video.shape[2], (video.shape[3] // patch) * (video.shape[4] // patch)


def recorded_attention(model: nn.Module, video: Tensor) -> list[AttentionCall]:
    """Every attention call of the unreduced model on ``video``, in order."""
    with explain_mode(model), torch.no_grad(), attention_calls(model) as calls:
        model(video)
    return calls


def class_attention(model: nn.Module, video: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """(B, T, N) head-mean class-token attention of the last block (``target`` unused)."""
    batch, frames, num_patches = _geometry(model, video)
    last = recorded_attention(model, video)[-1]
    cls_row = last.probs[:, :, 0, 1:].mean(dim=1)  # (G, L-1)
    return cls_row.reshape(batch, frames, num_patches)  # (B*T, N) or (B, T*N) -> (B, T, N)


def rollout_matrices(calls: list[AttentionCall], batch: int, frames: int, num_patches: int) -> list[Tensor]:
    """Per attention call, its (B, 1+T*N, 1+T*N) head-mean map on [CLS, patches (t*N+n)]."""
    size = 1 + frames * num_patches
    mats = []
    for call in calls:
        attn = call.probs.mean(dim=1)  # (G, L, L) head mean
        full = torch.zeros(batch, size, size, dtype=attn.dtype, device=attn.device)
        kind = call.site.kind
        if kind == "joint":
            full = attn.reshape(batch, size, size)
        elif kind == "temporal":
            per = attn.reshape(batch, num_patches, frames, frames)  # (B, N, T, T)
            index = 1 + torch.arange(frames, device=attn.device)[:, None] * num_patches \
                + torch.arange(num_patches, device=attn.device)[None, :]  # (T, N) token index of (t, n)
            rows = index.T[:, :, None].expand(num_patches, frames, frames)  # (N, T, T): query (t, n)
            cols = index.T[:, None, :].expand(num_patches, frames, frames)  # (N, T, T): key (t', n)
            full[:, rows, cols] = per
            full[:, 0, 0] = 1.0
        else:  # spatial / space_only: per frame, class token first
            per = attn.reshape(batch, frames, 1 + num_patches, 1 + num_patches)  # (B, T, 1+N, 1+N)
            for t in range(frames):
                idx = torch.cat([torch.zeros(1, dtype=torch.long),
                                 1 + t * num_patches + torch.arange(num_patches)]).to(attn.device)
                block = per[:, t]  # (B, 1+N, 1+N)
                full[:, idx[1:, None], idx[None, :]] = block[:, 1:]
                full[:, 0, idx] += block[:, 0] / frames
        mats.append(full)
    return mats


def rollout_from_calls(calls: list[AttentionCall], batch: int, frames: int, num_patches: int) -> Tensor:
    """(B, T, N): the class token's row of prod (A + I)/2 over the calls, patches only."""
    size = 1 + frames * num_patches
    eye = torch.eye(size, dtype=torch.float64, device=calls[0].probs.device)
    rollout = eye.expand(batch, size, size)
    for mat in rollout_matrices(calls, batch, frames, num_patches):
        rollout = (0.5 * mat.double() + 0.5 * eye) @ rollout
    return rollout[:, 0, 1:].reshape(batch, frames, num_patches).float()  # (B, T*N) -> (B, T, N)


def attention_rollout(model: nn.Module, video: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """(B, T, N) attention rollout of the class token (``target`` unused)."""
    return rollout_from_calls(recorded_attention(model, video), *_geometry(model, video))


def interaction(model: nn.Module, video: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """(B, T, N) first-order interaction indicator, blocks and kinds summed."""
    return interaction_indicator(model, video, target, role="both").total().float()


def interpreter(model: nn.Module, video: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """(B, T, N) product of the model's IA-RED² keep probabilities on the unreduced state."""
    stages = {int(k): r for k, r in model.reducers.items() if isinstance(r, IARED2)}
    if not stages:
        raise MissingInterpreter(
            "the model has no IA-RED² interpreter (reducer 'iared2'): explain a checkpoint trained with "
            "reducer.name=iared2, or let tools/bench_explain.py train one on the frozen model")
    probs = []
    handles = []
    for index, stage in stages.items():
        def score(module: nn.Module, args: tuple, stage: IARED2 = stage) -> None:
            state = args[0]
            cls = state.cls if state.cls.shape[1] == state.num_frames else state.cls.mean(dim=1, keepdim=True)
            probs.append(stage.interpreter(cls, state.x))  # (B, T, N)

        handles.append(model.blocks[index].register_forward_pre_hook(score))
    try:
        with explain_mode(model), torch.no_grad():
            model(video)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(probs).prod(dim=0)


def random_importance(model: nn.Module, video: Tensor, target: Optional[Tensor] = None, seed: int = 0) -> Tensor:
    """(B, T, N) uniform noise from a fixed seed: the control."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(_geometry(model, video), generator=generator).to(video.device)


METHODS: dict[str, Method] = {
    "interpreter": interpreter,
    "attention": class_attention,
    "rollout": attention_rollout,
    "interaction": interaction,
    "random": random_importance,
}


def explain(model: nn.Module, video: Tensor, method: str, target: Optional[Tensor] = None) -> Tensor:
    """(B, C, T, H, W) -> (B, T, N) importance of every patch by ``method`` (see METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[method](model, video, target)
