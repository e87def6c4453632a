"""The training loop on accelerate: one CPU to many GPUs, resumable, compute-logged.

    build everything from a checked TrainConfig -> for each epoch: shuffle by (seed,
    epoch), train with accumulation/clipping/mixed precision, log every N steps (loss
    parts, tokens kept, GMACs per clip), checkpoint atomically -> evaluate -> keep best.

Run it directly or under ``accelerate launch`` / ``torchrun``; every process runs this
same code. The LR scheduler steps once per optimizer step and is not prepared (see
``schedule.py``); the data order and augmentation are functions of (seed, epoch, index),
and torch's generators are reseeded from (seed, epoch, batch, process) before every batch
(drop path, dropout), so a resumed run continues exactly as an uninterrupted one. Logged
losses and the per-epoch bad-file summary cover all processes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ired_video.build import apply_reducer, create_model
from ired_video.cascade.model import build_cascade
from ired_video.config import ConfigError, DataConfig, from_dict
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import BadFileTracker, VideoDataset
from ired_video.engine.accelerator import new_accelerator
from ired_video.engine.checkpoints import (
    Progress,
    check_folder,
    clear_run,
    earlier_run,
    find_checkpoint,
    load_training_state,
    recover,
    save_training_state,
)
from ired_video.engine.config import ObjectiveSection, Resolved, TrainConfig, dump, resolve
from ired_video.engine.curriculum import (
    drop_frozen_grads,
    end_curriculum,
    interpreters,
    phase_objective,
    phase_of_epoch,
    set_phase,
)
from ired_video.engine.evaluate import evaluate, near_chance
from ired_video.engine.freezing import freeze, hold_frozen_modules
from ired_video.engine.logger import StepLogger
from ired_video.engine.losses import mix, objective, soft_targets
from ired_video.engine.schedule import lr_multiplier
from ired_video.models.registry import model_config
from ired_video.models.timesformer import TimeSformer
from ired_video.models.weights import save_checkpoint
from ired_video.paths import writable_dir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); what could be saved was saved."""


class EpochPermutation(Sampler[int]):
    """A fresh permutation per epoch, drawn from (seed, epoch) alone."""

    def __init__(self, size: int, seed: int, epoch: int) -> None:
        self.size, self.seed, self.epoch = size, seed, epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


@dataclasses.dataclass
class Datasets:
    train: Optional[VideoDataset]
    val: Optional[VideoDataset]
    data_config: DataConfig


def build_datasets(cfg: TrainConfig, resolved: Resolved) -> Datasets:
    """Annotations -> train/val datasets; class names from the training annotations
    (else the validation ones, else the preprocess settings)."""
    base = dataclasses.asdict(resolved.preprocess)  # recipe defaults + preprocess
    class_names: list[str] = list(base.get("class_names") or [])
    train_ann = val_ann = None
    if cfg.data.train:
        train_ann = load_annotations(cfg.data.train, video_root=cfg.data.root, split=cfg.data.train_split)
        class_names = train_ann.class_names
    if cfg.data.val:
        val_ann = load_annotations(cfg.data.val, video_root=cfg.data.root, split=cfg.data.val_split,
                                   class_names=class_names or None)
        class_names = class_names or val_ann.class_names
    preprocess = from_dict(DataConfig, {**base, "class_names": class_names})
    train = None if train_ann is None else VideoDataset(
        train_ann.records, preprocess, "train", backend=cfg.data.backend, seed=cfg.train.seed)
    val = None if val_ann is None else VideoDataset(
        val_ann.records, preprocess, "test", num_clips=cfg.eval.clips, num_crops=cfg.eval.crops,
        backend=cfg.data.backend, seed=cfg.train.seed)
    return Datasets(train, val, preprocess)


