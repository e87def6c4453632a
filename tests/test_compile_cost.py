"""tools/compile_cost.py: the kernel files it counts, and one setting compiled and checked."""
from __future__ import annotations

from pathlib import Path

from tests.tool_modules import load_tool


def test_kernel_files_are_counted_by_suffix_in_every_subfolder(tmp_path: Path) -> None:
    tool = load_tool("compile_cost")
    (tmp_path / "ab").mkdir()
    for name in ("ab/k1.cpp", "ab/k2.cpp", "k3.cpp", "ab/wrapper.py", "ab/k1.so", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert tool.count_kernel_files(tmp_path) == {".cpp": 3, ".py": 1}


def test_one_setting_compiles_to_one_graph_equal_to_eager() -> None:
    tool = load_tool("compile_cost")
    args = tool.build_parser().parse_args(["--model", "timesformer_test", "--keep", "0.5"])
    row = tool.measure_one("topk", args)
    assert row["setting"] == "topk"
    assert row["graphs"] == 1
    assert row["max_abs_diff"] < 1e-5
    assert row["first_call_s"] > 0


def test_a_training_step_compiles_to_the_eager_loss_and_gradients() -> None:
    tool = load_tool("compile_cost")
    args = tool.build_parser().parse_args(["--model", "timesformer_test", "--keep", "0.5", "--train"])
    row = tool.measure_one("topk", args)
    assert row["graphs"] == 1
    assert row["max_abs_diff"] < 1e-5
    assert row["first_call_s"] > 0
