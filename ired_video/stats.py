"""Confidence intervals for accuracy over training seeds and test videos, and for the
median of repeated timings.

``accuracy_interval`` bootstraps a (seeds, videos) matrix of per-video scores over both
axes (conservative: covers at least the stated level); ``difference_interval`` resamples
paired configurations (same seeds, same videos), which is what "within x points of the
plain model" must be judged on.

Design notes: docs/design.md, "ired_video.stats".
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval, in the units of the scores."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def points(self) -> str:
        """As percentage points, e.g. ``92.3 [90.1, 94.2]``."""
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def fields(self, key: str) -> dict[str, float]:
        """As benchmark-row fields ``key``, ``key_low``, ``key_high`` (what ``signed_points`` reads)."""
        return {key: self.mean, f"{key}_low": self.low, f"{key}_high": self.high}


def signed_points(row: Mapping[str, Any], key: str) -> str:
    """A difference stored in a benchmark row as ``key``, ``key_low``, ``key_high`` (fractions),
    as signed percentage points, e.g. ``+1.2 [-0.3, +2.5]``; blank when the row has no ``key``."""
    if key not in row:
        return ""
    return f"{100 * row[key]:+.1f} [{100 * row[key + '_low']:+.1f}, {100 * row[key + '_high']:+.1f}]"


def _as_matrix(scores: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]  # one seed
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name}: expected a (seeds, videos) matrix of scores, got shape {matrix.shape}")
    return matrix


def _resampled_means(matrices: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """(resamples, len(matrices)) means, each draw using the same seed and video indices
    for every matrix (all of shape (S, V))."""
    seeds, videos = matrices[0].shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))  # (R, S)
    video_draws = rng.integers(0, videos, size=(resamples, videos))  # (R, V)
    means = np.empty((resamples, len(matrices)))
    for index, matrix in enumerate(matrices):
        per_seed = matrix[seed_draws]  # (R, S, V): the resampled seeds' rows
        means[:, index] = np.take_along_axis(per_seed, video_draws[:, None, :], axis=2).mean(axis=(1, 2))
    return means


def _interval(mean: float, draws: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(mean), float(low), float(high), level)


def accuracy_interval(scores: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean score of a (seeds, videos) matrix with a bootstrap interval over both."""
    matrix = _as_matrix(scores, "scores")
    draws = _resampled_means([matrix], resamples, seed)[:, 0]
    return _interval(matrix.mean(), draws, level)


def difference_interval(scores_a: np.ndarray, scores_b: np.ndarray, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> Interval:
    """Mean of a - b with a paired bootstrap interval: seed i of ``a`` goes with seed i of
    ``b`` (e.g. a reducer fine-tuned from plain model i), and video j with video j."""
    a, b = _as_matrix(scores_a, "scores_a"), _as_matrix(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same (seeds, videos) shape: {a.shape} vs {b.shape}")
    draws = _resampled_means([a, b], resamples, seed)
    return _interval(a.mean() - b.mean(), draws[:, 0] - draws[:, 1], level)


@dataclass(frozen=True)
class MedianInterval:
    """The median of n values and a distribution-free interval for it: two order
    statistics, which hold the population median with probability ``coverage`` (at least
    the level asked for, except below 6 values, where it is min..max and less)."""

    median: float
    low: float
    high: float
    coverage: float


def _lower_tail(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k - 1): the chance that fewer than k of n values fall below the median."""
    return sum(math.comb(n, i) for i in range(k)) / 2 ** n


def median_interval(values: Sequence[float], level: float = 0.95) -> MedianInterval:
    """Median of ``values`` with the order-statistic interval [x_(k), x_(n-k+1)], k the
    largest whose coverage 1 - 2 P(Binomial(n, 1/2) <= k - 1) is still >= ``level``.
    Assumes independent values (paired timing rounds: one ratio per round)."""
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval: no values")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: expected a probability in (0, 1)")
    k = 1
    while k + 1 <= n - k and 1 - 2 * _lower_tail(n, k + 1) >= level:
        k += 1
    coverage = 1 - 2 * _lower_tail(n, k)
    return MedianInterval(float(statistics.median(ordered)), ordered[k - 1], ordered[n - k], coverage)
