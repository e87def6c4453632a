"""What torch.compile costs per reducer: first-call seconds and the kernels inductor generates.

For the plain model and each reducer (the settings of ``ired-video bench``: ToMe's r matched
to top-k's GMACs at the same keep), each in its own Python process with an empty inductor
cache (so no setting reuses another's kernels): the seconds of the first compiled call
(tracing, code generation, compiling, one forward; with ``--train`` one training-mode forward
and backward), the kernel source files inductor wrote (C++ on the CPU, Triton on a GPU), the
graph count of the forward in that mode, and the largest difference between compiled and
eager logits (with ``--train``: loss and gradients). Blocks that see the same shapes share
kernels; a reducer that changes the token count at every block (ToMe) makes every block's
kernels anew, and a backward doubles what each shape costs.

    python tools/compile_cost.py --model timesformer_micro --depth 8 --reducers topk tome
    python tools/compile_cost.py --model timesformer_micro --depth 8 --train
    python tools/compile_cost.py --model timesformer_base_patch16_224 --device cuda --dtype bf16 --batch 32
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ired_video import speed
from ired_video.build import create_model
from ired_video.commands.bench import PLAIN, SPEC_BY_LABEL, configure, make_inputs
from ired_video.devices import resolve_device
from ired_video.models import list_models
from ired_video.paths import write_atomically

KERNEL_SUFFIXES = (".cpp", ".py")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timesformer_micro", choices=list_models(), metavar="MODEL",
                        help=f"one of {', '.join(list_models())} (default timesformer_micro)")
    parser.add_argument("--depth", type=int, default=None, help="override the model's number of blocks")
    parser.add_argument("--reducers", nargs="+", default=["topk", "tome"], choices=sorted(SPEC_BY_LABEL),
                        metavar="REDUCER",
                        help=f"reducers besides the plain model, of {', '.join(sorted(SPEC_BY_LABEL))} "
                             "(default: topk tome)")
    parser.add_argument("--keep", type=float, default=0.5, help="keep ratio (ToMe: r matched to top-k's GMACs)")
    parser.add_argument("--mode", default="tube", choices=["tube", "frame"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(speed.DTYPES))
    parser.add_argument("--train", action="store_true",
                        help="compile a training-mode forward + backward instead of an eval forward")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # one setting, in a child process
    return parser


def count_kernel_files(cache_dir: Path) -> dict[str, int]:
    """Files inductor wrote under ``cache_dir``, by suffix (``KERNEL_SUFFIXES``)."""
    return {suffix: sum(1 for _ in cache_dir.rglob(f"*{suffix}")) for suffix in KERNEL_SUFFIXES}


def measure_one(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Compile one setting in this process (its inductor cache set by the parent) and time it."""
    device = resolve_device(args.device)
    dtype = speed.check_dtype(args.dtype, device)
    overrides = {} if args.depth is None else {"depth": args.depth}
    model = create_model(args.model, **overrides).to(device).eval()
    inputs = make_inputs(model, [args.batch], 0, device)
    row: dict[str, Any] = {"setting": label}
    configure(model, PLAIN if label == "plain" else SPEC_BY_LABEL[label], args.mode, args.keep, row, {}, inputs)
    video = inputs.videos[args.batch]
    if args.train:
        row.update(first_training_call(model, video, inputs.labels[args.batch], device, dtype))
    else:
        row.update(first_inference_call(model, video, device, dtype))
    row["graphs"] = speed.graph_breaks(model, video).graphs
    return row


def first_inference_call(model: torch.nn.Module, video: torch.Tensor, device: torch.device,
                         dtype: torch.dtype) -> dict[str, float]:
    """Seconds of the first compiled eval forward; largest |compiled - eager| logit."""
    compiled = speed.compile_model(model.eval())
    with torch.inference_mode(), speed.autocast(device, dtype):
        start = time.perf_counter()
        logits = compiled(video)
        speed.synchronize(device)
        seconds = time.perf_counter() - start
        eager = model(video)
    return {"first_call_s": seconds, "max_abs_diff": float((logits.float() - eager.float()).abs().max())}


def first_training_call(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor, device: torch.device,
                        dtype: torch.dtype) -> dict[str, float]:
    """Seconds of the first compiled training-mode forward + backward (what a training step
    compiles; the optimizer step stays eager); largest |compiled - eager| over the loss and
    every gradient, the eager ones from a copy of the model."""
    reference = copy.deepcopy(model).train()
    compiled = speed.compile_model(model.train())

    def loss_and_grads(runner: torch.nn.Module, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        with speed.autocast(device, dtype):
            logits = runner(video)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        return [loss.detach()] + [p.grad for p in params if p.grad is not None]

    start = time.perf_counter()
    compiled_values = loss_and_grads(compiled, list(model.parameters()))
    speed.synchronize(device)
    seconds = time.perf_counter() - start
    eager_values = loss_and_grads(reference, list(reference.parameters()))
    if len(compiled_values) != len(eager_values):
        raise RuntimeError(f"compiled backward filled {len(compiled_values) - 1} gradients, eager "
                           f"{len(eager_values) - 1}")
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(compiled_values, eager_values))
    return {"first_call_s": seconds, "max_abs_diff": diff}


def run_in_child(label: str, argv: list[str]) -> dict[str, Any]:
    """``measure_one`` in a fresh process with an empty inductor cache; adds its file counts."""
    with tempfile.TemporaryDirectory(prefix="ired_inductor_") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0",
                   TORCHINDUCTOR_AUTOGRAD_CACHE="0")
        done = subprocess.run([sys.executable, __file__, *argv, "--single", label], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {label} failed:\n{done.stderr[-4000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["kernel_files"] = count_kernel_files(Path(cache))
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | first compiled call, s | .cpp files | .py files | graphs | max abs diff | note |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        files = row["kernel_files"]
        lines.append(f"| {row['setting']} | {row['first_call_s']:.1f} | {files['.cpp']} | {files['.py']} | "
                     f"{row['graphs']} | {row['max_abs_diff']:.1e} | {row.get('note', '')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.single is not None:
        print(json.dumps(measure_one(args.single, args)))
        return 0
    rows = []
    for label in ["plain", *args.reducers]:
        print(f"compiling {label} ...", file=sys.stderr, flush=True)
        rows.append(run_in_child(label, argv))
    print(markdown(rows))
    if args.output is not None:
        setup = {"argv": argv, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        write_atomically(args.output, json.dumps({"setup": setup, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
