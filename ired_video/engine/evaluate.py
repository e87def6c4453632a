"""Multi-view evaluation, exact under several processes, with per-view compute logs.

Every view (clip x crop) of every video is one dataset item. Processes evaluate their
shard; ``gather_for_metrics`` collects logits, labels, video indices and compute records
without duplicates (map-style dataset), and the main process averages softmax scores per
video. Views whose file could not be read (the dataset replaced them with another video)
are excluded and counted; the report lists those files (``bad_files``) and their rows in
the per-view JSONL name the bad file (``replaced_by``: the video decoded instead). GMACs
per view are what each view's forward really spent; GMACs per video add up its views.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm import tqdm

from ired_video.build import apply_reducer, create_model
from ired_video.cascade.model import apply_budget
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.engine.accelerator import new_accelerator
from ired_video.inference import ViewRecord, stage_entries, top_k
from ired_video.models.timesformer import evaluating
from ired_video.viz.masks import stage_token_counts


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: VideoDataset, accelerator: Accelerator, batch_size: int,
             num_workers: int, views_jsonl: Optional[Path] = None, desc: str = "eval") -> dict[str, Any]:
    """Top-1/top-5/mean-class accuracy over videos and GMACs per view and per video."""
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers))
    rows: dict[str, list[torch.Tensor]] = {}
    layout = StageLayout()
    with evaluating(model):
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=False):
            start = time.perf_counter()
            logits, info = model(batch["video"], return_info=True)
            latency = torch.full_like(info.gmacs, (time.perf_counter() - start) / len(logits))
            view = {"logits": logits.float(), "label": batch["label"], "video_index": batch["video_index"],
                    "index": batch["index"], "clip_index": batch["clip_index"], "crop_index": batch["crop_index"],
                    "frame_indices": batch["frame_indices"], "padded": batch["padded"],
                    "failed": batch["num_failed"], "gmacs": info.gmacs.float(), "tokens": info.tokens,
                    "latency": latency}
            if getattr(info, "exit_stage", None) is not None:  # a cascade: where each view exited
                view["exit_stage"] = info.exit_stage
            else:  # a cascade keeps the last stage's records only when every clip reached it: no stages
                view["stage_tokens"] = layout.tokens_after_each(info)
            for key, value in accelerator.gather_for_metrics(view).items():
                rows.setdefault(key, []).append(value.cpu())
    if not accelerator.is_main_process:
        return {}
    views = {k: torch.cat(v) for k, v in rows.items()}
    report = summarise(views, dataset)
    if views_jsonl is not None:
        write_views(views_jsonl, views, dataset, layout)
    return report


@dataclass
class StageLayout:
    """The reducer records of the evaluated model (reducer, block, mode; the same for every
    batch) and the patches of one view, for each view's ``stages``."""

    stages: list[dict[str, Any]] = field(default_factory=list)
    patches: int = 0

    def tokens_after_each(self, info: Any) -> torch.Tensor:
        """(B, S) long: tokens each clip kept after each of the S reducer records of ``info``."""
        counts = stage_token_counts(info.records, info.state.num_patches)
        self.stages = [{key: stage[key] for key in ("reducer", "block", "mode")} for stage in counts]
        self.patches = info.state.num_frames_in * info.state.num_patches
        batch = info.gmacs.shape[0]
        if not counts:
            return torch.zeros(batch, 0, dtype=torch.long, device=info.gmacs.device)
        return torch.stack([stage["tokens"] for stage in counts], dim=1).to(info.gmacs.device)  # (B, S)


def summarise(views: dict[str, torch.Tensor], dataset: VideoDataset) -> dict[str, Any]:
    ok = views["failed"] == 0
    probs = views["logits"].softmax(dim=-1)
    num_videos = len(dataset.records)
    classes = probs.shape[1]
    summed = torch.zeros(num_videos, classes).index_add_(0, views["video_index"][ok], probs[ok])
    counted = torch.zeros(num_videos).index_add_(0, views["video_index"][ok], torch.ones(int(ok.sum())))
    labels = torch.full((num_videos,), -1, dtype=torch.long)
    labels[views["video_index"]] = views["label"]
    evaluated = (counted > 0) & (labels >= 0)
    scores, truth = summed[evaluated] / counted[evaluated, None], labels[evaluated]
    top5 = scores.topk(min(5, classes), dim=-1).indices
    correct = top5[:, 0] == truth
    per_class = [float(correct[truth == c].float().mean()) for c in truth.unique().tolist()]
    video_gmacs = torch.zeros(num_videos, dtype=torch.float64).index_add_(
        0, views["video_index"][ok], views["gmacs"][ok].double())
    return {
        "videos": int(evaluated.sum()), "views": int(ok.sum()), "bad_views": int((~ok).sum()),
        "views_per_video": dataset.num_clips * dataset.num_crops,
        "top1": float(correct.float().mean()) if len(truth) else 0.0,
        "top5": float((top5 == truth[:, None]).any(dim=-1).float().mean()) if len(truth) else 0.0,
        "mean_class_accuracy": sum(per_class) / len(per_class) if per_class else 0.0,
        "gmacs_per_view": float(views["gmacs"][ok].mean()) if ok.any() else 0.0,
        "gmacs_per_video": float(video_gmacs[evaluated].mean()) if evaluated.any() else 0.0,
        "tokens_per_block": views["tokens"][ok].float().mean(dim=0).tolist(),
        "latency_ms_per_view": 1000 * float(views["latency"].mean()),
        "bad_files": sorted({dataset.records[index].path for index in _requested(views, dataset)[~ok].tolist()}),
        **_exit_shares(views, ok),
    }


