"""What the interaction reducer's scores cost at inference: the indicator itself vs its predictor.

For one model (default TimeSformer-S 8x224, random weights: the cost does not depend on
them), batch 1, on the CPU: CPU seconds per forward (``time.process_time``, median of
``--iters`` after one warm-up; CPU time, not wall time, so other jobs on a shared machine
matter less) and GMACs per clip, for the plain model and the interaction reducer at
``--keep`` scoring by its fitted predictor, by the indicator, and the attention-received
reducer. For the indicator run it also counts FLOPs with ``FlopCounterMode`` (forward and
the indicator's backward pass) to check the GMACs it bills (tail forward x 3).

    python tools/bench_interaction.py --out runs/bench_interaction.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ired_video.build import apply_reducer, create_model
from ired_video.reducers.interaction_fit import fit_interaction_predictors


def cpu_seconds(model: torch.nn.Module, video: torch.Tensor, iters: int) -> tuple[float, float]:
    """Median CPU seconds of ``model(video)`` under no_grad after one warm-up, and GMACs."""
    times = []
    with torch.no_grad():
        _, info = model(video, return_info=True)
        for _ in range(iters):
            start = time.process_time()
            model(video)
            times.append(time.process_time() - start)
    return statistics.median(times), float(info.gmacs[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timesformer_small_patch16_224")
    parser.add_argument("--keep", type=float, default=0.7)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    cfg = model.config
    video = torch.randn(1, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size,
                        generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []

    def measure(label: str, **reducer: Any) -> None:
        apply_reducer(model, reducer.pop("name", "none"), **reducer)
        seconds, gmacs = cpu_seconds(model, video, args.iters)
        rows.append({"scores": label, "cpu_seconds": seconds, "gmacs": gmacs})
        print(f"| {label} | {seconds:.2f} | {gmacs:.2f} |", flush=True)

    print(f"{args.model}, batch 1, {args.threads} thread(s), keep {args.keep}, median of {args.iters}")
    print("| scores | CPU s / clip | GMACs / clip |\n|---|---|---|")
    measure("plain model")
    measure("attention received", name="attention_received", keep=args.keep)
    apply_reducer(model, "interaction", keep=args.keep)
    fit_interaction_predictors(model, [video], steps=5)  # any fitted head costs the same
    seconds, gmacs = cpu_seconds(model, video, args.iters)
    rows.append({"scores": "interaction predictor", "cpu_seconds": seconds, "gmacs": gmacs})
    print(f"| interaction predictor | {seconds:.2f} | {gmacs:.2f} |", flush=True)
    measure("interaction indicator", name="interaction", keep=args.keep, score="indicator")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.set_fused_attention(False)  # FlopCounterMode has no formula for the fused CPU kernel
        model(video)
        model.set_fused_attention(True)
    rows[-1]["flop_counter_gmacs"] = counter.get_total_flops() / 2e9
    print(f"FlopCounterMode on the indicator run: {rows[-1]['flop_counter_gmacs']:.2f} GMACs "
          f"(billed: {rows[-1]['gmacs']:.2f})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "keep": args.keep, "threads": args.threads,
                                        "iters": args.iters, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
