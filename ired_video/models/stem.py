"""An optional convolutional patch stem: 3x3 stride-2 convolutions instead of one p x p projection.

``ConvStem`` maps a (B, C, T, H, W) video to (B*T, H/p, W/p, D) patch tokens, one grid per
frame as timm's ``PatchEmbed`` gives with ``output_fmt="NHWC"``, through log2(p)
conv-BN-GELU stages (widths from ``flops.conv_stem_widths``) and a final 1x1 projection
``proj`` (Xiao et al., 2021, "Early convolutions help transformers see better"). A stage with
a temporal kernel k > 1 is a (k, 3, 3) convolution over time (stride 1, zero-padded: still
one token grid per frame), so tokens also see neighbour frames: the ``conv3d`` stem has k=3
at every stage. Its MACs are ``flops.conv_stem_macs``.

Design notes: docs/recipes.md, "Convolutional patch stem".
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ired_video import flops


class ConvStem(nn.Module):
    """(B, C, T, H, W) -> (B*T, H/p, W/p, D): log2(p) conv-BN-GELU stages, each 3x3 stride 2
    in space over ``temporal_kernels[k]`` frames (stride 1 in time), then a 1x1 conv."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int,
                 temporal_kernels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.widths = flops.conv_stem_widths(patch_size, dim)
        self.temporal_kernels = tuple(temporal_kernels or [1] * len(self.widths))
        if len(self.temporal_kernels) != len(self.widths) or any(k < 1 or k % 2 == 0 for k in self.temporal_kernels):
            raise ValueError(f"temporal_kernels={self.temporal_kernels}: need {len(self.widths)} odd sizes >= 1")
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        layers: list[nn.Module] = []
        width_in = in_chans
        for width, frames in zip(self.widths, self.temporal_kernels):
            layers += [nn.Conv3d(width_in, width, (frames, 3, 3), stride=(1, 2, 2), padding=(frames // 2, 1, 1),
                                 bias=False), nn.BatchNorm3d(width), nn.GELU()]
            width_in = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv3d(width_in, dim, 1)

    def forward(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) with H, W multiples of the patch size (TimeSformer.embed checks) ->
        (B*T, H/p, W/p, D)."""
        x = self.proj(self.convs(video))  # (B, D, T, h, w)
        return x.permute(0, 2, 3, 4, 1).flatten(0, 1)  # (B, T, h, w, D) -> (B*T, h, w, D)


__all__ = ["ConvStem"]
