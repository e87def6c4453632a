"""Fast recipe probes on a generated demo task: decode once, train in memory, top-1 vs CPU s.

`tools/bench_recipe.py` times the real `ired-video train` (decoding, augmentation, logging);
this tool answers "does this architecture leave chance, and how fast per step" in a few
CPU minutes. Every video of ``--data``'s train/val lists is decoded once (all frames, short
side 64) into ``<data>/probe_cache_<split>.pt``; each step samples 8 frames 4 apart at a
random start and a random 64-px crop (validation: the centre), no scale jitter, AdamW with a
linear warm-up and cosine decay, batch 16, label smoothing, gradient clipping 1.0.

Models: ``cnn3d`` (the issue's kind of baseline: four 3x3x3 conv-BN-ReLU stages, 16-32-48-64
channels, global average pool, 141k parameters) or any registered TimeSformer
(``--model timesformer_micro``) with ``--stem`` and ``--pool cls`` (the class token, the
model's own head) or ``mean`` (the mean of the final patch tokens through the same norm and
head; probe only, no reducers).

``--pretrain CORPUS --save BACKBONE`` pretrains a TimeSformer instead, without class labels,
on a generated corpus's saved masks: per frame, which patch holds the actor (a softmax over
the frame's patch tokens against the actor's coverage) and, on the actor's patches, its
direction of motion (with ``--mask-target`` also which of each patch's pixels the actor
covers: its silhouette), and saves it as our checkpoint (a one-class head the fine-tuning
replaces), which ``--init BACKBONE`` here and ``ired-video train init.checkpoint=BACKBONE``
start from; a probe's CPU seconds count its fine-tuning only.

    python tools/probe_recipe.py --data runs/data/hard200 --model cnn3d --steps 600 \\
        --out docs/bench/probe_hard.json
    python tools/probe_recipe.py --pretrain runs/data/hardpre --save runs/pre/conv3d_mask_900.pth \\
        --mask-target --model timesformer_micro --stem conv3d --steps 900 --threads 2
    python tools/probe_recipe.py --data runs/data/hard200 --init runs/pre/conv3d_mask_900.pth \\
        --model timesformer_micro --stem conv3d --steps 700
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ired_video.build import create_model
from ired_video.config import DataConfig
from ired_video.data.decoding import read_clip
from ired_video.data.demo import DIRECTION_VECTORS, class_name_parts, label_factor_shares
from ired_video.data.transforms import normalize
from ired_video.models.timesformer import TimeSformer
from ired_video.models.weights import CheckpointError, load_weights, save_checkpoint

FRAMES, STRIDE, CROP = 8, 4, 64
MEAN, STD = DataConfig().mean, DataConfig().std  # the package's defaults, as the demo recipe uses


def load_split(data: Path, split: str, with_masks: bool = False) -> dict[str, Tensor]:
    """One split decoded once and cached: ``x`` uint8 (N, T, 3, 64, W) clips, ``y`` (N,) labels;
    with ``with_masks`` also ``m`` uint8 (N, T, 64, W) actor coverage x 255 and ``d`` (N, 2)
    the actor's direction of motion (x right, y down), from the masks saved by the generator."""
    cache = data / f"probe_cache_{split}.pt"
    stored = torch.load(cache, weights_only=True) if cache.is_file() else {}
    if "x" in stored and (not with_masks or "m" in stored):
        return stored
    clips, labels, masks, directions = [], [], [], []
    lines = (data / f"{split}.csv").read_text(encoding="utf-8").splitlines()
    for line in tqdm(lines, desc=f"decoding {split}", unit="video"):
        relative, label = line.rsplit(" ", 1)
        clip = read_clip(data / relative, lambda count, fps: tuple(range(count)), "pyav", short_side=CROP)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # (T, H, W, 3) -> (T, 3, H, W)
        clips.append(frames)
        labels.append(int(label))
        if with_masks:
            with np.load((data / relative).with_suffix(".npz")) as saved:
                mask = torch.from_numpy(saved["mask"]).float()  # (T, H0, W0) at the video's size
                directions.append(DIRECTION_VECTORS[str(saved["direction"])])
            coverage = F.adaptive_avg_pool2d(mask, frames.shape[-2:])  # (T, 64, W): share of each pixel
            masks.append((coverage * 255).round().to(torch.uint8))
    stored = {"x": torch.stack(clips), "y": torch.tensor(labels)}
    if with_masks:
        stored.update(m=torch.stack(masks), d=torch.tensor(directions))
    torch.save(stored, cache)
    return stored


