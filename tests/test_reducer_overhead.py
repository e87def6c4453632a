"""tools/reducer_overhead.py: the tome-schedule diagnostic has ToMe's token counts and bill
and does none of ToMe's work; every row's efficiency comes with the interval of its median."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ired_video import create_model
from tests.tool_modules import load_tool


def test_tome_schedule_keeps_tome_s_counts_and_the_first_slots() -> None:
    tool = load_tool("reducer_overhead")
    torch.manual_seed(0)
    plain = create_model("timesformer_test").eval()
    video = torch.randn(2, 3, 4, 32, 32)
    tome, schedule = tool.build_setting(plain, "tome:r=3"), tool.build_setting(plain, "tome-schedule:r=3")
    assert len(plain.reducers) == 0  # the copies were changed, not the plain model
    assert all(r.needs == {"keys"} for r in tool.build_setting(plain, "tome-schedule:r=3,keys=true").reducers.values())
    assert all(not r.needs for r in schedule.reducers.values())
    assert [type(r).__name__ for r in schedule.reducers.values()] == ["KeepFirstSlots"] * len(tome.reducers)
    with torch.inference_mode():
        _, tome_info = tome(video, return_info=True)
        _, schedule_info = schedule(video, return_info=True)
    assert torch.equal(schedule_info.tokens, tome_info.tokens)
    assert torch.allclose(schedule_info.gmacs, tome_info.gmacs)
    assert tome_info.tokens[0, -1] < tome_info.tokens[0, 0]  # tokens did go
    kept = schedule_info.state.pos  # (B, F, K'): the first K' patches of every frame, in order
    grid = schedule_info.state.num_patches
    frames = torch.arange(kept.shape[1])[:, None] * grid
    assert torch.equal(kept, (frames + torch.arange(kept.shape[2])).expand_as(kept))


def test_settings_parse_numbers_booleans_and_words() -> None:
    tool = load_tool("reducer_overhead")
    assert tool.parse_setting("tome:r=16,mode=frame,prop_attn=false") == (
        "tome", {"r": 16, "mode": "frame", "prop_attn": False})
    assert tool.parse_setting("topk:keep=0.5,fuse=True") == ("topk", {"keep": 0.5, "fuse": True})
    assert tool.parse_setting("random") == ("random", {})


def test_rows_carry_the_median_interval_of_their_rounds(tmp_path: Path) -> None:
    tool = load_tool("reducer_overhead")
    out = tmp_path / "overhead.json"
    tool.main(["--model", "timesformer_test", "--setting", "topk:keep=0.5", "--rounds", "6", "--output", str(out)])
    row = json.loads(out.read_text())["rows"][1]
    ratios = sorted(plain / own for plain, own in zip(json.loads(out.read_text())["rows"][0]["times_s"],
                                                        row["times_s"]))
    assert row["setting"] == "topk:keep=0.5" and row["interval_coverage"] == pytest.approx(1 - 2 / 2 ** 6)
    assert row["efficiency_low"] == pytest.approx(ratios[0] / row["gmacs_ratio"])  # 6 rounds: min-max, 96.9%
    assert row["efficiency_high"] == pytest.approx(ratios[-1] / row["gmacs_ratio"])
    assert row["efficiency_low"] <= row["efficiency"] <= row["efficiency_high"]


def test_a_verdict_needs_every_run_on_one_side_of_the_goal() -> None:
    tool = load_tool("reducer_overhead")

    def run(low: float, high: float) -> dict:
        return {"efficiency_low": low, "efficiency_high": high}

    assert tool.verdict([run(0.95, 0.99), run(0.96, 0.98)], 0.95) == "meets"  # the goal itself counts
    assert tool.verdict([run(0.90, 0.94), run(0.92, 0.949)], 0.95) == "misses"
    assert tool.verdict([run(0.96, 0.99), run(0.94, 0.97)], 0.95) == "not shown either way"  # one run straddles
    assert tool.verdict([run(0.90, 0.94), run(0.96, 0.99)], 0.95) == "not shown either way"  # the runs disagree


def test_several_processes_give_one_run_each_and_a_verdict(tmp_path: Path) -> None:
    tool = load_tool("reducer_overhead")
    out = tmp_path / "runs.json"
    tool.main(["--model", "timesformer_test", "--setting", "topk:keep=0.5", "--rounds", "6", "--processes", "2",
               "--goal", "0.01", "--output", str(out)])
    summary = json.loads(out.read_text())
    assert summary["processes"] == 2 and len(summary["runs"]) == 2
    assert [len(run["rows"]) for run in summary["runs"]] == [2, 2]
    assert summary["runs"][0]["rows"][1]["times_s"] != summary["runs"][1]["rows"][1]["times_s"]  # two measurements
    assert summary["verdicts"] == {"plain": "", "topk:keep=0.5": "meets"}  # any real speed is above 0.01


def test_compiled_runs_time_every_model_compiled_and_leave_the_reducer_clock_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = load_tool("reducer_overhead")
    compiled: list[torch.nn.Module] = []

    def compile_cheaply(model: torch.nn.Module) -> torch.nn.Module:  # dynamo's trace without inductor's C++ build
        compiled.append(model)
        return torch.compile(model, backend="eager")

    monkeypatch.setattr(tool, "compile_model", compile_cheaply)
    out = tmp_path / "compiled.json"
    tool.main(["--model", "timesformer_test", "--setting", "tome:r=3", "--rounds", "2", "--compile", "--warmup", "2",
               "--output", str(out)])
    summary = json.loads(out.read_text())
    assert summary["compiled"] and summary["warmup"] == 2
    assert len(compiled) == 2 and len(compiled[1].reducers) > 0  # the plain model and the ToMe copy
    assert [row["inside_reducers_ms"] for row in summary["rows"]] == [None, None]
    assert all(len(row["times_s"]) == 2 for row in summary["rows"])


def test_compiled_runs_need_warm_up_calls() -> None:
    tool = load_tool("reducer_overhead")
    with pytest.raises(SystemExit):
        tool.main(["--model", "timesformer_test", "--setting", "tome:r=3", "--compile", "--warmup", "1"])


def test_isolated_runs_give_each_setting_processes_of_its_own(tmp_path: Path) -> None:
    tool = load_tool("reducer_overhead")
    out = tmp_path / "isolated.json"
    tool.main(["--model", "timesformer_test", "--setting", "topk:keep=0.5", "--setting", "random:keep=0.5",
               "--rounds", "6", "--processes", "2", "--isolate", "--goal", "0.01", "--output", str(out)])
    summary = json.loads(out.read_text())
    assert summary["isolated"] and len(summary["runs"]) == 4  # two processes per setting
    assert [[row["setting"] for row in run["rows"]] for run in summary["runs"]] == (
        [["plain", "topk:keep=0.5"]] * 2 + [["plain", "random:keep=0.5"]] * 2)
    assert summary["verdicts"] == {"plain": "", "topk:keep=0.5": "meets", "random:keep=0.5": "meets"}
