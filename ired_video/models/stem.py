"""An optional convolutional patch stem: 3x3 stride-2 convolutions instead of one p x p projection.

``ConvStem`` maps (N, C, H, W) frames to (N, H/p, W/p, D) patch tokens, as timm's
``PatchEmbed`` does with ``output_fmt="NHWC"``, through log2(p) conv-BN-GELU stages (widths
from ``flops.conv_stem_widths``) and a final 1x1 projection ``proj`` (Xiao et al., 2021,
"Early convolutions help transformers see better"). Its MACs are ``flops.conv_stem_macs``.

Design notes: docs/recipes.md, "Convolutional patch stem".
"""
from __future__ import annotations

from torch import Tensor, nn

from ired_video import flops


class ConvStem(nn.Module):
    """(N, C, H, W) -> (N, H/p, W/p, D): log2(p) conv3x3-s2 + BN + GELU stages, 1x1 conv."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.widths = flops.conv_stem_widths(patch_size, dim)
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        layers: list[nn.Module] = []
        width_in = in_chans
        for width in self.widths:
            layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.GELU()]
            width_in = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width_in, dim, 1)

    def forward(self, frames: Tensor) -> Tensor:
        """(N, C, H, W) with H, W multiples of the patch size -> (N, H/p, W/p, D)."""
        if frames.shape[-1] % self.patch_size or frames.shape[-2] % self.patch_size:
            raise ValueError(f"conv patch stem: frame size {tuple(frames.shape[-2:])} is not a multiple of "
                             f"patch_size={self.patch_size}")
        return self.proj(self.convs(frames)).permute(0, 2, 3, 1)  # (N, D, h, w) -> (N, h, w, D)


__all__ = ["ConvStem"]
