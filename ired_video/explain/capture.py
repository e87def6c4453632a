"""Attention calls of a model, seen from outside: record them and add a logit bias to them.

Every explanation method here reads or perturbs the attention of an *unreduced* model.
``explain_mode`` switches a model into that setting for the length of a ``with`` block
(reducers set aside, attention on the explicit path, eval mode) and restores it after;
``attention_calls`` registers hooks on every attention module that

Design notes: docs/design.md, "ired_video.explain.capture".
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ired_video.models.attention import Attention, AttentionProbe
from ired_video.models.timesformer import evaluating

KINDS = ("temporal", "spatial", "space_only", "joint")


@dataclass(frozen=True)
class Site:
    """One attention module of a model: its block and what it attends over."""

    block: int
    kind: str


@dataclass
class AttentionCall:
    """What one attention call used: probabilities (G, heads, L, L) and the bias we added."""

    site: Site
    probs: Tensor
    extra_bias: Optional[Tensor] = None


BiasFn = Callable[[Site, int, int, Tensor], Optional[Tensor]]


def attention_sites(model: nn.Module) -> list[tuple[Site, Attention]]:
    """Every attention module of a TimeSformer, in forward order (temporal before spatial)."""
    kind = {"divided_space_time": "spatial", "joint_space_time": "joint", "space_only": "space_only"}[
        model.config.attention_type]
    sites = []
    for index, block in enumerate(model.blocks):
        if hasattr(block, "temporal_attn"):
            sites.append((Site(index, "temporal"), block.temporal_attn))
        sites.append((Site(index, kind), block.attn))
    return sites


@contextmanager
def explain_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Unreduced, explicit-attention, eval-mode ``model`` inside the block; restored after."""
    fused = bool(model.config.fused_attention)
    with evaluating(model), model.reducers_set_aside():
        if fused:
            model.set_fused_attention(False)
        try:
            yield model
        finally:
            if fused:
                model.set_fused_attention(True)


def _split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Optional[Tensor], Optional[Any]]:
    """Attention.forward(x, bias=None, probe=None) arguments, however they were passed."""
    x = args[0]
    bias = args[1] if len(args) > 1 else kwargs.get("bias")
    probe = args[2] if len(args) > 2 else kwargs.get("probe")
    return x, bias, probe


@contextmanager
def attention_calls(model: nn.Module, add_bias: Optional[BiasFn] = None) -> Iterator[list[AttentionCall]]:
    """Record every attention call of ``model`` (use inside ``explain_mode``).

    ``add_bias(site, groups, length, x)`` may return a (G, 1, L, L) tensor added to that
    call's attention logits (or None). The list fills in call order during the forward.
    """
    calls: list[AttentionCall] = []
    handles = []
    for site, module in attention_sites(model):
        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site = site
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            x, bias, probe = _split_call(args, kwargs)
            probe = probe if probe is not None else AttentionProbe()
            probe.want_probs = True
            extra = add_bias(site, x.shape[0], x.shape[1], x) if add_bias is not None else None
            if extra is not None:
                bias = extra if bias is None else bias + extra
            calls.append(AttentionCall(site, probs=torch.empty(0), extra_bias=extra))
            window = kwargs.get("window")  # a gathered field window: applied as a mask (probs wanted)
            return (x,), {"bias": bias, "probe": probe, **({} if window is None else {"window": window})}

        def after(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            calls[-1].probs = kwargs["probe"].probs

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def to_patch_layout(values: Tensor, kind: str, batch: int, frames: int, num_patches: int) -> Tensor:
    """(G, ..., L, L) per-call edge values -> the site's patch layout.

    temporal: (B, N, T, T); spatial / space_only: (B, T, 1+N, 1+N); joint: (B, 1+T*N, 1+T*N).
    Rows are queries (who reads), columns keys (who is read).
    """
    length = values.shape[-1]
    if kind == "temporal":
        return values.reshape(batch, num_patches, length, length)  # (B*N, T, T) -> (B, N, T, T)
    if kind in ("spatial", "space_only"):
        return values.reshape(batch, frames, length, length)  # (B*T, 1+N, 1+N) -> (B, T, 1+N, 1+N)
    if kind == "joint":
        return values.reshape(batch, length, length)  # (B, 1+T*N, 1+T*N)
    raise ValueError(f"unknown attention site kind {kind!r}; expected one of {KINDS}")
