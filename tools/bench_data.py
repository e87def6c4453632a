"""Benchmark the video loader: decoded clips per second and memory per DataLoader worker.

Runs ``VideoDataset`` in train mode (random clip, scale jitter, random crop, flip) through
a ``DataLoader`` for each backend and worker count, and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil  # installed with accelerate
import torch
from torch.utils.data import DataLoader

from ired_video.config import DataConfig
from ired_video.data.annotations import VideoRecord, load_annotations
from ired_video.data.dataset import VideoDataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"

EPILOG = """\
examples:
  python tools/bench_data.py                          # real clips + demo data, 1/2/4 workers
  python tools/bench_data.py --datasets real --workers 2 --backends decord --clips 64
  python tools/bench_data.py --datasets demo --demo-dir demo --demo-config

Throughput counts whole training items (decode 8 frames + transforms + collate) in steady
state: the batches made while the workers start are not timed. Memory: RSS of each worker at the end of the
run (includes pages shared with the parent after fork) and USS (its private memory).
"""


def worker_memory(iterator: object) -> tuple[float, float]:
    """Mean (RSS, USS) in MiB over the live DataLoader workers of ``iterator``."""
    rss, uss = [], []
    for worker in getattr(iterator, "_workers", []):
        try:
            info = psutil.Process(worker.pid).memory_full_info()
        except (psutil.Error, AttributeError):
            continue
        rss.append(info.rss / 2**20)
        uss.append(info.uss / 2**20)
    return (sum(rss) / len(rss), sum(uss) / len(uss)) if rss else (float("nan"),) * 2


def run(records: list[VideoRecord], cfg: DataConfig, backend: str, workers: int, clips: int,
        batch_size: int) -> tuple[float, float, float]:
    """(clips per second, worker RSS MiB, worker USS MiB) for one setting."""
    extra = (2 * workers + 1) * batch_size  # the untimed start-up batches
    repeated = [records[i % len(records)] for i in range(clips + extra)]
    dataset = VideoDataset(repeated, cfg, "train", backend=backend)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
    iterator = iter(loader)
    # Batches made while the workers start (up to workers x prefetch_factor = 2 each) are
    # not timed: the rate is measured from the batch after them to the last one.
    skip = max(1, 2 * workers)
    stamps, sizes = [], []
    for _ in range(len(loader)):  # no StopIteration, so the workers are still alive below
        sizes.append(len(next(iterator)["label"]))
        stamps.append(time.perf_counter())
    rss, uss = worker_memory(iterator)
    del iterator
    return sum(sizes[skip + 1:]) / (stamps[-1] - stamps[skip]), rss, uss


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["real", "demo"],
                        choices=("real", "demo"), help="real: ../shared/testdata/videos")
    parser.add_argument("--demo-dir", default=None,
                        help="existing demo dataset (default: generate one in a temp folder)")
    parser.add_argument("--demo-config", action="store_true",
                        help="also run the demo data with its own DataConfig (8x4, 64 crops)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", default=["decord", "pyav"],
                        choices=("decord", "pyav"))
    parser.add_argument("--clips", type=int, default=96, help="timed clips per setting")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per setting; the fastest is reported (default 1)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    standard = DataConfig()  # 8x32 at 30 fps, short side 256-320, 224 crops
    settings: list[tuple[str, list[VideoRecord], DataConfig, str]] = []
    tmp = None
    if "real" in args.datasets:
        if not SHARED.is_dir():
            print(f"skipping real clips: {SHARED} not found", file=sys.stderr)
        else:
            paths = sorted(p for p in SHARED.iterdir() if p.suffix in (".mp4", ".avi", ".mkv"))
            settings.append(("real clips (4 files)", [VideoRecord(str(p), 0) for p in paths],
                             standard, "8x32, 224"))
    if "demo" in args.datasets:
        from ired_video.data.demo import make_demo_dataset
        if args.demo_dir:
            root = Path(args.demo_dir)
        else:
            tmp = tempfile.TemporaryDirectory()
            make_demo_dataset(tmp.name, progress=False)
            root = Path(tmp.name)
        ann = load_annotations(root / "train.csv")
        settings.append(("demo train (128x96)", ann.records, standard, "8x32, 224"))
        if args.demo_config:
            from ired_video.data.demo import demo_data_config
            settings.append(("demo train (128x96)", ann.records, demo_data_config(), "8x4, 64"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}; {args.clips} timed clips per row, batch {args.batch_size}, "
          f"best of {args.repeats}\n")
    print("| data | sampling, crop | backend | workers | clips/s | worker RSS MiB | "
          "worker USS MiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, records, cfg, label in settings:
        for backend in args.backends:
            for workers in args.workers:
                runs = [run(records, cfg, backend, workers, args.clips, args.batch_size)
                        for _ in range(args.repeats)]
                rate, rss, uss = max(runs)  # best of N: other load only ever slows a run
                print(f"| {name} | {label} | {backend} | {workers} | {rate:.1f} | {rss:.0f} | "
                      f"{uss:.0f} |", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
