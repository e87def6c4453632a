"""TimeSformer (Bertasius et al., ICML 2021) over a ``TokenState``.

One clip (B, C, T, H, W) -> per-frame patch embedding -> spatial position embedding
(shared by all frames) -> time embedding (shared by all locations; not in the space-only
model) -> blocks -> class token -> norm -> linear head.

Design notes: docs/design.md, "ired_video.models.timesformer".
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed, trunc_normal_
from torch import Tensor, nn

from ired_video import flops
from ired_video.config import DataConfig, ModelConfig, ReducerConfig
from ired_video.models.attention import Attention, AttentionProbe
from ired_video.models.blocks import BLOCKS
from ired_video.models.stem import ConvStem
from ired_video.tokens import ReducerRecord, TokenState


@dataclass
class ForwardInfo:
    """What one forward pass spent, per clip.

    Attributes:
        gmacs: (B,) float, GMACs (1e9 multiply-accumulates) spent on each clip.
        tokens: (B, depth) long, patch tokens each block processed for each clip.
        records: what each reducer did (see ``TokenState.records``).
        state: the final token state (positions, sizes) for overlays and analysis.
    """

    gmacs: Tensor
    tokens: Tensor
    records: list[ReducerRecord] = field(default_factory=list)
    state: Optional[TokenState] = None


# Frames each stage of a conv patch stem spans (patch 8: three stages; see stem_kernels).
STEM_TEMPORAL_KERNEL = {"conv": 1, "conv3d": 3}


def stem_kernels(config: ModelConfig) -> list[int]:
    """Temporal kernel of each stage of the config's conv patch stem."""
    return [STEM_TEMPORAL_KERNEL[config.patch_stem]] * (config.patch_size.bit_length() - 1)


