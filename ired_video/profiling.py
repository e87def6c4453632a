"""Where a forward's time goes: ``torch.profiler`` time per operator, grouped by kind.

``profile_call(call, device, calls)`` runs ``call`` under the profiler and returns an
``OpProfile``: per-call self time of every operator (the kernels it launched on CUDA, its
own CPU time on the CPU), how many kernels (CUDA) or leaf operators (CPU) a call runs,
the host time spent in operators, and the time inside reducer calls. ``category`` sorts an
operator name into one of ``CATEGORIES`` so that a reducer's lost efficiency can be read
as "which kind of work did not shrink with the MACs". Design notes: docs/design.md,
"ired_video.profiling".
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from ired_video.reducers.base import Reducer
from ired_video.speed import synchronize

REDUCER_RANGE = "ired_video.reducer"

# (category, substrings of an aten operator's name); the first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")),
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "aten::linear", "conv")),
    ("optimizer", ("_foreach", "adam")),
    ("token indexing", ("sort", "topk", "gather", "index", "scatter", "cumsum", "nonzero", "masked", "where",
                        "cdist", "max", "argmax", "min", "arange", "unique", "searchsorted", "bincount")),
    ("copy and layout", ("copy_", "_to_copy", "contiguous", "clone", "aten::cat", "stack", "fill_", "zero_",
                         "empty", "expand", "repeat", "pad")),
    ("norm and element-wise", ("norm", "gelu", "softmax", "add", "mul", "div", "sub", "exp", "log", "sum",
                               "mean", "neg", "rsqrt", "sqrt", "pow", "clamp", "dropout", "tanh", "sigmoid",
                               "erf", "threshold", "relu")),
)
OTHER = "other"


def category(op_name: str) -> str:
    """The kind of work an operator does, by its name (``OTHER`` when none matches)."""
    for name, patterns in CATEGORIES:
        if any(pattern in op_name for pattern in patterns):
            return name
    return OTHER


@dataclass
class OpProfile:
    """Per-call averages over ``calls`` profiled calls, in milliseconds.

    op_ms: self time by operator name (kernel time on CUDA, CPU time on the CPU);
    op_launches: kernels (CUDA) or leaf operators (CPU) by operator name; host_ms: CPU
    self time of every operator (what launching costs on CUDA); reducer_ms: time inside
    reducer calls (same clock as op_ms)."""

    device: str
    calls: int
    op_ms: dict[str, float]
    op_launches: dict[str, float]
    host_ms: float
    reducer_ms: float

    @property
    def busy_ms(self) -> float:
        """Time the device spent in operators per call."""
        return sum(self.op_ms.values())

    @property
    def launches(self) -> float:
        """Kernels (CUDA) or leaf operators (CPU) per call."""
        return sum(self.op_launches.values())

    def by_category(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for name, ms in self.op_ms.items():
            totals[category(name)] += ms
        return {name: totals.get(name, 0.0) for name, _ in CATEGORIES} | {OTHER: totals.get(OTHER, 0.0)}

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "calls": self.calls, "busy_ms": self.busy_ms, "host_ms": self.host_ms,
                "launches": self.launches, "reducer_ms": self.reducer_ms, "by_category_ms": self.by_category(),
                "op_ms": self.op_ms, "op_launches": self.op_launches}


@contextlib.contextmanager
def around_reducer_calls(around: Callable[[], ContextManager[Any]]) -> Iterator[None]:
    """While active, every ``Reducer`` call runs inside a fresh ``around()`` context."""
    original = Reducer.__call__

    def wrapped(reducer: Reducer, state: Any, maps: Any = None) -> Any:
        with around():
            return original(reducer, state, maps)

    Reducer.__call__ = wrapped  # type: ignore[method-assign]
    try:
        yield
    finally:
        Reducer.__call__ = original  # type: ignore[method-assign]


def profile_call(call: Callable[[], None], device: torch.device, calls: int = 3) -> OpProfile:
    """Run ``call`` ``calls`` times under ``torch.profiler`` (warm it up first) and average."""
    if calls < 1:
        raise ValueError(f"calls={calls}: need at least one profiled call")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with around_reducer_calls(lambda: record_function(REDUCER_RANGE)), profile(activities=activities) as prof:
        for _ in range(calls):
            call()
        synchronize(device)
    totals = tally_events([event for event in prof.events() if event.device_type == DeviceType.CPU], cuda)
    scale = 1e-3 / calls  # microseconds over all calls -> milliseconds per call
    return OpProfile(device=str(device), calls=calls,
                     op_ms={name: us * scale for name, us in sorted(totals.op_us.items(), key=lambda kv: -kv[1])},
                     op_launches={name: n / calls for name, n in totals.op_launches.items()},
                     host_ms=totals.host_us * scale, reducer_ms=totals.reducer_us * scale)


@dataclass
class Totals:
    """Sums over profiled calls, in microseconds: time and launches by aten operator, the
    host time in operators, and the time inside reducer ranges."""

    op_us: dict[str, float]
    op_launches: dict[str, float]
    host_us: float
    reducer_us: float


def tally_events(events: list[Any], cuda: bool) -> Totals:
    """Add up host-side profiler events (``name``, ``cpu_parent``, ``cpu_children``,
    ``kernels``, CPU times). On CUDA a kernel counts for the nearest aten operator at or
    above the event it is linked to (the operator itself, or a runtime call under it), and
    for the reducer range around it; on the CPU an operator's self time is its work."""
    op_us: dict[str, float] = defaultdict(float)
    op_launches: dict[str, float] = defaultdict(float)
    host_us = reducer_us = 0.0
    for event in events:
        if event.name.startswith("aten::"):
            host_us += event.self_cpu_time_total
            if not cuda:
                op_us[event.name] += event.self_cpu_time_total
                op_launches[event.name] += not any(child.name.startswith("aten::") for child in event.cpu_children)
        if not cuda and event.name == REDUCER_RANGE:
            reducer_us += event.cpu_time_total
        if cuda and event.kernels:
            kernel_us = sum(kernel.duration for kernel in event.kernels)
            owner = _nearest(event, lambda e: e.name.startswith("aten::"))
            name = owner.name if owner is not None else event.name
            op_us[name] += kernel_us
            op_launches[name] += len(event.kernels)
            if _nearest(event, lambda e: e.name == REDUCER_RANGE) is not None:
                reducer_us += kernel_us
    busy = {name for name in op_us if op_us[name] > 0 or op_launches[name] > 0}  # not views and the like
    return Totals({name: op_us[name] for name in busy}, {name: op_launches[name] for name in busy},
                  host_us, reducer_us)


def _nearest(event: Any, wanted: Callable[[Any], bool]) -> Optional[Any]:
    """``event`` or its nearest host-side ancestor for which ``wanted`` holds, else None."""
    while event is not None and not wanted(event):
        event = event.cpu_parent
    return event


def excess_ops(plain: OpProfile, reduced: OpProfile, gmacs_ratio: float, top: int = 8,
               ) -> list[tuple[str, float, Optional[float]]]:
    """The operators whose time shrank least with the MACs: (name, reduced ms minus plain ms
    divided by the GMACs ratio, plain ms or None where the plain model has no such op),
    largest first."""
    names = set(plain.op_ms) | set(reduced.op_ms)
    rows = [(name, reduced.op_ms.get(name, 0.0) - plain.op_ms.get(name, 0.0) / gmacs_ratio, plain.op_ms.get(name))
            for name in names]
    return sorted(rows, key=lambda row: -row[1])[:top]