def windows(clips: Tensor, train: bool, generator: Optional[torch.Generator]) -> tuple[list[int], list[int]]:
    """First frame and left column of each clip's view: random when training, else centred."""
    batch, frames, width = clips.shape[0], clips.shape[1], clips.shape[-1]
    span = STRIDE * (FRAMES - 1) + 1
    if train:
        starts = torch.randint(0, frames - span + 1, (batch,), generator=generator).tolist()
        lefts = torch.randint(0, width - CROP + 1, (batch,), generator=generator).tolist()
        return starts, lefts
    return [(frames - span) // 2] * batch, [(width - CROP) // 2] * batch


def crop(frames: Tensor, start: int, left: int) -> Tensor:
    """(T, ..., H, W) -> (8, ..., H, 64): 8 frames ``STRIDE`` apart from ``start``, 64 columns from ``left``."""
    return frames[start:start + STRIDE * (FRAMES - 1) + 1:STRIDE, ..., left:left + CROP]


def views(clips: Tensor, starts: list[int], lefts: list[int]) -> Tensor:
    """(B, T, 3, H, W) uint8 -> normalised (B, 3, 8, 64, 64) at the given windows."""
    return torch.stack([normalize(crop(clip, t, left), MEAN, STD) for clip, t, left in zip(clips, starts, lefts)])


def sample(clips: Tensor, train: bool, generator: Optional[torch.Generator]) -> Tensor:
    """(B, T, 3, H, W) uint8 -> normalised (B, 3, 8, 64, 64): 8 frames 4 apart, one crop."""
    return views(clips, *windows(clips, train, generator))


def patch_pixels(masks: Tensor, starts: list[int], lefts: list[int], patch: int) -> Tensor:
    """(B, T, 64, W) uint8 coverage -> (B, 8, K, patch * patch) the actor's pixels in each patch,
    0-1, patches row-major as the model's tokens (their mean: the share each patch is covered)."""
    views = torch.stack([crop(mask, t, left) for mask, t, left in zip(masks, starts, lefts)]).float() / 255
    batch, frames, size = views.shape[0], views.shape[1], views.shape[-1] // patch
    tiles = views.view(batch, frames, size, patch, size, patch)  # (B, 8, 64, 64) -> (B, 8, h, p, w, p)
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(batch, frames, size * size, patch * patch)  # -> (B, 8, K, p*p)


class Cnn3d(nn.Module):
    """Four 3x3x3 conv-BN-ReLU stages (spatial stride 2 each, temporal 2 in the last two), mean pool, linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        widths, strides = (3, 16, 32, 48, 64), ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
        self.features = nn.Sequential(*(nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1, bias=False),
                                                      nn.BatchNorm3d(cout), nn.ReLU())
                                        for cin, cout, stride in zip(widths, widths[1:], strides)))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.features(video).mean(dim=(2, 3, 4)))  # (B, C, T', H', W') -> (B, C)


class MeanPooled(nn.Module):
    """A TimeSformer read out from the mean of its final patch tokens instead of the class token."""

    def __init__(self, model: TimeSformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        state = self.model.forward_blocks(self.model.embed(video))
        return self.model.head(self.model.norm(state.x.mean(dim=(1, 2))))  # (B, F, K, D) -> (B, D)


class MotionPretraining(nn.Module):
    """A TimeSformer with heads on each final patch token, for pretraining: ``where`` (B, F, K)
    a logit for "the actor is here" (softmax over each frame's patches), ``direction``
    (B, F, K, 2) its motion (x, y); optionally ``shape`` (B, F, K, shapes) logits for its shape
    and ``mask`` (B, F, K, patch * patch) logits for which of the patch's pixels it covers."""

    def __init__(self, model: TimeSformer, shapes: int = 0, mask: bool = False) -> None:
        super().__init__()
        self.model = model
        width, patch = model.head.in_features, model.config.patch_size
        heads = {"where": nn.Linear(width, 1), "direction": nn.Linear(width, 2)}
        if shapes:
            heads["shape"] = nn.Linear(width, shapes)
        if mask:
            heads["mask"] = nn.Linear(width, patch * patch)
        self.heads = nn.ModuleDict(heads)

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        tokens = self.model.norm(self.model.forward_blocks(self.model.embed(video)).x)  # (B, F, K, D)
        out = {name: head(tokens) for name, head in self.heads.items()}
        out["where"] = out["where"].squeeze(-1)  # (B, F, K, 1) -> (B, F, K)
        return out


def motion_losses(out: dict[str, Tensor], coverage: Tensor, direction: Tensor, shape: Optional[Tensor] = None,
                  pixels: Optional[Tensor] = None) -> dict[str, Tensor]:
    """``where``: cross-entropy of each frame's patch logits against the actor's coverage
    (frames where the actor is in the crop); ``direction``: squared error against the clip's
    direction, and (with ``shape``, (B,) indices) ``shape``: cross-entropy, both on patches at
    least a quarter covered; (with ``pixels``, (B, F, K, p*p)) ``mask``: per-pixel binary
    cross-entropy, the mean over the actor's patches plus the mean over all the others."""
    visible = coverage.sum(-1) > 0  # (B, F)
    target = coverage[visible] / coverage[visible].sum(-1, keepdim=True)  # (V, K), rows sum to 1
    losses = {"where": -(target * out["where"][visible].log_softmax(-1)).sum(-1).mean()}
    weight = (coverage > 0.25).float()  # (B, F, K)
    total = weight.sum().clamp(min=1)
    error = ((out["direction"] - direction[:, None, None, :]) ** 2).sum(-1)  # (B, F, K)
    losses["direction"] = (error * weight).sum() / total
    if shape is not None:
        logits = out["shape"].flatten(0, 2)  # (B, F, K, S) -> (B*F*K, S)
        per_patch = F.cross_entropy(logits, shape[:, None, None].expand_as(weight).flatten(), reduction="none")
        losses["shape"] = (per_patch * weight.flatten()).sum() / total
    if pixels is not None:
        per_patch = F.binary_cross_entropy_with_logits(out["mask"], pixels, reduction="none").mean(-1)  # (B, F, K)
        actor = coverage > 0
        losses["mask"] = per_patch[actor].mean() + per_patch[~actor].mean() if actor.any() else per_patch.mean()
    return losses


def build(name: str, num_classes: int, stem: str, pool: str) -> nn.Module:
    if name == "cnn3d":
        return Cnn3d(num_classes)
    model = create_model(name, num_classes=num_classes, patch_stem=stem)
    return MeanPooled(model) if pool == "mean" else model


def optimiser(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on biases, norms, embeddings and the class token."""
    undecayed = ("pos_embed", "time_embed", "cls_token")
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(undecayed)]
    chosen = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@torch.no_grad()
def validation_scores(model: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> dict[str, float]:
    """Top-1 (%) on the centre views; for "<shape> moving <direction>" class names also the
    share of videos whose predicted class has the right shape, and the right direction."""
    model.eval()
    predicted = torch.cat([model(sample(x[i:i + 64], False, None)).argmax(1) for i in range(0, len(y), 64)])
    model.train()
    scores = {"val_top1": round(100.0 * float((predicted == y).float().mean()), 1)}
    shares = label_factor_shares(predicted.tolist(), y.tolist(), names)
    for factor, share in (shares or {}).items():
        scores[f"val_{factor}"] = round(100.0 * share, 1)
    return scores


def cosine_warmup(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 1/12 of ``steps``, then cosine decay to zero."""
    warmup = max(1, steps // 12)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def optimiser_step(model: nn.Module, opt: torch.optim.Optimizer, schedule: Any, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()


@torch.no_grad()
def motion_scores(net: MotionPretraining, split: dict[str, Tensor], patch: int) -> dict[str, float]:
    """Share of visible-actor frames whose top patch is on the actor, of clips whose
    actor-weighted mean predicted direction is nearest the true one of the four, with
    ``shape`` targets in ``split`` of clips whose actor-weighted mean shape logits are right,
    and with a ``mask`` head the IoU of its pixels (logit > 0) with the actor's (> half covered)."""
    net.eval()
    found = frames = right = shaped = 0
    overlap = union = 0.0
    axes = torch.tensor(list(DIRECTION_VECTORS.values()))  # (4, 2)
    for i in range(0, len(split["y"]), 64):
        clips, masks, direction = split["x"][i:i + 64], split["m"][i:i + 64], split["d"][i:i + 64]
        starts, lefts = windows(clips, False, None)
        out = net(views(clips, starts, lefts))
        pixels = patch_pixels(masks, starts, lefts, patch)  # (B, F, K, p*p)
        coverage = pixels.mean(-1)  # (B, F, K)
        visible = coverage.sum(-1) > 0
        top = out["where"].argmax(-1, keepdim=True)  # (B, F, 1)
        found += int((coverage.gather(-1, top).squeeze(-1) > 0)[visible].sum())
        frames += int(visible.sum())
        weight = coverage[..., None]  # (B, F, K, 1)
        mean = (out["direction"] * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1e-6)  # (B, 2)
        right += int(((mean @ axes.T).argmax(-1) == (direction @ axes.T).argmax(-1)).sum())
        if "shape" in split:
            shape_logits = (out["shape"] * weight).sum((1, 2))  # (B, S)
            shaped += int((shape_logits.argmax(-1) == split["shape"][i:i + 64]).sum())
        if "mask" in out:
            drawn, actor = out["mask"] > 0, pixels > 0.5
            overlap += float((drawn & actor).sum())
            union += float((drawn | actor).sum())
    net.train()
    scores = {"actor_found": round(100.0 * found / max(frames, 1), 1),
              "direction": round(100.0 * right / len(split["y"]), 1)}
    if "shape" in split:
        scores["shape"] = round(100.0 * shaped / len(split["y"]), 1)
    if union:
        scores["mask_iou"] = round(100.0 * overlap / union, 1)
    return scores


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain a TimeSformer on ``--pretrain`` (a generated corpus with masks) to find the
    actor, its direction (and with ``--mask-target`` its pixels), no class labels; save the
    backbone to ``--save``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, val = load_split(args.pretrain, "train", True), load_split(args.pretrain, "val", True)
    shapes = 0
    if args.shape_target:
        classes = args.pretrain / "classes.txt"
        parts = class_name_parts(classes.read_text(encoding="utf-8").splitlines())
        if parts is None:
            raise SystemExit(f"{classes}: --shape-target needs '<shape> moving <direction>' class names")
        kinds = sorted({shape for shape, _ in parts})
        shape_of_label = torch.tensor([kinds.index(shape) for shape, _ in parts])
        shapes = len(kinds)
        for split in (train, val):
            split["shape"] = shape_of_label[split["y"]]
    model = create_model(args.model, num_classes=1, patch_stem=args.stem)
    patch = model.config.patch_size
    net = MotionPretraining(model, shapes, args.mask_target)
    opt = optimiser(net, args.lr, args.weight_decay)
    schedule = cosine_warmup(opt, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    start_cpu, start_wall, losses, points = cpu_seconds(), time.perf_counter(), [], []
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train["y"]), (args.batch_size,), generator=generator)
        clips = train["x"][index]
        starts, lefts = windows(clips, True, generator)
        pixels = patch_pixels(train["m"][index], starts, lefts, patch)  # (B, 8, K, p*p)
        parts = motion_losses(net(views(clips, starts, lefts)), pixels.mean(-1), train["d"][index],
                              train["shape"][index] if shapes else None, pixels if args.mask_target else None)
        optimiser_step(net, opt, schedule, sum(parts.values()))
        losses.append({k: v.item() for k, v in parts.items()})
        if step % args.every == 0 or step == args.steps:
            recent = losses[-50:]
            point = {"step": step, **{f"{k}_loss": round(sum(r[k] for r in recent) / len(recent), 3) for k in parts},
                     **motion_scores(net, val, patch),
                     "cpu_s": round(cpu_seconds() - start_cpu, 1), "wall_s": round(time.perf_counter() - start_wall, 1)}
            points.append(point)
            print(f"[{args.name}] " + ", ".join(f"{k} {v}" for k, v in point.items()), flush=True)
    row = {"name": args.name, "phase": "pretrain", "model": args.model, "stem": args.stem, "lr": args.lr,
           "weight_decay": args.weight_decay, "batch_size": args.batch_size, "steps": args.steps,
           "seed": args.seed, "threads": args.threads, "data": str(args.pretrain), "shape_target": args.shape_target,
           "mask_target": args.mask_target,
           "train_videos": len(train["y"]), "val_videos": len(val["y"]), "saved": str(args.save),
           "parameters": sum(p.numel() for p in net.parameters()), "points": points}
    save_checkpoint(args.save, model, pretraining={k: v for k, v in row.items() if k != "points"})
    return row


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Train one model (from ``--init`` if given); the row with validation top-1 at every ``--every`` steps."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    train_x, train_y, val_x, val_y = train["x"], train["y"], val["x"], val["y"]
    num_classes = int(train_y.max()) + 1
    classes = args.data / "classes.txt"
    names = classes.read_text(encoding="utf-8").splitlines() if classes.is_file() else []
    model = build(args.model, num_classes, args.stem, args.pool)
    if args.init is not None:
        try:  # strict but for the classifier, which the new label set replaces
            load_weights(model.model if isinstance(model, MeanPooled) else model, args.init, drop_head=True)
        except CheckpointError as err:
            raise SystemExit(str(err)) from None
    opt = optimiser(model, args.lr, args.weight_decay)
    schedule = cosine_warmup(opt, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    start_cpu, start_wall, losses, points = cpu_seconds(), time.perf_counter(), [], []
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_y), (args.batch_size,), generator=generator)
        loss = F.cross_entropy(model(sample(train_x[index], True, generator)), train_y[index],
                               label_smoothing=args.label_smoothing)
        optimiser_step(model, opt, schedule, loss)
        losses.append(loss.item())
        if step % args.every == 0 or step == args.steps:
            point = {"step": step, "train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 3),
                     **validation_scores(model, val_x, val_y, names),
                     "cpu_s": round(cpu_seconds() - start_cpu, 1), "wall_s": round(time.perf_counter() - start_wall, 1)}
            points.append(point)
            print(f"[{args.name}] " + ", ".join(f"{k} {v}" for k, v in point.items()), flush=True)
    return {"name": args.name, "model": args.model, "stem": args.stem, "pool": args.pool, "lr": args.lr,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size, "steps": args.steps,
            "seed": args.seed, "threads": args.threads, "data": str(args.data), "train_videos": len(train_y),
            "val_videos": len(val_y), "classes": num_classes, "init": None if args.init is None else str(args.init),
            "parameters": sum(p.numel() for p in model.parameters()), "points": points}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a generated demo dataset folder (train.csv, val.csv)")
    parser.add_argument("--model", default="cnn3d", help="cnn3d or a registered TimeSformer name")
    parser.add_argument("--stem", default="linear", choices=("linear", "conv", "conv3d"), help="TimeSformer patch stem")
    parser.add_argument("--pool", default="cls", choices=("cls", "mean"), help="TimeSformer read-out")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="row name (default: model-stem-pool)")
    parser.add_argument("--out", type=Path, default=None, help="JSON list to append the row to")
    parser.add_argument("--pretrain", type=Path, default=None,
                        help="instead of classifying --data: pretrain on this generated corpus (masks as targets, "
                             "no labels) and save the backbone to --save")
    parser.add_argument("--shape-target", action="store_true",
                        help="--pretrain also teaches the actor's shape per patch (with the direction, the "
                             "generated tasks' label: a diagnostic, not a label-free pretraining)")
    parser.add_argument("--mask-target", action="store_true",
                        help="--pretrain also draws the actor's pixels in each patch (its silhouette from the "
                             "generator's masks; no class label)")
    parser.add_argument("--save", type=Path, default=None, help="where --pretrain writes the backbone")
    parser.add_argument("--init", type=Path, default=None, help="start from a backbone saved by --pretrain")
    args = parser.parse_args(argv)
    if (args.pretrain is None) != (args.save is None):
        parser.error("--pretrain and --save go together")
    if (args.pretrain is None) == (args.data is None):
        parser.error("give --data (classify) or --pretrain (pretrain), one of them")
    if args.pretrain is not None and args.model == "cnn3d":
        parser.error("--pretrain needs a TimeSformer --model")
    args.name = args.name or f"{args.model}-{args.stem}-{args.pool}"
    row = pretrain(args) if args.pretrain is not None else probe(args)
    if args.out is not None:
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