def build_model(cfg: TrainConfig, data_config: DataConfig, resolved: Optional[Resolved] = None) -> TimeSformer:
    """The variant with overrides, initial weights, the data config, and the reducer (a
    cascade when configured); ``resolved``: ``cfg``'s sections, resolved when not given."""
    resolved = resolved or resolve(cfg)
    overrides = dict(resolved.overrides)
    classes = len(data_config.class_names)
    if classes and overrides.setdefault("num_classes", classes) != classes:
        raise ConfigError(f"model.num_classes={overrides['num_classes']} but the data has {classes} classes")
    if resolved.cascade is not None:
        return build_cascade(model_config(resolved.variant, **overrides), resolved.cascade, data_config,
                             checkpoint=cfg.init.checkpoint, drop_head=cfg.init.drop_head)
    model = create_model(resolved.variant, checkpoint=cfg.init.checkpoint, drop_head=cfg.init.drop_head,
                         **overrides)
    if data_config.crop_size % model.config.patch_size:
        raise ConfigError(f"data.preprocess.crop_size={data_config.crop_size} is not a multiple of the model's "
                          f"patch_size={model.config.patch_size}")
    model.data_config = data_config
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.optim.weight_decay)
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)


def _freeze_backbone(model: TimeSformer) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("reducers.")


def _step_row(accelerator: Accelerator, epoch: int, step: int, loss: torch.Tensor, parts: dict[str, float],
              info: Any, lr: float, clips_per_s: float) -> dict[str, Any]:
    """The logged row: loss, its parts, tokens kept and GMACs as means over every process's batch."""
    state = info.state
    kept = state.real_tokens().float() / (state.num_frames_in * state.num_patches)  # after the last reducer
    local = [float(loss.detach()), *parts.values(), float(kept.mean()), float(info.gmacs.mean())]
    means = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device), "mean").tolist()
    return {"epoch": epoch, "step": step, "loss": means[0], **dict(zip(parts, means[1:-2])), "lr": lr,
            "tokens_kept": means[-2], "gmacs_per_clip": means[-1], "clips_per_s": clips_per_s}


@dataclasses.dataclass
class _Run:
    """What one training run holds from epoch to epoch."""

    cfg: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    data: Datasets
    model: nn.Module
    teacher: Optional[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    progress: Progress
    logger: StepLogger
    batches_per_epoch: int
    curriculum: bool
    bad_files: BadFileTracker = dataclasses.field(default_factory=BadFileTracker)

    @property
    def state(self) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        return self.model, self.optimizer, self.scheduler


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict[str, Any]:
    """Train as configured; returns the final evaluation report (empty without val data).

    A new run (no ``resume``) refuses a folder holding an earlier run's checkpoints or logs,
    whose newer step numbers ``--resume auto`` would otherwise pick and whose pruning would
    delete the new run's checkpoints; ``overwrite=True`` removes those outputs first.
    Everything that can be checked before training is (the output folder, the precision on
    this device, the checkpoint to resume from); errors are ``ConfigError``/``CheckpointError``.
    """
    run = _start(cfg, resume, overwrite)
    report: dict[str, Any] = {}
    for epoch in range(run.progress.epoch, cfg.train.epochs):
        stopped = _train_epoch(run, epoch)
        evaluated = _end_epoch(run, epoch, stopped)
        report = report if evaluated is None else evaluated
        if stopped:
            break
    if run.curriculum:
        end_curriculum(run.accelerator.unwrap_model(run.model))
    run.accelerator.end_training()
    return report


def _open_run(cfg: TrainConfig, resume: Optional[str], overwrite: bool) -> tuple[Accelerator, Path, Optional[Path]]:
    """The accelerator, the run folder (an earlier run's files cleared when overwriting) and
    the checkpoint to resume from, after checking the folder and the settings."""
    run_dir = Path(cfg.output)
    left = [] if resume else earlier_run(run_dir)
    if left and not overwrite:
        raise ConfigError(f"{run_dir} already holds a training run ({', '.join(left)}): continue it with "
                          "--resume auto, start over with --overwrite, or set output= to another folder")
    if cfg.data.train is None:
        raise ConfigError("data.train is required for training")
    curriculum = cfg.objective.curriculum == "groupwise"
    needs_unused = cfg.reducer.name == "iared2" or cfg.objective.freeze_backbone or curriculum
    accelerator = new_accelerator(
        cpu=cfg.train.cpu, mixed_precision=cfg.train.precision, gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=_trackers(), project_dir=str(run_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=needs_unused)])
    check_precision(cfg.train.precision, accelerator.device)
    writable_dir(run_dir, "output=")
    resume_from = _checkpoint_to_resume(accelerator, run_dir, resume) if resume else None
    if left:
        accelerator.wait_for_everyone()  # every process has looked before the main one deletes
        if accelerator.is_main_process:
            clear_run(run_dir)
        accelerator.wait_for_everyone()
    return accelerator, run_dir, resume_from


