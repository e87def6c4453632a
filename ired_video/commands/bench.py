"""``ired-video bench``: GMACs and measured throughput of every reducer, side by side.

Per model and reducer setting: exact GMACs per view from the forward's billing, clips/s
(inference; training steps with ``--train``; compiled with ``--compile``), peak CUDA
memory, and efficiency = measured speed-up / GMACs ratio. Markdown tables, JSON rows.

Design notes: docs/design.md, "ired_video.commands.bench".
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from tqdm import tqdm

from ired_video import speed
from ired_video.budget import reduced_gmacs, tome_r_for_gmacs
from ired_video.build import apply_reducer, create_model
from ired_video.config import ConfigError
from ired_video.devices import resolve_device
from ired_video.models import list_models
from ired_video.paths import writable_file, write_atomically
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
# Selectable by --reducers, not run by default: ablations of one reducer's option.
ABLATION_SPECS: tuple[Spec, ...] = (
    Spec("tome-noprop", "tome", {"prop_attn": False}),
    Spec("bat-noprop", "bat", {"prop_attn": False}),
)
SPEC_BY_LABEL = {spec.label: spec for spec in SPECS + ABLATION_SPECS}
PLAIN = Spec("plain", "none")
# The plain model timed again after a model's last reducer: on a shared or throttling
# machine the speed drifts, and this row's "speed-up" (ideally 1.00) shows by how much.
PLAIN_END = Spec("plain (end)", "none")

EPILOG = """Efficiency = (measured speed-up over the plain model) / (GMACs ratio plain / reduced).
Timing is wall clock with the device synchronised; the median of --iters after --warmup.
Compiled rows: torch.compile (default mode, static shapes); its first calls compile, so
--warmup must be >= 1 with --compile. "graphs" is how many graphs dynamo splits the eval
forward into (1: no host synchronisation). --paired (eager rows): each reducer and the
plain model run in alternating rounds and the speed-up is the median per-round ratio, which
a machine whose speed drifts does not bias (use it on shared CPUs); the efficiency column
adds the distribution-free interval of that median ("0.97 [0.94-0.99]": the order
statistics of the rounds that hold it with >= 95% probability from 6 rounds up, min-max
below; the JSON records the coverage).

examples:
  ired-video bench --quick --output /tmp/bench.json
  ired-video bench --models timesformer_small_patch16_224 --batches 1 8 --iters 5 --warmup 1 --paired
  ired-video bench --models timesformer_base_patch16_224 --device cuda --dtype bf16 --compile --train \\
      --keeps 0.7 0.5 --batches 8 32
  ired-video bench --reducers tome topk --keeps 0.7 --modes tube frame --img-size 112 --frames 4
  ired-video bench --device cuda --dtype bf16 --compile --train --no-inference --reducers topk --keeps 0.5 \\
      --batches 32   # compiled training steps only
