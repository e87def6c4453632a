"""Benchmark: the gathered responsive-field kernel against dense attention on the CPU.

    nice -n 5 python tools/bench_fields.py --checkpoint /tmp/fdemo/plain24/best.pth \\
        --data /tmp/fdemo/data/val.csv --fields /tmp/fdemo/fields.json --out docs/bench/fields.json

Three parts, all on the CPU in eager mode, ``--threads`` threads (default 1):

1. TimeSformer-S 8x224 (``timesformer_small_patch16_224``, random weights, batch 1): one
   forward, dense vs windowed with the same synthetic radius r (1, 2, 3) at every location
   of every block, gathered and masked kernels; and the spatial attention call of one
   block alone (8 frames x 6 heads x 197 tokens). Configurations are timed in turn,
   ``--repeats`` rounds (interleaved, so drifts in machine load hit all alike): median,
   min and max of the thread CPU time (``time.thread_time``: the machine is shared, CPU
   time is what the kernel costs) and the median wall time. GMACs are the model's own
   per-clip bill of the same forward. The attention call alone is also timed on a 28x28
   grid (448 px frames).
2. The demo micro model (``--checkpoint``) with the fields of ``--fields`` (written by
   ``ired-video fields``), and synthetic radii, timed the same way.
3. Top-1 of the demo model on ``--data`` (test-mode clips) without and with those fields,
   gathered and masked (no retraining), and with synthetic radii.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ired_video.build import create_model
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.explain.fields import ResponsiveFields
from ired_video.models.timesformer import TimeSformer
from ired_video.models.window import SpatialPlan, gathered_attention

SMALL = "timesformer_small_patch16_224"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_fields.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="demo micro checkpoint (ired-video train / demo)")
    parser.add_argument("--data", help="annotations to measure top-1 on (the demo val.csv)")
    parser.add_argument("--fields", help="fields JSON of the checkpoint (ired-video fields)")
    parser.add_argument("--out", default="docs/bench/fields.json")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--tiles-only", action="store_true",
                        help="only time the attention call for tiles of 1-4 grid rows (14x14) and add that "
                             "table to an existing --out file")
    parser.add_argument("--radii", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--masked-radii", type=int, nargs="*", default=[1],
                        help="radii also timed with the masked kernel (it costs what dense attention costs; "
                             "default: %(default)s)")
    return parser


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max in milliseconds of ``values`` in seconds."""
    return {"median_ms": 1e3 * statistics.median(values), "min_ms": 1e3 * min(values), "max_ms": 1e3 * max(values)}


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Each call once to warm up, then ``repeats`` rounds of every call in turn."""
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    wall: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                start_cpu, start_wall = time.thread_time(), time.perf_counter()
                call()
                cpu[name].append(time.thread_time() - start_cpu)
                wall[name].append(time.perf_counter() - start_wall)
    return {name: {"cpu": spread(cpu[name]), "wall_median_ms": 1e3 * statistics.median(wall[name])}
            for name in calls}


def same_weights(base: TimeSformer, name: Optional[str], checkpoint: Optional[str], **window: Any) -> TimeSformer:
    """A model like ``base`` (same weights) with windows ``window``."""
    model = create_model(name, checkpoint=checkpoint, **window) if checkpoint else create_model(name, **window)
    model.load_state_dict(base.state_dict())
    return model.eval()


def uniform(model: TimeSformer, radius: int) -> list[list[int]]:
    locations = model.patch_grid[0] * model.patch_grid[1]
    return [[radius] * locations for _ in model.blocks]


def forward_calls(base: TimeSformer, video: torch.Tensor, variants: dict[str, dict[str, Any]],
                  name: Optional[str], checkpoint: Optional[str]) -> tuple[dict[str, Callable[[], Any]],
                                                                           dict[str, float]]:
    """Timed forwards of ``base`` and its windowed variants, and each one's billed GMACs."""
    models = {"dense": base, **{label: same_weights(base, name, checkpoint, **window)
                                for label, window in variants.items()}}
    gmacs = {}
    with torch.no_grad():
        for label, model in models.items():
            logits, info = model(video, return_info=True)
            gmacs[label] = float(info.gmacs[0])
            if label.endswith("masked"):  # the two kernels agree
                gathered = models[label.replace("masked", "gathered")](video)
                assert (gathered - logits).abs().max() < 1e-4, label
    return {label: (lambda model=model: model(video)) for label, model in models.items()}, gmacs


