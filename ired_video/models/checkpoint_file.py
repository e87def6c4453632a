"""Reading one weights file safely, and the normalised form every weights source becomes.

``read_file`` never runs code from a file: ``.safetensors`` through safetensors, anything
else through ``torch.load(weights_only=True)``. ``Checkpoint`` is what each source format
(ours, official, timm, transformers, mmaction2) is turned into: a state dict under our
parameter names plus whatever configs the source carries.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A file is not a checkpoint, or its weights do not fit the model."""


@dataclass
class Checkpoint:
    """A checkpoint, normalised: ``state_dict`` uses our parameter names.

    kind: "ired_video" (ours), "timesformer" (official layout, prefix stripped), "vit",
        "transformers" (a Hugging Face snapshot) or "mmaction2".
    model_config / data_config: ModelConfig / DataConfig fields the source states, if any.
    file_key: our parameter name -> the name the source file uses, so that a misfit is
        reported in the file's own names (None: the names are the same).
    """

    path: Path
    kind: str
    state_dict: dict[str, Tensor]
    model_config: Optional[dict[str, Any]] = None
    data_config: Optional[dict[str, Any]] = None
    extra: Optional[dict[str, Any]] = None
    reducer_config: Optional[dict[str, Any]] = None
    file_key: Optional[Callable[[str], str]] = None


def read_file(path: PathLike) -> dict[str, Any]:
    """Read a ``.pth``/``.pyth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    obj = load_plain(path, "not a readable PyTorch checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found a {type(obj).__name__}")
    return obj


def load_plain(path: PathLike, problem: str = "not a plain tensor file, refused") -> Any:
    """``torch.load(weights_only=True)``: tensors, numbers, strings and containers only. A file
    holding anything else (code to run on unpickling) or damaged bytes is a one-line
    ``CheckpointError``: ``path: problem (what the unpickler found)``."""
    try:
        with warnings.catch_warnings():  # torch warns about a hostile file's pickle protocol first
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a hostile or damaged file fails inside the unpickler in many ways
        raise CheckpointError(f"{path}: {problem} ({_unpickler_reason(err)})") from None


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's multi-paragraph load error that says what was found (never its
    advice to turn the safe loader off)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (found or lines or [type(err).__name__])[0][:200]


def tensors_only(state: Any, path: Path) -> dict[str, Tensor]:
    """``state`` as a dict of tensors, or ``CheckpointError`` naming the entries that are not."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of names to tensors)")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a state dict; non-tensor entries: {', '.join(map(str, bad[:5]))}")
    return dict(state)
