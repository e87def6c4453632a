"""Clip-level inference on users' videos: load a model, make every view, predict, report.

One video -> ``num_clips`` temporal clips x ``num_crops`` spatial crops ("views"),
preprocessed exactly as the model's data config says (frames, sampling rate, fps, short
side, crop, mean/std: stored in our checkpoints) -> the model in batches of views ->
per view: top-k classes, the GMACs really spent, the tokens kept after every reducer stage;
per video: the mean of the views' softmax probabilities. A file that cannot be decoded
gives a result with ``status="error"`` and the reason; the caller goes on.

Design notes: docs/design.md, "ired_video.inference".
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from ired_video.build import apply_reducer, create_model
from ired_video.config import ConfigError, DataConfig, ReducerConfig, to_dict
from ired_video.data.annotations import is_video_file
from ired_video.data.dataset import read_sampled_clip
from ired_video.data.decoding import DecodeError
from ired_video.data.sampling import sampler_for
from ired_video.data.transforms import eval_transform, to_tchw
from ired_video.devices import resolve_device
from ired_video.models import TimeSformer
from ired_video.viz.masks import stage_token_counts

DEFAULT_MODEL = "timesformer_micro"
RANDOM_WEIGHTS_WARNING = ("WARNING: no --checkpoint given: {name} has RANDOM weights, so its predictions "
                          "are meaningless. This only demonstrates the tool; pass --checkpoint CKPT.")
PathLike = Union[str, os.PathLike]


@dataclass
class LoadedModel:
    """A model ready for inference and what describes it in reports."""

    model: TimeSformer
    class_names: list[str]
    name: str
    checkpoint: Optional[str]
    device: torch.device

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    @property
    def data_config(self) -> DataConfig:
        return self.model.data_config

    def describe(self) -> dict[str, Any]:
        model = self.model
        reducer = model.reducer_config
        return {"name": self.name, "checkpoint": self.checkpoint, "random_weights": self.random_weights,
                "attention_type": model.config.attention_type, "num_classes": len(self.class_names),
                "reducer": to_dict(reducer) if reducer is not None else None,
                "unreduced_gmacs_per_view": unreduced_gmacs(model), "device": str(self.device)}


def class_names(model: TimeSformer) -> list[str]:
    """The checkpoint's class names when they fit the head, else ``class_<i>``."""
    count = model.config.num_classes
    names = list(model.data_config.class_names)
    return names if len(names) == count else [f"class_{i}" for i in range(count)]


def load_model(checkpoint: Optional[PathLike] = None, model_name: Optional[str] = None,
               reducer: Optional[ReducerConfig] = None, device: str = "auto") -> LoadedModel:
    """Our checkpoint (configs, reducer and preprocessing inside), or a named variant: with
    ``checkpoint`` its weights (official/timm files), without it random weights (demo only:
    ``LoadedModel.random_weights``). ``reducer`` replaces any stored one."""
    name = model_name
    if checkpoint is None and name is None:
        name = DEFAULT_MODEL
    target = resolve_device(device)  # before building anything
    with torch.random.fork_rng(devices=[]):  # random weights are the same on every run, globally untouched
        torch.manual_seed(0)
        model = create_model(name, checkpoint=checkpoint)
        if reducer is not None:
            apply_reducer(model, reducer)
    model = model.eval().to(target)
    label = name or Path(checkpoint).name  # type: ignore[arg-type]
    return LoadedModel(model, class_names(model), label, None if checkpoint is None else str(checkpoint), target)


def unreduced_gmacs(model: TimeSformer) -> float:
    """GMACs of one view at the data config's frames and crop with nothing reduced."""
    return model.static_gmacs(model.data_config.num_frames, model.data_config.crop_size)


def parse_views(text: str) -> tuple[int, int]:
    """``"1x3"`` -> (1 temporal clip, 3 spatial crops); crops are 1 (centre) or 3."""
    try:
        clips, crops = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--views {text!r}: expected CLIPSxCROPS, e.g. 1x1, 1x3 or 4x3") from None
    if clips < 1 or crops not in (1, 3):
        raise ConfigError(f"--views {text!r}: need at least 1 clip and 1 or 3 crops")
    return clips, crops


@dataclass
class ViewSpec:
    """Where a view comes from: temporal clip, spatial crop, the frames used."""

    clip_index: int
    crop_index: int
    frame_indices: list[int]
    padded: bool


@dataclass
class DecodedViews:
    """Every view of one video, normalised (V, C, T, H, W), and how it was decoded."""

    videos: Tensor
    views: list[ViewSpec]
    num_frames: int
    fps: float
    backend: str
    note: str


