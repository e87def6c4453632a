r"""Effective responsive fields: how far, in space and time, each patch's useful
interactions reach, measured on data; and the model settings that restrict attention to them.

For block l, a query patch at location n reads keys through edges whose effects
Delta^l_{ij} (``explain.interaction``, first-order) are accumulated, as magnitudes, over
every frame of every clip given:

    M^l_n(d)  = sum_{clips, t} sum_{m : cheb(n, m) = d, m != n} |Delta^{l,spatial}_{(t,n) <- (t,m)}|
    M^l_n(s)  = sum_{clips, t} sum_{t' : |t - t'| = s, t' != t} |Delta^{l,temporal}_{(t,n) <- (t',n)}|

(cheb: Chebyshev distance of grid cells, in patches; class-token edges are not spatial
distance and stay outside the fields). The responsive field of location n in block l is

    radius^l_n = min { r >= 0 : sum_{d <= r} M^l_n(d) >= tau * sum_d M^l_n(d) }   (0 if no mass)
    span^l_n   = min { s >= 0 : sum_{s' <= s} M^l_n(s') >= tau * sum_s' M^l_n(s') }

with coverage tau (default 0.9): the smallest window holding tau of the interaction
mass. ``ResponsiveFields.model_settings()`` turns them into ``ModelConfig.window_radius``
/ ``window_span`` (``ired_video.models.window``); ``settings_from_file`` does so for a
JSON file named in a config, after checking that it fits the model. Divided attention only.
``ired-video fields`` measures them on a dataset (``accumulate_fields``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ired_video.config import ConfigError, ModelConfig
from ired_video.explain.interaction import EdgeEffects, first_order_edge_effects
from ired_video.models.window import chebyshev_distances


@dataclass
class ResponsiveFields:
    """Per block, per patch location: spatial radius (patches) and temporal span (frames)."""

    radius: list[list[int]]
    span: list[list[int]]
    coverage: float
    grid: tuple[int, int]
    frames: int
    clips: int
    # How they were measured and what they would mask (``explain.field_summary``); informative only.
    summary: dict[str, Any] = field(default_factory=dict)

    def fit_problem(self, config: ModelConfig) -> Optional[str]:
        """None if these fields fit a model of ``config``, else what does not fit."""
        side = config.img_size // config.patch_size
        if config.attention_type != "divided_space_time":
            return f"windows need divided_space_time attention, the model has {config.attention_type}"
        if len(self.radius) != config.depth or len(self.span) != config.depth:
            return f"fields for {len(self.radius)} blocks, the model has depth={config.depth}"
        if tuple(self.grid) != (side, side):
            return f"fields for a {self.grid[0]}x{self.grid[1]} patch grid, the model has {side}x{side}"
        if self.frames != config.num_frames:
            return f"fields for {self.frames} frames, the model has num_frames={config.num_frames}"
        return None

    def model_settings(self) -> dict[str, Any]:
        """``ModelConfig`` fields that restrict attention to these fields."""
        return {"window_radius": self.radius, "window_span": self.span}

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ResponsiveFields":
        try:
            values = json.loads(Path(path).read_text())
            values["grid"] = tuple(values["grid"])
            return cls(**values)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such responsive-fields file") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: not a responsive-fields JSON file ({err})") from None


def settings_from_file(path: Union[str, Path], config: ModelConfig, key: str = "model.responsive_fields"
                       ) -> dict[str, Any]:
    """``window_radius``/``window_span`` of the fields in ``path``, checked against ``config``.

    Errors are ConfigErrors naming ``key`` and the file.
    """
    try:
        fields = ResponsiveFields.load(path)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None
    problem = fields.fit_problem(config)
    if problem:
        raise ConfigError(f"{key}: {path}: {problem}")
    return fields.model_settings()


def smallest_covering(mass: Tensor, coverage: float) -> Tensor:
    """(..., D) mass by distance 0..D-1 -> (...) long smallest d whose cumulative mass >= coverage x total."""
    cumulative = mass.cumsum(dim=-1)
    enough = cumulative >= coverage * cumulative[..., -1:] - 1e-12 * cumulative[..., -1:].abs()
    return enough.long().argmax(dim=-1)  # first True (all True when the total is 0: radius 0)


class FieldAccumulator:
    """Sums interaction mass by distance per block and location over many clips."""

    def __init__(self, depth: int, grid: tuple[int, int], frames: int) -> None:
        self.grid, self.frames, self.clips = grid, frames, 0
        distance = chebyshev_distances(grid)  # (N, N)
        self.distance_onehot = torch.nn.functional.one_hot(distance, int(distance.max()) + 1).double()  # (N, N, D)
        steps = torch.arange(frames)
        self.gap_onehot = torch.nn.functional.one_hot((steps[:, None] - steps[None, :]).abs(), frames).double()
        num_patches = grid[0] * grid[1]
        self.spatial = torch.zeros(depth, num_patches, self.distance_onehot.shape[-1], dtype=torch.float64)
        self.temporal = torch.zeros(depth, num_patches, frames, dtype=torch.float64)

    def add(self, effects: list[EdgeEffects]) -> None:
        """Add the edge effects of a batch (divided sites: spatial and temporal)."""
        for effect in effects:
            values = effect.values.abs().double().cpu()
            if effect.site.kind == "spatial":  # (B, T, 1+N, 1+N), rows = queries
                patches = values[:, :, 1:, 1:]
                self.spatial[effect.site.block] += torch.einsum("btnm,nmd->nd", patches, self.distance_onehot)
            elif effect.site.kind == "temporal":  # (B, N, T, T)
                self.temporal[effect.site.block] += torch.einsum("bnts,tsk->nk", values, self.gap_onehot)
            else:
                raise ValueError(f"responsive fields need divided attention, got a {effect.site.kind!r} site")
        self.clips += effects[0].values.shape[0] if effects else 0

    def fields(self, coverage: float = 0.9) -> ResponsiveFields:
        """The fields covering ``coverage`` of the mass (self-edges, at distance 0, excluded)."""
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage={coverage}: expected a fraction in (0, 1]")
        spatial, temporal = self.spatial.clone(), self.temporal.clone()
        spatial[..., 0] = 0  # distance 0 is the patch itself in space: not an interaction
        temporal[..., 0] = 0
        return ResponsiveFields(smallest_covering(spatial, coverage).tolist(),
                                smallest_covering(temporal, coverage).tolist(),
                                coverage, self.grid, self.frames, self.clips)


def accumulate_fields(model: nn.Module, batches: Iterable[tuple[Tensor, Optional[Tensor]]]) -> FieldAccumulator:
    """Edge effects (first-order) of every clip, summed by distance.

    batches: (video (B, C, T, H, W), target (B,) or None = the predicted class) pairs on the
    model's device. The grid is the model's; the frames are the first clip's.
    """
    accumulator: Optional[FieldAccumulator] = None
    for video, target in batches:
        if accumulator is None:
            accumulator = FieldAccumulator(len(model.blocks), tuple(model.patch_grid), video.shape[2])
        accumulator.add(first_order_edge_effects(model, video, target))
    if accumulator is None:
        raise ValueError("no clips to measure responsive fields on")
    return accumulator
