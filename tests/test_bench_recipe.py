"""tools/bench_recipe.py: shape / direction shares from a run's eval_views.jsonl, seed rows and summaries."""
import json
import threading
from pathlib import Path

import pytest

from ired_video.data.demo import demo_class_names
from tests.tool_modules import load_tool


def test_factor_shares_read_the_top_class_of_each_view(tmp_path):
    bench = load_tool("bench_recipe")
    names = demo_class_names("hard")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    index = {name: i for i, name in enumerate(names)}
    views = tmp_path / "eval_views.jsonl"
    shown = [("circle moving left", "circle moving left"), ("circle moving left", "square moving left"),
             ("triangle moving up", "triangle moving down"), ("square moving up", "circle moving down")]
    views.write_text("".join(json.dumps({"label": index[true], "top_k": [{"label": top, "index": index[top]}]}) + "\n"
                             for true, top in shown))
    assert bench.factor_shares(views, classes) == {"val_shape": 0.5, "val_direction": 0.5}
    assert bench.factor_shares(views, tmp_path / "missing.txt") == {}
    classes.write_text("walking\nrunning\n")
    assert bench.factor_shares(views, classes) == {}


def _evaluated(folder, correct):
    """A run folder whose eval_views.jsonl has one view per video, right where ``correct``."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"video_index": i, "label": 0, "top_k": [{"label": "a", "index": 0 if ok else 1}]})
             for i, ok in enumerate(correct)]
    (folder / "eval_views.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _dataset(tmp_path, val_videos):
    """A folder with a one-video train.csv and a val.csv of ``val_videos`` lines (never decoded here)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a.mp4 0\n")
    (data / "val.csv").write_text("".join(f"v{i}.mp4 0\n" for i in range(val_videos)))
    return data


def test_seeds_on_disk_are_summarised_without_training_again(tmp_path, monkeypatch):
    bench = load_tool("bench_recipe")
    data = _dataset(tmp_path, 4)
    base = tmp_path / "runs" / "R"
    rows = []
    for seed, correct in ((0, [1, 1, 1, 0]), (1, [1, 0, 1, 0])):
        _evaluated(tmp_path / "runs" / f"R_seed{seed}", correct)
        rows.append({"name": f"R_seed{seed}", "overrides": ["train.epochs=1", f"train.seed={seed}"],
                     "best_top1": sum(correct) / 4, "last_top1": sum(correct) / 4, "wall_s": 1.0, "cpu_s": 10.0 + seed})
    out = tmp_path / "rows.json"
    out.write_text(json.dumps(rows))
    monkeypatch.setattr(bench, "run", lambda *a: (_ for _ in ()).throw(AssertionError("trained again")))
    argv = ["--name", "R", "--data", str(data), "--output", str(base), "--out", str(out), "--seeds", "2",
            "train.epochs=1"]
    assert bench.main(argv) == 0
    summary = json.loads(out.read_text())[-1]
    assert summary["name"] == "R" and summary["seeds"] == ["R_seed0", "R_seed1"]
    assert summary["top1"] == 0.625 and summary["top1_low"] <= 0.625 <= summary["top1_high"]
    assert summary["cpu_s_mean"] == 10.5 and summary["cpu_s_max"] == 11.0
    with pytest.raises(AssertionError, match="trained again"):  # other overrides: not the same run
        bench.main([*argv[:-1], "train.epochs=2"])


def test_jobs_train_seeds_at_once_and_keep_their_order(tmp_path, monkeypatch):
    bench = load_tool("bench_recipe")
    data = _dataset(tmp_path, 2)
    both_running = threading.Barrier(2, timeout=20)  # broken (an error) unless two runs overlap

    def fake_run(name, config, train, val, output, overrides):
        seed = int(overrides[-1].split("=")[1])
        both_running.wait()
        _evaluated(Path(output), [1, seed == 0])
        return {"name": name, "overrides": overrides, "best_top1": 1.0, "last_top1": 1.0 - seed / 2,
                "wall_s": 1.0, "cpu_s": 5.0 + seed}

    monkeypatch.setattr(bench, "run", fake_run)
    out = tmp_path / "rows.json"
    assert bench.main(["--name", "R", "--data", str(data), "--output", str(tmp_path / "runs" / "R"), "--out",
                       str(out), "--seeds", "2", "--jobs", "2", "train.epochs=1"]) == 0
    rows = json.loads(out.read_text())
    assert [row["name"] for row in rows] == ["R_seed0", "R_seed1", "R"]
    assert rows[-1]["last_top1_per_seed"] == [1.0, 0.5] and rows[-1]["top1"] == 0.75
    assert rows[-1]["cpu_s_mean"] == 5.5
    with pytest.raises(SystemExit):  # argparse's error: no silent fallback to one job
        bench.main(["--name", "R", "--data", str(data), "--out", str(out), "--seeds", "2", "--jobs", "0"])


def test_a_killed_benchmark_keeps_its_finished_seeds(tmp_path, monkeypatch):
    bench = load_tool("bench_recipe")
    data = _dataset(tmp_path, 1)
    trained = []

    def fake_run(name, config, train, val, output, overrides):
        if name == "R_seed1" and "R_seed1" not in trained:
            trained.append(name)
            raise SystemExit("R_seed1: training failed")
        trained.append(name)
        _evaluated(Path(output), [1])
        return {"name": name, "overrides": overrides, "best_top1": 1.0, "last_top1": 1.0, "wall_s": 1.0,
                "cpu_s": 1.0}

    monkeypatch.setattr(bench, "run", fake_run)
    out = tmp_path / "rows.json"
    argv = ["--name", "R", "--data", str(data), "--output", str(tmp_path / "runs" / "R"), "--out", str(out),
            "--seeds", "2"]
    with pytest.raises(SystemExit, match="R_seed1"):
        bench.main(argv)
    assert [row["name"] for row in json.loads(out.read_text())] == ["R_seed0"]
    assert bench.main(argv) == 0
    assert trained == ["R_seed0", "R_seed1", "R_seed1"]  # seed 0 was not trained again
    assert [row["name"] for row in json.loads(out.read_text())] == ["R_seed0", "R_seed1", "R"]


def test_view_correct_refuses_several_views_per_video(tmp_path):
    bench = load_tool("bench_recipe")
    folder = _evaluated(tmp_path / "run", [1, 0])
    assert bench.view_correct(folder / "eval_views.jsonl").tolist() == [1.0, 0.0]
    with (folder / "eval_views.jsonl").open("a") as views:
        views.write(json.dumps({"video_index": 0, "label": 0, "top_k": []}) + "\n")
    with pytest.raises(SystemExit, match="several views per video"):
        bench.view_correct(folder / "eval_views.jsonl")