def decode_views(path: PathLike, data: DataConfig, num_clips: int = 1, num_crops: int = 1,
                 backend: str = "auto") -> DecodedViews:
    """Decode and preprocess ``num_clips`` x ``num_crops`` test views of ``path`` as ``data``
    says (clips spread and centred, short side ``test_short_side``, crops along the long
    side). Raises ``DecodeError`` naming the file."""
    sampler = sampler_for(data)
    videos, views, notes = [], [], []
    clip = None
    for clip_index in range(num_clips):
        clip, sample = read_sampled_clip(str(path), sampler, "test", clip_index, num_clips, backend,
                                         data.test_short_side)
        if clip.note:
            notes.append(clip.note)
        frames = to_tchw(clip.frames)  # (T, H, W, 3) -> (T, C, H, W) uint8
        for crop_index in range(num_crops):
            videos.append(eval_transform(frames, data.test_short_side, data.crop_size, data.mean, data.std,
                                         crop_index, num_crops))
            views.append(ViewSpec(clip_index, crop_index, list(clip.indices), sample.padded))
    assert clip is not None
    return DecodedViews(torch.stack(videos), views, clip.num_frames, clip.fps, clip.backend,
                        "; ".join(dict.fromkeys(notes)))  # (V, C, T, H, W)


@dataclass
class ViewRecord:
    """One view: where it came from, its best classes, what it cost. The same record in
    ``infer``'s JSON (each video's ``views``) and in evaluation's ``*_views.jsonl`` (one line
    per view, the video's own fields added); ``exit_stage`` is 1-based, None unless a cascade."""

    clip_index: int
    crop_index: int
    frame_indices: list[int]
    padded: bool
    top_k: list[dict[str, Any]]
    gmacs: float
    tokens_per_block: list[int]
    stages: list[dict[str, Any]]
    latency_ms: float
    exit_stage: Optional[int] = None