"""

MEASUREMENTS = ("inference, eager", "inference, compiled", "training step, eager", "training step, compiled")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ired-video bench", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure GMACs per view and clips/s (inference; with --train also training steps; "
                    "with --compile also under torch.compile) of the plain model and every token reducer "
                    "at several keep ratios, and print Markdown tables.")
    parser.add_argument("--models", nargs="+", choices=list_models(), metavar="MODEL",
                        help=f"variants to measure (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--reducers", nargs="+", choices=list(SPEC_BY_LABEL), metavar="REDUCER",
                        default=[s.label for s in SPECS],
                        help=f"reducers besides the plain model (default: all: {' '.join(s.label for s in SPECS)}; "
                             f"also {', '.join(s.label for s in ABLATION_SPECS)}: without proportional attention)")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.9, 0.7, 0.5],
                        help="fractions of tokens kept at each stage (default: 0.9 0.7 0.5)")
    parser.add_argument("--modes", nargs="+", choices=["tube", "frame"], default=["tube"],
                        help="reducer modes (default: tube)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes to time (default: 1 8)")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (default: 2)")
    parser.add_argument("--iters", type=int, help="timed calls; the median is reported (default: 5)")
    parser.add_argument("--paired", action="store_true",
                        help="time every reducer in alternation with the plain model (eager runs) and take the "
                             "speed-up as the median of the per-round ratios: robust to a machine whose speed "
                             "drifts (shared CPUs); twice the eager timing work")
    parser.add_argument("--train", action="store_true",
                        help="also time training steps (forward + backward + AdamW step, training mode)")
    parser.add_argument("--compile", action="store_true",
                        help="also time every measurement under torch.compile, and count its graphs")
    parser.add_argument("--no-inference", action="store_true",
                        help="time training steps only (needs --train): skips the inference rows, which "
                             "--compile would otherwise compile too")
    parser.add_argument("--dtype", choices=sorted(speed.DTYPES), default="fp32",
                        help="compute precision: fp32, or bf16/fp16 under autocast (fp16: GPU only; default fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads (default: all cores, here {available_cores()})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda if available)")
    parser.add_argument("--img-size", type=int, default=None, help="override the models' img_size")
    parser.add_argument("--frames", type=int, default=None, help="override the models' num_frames")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the input clips")
    parser.add_argument("--quick", action="store_true",
                        help=f"a seconds-long run for tests: {QUICK_MODEL}, batches 1 2, 1 warm-up, 1 iter "
                             "(explicit options still win)")
    parser.add_argument("--output", metavar="PATH", help="write every row (and the setup) as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick; refuse impossible settings (exit 2)."""
    defaults = {"models": [QUICK_MODEL], "batches": [1, 2], "warmup": 1, "iters": 1} if args.quick else \
        {"models": list(DEFAULT_MODELS), "batches": [1, 8], "warmup": 2, "iters": 5}
    for key, value in {**defaults, "threads": available_cores()}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.torch_device = resolve_device(args.device)
        args.torch_dtype = speed.check_dtype(args.dtype, args.torch_device)
    except ValueError as err:
        parser.error(str(err))
    problem = _impossible(args)
    if problem:
        parser.error(problem)
    if args.output:
        try:
            writable_file(args.output, "--output")
        except ConfigError as err:
            parser.error(str(err))
    return args


def _impossible(args: argparse.Namespace) -> Optional[str]:
    """What makes these settings impossible to run, or None."""
    bad_keeps = [keep for keep in args.keeps if not 0 < keep <= 1]
    if bad_keeps:
        return f"keep {bad_keeps[0]} is not a fraction in (0, 1]"
    if any(b < 1 for b in args.batches) or args.iters < 1 or args.warmup < 0 or args.threads < 1:
        return "batches, --iters and --threads must be >= 1, --warmup >= 0"
    if args.compile and args.warmup < 1:
        return "--compile needs --warmup >= 1 (the first calls compile)"
    if args.no_inference and not args.train:
        return "--no-inference leaves nothing to time without --train"
    return None


def measurements(args: argparse.Namespace) -> list[str]:
    """The measurement kinds this run makes, in table order."""
    kinds = []
    if not args.no_inference:
        kinds.append("inference, eager")
        if args.compile:
            kinds.append("inference, compiled")
    if args.train:
        kinds.append("training step, eager")
        if args.compile:
            kinds.append("training step, compiled")
    return kinds


# --------------------------------------------------------------------------- one row
@dataclass
class Inputs:
    """The clips (and labels for training steps) of each batch size, on the device."""

    videos: dict[int, torch.Tensor]
    labels: dict[int, torch.Tensor]


def make_inputs(model: torch.nn.Module, batches: list[int], seed: int, device: torch.device) -> Inputs:
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    videos, labels = {}, {}
    for batch in batches:
        videos[batch] = torch.randn(batch, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size,
                                    generator=generator).to(device)
        labels[batch] = torch.randint(0, max(cfg.num_classes, 1), (batch,), generator=generator).to(device)
    return Inputs(videos, labels)


