"""Multi-head self-attention with a fused path and an explicit path that returns maps, and
a gathered path for responsive-field windows (``ired_video.models.window``).

Parameter names (``qkv``, ``proj``) follow timm's ViT and the official TimeSformer, so
their weights load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ired_video.models.window import SpatialPlan, add_window, gathered_attention


@dataclass
class AttentionProbe:
    """What a caller wants back from one attention call, filled in by that call.

    cls_attn: (G, L) head-mean attention of query 0 (the class token) over all keys.
    keys: (G, L, head_dim) head-mean keys (ToMe's similarity metric).
    probs: (G, heads, L, L) attention probabilities (forces the explicit path).
    logits: (G, heads, L, L) pre-softmax logits, bias included (forces the explicit path).
    """

    want_cls_attn: bool = False
    want_keys: bool = False
    want_probs: bool = False
    want_logits: bool = False
    cls_attn: Optional[Tensor] = None
    keys: Optional[Tensor] = None
    probs: Optional[Tensor] = None
    logits: Optional[Tensor] = None


@dataclass
class GatherWindow:
    """A spatial responsive-field window for one attention call over [class token, full grid].

    plan: the block's ``SpatialPlan``. gathered: filled in by the call, True when the
    gathered kernel ran (only its pairs were computed), False when the window was applied
    as a dense mask (a probe wanted full maps, or another logit bias came in).
    """

    plan: SpatialPlan
    gathered: bool = False


class Attention(nn.Module):
    """Self-attention over (G, L, D) sequences with an optional additive logit bias.

    ``bias`` is broadcast to (G, heads, L, L) and added to the attention logits before the
    softmax: -inf masks a key out, log(size) gives proportional attention for merged
    tokens. ``fused=True`` runs ``F.scaled_dot_product_attention``; the explicit path runs
    when ``fused=False`` or when a probe asks for the probabilities.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(G, L, 3D) projections -> q, k, v, each (G, heads, L, head_dim)."""
        qkv = rearrange(qkv, "g l (three h d) -> three g h l d", three=3, h=self.num_heads)
        return qkv[0], qkv[1], qkv[2]

    def merge_heads(self, out: Tensor) -> Tensor:
        """(G, heads, L, head_dim) -> (G, L, D) through the output projection."""
        out = rearrange(out, "g h l d -> g l (h d)")
        return self.proj_drop(self.proj(out))

    def core(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias) v, (G, heads, L, head_dim), fused unless switched off."""
        if not self.fused:
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (G, heads, L, L)
            if bias is not None:
                logits = logits + bias
            return self.attn_drop(logits.softmax(dim=-1)) @ v
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)

    def forward(self, x: Tensor, bias: Optional[Tensor] = None,
                probe: Optional[AttentionProbe] = None, window: Optional[GatherWindow] = None) -> Tensor:
        """(G, L, D) -> (G, L, D), filling ``probe`` if one is given; ``window`` restricts
        each query to its field (gathered kernel when nothing needs the dense maps)."""
        q, k, v = self.split_qkv(self.qkv(x))
        if window is not None:
            wants_maps = probe is not None and (probe.want_probs or probe.want_logits)
            if bias is None and not wants_maps:
                return self.merge_heads(self._gathered(q, k, v, window, probe))
            allowed = window.plan.allowed[None].expand(x.shape[0], -1, -1)  # (G, L, L)
            bias = add_window(bias, allowed, x.dtype)
        return self.merge_heads(self.attend(q, k, v, bias, probe))

    def _gathered(self, q: Tensor, k: Tensor, v: Tensor, window: GatherWindow,
                  probe: Optional[AttentionProbe]) -> Tensor:
        """Per-head outputs (G, heads, L, head_dim) of the gathered kernel; marks ``window``."""
        dropout = self.attn_drop.p if self.training else 0.0
        out = gathered_attention(q, k, v, window.plan, self.scale, self.fused, dropout)
        window.gathered = True
        if probe is not None:  # the class token's row is not masked: the dense row, as the fused path
            _fill_probe(probe, k, cls_attn=_cls_row(q, k, None, self.scale) if probe.want_cls_attn else None)
        return out

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None,
               probe: Optional[AttentionProbe] = None) -> Tensor:
        """Per-head outputs (G, heads, L, head_dim) of q, k, v (G, heads, L, head_dim),
        before the output projection; fills ``probe`` (probabilities or logits force the
        explicit path)."""
        if self.fused and not (probe is not None and (probe.want_probs or probe.want_logits)):
            if probe is not None:
                _fill_probe(probe, k, cls_attn=_cls_row(q, k, bias, self.scale) if probe.want_cls_attn else None)
            return self.core(q, k, v, bias)
        out, attn = self._explicit_heads(q, k, v, bias, probe)
        if probe is not None:
            _fill_probe(probe, k, cls_attn=attn[:, :, 0].mean(dim=1), probs=attn)
        return out

    def forward_with_attn(self, x: Tensor, bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(G, L, D) -> output (G, L, D) and attention probabilities (G, heads, L, L)."""
        out, attn = self._explicit_heads(*self.split_qkv(self.qkv(x)), bias)
        return self.merge_heads(out), attn

    def _explicit_heads(self, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                        probe: Optional[AttentionProbe] = None) -> tuple[Tensor, Tensor]:
        """Per-head outputs (G, heads, L, head_dim) and probabilities (G, heads, L, L)."""
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (G, heads, L, L)
        if bias is not None:
            logits = logits + bias
        if probe is not None and probe.want_logits:
            probe.logits = logits
        attn = logits.softmax(dim=-1)
        return self.attn_drop(attn) @ v, attn


def _cls_row(q: Tensor, k: Tensor, bias: Optional[Tensor], scale: float) -> Tensor:
    """(G, L) head-mean attention of the class token (query 0): q_cls k^T, not the full map."""
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (G, heads, 1, L)
    if bias is not None:
        logits = logits + bias[..., :1, :]
    return logits.softmax(dim=-1)[:, :, 0].mean(dim=1)


def _fill_probe(probe: AttentionProbe, k: Tensor, cls_attn: Optional[Tensor] = None,
                probs: Optional[Tensor] = None) -> None:
    if probe.want_keys:
        probe.keys = k.mean(dim=1)  # (G, L, head_dim)
    if probe.want_cls_attn:
        probe.cls_attn = cls_attn
    if probe.want_probs:
        probe.probs = probs


def key_mask_bias(valid_keys: Tensor, dtype: torch.dtype) -> Tensor:
    """(G, L) bool key mask -> (G, 1, 1, L) additive bias: 0 to keep, -inf to mask.

    A row with no valid key at all is padding; it is left unmasked (its output is
    discarded) so that the softmax never sees a row of -inf.
    """
    keep = valid_keys | ~valid_keys.any(dim=-1, keepdim=True)
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias = bias.masked_fill(~keep, float("-inf"))
    return bias[:, None, None, :]  # (G, 1, 1, L)
