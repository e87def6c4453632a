"""Partial fine-tuning: keep the parameters under named prefixes fixed (``train.freeze``).

A prefix names a module or parameter by its dotted path in the model (``patch_embed``,
``blocks.0``, ``pos_embed``); it covers that name and everything below it, never a sibling
that only shares its first characters (``blocks.1`` is not ``blocks.10``). Frozen
parameters get ``requires_grad=False`` and stay out of the optimizer, so autograd does no
work for them, nor for anything before them that has nothing trainable; frozen modules run
in evaluation mode while training (BatchNorm statistics and dropout fixed too). Measured
use: docs/recipes.md, "Freezing the stem (P4, P5)".
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ired_video.config import ConfigError


def _covered(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Set ``requires_grad=False`` on every parameter under ``prefixes``; the number frozen.

    Raises ``ConfigError`` naming a prefix that covers no parameter (a typo would otherwise
    train the whole model without a word), with the model's top-level names to choose from.
    """
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_covered(name, [prefix]) for name in names):
            top = sorted({name.split(".")[0] for name in names})
            raise ConfigError(f"train.freeze: {prefix!r} names no parameter of the model; "
                              f"top-level names: {', '.join(top)}")
    frozen = 0
    for name, param in model.named_parameters():
        if _covered(name, prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def hold_frozen_modules(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Put every module under ``prefixes`` in evaluation mode; call after ``model.train()``."""
    for name, module in model.named_modules():
        if name and _covered(name, prefixes):
            module.eval()
