"""TimeSformer blocks for the three attention types, acting on a ``TokenState``.

Parameter names follow the official TimeSformer (``norm1``, ``attn``, ``temporal_norm1``,
``temporal_attn``, ``temporal_fc``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so that official
checkpoints load by name. Each block bills every clip for the tokens it really processed
(``state.spend``) and records the patch-token count it saw (``state.tokens``).

Drop path is applied per attention group, as in the official code: per spatial location
for temporal attention, per frame for spatial attention, per clip for the MLP.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from ired_video import flops
from ired_video.models.attention import Attention, key_mask_bias
from ired_video.tokens import TokenState


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


def _log_size_bias(size: Optional[Tensor]) -> Optional[Tensor]:
    """(G, L) token sizes -> (G, 1, 1, L) proportional-attention bias log(size)."""
    if size is None:
        return None
    return size.log()[:, None, None, :]


def _add_bias(*biases: Optional[Tensor]) -> Optional[Tensor]:
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total = present[0]
    for b in present[1:]:
        total = total + b
    return total


class Block(nn.Module):
    """Attention over one grouping of the tokens, then the MLP (joint and space-only)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused_attention: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.mlp_ratio = mlp_ratio
        self.norm1 = _layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def _mlp_residual(self, tokens: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D): pre-norm MLP with residual."""
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))

    def _attend(self, tokens: Tensor, valid: Optional[Tensor], size: Optional[Tensor]) -> Tensor:
        """(G, L, D) tokens, (G, L) valid/size or None -> (G, L, D) attention residual."""
        bias = _add_bias(None if valid is None else key_mask_bias(valid, tokens.dtype),
                         _log_size_bias(size))
        return self.drop_path(self.attn(self.norm1(tokens), bias))


class JointSpaceTimeBlock(Block):
    """One attention over the class token and every patch token of every frame."""

    def forward(self, state: TokenState) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls, state.x.reshape(batch, frames * slots, dim)], dim=1)  # (B, 1+T*K, D)
        valid = _with_cls(state.valid, batch, 1, frames * slots)
        size = _with_cls(state.size, batch, 1, frames * slots)
        tokens = tokens + self._attend(tokens, valid, size)
        tokens = self._mlp_residual(tokens)
        state.tokens.append(state.real_tokens())
        state.spend(flops.joint_block_macs(frames, state.tokens_per_frame().double(), dim, self.mlp_ratio))
        return state.with_tokens(tokens[:, :1], tokens[:, 1:].reshape(batch, frames, slots, dim))


class SpaceOnlyBlock(Block):
    """Each frame attends within itself, with its own class token; frames never meet."""

    def forward(self, state: TokenState) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls.reshape(batch * frames, 1, dim),
                            state.x.reshape(batch * frames, slots, dim)], dim=1)  # (B*T, 1+K, D)
        valid = _with_cls(_frames_as_batch(state.valid), batch * frames, 1, slots)
        size = _with_cls(_frames_as_batch(state.size), batch * frames, 1, slots)
        tokens = tokens + self._attend(tokens, valid, size)
        tokens = self._mlp_residual(tokens)
        state.tokens.append(state.real_tokens())
        state.spend(flops.space_only_block_macs(frames, state.tokens_per_frame().double(), dim, self.mlp_ratio))
        cls_tokens = tokens[:, 0].reshape(batch, frames, dim)  # (B, T, D)
        return state.with_tokens(cls_tokens, tokens[:, 1:].reshape(batch, frames, slots, dim))


class DividedSpaceTimeBlock(Block):
    """Temporal attention (same location across frames), spatial attention (within a
    frame, with a copy of the class token per frame, whose updates are averaged), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused_attention: bool = True) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, fused_attention)
        self.temporal_norm1 = _layer_norm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attention)
        self.temporal_fc = nn.Linear(dim, dim)

    def _temporal_residual(self, state: TokenState) -> Tensor:
        """(B, T, K, D) -> (B, T, K, D): attention over the frames of each token slot."""
        batch, frames, slots, dim = state.x.shape
        tubes = state.x.transpose(1, 2).reshape(batch * slots, frames, dim)  # (B*K, T, D)
        valid = None if state.valid is None else state.valid.transpose(1, 2).reshape(batch * slots, frames)
        size = None if state.size is None else state.size.transpose(1, 2).reshape(batch * slots, frames)
        bias = _add_bias(None if valid is None else key_mask_bias(valid, tubes.dtype),
                         _log_size_bias(size))
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(tubes), bias))
        res = res.reshape(batch, slots, frames, dim).transpose(1, 2)  # (B, T, K, D)
        return self.temporal_fc(res)

    def forward(self, state: TokenState) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        xt = state.x + self._temporal_residual(state)  # (B, T, K, D)

        cls_copies = state.cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim)
        tokens = torch.cat([cls_copies, xt.reshape(batch * frames, slots, dim)], dim=1)  # (B*T, 1+K, D)
        valid = _with_cls(_frames_as_batch(state.valid), batch * frames, 1, slots)
        size = _with_cls(_frames_as_batch(state.size), batch * frames, 1, slots)
        res = self._attend(tokens, valid, size)  # (B*T, 1+K, D)
        cls_res = res[:, 0].reshape(batch, frames, dim).mean(dim=1, keepdim=True)  # (B, 1, D)
        patch_res = res[:, 1:].reshape(batch, frames, slots, dim)  # (B, T, K, D)

        tokens = torch.cat([state.cls + cls_res, (xt + patch_res).reshape(batch, frames * slots, dim)],
                           dim=1)  # (B, 1+T*K, D)
        tokens = self._mlp_residual(tokens)
        state.tokens.append(state.real_tokens())
        state.spend(flops.divided_block_macs(frames, state.tokens_per_frame().double(), dim, self.mlp_ratio))
        return state.with_tokens(tokens[:, :1], tokens[:, 1:].reshape(batch, frames, slots, dim))


def _frames_as_batch(per_token: Optional[Tensor]) -> Optional[Tensor]:
    """(B, T, K) -> (B*T, K), passing None through."""
    if per_token is None:
        return None
    batch, frames, slots = per_token.shape
    return per_token.reshape(batch * frames, slots)


def _with_cls(per_token: Optional[Tensor], groups: int, num_cls: int, length: int) -> Optional[Tensor]:
    """Prefix (G, ...) per-token values with ``num_cls`` class-token entries: True / 1.

    Input (G, L') with L' = ``length`` after flattening; output (G, num_cls + length).
    """
    if per_token is None:
        return None
    per_token = per_token.reshape(groups, length)  # (G, L)
    prefix = torch.ones(groups, num_cls, dtype=per_token.dtype, device=per_token.device)
    return torch.cat([prefix, per_token], dim=1)


BLOCKS: dict[str, type[Block]] = {
    "divided_space_time": DividedSpaceTimeBlock,
    "joint_space_time": JointSpaceTimeBlock,
    "space_only": SpaceOnlyBlock,
}