class TimeSformer(nn.Module):
    """Video transformer with divided, joint or space-only attention."""

    def __init__(self, config: ModelConfig, data_config: Optional[DataConfig] = None) -> None:
        super().__init__()
        self.config = config
        self.data_config = data_config or DataConfig(
            num_frames=config.num_frames, crop_size=config.img_size)
        dim = config.embed_dim
        self.attention_type = config.attention_type
        self.patch_embed: nn.Module = (
            ConvStem(config.img_size, config.patch_size, config.in_chans, dim, stem_kernels(config))
            if config.patch_stem != "linear" else
            PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim, output_fmt="NHWC",
                       strict_img_size=False))
        self.patch_grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        num_patches = self.patch_grid[0] * self.patch_grid[1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        if self.attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames, dim))
            self.time_drop = nn.Dropout(config.drop_rate)

        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        block_cls = BLOCKS[self.attention_type]
        self.blocks = nn.ModuleList(
            block_cls(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop_rate,
                      config.attn_drop_rate, rate, config.fused_attention)
            for rate in rates)
        if config.window_radius is not None or config.window_span is not None:
            for index, block in enumerate(self.blocks):
                block.set_window(config.window_radius and config.window_radius[index],
                                 config.window_span and config.window_span[index], self.patch_grid, config.num_frames,
                                 config.window_kernel)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        for module in self.blocks.modules():  # the blocks build their norms with the default epsilon
            if isinstance(module, nn.LayerNorm):
                module.eps = config.layer_norm_eps
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        # Token reducers keyed by the index of the block they act at, and the config they were
        # built from (set by ired_video.reducers.apply_reducer; saved with the checkpoint).
        self.reducers = nn.ModuleDict()
        self.reducer_config: Optional[ReducerConfig] = None
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """TimeSformer's initialisation: truncated normal 0.02, zero time embedding, and
        every ``temporal_fc`` zeroed so that a fresh model is a per-frame ViT."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_module)
        for block in self.blocks:
            if hasattr(block, "temporal_fc"):
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    # ------------------------------------------------------------- embedding
    def _spatial_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + h*w, D) position embedding for a patch grid, nearest-resized if needed."""
        if grid == self.patch_grid:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, *self.patch_grid, dim).permute(0, 3, 1, 2)  # (1, D, h0, w0)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="nearest")
        patch_pos = patch_pos.flatten(2).transpose(1, 2)  # (1, h*w, D)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def _time_embed(self, frames: int) -> Tensor:
        """(1, T, D) time embedding, nearest-resized if T differs from the model's."""
        if frames == self.time_embed.shape[1]:
            return self.time_embed
        resized = F.interpolate(self.time_embed.transpose(1, 2), size=frames, mode="nearest")
        return resized.transpose(1, 2)  # (1, T, D)

    def embed(self, video: Tensor) -> TokenState:
        """(B, C, T, H, W) video -> start token state with patches (B, T, N, D)."""
        if video.ndim != 5:
            raise ValueError(f"expected a video tensor (B, C, T, H, W), got shape {tuple(video.shape)}")
        batch, chans, frames, height, width = video.shape
        if chans != self.config.in_chans:
            raise ValueError(f"expected {self.config.in_chans} channels, got {chans} "
                             f"(input must be (B, C, T, H, W))")
        if height % self.config.patch_size or width % self.config.patch_size:
            raise ValueError(f"frame size {height}x{width} is not a multiple of patch_size={self.config.patch_size}")
        if isinstance(self.patch_embed, ConvStem):
            patches = self.patch_embed(video)  # (B*T, h, w, D)
        else:
            patches = self.patch_embed(rearrange(video, "b c t h w -> (b t) c h w"))  # (B*T, h, w, D)
        grid = (patches.shape[1], patches.shape[2])
        dim = patches.shape[-1]
        patches = rearrange(patches, "(b t) h w d -> b t (h w) d", b=batch)

        pos = self._spatial_pos_embed(grid)
        patches = self.pos_drop(patches + pos[:, None, 1:])
        cls_tokens = self.pos_drop(self.cls_token + pos[:, :1]).expand(batch, 1, dim)
        if self.attention_type == "space_only":
            cls_tokens = cls_tokens.expand(batch, frames, dim)  # one class token per frame
        else:
            patches = self.time_drop(patches + self._time_embed(frames)[:, :, None, :])

        state = TokenState.from_patches(cls_tokens, patches, grid)
        state.spend(torch.full_like(state.macs, self.embed_macs(frames, grid)))
        return state

    def embed_macs(self, frames: int, grid: tuple[int, int]) -> int:
        """MACs of the patch embedding (linear or conv stem) of one clip of ``frames`` frames."""
        cfg = self.config
        if cfg.patch_stem != "linear":
            return flops.conv_stem_macs(frames, grid, cfg.in_chans, cfg.patch_size, cfg.embed_dim,
                                        stem_kernels(cfg))
        return flops.embed_macs(frames, grid[0] * grid[1], cfg.in_chans, cfg.patch_size, cfg.embed_dim)

    # ----------------------------------------------------------------- blocks
    def forward_blocks(self, state: TokenState) -> TokenState:
        """Run the blocks; a reducer at block i runs before it or inside it (its placement)."""
        for index, block in enumerate(self.blocks):
            reducer = self.reducers[str(index)] if str(index) in self.reducers else None
            if reducer is not None and reducer.placement == "before":
                state = reducer(state, None)
                reducer = None
            tail = partial(self.tail_logits, index) if reducer is not None and "tail" in reducer.needs else None
            state = block(state, inner=reducer, tail=tail)
        return state

    def tail_logits(self, index: int, state: TokenState, probe: Optional[AttentionProbe],
                    temporal_probe: Optional[AttentionProbe] = None) -> tuple[Tensor, Tensor]:
        """Logits (B, classes) of the rest of the model from block ``index``'s input
        ``state``, without reducers, with probes on that block's attention: the pass the
        patch-interaction indicator differentiates; and the (B,) MACs ``state`` had spent
        plus what this pass spent."""
        if not state.hooks.replayable:
            raise ValueError("the rest of this model cannot run again on its own: its blocks carry hooks that "
                             "are not replayable (a cascade stage reusing earlier stages); use the interaction "
                             "reducer's predictor, fitted on the plain model")
        block = self.blocks[index]
        state = block.feed_forward(block.attend(state, probe, temporal_probe))
        for later in self.blocks[index + 1:]:
            state = later(state)
        return self.forward_head(state), state.macs

    def forward_head(self, state: TokenState) -> Tensor:
        """Final state -> logits (B, classes); bills the head."""
        pooled = state.cls.mean(dim=1)  # (B, D): the space-only model averages its T class tokens
        logits = self.head(self.norm(pooled))
        if isinstance(self.head, nn.Linear):
            state.spend(torch.full_like(state.macs, flops.head_macs(*self.head.weight.shape[::-1])))
        return logits

    def forward(self, video: Tensor, return_info: bool = False
                ) -> Union[Tensor, tuple[Tensor, ForwardInfo]]:
        """(B, C, T, H, W) -> logits (B, classes), and a ``ForwardInfo`` if asked."""
        state = self.forward_blocks(self.embed(video))
        logits = self.forward_head(state)
        if not return_info:
            return logits
        info = ForwardInfo(gmacs=(state.macs / 1e9).float(), tokens=torch.stack(state.tokens, dim=1),
                           records=state.records, state=state)
        return logits, info

    # ----------------------------------------------------------------- misc
    def static_gmacs(self, frames: Optional[int] = None, size: Optional[int] = None) -> float:
        """GMACs of one unreduced view of ``frames`` x ``size`` px (default: the model's own):
        the forward's own bill for a zero clip, batch 1, in eval mode (no batch-norm statistics
        move), reducers set aside (one forward)."""
        cfg = self.config
        frames = cfg.num_frames if frames is None else frames
        size = cfg.img_size if size is None else size
        video = self.pos_embed.new_zeros(1, cfg.in_chans, frames, size, size)
        with torch.inference_mode(), evaluating(self), self.reducers_set_aside():
            state = self.forward_blocks(self.embed(video))
            self.forward_head(state)
        return float(state.macs[0]) / 1e9

    @contextmanager
    def reducers_set_aside(self) -> Iterator[None]:
        """Run the model as if no reducer were applied, restoring them on exit."""
        applied, self.reducers = self.reducers, nn.ModuleDict()
        try:
            yield
        finally:
            self.reducers = applied

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every attention between the fused kernel and the explicit path."""
        self.config = dataclasses.replace(self.config, fused_attention=fused)
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = fused


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode, restoring its training mode on exit."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