def configure(model: torch.nn.Module, spec: Spec, mode: str, keep: float, row: dict[str, Any],
              drop_gmacs: dict[tuple[str, float], float], inputs: Inputs) -> None:
    """Put the row's reducer into ``model``; ToMe's r is matched to top-k's GMACs at this keep,
    the interaction predictor fitted briefly (speed only)."""
    if spec.reducer == "none":
        apply_reducer(model, "none")
        return
    kwargs: dict[str, Any] = dict(spec.kwargs, mode=mode)
    if spec.reducer == "tome":
        target = drop_gmacs.get((mode, keep))
        if target is None:  # top-k was not run
            target = reduced_gmacs(model, "topk", keep=keep, mode=mode)
        r, matched = tome_r_for_gmacs(model, target, mode)
        kwargs["r"] = r
        row.update(tome_r=r, tome_target_gmacs=target)
        row["note"] = f"r={r} (GMACs matched to topk's {target:.2f})"
    else:
        kwargs["keep"] = keep
    apply_reducer(model, spec.reducer, **kwargs)
    if spec.reducer == "iared2":
        row["note"] = "untrained interpreter: speed only"
    elif spec.reducer == "interaction":
        fit_interaction_predictors(model, [inputs.videos[min(inputs.videos)][:1]], steps=20)
        row["note"] = "predictor fitted on one random clip: speed only"


def time_kind(kind: str, model: torch.nn.Module, inputs: Inputs, batch: int, args: argparse.Namespace,
              baseline: Optional[torch.nn.Module] = None) -> tuple[speed.Timing, Optional[speed.PairedTiming]]:
    """One measurement of one batch size, compiled afresh where asked; with ``baseline`` (eager
    kinds) timed in alternation with it. Training steps run on copies (the weights change)."""
    video, labels, dtype = inputs.videos[batch], inputs.labels[batch], args.torch_dtype
    torch._dynamo.reset()
    compiled = kind.endswith("compiled")
    if kind.startswith("inference"):
        runner = speed.compile_model(model) if compiled else model
        call = speed.inference_call(runner, video, dtype)
        base_call = None if baseline is None else speed.inference_call(baseline, video, dtype)
    else:
        trainee = copy.deepcopy(model)
        runner = speed.compile_model(trainee) if compiled else trainee
        call = speed.training_call(runner, video, labels, torch.optim.AdamW(trainee.parameters(), lr=1e-5), dtype)
        base_call = None
        if baseline is not None:
            base = copy.deepcopy(baseline)
            base_call = speed.training_call(base, video, labels, torch.optim.AdamW(base.parameters(), lr=1e-5), dtype)
    if base_call is None or compiled:
        return speed.time_calls(call, video.device, args.warmup, args.iters), None
    paired = speed.time_paired(base_call, call, video.device, args.warmup, args.iters)
    return paired.second, paired


def new_row(name: str, spec: Spec, mode: str, keep: float) -> dict[str, Any]:
    return {"model": name, "reducer": spec.label, "mode": mode, "keep": keep, "gmacs": None, "gmacs_ratio": None,
            "tokens_per_block": None, "runs": {}, "graphs": None, "note": "", "error": None}


def measure_row(model: torch.nn.Module, row: dict[str, Any], inputs: Inputs, args: argparse.Namespace,
                baseline: Optional[torch.nn.Module] = None) -> None:
    """Fill ``row`` with GMACs, token counts, graph counts and every timing (errors noted);
    with ``baseline``, eager timings alternate with it and keep the paired speed-up."""
    smallest = inputs.videos[min(inputs.videos)][:1]
    model.eval()
    with torch.inference_mode():
        _, info = model(smallest, return_info=True)
    row["gmacs"] = float(info.gmacs.mean())
    row["tokens_per_block"] = info.tokens.float().mean(dim=0).tolist()
    errors = []
    if args.compile:
        try:
            report = speed.graph_breaks(model, smallest)
            row["graphs"] = {"graphs": report.graphs, "breaks": report.breaks, "reasons": report.reasons}
        except Exception as err:  # noqa: BLE001 - reported in the row
            errors.append(f"explain: {short_error(err)}")
    for kind in measurements(args):
        for batch in args.batches:
            try:
                timing, paired = time_kind(kind, model, inputs, batch, args, baseline)
            except Exception as err:  # noqa: BLE001 - report and go on
                errors.append(f"{kind} @{batch}: {short_error(err)}")
                if args.torch_device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            cell = {"clips_per_s": batch / timing.seconds, "seconds": timing.seconds, "times": timing.times,
                    "peak_mib": timing.peak_mib}
            if paired is not None:
                cell.update(paired_speedup=paired.ratio, paired_ratios=paired.ratios,
                            paired_plain_times=paired.first.times)
            row["runs"].setdefault(kind, {})[str(batch)] = cell
    if errors:
        row["error"] = "; ".join(errors)