def _start(cfg: TrainConfig, resume: Optional[str], overwrite: bool) -> _Run:
    """Open the run folder, build data, model, optimizer and schedule, and restore them from
    a checkpoint when resuming."""
    accelerator, run_dir, resume_from = _open_run(cfg, resume, overwrite)
    curriculum = cfg.objective.curriculum == "groupwise"
    set_seed(cfg.train.seed)
    resolved = resolve(cfg)
    data = build_datasets(cfg, resolved)
    batches_per_epoch = len(data.train) // (cfg.train.batch_size * accelerator.num_processes)
    if batches_per_epoch == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} x {accelerator.num_processes} processes "
                          f"exceeds the {len(data.train)} training clips")
    model = build_model(cfg, data.data_config, resolved)
    teacher = _teacher(cfg, model, accelerator)
    if resolved.cascade is None:  # a cascade got its reducer when built
        apply_reducer(model, cfg.reducer)
    if cfg.objective.freeze_backbone:
        _freeze_backbone(model)
    freeze(model, cfg.train.freeze)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(cfg.schedule, steps_per_epoch, steps_per_epoch * cfg.train.epochs))
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    if resume_from is not None:
        progress = load_training_state(accelerator, resume_from, model, optimizer, scheduler)
        finished = " (the run had finished: nothing left to train)" if progress.epoch >= cfg.train.epochs else ""
        accelerator.print(f"resumed from {resume_from}: epoch {progress.epoch}, {progress.batches_in_epoch} "
                          f"batches into it, step {progress.global_step}{finished}")
    _write_run_files(accelerator, run_dir, cfg)
    # events under run_dir/tensorboard/; on resume, TensorBoard drops the killed run's later steps
    accelerator.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": progress.global_step + 1}}
                              if resume else {})
    logger = StepLogger(accelerator, run_dir)
    if resume:
        logger.resume_at(progress.global_step, progress.epoch)  # rows of steps after the checkpoint go
    return _Run(cfg, accelerator, run_dir, data, model, teacher, optimizer, scheduler, progress, logger,
                batches_per_epoch, curriculum)


