"""Training checkpoints: nothing in a checkpoint folder runs code, a kill at any step of a
save leaves a run that ``--resume auto`` continues exactly, and resumed logs hold each step once."""
from __future__ import annotations

import importlib
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from ired_video import cli
from ired_video.engine import train
from ired_video.engine.checkpoints import COMPLETE, checkpoint_dirs, latest, manifest, recover
from tests.training import REPO, config, settings

checkpoints = importlib.import_module("ired_video.engine.checkpoints")
train_module = importlib.import_module("ired_video.engine.train")
logger_module = importlib.import_module("ired_video.engine.logger")


class Planted:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def one_thread():
    """The many short runs below: one torch thread (on a shared machine two threads spin-wait
    on each other; measured 0.8 s against 7 s per run at load 8 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after 2 steps: one checkpoint, step_00000002."""
    run = tmp_path_factory.mktemp("saved") / "run"
    train(config(demo_data, run, "train.max_steps=2", "train.epochs=1"))
    return run


def _resume(demo_data: Path, run: Path, resume: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["train", "--config", str(REPO / "configs/train/demo_micro.yaml"),
                     *settings(demo_data, run, "train.epochs=1"), "--resume", resume])
    return code, capsys.readouterr().err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pth", weights_only=True)["model_state"]


def test_a_checkpoint_folder_holds_only_plain_data_files(saved_run):
    step = latest(saved_run)
    assert step is not None and step.name == "step_00000002"
    assert sorted(p.name for p in step.iterdir()) == [COMPLETE, "model.pt", "optimizer.pt", "progress.json",
                                                     "rng_0.pt", "scheduler.json"]
    assert json.loads((step / COMPLETE).read_text())["files"] == manifest(step)
    for name in ("model.pt", "optimizer.pt", "rng_0.pt"):
        torch.load(step / name, weights_only=True)  # loads without allowing any code
    assert json.loads((step / "progress.json").read_text())["global_step"] == 2