def _requested(views: dict[str, torch.Tensor], dataset: VideoDataset) -> torch.Tensor:
    """(V,) the video each view was asked for (``video_index`` is the one decoded: a replacement
    when the file was bad)."""
    return torch.tensor([dataset.view(int(i))[0] for i in views["index"]], dtype=torch.long)


def _exit_shares(views: dict[str, torch.Tensor], ok: torch.Tensor) -> dict[str, Any]:
    """A cascade's share of views exiting at each stage (1-based keys), else nothing."""
    if "exit_stage" not in views or not ok.any():
        return {}
    exits = views["exit_stage"][ok]
    counts = torch.bincount(exits, minlength=int(exits.max()) + 1).double() / len(exits)
    return {"exit_shares": {str(k + 1): float(c) for k, c in enumerate(counts)}}


def near_chance(top1: float, num_classes: int, videos: int) -> Optional[str]:
    """A warning when top-1 is within two binomial standard errors of chance (1 / classes),
    else None: the recipe has not learned these classes (yet)."""
    chance = 1.0 / num_classes
    margin = 2.0 * (chance * (1.0 - chance) / max(videos, 1)) ** 0.5
    if top1 > chance + margin:
        return None
    return (f"validation top-1 {top1:.3f} is at chance ({chance:.3f} for {num_classes} classes, within "
            f"{margin:.3f} on {videos} videos): the model is not learning these classes. Check the labels "
            "and the data (ired-video check-videos), lower optim.lr, or train longer from a pretrained checkpoint")


def write_views(path: Path, views: dict[str, torch.Tensor], dataset: VideoDataset, layout: StageLayout) -> None:
    """One JSON line per evaluated view: the video (``video``, ``video_index``, ``label``,
    ``bad_file``, ``replaced_by``) and the view's ``ViewRecord`` fields."""
    names = dataset.cfg.class_names
    probs = views["logits"].softmax(dim=-1)
    requested = _requested(views, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(len(probs)):
            video, decoded = int(requested[i]), int(views["video_index"][i])
            stages = [] if "stage_tokens" not in views else \
                stage_entries(layout.stages, views["stage_tokens"][i].tolist(), layout.patches)
            record = ViewRecord(
                clip_index=int(views["clip_index"][i]), crop_index=int(views["crop_index"][i]),
                frame_indices=views["frame_indices"][i].tolist(), padded=bool(views["padded"][i]),
                top_k=top_k(probs[i], names, 5), gmacs=float(views["gmacs"][i]),
                tokens_per_block=views["tokens"][i].tolist(), stages=stages,
                latency_ms=round(1000 * float(views["latency"][i]), 3),
                exit_stage=int(views["exit_stage"][i]) + 1 if "exit_stage" in views else None)
            f.write(json.dumps({
                "video": dataset.records[video].path, "video_index": video,
                "label": int(dataset.records[video].label), "bad_file": bool(views["failed"][i]),
                "replaced_by": dataset.records[decoded].path if decoded != video else None,
                **dataclasses.asdict(record)}) + "\n")


def views_file(report: Path) -> Path:
    """Where ``evaluate_checkpoint`` writes the per-view JSONL beside its ``report``."""
    return report.with_name(report.stem + "_views.jsonl")


def evaluate_checkpoint(checkpoint: Path, data: str, *, reducer: Any = None, root: Optional[str] = None,
                        split: Optional[str] = None, clips: int = 1, crops: int = 1, batch_size: int = 8,
                        workers: int = 2, cpu: bool = False, output: Optional[Path] = None,
                        budget: Optional[float] = None) -> dict[str, Any]:
    """Load our checkpoint (optionally with another reducer), evaluate it on annotated
    videos with its own preprocessing, and write the report and per-view JSONL."""
    model = create_model(checkpoint=checkpoint)
    if reducer is not None:
        apply_reducer(model, reducer)
    calibrated = apply_budget(model, budget)
    ann = load_annotations(data, video_root=root, class_names=model.data_config.class_names or None, split=split)
    dataset = VideoDataset(ann.records, model.data_config, "test", num_clips=clips, num_crops=crops)
    accelerator = new_accelerator(cpu=cpu)
    model = model.to(accelerator.device)
    views_log = None if output is None else views_file(output)
    report = evaluate(model, dataset, accelerator, batch_size, workers, views_log)
    if accelerator.is_main_process and output is not None:
        report.update(checkpoint=str(checkpoint), data=str(data), views_spec=f"{clips}x{crops}",
                      reducer=str(reducer) if reducer is not None else None)
        if calibrated is not None:
            report.update(budget=budget, thresholds=calibrated["thresholds"], calibrated=calibrated)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1))
    return report