def _train_epoch(run: _Run, epoch: int) -> bool:
    """One epoch of optimizer steps (from where a resumed run stopped); True when
    ``train.max_steps`` ended the run."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    run.data.train.set_epoch(epoch)
    objective_cfg = _enter_phase(cfg, accelerator.unwrap_model(run.model), epoch) if run.curriculum else cfg.objective
    sampler = EpochPermutation(len(run.data.train), cfg.train.seed, epoch)
    loader = accelerator.prepare_data_loader(DataLoader(
        run.data.train, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
        drop_last=True))
    skipped = progress.batches_in_epoch if progress.epoch == epoch else 0
    if skipped:
        loader = accelerator.skip_first_batches(loader, skipped)
    run.model.train()
    hold_frozen_modules(accelerator.unwrap_model(run.model), cfg.train.freeze)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", initial=skipped, total=run.batches_per_epoch,
               disable=not accelerator.is_main_process)
    tick = time.perf_counter()
    for index, batch in enumerate(bar, start=skipped):
        run.bad_files.update(batch)
        torch.manual_seed(step_seed(cfg.train.seed, epoch, index, accelerator.process_index))
        with accelerator.accumulate(run.model):
            loss, parts, info = _train_step(cfg, run.model, run.teacher, batch, epoch, index, accelerator,
                                            objective_cfg)
            if not math.isfinite(float(loss.detach())):
                _stop_on_nan(accelerator, run.run_dir, cfg, progress, epoch, index, parts, run.state)
            accelerator.backward(loss)
            if run.curriculum:
                drop_frozen_grads(run.model)
            if accelerator.sync_gradients and cfg.train.clip_grad:
                accelerator.clip_grad_norm_(run.model.parameters(), cfg.train.clip_grad)
            run.optimizer.step()
            run.optimizer.zero_grad()
        progress.batches_in_epoch = index + 1
        if not accelerator.sync_gradients:
            continue
        run.scheduler.step()
        progress.global_step += 1
        if progress.global_step % cfg.train.log_every == 0 or index + 1 == run.batches_per_epoch:
            _log_step(run, bar, epoch, loss, parts, info, time.perf_counter() - tick)
            tick = time.perf_counter()
        if cfg.train.ckpt_every and progress.global_step % cfg.train.ckpt_every == 0:
            save_training_state(accelerator, run.run_dir, progress, cfg.train.keep_last, *run.state)
        if cfg.train.max_steps and progress.global_step >= cfg.train.max_steps:
            break
    return bool(cfg.train.max_steps and progress.global_step >= cfg.train.max_steps)


def _log_step(run: _Run, bar: tqdm, epoch: int, loss: torch.Tensor, parts: dict[str, float], info: Any,
              seconds: float) -> None:
    """A log row (every process's mean) to the logs and the progress bar."""
    cfg = run.cfg
    clips_per_s = cfg.train.batch_size * run.accelerator.num_processes * cfg.train.log_every / max(seconds, 1e-9)
    row = _step_row(run.accelerator, epoch, run.progress.global_step, loss, parts, info,
                    run.scheduler.get_last_lr()[0], clips_per_s)
    run.logger.log(row, run.progress.global_step)
    bar.set_postfix(loss=f"{row['loss']:.3f}", kept=f"{row['tokens_kept']:.2f}", gmacs=f"{row['gmacs_per_clip']:.3f}")


def _end_epoch(run: _Run, epoch: int, stopped: bool) -> Optional[dict[str, Any]]:
    """Report bad files, evaluate when due (the report, else None) and save the state."""
    cfg, progress = run.cfg, run.progress
    _report_bad_files(run.accelerator, run.bad_files, epoch)
    last_epoch = epoch + 1 == cfg.train.epochs or stopped
    if not stopped or progress.batches_in_epoch == run.batches_per_epoch:
        run.progress = progress = Progress(epoch + 1, 0, progress.global_step, progress.best_top1)
    report = None
    if run.data.val is not None and (last_epoch or (cfg.eval.every and (epoch + 1) % cfg.eval.every == 0)):
        # before saving the state, so a resumed run knows the best score so far
        report = _evaluate_and_keep_best(cfg, run.accelerator, run.model, run.data.val, run.run_dir, progress, epoch,
                                         run.logger)
    save_training_state(run.accelerator, run.run_dir, progress, cfg.train.keep_last, *run.state)
    return report


def _enter_phase(cfg: TrainConfig, model: nn.Module, epoch: int) -> ObjectiveSection:
    """Set the group-wise curriculum's phase for ``epoch`` (a function of the epoch alone,
    so a resumed run is in the same phase); returns that phase's objective."""
    phase = phase_of_epoch(cfg.objective.curriculum_epochs, epoch)
    groups = len(interpreters(model))
    set_phase(model, phase)
    log.info("epoch %d: curriculum phase %d (%s)", epoch + 1, phase,
             "backbone fine-tuning" if phase == groups else f"interpreter {phase + 1} of {groups}")
    return phase_objective(cfg.objective, phase, groups)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a mixed precision this device would silently run in fp32 (accelerate does)."""
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU (this run is on the CPU, where it would silently "
                          "train in fp32): use train.precision=bf16 or no")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16: this GPU does not support bfloat16: use train.precision=fp16 or no")


def step_seed(seed: int, epoch: int, index: int, process: int) -> int:
    """The seed of torch's generators for one batch of one process: a function of these alone."""
    return int(np.random.SeedSequence([seed, epoch, index, process]).generate_state(1, np.uint64)[0])


def _checkpoint_to_resume(accelerator: Accelerator, run_dir: Path, resume: str) -> Path:
    """The checkpoint folder to resume from, its file names checked (nothing read yet). With
    ``auto`` the main process first finishes or removes what a kill mid-save left."""
    if resume == "auto":
        if accelerator.is_main_process:
            for line in recover(run_dir):
                accelerator.print(f"{run_dir / 'checkpoints'}: {line}")
        accelerator.wait_for_everyone()
    path = find_checkpoint(run_dir, resume)
    check_folder(path, accelerator.num_processes, accelerator.scaler is not None)
    return path


def _report_bad_files(accelerator: Accelerator, bad_files: BadFileTracker, epoch: int) -> None:
    """The epoch's bad files seen by every process, printed once; then the tracker is reset."""
    every = BadFileTracker()
    for paths, replaced in gather_object([(sorted(bad_files.paths), bad_files.replaced_items)]):
        every.merge(paths, replaced)
    if every.count:
        accelerator.print(f"epoch {epoch + 1}: {every.summary()}")
    bad_files.reset()


def _train_step(cfg: TrainConfig, model: nn.Module, teacher: Optional[nn.Module], batch: dict[str, Any],
                epoch: int, index: int, accelerator: Accelerator, objective_cfg: Optional[ObjectiveSection] = None
                ) -> tuple[torch.Tensor, dict[str, float], Any]:
    video, labels = batch["video"], batch["label"]
    classes = accelerator.unwrap_model(model).config.num_classes
    targets = soft_targets(labels, classes, cfg.train.label_smoothing)
    rng = np.random.default_rng([cfg.train.seed, epoch, index, accelerator.process_index])
    video, targets = mix(video, targets, cfg.train.mixup, cfg.train.cutmix, rng)
    teacher_logits = teacher_info = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits, teacher_info = teacher(video, return_info=True)
    logits, info = model(video, return_info=True)
    token_states = (info.state, teacher_info.state) if cfg.objective.distill_tokens else None
    loss, parts = objective(objective_cfg or cfg.objective, logits, targets, labels, info.records, teacher_logits,
                            getattr(info, "stage_logits", None), token_states)
    return loss, parts, info


def _teacher(cfg: TrainConfig, model: TimeSformer, accelerator: Accelerator) -> Optional[nn.Module]:
    """The frozen unreduced model for distillation: a checkpoint, or the initial weights."""
    if not (cfg.objective.distill or cfg.objective.distill_tokens):
        return None
    teacher = create_model(checkpoint=cfg.objective.teacher) if cfg.objective.teacher else copy.deepcopy(model)
    apply_reducer(teacher, "none")
    teacher.requires_grad_(False)
    return teacher.eval().to(accelerator.device)


def _evaluate_and_keep_best(cfg: TrainConfig, accelerator: Accelerator, model: nn.Module, val: VideoDataset,
                            run_dir: Path, progress: Progress, epoch: int, logger: StepLogger) -> dict[str, Any]:
    unwrapped = accelerator.unwrap_model(model)
    report = evaluate(unwrapped, val, accelerator, cfg.eval.batch_size, cfg.data.num_workers,
                      run_dir / "eval_views.jsonl", desc=f"eval epoch {epoch + 1}")
    if accelerator.is_main_process:
        report["epoch"] = epoch + 1
        if (epoch + 1) >= cfg.eval.chance_warning_after * cfg.train.epochs and cfg.eval.chance_warning_after < 1:
            warning = near_chance(report["top1"], unwrapped.config.num_classes, report["videos"])
            if warning:
                log.warning("epoch %d: %s", epoch + 1, warning)
                report["warning"] = warning
        (run_dir / "eval_report.json").write_text(json.dumps(report, indent=1))
        logger.log_evaluation(report, progress.global_step)
        accelerator.print(f"epoch {epoch + 1}: top-1 {report['top1']:.3f}, top-5 {report['top5']:.3f}, "
                          f"{report['gmacs_per_view']:.4f} GMACs/view over {report['videos']} videos")
        save_checkpoint(run_dir / "last.pth", unwrapped, epoch=epoch + 1, metrics=report)
        if report["top1"] > progress.best_top1:
            progress.best_top1 = report["top1"]
            save_checkpoint(run_dir / "best.pth", unwrapped, epoch=epoch + 1, metrics=report)
    return report


def _stop_on_nan(accelerator: Accelerator, run_dir: Path, cfg: TrainConfig, progress: Progress, epoch: int,
                 index: int, parts: dict[str, float], state: tuple[nn.Module, Any, Any]) -> None:
    """The loss is not finite before backward: the weights are still good, so save them."""
    progress.batches_in_epoch = index
    saved = save_training_state(accelerator, run_dir, progress, cfg.train.keep_last + 1, *state)
    raise TrainingError(f"loss became non-finite at epoch {epoch + 1}, batch {index} ({parts}); the state "
                        f"before this batch is saved in {saved}. Lower optim.lr, set train.clip_grad, or "
                        "check the data; resume with --resume auto.")


def _trackers() -> Optional[list[str]]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return ["tensorboard"]


def _write_run_files(accelerator: Accelerator, run_dir: Path, cfg: TrainConfig) -> None:
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dump(cfg), sort_keys=False))
