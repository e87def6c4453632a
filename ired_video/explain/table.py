"""The faithfulness and localisation table: every method side by side on annotated videos.

For each video of a demo split (videos with ``.npz`` object masks beside them): one
centred test view, the target = the true label, then per method the deletion and
insertion AUC (``faithfulness``), the pointing game and mask IoU (``localisation``); per
reducer, the share of object patches its last stage kept next to the share of all
patches kept. Scores are means over videos (localisation over videos with a visible
object).
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ired_video.build import apply_reducer
from ired_video.config import ReducerConfig, to_dict
from ired_video.explain.faithfulness import curves
from ired_video.explain.localisation import demo_patch_coverage, mask_iou, object_share_kept, pointing_game
from ired_video.explain.methods import explain
from ired_video.inference import decode_views
from ired_video.viz.masks import stage_masks_from_info

# reducers whose object-patch share the faithfulness table reports by default
DEFAULT_REDUCERS = ["topk keep=0.5", "topk keep=0.7", "interaction keep=0.5 score=indicator",
                    "interaction keep=0.7 score=indicator", "attention_received keep=0.5",
                    "attention_received keep=0.7", "random keep=0.5", "random keep=0.7"]


CPU = torch.device("cpu")
METRICS = ("deletion_auc", "insertion_auc", "pointing_game", "mask_iou")


@dataclass
class Table:
    """Mean scores per method and per reducer, how many videos they cover, and the scores
    per video they are means of (NaN where a video has no visible object to localise)."""

    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    reducers: dict[str, dict[str, float]] = field(default_factory=dict)
    videos: int = 0
    per_video: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"videos": self.videos, "methods": self.methods, "reducers": self.reducers}

    def markdown(self) -> str:
        """Two markdown tables: methods x metrics, reducers x shares kept."""
        lines = [f"Explanation methods ({self.videos} videos; deletion AUC: lower is better, others higher)", "",
                 "| method | deletion AUC | insertion AUC | pointing game | mask IoU |", "|---|---|---|---|---|"]
        for name, row in self.methods.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
        if self.reducers:
            lines += ["", "| reducer | object patches kept | all patches kept |", "|---|---|---|"]
            for name, row in self.reducers.items():
                lines.append(f"| {name} | {_fmt(row['object_kept'])} | {_fmt(row['all_kept'])} |")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def demo_items(data_dir: Path, split: str = "val", limit: Optional[int] = None,
               per_class: Optional[int] = None) -> list[tuple[Path, int]]:
    """(video path, label) of a demo list file ``<data_dir>/<split>.csv`` ("path label" lines),
    in file order: the first ``per_class`` of each label, then the first ``limit`` of those."""
    listing = Path(data_dir) / f"{split}.csv"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: no such list file (make one with 'ired-video make-demo-data')")
    items: list[tuple[Path, int]] = []
    taken: Counter[int] = Counter()
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        path, _, label = line.rpartition(" ")
        if not path or not label.isdigit():
            raise ValueError(f"{listing}:{number}: expected '<relative path> <label>', got {line!r}")
        if per_class is None or taken[int(label)] < per_class:
            taken[int(label)] += 1
            items.append((Path(data_dir) / path, int(label)))
    return items[:limit]


def load_object_mask(video: Path) -> np.ndarray:
    """The (T, H, W) bool object mask saved beside a demo video (``<stem>.npz``, key ``mask``)."""
    path = video.with_suffix(".npz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no object mask beside {video.name} (not a demo video?)")
    with np.load(path) as data:
        return data["mask"]


def reducer_label(cfg: ReducerConfig) -> str:
    knobs = {k: v for k, v in to_dict(cfg).items() if k in ("keep", "threshold", "mode") and v is not None}
    return f"{cfg.name} " + " ".join(f"{k}={v}" for k, v in knobs.items())


def _with_reducer(model: nn.Module, cfg: ReducerConfig) -> nn.Module:
    """A copy of ``model`` running ``cfg``: its own reducer (trained interpreters
    included) when that is the one asked for, else a freshly applied one."""
    reduced = copy.deepcopy(model)
    if model.reducer_config != cfg:
        apply_reducer(reduced, cfg)
    return reduced.eval()


def build_table(model: nn.Module, items: Sequence[tuple[Path, int]], methods: Sequence[str],
                reducers: Sequence[ReducerConfig] = (), steps: int = 20, backend: str = "auto",
                device: torch.device = CPU, progress: bool = True) -> Table:
    """Evaluate ``methods`` and ``reducers`` on ``items`` (demo videos and labels)."""
    data = model.data_config
    patch = model.config.patch_size
    scores: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in methods}
    shares: dict[str, dict[str, list[float]]] = {reducer_label(r): {"object_kept": [], "all_kept": []}
                                                 for r in reducers}
    reduced = {reducer_label(r): _with_reducer(model, r) for r in reducers}
    for path, label in tqdm(items, desc="videos", disable=not progress):
        decoded = decode_views(path, data, 1, 1, backend)
        video = decoded.videos.to(device)  # (1, C, T, H, W)
        coverage = demo_patch_coverage(load_object_mask(path), decoded.views[0].frame_indices, data, patch)
        target = torch.tensor([label], device=device)
        for method in methods:
            heat = explain(model, video, method, target)  # (1, T, N)
            curve = curves(model, video, heat, target, steps)
            row = scores[method]
            row["deletion_auc"].append(float(curve.deletion_auc()[0]))
            row["insertion_auc"].append(float(curve.insertion_auc()[0]))
            heat = heat[0].cpu().reshape(coverage.shape)  # (T, h, w)
            row["pointing_game"].append(pointing_game(heat, coverage))
            row["mask_iou"].append(mask_iou(heat, coverage))
        for name, reduced_model in reduced.items():
            with torch.no_grad():
                _, info = reduced_model(video, return_info=True)
            stages = stage_masks_from_info(info, clip=0)
            keep = torch.as_tensor(stages[-1].keep) if stages else torch.ones(coverage.shape, dtype=torch.bool)
            obj, every = object_share_kept(keep, coverage)
            shares[name]["object_kept"].append(obj)
            shares[name]["all_kept"].append(every)
    return Table({m: {k: _nanmean(v) for k, v in row.items()} for m, row in scores.items()},
                 {r: {k: _nanmean(v) for k, v in row.items()} for r, row in shares.items()}, len(items),
                 {**scores, **shares})


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")