def add_ratios(row: dict[str, Any], plain: Optional[dict[str, Any]]) -> None:
    """GMACs ratio, speed-up and efficiency of ``row`` against the plain model's row."""
    if plain is None or not plain["gmacs"] or not row["gmacs"]:
        return
    row["gmacs_ratio"] = plain["gmacs"] / row["gmacs"]
    for kind, by_batch in row["runs"].items():
        for batch, cell in by_batch.items():
            base = plain["runs"].get(kind, {}).get(batch)
            if "paired_ratios" in cell:
                cell.update(speed.paired_efficiency(cell["paired_ratios"], row["gmacs_ratio"]))
            elif base is not None:
                cell["speedup"] = cell["clips_per_s"] / base["clips_per_s"]
                cell["efficiency"] = cell["speedup"] / row["gmacs_ratio"]


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- main loop
def configurations(args: argparse.Namespace) -> list[tuple[str, Spec, str, float]]:
    """(model, spec, mode, keep) in run order: plain first, then each mode, reducer and keep
    (topk before tome, whose r is matched to top-k's GMACs), plain again at the end."""
    order = list(SPEC_BY_LABEL)
    specs = sorted((SPEC_BY_LABEL[label] for label in args.reducers), key=lambda s: order.index(s.label))
    runs: list[tuple[str, Spec, str, float]] = []
    for name in args.models:
        runs.append((name, PLAIN, "-", 1.0))
        runs += [(name, spec, mode, keep) for mode in args.modes for spec in specs for keep in args.keeps]
        runs.append((name, PLAIN_END, "-", 1.0))
    return runs


def run(args: argparse.Namespace, on_row: Optional[Callable[[list[dict[str, Any]]], None]] = None
        ) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    if args.frames is not None:
        overrides["num_frames"] = args.frames
    runs = configurations(args)
    rows: list[dict[str, Any]] = []
    progress = tqdm(total=len(runs), desc="bench", unit="config", file=sys.stderr, dynamic_ncols=True,
                    disable=args.no_progress)
    current: Optional[str] = None
    model: Optional[torch.nn.Module] = None
    baseline: Optional[torch.nn.Module] = None  # the plain model, for --paired timing
    inputs: Optional[Inputs] = None
    plain: dict[str, dict[str, Any]] = {}
    drop_gmacs: dict[tuple[str, float], float] = {}
    for name, spec, mode, keep in runs:
        progress.set_postfix_str(f"{name.replace('timesformer_', '')} {spec.label} {mode} {keep:g}")
        row = new_row(name, spec, mode, keep)
        try:
            if name != current:
                model = baseline = inputs = current = None
                torch.manual_seed(args.seed)
                model = create_model(name, **overrides).eval().to(args.torch_device)
                baseline = copy.deepcopy(model) if args.paired else None
                inputs = make_inputs(model, args.batches, args.seed, args.torch_device)
                current, drop_gmacs = name, {}
            configure(model, spec, mode, keep, row, drop_gmacs, inputs)
            measure_row(model, row, inputs, args, None if spec in (PLAIN, PLAIN_END) else baseline)
        except Exception as err:  # noqa: BLE001 - one failing configuration must not stop the bench
            row["error"] = short_error(err)
        if spec is PLAIN:
            plain[name] = row
        if spec.label == "topk" and row["gmacs"] is not None:
            drop_gmacs[(mode, keep)] = row["gmacs"]
        if spec.reducer == "bat" and row["tokens_per_block"]:
            row["note"] = f"tokens in last block {row['tokens_per_block'][-1]:.0f} (adds cluster tokens)"
        if spec is PLAIN_END:
            row["note"] = "drift check: plain model re-timed after the reducers"
        add_ratios(row, plain.get(name))
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        progress.update(1)
    progress.close()
    return rows


# --------------------------------------------------------------------------- output
def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _efficiency(cell: dict[str, Any]) -> str:
    """"0.97", or with paired rounds "0.97 [0.94-0.99]": the median's order-statistic interval."""
    text = _fmt(cell.get("efficiency"), ".2f")
    if "efficiency_low" in cell:
        text += f" [{cell['efficiency_low']:.2f}-{cell['efficiency_high']:.2f}]"
    return text


