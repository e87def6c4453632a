"""Training and evaluation: a short run, exact resume, two processes, bad configs."""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ired_video import CheckpointError, ConfigError, create_model
from ired_video.data.annotations import load_annotations
from ired_video.engine import TrainingError, load_train_config, train
from ired_video.engine.config import dump
from ired_video.engine.evaluate import near_chance
from ired_video.inference import ViewRecord
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
    record_fields = {f.name for f in dataclasses.fields(ViewRecord)}  # the record infer writes per view
    video_fields = {"video", "video_index", "label", "bad_file", "replaced_by"}
    assert len(views) == 6 and set(views[0]) == video_fields | record_fields
    assert [(s["reducer"], s["block"], s["tokens"], s["kept_fraction"]) for s in views[0]["stages"]] == \
        [("topk", 1, 32, 0.5)]  # 4 frames x 16 patches, half kept
    assert len(views[0]["frame_indices"]) == 4 and views[0]["top_k"][0]["prob"] >= views[0]["top_k"][1]["prob"]
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


def test_train_or_resume_continues_a_killed_run_skips_a_finished_one_and_restarts_on_new_settings(
        demo_data, tmp_path, monkeypatch, capsys):
    """The benchmarks' runner: a kill costs at most the epoch it hit; a rerun of finished work
    trains nothing; other settings in the same folder start over."""
    from ired_video.engine.recipes import train_or_resume
    train(config(demo_data, tmp_path / "straight"))
    run = tmp_path / "run"
    epoch_of_one_run = train_module._train_epoch

    def killed_in_epoch_two(state, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return epoch_of_one_run(state, epoch)
    monkeypatch.setattr(train_module, "_train_epoch", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_or_resume(config(demo_data, run))
    trained_epochs = []

    def recorded(state, epoch):
        trained_epochs.append(epoch)
        return epoch_of_one_run(state, epoch)
    monkeypatch.setattr(train_module, "_train_epoch", recorded)
    train_or_resume(config(demo_data, run))
    assert trained_epochs == [1]  # continued from epoch 1's checkpoint
    straight = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["model_state"]
    resumed = torch.load(run / "last.pth", weights_only=True)["model_state"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0, msg=key)
    steps = [json.loads(row)["step"] for row in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # epoch 1 trained once, epoch 2 after the kill

    finished = (run / "last.pth").stat().st_mtime_ns
    capsys.readouterr()
    train_or_resume(config(demo_data, run))
    assert "nothing left to train" in capsys.readouterr().out
    assert trained_epochs == [1] and (run / "last.pth").stat().st_mtime_ns == finished
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 8

    train_or_resume(config(demo_data, run, "optim.lr=0.002"))
    assert trained_epochs == [1, 0, 1]
    steps = [json.loads(row)["step"] for row in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)) and (run / "last.pth").stat().st_mtime_ns > finished

    (run / "config.yaml").write_text("model: [unclosed")  # settings that cannot be read: start over
    train_or_resume(config(demo_data, run, "optim.lr=0.002"))
    assert trained_epochs == [1, 0, 1, 0, 1]

    init = tmp_path / "straight" / "last.pth"
    tuned = config(demo_data, tmp_path / "tuned", f"init.checkpoint={init}")
    train_or_resume(tuned)
    train_or_resume(tuned)
    assert trained_epochs == [1, 0, 1, 0, 1, 0, 1]  # finished: reused
    os.utime(init, ns=(time.time_ns() + 10**9,) * 2)  # the starting model was remade after the run
    train_or_resume(tuned)
    assert trained_epochs == [1, 0, 1, 0, 1, 0, 1, 0, 1]


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


def test_two_processes_train_resume_and_evaluate_like_one(demo_data, tmp_path, capsys):
    """gloo on the CPU: a 2-process run logs the loss over both processes' clips (as one process
    with their batch), reports a bad file only process 1 met, resumes bit for bit after being
    stopped; evaluating one checkpoint with 1 or 2 processes gives the same metrics."""
    records = load_annotations(demo_data / "train.csv").records
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()  # epoch 0, seed 0
    bad = tmp_path / "broken.mp4"  # process 1's first item (process 0 takes batches 0, 2, ...; 1 takes 1, 3, ...)
    bad.write_bytes(b"not a video" * 50)
    (tmp_path / "train.txt").write_text("".join(f"{bad if i == order[2] else r.path} {r.label}\n"
                                                for i, r in enumerate(records)))
    overrides = [f"data.train={tmp_path / 'train.txt'}", f"data.val={demo_data / 'val.csv'}", *TINY,
                 "train.cpu=true", "train.epochs=1", "train.mixup=0.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]

    def launch(*args: str) -> str:
        config = str(REPO / "configs/train/demo_micro.yaml")
        command = [*run, str(REPO / "tools/train.py"), "--config", config, *overrides, "train.batch_size=2", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = launch(f"output={tmp_path / 'ddp'}")
    assert f"epoch 1: bad files: 1 (1 items replaced): {bad}" in out
    ddp_report = json.loads((tmp_path / "ddp" / "eval_report.json").read_text())
    assert ddp_report["videos"] == 6
    # 18 clips / (2 clips x 2 processes) = 4 steps, all warm-up: the schedule is not stepped
    # once per process (a prepared scheduler would reach the cosine's end, lr 0, at step 2)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == pytest.approx([0.001 * m for m in (0.5, 0.75, 1.0, 1.0)])
    train(load_train_config(REPO / "configs/train/demo_micro.yaml",
                            [*overrides, "train.batch_size=4", f"output={tmp_path / 'one'}"]))
    single = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in rows] == pytest.approx([row["loss"] for row in single], rel=1e-4)

    launch(f"output={tmp_path / 'killed'}", "train.max_steps=2")
    launch(f"output={tmp_path / 'killed'}", "--resume", "auto")
    straight = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)["model_state"]
    resumed = torch.load(tmp_path / "killed" / "last.pth", weights_only=True)["model_state"]
    assert all(torch.equal(resumed[key], value) for key, value in straight.items())

    evaluate = ["eval", "--checkpoint", str(tmp_path / "ddp" / "best.pth"), "--data", str(demo_data / "val.csv"),
                "--views", "2x3", "--cpu", "--workers", "0", "--batch-size", "5"]
    from ired_video import cli
    assert cli.main([*evaluate, "--output", str(tmp_path / "one.json")]) == 0
    double = subprocess.run([*run, "-m", "ired_video.cli", *evaluate, "--output", str(tmp_path / "two.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["views"] == two["views"] == 36  # 6 videos x 2 clips x 3 crops
    for key in ("top1", "top5", "mean_class_accuracy", "gmacs_per_view", "gmacs_per_video"):
        assert one[key] == pytest.approx(two[key], abs=1e-6), key
    lines = (tmp_path / "two_views.jsonl").read_text().splitlines()
    assert len(lines) == 36


def test_eval_views_name_the_bad_file_not_its_replacement(demo_data, tmp_path):
    from ired_video import cli, save_checkpoint
    save_checkpoint(tmp_path / "model.pth", create_model("timesformer_test"))
    records = load_annotations(demo_data / "val.csv").records
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 50)
    (tmp_path / "val.txt").write_text("".join(f"{bad if i == 2 else r.path} {r.label}\n"
                                              for i, r in enumerate(records)))
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "model.pth"), "--data", str(tmp_path / "val.txt"),
                     "--cpu", "--workers", "0", "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bad_files"] == [str(bad)] and report["bad_views"] == 1 and report["videos"] == 5
    views = [json.loads(line) for line in (tmp_path / "report_views.jsonl").read_text().splitlines()]
    assert [v["video"] for v in views] == [str(bad) if i == 2 else r.path for i, r in enumerate(records)]
    row = views[2]
    assert row["bad_file"] and row["video_index"] == 2 and row["label"] == records[2].label
    assert row["replaced_by"] in {r.path for r in records} - {records[2].path}
    assert all(v["replaced_by"] is None and not v["bad_file"] for i, v in enumerate(views) if i != 2)


@pytest.mark.parametrize("path", sorted((REPO / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_train_config_parses_and_builds_its_model(path):
    cfg = load_train_config(path)
    overrides = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model["name"], **overrides)
    from ired_video.reducers import apply_reducer
    apply_reducer(model, cfg.reducer)


MISTAKES = [
    ("train.epoch=3", "unknown key.*train.epoch"),
    ("train.epochs=three", "train.epochs: expected an integer"),
    ("optim.name=adam", "optim.name='adam'"),
    ("model.embed_dmi=4", "unknown key.*model.embed_dmi"),
    ("objective.policy=1.0", "objective.policy trains IA-RED.*set reducer.name=iared2"),
    ("objective.distill_tokens=true", "objective.distill_tokens: expected a number"),
    ("data.preprocess.crop=3", r"unknown key\(s\) data.preprocess.crop;"),
    # accepted before, with a wrong or no effect (issue 16, 3)
    ("train.clip_grad=-1", r"train.clip_grad=-1.0: expected a gradient norm > 0"),
    ("train.label_smoothing=2", r"train.label_smoothing=2.0: expected a number in \[0, 1\)"),
    ("reducer.r=-5", r"reducer.r=-5: expected tokens merged per block >= 0"),
    ("train.ckpt_every=-1", r"train.ckpt_every=-1: expected at least 0"),
    ("eval.every=-1", r"eval.every=-1: expected at least 0"),
    ("train.mixup=-1", r"train.mixup=-1.0: expected a Beta\(a, a\) parameter >= 0"),
    ("train.max_steps=-3", r"train.max_steps=-3: expected at least 0"),
    ("schedule.warmup_epochs=-2", r"schedule.warmup_epochs=-2.0: expected a number >= 0"),
    ("train.precision=fp32", r"train.precision='fp32': expected one of \('no', 'bf16', 'fp16'\)"),
    # failed only after work had started (issue 16, 4)
    ("eval.batch_size=0", r"eval.batch_size=0: expected at least 1"),
    ("train.log_every=0", r"train.log_every=0: expected at least 1"),
    ("model.depth=0", r"model.depth=0: expected at least 1"),
    ("data.num_workers=-1", r"data.num_workers=-1: expected at least 0"),
    ("data.preprocess.std=[0,0,0]", r"data.preprocess.std=\[0.0, 0.0, 0.0\]: expected numbers > 0"),
    ("data.preprocess.crop_size=72", r"data.preprocess.train_short_side=\[64, 80\]: must satisfy crop_size \(72\)"),
    ("data.preprocess.temporal_pad=mirror", r"data.preprocess.temporal_pad='mirror': expected one of"),
    ("data.preprocess.sampling=random", r"data.preprocess.sampling='random': expected 'dense' or 'uniform'"),
    ("reducer.name=tomee", r"reducer.name='tomee': expected one of"),
    ("model.num_heads=0", r"model.num_heads=0: expected at least 1"),
    ("train.freeze=[blocks.]", r"train.freeze=\['blocks.'\]: expected a list of parameter-name prefixes"),
]


@pytest.mark.parametrize("override,message", MISTAKES)
def test_config_mistakes_are_caught_before_work(override, message):
    with pytest.raises(ConfigError, match=f"^{REPO / 'configs/train/demo_micro.yaml'}: {message}"):
        load_train_config(REPO / "configs/train/demo_micro.yaml", [override])


@pytest.mark.parametrize("override", [override for override, _ in MISTAKES])
def test_config_mistakes_exit_2_with_one_line(override, capsys, tmp_path):
    from ired_video import cli
    code = cli.main(["train", "--config", str(REPO / "configs/train/demo_micro.yaml"), f"output={tmp_path}",
                     override])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ired-video train: error: ") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_precision_no_as_yaml_reads_it(tmp_path):
    """YAML reads a bare ``no`` as false: the documented train.precision=no is accepted and
    written back as the string."""
    path = tmp_path / "c.yaml"
    path.write_text(f"_base_: {REPO / 'configs/train/demo_micro.yaml'}\ntrain:\n  precision: no\n")
    for cfg in (load_train_config(path), load_train_config(None, ["train.precision=no"])):
        assert cfg.train.precision == "no"
        assert dump(cfg)["train"]["precision"] == "no"
    with pytest.raises(ConfigError, match="train.precision=True"):
        load_train_config(None, ["train.precision=yes"])


def test_fp16_on_a_cpu_is_refused_before_work(demo_data, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(train_module, "build_datasets", no_work)
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a GPU"):
        train(config(demo_data, tmp_path / "run", "train.precision=fp16", "train.cpu=true"))


def test_a_crop_the_patches_do_not_tile_is_refused_before_training(demo_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_train_epoch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match=r"crop_size=44 is not a multiple of the model's patch_size=8"):
        train(config(demo_data, tmp_path / "run", "data.preprocess.crop_size=44",
                     "data.preprocess.train_short_side=[44,48]", "data.preprocess.test_short_side=44"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_work(demo_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "build_datasets", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"output=.*file/run: cannot write there"):
        train(config(demo_data, tmp_path / "file" / "run"))


def test_demo_recipe_matches_its_yaml(tmp_path):
    from ired_video.engine.recipes import demo_config
    in_code = demo_config(tmp_path, tmp_path / "out")
    in_yaml = load_train_config(REPO / "configs/train/demo_micro.yaml",
                                [f"data.train={tmp_path / 'train.csv'}", f"data.val={tmp_path / 'val.csv'}",
                                 f"output={tmp_path / 'out'}"])
    assert in_code == in_yaml


def test_demo_task_option_defaults_to_the_easy_demo():
    from ired_video.commands.demo import build_parser
    args = build_parser().parse_args([])
    assert (args.task, args.epochs, args.videos_per_class) == ("easy", 24, 64)
    assert build_parser().parse_args(["--task", "hard"]).task == "hard"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--task", "tiny"])


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


def test_near_chance_uses_two_binomial_standard_errors():
    # 12 classes on 600 videos: chance 0.0833, two standard errors 0.0226
    assert near_chance(0.10, 12, 600) is not None and "at chance (0.083 for 12 classes" in near_chance(0.10, 12, 600)
    assert near_chance(0.11, 12, 600) is None
    assert near_chance(0.40, 6, 6) is not None  # 6 videos cannot tell 2 right from chance


@pytest.mark.parametrize("top1,warned", [(1 / 6, True), (0.9, False)])
def test_training_warns_when_validation_stays_at_chance(demo_data, tmp_path, monkeypatch, caplog, top1, warned):
    real = train_module.evaluate

    def evaluate_at(*args, **kwargs):
        return {**real(*args, **kwargs), "top1": top1}

    monkeypatch.setattr(train_module, "evaluate", evaluate_at)
    report = train(config(demo_data, tmp_path / "run", "eval.every=1", "eval.chance_warning_after=0.75"))
    messages = [r.getMessage() for r in caplog.records if "at chance" in r.getMessage()]
    assert len(messages) == (1 if warned else 0)  # epoch 1 of 2 is before 0.75 of the schedule
    if warned:
        assert messages[0].startswith("epoch 2:") and "not learning" in report["warning"]
    assert ("warning" in json.loads((tmp_path / "run" / "eval_report.json").read_text())) == warned
