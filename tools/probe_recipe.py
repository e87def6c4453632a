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

    python tools/probe_recipe.py --data runs/data/hard200 --model cnn3d --steps 600 \\
        --out docs/bench/probe_hard.json
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ired_video.build import create_model
from ired_video.config import DataConfig
from ired_video.data.decoding import read_clip
from ired_video.data.transforms import normalize
from ired_video.models.timesformer import TimeSformer

FRAMES, STRIDE, CROP = 8, 4, 64
MEAN, STD = DataConfig().mean, DataConfig().std  # the package's defaults, as the demo recipe uses


def load_split(data: Path, split: str) -> tuple[Tensor, Tensor]:
    """uint8 (N, T, 3, 64, W) clips and (N,) labels of one split, decoded once and cached."""
    cache = data / f"probe_cache_{split}.pt"
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        return stored["x"], stored["y"]
    clips, labels = [], []
    lines = (data / f"{split}.csv").read_text(encoding="utf-8").splitlines()
    for line in tqdm(lines, desc=f"decoding {split}", unit="video"):
        relative, label = line.rsplit(" ", 1)
        clip = read_clip(data / relative, lambda count, fps: tuple(range(count)), "pyav", short_side=CROP)
        clips.append(torch.from_numpy(clip.frames).permute(0, 3, 1, 2))  # (T, H, W, 3) -> (T, 3, H, W)
        labels.append(int(label))
    x, y = torch.stack(clips), torch.tensor(labels)
    torch.save({"x": x, "y": y}, cache)
    return x, y


def sample(clips: Tensor, train: bool, generator: torch.Generator) -> Tensor:
    """(B, T, 3, H, W) uint8 -> normalised (B, 3, 8, 64, 64): 8 frames 4 apart, one crop."""
    batch, frames, _, _, width = clips.shape
    span = STRIDE * (FRAMES - 1) + 1
    if train:
        starts = torch.randint(0, frames - span + 1, (batch,), generator=generator).tolist()
        lefts = torch.randint(0, width - CROP + 1, (batch,), generator=generator).tolist()
    else:
        starts, lefts = [(frames - span) // 2] * batch, [(width - CROP) // 2] * batch
    views = [clip[t:t + span:STRIDE, :, :, left:left + CROP] for clip, t, left in zip(clips, starts, lefts)]
    return torch.stack([normalize(view, MEAN, STD) for view in views])  # B x (3, 8, 64, 64)


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
def top1(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    correct = sum(int((model(sample(x[i:i + 64], False, None)).argmax(1) == y[i:i + 64]).sum())
                  for i in range(0, len(y), 64))
    model.train()
    return 100.0 * correct / len(y)


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Train one model; the row with validation top-1 at every ``--every`` steps."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_x, train_y = load_split(args.data, "train")
    val_x, val_y = load_split(args.data, "val")
    num_classes = int(train_y.max()) + 1
    model = build(args.model, num_classes, args.stem, args.pool)
    opt = optimiser(model, args.lr, args.weight_decay)
    warmup = max(1, args.steps // 12)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    generator = torch.Generator().manual_seed(args.seed)
    start_cpu, start_wall, losses, points = cpu_seconds(), time.perf_counter(), [], []
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_y), (args.batch_size,), generator=generator)
        loss = F.cross_entropy(model(sample(train_x[index], True, generator)), train_y[index],
                               label_smoothing=args.label_smoothing)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.every == 0 or step == args.steps:
            point = {"step": step, "train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 3),
                     "val_top1": round(top1(model, val_x, val_y), 1),
                     "cpu_s": round(cpu_seconds() - start_cpu, 1), "wall_s": round(time.perf_counter() - start_wall, 1)}
            points.append(point)
            print(f"[{args.name}] " + ", ".join(f"{k} {v}" for k, v in point.items()), flush=True)
    return {"name": args.name, "model": args.model, "stem": args.stem, "pool": args.pool, "lr": args.lr,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size, "steps": args.steps,
            "seed": args.seed, "threads": args.threads, "data": str(args.data), "train_videos": len(train_y),
            "val_videos": len(val_y), "classes": num_classes,
            "parameters": sum(p.numel() for p in model.parameters()), "points": points}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a generated demo dataset folder (train.csv, val.csv)")
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
    args = parser.parse_args(argv)
    args.name = args.name or f"{args.model}-{args.stem}-{args.pool}"
    row = probe(args)
    if args.out is not None:
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps(rows + [row], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
