"""Multi-head self-attention with a fused path and an explicit path that returns maps.

Parameter names (``qkv``, ``proj``) follow timm's ViT and the official TimeSformer, so
their weights load unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Self-attention over (G, L, D) sequences with an optional additive logit bias.

    ``bias`` is broadcast to (G, heads, L, L) and added to the attention logits before the
    softmax: -inf masks a key out, log(size) gives proportional attention for merged
    tokens. ``fused=True`` runs ``F.scaled_dot_product_attention``; the explicit path is
    used when ``fused=False`` or when the caller asks for the attention probabilities.
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

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        groups, length, dim = x.shape
        qkv = self.qkv(x).reshape(groups, length, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, G, heads, L, head_dim)
        return qkv[0], qkv[1], qkv[2]

    def _merge_heads(self, out: Tensor) -> Tensor:
        groups, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(groups, length, -1)  # (G, L, D)
        return self.proj_drop(self.proj(out))

    def forward(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """(G, L, D) -> (G, L, D)."""
        if not self.fused:
            return self.forward_with_attn(x, bias)[0]
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self._merge_heads(out)

    def forward_with_attn(self, x: Tensor, bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(G, L, D) -> output (G, L, D) and attention probabilities (G, heads, L, L)."""
        q, k, v = self._qkv(x)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (G, heads, L, L)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(dim=-1)
        out = self.attn_drop(attn) @ v  # (G, heads, L, head_dim)
        return self._merge_heads(out), attn


def key_mask_bias(valid_keys: Tensor, dtype: torch.dtype) -> Tensor:
    """(G, L) bool key mask -> (G, 1, 1, L) additive bias: 0 to keep, -inf to mask.

    A row with no valid key at all is padding; it is left unmasked (its output is
    discarded) so that the softmax never sees a row of -inf.
    """
    keep = valid_keys | ~valid_keys.any(dim=-1, keepdim=True)
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias = bias.masked_fill(~keep, float("-inf"))
    return bias[:, None, None, :]  # (G, 1, 1, L)