def timing_table(base: TimeSformer, video: torch.Tensor, variants: dict[str, dict[str, Any]], repeats: int,
                 name: Optional[str] = None, checkpoint: Optional[str] = None) -> dict[str, Any]:
    calls, gmacs = forward_calls(base, video, variants, name, checkpoint)
    times = time_interleaved(calls, repeats)
    dense = times["dense"]["cpu"]["median_ms"]
    return {label: {**times[label], "gmacs": gmacs[label], "speedup_vs_dense": dense / times[label]["cpu"]["median_ms"]}
            for label in calls}


def kernel_table(radii: list[int], masked_radii: list[int], repeats: int, grid: tuple[int, int]
                 ) -> dict[str, Any]:
    """One spatial attention call of TimeSformer-S (G = 8 frames, 6 heads of 64, 1 + h*w tokens)."""
    torch.manual_seed(0)
    groups, heads, head_dim = 8, 6, 64
    q, k, v = torch.randn(3, groups, heads, 1 + grid[0] * grid[1], head_dim).unbind(0)
    calls: dict[str, Callable[[], Any]] = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
    pairs = {"dense": (1 + grid[0] * grid[1]) ** 2}
    q, k, v = (t.contiguous() for t in (q, k, v))
    for radius in radii:
        plan = SpatialPlan([radius] * grid[0] * grid[1], grid)
        mask = torch.zeros(plan.allowed.shape).masked_fill(~plan.allowed, float("-inf"))
        if radius in masked_radii:
            calls[f"r{radius}_masked"] = lambda mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            pairs[f"r{radius}_masked"] = pairs["dense"]
        calls[f"r{radius}_gathered"] = lambda plan=plan: gathered_attention(q, k, v, plan, head_dim ** -0.5, True)
        pairs[f"r{radius}_gathered"] = plan.pairs_per_frame()
    times = time_interleaved(calls, repeats)
    dense = times["dense"]["cpu"]["median_ms"]
    return {label: {**times[label], "pairs_per_frame": pairs[label], "pair_share": pairs[label] / pairs["dense"],
                    "speedup_vs_dense": dense / times[label]["cpu"]["median_ms"]} for label in calls}


def tile_table(radii: list[int], repeats: int) -> dict[str, Any]:
    """The 14x14 attention call of ``kernel_table`` with tiles of 1-4 grid rows (which chose
    ``DEFAULT_TILE_ROWS``): CPU ms per call by radius and tile rows, dense for reference."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 8, 6, 197, 64).unbind(0)
    calls: dict[str, Callable[[], Any]] = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
    pairs = {"dense": 197 ** 2}
    for radius in radii:
        for rows in (1, 2, 3, 4):
            plan = SpatialPlan([radius] * 196, (14, 14), rows)
            calls[f"r{radius}_rows{rows}"] = lambda plan=plan: gathered_attention(q, k, v, plan, 0.125, True)
            pairs[f"r{radius}_rows{rows}"] = plan.pairs_per_frame()
    times = time_interleaved(calls, repeats)
    return {label: {**times[label], "pair_share": pairs[label] / pairs["dense"]} for label in calls}


def load_clips(model: TimeSformer, data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of ``data`` preprocessed for ``model`` (test mode), and the labels."""
    ann = load_annotations(data, class_names=model.data_config.class_names or None)
    dataset = VideoDataset(ann.records, model.data_config, "test")
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["video"] for item in items]), torch.tensor([int(item["label"]) for item in items])


