"""``ired-video bench``: GMACs and measured clips/s of every reducer, side by side.

For each model: the plain model, then every reducer at each keep ratio and mode, each
timed at each batch size. A row reports GMACs per view (``info.gmacs``, mean over the
clips of one forward), the GMACs ratio plain / reduced, clips/s (median of ``--iters``
timed forwards after ``--warmup`` untimed ones, under ``torch.inference_mode``), the
measured speed-up over the plain model at the same batch, and the *efficiency*:
speed-up / GMACs ratio (1.0 = the saved MACs turn fully into saved time).

ToMe is set by ``r`` (tokens merged per block, per frame; in tube mode per location):
the bench picks the constant r whose GMACs, computed analytically from the model's own
per-layer MAC formulas (``ired_video.flops``), come closest to the measured GMACs of top-k
drop at the same keep (top-k acts where ToMe does, inside the block after attention;
random drop and IA-RED² act before the block, so they bill a little less at the same
keep); the row then shows ToMe's measured GMACs. BAT adds cluster tokens,
so its count differs from keep: its measured GMACs are reported as they are. IA-RED² runs
in ratio mode (``keep=``) in eval mode with an untrained (random) interpreter, and the
interaction reducer with a predictor fitted for 20 steps on one random clip: only their
speed means anything, not their choice of tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ired_video import flops
from ired_video.models import create_model, list_models
from ired_video.reducers import apply_reducer
from ired_video.reducers.interaction_fit import fit_interaction_predictors

DEFAULT_MODELS = ("timesformer_base_patch16_224", "timesformer_small_patch16_224")
QUICK_MODEL = "timesformer_micro"


@dataclass(frozen=True)
class Spec:
    """One reducer setting: the label shown, the reducer name, fixed keyword arguments."""

    label: str
    reducer: str
    kwargs: dict[str, Any] = field(default_factory=dict)


SPECS: tuple[Spec, ...] = (
    Spec("random", "random"),
    Spec("topk", "topk"),
    Spec("topk+fuse", "topk", {"fuse": True}),
    Spec("attention_received", "attention_received"),
    Spec("interaction", "interaction"),
    Spec("bat", "bat"),
    Spec("tome", "tome"),
    Spec("iared2", "iared2"),
)
SPEC_BY_LABEL = {spec.label: spec for spec in SPECS}
# The plain model timed again after a model's last reducer: on a shared or throttling
# machine the speed drifts, and this row's "speed-up" (ideally 1.00) shows by how much.
PLAIN_END = Spec("plain (end)", "none")
# Reducers whose token count is exactly the keep ratio (GMACs fall with keep).
DROP_REDUCERS = ("random", "topk", "attention_received", "interaction", "iared2")

EPILOG = """Efficiency = (measured speed-up over the plain model) / (GMACs ratio plain / reduced).
Timing is wall clock around model(video) with the device synchronised; the median of --iters.

examples:
  ired-video bench --quick --output /tmp/bench.json
  ired-video bench --models timesformer_small_patch16_224 --batches 1 --iters 3 --warmup 1
  ired-video bench --reducers tome topk --keeps 0.7 --modes tube frame --img-size 112 --frames 4
