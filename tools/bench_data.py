"""Benchmark the video decoders side by side: loader throughput per core, memory, seek accuracy.

Three tables, one command each (README, "Data loader"):

* throughput (default): ``VideoDataset`` in train mode (8x32 with fps normalisation, scale
  jitter, 224 crop, flip, normalise, collate) per backend, in-process (``--workers 0``) and
  through a ``DataLoader``; plus a bare decord loop (``VideoReader`` defaults, ``get_batch``,
  no transforms) as the baseline. Clips per CPU-second of the process(es) that decode,
  wall clips/s, peak RSS and private memory (USS) per worker.
* ``--accuracy``: every backend's frames compared, frame by frame, with a sequential PyAV
  decode of the whole file (no seeking): identical, or which frame it really was.
* ``--device cuda``: torchcodec decoding on the GPU (decode only); skipped without a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import av
import numpy as np
import psutil  # installed with accelerate
import torch
from torch.utils.data import DataLoader

from ired_video.config import DataConfig
from ired_video.data.annotations import VideoRecord, load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.decoding import DECODERS, DecodeError, available_backends, decord, read_clip, read_clip_torchcodec
from ired_video.data.demo import demo_data_config, make_demo_dataset
from ired_video.data.sampling import DenseSampler

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "videos"
BARE = "bare-decord"
TRAIN_GMACS = 3 * 196  # TimeSformer-B 8x224: forward ~196 GMACs a clip, backward ~2x that

EPILOG = """\
examples:
  python tools/bench_data.py --make-long runs/long_1080p_60s.mp4      # 60 s 1920x1080 H.264
  python tools/bench_data.py --long runs/long_1080p_60s.mp4 --repeats 3
  python tools/bench_data.py --accuracy --long runs/long_1080p_60s.mp4
  python tools/bench_data.py --device cuda --long runs/long_1080p_60s.mp4   # GPU machine
  python tools/bench_data.py --datasets demo --backends pyav decord --workers 1 2 --demo-config

