"""Where each reducer's saved MACs fail to become saved time: a profiler breakdown per reducer.

For the plain model and each reducer (the settings of ``ired-video bench``: ToMe's r matched
to top-k's GMACs at the same keep) at one batch size: wall time per call, the time the device
was busy (kernel time on CUDA, operator CPU time on the CPU) and its share of the wall time
(low: the host's launches, not the device, set the pace), kernel launches per call, the time
inside reducer calls, the time per kind of operator (``ired_video.profiling.CATEGORIES``), and
the operators whose time shrank least with the MACs ("excess": reduced ms minus plain ms /
GMACs ratio). Nothing is paired: the plain model is profiled first and again last ("plain
(end)"), and a category's factor against the plain row means no more than those two rows
agree (on a shared 2-core CPU they have differed by 20%). Efficiencies come from the paired
``ired-video bench``; this tool says where a difference lies.

    python tools/profile_reducers.py --model timesformer_base_patch16_224 --device cuda --dtype bf16 \\
        --batch 32 --reducers topk tome bat iared2 --keep 0.5 --train --output runs/gpu/profile.json
    python tools/profile_reducers.py --model timesformer_small_patch16_224 --batch 1 --reducers tome
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import torch

from ired_video import speed
from ired_video.build import create_model
from ired_video.commands.bench import PLAIN, PLAIN_END, SPEC_BY_LABEL, Spec, configure, make_inputs
from ired_video.config import ConfigError
from ired_video.devices import resolve_device
from ired_video.models import list_models
from ired_video.paths import write_atomically
from ired_video.profiling import CATEGORIES, OTHER, OpProfile, excess_ops, profile_call

KINDS = ("inference", "training step")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timesformer_small_patch16_224", choices=list_models(), metavar="MODEL")
    parser.add_argument("--reducers", nargs="+", default=["topk", "tome"], choices=list(SPEC_BY_LABEL),
                        metavar="REDUCER", help="reducers to profile besides the plain model (default: topk tome)")
    parser.add_argument("--keep", type=float, default=0.5, help="fraction kept per stage (default 0.5)")
    parser.add_argument("--mode", choices=["tube", "frame"], default="tube")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="also profile training steps (forward, backward, AdamW)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--dtype", choices=sorted(speed.DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled calls first (default 2)")
    parser.add_argument("--iters", type=int, default=5, help="timed calls for the wall time, median (default 5)")
    parser.add_argument("--calls", type=int, default=3, help="profiled calls, averaged (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--output", help="JSON: every operator's time per setting")
    return parser


def profile_setting(model: torch.nn.Module, kind: str, video: torch.Tensor, labels: torch.Tensor,
                    args: argparse.Namespace) -> tuple[float, OpProfile]:
    """(median wall seconds per call, operator profile) of one measurement kind."""
    if kind == "inference":
        call = speed.inference_call(model, video, args.torch_dtype)
    else:
        model = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        call = speed.training_call(model, video, labels, optimizer, args.torch_dtype)
    timing = speed.time_calls(call, video.device, args.warmup, args.iters)
    return timing.seconds, profile_call(call, video.device, args.calls)


def setting_label(spec: Spec, row: dict[str, Any], keep: float) -> str:
    """"plain", "plain (end)", "tome r=16" or "topk 0.5"."""
    if spec in (PLAIN, PLAIN_END):
        return spec.label
    return f"{spec.label} r={row['tome_r']}" if "tome_r" in row else f"{spec.label} {keep:g}"


def summary_table(results: list[dict[str, Any]], kind: str) -> str:
    plain = results[0]["runs"][kind]
    header = ["setting", "GMACs ratio", "wall ms", "busy ms", "busy / wall", "launches",
              "host ms", "in reducers ms"] + [name for name, _ in CATEGORIES] + [OTHER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        run = result["runs"][kind]
        prof = run["profile"]
        cells = [result["label"], f"{result['gmacs_ratio']:.2f}", f"{run['wall_ms']:.1f}", f"{prof['busy_ms']:.1f}",
                 f"{prof['busy_ms'] / run['wall_ms']:.2f}", f"{prof['launches']:.0f}", f"{prof['host_ms']:.1f}",
                 f"{prof['reducer_ms']:.1f}"]
        base = plain["profile"]["by_category_ms"]
        for name, ms in prof["by_category_ms"].items():
            shrink = f" ({base[name] / ms:.2f}x)" if ms > 0 and base[name] > 0 and result is not results[0] else ""
            cells.append(f"{ms:.1f}{shrink}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def excess_table(results: list[dict[str, Any]], profiles: dict[tuple[str, str], OpProfile], kind: str) -> str:
    lines = ["| setting | operator | excess ms | plain ms | reduced ms |", "|---|---|---|---|---|"]
    plain = profiles[(results[0]["label"], kind)]
    for result in results[1:]:
        if result["reducer"] == PLAIN_END.label:
            continue
        reduced = profiles[(result["label"], kind)]
        for name, excess, plain_ms in excess_ops(plain, reduced, result["gmacs_ratio"], top=6):
            lines.append(f"| {result['label']} | {name} | {excess:+.2f} | "
                         f"{'' if plain_ms is None else f'{plain_ms:.2f}'} | {reduced.op_ms.get(name, 0.0):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's start/stop chatter out of the tables
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.batch, args.iters, args.calls) < 1 or args.warmup < 0 or not 0 < args.keep <= 1:
        parser.error("--batch, --iters and --calls must be >= 1, --warmup >= 0, --keep in (0, 1]")
    try:
        args.torch_device = resolve_device(args.device)
        args.torch_dtype = speed.check_dtype(args.dtype, args.torch_device)
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: value for key, value in (("img_size", args.img_size), ("num_frames", args.frames))
                 if value is not None}
    torch.manual_seed(0)
    plain_model = create_model(args.model, **overrides).eval().to(args.torch_device)
    inputs = make_inputs(plain_model, [args.batch], 0, args.torch_device)
    video, labels = inputs.videos[args.batch], inputs.labels[args.batch]
    kinds = KINDS if args.train else KINDS[:1]
    specs: list[Spec] = [PLAIN] + [SPEC_BY_LABEL[label] for label in args.reducers] + [PLAIN_END]
    setup = {"argv": sys.argv[1:] if argv is None else argv, "model": args.model, "batch": args.batch,
             "device": str(args.torch_device), "dtype": args.dtype, "threads": torch.get_num_threads(),
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
             "gpu": torch.cuda.get_device_name(args.torch_device) if args.torch_device.type == "cuda" else None}
    results: list[dict[str, Any]] = []
    profiles: dict[tuple[str, str], OpProfile] = {}
    drop_gmacs: dict[tuple[str, float], float] = {}
    for spec in specs:
        model = copy.deepcopy(plain_model)
        row: dict[str, Any] = {}
        configure(model, spec, args.mode, args.keep, row, drop_gmacs, inputs)
        with torch.inference_mode():
            gmacs = float(model(video[:1], return_info=True)[1].gmacs.mean())
        label = setting_label(spec, row, args.keep)
        result = {"label": label, "reducer": spec.label, "gmacs": gmacs, "runs": {}, **row}
        result["gmacs_ratio"] = (results[0]["gmacs"] if results else gmacs) / gmacs
        for kind in kinds:
            print(f"profiling {label}, {kind} ...", file=sys.stderr)
            seconds, prof = profile_setting(model, kind, video, labels, args)
            profiles[(label, kind)] = prof
            result["runs"][kind] = {"wall_ms": 1e3 * seconds, "profile": prof.to_dict()}
        results.append(result)
        if args.output:  # after every setting: a run cut short keeps what it measured
            write_atomically(args.output, json.dumps({"setup": setup, "results": results}, indent=1))
        if spec.label == "topk":
            drop_gmacs[(args.mode, args.keep)] = gmacs
        del model
    clock = "kernel time" if args.torch_device.type == "cuda" else "operator CPU time"
    print(f"{args.model}, batch {args.batch}, {setup['device']} {args.dtype}, torch {torch.__version__}; "
          f"busy = {clock}; per call, ms; category (x: how many times less than the plain model's)")
    for kind in kinds:
        print(f"\n### {kind}\n\n{summary_table(results, kind)}\n\nOperators whose time shrank least with the "
              f"MACs ({kind}):\n\n{excess_table(results, profiles, kind)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
