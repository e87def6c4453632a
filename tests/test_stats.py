"""Bootstrap intervals over seeds and videos: coverage, width, pairing; the median's
order-statistic interval."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from ired_video.stats import accuracy_interval, difference_interval, median_interval
from tests.tool_modules import load_tool


def test_constant_scores_have_a_zero_width_interval():
    interval = accuracy_interval(np.ones((3, 50)))
    assert (interval.mean, interval.low, interval.high) == (1.0, 1.0, 1.0)
    assert interval.points() == "100.0 [100.0, 100.0]"


def test_interval_contains_the_mean_and_narrows_with_more_videos():
    rng = np.random.default_rng(0)
    small = accuracy_interval(rng.random((3, 100)) < 0.8)
    large = accuracy_interval(rng.random((3, 2000)) < 0.8)
    assert small.low < small.mean < small.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_binomial_width_is_close_to_the_normal_approximation():
    rng = np.random.default_rng(1)
    scores = (rng.random((1, 600)) < 0.9).astype(float)
    interval = accuracy_interval(scores, resamples=4000)
    p = scores.mean()
    half_width = 1.96 * np.sqrt(p * (1 - p) / 600)
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.15)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    videos = rng.random(600)
    steady = np.stack([videos < 0.85] * 3).astype(float)
    spread = np.stack([videos < p for p in (0.75, 0.85, 0.95)]).astype(float)  # seeds disagree
    assert steady.mean() == pytest.approx(spread.mean(), abs=0.02)
    width = lambda i: i.high - i.low  # noqa: E731
    assert width(accuracy_interval(spread)) > 1.5 * width(accuracy_interval(steady))


def test_coverage_of_the_true_accuracy_is_at_least_nominal():
    rng = np.random.default_rng(3)
    hits = 0
    trials = 200
    for trial in range(trials):
        scores = (rng.random((3, 300)) < 0.7).astype(float)
        interval = accuracy_interval(scores, resamples=500, seed=trial)
        hits += interval.low <= 0.7 <= interval.high
    # crossed seeds x videos: resampling both counts the per-(seed, video) noise twice, so
    # the interval is conservative (Owen's pigeonhole bootstrap): at least 95%, up to ~99%
    assert hits / trials >= 0.92


def test_paired_difference_is_tighter_than_unpaired_intervals():
    rng = np.random.default_rng(4)
    hard = rng.random((3, 600)) < 0.9  # videos both configurations get right or wrong together
    a = hard.astype(float)
    b = a.copy()
    flips = rng.random(b.shape) < 0.01  # b differs on about 1% of the videos
    b[flips] = 1 - b[flips]
    diff = difference_interval(a, b)
    assert diff.mean == pytest.approx(a.mean() - b.mean())
    assert diff.low <= diff.mean <= diff.high
    single = accuracy_interval(a)
    assert (diff.high - diff.low) < 0.5 * (single.high - single.low)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same"):
        difference_interval(np.ones((3, 10)), np.ones((2, 10)))
    with pytest.raises(ValueError, match="matrix"):
        accuracy_interval(np.ones((2, 2, 2)))
    assert accuracy_interval(np.array([1, 0, 1, 1])).mean == 0.75  # one seed as a vector


def _bench_demo():
    return load_tool("bench_demo")


def test_bench_demo_rows_carry_seed_and_video_intervals(tmp_path):
    bench_demo = _bench_demo()
    views = tmp_path / "test_views.jsonl"
    lines = [{"video_index": video, "label": label, "top_k": [{"index": predicted}]}
             for video, label, predicted in [(1, 0, 0), (0, 2, 1), (2, 1, 1), (2, 1, 0)]]
    views.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert bench_demo.per_video_correct(views).tolist() == [0.0, 1.0, 0.5]  # by video index; views averaged
    rng = np.random.default_rng(0)
    plain = (rng.random((3, 200)) < 0.9).astype(float)
    reduced = plain.copy()
    reduced[:, :10] = 0.0  # the reducer loses the first 10 videos in every seed
    reports = [{"top1": float(row.mean()), "gmacs_per_view": 0.2} for row in reduced]
    row = bench_demo.summarise("topk 0.5", True, reports, reduced, plain)
    assert row["top1"] == pytest.approx(reduced.mean()) and row["top1_low"] < row["top1"] < row["top1_high"]
    lost = -(plain[:, :10].mean() * 10 / 200)
    assert row["delta"] == pytest.approx(lost) and row["delta_high"] < 0  # the paired interval excludes 0
    assert row["seeds"] == 3 and row["videos"] == 200 and len(row["top1_per_seed"]) == 3


def test_bench_demo_reuses_only_a_report_of_the_same_checkpoint_split_and_reducer(tmp_path):
    """A rerun after a kill skips finished evaluations, never a stale one."""
    bench_demo = _bench_demo()
    checkpoint, out = tmp_path / "last.pth", tmp_path / "test.json"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "test_views.jsonl").write_text("")
    report = {"top1": 0.5, "checkpoint": str(checkpoint), "data": "test.csv", "reducer": None}
    out.write_text(json.dumps(report))
    assert bench_demo.earlier_report(checkpoint, "test.csv", out, None) == report
    assert bench_demo.earlier_report(checkpoint, "other.csv", out, None) is None
    assert bench_demo.earlier_report(checkpoint, "test.csv", out, "topk") is None
    other = tmp_path / "best.pth"
    other.write_bytes(b"other weights")
    os.utime(other, ns=(0, 0))
    assert bench_demo.earlier_report(other, "test.csv", out, None) is None
    newer = out.stat().st_mtime_ns + 10**9
    os.utime(checkpoint, ns=(newer, newer))  # retrained after the report was written
    assert bench_demo.earlier_report(checkpoint, "test.csv", out, None) is None
    os.utime(out, ns=(newer, newer))
    assert bench_demo.earlier_report(checkpoint, "test.csv", out, None) == report
    out.write_text(json.dumps(report)[:20])  # cut short while being written
    os.utime(out, ns=(newer, newer))
    assert bench_demo.earlier_report(checkpoint, "test.csv", out, None) is None


def test_bench_demo_epochs_zero_gives_training_free_rows_only(tmp_path, monkeypatch):
    bench_demo = _bench_demo()
    scores = np.array([1.0, 0.0, 1.0, 1.0])
    monkeypatch.setattr(bench_demo, "reducer_start", lambda plain, cfg, data, fit: (plain, cfg, None))
    monkeypatch.setattr(bench_demo, "evaluate_scores",
                        lambda checkpoint, test, out, reducer=None: ({"top1": 0.75, "gmacs_per_view": 0.2}, scores))

    def no_training(*args, **kwargs):
        raise AssertionError("--epochs 0 must not fine-tune")
    monkeypatch.setattr(bench_demo, "train_or_resume", no_training)
    args = argparse.Namespace(epochs=0, batch_size=16, lr=5e-4, distill=0.0, seeds=[0, 1], data=tmp_path,
                              out=tmp_path)
    rows = bench_demo.reducer_rows(args, "topk", 0.5, [tmp_path / "a.pth", tmp_path / "b.pth"], 4, "test.csv",
                                   np.stack([scores, scores]), None)
    assert [row["name"] for row in rows] == ["topk 0.5 (no training)"]
    assert rows[0]["seeds"] == 2 and rows[0]["trained"] is False and rows[0]["delta"] == 0.0
    args.epochs = 1
    with pytest.raises(AssertionError, match="must not fine-tune"):
        bench_demo.reducer_rows(args, "topk", 0.5, [tmp_path / "a.pth"], 4, "test.csv", scores[None], None)


def test_bench_demo_control_row_trains_the_plain_model_alike_and_pairs_fine_tuned_rows(tmp_path, monkeypatch):
    """The control: each seed's plain model trained --epochs further, no reducer, same recipe;
    fine-tuned reducer rows carry their paired difference to it, and the table shows it."""
    bench_demo = _bench_demo()
    plain = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    control = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    trained = []
    monkeypatch.setattr(bench_demo, "train_or_resume", lambda cfg: trained.append(cfg))
    monkeypatch.setattr(bench_demo, "evaluate_scores",
                        lambda checkpoint, test, out, reducer=None: ({"top1": 0.75, "gmacs_per_view": 0.36},
                                                                     control[len(trained) - 1]))
    (tmp_path / "train.csv").write_text("")
    (tmp_path / "val.csv").write_text("")
    args = argparse.Namespace(epochs=3, batch_size=16, lr=5e-4, distill=0.0, seeds=[0, 1], data=tmp_path,
                              out=tmp_path)
    row = bench_demo.control_row(args, [tmp_path / "a.pth", tmp_path / "b.pth"], "test.csv", plain)
    assert len(trained) == 2 and all(cfg.reducer.name == "none" and cfg.train.epochs == 3 for cfg in trained)
    assert [str(cfg.init.checkpoint) for cfg in trained] == [str(tmp_path / "a.pth"), str(tmp_path / "b.pth")]
    assert row["name"] == "plain, 3 more epochs" and row["delta"] == pytest.approx(0.25)
    reduced = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    reports = [{"top1": 0.6, "gmacs_per_view": 0.2}] * 2
    tuned = bench_demo.summarise("topk 0.5", True, reports, reduced, plain, None, control)
    assert tuned["delta"] == pytest.approx(0.125) and tuned["delta_control"] == pytest.approx(-0.125)
    free = bench_demo.summarise("topk 0.5 (no training)", False, reports, reduced, plain)
    table = bench_demo.write_results([bench_demo.summarise("plain", True, reports, plain, plain), row, free, tuned],
                                     tmp_path)
    lines = table.splitlines()
    assert "Δ vs plain trained as long" in lines[0] and all(line.count("|") == 8 for line in lines)
    assert "| +12.5 [" in lines[-1] and "| -12.5 [" in lines[-1] and "| -12.5 [" not in lines[-2]


def test_bench_demo_merge_combines_split_runs_and_pairs_them_with_the_control():
    bench_demo = _bench_demo()
    plain = np.array([[1.0, 0.0, 1.0, 0.0]])
    reports = [{"top1": 0.5, "gmacs_per_view": 0.36}]
    plain_row = bench_demo.summarise("plain", True, reports, plain, plain)
    control = bench_demo.summarise("plain, 6 more epochs", True, reports, np.ones((1, 4)), plain)
    tuned = bench_demo.summarise("bat 0.5", True, reports, np.array([[1.0, 1.0, 1.0, 0.0]]), plain, {"name": "bat"})
    free = bench_demo.summarise("bat 0.5 (no training)", False, reports, plain, plain, {"name": "bat"})
    merged = bench_demo.merge_rows([[plain_row, free, tuned], [plain_row, control]])
    assert [row["name"] for row in merged] == ["plain", "plain, 6 more epochs", "bat 0.5 (no training)", "bat 0.5"]
    assert merged[3]["delta_control"] == pytest.approx(-0.25) and "delta_control" not in merged[2]
    other_plain = bench_demo.summarise("plain", True, reports, np.ones((1, 4)), np.ones((1, 4)))
    with pytest.raises(SystemExit, match="different plain models"):
        bench_demo.merge_rows([[plain_row, free], [other_plain, control]])


def test_bench_cascade_rows_pair_every_method_with_the_plain_model_over_seeds():
    bench = load_tool("bench_cascade")
    rng = np.random.default_rng(1)
    per_seed = []
    for _ in range(3):
        plain = (rng.random(300) < 0.9).astype(float)
        worse = plain.copy()
        worse[:60] = 0.0  # the cascade loses the first 60 clips in every seed
        per_seed.append({("plain (static)", None): {"correct": plain, "gmacs": 0.36},
                         ("cascade, official", 0.5): {"correct": worse, "gmacs": 0.18, "exit_shares": [0.6, 0.4]},
                         ("cascade, official", 0.2): {"error": "below the cheapest setting"}})
    rows = bench.aggregate(per_seed, 0.36)
    plain_row, cascade, failed = rows
    assert plain_row["delta"] == 0.0 and plain_row["top1_low"] < plain_row["top1"] < plain_row["top1_high"]
    assert cascade["budget"] == pytest.approx(0.18) and cascade["exit_shares"] == pytest.approx([0.6, 0.4])
    assert cascade["delta_high"] < 0 and len(cascade["top1_per_seed"]) == 3  # the paired interval excludes 0
    assert failed["error"] == "below the cheapest setting"
    assert "-" in bench.markdown(rows, 0.36).splitlines()[-1]


def test_bench_cascade_pairs_fine_tuned_rows_with_the_control_only():
    """The control (plain model fine-tuned as the cascades are) gets its own row; cascade rows
    carry their paired difference to it, training-free baselines do not."""
    bench = load_tool("bench_cascade")
    plain = np.array([1.0, 0.0, 1.0, 0.0])
    per_seed = [{("plain (static)", None): {"correct": plain, "gmacs": 0.36},
                 ("plain, 6 more epochs (control)", None): {"correct": np.ones(4), "gmacs": 0.36, "control": True},
                 ("cascade, official", 0.5): {"correct": np.array([1.0, 1.0, 1.0, 0.0]), "gmacs": 0.18,
                                              "exit_shares": [0.6, 0.4], "fine_tuned": True},
                 ("topk, training-free (closest setting)", 0.5): {"correct": plain, "gmacs": 0.18,
                                                                  "setting": {"keep": 0.4}}}] * 2
    plain_row, control, cascade, topk = bench.aggregate(per_seed, 0.36)
    assert control["delta"] == pytest.approx(0.5) and "delta_control" not in control
    assert cascade["delta"] == pytest.approx(0.25) and cascade["delta_control"] == pytest.approx(-0.25)
    assert "delta_control" not in topk and cascade["correct"] == [[1, 1, 1, 0]] * 2
    lines = bench.markdown([plain_row, control, cascade, topk], 0.36).splitlines()
    assert "Δ vs plain trained as long" in lines[0] and all(line.count("|") == 9 for line in lines)
    assert "| -25.0 [" in lines[4] and lines[5].endswith("| +0.0 [+0.0, +0.0] |  |  |")


def test_bench_cascade_control_and_cascades_share_one_fine_tuning_recipe(tmp_path):
    bench = load_tool("bench_cascade")
    fit = tmp_path / "fit.txt"
    fit.write_text("a.mp4 0\nb.mp4 1\n")
    recipe = bench.finetune_overrides(fit, tmp_path / "plain.pth", 6, 2)
    assert "train.epochs=6" in recipe and "train.seed=2" in recipe and "train.batch_size=1" in recipe
    assert f"init.checkpoint={tmp_path / 'plain.pth'}" in recipe and not any(o.startswith("cascade.") for o in recipe)


def test_bench_explain_cells_leave_out_videos_without_an_object():
    bench = load_tool("bench_explain")
    tables = [bench.Table(per_video={"random": {"deletion_auc": [0.5, 0.7, 0.6], "insertion_auc": [0.5, 0.5, 0.5],
                                                "pointing_game": [1.0, float("nan"), 0.0],
                                                "mask_iou": [0.2, float("nan"), 0.4]},
                                     "topk keep=0.5": {"object_kept": [1.0, float("nan"), 0.5],
                                                       "all_kept": [0.5, 0.5, 0.5]}}, videos=3)
              for _ in range(2)]
    cells = bench.aggregate(tables)
    assert cells["random"]["pointing_game"]["videos"] == 2 and cells["random"]["pointing_game"]["mean"] == 0.5
    assert cells["random"]["deletion_auc"]["videos"] == 3
    assert cells["random"]["deletion_auc"]["mean"] == pytest.approx(0.6)
    assert cells["topk keep=0.5"]["object_kept"]["mean"] == 0.75
    text = bench.markdown(cells, 2, 3)
    assert "| random | 0.600 [" in text and "| topk keep=0.5 | 0.750 [" in text


def test_bench_explain_pairs_each_method_with_class_attention_on_the_same_videos():
    bench = load_tool("bench_explain")
    rng = np.random.default_rng(0)

    def table() -> object:
        attention = rng.random(200)
        scores = {"attention": {m: attention.tolist() for m in bench.METRICS},
                  "interpreter": {m: (attention + 0.05).tolist() for m in bench.METRICS}}
        scores["interpreter"]["mask_iou"][0] = float("nan")  # no visible object in video 0
        return bench.Table(per_video=scores, videos=200)

    tables = [table() for _ in range(3)]
    differences = bench.paired_differences(tables)
    assert list(differences) == ["interpreter"]
    cell = differences["interpreter"]["deletion_auc"]
    assert cell["mean"] == pytest.approx(0.05) and cell["low"] == pytest.approx(0.05) and cell["videos"] == 200
    assert differences["interpreter"]["mask_iou"]["videos"] == 199
    cells = bench.aggregate(tables)  # unpaired, the two methods' intervals overlap; paired, the gap is clear
    assert cells["interpreter"]["deletion_auc"]["low"] < cells["attention"]["deletion_auc"]["high"]
    text = bench.markdown(cells, 3, 200, differences)
    assert "| interpreter | +0.050 [+0.050, +0.050] |" in text


def test_bench_explain_merge_gives_the_table_of_one_run_over_all_seeds(tmp_path):
    bench = load_tool("bench_explain")

    def table(offset: float) -> object:
        return bench.Table({"random": {}}, {}, 3, {"random": {"deletion_auc": [0.5 + offset, 0.7, 0.6],
                                                              "insertion_auc": [0.5, 0.5, offset],
                                                              "pointing_game": [1.0, float("nan"), 0.0],
                                                              "mask_iou": [0.2, float("nan"), 0.4]}})

    run = {"data": "d", "split": "val", "steps": 10, "minutes": 1.0}
    for name, seeds in (("a", [0, 1]), ("b", [2])):
        part = {**run, "seeds": seeds, "checkpoints": [f"p{s}" for s in seeds],
                "interpreter_checkpoints": [f"i{s}" for s in seeds]}
        bench.write_report(tmp_path / name, "cmd", part, [table(0.1 * s) for s in seeds])
    merged, tables = bench.merge_parts([tmp_path / "a", tmp_path / "b"])
    assert merged["seeds"] == [0, 1, 2] and merged["checkpoints"] == ["p0", "p1", "p2"]
    assert bench.aggregate(tables) == bench.aggregate([table(0.0), table(0.1), table(0.2)])
    assert tables[0].per_video["random"]["pointing_game"][1] != tables[0].per_video["random"]["pointing_game"][1]
    with pytest.raises(SystemExit, match="appear twice"):
        bench.merge_parts([tmp_path / "a", tmp_path / "a"])
    bench.write_report(tmp_path / "c", "cmd", {**run, "steps": 20, "seeds": [3], "checkpoints": ["p3"],
                                               "interpreter_checkpoints": ["i3"]}, [table(0.3)])
    with pytest.raises(SystemExit, match="differ from the first part"):
        bench.merge_parts([tmp_path / "a", tmp_path / "c"])
    assert bench.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "all")]) == 0
    assert "3 seeds x 3 videos" in (tmp_path / "all" / "bench_explain.md").read_text()


@pytest.mark.parametrize("n, low_rank, coverage", [(9, 2, 0.9609375), (15, 4, 0.96484375), (20, 6, 0.9586105)])
def test_the_median_interval_takes_the_order_statistics_of_the_binomial_table(n, low_rank, coverage):
    values = np.random.default_rng(n).permutation(np.arange(1, n + 1))  # the k-th smallest is k
    interval = median_interval(values)
    assert (interval.low, interval.high) == (low_rank, n + 1 - low_rank)
    assert interval.coverage == pytest.approx(coverage, abs=1e-6)
    assert interval.median == (n + 1) / 2


def test_fewer_than_six_values_give_min_to_max_with_the_coverage_they_have():
    interval = median_interval([3.0, 1.0, 2.0])
    assert (interval.median, interval.low, interval.high) == (2.0, 1.0, 3.0)
    assert interval.coverage == pytest.approx(0.75)  # 1 - 2 * 0.5 ** 3, below the 0.95 asked for
    assert median_interval([4.0]).coverage == 0.0
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


def test_the_median_interval_covers_the_true_median_as_often_as_it_says():
    rng = np.random.default_rng(0)
    trials, n = 4000, 15
    samples = rng.lognormal(mean=0.0, sigma=0.5, size=(trials, n))  # skewed, true median 1.0
    hits = [interval.low <= 1.0 <= interval.high for interval in map(median_interval, samples)]
    assert abs(np.mean(hits) - median_interval(samples[0]).coverage) < 0.015  # 0.965 +- 3.5 standard errors