Per-core throughput is clips per CPU-second (user + system) of the process that decodes:
this one with --workers 0, the DataLoader workers otherwise (their CPU time over the timed
batches), so it holds on a shared machine; wall clips/s depends on the load (stated in the
header). Batches made while workers start are not timed. Memory: each worker's peak RSS
(VmHWM, includes pages shared with the parent after fork) and its private memory (USS) at
the end. GPU workers needed = --gpu-rate / per-core rate (one worker per core).
"""


class Rate(NamedTuple):
    """One run: clips per CPU-second, wall clips/s, worker peak RSS and USS (MiB; nan if none)."""

    per_cpu: float
    wall: float
    peak_rss: float
    uss: float


def make_long_clip(path: Path, seconds: int = 60, fps: int = 30, height: int = 1080,
                   width: int = 1920, seed: int = 0) -> None:
    """Write an H.264 MP4 (x264 'fast', crf 23, default GOP of 250): a panning textured
    scene with moving blocks, ~4 Mbit/s like web 1080p (a smooth scene decodes faster)."""
    rng = np.random.default_rng(seed)

    def texture(cell: int, blur: int) -> np.ndarray:
        small = rng.integers(0, 256, ((height + 200) // cell + 2, (width + 600) // cell + 2, 3))
        big = np.repeat(np.repeat(small.astype(np.float32), cell, 0), cell, 1)
        for axis in (0, 1):  # box blur along each axis via cumulative sums
            pad = [(0, 0)] * 3
            pad[axis] = (blur, 0)
            total = np.cumsum(np.pad(big, pad), axis)
            big = np.take(total, range(blur, total.shape[axis]), axis) - np.take(
                total, range(0, total.shape[axis] - blur), axis)
            big /= blur
        return big[:height + 200, :width + 600]

    scene = (0.6 * texture(32, 31) + 0.4 * texture(4, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "fast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 2
        for i in range(seconds * fps):
            x, y = int(300 + 280 * math.sin(i / 90)), int(100 + 90 * math.sin(i / 70))
            image = scene[y:y + height, x:x + width].copy()  # (H, W, 3) panning window
            bx, by = (i * 7) % (width - 200), int(height / 2 + height / 4 * math.sin(i / 25))
            image[by:by + 160, bx:bx + 160] = (230, 40, 40)
            image[(i * 3) % (height - 100):(i * 3) % (height - 100) + 100, 800:900] = (40, 200, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a process in MiB; nan where /proc is not available."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def bare_decord_loop(records: list[VideoRecord], cfg: DataConfig, clips: int) -> Rate:
    """The baseline: decord defaults, ``get_batch`` of the same 8x32 sample, no transforms."""
    sampler = DenseSampler(cfg.num_frames, cfg.sampling_rate, cfg.target_fps)
    rng = np.random.default_rng(0)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(clips):
        reader = decord.VideoReader(records[i % len(records)].path)
        sample = sampler(len(reader), reader.get_avg_fps(), "train", rng=rng)
        reader.get_batch(list(sample.indices)).asnumpy()
        del reader
    return Rate(clips / (time.process_time() - cpu), clips / (time.perf_counter() - wall),
                float("nan"), float("nan"))


def loader_run(records: list[VideoRecord], cfg: DataConfig, backend: str, workers: int,
               clips: int, batch_size: int) -> Rate:
    """Training items through a DataLoader; ``workers=0`` decodes in this process."""
    skip = 2 * workers if workers else 1  # batches made while the workers start: untimed
    extra = (skip + 1) * batch_size
    repeated = [records[i % len(records)] for i in range(clips + extra)]
    dataset = VideoDataset(repeated, cfg, "train", backend=backend)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
    iterator = iter(loader)
    pids = [w.pid for w in getattr(iterator, "_workers", [])] or [os.getpid()]
    timed, cpu0, wall0 = 0, 0.0, 0.0
    for step in range(len(loader)):  # no StopIteration: the workers are still alive below
        size = len(next(iterator)["label"])
        if step == skip:
            cpu0, wall0 = cpu_seconds(pids), time.perf_counter()
        elif step > skip:
            timed += size
    cpu, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - wall0
    if workers:
        peak = statistics.mean(peak_rss_mib(pid) for pid in pids)
        uss = statistics.mean(psutil.Process(pid).memory_full_info().uss / 2**20 for pid in pids)
    else:
        peak = uss = float("nan")
    del iterator
    return Rate(timed / cpu, timed / wall, peak, uss)


def spread(values: Sequence[float], digits: int = 1) -> str:
    """'mean (min-max)' of repeated runs, or the single value."""
    if any(math.isnan(v) for v in values):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    low, high = min(values), max(values)
    return f"{statistics.mean(values):.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


class Setting(NamedTuple):
    """One data row group: name, videos, DataConfig, timed clips and batch size per run."""

    name: str
    records: list[VideoRecord]
    cfg: DataConfig
    clips: int
    batch_size: int


def throughput_table(settings: list[Setting], args: argparse.Namespace) -> None:
    usable = {**available_backends(), BARE: "" if decord is not None else "decord is not installed"}
    print(f"GPU workers: --gpu-rate {args.gpu_rate:g} clips/s (one GPU's training rate, see README) / "
          f"clips per CPU-second\n")
    print("| data | backend | workers | clips per CPU-s | wall clips/s | peak RSS MiB / worker "
          "| USS MiB / worker | workers per GPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, records, cfg, clips, batch_size in settings:
        for backend in args.backends:
            if usable[backend]:
                print(f"| {name} | {backend} | - | skipped: {usable[backend]} |||||", flush=True)
        rows = [(backend, workers) for backend in args.backends if not usable[backend]
                for workers in args.workers if not (backend == BARE and workers)]
        results: dict[tuple[str, int], list[Rate]] = {row: [] for row in rows}
        for _ in range(args.repeats):  # interleaved, so a change of load hits every row alike
            for backend, workers in rows:
                results[backend, workers].append(
                    bare_decord_loop(records, cfg, clips) if backend == BARE else
                    loader_run(records, cfg, backend, workers, clips, batch_size))
        for (backend, workers), runs in results.items():
            per_cpu = [r.per_cpu for r in runs]
            needed = math.ceil(args.gpu_rate / statistics.mean(per_cpu))
            print(f"| {name} | {backend} | {workers} | {spread(per_cpu)} | "
                  f"{spread([r.wall for r in runs])} | {spread([r.peak_rss for r in runs], 0)} | "
                  f"{spread([r.uss for r in runs], 0)} | {needed} |", flush=True)


def reference_frames(path: str) -> tuple[list[bytes], np.ndarray]:
    """Sequential PyAV decode of every frame: (md5 of each RGB frame, thumbnails (N, h, w, 3))."""
    digests, thumbs = [], []
    with av.open(path) as container:
        for frame in container.decode(container.streams.video[0]):
            image = frame.to_ndarray(format="rgb24")
            rot = frame.rotation // 90
            image = np.ascontiguousarray(np.rot90(image, rot)) if rot % 4 else image
            digests.append(hashlib.md5(image.tobytes()).digest())
            thumbs.append(thumbnail(image))
    return digests, np.stack(thumbs)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Every 8th pixel as int16 (enough to tell neighbouring frames apart)."""
    return image[::8, ::8].astype(np.int16)


