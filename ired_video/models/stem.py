"""An optional convolutional patch stem: 3x3 stride-2 convolutions instead of one p x p projection.

``ConvStem`` maps a (B, C, T, H, W) video to (B*T, H/p, W/p, D) patch tokens, one grid per
frame as timm's ``PatchEmbed`` gives with ``output_fmt="NHWC"``, through log2(p)
conv-BN-GELU stages (widths from ``flops.conv_stem_widths``) and a final 1x1 projection
``proj`` (Xiao et al., 2021, "Early convolutions help transformers see better"). With
``temporal_kernel`` k > 1 the first stage is a (k, 3, 3) convolution over time (stride 1,
zero-padded: still one token grid per frame), so each token also sees its neighbour frames:
the ``conv3d`` stem. Its MACs are ``flops.conv_stem_macs``.

Design notes: docs/recipes.md, "Convolutional patch stem".
"""
from __future__ import annotations

from torch import Tensor, nn

from ired_video import flops


class ConvStem(nn.Module):
    """(B, C, T, H, W) -> (B*T, H/p, W/p, D): log2(p) conv3x3-s2 + BN + GELU stages (the
    first over ``temporal_kernel`` frames), then a 1x1 conv."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, temporal_kernel: int = 1) -> None:
        super().__init__()
        self.widths = flops.conv_stem_widths(patch_size, dim)
        self.patch_size = patch_size
        self.temporal_kernel = temporal_kernel
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        first, *rest = self.widths
        self.first = (nn.Conv3d(in_chans, first, (temporal_kernel, 3, 3), stride=(1, 2, 2),
                                padding=(temporal_kernel // 2, 1, 1), bias=False) if temporal_kernel > 1 else
                      nn.Conv2d(in_chans, first, 3, stride=2, padding=1, bias=False))
        layers: list[nn.Module] = [nn.BatchNorm2d(first), nn.GELU()]
        width_in = first
        for width in rest:
            layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.GELU()]
            width_in = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width_in, dim, 1)

    def forward(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) with H, W multiples of the patch size -> (B*T, H/p, W/p, D)."""
        if video.shape[-1] % self.patch_size or video.shape[-2] % self.patch_size:
            raise ValueError(f"conv patch stem: frame size {tuple(video.shape[-2:])} is not a multiple of "
                             f"patch_size={self.patch_size}")
        if self.temporal_kernel > 1:
            x = self.first(video)  # (B, C1, T, H/2, W/2)
            x = x.transpose(1, 2).flatten(0, 1)  # (B*T, C1, H/2, W/2)
        else:
            x = self.first(video.transpose(1, 2).flatten(0, 1))  # (B*T, C, H, W) -> (B*T, C1, H/2, W/2)
        return self.proj(self.convs(x)).permute(0, 2, 3, 1)  # (B*T, D, h, w) -> (B*T, h, w, D)


__all__ = ["ConvStem"]
