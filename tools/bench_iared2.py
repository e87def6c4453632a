"""IA-RED² in the adaptive regime on the demo: does the reward set how many tokens each clip keeps?

    python tools/bench_iared2.py --out runs/iared2_bench --json docs/bench/iared2_adaptive.json

From the plain demo model (trained once with the demo recipe, configs/train/demo_micro.yaml,
cached as OUT/plain/best.pth; the demo data is generated into OUT/data when missing), for
each efficiency weight (``objective.reward_efficiency``) IA-RED² interpreters (adaptive
regime, tube mode, the model's default stages) are trained by the group-wise curriculum
(``ired_video.engine.curriculum``: each interpreter ``--epochs-per-group`` epochs, the
earlier ones fixed, backbone frozen; then ``--finetune-epochs`` of the backbone with every
interpreter fixed). Reported on the validation split (one centre view per video, p > 0.5):
mean kept fraction (patch tokens after the last stage / all), the spread of the per-clip
kept count (std, min, max), its correlation with the plain model's confidence on the clip
(Pearson and Spearman; negative = confident clips keep fewer), the mean count on the
more and the less confident half, top-1 and mean GMACs per view; next to fixed-ratio
reducers on the same plain model (training-free, and IA-RED² fixed_ratio trained alike).

To fit a CPU budget every clip is decoded once (the centre view, training clips too: no
augmentation) and the curriculum runs on those tensors with the library's model, reducer,
objective and curriculum code, not through ``train()``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ired_video.build import apply_reducer, create_model
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.demo import make_demo_dataset
from ired_video.engine.config import ObjectiveSection
from ired_video.engine.curriculum import drop_frozen_grads, end_curriculum, interpreters, phase_objective, set_phase
from ired_video.engine.losses import objective, soft_targets
from ired_video.engine.recipes import demo_config
from ired_video.engine.train import train


def ensure_plain(out: Path, epochs: int) -> tuple[Path, Path]:
    """The demo data and the plain model under ``out``, made when missing."""
    data_dir = out / "data"
    if not (data_dir / "train.csv").is_file():
        make_demo_dataset(data_dir, videos_per_class=64, seed=0, jobs=2)
    plain = out / "plain" / "best.pth"
    if not plain.is_file():
        train(demo_config(data_dir, out / "plain", f"train.epochs={epochs}", "eval.every=0"), overwrite=True)
    return data_dir, plain


def decode_views(data_dir: Path, model: nn.Module, cache: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """{split: (videos (N, C, T, H, W), labels (N,))}: one centre view per video, cached."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    views = {}
    train_ann = load_annotations(data_dir / "train.csv")
    for split in ("train", "val"):
        ann = load_annotations(data_dir / f"{split}.csv", class_names=train_ann.class_names)
        dataset = VideoDataset(ann.records, model.data_config, "test")
        items = [dataset[i] for i in range(len(dataset))]
        views[split] = (torch.stack([item["video"] for item in items]),
                        torch.tensor([item["label"] for item in items]))
    torch.save(views, cache)
    return views