"""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video bench", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure GMACs per view and clips/s of the plain model and every token reducer "
                    "at several keep ratios, and print a Markdown table.")
    parser.add_argument("--models", nargs="+", choices=list_models(), metavar="MODEL",
                        help=f"variants to measure (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--reducers", nargs="+", choices=[s.label for s in SPECS], metavar="REDUCER",
                        default=[s.label for s in SPECS],
                        help="reducers to measure besides the plain model (default: all: "
                             f"{' '.join(s.label for s in SPECS)})")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.9, 0.7, 0.5],
                        help="fractions of tokens kept at each stage (default: 0.9 0.7 0.5)")
    parser.add_argument("--modes", nargs="+", choices=["tube", "frame"], default=["tube"],
                        help="reducer modes (default: tube)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes to time (default: 1 8)")
    parser.add_argument("--warmup", type=int, help="untimed forwards before timing (default: 2)")
    parser.add_argument("--iters", type=int, help="timed forwards; the median is reported (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads (default: all cores, here {available_cores()})")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device (default: cuda if available, else cpu)")
    parser.add_argument("--img-size", type=int, default=None, help="override the models' img_size")
    parser.add_argument("--frames", type=int, default=None, help="override the models' num_frames")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the input clips")
    parser.add_argument("--quick", action="store_true",
                        help=f"a seconds-long run for tests: {QUICK_MODEL}, batches 1 2, 1 warm-up, 1 iter "
                             "(explicit options still win)")
    parser.add_argument("--output", metavar="PATH", help="write every row (and the setup) as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick."""
    quick = args.quick
    if args.models is None:
        args.models = [QUICK_MODEL] if quick else list(DEFAULT_MODELS)
    if args.batches is None:
        args.batches = [1, 2] if quick else [1, 8]
    if args.warmup is None:
        args.warmup = 1 if quick else 2
    if args.iters is None:
        args.iters = 1 if quick else 5
    if args.threads is None:
        args.threads = available_cores()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for keep in args.keeps:
        if not 0 < keep <= 1:
            raise SystemExit(f"ired-video bench: keep {keep} is not a fraction in (0, 1]")
    if any(b < 1 for b in args.batches) or args.iters < 1 or args.warmup < 0:
        raise SystemExit("ired-video bench: batches and --iters must be >= 1, --warmup >= 0")
    return args