@dataclass
class VideoResult:
    """One file: its views and their aggregate, or the reason it could not be read."""

    path: str
    status: str = "ok"
    error: Optional[str] = None
    num_frames: Optional[int] = None
    fps: Optional[float] = None
    backend: Optional[str] = None
    note: str = ""
    prediction: Optional[dict[str, Any]] = None
    gmacs: Optional[float] = None
    gmacs_per_view: Optional[float] = None
    decode_ms: Optional[float] = None
    model_ms: Optional[float] = None
    views: list[ViewRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def top_k(probs: Tensor, names: Sequence[str], k: int) -> list[dict[str, Any]]:
    """(classes,) probabilities -> the ``k`` best as ``{"label", "index", "prob"}``, best first
    (``label`` None for an index without a name)."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"label": names[i] if i < len(names) else None, "index": int(i), "prob": round(float(p), 6)}
            for p, i in zip(values.tolist(), indices.tolist())]


def stage_entries(layout: Sequence[dict[str, Any]], tokens: Sequence[int], total: int) -> list[dict[str, Any]]:
    """A view's ``stages``: per reducer record (``layout``: its reducer, block and mode), the
    tokens the view kept after it and their share of its ``total`` patches."""
    return [{"reducer": stage["reducer"], "block": stage["block"], "mode": stage["mode"], "tokens": int(count),
             "kept_fraction": round(int(count) / total, 6)} for stage, count in zip(layout, tokens)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_views(loaded: LoadedModel, videos: Tensor, batch_size: int = 8
              ) -> tuple[Tensor, list[float], list[list[int]], list[list[dict[str, Any]]], list[float],
                         list[Optional[int]]]:
    """Run (V, C, T, H, W) views in batches. Returns softmax probabilities (V, classes), and
    per view: GMACs, tokens per block, tokens after each stage, latency (its batch's model
    time shared equally among the batch's views, ms), exit stage (1-based; None unless a cascade)."""
    model, device = loaded.model, loaded.device
    patch = model.config.patch_size
    total = videos.shape[2] * (videos.shape[3] // patch) * (videos.shape[4] // patch)  # patches of a (C, T, H, W) view
    probs, gmacs, tokens, stages, latency = [], [], [], [], []
    exits: list[Optional[int]] = []
    for start in range(0, videos.shape[0], batch_size):
        batch = videos[start:start + batch_size].to(device, non_blocking=True)
        _sync(device)
        began = time.perf_counter()
        with torch.inference_mode():
            logits, info = model(batch, return_info=True)
        _sync(device)
        per_view_ms = (time.perf_counter() - began) * 1000 / batch.shape[0]
        probs.append(logits.float().softmax(dim=-1).cpu())
        gmacs.extend(float(g) for g in info.gmacs.cpu())
        tokens.extend(row.tolist() for row in info.tokens.cpu())
        counts = stage_token_counts(info.records, info.state.num_patches)
        for clip in range(batch.shape[0]):
            stages.append(stage_entries(counts, [int(s["tokens"][clip]) for s in counts], total))
        latency.extend([round(per_view_ms, 3)] * batch.shape[0])
        exit_stage = getattr(info, "exit_stage", None)
        exits.extend([None] * batch.shape[0] if exit_stage is None else (exit_stage.cpu() + 1).tolist())
    return torch.cat(probs), gmacs, tokens, stages, latency, exits


def predict_video(loaded: LoadedModel, path: PathLike, num_clips: int = 1, num_crops: int = 1,
                  batch_size: int = 8, k: int = 5, backend: str = "auto") -> VideoResult:
    """Every view of one video and their aggregate (mean softmax); a file that cannot be
    decoded gives ``status="error"`` with the reason instead of raising."""
    result = VideoResult(path=str(path))
    began = time.perf_counter()
    try:
        decoded = decode_views(path, loaded.data_config, num_clips, num_crops, backend)
    except DecodeError as err:
        result.status, result.error = "error", err.reason
        return result
    except Exception as err:  # noqa: BLE001 -- any file that cannot become views is reported, not fatal
        result.status, result.error = "error", f"{type(err).__name__}: {err}"
        return result
    result.decode_ms = round((time.perf_counter() - began) * 1000, 3)
    result.num_frames, result.fps, result.backend, result.note = (
        decoded.num_frames, round(decoded.fps, 3), decoded.backend, decoded.note)
    probs, gmacs, tokens, stages, latency, exits = run_views(loaded, decoded.videos, batch_size)
    for i, spec in enumerate(decoded.views):
        result.views.append(ViewRecord(spec.clip_index, spec.crop_index, spec.frame_indices, spec.padded,
                                       top_k(probs[i], loaded.class_names, k), gmacs[i], tokens[i],
                                       stages[i], latency[i], exits[i]))
    mean = probs.mean(dim=0)  # (classes,): mean of the views' softmax
    best = top_k(mean, loaded.class_names, k)
    result.prediction = {"label": best[0]["label"], "index": best[0]["index"], "prob": best[0]["prob"],
                         "top_k": best}
    result.gmacs = sum(gmacs)
    result.gmacs_per_view = sum(gmacs) / len(gmacs)
    result.model_ms = round(sum(latency), 3)
    return result


def collect_videos(inputs: Iterable[PathLike]) -> list[str]:
    """Files as given (even unreadable or missing ones: they are reported), folders
    searched recursively for video files, in sorted order."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and is_video_file(p))
            paths.extend(found)
        else:
            paths.append(str(item))
    return paths


def infer_paths(loaded: LoadedModel, paths: Sequence[PathLike], num_clips: int = 1, num_crops: int = 1,
                batch_size: int = 8, k: int = 5, backend: str = "auto", progress: bool = True,
                on_result: Optional[Callable[[VideoResult], None]] = None) -> list[VideoResult]:
    """:func:`predict_video` over many files with a progress bar; never stops at a bad file."""
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(paths, desc="videos", unit="video", disable=not progress)
    for path in bar:
        name = Path(path).name
        bar.set_postfix_str(name if len(name) <= 30 else "…" + name[-29:], refresh=False)
        result = predict_video(loaded, path, num_clips, num_crops, batch_size, k, backend)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def summary(results: Sequence[VideoResult]) -> dict[str, Any]:
    """Counts and means over a run."""
    ok = [r for r in results if r.status == "ok"]
    views = sum(len(r.views) for r in ok)
    return {"videos": len(results), "ok": len(ok), "failed": len(results) - len(ok), "views": views,
            "mean_gmacs_per_view": sum(r.gmacs or 0.0 for r in ok) / views if views else None,
            "mean_latency_ms_per_view": round(sum(r.model_ms or 0.0 for r in ok) / views, 3) if views else None}


def report(loaded: LoadedModel, results: Sequence[VideoResult], views: str, batch_size: int,
           k: int, seconds: float) -> dict[str, Any]:
    """The JSON document ``ired-video infer --output`` writes."""
    return {"model": loaded.describe(), "data_config": to_dict(loaded.data_config), "views": views,
            "batch_size": batch_size, "top_k": k, "seconds": round(seconds, 3),
            "summary": summary(results), "videos": [r.to_dict() for r in results]}


def summary_table(results: Sequence[VideoResult]) -> str:
    """A plain-text table: one row per video (prediction or error), for the terminal."""
    rows = [("video", "status", "prediction", "prob", "views", "GMACs/view", "kept", "ms/view")]
    for r in results:
        name = Path(r.path).name
        if r.status != "ok" or r.prediction is None:
            rows.append((name, "error", (r.error or "")[:60], "", "", "", "", ""))
            continue
        stages = r.views[0].stages
        kept = f"{sum(v.stages[-1]['kept_fraction'] for v in r.views) / len(r.views):.0%}" if stages else "100%"
        rows.append((name, "ok", r.prediction["label"], f"{r.prediction['prob']:.3f}", str(len(r.views)),
                      f"{r.gmacs_per_view or 0.0:.4f}", kept, f"{(r.model_ms or 0.0) / len(r.views):.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