@torch.no_grad()
def run_eval(model: nn.Module, videos: Tensor, labels: Tensor, batch: int = 16) -> dict[str, Tensor]:
    """Per clip: logits, GMACs and patch tokens after the last block's reducers."""
    model.eval()
    logits, gmacs, final, per_block = [], [], [], []
    for start in range(0, len(videos), batch):
        out, info = model(videos[start:start + batch], return_info=True)
        logits.append(out)
        gmacs.append(info.gmacs)
        final.append(info.state.real_tokens())
        per_block.append(info.tokens)
    return {"logits": torch.cat(logits), "gmacs": torch.cat(gmacs), "tokens": torch.cat(final),
            "tokens_per_block": torch.cat(per_block)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            same = x == value
            r[same] = r[same].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def summarise(name: str, result: dict[str, Tensor], labels: Tensor, total: int,
              confidence: Optional[np.ndarray], plain_correct: Optional[np.ndarray] = None) -> dict[str, Any]:
    """One row: accuracy, compute, and the per-clip kept count's spread and correlations."""
    kept = result["tokens"].double().numpy()
    row: dict[str, Any] = {
        "name": name, "top1": float((result["logits"].argmax(-1) == labels).double().mean()),
        "gmacs_per_view": float(result["gmacs"].mean()), "kept_fraction": float(kept.mean() / total),
        "kept_tokens_mean": float(kept.mean()), "kept_tokens_std": float(kept.std()),
        "kept_tokens_min": int(kept.min()), "kept_tokens_max": int(kept.max()),
        "gmacs_std": float(result["gmacs"].std()),
        "tokens_per_block": [round(float(t), 1) for t in result["tokens_per_block"].double().mean(dim=0)],
    }
    if confidence is not None and kept.std() > 0:
        confident = confidence >= np.median(confidence)
        row.update(pearson_kept_vs_confidence=float(np.corrcoef(kept, confidence)[0, 1]),
                   spearman_kept_vs_confidence=spearman(kept, confidence),
                   kept_tokens_confident_half=float(kept[confident].mean()),
                   kept_tokens_less_confident_half=float(kept[~confident].mean()))
    if plain_correct is not None and kept.std() > 0 and 0 < plain_correct.mean() < 1:
        row.update(kept_tokens_plain_right=float(kept[plain_correct].mean()),
                   kept_tokens_plain_wrong=float(kept[~plain_correct].mean()))
    return row


def train_curriculum(model: nn.Module, videos: Tensor, labels: Tensor, cfg: ObjectiveSection,
                     epochs_per_group: int, finetune_epochs: int, lr: float, batch: int, seed: int) -> list[dict]:
    """The group-wise curriculum on cached views; returns one log row per epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    groups = len(interpreters(model))
    log = []
    for phase in range(groups + 1):
        set_phase(model, phase)
        phase_cfg = phase_objective(cfg, phase, groups)
        for epoch in range(finetune_epochs if phase == groups else epochs_per_group):
            model.train()
            order = torch.randperm(len(videos), generator=generator)
            sums = {"loss": 0.0, "reward": 0.0, "tokens": 0.0}
            steps = len(order) // batch
            for step in range(steps):
                index = order[step * batch:(step + 1) * batch]
                torch.manual_seed(seed * 100_003 + phase * 1000 + epoch * 100 + step)
                logits, info = model(videos[index], return_info=True)
                targets = soft_targets(labels[index], logits.shape[-1], 0.0)
                loss, parts = objective(phase_cfg, logits, targets, labels[index], info.records)
                optimizer.zero_grad()
                loss.backward()
                drop_frozen_grads(model)
                optimizer.step()
                sums["loss"] += float(loss.detach())
                sums["reward"] += parts.get("reward", 0.0)
                sums["tokens"] += float(info.state.real_tokens().double().mean())
            log.append({"phase": phase, "epoch": epoch, **{k: v / steps for k, v in sums.items()}})
    end_curriculum(model)
    return log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_iared2.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/iared2_bench",
                        help="data, plain model and caches (default: %(default)s)")
    parser.add_argument("--json", default="docs/bench/iared2_adaptive.json")
    parser.add_argument("--plain-epochs", type=int, default=24,
                        help="epochs of the plain model when it is trained here "
                             "(default: the demo recipe, %(default)s)")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.0, 0.05, 0.25, 1.0, 4.0],
                        help="objective.reward_efficiency values (default: %(default)s)")
    parser.add_argument("--fixed-keeps", type=float, nargs="*", default=[0.7, 0.5],
                        help="keep ratios of the training-free fixed-ratio references (default: %(default)s)")
    parser.add_argument("--train-fixed-keep", type=float, default=0.7,
                        help="also train IA-RED² fixed_ratio at this keep, as the adaptive runs (0: no)")
    parser.add_argument("--epochs-per-group", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(2)
    out = Path(args.out)
    data_dir, plain_path = ensure_plain(out, args.plain_epochs)
    plain = create_model(checkpoint=plain_path)
    views = decode_views(data_dir, plain, out / "views.pt")
    (train_x, train_y), (val_x, val_y) = views["train"], views["val"]
    total = plain.config.num_frames * plain.patch_grid[0] * plain.patch_grid[1]
    base = run_eval(plain, val_x, val_y)
    confidence = base["logits"].softmax(-1).max(-1).values.double().numpy()
    plain_correct = (base["logits"].argmax(-1) == val_y).numpy()
    rows = [summarise("plain", base, val_y, total, None)]
    rows[0]["confidence_mean"], rows[0]["confidence_min"] = float(confidence.mean()), float(confidence.min())
    print(f"plain: top-1 {rows[0]['top1']:.3f}, confidence mean {confidence.mean():.3f} min {confidence.min():.3f}")
    untrained = apply_reducer(copy.deepcopy(plain), "iared2")  # adaptive, interpreters as initialised
    rows.append({**summarise("iared2 adaptive (training-free)", run_eval(untrained, val_x, val_y), val_y, total,
                             confidence, plain_correct), "trained": False})
    for keep in args.fixed_keeps:  # fixed-ratio references, training-free
        for name, kwargs in (("topk", {"keep": keep}), ("iared2", {"regime": "fixed_ratio", "keep": keep})):
            model = apply_reducer(copy.deepcopy(plain), name, **kwargs)
            rows.append({**summarise(f"{name} keep={keep} (training-free)", run_eval(model, val_x, val_y), val_y,
                                     total, confidence), "trained": False})
            print(rows[-1]["name"], f"top-1 {rows[-1]['top1']:.3f} GMACs {rows[-1]['gmacs_per_view']:.4f}")
    runs = [("adaptive", w, {}) for w in args.weights]
    if args.train_fixed_keep:
        runs.append(("fixed_ratio", 1.0, {"regime": "fixed_ratio", "keep": args.train_fixed_keep}))
    for regime, weight, kwargs in runs:
        for seed in args.seeds:
            tick = time.perf_counter()
            model = apply_reducer(copy.deepcopy(plain), "iared2", **kwargs)
            cfg = ObjectiveSection(ce=1.0, policy=1.0, reward_accuracy=1.0, reward_efficiency=weight)
            log = train_curriculum(model, train_x, train_y, cfg, args.epochs_per_group, args.finetune_epochs,
                                   args.lr, args.batch, seed)
            name = (f"iared2 adaptive, efficiency {weight}" if regime == "adaptive"
                    else f"iared2 fixed_ratio keep={kwargs['keep']}") + f", seed {seed}"
            row = summarise(name, run_eval(model, val_x, val_y), val_y, total, confidence, plain_correct)
            rows.append({**row, "trained": True, "regime": regime, "reward_efficiency": weight, "seed": seed,
                         "train_log": log, "seconds": time.perf_counter() - tick})
            print(f"{name}: kept {row['kept_fraction']:.3f} (std {row['kept_tokens_std']:.1f} tokens, "
                  f"{row['kept_tokens_min']}-{row['kept_tokens_max']}), spearman vs confidence "
                  f"{row.get('spearman_kept_vs_confidence', float('nan')):.2f}, top-1 {row['top1']:.3f}, "
                  f"GMACs {row['gmacs_per_view']:.4f} ({rows[-1]['seconds']:.0f} s)")
    report = {"command": "python tools/bench_iared2.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": vars(args), "val_videos": len(val_y), "train_videos": len(train_y),
              "patch_tokens_per_view": total, "minutes": (time.perf_counter() - started) / 60, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json} in {report['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