# --------------------------------------------------------------------------- ToMe r
def tome_gmacs_analytic(model: torch.nn.Module, r: int, frames: int, mode: str = "tube") -> float:
    """GMACs of one clip under constant ToMe ``r`` in tube or frame mode (same count per
    frame), from the per-layer formulas the model bills with (``ired_video.flops``).

    In frame mode, once frames have merged different locations, divided attention's
    temporal step runs over the dense (locations x frames) grid and is billed for it."""
    cfg = model.config
    dim = cfg.embed_dim
    slots = patches = model.patch_grid[0] * model.patch_grid[1]
    aligned = True
    attention = {"divided_space_time": flops.divided_attention_macs,
                 "joint_space_time": flops.joint_attention_macs,
                 "space_only": flops.space_only_attention_macs}[cfg.attention_type]
    num_cls = frames if cfg.attention_type == "space_only" else 1
    total = float(flops.embed_macs(frames, slots, cfg.in_chans, cfg.patch_size, dim))
    for _ in range(cfg.depth):
        counts = torch.full((1, frames), float(slots), dtype=torch.float64)
        if cfg.attention_type == "divided_space_time" and not aligned:
            pairs = torch.tensor([float(patches * frames * frames)], dtype=torch.float64)
            total += float(attention(counts, dim, pairs)[0])
        else:
            total += float(attention(counts, dim)[0])
        if r > 0 and slots >= 2:
            slots -= min(r, slots // 2)  # ToMe merges inside the block, before the MLP
            aligned = aligned and mode == "tube"
        total += float(flops.mlp_macs(frames * slots + num_cls, dim, cfg.mlp_ratio))
    if cfg.num_classes > 0:
        total += flops.head_macs(dim, cfg.num_classes)
    return total / 1e9


def pick_tome_r(model: torch.nn.Module, target_gmacs: float, frames: int, mode: str = "tube"
                ) -> tuple[int, float]:
    """The constant r in 0..N/2 whose analytic GMACs come closest to ``target_gmacs``."""
    half = (model.patch_grid[0] * model.patch_grid[1]) // 2
    gmacs = {r: tome_gmacs_analytic(model, r, frames, mode) for r in range(half + 1)}
    best = min(gmacs, key=lambda r: (abs(gmacs[r] - target_gmacs), r))
    return best, gmacs[best]


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(model: torch.nn.Module, video: torch.Tensor, warmup: int, iters: int
               ) -> tuple[float, list[float], torch.Tensor, torch.Tensor]:
    """Median seconds per forward over ``iters`` after ``warmup``; also every time, the
    per-clip GMACs and the tokens per block of the first forward."""
    gmacs = tokens = None
    times = []
    with torch.inference_mode():
        for step in range(warmup + iters):
            sync(video.device)
            start = time.perf_counter()
            _, info = model(video, return_info=True)
            sync(video.device)
            elapsed = time.perf_counter() - start
            if gmacs is None:
                gmacs, tokens = info.gmacs.float().cpu(), info.tokens.float().cpu()
            if step >= warmup:
                times.append(elapsed)
    return statistics.median(times), times, gmacs, tokens


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- main loop
def configurations(args: argparse.Namespace) -> list[tuple[str, Optional[Spec], str, float]]:
    """(model, spec or None for plain, mode, keep) in run order: plain first, then each
    mode, reducer and keep (topk before tome, whose r is matched to the drop GMACs), and
    the plain model once more at the end as a drift check."""
    specs = [SPEC_BY_LABEL[label] for label in args.reducers]
    specs.sort(key=lambda s: [x.label for x in SPECS].index(s.label))
    runs: list[tuple[str, Optional[Spec], str, float]] = []
    for name in args.models:
        runs.append((name, None, "-", 1.0))
        for mode in args.modes:
            for spec in specs:
                for keep in args.keeps:
                    runs.append((name, spec, mode, keep))
        runs.append((name, PLAIN_END, "-", 1.0))
    return runs


def run(args: argparse.Namespace, on_row: Optional[Callable[[list[dict[str, Any]]], None]] = None
        ) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    if args.frames is not None:
        overrides["num_frames"] = args.frames
    runs = configurations(args)
    rows: list[dict[str, Any]] = []
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=len(runs), desc="bench", unit="config", file=sys.stderr, dynamic_ncols=True)

    current_name, model, videos = None, None, {}
    plain: dict[str, dict[str, Any]] = {}
    drop_gmacs: dict[tuple[str, str, float], float] = {}
    for name, spec, mode, keep in runs:
        label = "plain" if spec is None else spec.label
        if progress is not None:
            progress.set_postfix_str(f"{name.replace('timesformer_', '')} {label} {mode} {keep:g}")
        row: dict[str, Any] = {"model": name, "reducer": label, "mode": mode, "keep": keep,
                               "gmacs": None, "gmacs_ratio": None, "clips_per_s": {}, "seconds": {},
                               "times": {}, "speedup": {}, "efficiency": {}, "tokens_per_block": None,
                               "note": "", "error": None}
        errors = []
        try:
            if name != current_name:
                model, videos, current_name = None, {}, None
                torch.manual_seed(args.seed)
                model = create_model(name, **overrides).eval().to(device)
                current_name = name
                cfg = model.config
                generator = torch.Generator().manual_seed(args.seed)
                for batch in args.batches:
                    videos[batch] = torch.randn(batch, cfg.in_chans, cfg.num_frames, cfg.img_size,
                                                cfg.img_size, generator=generator).to(device)
            cfg = model.config
            if spec is None:
                apply_reducer(model, "none")
            else:
                kwargs: dict[str, Any] = dict(spec.kwargs, mode=mode)
                if spec is PLAIN_END:
                    kwargs = {}
                    row["note"] = "drift check: plain model re-timed after the reducers"
                elif spec.reducer == "tome":
                    target = drop_gmacs.get((name, mode, keep))
                    if target is None:  # topk was not run: one forward on a batch of 1
                        apply_reducer(model, "topk", keep=keep, mode=mode)
                        with torch.inference_mode():
                            target = float(model(videos[min(videos)][:1], return_info=True)[1].gmacs.mean())
                    r, analytic = pick_tome_r(model, target, cfg.num_frames, mode)
                    kwargs["r"] = r
                    row.update(tome_r=r, tome_gmacs_analytic=analytic, tome_target_gmacs=target)
                    row["note"] = f"r={r} (analytic match to topk GMACs {target:.2f})"
                else:
                    kwargs["keep"] = keep
                apply_reducer(model, spec.reducer, **kwargs)
                if spec.reducer == "iared2":
                    row["note"] = "untrained interpreter: speed only"
                elif spec.reducer == "interaction":
                    fit_interaction_predictors(model, [videos[min(videos)][:1]], steps=20)
                    row["note"] = "predictor fitted on one random clip: speed only"
            model.eval()
            for batch in args.batches:
                try:
                    seconds, times, gmacs, tokens = time_model(model, videos[batch], args.warmup, args.iters)
                except Exception as err:  # noqa: BLE001 - report and go on with the next batch
                    errors.append(f"@{batch}: {short_error(err)}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                key = str(batch)
                row["seconds"][key] = seconds
                row["times"][key] = times
                row["clips_per_s"][key] = batch / seconds
                if row["gmacs"] is None:
                    row["gmacs"] = float(gmacs.mean())
                    row["tokens_per_block"] = tokens.mean(dim=0).tolist()
            if spec is None:
                plain[name] = row
            elif spec.label == "topk" and row["gmacs"] is not None:
                drop_gmacs[(name, mode, keep)] = row["gmacs"]
            if spec is not None and spec.label == "bat" and row["tokens_per_block"]:
                row["note"] = f"tokens in last block {row['tokens_per_block'][-1]:.0f} (adds cluster tokens)"
            base = plain.get(name)
            if base is not None and base["gmacs"] and row["gmacs"]:
                row["gmacs_ratio"] = base["gmacs"] / row["gmacs"]
                for key, speed in row["clips_per_s"].items():
                    if key in base["clips_per_s"]:
                        row["speedup"][key] = speed / base["clips_per_s"][key]
                        row["efficiency"][key] = row["speedup"][key] / row["gmacs_ratio"]
        except Exception as err:  # noqa: BLE001 - one failing configuration must not stop the bench
            errors.append(short_error(err))
        if errors:
            row["error"] = "; ".join(errors)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return rows


# --------------------------------------------------------------------------- output
def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    header = ["model", "reducer", "mode", "keep", "GMACs/view", "GMACs ratio"]
    header += [f"clips/s @{b}" for b in batches]
    header += [f"speed-up @{b}" for b in batches]
    header += [f"efficiency @{b}" for b in batches]
    header += ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        keys = [str(b) for b in batches]
        cells = [row["model"], row["reducer"], row["mode"], f"{row['keep']:g}",
                 _fmt(row["gmacs"], ".2f"), _fmt(row["gmacs_ratio"], ".2f")]
        cells += [_fmt(row["clips_per_s"].get(k), ".3g") for k in keys]
        cells += [_fmt(row["speedup"].get(k), ".2f") for k in keys]
        cells += [_fmt(row["efficiency"].get(k), ".2f") for k in keys]
        note = row["note"]
        if row["error"]:
            note = f"ERROR {row['error']}" + (f"; {note}" if note else "")
        cells.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setup_info(args: argparse.Namespace, argv: Optional[list[str]]) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device,
            "threads": args.threads, "cores": available_cores(), "cpu": cpu, "torch": torch.__version__,
            "python": platform.python_version(), "batches": args.batches, "warmup": args.warmup,
            "iters": args.iters, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "tome_r": "analytic (ired_video.flops per-layer formulas), matched to topk's measured GMACs at the same keep"}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv: Optional[list[str]] = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    setup = setup_info(args, argv)

    def write(rows: list[dict[str, Any]]) -> None:
        if args.output:
            tmp = f"{args.output}.tmp"
            with open(tmp, "w") as handle:
                json.dump({"setup": setup, "rows": rows}, handle, indent=1)
            os.replace(tmp, args.output)

    rows = run(args, on_row=write)
    try:
        setup["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    setup["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write(rows)
    print(f"\n{args.device}, {args.threads} threads, torch {torch.__version__}; warm-up {args.warmup}, "
          f"median of {args.iters}; GMACs per view from info.gmacs; ToMe r matched analytically.\n")
    print(markdown_table(rows, args.batches))
    for row in rows:
        if row["reducer"] == PLAIN_END.label:
            for key, drift in row["speedup"].items():
                if abs(drift - 1) > 0.15:
                    print(f"\nwarning: {row['model']} @{key}: the plain model ran {drift:.2f}x as fast at the end "
                          "as at the start; the machine's speed drifted (other load?), so speed-ups are unreliable.")
    failed = [row for row in rows if row["error"]]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows had errors (see the note column).")
    return 0