class Decoder(NamedTuple):
    label: str
    decode: Callable[[str, Callable[[int, float], Sequence[int]]], object]


def accuracy_decoders(usable: dict[str, str]) -> list[Decoder]:
    """The backends compared with the sequential reference (torchcodec in both seek modes)."""
    decoders = [Decoder(name, lambda p, c, n=name: read_clip(p, c, n))
                for name in DECODERS if not usable[name]]
    if not usable["torchcodec"]:
        decoders.append(Decoder("torchcodec (approximate)", lambda p, c: read_clip_torchcodec(
            p, c, seek_mode="approximate")))
    return decoders


def accuracy_table(paths: list[str], cfg: DataConfig, samples: int) -> None:
    usable = available_backends()
    for name in DECODERS:
        if usable[name]:
            print(f"skipped {name}: {usable[name]}")
    print("| clip | backend | frames counted (PyAV seq.) | frames compared | identical to PyAV "
          "| wrong frame | max abs diff (right frame) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    sampler = DenseSampler(cfg.num_frames, cfg.sampling_rate, cfg.target_fps)
    for path in paths:
        digests, thumbs = reference_frames(path)
        total = len(digests)
        with av.open(path) as container:
            fps = float(container.streams.video[0].average_rate or 30)
        rng = np.random.default_rng(0)
        index_sets = [tuple(sampler(total, fps, "train", rng=rng).indices) for _ in range(samples)]
        index_sets.append(tuple(np.linspace(0, total - 1, 16).astype(int)))  # whole file
        for decoder in accuracy_decoders(usable):
            counted, compared, identical, wrong, worst = 0, 0, 0, 0, 0
            failure = ""
            for indices in index_sets:
                try:
                    clip = decoder.decode(path, lambda n, f, ix=indices: ix)
                except DecodeError as err:
                    failure = err.reason
                    break
                counted = clip.num_frames
                frames = np.asarray(clip.frames)
                for i, image in zip(clip.indices, frames):
                    compared += 1
                    if hashlib.md5(np.ascontiguousarray(image).tobytes()).digest() == digests[i]:
                        identical += 1
                        continue
                    small = thumbnail(image)
                    nearest = int(np.abs(thumbs - small).reshape(total, -1).mean(1).argmin())
                    if nearest != i:
                        wrong += 1
                    else:
                        worst = max(worst, int(np.abs(small - thumbs[i]).max()))
            short = Path(path).name
            if failure:
                print(f"| {short} | {decoder.label} | failed: {failure} |||||", flush=True)
                continue
            print(f"| {short} | {decoder.label} | {counted} ({total}) | {compared} | {identical} | "
                  f"{wrong} | {worst} |", flush=True)


def cuda_table(paths: list[str], cfg: DataConfig, clips: int) -> int:
    """torchcodec on the GPU against PyAV and torchcodec on the CPU, decode only (8x32
    frames of the training sampler at native size, no transforms); skipped (exit 0) without
    a GPU or without a usable torchcodec."""
    why = available_backends()["torchcodec"]
    if not torch.cuda.is_available() or why:
        print(f"skipping --device cuda: {why or 'no CUDA device'}")
        return 0
    sampler = DenseSampler(cfg.num_frames, cfg.sampling_rate, cfg.target_fps)
    decoders: list[tuple[str, Callable[[str, Callable], object]]] = [
        ("torchcodec cuda", lambda p, c: read_clip_torchcodec(p, c, device="cuda")),
        ("torchcodec cpu", lambda p, c: read_clip_torchcodec(p, c)),
        ("pyav cpu", lambda p, c: read_clip(p, c, backend="pyav")),
    ]
    print(f"GPU: {torch.cuda.get_device_name(0)}; CPU rows decode as the loader does (torchcodec: one "
          "FFmpeg thread; PyAV: slice threads), so compare their host CPU-s per clip\n")
    print("| data | decoder | clips/s (wall) | host CPU-s per clip | peak GPU MiB (torch) |")
    print("|---|---|---:|---:|---:|")
    for path in paths:
        for label, decode in decoders:
            rng = np.random.default_rng(0)

            def choose(n: int, fps: float, rng: np.random.Generator = rng) -> Sequence[int]:
                return sampler(n, fps, "train", rng=rng).indices

            try:
                decode(path, choose)  # warm-up: CUDA context, NVDEC, file cache
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(clips):  # native size: the GPU resizes faster than it decodes
                    decode(path, choose)
                torch.cuda.synchronize()
            except DecodeError as err:
                print(f"| {Path(path).name} | {label} | failed: {err.reason} |||", flush=True)
                continue
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if "cuda" in label else "-"
            print(f"| {Path(path).name} | {label} | {clips / wall:.1f} | {cpu / clips:.3f} | {memory} |", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["real", "long"],
                        choices=("real", "long", "demo"),
                        help="real: ../shared/testdata/videos; long: --long; demo: generated")
    parser.add_argument("--long", default=None, help="a long clip (e.g. from --make-long)")
    parser.add_argument("--make-long", metavar="PATH", default=None,
                        help="write a 1920x1080 30 fps H.264 clip (--seconds long) to PATH and exit")
    parser.add_argument("--seconds", type=int, default=60, help="--make-long: the clip's length (default 60)")
    parser.add_argument("--demo-dir", default=None,
                        help="existing demo dataset (default: generate one in a temp folder)")
    parser.add_argument("--demo-config", action="store_true",
                        help="run the demo data with its own DataConfig (8x4, 64 crops)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--backends", nargs="+", default=[BARE, *DECODERS],
                        choices=(BARE, *DECODERS))
    parser.add_argument("--clips", type=int, default=48, help="timed clips per run")
    parser.add_argument("--long-clips", type=int, default=8,
                        help="timed clips per run on the long clip (about 1 CPU-s each)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds of runs (one per row each): mean (min-max)")
    parser.add_argument("--gpu-rate", type=float, default=224.5,
                        help="training clips/s of one GPU (default: TimeSformer-B 8x224, bf16, "
                             "batch 32, compiled, measured on one H200; README)")
    parser.add_argument("--accuracy", action="store_true",
                        help="seek accuracy against a sequential PyAV decode instead")
    parser.add_argument("--samples", type=int, default=10,
                        help="--accuracy: random 8x32 training samples per clip (+1 spread)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: torchcodec GPU decoding (skipped without a GPU)")
    args = parser.parse_args(argv)

    if args.make_long:
        started = time.perf_counter()
        if args.seconds < 1:
            parser.error("--seconds must be >= 1")
        make_long_clip(Path(args.make_long), seconds=args.seconds)
        print(f"wrote {args.make_long} in {time.perf_counter() - started:.0f} s")
        return 0
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as in DataLoader workers: one core per decoding process
    standard = DataConfig()  # 8x32 at 30 fps, short side 256-320, 224 crops
    real = sorted(str(p) for p in SHARED.iterdir()
                  if p.suffix in (".mp4", ".avi", ".mkv")) if SHARED.is_dir() else []
    if "real" in args.datasets and not real:
        print(f"skipping real clips: {SHARED} not found", file=sys.stderr)
    if "long" in args.datasets and not (args.long and os.path.isfile(args.long)):
        print("skipping the long clip: pass --long PATH (make one with --make-long PATH)",
              file=sys.stderr)
        args.long = None
    paths = ([p for p in real if "real" in args.datasets]
             + ([args.long] if args.long and "long" in args.datasets else []))

    load = psutil.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"load average {load:.1f} at start; torch {torch.__version__}, av {av.__version__}, "
          f"decord {getattr(decord, '__version__', 'absent')}\n")
    if args.device == "cuda":
        return cuda_table(paths, standard, args.clips)
    if args.accuracy:
        accuracy_table(paths, standard, args.samples)
        return 0

    settings: list[Setting] = []
    tmp = None
    if "real" in args.datasets and real:
        settings.append(Setting(f"real clips ({len(real)} files), 8x32/224",
                                [VideoRecord(p, 0) for p in real], standard, args.clips,
                                args.batch_size))
    if args.long:
        settings.append(Setting("1080p 60 s H.264, 8x32/224", [VideoRecord(args.long, 0)],
                                standard, args.long_clips, 1))
    if "demo" in args.datasets:
        if args.demo_dir:
            root = Path(args.demo_dir)
        else:
            tmp = tempfile.TemporaryDirectory()
            make_demo_dataset(tmp.name, progress=False)
            root = Path(tmp.name)
        cfg, label = (demo_data_config(), "8x4/64") if args.demo_config else (standard, "8x32/224")
        settings.append(Setting(f"demo train (128x96), {label}",
                                load_annotations(root / "train.csv").records, cfg, args.clips,
                                args.batch_size))
    print(f"{args.clips} timed clips per run, batch {args.batch_size} ({args.long_clips} "
          f"and batch 1 on the long clip), {args.repeats} runs per row: mean (min-max)")
    throughput_table(settings, args)
    if tmp is not None:
        tmp.cleanup()
    print(f"\nload average {psutil.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