def test_the_planted_object_runs_code_when_unpickled(tmp_path):
    """The hostile payload of the next test is real: an unsafe load runs it."""
    marker = tmp_path / "ran"
    torch.save(Planted(marker), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


POSITIONS = ["model.pt", "optimizer.pt", "rng_0.pt", "scheduler.json", "progress.json", "scaler.json", COMPLETE,
             "custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "model.safetensors", "rng_1.pt"]


@pytest.mark.parametrize("form", ["torch_save", "pickle"])
@pytest.mark.parametrize("name", POSITIONS)
def test_hostile_file_in_any_position_is_refused_and_never_run(demo_data, saved_run, tmp_path, capsys, name, form):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    step = latest(run)
    marker = tmp_path / "code_ran"
    if form == "torch_save":
        torch.save({"state": Planted(marker)}, step / name)
    else:
        (step / name).write_bytes(pickle.dumps({"state": Planted(marker)}))
    if name != COMPLETE:  # the attacker also fixes the manifest, so the reader itself must refuse
        (step / COMPLETE).write_text(json.dumps({"format": checkpoints.FORMAT, "files": manifest(step)}))
    code, err = _resume(demo_data, run, str(step), capsys)
    assert not marker.exists()
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("ired-video train: error: ") and name in line
    assert "weights_only" not in line  # not torch's advice to load it unsafely


def test_an_accelerate_format_checkpoint_is_refused_by_name(demo_data, saved_run, tmp_path, capsys):
    """What earlier versions wrote: accelerate's save_state files and progress.json, no COMPLETE."""
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    step = run / "checkpoints" / "step_00000002"
    shutil.rmtree(step)
    step.mkdir()
    marker = tmp_path / "code_ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        torch.save(Planted(marker), step / name)
    (step / "progress.json").write_text(json.dumps({"epoch": 0, "batches_in_epoch": 2, "global_step": 2,
                                                    "best_top1": -1.0}))
    code, err = _resume(demo_data, run, "auto", capsys)
    assert code == 2 and "no checkpoint to resume from (step_00000002 lack the COMPLETE marker" in err
    code, err = _resume(demo_data, run, str(step), capsys)
    assert code == 2 and "custom_checkpoint_0.pkl: a pickle (accelerate's checkpoint format" in err
    assert not marker.exists()


def test_a_checkpoint_of_another_process_count_says_so(demo_data, saved_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    step = latest(run)
    shutil.copy(step / "rng_0.pt", step / "rng_1.pt")
    (step / COMPLETE).write_text(json.dumps({"format": checkpoints.FORMAT, "files": manifest(step)}))
    code, err = _resume(demo_data, run, "auto", capsys)
    assert code == 2 and "saved by 2 processes, this run has 1" in err


class Killed(Exception):
    """Stands for a kill: nothing after it runs (the save code has no cleanup handlers)."""


class SaveSequence:
    """Counts the file operations of chosen saves and fails during the ``fail_at``-th, leaving
    what a kill there would: half a file written, part of a folder deleted, a rename not done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, saves: set[int], fail_at: int | None) -> None:
        self.saves, self.fail_at, self.save, self.ops = saves, fail_at, 0, []
        real_save = train_module.save_training_state

        def save(*args: Any, **kwargs: Any) -> Path:
            self.save += 1
            return real_save(*args, **kwargs)

        monkeypatch.setattr(train_module, "save_training_state", save)
        for name in ("_make_dir", "_write_file", "_rename", "_remove_tree"):
            monkeypatch.setattr(checkpoints, name, self._wrap(name, getattr(checkpoints, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        def op(path: Path, *args: Any) -> None:
            if self.save not in self.saves:
                return real(path, *args)
            self.ops.append(f"{name} {path.name}")
            if len(self.ops) - 1 != self.fail_at:
                return real(path, *args)
            self.fail_at = None
            if name == "_write_file":  # a kill mid-write: half the bytes on disk
                real(path, *args)
                with open(path, "r+b") as f:
                    f.truncate(path.stat().st_size // 2)
            elif name == "_remove_tree":  # a kill mid-delete: one file gone, the rest there
                next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()
            elif name == "_make_dir":
                real(path, *args)
            raise Killed(self.ops[-1])
        return op


# ckpt_every=4 with 4 steps an epoch: save 2 re-saves step 4 at the epoch's end (step_4 is set
# aside, replaced, deleted); save 3 writes step 8 and prunes step 4 (keep_last=1).
KILLED = ("train.ckpt_every=4", "train.keep_last=1", "eval.every=1", "model.drop_path_rate=0.3")


def test_a_kill_at_every_step_of_saving_leaves_a_run_that_resumes_exactly(demo_data, tmp_path, monkeypatch, one_thread):
    train(config(demo_data, tmp_path / "straight", *KILLED))
    straight = _weights(tmp_path / "straight")
    with monkeypatch.context() as patch:
        counted = SaveSequence(patch, {2, 3}, None)
        train(config(demo_data, tmp_path / "counted", *KILLED))
    assert [op.split()[0] for op in counted.ops] == [
        "_make_dir", *["_write_file"] * 6, "_rename", "_rename", "_rename", "_remove_tree",  # re-save of step 4
        "_make_dir", *["_write_file"] * 6, "_rename", "_rename", "_remove_tree"]  # step 8, step 4 pruned
    for k, op in enumerate(counted.ops):
        run = tmp_path / f"killed_{k}"
        with monkeypatch.context() as patch:
            SaveSequence(patch, {2, 3}, k)
            with pytest.raises(Killed):
                train(config(demo_data, run, *KILLED))
        train(config(demo_data, run, *KILLED), resume="auto")
        resumed = _weights(run)
        assert all(torch.equal(resumed[key], value) for key, value in straight.items()), f"killed at {k}: {op}"
        steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 9)), f"killed at {k}: {op}"
        epochs = [json.loads(line)["epoch"] for line in (run / "eval_log.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], f"killed at {k}: {op}"
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000008"], f"killed at {k}: {op}"


def test_recover_restores_a_lone_complete_copy_and_drops_broken_folders(saved_run, tmp_path):
    """The issue's two layouts: only a complete step_N.tmp left (keep_last=1); a half-deleted
    step_N beside its complete .tmp and an older complete step."""
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    step = latest(run)
    step.rename(step.with_name(step.name + ".tmp"))
    assert latest(run) is None
    assert recover(run) == ["restored step_00000002 from its complete .tmp copy"]
    assert latest(run) == step

    older = step.with_name("step_00000001")
    shutil.copytree(step, older)
    shutil.copytree(step, step.with_name(step.name + ".tmp"))
    (step / "model.pt").unlink()  # half-deleted: progress.json still there
    (step.with_name("step_00000003.tmp")).mkdir()  # a save that never finished
    assert checkpoint_dirs(run) == [older]
    assert recover(run) == ["removed step_00000002 (incomplete)", "restored step_00000002 from its complete .tmp copy",
                            "removed step_00000003.tmp"]
    assert checkpoint_dirs(run) == [older, step]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_a_resumed_run_logs_each_step_once(demo_data, tmp_path, monkeypatch, one_thread):
    """Killed after logging step 3 with the checkpoint at step 2: the resumed logs (JSONL, CSV)
    drop the killed run's step 3 and hold steps 1..8 once, as an uninterrupted run's."""
    real_log = logger_module.StepLogger.log

    def log_then_die(self, row, step):
        real_log(self, row, step)
        if step == 3:
            raise Killed("after logging step 3")

    with monkeypatch.context() as patch:
        patch.setattr(logger_module.StepLogger, "log", log_then_die)
        with pytest.raises(Killed):
            train(config(demo_data, tmp_path / "run", "train.ckpt_every=2"))
    with (tmp_path / "run" / "train_log.jsonl").open("a") as f:
        f.write('{"epoch": 0, "step": 4, "lo')  # a row the kill cut short
    train(config(demo_data, tmp_path / "run", "train.ckpt_every=2"), resume="auto")
    train(config(demo_data, tmp_path / "straight", "train.ckpt_every=2"))
    for run in ("run", "straight"):
        rows = [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(1, 9))
        csv_steps = [line.split(",")[1] for line in (tmp_path / run / "train_log.csv").read_text().splitlines()]
        assert csv_steps == ["step", *map(str, range(1, 9))]
    resumed, straight = ([json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").open()]
                         for run in ("run", "straight"))
    assert resumed == straight


def _tiny_state(lr: float = 0.1) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    return model, optimizer, scheduler


def _draws() -> tuple[Any, ...]:
    import random

    import numpy as np
    return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), \
        torch.rand(3).tolist()


def test_state_round_trip_restores_weights_schedule_scaler_and_every_generator(tmp_path):
    from ired_video.engine.accelerator import new_accelerator
    from ired_video.engine.checkpoints import Progress, load_training_state, save_training_state

    accelerator = new_accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # as fp16 on a GPU has one
    model, optimizer, scheduler = _tiny_state()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    accelerator.step = 1
    _draws()  # a gauss pair half used: numpy and python keep the second value
    save_training_state(accelerator, tmp_path, Progress(1, 2, 3, 0.5), 2, model, optimizer, scheduler)
    expected = _draws()

    other = new_accelerator(cpu=True)
    other.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    model2, optimizer2, scheduler2 = _tiny_state(lr=0.7)
    progress = load_training_state(other, tmp_path / "checkpoints" / "step_00000003", model2, optimizer2, scheduler2)
    assert _draws() == expected
    assert progress == Progress(1, 2, 3, 0.5) and other.step == 1
    assert other.scaler.get_scale() == 1024.0
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() == [0.05]
    assert optimizer2.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert all(a.equal(b) for a, b in zip(model2.parameters(), model.parameters()))

    plain = new_accelerator(cpu=True)  # no fp16 now: the scaler state has no place to go
    with pytest.raises(checkpoints.CheckpointError, match="scaler.json: present: the checkpoint was saved with fp16"):
        load_training_state(plain, tmp_path / "checkpoints" / "step_00000003", *_tiny_state())


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(train_module.ConfigError, match="this GPU does not support bfloat16"):
        train_module.check_precision("bf16", torch.device("cuda"))
    train_module.check_precision("bf16", torch.device("cpu"))  # autocast on the CPU has bf16
