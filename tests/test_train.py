"""Training and evaluation: a short run, exact resume, two processes, bad configs."""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ired_video import CheckpointError, ConfigError, create_model
from ired_video.engine import TrainingError, load_train_config, train
from tests.training import REPO, TINY, config, settings

train_module = importlib.import_module("ired_video.engine.train")


def test_short_run_writes_logs_checkpoints_and_report(demo_data, tmp_path):
    report = train(config(demo_data, tmp_path / "run", "reducer.name=topk", "reducer.keep=0.5",
                           "reducer.stages=[1]", "eval.every=1"))
    run = tmp_path / "run"
    assert {"top1", "top5", "mean_class_accuracy", "gmacs_per_view", "gmacs_per_video"} <= set(report)
    assert report["videos"] == 6 and report["views"] == 6
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 8  # 18 training clips / batch 4 = 4 steps per epoch, 2 epochs
    assert all({"loss", "ce", "lr", "tokens_kept", "gmacs_per_clip"} <= set(r) for r in rows)
    assert rows[0]["tokens_kept"] == pytest.approx(0.5)
    assert (run / "train_log.csv").read_text().splitlines()[0].startswith("epoch,step,loss")
    views = [json.loads(line) for line in (run / "eval_views.jsonl").read_text().splitlines()]
    assert len(views) == 6 and {"video", "gmacs", "tokens_per_block", "exit_stage", "latency_ms"} <= set(views[0])
    best = create_model(checkpoint=run / "best.pth")
    assert best.reducer_config.name == "topk" and len(best.data_config.class_names) == 6
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_last
    history = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 4), (2, 8)]
    assert history[-1]["top1"] == report["top1"] and history[-1]["gmacs_per_view"] == report["gmacs_per_view"]


def test_tensorboard_gets_training_and_validation_scalars(demo_data, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(config(demo_data, tmp_path / "run", "eval.every=1"))
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "gmacs_per_clip", "val/top1", "val/gmacs_per_view"} <= tags
    assert [e.step for e in events.Scalars("val/top1")] == [4, 8]


