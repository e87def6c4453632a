"""``ired-video bench``: every reducer x keep row, positive speeds, GMACs that fall with keep."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ired_video import create_model
from ired_video.commands import bench
from ired_video.reducers import apply_reducer

KEEPS = (0.9, 0.7, 0.5)
LABELS = [spec.label for spec in bench.SPECS]
# Reducers that keep exactly ceil(keep * K) tokens: fewer kept, fewer GMACs.
DROPPING = ("random", "topk", "topk+fuse", "attention_received", "interaction", "iared2")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    # One thread: the micro model is too small to gain from more, and it keeps the test
    # steady on a loaded machine.
    code = bench.main(["--quick", "--threads", "1", "--no-progress", "--output", str(out)])
    return code, json.loads(out.read_text())


def test_quick_run_has_every_reducer_and_keep(quick_run):
    code, result = quick_run
    assert code == 0
    rows = result["rows"]
    assert rows[0]["reducer"] == "plain" and rows[-1]["reducer"] == "plain (end)"  # drift check last
    got = {(r["reducer"], r["keep"]) for r in rows[1:-1]}
    assert got == {(label, keep) for label in LABELS for keep in KEEPS}
    assert len(rows) == 2 + len(LABELS) * len(KEEPS)
    assert result["setup"]["batches"] == [1, 2] and result["setup"]["iters"] == 1
    for row in rows:
        assert row["error"] is None, row
        assert row["model"] == "timesformer_micro"
        assert set(row["clips_per_s"]) == {"1", "2"}
        for speed in row["clips_per_s"].values():
            assert math.isfinite(speed) and speed > 0
        assert row["gmacs"] > 0


def test_gmacs_fall_with_keep(quick_run):
    rows = quick_run[1]["rows"]
    plain = next(r for r in rows if r["reducer"] == "plain")
    assert plain["gmacs"] == pytest.approx(create_model("timesformer_micro").static_gmacs(), rel=1e-5)
    for label in DROPPING:
        by_keep = {r["keep"]: r["gmacs"] for r in rows if r["reducer"] == label}
        series = [plain["gmacs"]] + [by_keep[k] for k in KEEPS]  # keep 1, 0.9, 0.7, 0.5
        assert all(a > b for a, b in zip(series, series[1:])), (label, series)
    assert rows[-1]["gmacs"] == plain["gmacs"]
    for row in rows[1:-1]:
        assert row["gmacs"] < plain["gmacs"], row  # BAT and ToMe too, whatever their counts


def test_ratios_speedups_and_efficiency_agree(quick_run):
    rows = quick_run[1]["rows"]
    plain = next(r for r in rows if r["reducer"] == "plain")
    for row in rows:
        assert row["gmacs_ratio"] == pytest.approx(plain["gmacs"] / row["gmacs"])
        for key in ("1", "2"):
            speedup = row["clips_per_s"][key] / plain["clips_per_s"][key]
            assert row["speedup"][key] == pytest.approx(speedup)
            assert row["efficiency"][key] == pytest.approx(speedup / row["gmacs_ratio"])


def test_tome_r_matches_topk_gmacs(quick_run):
    rows = quick_run[1]["rows"]
    half = 64 // 2  # micro: 8 x 8 patches per frame
    for keep in KEEPS:
        tome = next(r for r in rows if r["reducer"] == "tome" and r["keep"] == keep)
        topk = next(r for r in rows if r["reducer"] == "topk" and r["keep"] == keep)
        assert 0 < tome["tome_r"] <= half
        assert tome["tome_target_gmacs"] == pytest.approx(topk["gmacs"])
        assert tome["gmacs"] == pytest.approx(tome["tome_gmacs_analytic"], rel=1e-6)  # the analytic model is exact
        assert tome["gmacs"] == pytest.approx(topk["gmacs"], rel=0.05)


def test_markdown_table_lists_every_row(quick_run, capsys):
    rows = quick_run[1]["rows"]
    table = bench.markdown_table(rows, [1, 2]).splitlines()
    assert table[0].startswith("| model | reducer | mode | keep | GMACs/view | GMACs ratio | clips/s @1 | clips/s @2")
    assert "efficiency @2" in table[0]
    assert len(table) == 2 + len(rows)


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time", "space_only"])
@pytest.mark.parametrize("mode", ["tube", "frame"])
def test_tome_analytic_gmacs_equal_measured(attention, mode):
    model = create_model("timesformer_test", attention_type=attention).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    for r in (0, 3, 8):  # 16 patches per frame: 8 caps at K // 2
        apply_reducer(model, "tome", r=r, mode=mode)
        with torch.inference_mode():
            measured = float(model(video, return_info=True)[1].gmacs[0])
        assert bench.tome_gmacs_analytic(model, r, 4, mode) == pytest.approx(measured, rel=1e-6)  # info.gmacs is float32


def test_a_failing_reducer_is_reported_and_the_rest_runs(tmp_path, monkeypatch, capsys):
    real = bench.apply_reducer

    def flaky(model, name, **kwargs):
        if name == "bat":
            raise RuntimeError("boom")
        return real(model, name, **kwargs)

    monkeypatch.setattr(bench, "apply_reducer", flaky)
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--threads", "1", "--no-progress", "--reducers", "random", "bat",
                       "--keeps", "0.5", "--batches", "1", "--output", str(out)]) == 0
    rows = {r["reducer"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["bat"]["error"] == "RuntimeError: boom" and not rows["bat"]["clips_per_s"]
    assert rows["random"]["error"] is None and rows["random"]["clips_per_s"]["1"] > 0
    printed = capsys.readouterr().out
    assert "ERROR RuntimeError: boom" in printed and "1 of 4 rows had errors" in printed
