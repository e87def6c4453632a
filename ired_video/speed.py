"""Timing a model: inference and training steps, eager or compiled, with peak GPU memory.

``time_inference`` runs ``model(video)`` under ``torch.inference_mode``;
``time_training_step`` runs forward, cross-entropy, backward and an optimizer step in
training mode. Both run ``warmup`` untimed calls, then ``iters`` timed ones (the device
synchronised around each), and return the median. ``dtype`` bf16/fp16 runs under
``torch.autocast``. ``compile_model`` wraps ``torch.compile``; ``graph_breaks`` counts the
graphs dynamo splits a forward into (1 graph, 0 breaks: nothing waits on the host).
``paired_efficiency`` turns paired rounds into a speed-up and an efficiency with the
interval of their median.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ired_video.stats import median_interval

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Timing:
    """seconds: median seconds per call; times: every timed call; peak_mib: peak CUDA
    memory allocated during the timed calls (None on the CPU)."""

    seconds: float
    times: list[float]
    peak_mib: Optional[float] = None


@dataclass
class GraphReport:
    graphs: int
    breaks: int
    reasons: list[str]


def check_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype by name; fp16 needs a GPU (CPU autocast to fp16 is not a fast path)."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("dtype fp16 runs on a GPU only; use bf16 or fp32 on the CPU")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` below fp32, nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[list[Optional[float]]]:
    """Yields a one-item list that holds the peak MiB allocated inside the block (CUDA)."""
    holder: list[Optional[float]] = [None]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield holder
    if device.type == "cuda":
        holder[0] = torch.cuda.max_memory_allocated(device) / 2 ** 20


def time_calls(call: Callable[[], None], device: torch.device, warmup: int, iters: int) -> Timing:
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    with _peak_memory(device) as peak:
        for _ in range(iters):
            start = time.perf_counter()
            call()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), times, peak[0])


def inference_call(model: nn.Module, video: Tensor, dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """One ``model(video)`` in eval mode under inference mode."""
    model.eval()

    def call() -> None:
        with torch.inference_mode(), autocast(video.device, dtype):
            model(video)

    return call


def training_call(model: nn.Module, video: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
                  dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """One optimizer step: forward in training mode, cross-entropy, backward, ``optimizer.step()``.
    The weights change; use a copy you can spare."""
    model.train()

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(video.device, dtype):
            logits = model(video)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return call


def time_inference(model: nn.Module, video: Tensor, warmup: int, iters: int,
                   dtype: torch.dtype = torch.float32) -> Timing:
    """Median seconds of ``model(video)`` in eval mode under inference mode."""
    return time_calls(inference_call(model, video, dtype), video.device, warmup, iters)


def time_training_step(model: nn.Module, video: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
                       warmup: int, iters: int, dtype: torch.dtype = torch.float32) -> Timing:
    """Median seconds of one optimizer step (``training_call``)."""
    return time_calls(training_call(model, video, labels, optimizer, dtype), video.device, warmup, iters)


@dataclass
class PairedTiming:
    """Two calls timed in alternation. ``ratio``: median over rounds of seconds(first) /
    seconds(second), i.e. how many times faster the second ran than the first."""

    first: Timing
    second: Timing
    ratio: float
    ratios: list[float]


def time_paired(first: Callable[[], None], second: Callable[[], None], device: torch.device, warmup: int,
                iters: int) -> PairedTiming:
    """Time ``first`` and ``second`` in alternating rounds (A B, then B A, ...), so that a
    machine whose speed drifts (other load, clocks) slows both alike; each round gives one
    ratio, and the median ratio is the speed-up that drift does not bias. No peak memory:
    it would be the larger call's."""
    for _ in range(warmup):
        first()
        second()
    synchronize(device)
    times: tuple[list[float], list[float]] = ([], [])
    for round_index in range(iters):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            (first, second)[which]()
            synchronize(device)
            times[which].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(*times)]
    return PairedTiming(Timing(statistics.median(times[0]), times[0]), Timing(statistics.median(times[1]), times[1]),
                        statistics.median(ratios), ratios)


def paired_efficiency(ratios: list[float], gmacs_ratio: float) -> dict[str, float]:
    """Per-round time ratios (plain / reduced) -> speed-up (their median) and efficiency
    (speed-up / ``gmacs_ratio``), each with ``_low`` / ``_high``, the median's order-statistic
    interval, and ``interval_coverage``."""
    interval = median_interval(ratios)
    return {"speedup": interval.median, "speedup_low": interval.low, "speedup_high": interval.high,
            "efficiency": interval.median / gmacs_ratio, "efficiency_low": interval.low / gmacs_ratio,
            "efficiency_high": interval.high / gmacs_ratio, "interval_coverage": interval.coverage}


def compile_model(model: nn.Module, fullgraph: bool = False) -> nn.Module:
    """``torch.compile`` with default settings (the first calls compile: warm up)."""
    return torch.compile(model, fullgraph=fullgraph)


def graph_breaks(model: nn.Module, video: Tensor) -> GraphReport:
    """How many graphs dynamo splits ``model(video)`` into, and why (eval, no grad)."""
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(video)
    reasons = sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})
    torch._dynamo.reset()
    return GraphReport(explained.graph_count, explained.graph_break_count, reasons)
