"""``ired-video bench``: every reducer x keep row, positive speeds, GMACs that fall with keep,
training-step rows, ToMe's r matched by the model's own billing, clear refusals."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from ired_video import create_model, speed
from ired_video.budget import reduced_gmacs, tome_r_for_gmacs
from ired_video.commands import bench

KEEPS = (0.9, 0.7, 0.5)
LABELS = [spec.label for spec in bench.SPECS]
# Reducers that keep exactly ceil(keep * K) tokens: fewer kept, fewer GMACs.
DROPPING = ("random", "topk", "topk+fuse", "attention_received", "interaction", "iared2")
EAGER = "inference, eager"


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
    assert result["setup"]["measurements"] == [EAGER]
    for row in rows:
        assert row["error"] is None, row
        assert row["model"] == "timesformer_micro"
        assert set(row["runs"]) == {EAGER}
        assert set(row["runs"][EAGER]) == {"1", "2"}
        for cell in row["runs"][EAGER].values():
            assert math.isfinite(cell["clips_per_s"]) and cell["clips_per_s"] > 0
            assert cell["peak_mib"] is None  # CPU: no CUDA memory to report
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
            cell, base = row["runs"][EAGER][key], plain["runs"][EAGER][key]
            speedup = cell["clips_per_s"] / base["clips_per_s"]
            assert cell["speedup"] == pytest.approx(speedup)
            assert cell["efficiency"] == pytest.approx(speedup / row["gmacs_ratio"])


def test_tome_r_matches_topk_gmacs(quick_run):
    rows = quick_run[1]["rows"]
    for keep in KEEPS:
        tome = next(r for r in rows if r["reducer"] == "tome" and r["keep"] == keep)
        topk = next(r for r in rows if r["reducer"] == "topk" and r["keep"] == keep)
        assert 0 < tome["tome_r"] <= 64 // 2  # micro: 8 x 8 patches per frame
        assert tome["tome_target_gmacs"] == pytest.approx(topk["gmacs"])
        assert tome["gmacs"] == pytest.approx(topk["gmacs"], rel=0.05)


def test_ablations_run_only_when_asked_and_switch_off_proportional_attention(quick_run, monkeypatch, tmp_path):
    assert not {s.label for s in bench.ABLATION_SPECS} & {r["reducer"] for r in quick_run[1]["rows"]}
    applied = []
    real = bench.apply_reducer

    def recorded(model, name, **kwargs):
        applied.append((name, kwargs))
        return real(model, name, **kwargs)

    monkeypatch.setattr(bench, "apply_reducer", recorded)
    out = tmp_path / "ablation.json"
    assert bench.main(["--quick", "--threads", "1", "--no-progress", "--reducers", "tome-noprop", "tome", "bat-noprop",
                       "--keeps", "0.5", "--batches", "1", "--output", str(out)]) == 0
    rows = {r["reducer"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["plain", "tome", "tome-noprop", "bat-noprop", "plain (end)"]  # ablations last
    assert all(r["error"] is None for r in rows.values())
    assert rows["tome-noprop"]["tome_r"] == rows["tome"]["tome_r"]  # the same merges, only the logit bias differs
    assert rows["tome-noprop"]["gmacs"] == pytest.approx(rows["tome"]["gmacs"])
    assert [(name, kw.get("prop_attn")) for name, kw in applied if name != "none"] == [
        ("tome", None), ("tome", False), ("bat", False)]


def test_markdown_table_lists_every_row(quick_run):
    rows = quick_run[1]["rows"]
    table = bench.markdown_table(rows, [1, 2], EAGER).splitlines()
    assert table[0].startswith("| model | reducer | mode | keep | GMACs/view | GMACs ratio | clips/s @1 | clips/s @2")
    assert "efficiency @2" in table[0] and "peak MiB" not in table[0] and "graphs" not in table[0]
    assert len(table) == 2 + len(rows)


def test_training_steps_are_timed_and_leave_the_model_unchanged(tmp_path):
    out = tmp_path / "train.json"
    assert bench.main(["--quick", "--threads", "1", "--no-progress", "--reducers", "topk", "--keeps", "0.5",
                       "--batches", "2", "--train", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["measurements"] == [EAGER, "training step, eager"]
    for row in result["rows"]:
        assert row["error"] is None, row
        assert row["runs"]["training step, eager"]["2"]["clips_per_s"] > 0
    # the drift row is timed on the same weights as the first: training steps ran on copies
    first, last = result["rows"][0], result["rows"][-1]
    assert first["gmacs"] == last["gmacs"]


def test_no_inference_times_training_steps_only(tmp_path, capsys):
    out = tmp_path / "train_only.json"
    assert bench.main(["--quick", "--threads", "1", "--no-progress", "--reducers", "topk", "--keeps", "0.5",
                       "--batches", "2", "--train", "--no-inference", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["measurements"] == ["training step, eager"]
    topk = result["rows"][1]
    assert topk["error"] is None and list(topk["runs"]) == ["training step, eager"]
    assert topk["gmacs_ratio"] > 1 and topk["runs"]["training step, eager"]["2"]["speedup"] > 0
    printed = capsys.readouterr().out
    assert "### training step, eager" in printed and "### inference" not in printed


def test_timing_a_training_step_updates_the_weights_it_is_given():
    torch.manual_seed(0)
    model = create_model("timesformer_test")
    before = model.head.weight.detach().clone()
    video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 1])
    timing = bench.speed.time_training_step(model, video, labels, torch.optim.SGD(model.parameters(), lr=0.1),
                                            warmup=0, iters=2)
    assert len(timing.times) == 2 and timing.seconds > 0
    assert not torch.equal(before, model.head.weight)  # a real backward and step ran


def test_tome_r_for_gmacs_is_the_closest_r():
    model = create_model("timesformer_test").eval()
    measured = {r: reduced_gmacs(model, "tome", r=r) for r in range(0, 9)}  # 16 patches per frame
    assert measured[0] == pytest.approx(model.static_gmacs(), rel=1e-6)
    for target in (measured[3], (measured[5] + measured[6]) / 2 + 1e-9, measured[8] * 0.5, measured[0] * 2):
        r, gmacs = tome_r_for_gmacs(model, target)
        best = min(measured, key=lambda k: (abs(measured[k] - target), k))
        assert r == best and gmacs == pytest.approx(measured[best])
    assert len(model.reducers) == 0  # the model itself was not changed


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
    assert rows["bat"]["error"] == "RuntimeError: boom" and not rows["bat"]["runs"]
    assert rows["random"]["error"] is None and rows["random"]["runs"][EAGER]["1"]["clips_per_s"] > 0
    printed = capsys.readouterr().out
    assert "ERROR RuntimeError: boom" in printed and "1 of 4 rows had errors" in printed


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "no CUDA GPU is available here"),
    (["--dtype", "fp16", "--device", "cpu"], "fp16 runs on a GPU only"),
    (["--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (["--keeps", "1.5"], "not a fraction"),
    (["--no-inference"], "--no-inference leaves nothing to time without --train"),
    (["--output", "{tmp}/a_file/x.json"], "--output {tmp}/a_file/x.json: cannot write in {tmp}/a_file"),
])
def test_bad_settings_are_refused_before_any_work(argv, message, capsys, tmp_path):
    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "a_file").write_text("a file, not a folder")
    argv, message = [a.format(tmp=tmp_path) for a in argv], message.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--no-progress", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_paired_timing_alternates_and_takes_the_median_ratio(monkeypatch):
    """A machine that slows down steadily: timed alternately, the plain/reduced ratio stays
    near the true 2, where timing all plain calls first and then all reduced ones would not."""
    calls: list[str] = []
    now = [0.0]

    def make(name: str, cost: float):
        def call() -> None:
            calls.append(name)
            now[0] += cost * (1 + 0.25 * len(calls))  # every call runs slower than the one before
        return call

    monkeypatch.setattr(speed.time, "perf_counter", lambda: now[0])
    paired = speed.time_paired(make("plain", 4.0), make("reduced", 2.0), torch.device("cpu"), warmup=1, iters=4)
    assert calls == ["plain", "reduced"] + ["plain", "reduced", "reduced", "plain"] * 2
    assert paired.ratio == statistics.median(paired.ratios) and len(paired.ratios) == 4
    assert abs(paired.ratio - 2) < 0.25
    sequential = statistics.median(paired.first.times[:2]) / statistics.median(paired.second.times[2:])
    assert abs(sequential - 2) > 0.25  # what the drift does to unpaired timing


def test_paired_bench_rows_take_their_speedup_from_the_alternating_rounds(tmp_path):
    out = tmp_path / "paired.json"
    assert bench.main(["--quick", "--threads", "1", "--no-progress", "--paired", "--reducers", "topk",
                       "--keeps", "0.5", "--batches", "1", "--iters", "3", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    reduced = next(r for r in rows if r["reducer"] == "topk")["runs"][EAGER]["1"]
    assert len(reduced["paired_ratios"]) == 3 and len(reduced["paired_plain_times"]) == 3
    assert reduced["speedup"] == pytest.approx(statistics.median(reduced["paired_ratios"]))
    assert "paired_speedup" not in rows[0]["runs"][EAGER]["1"]  # the plain row is timed alone
    # three rounds: the interval is their min-max, which holds the median 75% of the time
    gmacs_ratio = next(r for r in rows if r["reducer"] == "topk")["gmacs_ratio"]
    assert (reduced["speedup_low"], reduced["speedup_high"]) == (min(reduced["paired_ratios"]),
                                                                 max(reduced["paired_ratios"]))
    assert reduced["efficiency_low"] == pytest.approx(reduced["speedup_low"] / gmacs_ratio)
    assert reduced["interval_coverage"] == pytest.approx(0.75)


def test_paired_efficiency_shows_its_interval_in_the_table():
    cell = {"clips_per_s": 2.0, "speedup": 1.9, "efficiency": 0.97, "efficiency_low": 0.941, "efficiency_high": 0.992}
    rows = [{"model": "m", "reducer": "topk", "mode": "tube", "keep": 0.5, "gmacs": 25.7, "gmacs_ratio": 1.96,
             "runs": {EAGER: {"1": cell}}, "note": "", "error": ""}]
    assert "| 0.97 [0.94-0.99] |" in bench.markdown_table(rows, [1], EAGER)
    del cell["efficiency_low"]  # timed alone: no interval
    assert "| 0.97 |" in bench.markdown_table(rows, [1], EAGER)


def test_drift_warning_says_whether_the_speedups_stand():
    def row(reducer: str, cell: dict) -> dict:
        return {"model": "m", "reducer": reducer, "runs": {EAGER: {"1": cell}}}

    drifted = row("plain (end)", {"speedup": 1.5})
    unpaired = bench.drift_warnings([row("topk", {"speedup": 2.0}), drifted])
    paired = bench.drift_warnings([row("topk", {"speedup": 2.0, "paired_speedup": 2.0}), drifted])
    assert len(unpaired) == 1 and "speed-ups are unreliable" in unpaired[0]
    assert len(paired) == 1 and "paired per round and stand" in paired[0]
    assert bench.drift_warnings([row("plain (end)", {"speedup": 1.1})]) == []