def test_distillation_of_logits_and_merged_tokens_trains_and_is_logged(demo_data, tmp_path):
    train(config(demo_data, tmp_path / "run", "reducer.name=tome", "reducer.r=4", "objective.distill=1.0",
                  "objective.distill_tokens=1.0", "train.epochs=1"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(row["distill"] >= 0 and row["distill_tokens"] > 0 for row in rows)


def test_iared2_stage_one_trains_only_the_interpreters_and_logs_the_reward(demo_data, tmp_path):
    init = tmp_path / "plain"
    train(config(demo_data, init, "train.epochs=1"))
    train(config(demo_data, tmp_path / "run", "reducer.name=iared2", "reducer.keep=0.5", "reducer.stages=[1]",
                  f"init.checkpoint={init / 'last.pth'}", "init.drop_head=false", "objective.ce=0.0",
                  "objective.policy=1.0", "objective.keep_ratio=1.0", "objective.keep_target=0.5",
                  "objective.freeze_backbone=true", "train.mixup=0.0"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all({"policy", "keep_ratio", "reward"} <= set(row) and -1 <= row["reward"] <= 1 for row in rows)
    before = torch.load(init / "last.pth", weights_only=True)["model_state"]
    after = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model_state"]
    assert all(torch.equal(after[key], value) for key, value in before.items())  # backbone frozen
    moved = [key for key in after if key.startswith("reducers.") and key.endswith("weight")]
    assert moved and all(not torch.equal(after[key], _started_as(init, key)) for key in moved)


def _started_as(init: Path, key: str) -> torch.Tensor:
    """An interpreter weight as apply_reducer initialises it on ``init`` (from the block's attention)."""
    from ired_video.reducers import apply_reducer
    model = apply_reducer(create_model(checkpoint=init / "last.pth"), "iared2", keep=0.5, stages=[1])
    return model.state_dict()[key]


def test_sgd_step_schedule_accumulation_and_bf16(demo_data, tmp_path):
    """18 clips / batch 4 = 4 batches an epoch; accumulating 2 makes 2 optimizer steps an
    epoch, and the step schedule drops the rate by 10x at epoch 1 (step 2)."""
    train(config(demo_data, tmp_path / "run", "optim.name=sgd", "optim.lr=0.01", "schedule.name=step",
                  "schedule.warmup_epochs=0", "schedule.milestones=[1]", "train.grad_accum=2",
                  "train.precision=bf16", "train.clip_grad=1.0"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    # the rate logged after step s is the one the next step uses
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.001, 0.001, 0.001])
    assert all(math.isfinite(row["loss"]) for row in rows)


def test_killed_run_resumes_exactly(demo_data, tmp_path):
    train(config(demo_data, tmp_path / "straight"))
    train(config(demo_data, tmp_path / "killed", "train.max_steps=5"))  # stops inside epoch 2
    train(config(demo_data, tmp_path / "killed"), resume="auto")
    straight = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["model_state"]
    resumed = torch.load(tmp_path / "killed" / "last.pth", weights_only=True)["model_state"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0, msg=key)


def test_new_run_in_a_used_folder_is_refused_and_overwrite_starts_over(demo_data, tmp_path, capsys):
    """A fresh run into an earlier run's folder would have --resume auto pick the earlier,
    higher-numbered checkpoints and prune its own: refused unless asked to start over."""
    train(config(demo_data, tmp_path / "run"))  # 8 steps
    refused = r"already holds a training run \(checkpoints, train_log.jsonl.*--resume auto"
    with pytest.raises(ConfigError, match=refused):
        train(config(demo_data, tmp_path / "run", "train.max_steps=3"))
    from ired_video import cli
    assert cli.main(["train", "--config", str(REPO / "configs/train/demo_micro.yaml"),
                     *settings(demo_data, tmp_path / "run"), "train.max_steps=3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    train(config(demo_data, tmp_path / "run", "train.max_steps=3"), overwrite=True)
    assert len((tmp_path / "run" / "eval_log.jsonl").read_text().splitlines()) == 1  # the earlier run's is gone
    from ired_video.engine.checkpoints import checkpoint_dirs
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000003"]
    rows = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [1, 2, 3]


def test_resume_with_another_model_says_why(demo_data, tmp_path):
    train(config(demo_data, tmp_path / "run", "train.max_steps=1"))
    with pytest.raises(CheckpointError, match="cannot resume from this checkpoint; the configured model differs"):
        train(config(demo_data, tmp_path / "run", "model.depth=3"), resume="auto")


def test_non_finite_loss_stops_with_saved_state(demo_data, tmp_path, monkeypatch):
    real = train_module.objective

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train_module, "objective", poisoned)
    with pytest.raises(TrainingError, match="loss became non-finite at epoch 1, batch 0"):
        train(config(demo_data, tmp_path / "run"))
    assert list((tmp_path / "run" / "checkpoints").glob("step_*"))


def test_two_processes_train_and_evaluate_like_one(demo_data, tmp_path):
    """gloo on the CPU: a 2-process run trains, and evaluating one checkpoint with 1 or 2
    processes gives the same metrics (no video lost or counted twice)."""
    overrides = [f"data.train={demo_data / 'train.csv'}", f"data.val={demo_data / 'val.csv'}", *TINY,
                 "train.cpu=true", "train.epochs=1", "train.batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    done = subprocess.run([*run, str(REPO / "tools/train.py"), "--config", str(REPO / "configs/train/demo_micro.yaml"),
                           *overrides, f"output={tmp_path / 'ddp'}"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_report = json.loads((tmp_path / "ddp" / "eval_report.json").read_text())
    assert ddp_report["videos"] == 6
    # 18 clips / (2 clips x 2 processes) = 4 steps, all warm-up: the schedule is not stepped
    # once per process (a prepared scheduler would reach the cosine's end, lr 0, at step 2)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == pytest.approx([0.001 * m for m in (0.5, 0.75, 1.0, 1.0)])

    evaluate = ["-m", "ired_video.cli", "eval", "--checkpoint", str(tmp_path / "ddp" / "best.pth"),
                "--data", str(demo_data / "val.csv"), "--views", "2x3", "--cpu", "--workers", "0",
                "--batch-size", "5"]
    single = subprocess.run([sys.executable, *evaluate, "--output", str(tmp_path / "one.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run([*run, *evaluate, "--output", str(tmp_path / "two.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["views"] == two["views"] == 36  # 6 videos x 2 clips x 3 crops
    for key in ("top1", "top5", "mean_class_accuracy", "gmacs_per_view", "gmacs_per_video"):
        assert one[key] == pytest.approx(two[key], abs=1e-6), key
    lines = (tmp_path / "two_views.jsonl").read_text().splitlines()
    assert len(lines) == 36


@pytest.mark.parametrize("path", sorted((REPO / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_train_config_parses_and_builds_its_model(path):
    cfg = load_train_config(path)
    overrides = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model["name"], **overrides)
    from ired_video.reducers import apply_reducer
    apply_reducer(model, cfg.reducer)


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown key.*train.epoch"),
    ("train.epochs=three", "train.epochs: expected an integer"),
    ("optim.name=adam", "optim.name='adam'"),
    ("model.embed_dmi=4", "embed_dmi"),
    ("objective.policy=1.0", "reducer.name=iared2"),
    ("objective.distill_tokens=true", "objective.distill_tokens: expected a number"),
    ("data.preprocess.crop=3", "data.preprocess.crop"),
])
def test_config_mistakes_are_caught_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(REPO / "configs/train/demo_micro.yaml", [override])


def test_demo_recipe_matches_its_yaml(tmp_path):
    from ired_video.commands.demo import demo_config
    in_code = demo_config(tmp_path, tmp_path / "out")
    in_yaml = load_train_config(REPO / "configs/train/demo_micro.yaml",
                                [f"data.train={tmp_path / 'train.csv'}", f"data.val={tmp_path / 'val.csv'}",
                                 f"output={tmp_path / 'out'}"])
    assert in_code == in_yaml


def test_demo_command_end_to_end(tmp_path, capsys):
    """The README's main command, shrunk: every step runs and every promised output exists."""
    from ired_video import cli
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--videos-per-class", "2", "--epochs", "1",
                     "--finetune-epochs", "1", "--reducer", "topk", "keep=0.5"]) == 0
    text = capsys.readouterr().out
    assert "| timesformer_micro (unreduced) |" in text and "fine-tuned 1 epochs" in text
    for path in ("data/train.csv", "plain/best.pth", "topk/best.pth", "topk_training_free.json",
                 "overlay.mp4", "overlay.png", "summary.json"):
        assert (out / path).is_file(), path
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topk"]["gmacs_per_view"] < summary["plain"]["gmacs_per_view"]


def test_checkpoint_progress_knows_the_best_score(demo_data, tmp_path):
    from ired_video.engine.checkpoints import latest
    report = train(config(demo_data, tmp_path / "run", "train.epochs=1"))
    progress = json.loads((latest(tmp_path / "run") / "progress.json").read_text())
    assert progress["best_top1"] == pytest.approx(report["top1"])