def markdown_table(rows: list[dict[str, Any]], batches: list[int], kind: str = "inference, eager") -> str:
    """One measurement kind: per row GMACs, then per batch clips/s, speed-up, efficiency
    (paired rows: with the interval of its median over the rounds) and peak GPU MiB where
    measured."""
    keys = [str(b) for b in batches]
    with_memory = any(cell.get("peak_mib") is not None for row in rows for cell in row["runs"].get(kind, {}).values())
    with_graphs = any(row.get("graphs") for row in rows)
    header = ["model", "reducer", "mode", "keep", "GMACs/view", "GMACs ratio"]
    header += [f"clips/s @{b}" for b in batches] + [f"speed-up @{b}" for b in batches]
    header += [f"efficiency @{b}" for b in batches]
    header += [f"peak MiB @{b}" for b in batches] if with_memory else []
    header += ["graphs"] if with_graphs else []
    header += ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells_by_batch = row["runs"].get(kind, {})
        cells = [row["model"], row["reducer"], row["mode"], f"{row['keep']:g}", _fmt(row["gmacs"], ".2f"),
                 _fmt(row["gmacs_ratio"], ".2f")]
        for field_name, fmt in (("clips_per_s", ".3g"), ("speedup", ".2f")):
            cells += [_fmt(cells_by_batch.get(k, {}).get(field_name), fmt) for k in keys]
        cells += [_efficiency(cells_by_batch.get(k, {})) for k in keys]
        if with_memory:
            cells += [_fmt(cells_by_batch.get(k, {}).get("peak_mib"), ".0f") for k in keys]
        if with_graphs:
            cells.append("" if not row.get("graphs") else str(row["graphs"]["graphs"]))
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
    info = {"argv": list(sys.argv[1:] if argv is None else argv), "device": str(args.torch_device), "dtype": args.dtype,
            "threads": args.threads, "cores": available_cores(), "cpu": cpu, "torch": torch.__version__,
            "python": platform.python_version(), "batches": args.batches, "warmup": args.warmup,
            "iters": args.iters, "measurements": measurements(args),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "tome_r": "the constant r whose info.gmacs come closest to topk's at the same keep"}
    if args.torch_device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(args.torch_device)
    try:
        info["load_average_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def drift_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A line per (model, measurement, batch) whose plain speed drifted by over 15%. Rows
    timed in alternation with the plain model (--paired) keep speed-ups drift cannot bias."""
    paired = {(row["model"], kind, batch) for row in rows for kind, by_batch in row["runs"].items()
              for batch, cell in by_batch.items() if "paired_speedup" in cell}
    lines = []
    for row in rows:
        if row["reducer"] != PLAIN_END.label:
            continue
        for kind, by_batch in row["runs"].items():
            for batch, cell in by_batch.items():
                drift = cell.get("speedup")
                if drift is None or abs(drift - 1) <= 0.15:
                    continue
                consequence = ("clips/s are not comparable across rows; the speed-ups are paired per round and "
                               "stand" if (row["model"], kind, batch) in paired else "speed-ups are unreliable")
                lines.append(f"warning: {row['model']} {kind} @{batch}: the plain model ran {drift:.2f}x as fast "
                             f"at the end as at the start; the machine's speed drifted (other load?), so "
                             f"{consequence}.")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = resolve(parser, parser.parse_args(argv))
    setup = setup_info(args, argv)

    def write(rows: list[dict[str, Any]]) -> None:
        if args.output:
            write_atomically(args.output, json.dumps({"setup": setup, "rows": rows}, indent=1))

    rows = run(args, on_row=write)
    try:
        setup["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    setup["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write(rows)
    print(f"\n{setup['device']} ({setup.get('gpu', setup['cpu'])}), {args.dtype}, {args.threads} threads, torch "
          f"{torch.__version__}; warm-up {args.warmup}, median of {args.iters}; GMACs per view from info.gmacs.")
    for kind in measurements(args):
        print(f"\n### {kind}\n")
        print(markdown_table(rows, args.batches, kind))
    for line in drift_warnings(rows):
        print("\n" + line)
    failed = [row for row in rows if row["error"]]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows had errors (see the note column).")
    return 0
