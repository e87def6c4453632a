"""Reducer overhead at batch 1: speed-up and efficiency measured in CPU time, and the time
spent inside the reducer calls.

Wall-clock speed-ups on a CPU shared with other jobs vary by tens of percent between rounds
(the paired ``ired-video bench`` rounds of issue 17 ranged 0.4-2.2 under load 7-8 on 2
cores); the process's CPU time does not count the time other jobs hold the core, so at one
thread it resolves differences of a few percent. Each round runs the plain model and every
reducer setting once, in alternating order; the speed-up is the median per-round ratio,
efficiency = speed-up / GMACs ratio, as in ``ired-video bench``, with the distribution-free
interval of that median (two order statistics of the rounds; ``interval_coverage`` in the
JSON, 0.965 at 15 rounds). Run it against another
checkout of the package with ``PYTHONPATH=/path/to/checkout`` (before/after comparisons).

``--setting tome-schedule:r=16`` is a diagnostic, not a reducer: ToMe's token counts (r fewer
slots after each block's attention) with none of its work (it keeps the first slots), so
efficiency below 1.0 there is the cost of the schedule itself, and ToMe's own calls are the
difference between the two rows; ``tome-schedule:r=16,keys=true`` also has each block hand
it the head-mean keys, as ToMe's matching asks.

    python tools/reducer_overhead.py --model timesformer_small_patch16_224 \\
        --setting tome:r=16 --setting tome:r=11 --rounds 15 --output docs/bench/x.json

The rounds of one process share its memory layout and what else it holds, and two
processes can differ by more than one run's interval (docs/statistics.md); ``--processes 3``
makes three runs, each in a fresh process, and gives each setting a verdict against
``--goal``: "meets" when every run's interval lies at or above it, "misses" when every
run's lies below, else "not shown either way". Which other settings share a process moves
the efficiencies too (IA-RED² keep 0.7 compiled: 0.93-0.95 among eight settings, 0.98-1.00
among three; README); ``--isolate`` gives every setting its own processes, beside the plain
model only.

``--compile --warmup 2`` times every model (the plain one too) under ``torch.compile``
(default mode, inductor; the first calls compile, minutes per model on a CPU); the time
inside reducer calls is not measured then, as the compiled graph holds them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ired_video import apply_reducer, create_model
from ired_video.profiling import around_reducer_calls
from ired_video.reducers.base import Reducer
from ired_video.reducers.interaction_fit import fit_interaction_predictors
from ired_video.speed import compile_model, paired_efficiency
from ired_video.tokens import TokenState, keep_slots


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """"tome:r=16,mode=frame,prop_attn=false" -> ("tome", {"r": 16, "mode": "frame", "prop_attn": False})."""
    name, _, rest = text.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if value.lower() in ("true", "false"):
            kwargs[key] = value.lower() == "true"
            continue
        try:
            kwargs[key] = int(value)
        except ValueError:
            try:
                kwargs[key] = float(value)
            except ValueError:
                kwargs[key] = value
    return name, kwargs


class KeepFirstSlots(Reducer):
    """Inside block ``block``: keep the first K - min(r, K // 2) slots of every frame, as many
    as ToMe leaves, with no matching and no merging."""

    name = "tome-schedule"
    placement = "inside"

    def __init__(self, block: int, r: int, keys: bool = False) -> None:
        super().__init__(block)
        self.r = r
        self.needs = frozenset({"keys"}) if keys else frozenset()

    def forward(self, state: TokenState, maps: Any = None) -> TokenState:
        batch, frames, slots = state.x.shape[:3]
        kept = slots - min(self.r, slots // 2)
        index = torch.arange(kept, device=state.x.device).expand(batch, frames, kept)  # (B, F, K')
        out = keep_slots(state, index, aligned=state.aligned)
        self.record(out)
        return out


def build_setting(plain: torch.nn.Module, text: str, video: Optional[torch.Tensor] = None) -> torch.nn.Module:
    """A copy of ``plain`` with the setting's reducer (``tome-schedule``: ``KeepFirstSlots`` in
    every block where ToMe with the same options would merge; ``keys=true``: asking for keys).
    ``interaction``'s predictor is fitted for 20 steps on ``video`` (B, C, T, H, W), as
    ``ired-video bench`` does: speed only."""
    name, kwargs = parse_setting(text)
    model = copy.deepcopy(plain)
    if name == "interaction":
        if video is None:
            raise ValueError("interaction: the predictor is fitted on a clip; pass video")
        apply_reducer(model, name, **kwargs)
        fit_interaction_predictors(model, [video[:1]], steps=20)
        return model.eval()
    if name != "tome-schedule":
        return apply_reducer(model, name, **kwargs).eval()
    keys = bool(kwargs.pop("keys", False))
    apply_reducer(model, "tome", **kwargs)
    model.reducers = torch.nn.ModuleDict({key: KeepFirstSlots(int(key), tome.r, keys)
                                          for key, tome in model.reducers.items()})
    return model.eval()


class ReducerClock:
    """Adds up the process CPU time spent inside ``Reducer`` calls while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._installed = around_reducer_calls(self._timed)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.seconds += time.process_time() - start

    def __enter__(self) -> "ReducerClock":
        self._installed.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._installed.__exit__(*exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timesformer_small_patch16_224")
    parser.add_argument("--setting", action="append", required=True,
                        help="reducer:key=value,... (repeatable), e.g. tome:r=16 or bat:keep=0.5")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", type=int, default=1,
                        help="independent runs, one fresh process each, one after another; with more than one, "
                             "each setting gets a verdict against --goal from all runs' intervals")
    parser.add_argument("--isolate", action="store_true",
                        help="with --processes N: N runs per setting, each process holding the plain model and "
                             "that one setting (what else a process holds moves its efficiencies)")
    parser.add_argument("--goal", type=float, default=0.95, help="efficiency the verdicts are about (default 0.95)")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile'd models (default mode; the plain model compiled too) after "
                             "--warmup calls each; the time inside reducer calls is then not measured")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed calls of every model before the rounds (at least 2 with --compile)")
    parser.add_argument("--output", help="JSON file for the summary and every round's times")
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process: the plain model and every setting in alternating rounds."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = create_model(args.model).eval()
    cfg = plain.config
    video = torch.randn(args.batch, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size,
                        generator=torch.Generator().manual_seed(0))
    models: dict[str, torch.nn.Module] = {"plain": plain}
    for text in args.setting:
        models[text] = build_setting(plain, text, video)
    times: dict[str, list[float]] = {label: [] for label in models}
    inside: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        gmacs = {label: float(m(video, return_info=True)[1].gmacs.mean()) for label, m in models.items()}
        runners = {label: compile_model(m) if args.compile else m for label, m in models.items()}
        for runner in runners.values():
            for _ in range(args.warmup):
                runner(video)
        for round_index in range(args.rounds):
            order = list(models) if round_index % 2 == 0 else list(models)[::-1]
            for label in order:
                # a compiled graph holds the reducers' calls: no clock around them (its hook would recompile)
                with contextlib.nullcontext() if args.compile else ReducerClock() as clock:
                    start = time.process_time()
                    runners[label](video)
                    times[label].append(time.process_time() - start)
                if clock is not None:
                    inside[label].append(clock.seconds)
    summary: dict[str, Any] = {"model": args.model, "batch": args.batch, "threads": args.threads,
                               "rounds": args.rounds, "warmup": args.warmup, "compiled": args.compile,
                               "clock": "process CPU time", "torch": torch.__version__,
                               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": []}
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {'compiled' if args.compile else 'eager'}, "
          f"{args.rounds} paired rounds, CPU time")
    for label in models:
        ratios = [base / own for base, own in zip(times["plain"], times[label])]
        in_reducers = 1e3 * statistics.median(inside[label]) if inside[label] else None
        row = {"setting": label, "gmacs": gmacs[label], "gmacs_ratio": gmacs["plain"] / gmacs[label],
               "median_ms": 1e3 * statistics.median(times[label]), "speedup_range": [min(ratios), max(ratios)],
               "inside_reducers_ms": in_reducers, "times_s": times[label]}
        row.update(paired_efficiency(ratios, row["gmacs_ratio"]))
        summary["rows"].append(row)
        in_text = "" if in_reducers is None else f"  in reducers {in_reducers:.1f} ms"
        print(f"  {label:24s} GMACs {row['gmacs']:6.2f} (ratio {row['gmacs_ratio']:.3f})  {row['median_ms']:7.1f} ms  "
              f"speed-up {row['speedup']:.3f} [{min(ratios):.2f}-{max(ratios):.2f}]  efficiency "
              f"{_efficiency_text(row)}{in_text}")
    print(f"efficiency [interval]: the median's order-statistic interval, coverage "
          f"{summary['rows'][0]['interval_coverage']:.3f} at {args.rounds} rounds", flush=True)
    return summary


