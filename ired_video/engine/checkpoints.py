"""Resumable training checkpoints: accelerate's full state, written atomically.

A checkpoint is a folder ``checkpoints/step_<global step>`` holding what
``Accelerator.save_state`` writes (model, optimizer, scaler, every process's RNG states,
the registered LR scheduler) plus ``progress.json`` (epoch, batches done in it, optimizer
steps, best metric). It is written under a ``.tmp`` name and renamed when complete, so a
run killed mid-write leaves the previous checkpoint as the latest. The last ``keep_last``
are kept.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from accelerate import Accelerator

PROGRESS = "progress.json"


@dataclass
class Progress:
    epoch: int = 0  # epoch being trained
    batches_in_epoch: int = 0  # batches of that epoch already consumed
    global_step: int = 0  # optimizer steps so far
    best_top1: float = -1.0


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_")
            and not p.name.endswith(".tmp") and (p / PROGRESS).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def save_training_state(accelerator: Accelerator, run_dir: Path, progress: Progress, keep_last: int) -> Path:
    """Every process calls this; the main process finalises and prunes."""
    final = run_dir / "checkpoints" / f"step_{progress.global_step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-max(keep_last, 1)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest(run_dir: Path) -> Optional[Path]:
    """The run's newest complete checkpoint, or None."""
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """``resume``: "auto" (the run's latest) or a checkpoint folder."""
    if resume != "auto":
        path = Path(resume)
        if not (path / PROGRESS).is_file():
            raise FileNotFoundError(f"{path}: not a training checkpoint folder (no {PROGRESS})")
        return path
    path = latest(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'}: no checkpoint to resume from")
    return path


def load_training_state(accelerator: Accelerator, path: Path) -> Progress:
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError) as err:
        raise RuntimeError(f"{path}: cannot resume from this checkpoint; it does not match the "
                           f"configured model, optimizer or process count ({err})") from None
    return Progress(**json.loads((path / PROGRESS).read_text()))


RUN_OUTPUTS = ("checkpoints", "train_log.jsonl", "train_log.csv", "eval_report.json", "eval_log.jsonl",
               "eval_views.jsonl", "best.pth", "last.pth", "tensorboard")


def earlier_run(run_dir: Path) -> list[str]:
    """What an earlier training run left in ``run_dir`` (names of its outputs found there)."""
    return [name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def clear_run(run_dir: Path) -> None:
    """Remove an earlier run's outputs (only the files a training run writes)."""
    for name in earlier_run(run_dir):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