def accuracy(model: TimeSformer, clips: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        outputs = [model(clips[i:i + 8], return_info=True) for i in range(0, len(clips), 8)]
    predicted = torch.cat([logits.argmax(dim=-1) for logits, _ in outputs])
    gmacs = torch.cat([info.gmacs for _, info in outputs])
    return {"top1": float((predicted == labels).double().mean()), "correct": int((predicted == labels).sum()),
            "videos": len(labels), "gmacs_per_clip": float(gmacs.double().mean())}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiles_only:
        result = json.loads(Path(args.out).read_text())
        result["tile_rows_14x14_attention_call"] = tile_table(args.radii, 3 * args.repeats)
        result["tile_rows_command"] = "python tools/bench_fields.py " + " ".join(argv or sys.argv[1:])
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["tile_rows_14x14_attention_call"], indent=1))
        return 0
    missing = [name for name in ("checkpoint", "data", "fields") if getattr(args, name) is None]
    if missing:
        build_parser().error(f"--{', --'.join(missing)} required (all but --tiles-only runs)")
    started = time.perf_counter()
    fields = ResponsiveFields.load(args.fields)
    result: dict[str, Any] = {
        "command": "python tools/bench_fields.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                    "load_average_start": list(os.getloadavg())},
        "timing": "thread CPU time of one call (median, min, max over --repeats interleaved rounds) and median wall",
    }
    # 1. TimeSformer-S 8x224, synthetic radii.
    torch.manual_seed(0)
    small = create_model(SMALL).eval()
    video = torch.randn(1, 3, 8, 224, 224)
    variants = {}
    for radius in args.radii:
        for kernel in ("gathered", "masked") if radius in args.masked_radii else ("gathered",):
            variants[f"r{radius}_{kernel}"] = {"window_radius": uniform(small, radius), "window_kernel": kernel}
    result["small_8x224_forward"] = timing_table(small, video, variants, args.repeats, name=SMALL)
    print("small forward", json.dumps(result["small_8x224_forward"], indent=1))
    result["small_8x224_spatial_attention_call"] = kernel_table(args.radii, args.masked_radii, 3 * args.repeats,
                                                                (14, 14))
    print("kernel", json.dumps(result["small_8x224_spatial_attention_call"], indent=1))
    # The same call on a 448 px frame (28x28 patches): where the gathered kernel has room to pay.
    result["small_8x448_spatial_attention_call"] = kernel_table(args.radii, args.masked_radii, args.repeats, (28, 28))
    # 2. The demo micro model, its measured fields and synthetic radii.
    demo = create_model(checkpoint=args.checkpoint).eval()
    problem = fields.fit_problem(demo.config)
    if problem:
        raise SystemExit(f"{args.fields}: {problem}")
    demo_variants = {f"fields_{kernel}": {**fields.model_settings(), "window_kernel": kernel}
                     for kernel in ("gathered", "masked")}
    for radius in args.radii:
        demo_variants[f"r{radius}_gathered"] = {"window_radius": uniform(demo, radius)}
    clips, labels = load_clips(demo, args.data)
    result["demo_forward"] = timing_table(demo, clips[:1], demo_variants, args.repeats, checkpoint=args.checkpoint)
    print("demo forward", json.dumps(result["demo_forward"], indent=1))
    # 3. Accuracy of the demo model without and with fields (no retraining).
    result["fields"] = {"file": args.fields, "coverage": fields.coverage, "clips": fields.clips,
                        "summary": fields.summary}
    result["demo_accuracy"] = {"plain": accuracy(demo, clips, labels)}
    for label, window in demo_variants.items():
        result["demo_accuracy"][label] = accuracy(same_weights(demo, None, args.checkpoint, **window), clips, labels)
    print("accuracy", json.dumps(result["demo_accuracy"], indent=1))
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