def _efficiency_text(row: dict[str, Any]) -> str:
    """"0.966 [0.941-0.996]": a row's efficiency and the interval of its median."""
    return f"{row['efficiency']:.3f} [{row['efficiency_low']:.3f}-{row['efficiency_high']:.3f}]"


def verdict(rows: list[dict[str, Any]], goal: float) -> str:
    """One setting's rows from several runs against ``goal``: "meets" if every run's interval
    lies at or above it, "misses" if every run's lies below, else "not shown either way"."""
    if all(row["efficiency_low"] >= goal for row in rows):
        return "meets"
    if all(row["efficiency_high"] < goal for row in rows):
        return "misses"
    return "not shown either way"


def _run_command(args: argparse.Namespace, settings: list[str], output: Path) -> list[str]:
    """The command line of one run of this script with ``settings``, writing ``output``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--batch", str(args.batch),
               "--rounds", str(args.rounds), "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--output", str(output)]
    if args.compile:
        command.append("--compile")
    for text in settings:
        command += ["--setting", text]
    return command


def run_processes(args: argparse.Namespace) -> dict[str, Any]:
    """``args.processes`` runs of this script, each in a fresh process, and a verdict per setting;
    with ``args.isolate`` that many runs per setting, each holding the plain model and that
    setting only."""
    groups = [[text] for text in args.setting] if args.isolate else [list(args.setting)]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for group in groups:
            for index in range(args.processes):
                out = Path(scratch) / f"run{len(runs)}.json"
                print(f"run {index + 1} of {args.processes}" + (f": {group[0]}" if args.isolate else ""), flush=True)
                subprocess.run(_run_command(args, group, out), check=True)
                runs.append(json.loads(out.read_text()))
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            rows_of.setdefault(row["setting"], []).append(row)
    verdicts = {}
    print(f"\nefficiency per run [interval], verdict against {args.goal} over {args.processes} runs")
    for label, rows in rows_of.items():
        if label == "plain":
            verdicts[label] = ""
            continue
        verdicts[label] = verdict(rows, args.goal)
        cells = ", ".join(_efficiency_text(row) for row in rows)
        print(f"  {label:24s} {cells}  {verdicts[label]}")
    return {"goal": args.goal, "processes": args.processes, "isolated": args.isolate, "verdicts": verdicts,
            "runs": runs}


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.rounds, args.batch, args.threads, args.processes) < 1:
        parser.error("--rounds, --batch, --threads and --processes must be >= 1")
    if args.warmup < (2 if args.compile else 0):
        parser.error("--warmup must be >= 0, and >= 2 with --compile (the first calls compile)")
    summary = run_processes(args) if args.processes > 1 or args.isolate else measure(args)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main()
