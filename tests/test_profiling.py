"""ired_video.profiling and tools/profile_reducers.py: operator categories, the profile of a
call, the time inside reducer calls and the excess ranking."""
import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from ired_video import speed
from ired_video.build import apply_reducer, create_model
from ired_video.profiling import (
    OTHER,
    REDUCER_RANGE,
    OpProfile,
    around_reducer_calls,
    category,
    excess_ops,
    profile_call,
    tally_events,
)
from ired_video.reducers.base import Reducer
from tests.tool_modules import load_tool

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, expected", [
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::_efficient_attention_backward", "attention"),
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::mkldnn_convolution", "matmul"),
    ("aten::_foreach_addcdiv_", "optimizer"),
    ("aten::index_select", "token indexing"), ("aten::sort", "token indexing"),
    ("aten::scatter_add_", "token indexing"), ("aten::gather", "token indexing"),
    ("aten::copy_", "copy and layout"), ("aten::cat", "copy and layout"),
    ("aten::native_layer_norm", "norm and element-wise"), ("aten::gelu_backward", "norm and element-wise"),
    ("aten::add", "norm and element-wise"),
    ("aten::view", OTHER),
])
def test_operators_fall_into_their_category(name, expected):
    assert category(name) == expected


def _clip(model):
    cfg = model.config
    return torch.randn(1, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size,
                       generator=torch.Generator().manual_seed(0))


def test_profile_counts_the_reducers_operators_and_time_inside_them():
    torch.manual_seed(0)
    plain = create_model("timesformer_test").eval()
    reduced = apply_reducer(create_model("timesformer_test").eval(), "topk", keep=0.5)
    video = _clip(plain)
    base = profile_call(speed.inference_call(plain, video), CPU, calls=2)
    topk = profile_call(speed.inference_call(reduced, video), CPU, calls=2)
    assert base.calls == 2 and base.busy_ms > 0 and base.launches > 0
    assert base.reducer_ms == 0 and topk.reducer_ms > 0
    assert topk.reducer_ms < topk.busy_ms
    assert base.op_ms.get("aten::topk", 0) == 0 and topk.op_ms["aten::topk"] > 0
    assert sum(topk.by_category().values()) == pytest.approx(topk.busy_ms)
    assert json.loads(json.dumps(topk.to_dict()))["by_category_ms"]["token indexing"] > 0


def test_reducer_calls_are_restored_after_an_error():
    original = Reducer.__call__
    with pytest.raises(RuntimeError), around_reducer_calls(contextlib.nullcontext):
        assert Reducer.__call__ is not original
        raise RuntimeError("boom")
    assert Reducer.__call__ is original


def _profile(op_ms):
    return OpProfile("cpu", 1, op_ms, {name: 1.0 for name in op_ms}, 0.0, 0.0)


def test_excess_is_reduced_time_minus_plain_time_over_the_gmacs_ratio():
    plain = _profile({"aten::addmm": 10.0, "aten::gelu": 2.0})
    reduced = _profile({"aten::addmm": 5.0, "aten::gelu": 2.0, "aten::sort": 0.5})
    rows = excess_ops(plain, reduced, gmacs_ratio=2.0)
    assert rows == [("aten::gelu", 1.0, 2.0), ("aten::sort", 0.5, None), ("aten::addmm", 0.0, 10.0)]


def test_tool_writes_tables_and_every_operator(tmp_path, capsys):
    tool = load_tool("profile_reducers")
    out = tmp_path / "profile.json"
    assert tool.main(["--model", "timesformer_test", "--reducers", "topk", "tome", "--batch", "1", "--warmup", "0",
                      "--iters", "1", "--calls", "1", "--device", "cpu", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| plain | 1.00 |" in text and "| topk 0.5 |" in text and "| tome r=" in text
    results = json.loads(out.read_text())["results"]
    assert [r["reducer"] for r in results] == ["plain", "topk", "tome", "plain (end)"]
    assert results[2]["tome_r"] >= 1 and results[1]["gmacs_ratio"] > 1
    assert results[1]["runs"]["inference"]["profile"]["op_ms"]["aten::topk"] > 0


def _event(name, parent=None, kernels=(), self_cpu=1.0):
    event = SimpleNamespace(name=name, cpu_parent=parent, cpu_children=[], self_cpu_time_total=self_cpu,
                            cpu_time_total=self_cpu, kernels=[SimpleNamespace(duration=d) for d in kernels])
    if parent is not None:
        parent.cpu_children.append(event)
    return event


def test_cuda_kernels_count_for_the_nearest_aten_operator_and_the_reducer_range_around_them():
    linear = _event("aten::linear")
    addmm = _event("aten::addmm", linear, kernels=[30.0])  # kernel linked to the operator itself
    reducer = _event(REDUCER_RANGE)
    sort = _event("aten::sort", reducer)
    launch = _event("cudaLaunchKernel", sort, kernels=[4.0, 1.0])  # linked to the runtime call under it
    orphan = _event("cudaMemsetAsync", kernels=[2.0])  # no operator above it
    totals = tally_events([linear, addmm, reducer, sort, launch, orphan], cuda=True)
    assert totals.op_us == {"aten::addmm": 30.0, "aten::sort": 5.0, "cudaMemsetAsync": 2.0}
    assert totals.op_launches == {"aten::addmm": 1, "aten::sort": 2, "cudaMemsetAsync": 1}
    assert totals.reducer_us == 5.0
    assert totals.host_us == 3.0  # the aten operators' own CPU time


def test_on_the_cpu_every_operators_self_time_counts_and_leaves_are_launches():
    linear = _event("aten::linear", self_cpu=2.0)
    addmm = _event("aten::addmm", linear, self_cpu=50.0)
    reducer = _event(REDUCER_RANGE, self_cpu=9.0)
    _event("aten::sort", reducer, self_cpu=4.0)
    totals = tally_events([linear, addmm, reducer, reducer.cpu_children[0]], cuda=False)
    assert totals.op_us == {"aten::linear": 2.0, "aten::addmm": 50.0, "aten::sort": 4.0}
    assert totals.op_launches == {"aten::linear": 0, "aten::addmm": 1, "aten::sort": 1}
    assert totals.reducer_us == 9.0
