"""Resumable training checkpoints: plain data only, written so a kill never loses the last one.

A checkpoint is a folder ``checkpoints/step_<global step>`` of tensors-only ``.pt`` files
(model, optimizer, per-rank RNG) and JSON (scheduler, scaler, progress), loaded with
``weights_only=True``; a ``COMPLETE`` manifest written last marks it whole. Anything else
in the folder is refused. Saving writes a temporary folder and renames it.

Design notes: docs/design.md, "ired_video.engine.checkpoints".
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ired_video.config import is_number
from ired_video.models.checkpoint_file import load_plain
from ired_video.models.weights import CheckpointError, check_fits

PROGRESS = "progress.json"
COMPLETE = "COMPLETE"
MODEL = "model.pt"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.json"
SCALER = "scaler.json"
RNG = re.compile(r"rng_(\d+)\.pt")
FOLDER = re.compile(r"step_(\d+)(\.tmp|\.old|\.del)?")
TMP, OLD, DEL = ".tmp", ".old", ".del"
FORMAT = "ired_video_training_state"


@dataclass
class Progress:
    epoch: int = 0  # epoch being trained
    batches_in_epoch: int = 0  # batches of that epoch already consumed
    global_step: int = 0  # optimizer steps so far
    best_top1: float = -1.0


# -- file operations: every change the save sequence makes goes through these four ------------

def _write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` with ``write(file)``, flushed to the disk before returning."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True)


def _rename(source: Path, target: Path) -> None:
    """Atomic rename within one folder, made durable (the folder's entry flushed)."""
    os.rename(source, target)
    _fsync_dir(target.parent)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    _write_file(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def _variant(folder: Path, suffix: str) -> Path:
    """``step_N`` (or any of its variants) -> ``step_N<suffix>``."""
    return folder.with_name(folder.name.split(".")[0] + suffix)


def _retire(folder: Path) -> None:
    """Delete a folder so that no kill leaves it half-deleted under a name we would read."""
    doomed = _variant(folder, DEL)
    if folder != doomed:
        if doomed.exists():
            _remove_tree(doomed)
        _rename(folder, doomed)
    _remove_tree(doomed)


# -- which folders are checkpoints ------------------------------------------------------------

def manifest(folder: Path) -> dict[str, int]:
    """Every file of ``folder`` but ``COMPLETE``, with its size in bytes."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name != COMPLETE}


def is_complete(folder: Path) -> bool:
    """``COMPLETE`` is there and every file it lists has the size it says."""
    try:
        listed = json.loads((folder / COMPLETE).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in listed.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _step_folders(run_dir: Path) -> list[tuple[int, str, Path]]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), match.group(2) or "", path))
    return sorted(found)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run under their own names, oldest first."""
    return [path for _, suffix, path in _step_folders(run_dir) if not suffix and is_complete(path)]


def recover(run_dir: Path) -> list[str]:
    """After a kill: where ``step_N`` is missing or incomplete and a complete ``.tmp``/``.old``
    copy exists (``.tmp`` is the newer), put that copy in its place; delete partial and
    superseded temporaries and ``.del`` folders. A ``step_N`` without ``COMPLETE`` and no
    complete copy is left alone (not ours, or from an earlier version). Returns one line
    per change. Main process only."""
    by_step: dict[int, dict[str, Path]] = {}
    for step, suffix, path in _step_folders(run_dir):
        by_step.setdefault(step, {})[suffix] = path
    done = []
    for variants in by_step.values():
        final = variants.pop("", None)
        if final is None or not is_complete(final):
            copy = next((variants.pop(s) for s in (TMP, OLD) if s in variants and is_complete(variants[s])), None)
            if copy is not None:
                if final is not None:
                    _retire(final)
                    done.append(f"removed {final.name} (incomplete)")
                _rename(copy, _variant(copy, ""))
                done.append(f"restored {_variant(copy, '').name} from its complete {copy.suffix} copy")
        for path in variants.values():
            _retire(path)
            done.append(f"removed {path.name}")
    return done


def latest(run_dir: Path) -> Optional[Path]:
    """The run's newest complete checkpoint, or None."""
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """``resume``: "auto" (the run's newest complete checkpoint) or a checkpoint folder."""
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such checkpoint folder")
        return path
    path = latest(run_dir)
    if path is None:
        ignored = [p.name for _, suffix, p in _step_folders(run_dir) if not suffix]
        why = (f" ({', '.join(ignored)} lack the {COMPLETE} marker of a complete checkpoint of this version)"
               if ignored else "")
        raise FileNotFoundError(f"{run_dir / 'checkpoints'}: no checkpoint to resume from{why}")
    return path


# -- saving -----------------------------------------------------------------------------------

def rng_state(accumulation_step: int) -> dict[str, Any]:
    """This process's RNG states as tensors, ints and lists (loadable with weights_only)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"python": {"version": version, "state": list(mt), "gauss_next": gauss},
            "numpy": {"keys": keys.astype(np.int64).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "accumulation_step": int(accumulation_step)}


def save_training_state(accelerator: Accelerator, run_dir: Path, progress: Progress, keep_last: int,
                        model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Path:
    """Every process calls this; each writes its RNG file, the main process the rest, then
    marks the folder complete, renames it into place and prunes to ``keep_last``."""
    final = run_dir / "checkpoints" / f"step_{progress.global_step:08d}"
    tmp = _variant(final, TMP)
    if accelerator.is_main_process:
        if tmp.exists():  # a partial write of an earlier attempt
            _remove_tree(tmp)
        _make_dir(tmp)
    accelerator.wait_for_everyone()
    state = rng_state(accelerator.step)
    _write_file(tmp / f"rng_{accelerator.process_index}.pt", lambda f: torch.save(state, f))
    if accelerator.is_main_process:
        weights = accelerator.unwrap_model(model).state_dict()
        _write_file(tmp / MODEL, lambda f: torch.save(weights, f))
        _write_file(tmp / OPTIMIZER, lambda f: torch.save(optimizer.state_dict(), f))
        _write_json(tmp / SCHEDULER, scheduler.state_dict())
        if accelerator.scaler is not None:
            _write_json(tmp / SCALER, accelerator.scaler.state_dict())
        _write_json(tmp / PROGRESS, asdict(progress))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / COMPLETE, {"format": FORMAT, "files": manifest(tmp)})  # last: now it is complete
        aside = _variant(final, OLD)
        if final.exists():
            if aside.exists():
                _retire(aside)
            _rename(final, aside)
        _rename(tmp, final)
        if aside.exists():
            _retire(aside)
        for old in checkpoint_dirs(run_dir)[:-max(keep_last, 1)]:
            _retire(old)
    accelerator.wait_for_everyone()
    return final


# -- loading ----------------------------------------------------------------------------------

@dataclass
class TrainingState:
    """What a checkpoint folder holds, read and checked, not yet applied."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: Optional[dict[str, Any]]
    rng: dict[str, Any]
    progress: Progress


def check_folder(path: Path, processes: int, fp16: bool) -> None:
    """Refuse, naming the file, a folder that is not a complete checkpoint of this format for
    ``processes`` processes. Reads nothing but names, sizes and the ``COMPLETE`` JSON."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    names = set()
    for entry in sorted(path.iterdir()):
        if entry.suffix == ".pkl":
            raise CheckpointError(f"{entry}: a pickle (accelerate's checkpoint format, written by earlier "
                                  "versions): refused, reading it could run code; resume from a checkpoint "
                                  "written by this version or start over")
        if entry.is_dir() or not (entry.name in (PROGRESS, COMPLETE, MODEL, OPTIMIZER, SCHEDULER, SCALER)
                                  or RNG.fullmatch(entry.name)):
            raise CheckpointError(f"{entry}: unexpected in a training checkpoint folder; refused without "
                                  "reading it (remove it if you put it there)")
        names.add(entry.name)
    if COMPLETE not in names or not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint ({COMPLETE} missing, or a file's size "
                              "differs from what it lists): its save was interrupted")
    listed = set(json.loads((path / COMPLETE).read_text())["files"])
    if listed != names - {COMPLETE}:
        raise CheckpointError(f"{path / COMPLETE}: lists {sorted(listed)}, the folder holds "
                              f"{sorted(names - {COMPLETE})}")
    ranks = sorted(int(match.group(1)) for match in map(RNG.fullmatch, names) if match)
    odd = sorted(set(ranks) ^ set(range(processes)))
    if odd:
        raise CheckpointError(f"{path / f'rng_{odd[0]}.pt'}: {'unexpected' if odd[0] in ranks else 'missing'}: "
                              f"saved by {len(ranks)} processes, this run has {processes}: resume with the "
                              "process count it was saved with")
    for name in (MODEL, OPTIMIZER, SCHEDULER, PROGRESS):
        if name not in names:
            raise CheckpointError(f"{path / name}: missing")
    if fp16 != (SCALER in names):
        raise CheckpointError(f"{path / SCALER}: {'present' if SCALER in names else 'missing'}: the checkpoint was "
                              f"saved {'with' if SCALER in names else 'without'} fp16 precision; resume with the "
                              "train.precision it was saved with")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not JSON ({err})") from None


def _mapping(value: Any, path: Path, keys: Optional[set[str]] = None) -> dict[str, Any]:
    if not isinstance(value, dict) or (keys is not None and set(value) != keys):
        expected = f" with keys {sorted(keys)}" if keys is not None else ""
        raise CheckpointError(f"{path}: expected a mapping{expected}")
    return value


def read_training_state(path: Path, rank: int, processes: int, fp16: bool) -> TrainingState:
    """Check the folder, then read every file it holds for process ``rank``, never unpickling code."""
    check_folder(path, processes, fp16)
    model = _mapping(load_plain(path / MODEL), path / MODEL)
    bad = [k for k, v in model.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path / MODEL}: not a state dict; non-tensor entries: {', '.join(map(str, bad[:5]))}")
    optimizer = _mapping(load_plain(path / OPTIMIZER), path / OPTIMIZER, {"state", "param_groups"})
    rng = _mapping(load_plain(path / f"rng_{rank}.pt"), path / f"rng_{rank}.pt",
                   {"python", "numpy", "torch", "cuda", "accumulation_step"})
    scheduler = _mapping(_read_json(path / SCHEDULER), path / SCHEDULER)
    scaler = _mapping(_read_json(path / SCALER), path / SCALER) if fp16 else None
    progress = _mapping(_read_json(path / PROGRESS), path / PROGRESS, {f.name for f in fields(Progress)})
    counts = [progress[key] for key in ("epoch", "batches_in_epoch", "global_step")]
    if not all(type(n) is int and n >= 0 for n in counts) or not is_number(progress["best_top1"]):
        raise CheckpointError(f"{path / PROGRESS}: expected counts >= 0 and a number, got {progress}")
    return TrainingState(model, optimizer, scheduler, scaler, rng, Progress(**progress))


def _restore_rng(rng: dict[str, Any]) -> None:
    python, numpy = rng["python"], rng["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state(("MT19937", np.array(numpy["keys"], dtype=np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_training_state(accelerator: Accelerator, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> Progress:
    """Read (:func:`read_training_state`) and restore the model, optimizer, scheduler, scaler
    and this process's RNG states; ``CheckpointError`` names what does not fit."""
    state = read_training_state(path, accelerator.process_index, accelerator.num_processes,
                                accelerator.scaler is not None)
    unwrapped = accelerator.unwrap_model(model)
    try:
        check_fits(state.model, unwrapped, path / MODEL)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from this checkpoint; the configured model differs: {err}") from None
    unwrapped.load_state_dict(state.model)
    expected = set(scheduler.state_dict())
    if set(state.scheduler) != expected:
        raise CheckpointError(f"{path / SCHEDULER}: keys {sorted(state.scheduler)}, this scheduler has "
                              f"{sorted(expected)}")
    try:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if state.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state.scaler)
        _restore_rng(state.rng)
        accelerator.step = int(state.rng["accumulation_step"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot resume from this checkpoint; it does not match the configured "
                              f"optimizer or schedule, or its RNG states are damaged ({reason})") from None
    return state.progress


# -- run folders ------------------------------------------------------------------------------

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
