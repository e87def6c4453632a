"""The training/evaluation config: one YAML file, sections as typed dataclasses.

    model:     {name: timesformer_micro, num_classes: 6, ...}   # a variant + ModelConfig overrides
               # responsive_fields: fields.json  -> window_radius/window_span (ired-video fields)
    init:      {checkpoint: null, drop_head: true}              # local weights to start from
    reducer:   {name: topk, keep: 0.7}                          # ReducerConfig
    cascade:   {config: configs/cascade/demo_micro.yaml, ...}   # a DVT cascade of the model (optional)
    data:      {train: ..., val: ..., root: null, preprocess: {...}}
    optim / schedule / train / objective / eval / output

Everything is checked before any work starts: unknown keys and wrong types (``from_dict``),
each section's ranges (its ``__post_init__``), then the model and data overrides together and
impossible combinations (``validate``); every error names the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ired_video.cascade.model import CascadeConfig, check_config, load_cascade_config
from ired_video.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ReducerConfig,
    apply_overrides,
    from_dict,
    is_number,
    load_yaml,
    require,
    to_dict,
)
from ired_video.data.dataset import check_data_config
from ired_video.data.decoding import BACKENDS
from ired_video.explain.fields import settings_from_file
from ired_video.models.registry import data_config, model_config
from ired_video.reducers import REDUCERS, default_stages
from ired_video.reducers.base import MODES


@dataclass
class InitSection:
    checkpoint: Optional[str] = None  # official .pyth, timm/DeiT .pth/.safetensors, or ours
    drop_head: bool = True  # keep our classifier when the file's class count differs


@dataclass
class DataSection:
    train: Optional[str] = None  # Kinetics CSV, list file or class-folder root
    val: Optional[str] = None
    root: Optional[str] = None  # where CSV rows' videos live (default: next to the CSV)
    train_split: Optional[str] = None  # CSV 'split' column value to keep (e.g. train)
    val_split: Optional[str] = None
    backend: str = "auto"  # auto (PyAV, decord fallback) | pyav | decord | torchcodec
    num_workers: int = 2
    preprocess: dict[str, Any] = field(default_factory=dict)  # DataConfig overrides

    def __post_init__(self) -> None:
        choose(self.backend, "backend", BACKENDS)
        require(self.num_workers >= 0, "num_workers", self.num_workers, "at least 0 (0: load in the main process)")


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # for the whole (global) batch
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        choose(self.name, "name", ("adamw", "sgd"))
        require(is_number(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        require(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                "a number >= 0")
        require(is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        require(all(is_number(b) and 0 <= b < 1 for b in self.betas), "betas", list(self.betas),
                "two numbers in [0, 1)")


@dataclass
class ScheduleSection:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=list)  # epochs, for step
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr

    def __post_init__(self) -> None:
        choose(self.name, "name", ("cosine", "step", "constant"))
        require(is_number(self.warmup_epochs) and self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs,
                "a number >= 0")
        require(all(m >= 0 for m in self.milestones), "milestones", self.milestones, "epochs >= 0")
        require(is_number(self.gamma) and self.gamma > 0, "gamma", self.gamma, "a number > 0")
        require(is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio,
                "a fraction in [0, 1]")


@dataclass
class TrainSection:
    epochs: int = 10
    batch_size: int = 8  # clips per process per step
    grad_accum: int = 1
    clip_grad: Optional[float] = None  # max gradient norm; null = no clipping
    precision: Union[str, bool] = "no"  # no | bf16 | fp16 (YAML reads a bare no as false: the same)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) mixup; 0 = off
    cutmix: float = 0.0  # Beta(a, a) cutmix (same box in every frame); 0 = off
    seed: int = 0
    log_every: int = 10  # steps
    ckpt_every: int = 0  # steps; 0 = only at epoch ends
    keep_last: int = 2  # resumable checkpoints kept
    cpu: bool = False  # force the CPU even where a GPU is
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit; for tests)
    freeze: list[str] = field(default_factory=list)  # parameter prefixes kept fixed, e.g. [patch_embed]

    def __post_init__(self) -> None:
        require(all(isinstance(p, str) and p and not p.endswith(".") for p in self.freeze), "freeze",
                self.freeze, "a list of parameter-name prefixes such as [patch_embed, blocks.0]")
        if self.precision is False:
            self.precision = "no"
        choose(self.precision, "precision", ("no", "bf16", "fp16"))
        for key in ("epochs", "batch_size", "grad_accum", "log_every", "keep_last"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "at least 1")
        for key in ("seed", "ckpt_every", "max_steps"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "at least 0")
        if self.clip_grad is not None:
            require(is_number(self.clip_grad) and self.clip_grad > 0, "clip_grad", self.clip_grad,
                    "a gradient norm > 0, or null for no clipping")
        require(is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing",
                self.label_smoothing, "a number in [0, 1)")
        for key in ("mixup", "cutmix"):
            value = getattr(self, key)
            require(is_number(value) and value >= 0, key, value, "a Beta(a, a) parameter >= 0 (0: off)")


@dataclass
class ObjectiveSection:
    """Loss = ce * CE + distill * KL(teacher) + distill_tokens * MSE(tokens, teacher's)
    + keep_ratio * (kept - keep_target)^2 + policy * REINFORCE.

    REINFORCE's reward weighs accuracy and efficiency (``reward_accuracy``,
    ``reward_efficiency``; ``ired_video.reducers.objectives``). ``curriculum: groupwise``
    (IA-RED²): the interpreters learn one group at a time, the earlier ones fixed and the
    backbone frozen, then the backbone is fine-tuned with every interpreter fixed;
    ``curriculum_epochs`` gives each phase's epochs (one per interpreter, then the
    fine-tuning), summing to ``train.epochs`` (``ired_video.engine.curriculum``)."""

    ce: float = 1.0
    distill: float = 0.0
    distill_tokens: float = 0.0  # final patch tokens against the teacher's, pooled as the student merged them
    temperature: float = 1.0
    teacher: Optional[str] = None  # our checkpoint of the unreduced model; default: the initial weights
    keep_ratio: float = 0.0
    keep_target: float = 0.7
    policy: float = 0.0
    wrong_penalty: float = -1.0
    reward_accuracy: float = 1.0  # REINFORCE reward: accuracy - efficiency * kept^2 if correct,
    reward_efficiency: float = 1.0  # else accuracy * wrong_penalty
    freeze_backbone: bool = False  # train only the reducer's parameters (IA-RED² stage 1)
    curriculum: str = "none"  # none | groupwise (IA-RED²: interpreter groups one at a time, then the backbone)
    curriculum_epochs: list[int] = field(default_factory=list)  # groupwise: epochs per interpreter, then fine-tuning

    def __post_init__(self) -> None:
        choose(self.curriculum, "curriculum", ("none", "groupwise"))
        if self.curriculum == "groupwise":
            require(len(self.curriculum_epochs) >= 2 and all(e >= 1 for e in self.curriculum_epochs[:-1])
                    and self.curriculum_epochs[-1] >= 0, "curriculum_epochs", self.curriculum_epochs,
                    "epochs >= 1 per interpreter group, then the fine-tuning's epochs >= 0")
            require(not self.freeze_backbone, "freeze_backbone", self.freeze_backbone,
                    "false with curriculum=groupwise (the curriculum freezes what each phase leaves alone)")
        elif self.curriculum_epochs:
            raise ConfigError(f"curriculum_epochs={self.curriculum_epochs} needs curriculum=groupwise")
        for key in ("reward_accuracy", "reward_efficiency"):
            value = getattr(self, key)
            require(is_number(value) and value >= 0, key, value, "a reward weight >= 0")
        for key in ("ce", "distill", "distill_tokens", "keep_ratio", "policy"):
            value = getattr(self, key)
            require(is_number(value) and value >= 0, key, value, "a loss weight >= 0")
        require(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(is_number(self.keep_target) and 0 < self.keep_target <= 1, "keep_target", self.keep_target,
                "a fraction in (0, 1]")
        require(is_number(self.wrong_penalty), "wrong_penalty", self.wrong_penalty, "a finite number")


@dataclass
class EvalSection:
    clips: int = 1
    crops: int = 1
    every: int = 1  # epochs; 0 = only at the end
    batch_size: int = 8
    # warn when validation top-1 is still at chance after this share of the epochs (1: never)
    chance_warning_after: float = 0.25

    def __post_init__(self) -> None:
        for key in ("clips", "batch_size"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "at least 1")
        require(0.0 <= self.chance_warning_after <= 1.0, "chance_warning_after", self.chance_warning_after,
                "a share of the epochs in [0, 1]")
        require(self.crops in (1, 3), "crops", self.crops, "1 (centre) or 3 (along the long side)")
        require(self.every >= 0, "every", self.every, "at least 0 (0: only at the end)")


def choose(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, value, f"one of {allowed}")


@dataclass
class TrainConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "timesformer_micro"})
    init: InitSection = field(default_factory=InitSection)
    reducer: ReducerConfig = field(default_factory=ReducerConfig)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: str = "runs/train"
    # A DVT cascade of ``model`` (ired_video.cascade.model.CascadeConfig keys, and ``config``:
    # a YAML file of them); empty: a plain model. ``reducer`` then acts in the last stage.
    cascade: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """What a training config's YAML-shaped sections resolve to (``resolve``), the only form
    the rest of the code reads them in: the variant name, its ModelConfig overrides (a
    ``responsive_fields`` file read into windows), the ModelConfig, the preprocessing
    DataConfig, and the CascadeConfig (None for a plain model)."""

    variant: str
    overrides: dict[str, Any]
    model: ModelConfig
    preprocess: DataConfig
    cascade: Optional[CascadeConfig]


def resolve(cfg: TrainConfig) -> Resolved:
    """Resolve ``cfg``'s model, preprocessing and cascade sections into checked objects."""
    if "name" not in cfg.model:
        raise ConfigError("model.name is required (a variant, e.g. timesformer_micro)")
    overrides = model_overrides(cfg.model)
    model = model_config(cfg.model["name"], **overrides)
    variant = data_config(cfg.model["name"], model)
    preprocess = from_dict(DataConfig, {**dataclasses.asdict(variant), **cfg.data.preprocess},
                           prefix="data.preprocess.")
    cascade = None
    if cfg.cascade:
        cascade = load_cascade_config(cfg.cascade)
        if cfg.reducer.name != "none":
            cascade = dataclasses.replace(cascade, reducer=cfg.reducer)
    return Resolved(cfg.model["name"], overrides, model, preprocess, cascade)


def validate(cfg: TrainConfig) -> Resolved:
    """Check what each section cannot alone (each checks its own values when built): the
    model and data overrides together, the reducer's name and mode, combinations. Returns
    the resolved sections."""
    resolved = resolve(cfg)
    try:
        check_data_config(resolved.preprocess)
    except ConfigError as err:
        raise ConfigError(f"data.preprocess.{err}") from None
    choose(cfg.reducer.name, "reducer.name", REDUCERS)
    choose(cfg.reducer.mode, "reducer.mode", MODES)
    if cfg.objective.policy and cfg.reducer.name != "iared2":
        raise ConfigError("objective.policy trains IA-RED² interpreters: set reducer.name=iared2")
    if resolved.cascade is not None:
        _validate_cascade(cfg, resolved)
    if cfg.objective.freeze_backbone and cfg.reducer.name not in ("iared2",):
        raise ConfigError("objective.freeze_backbone leaves only reducer parameters to train: "
                          "only iared2 has any")
    if cfg.objective.curriculum == "groupwise":
        _validate_curriculum(cfg, resolved)
    if cfg.train.freeze and (cfg.objective.freeze_backbone or cfg.objective.curriculum != "none"):
        raise ConfigError("train.freeze: objective.freeze_backbone and objective.curriculum already decide "
                          "what trains; use one or the other")
    return resolved


def _validate_curriculum(cfg: TrainConfig, resolved: Resolved) -> None:
    """The group-wise curriculum needs IA-RED², one phase per interpreter plus the
    fine-tuning, and phases that fill ``train.epochs``."""
    if cfg.reducer.name != "iared2":
        raise ConfigError("objective.curriculum=groupwise trains IA-RED² interpreters group by group: "
                          "set reducer.name=iared2")
    if resolved.cascade is not None:
        raise ConfigError("objective.curriculum=groupwise is for plain models, not a cascade")
    stages = sorted(set(cfg.reducer.stages if cfg.reducer.stages is not None
                        else default_stages(resolved.model.depth)))
    epochs = cfg.objective.curriculum_epochs
    if len(epochs) != len(stages) + 1:
        raise ConfigError(f"objective.curriculum_epochs={epochs}: expected {len(stages) + 1} entries, the epochs "
                          f"of each of the {len(stages)} interpreters (stages {list(stages)}) then the fine-tuning's")
    if not cfg.objective.policy:
        raise ConfigError("objective.curriculum=groupwise: the interpreters learn by REINFORCE, "
                          "set objective.policy > 0")
    if epochs[-1] and not (cfg.objective.ce or cfg.objective.distill or cfg.objective.distill_tokens):
        raise ConfigError(f"objective.curriculum_epochs={epochs} fine-tunes the backbone for {epochs[-1]} epochs: "
                          "set objective.ce (or distill) > 0, or give the fine-tuning 0 epochs")
    if sum(epochs) != cfg.train.epochs:
        raise ConfigError(f"objective.curriculum_epochs={epochs} sum to {sum(epochs)} but train.epochs="
                          f"{cfg.train.epochs}: make them agree")


def _validate_cascade(cfg: TrainConfig, resolved: Resolved) -> None:
    check_config(resolved.model, resolved.cascade)
    if (cfg.objective.policy or cfg.objective.freeze_backbone or cfg.objective.keep_ratio
            or cfg.objective.distill_tokens):
        raise ConfigError("cascade: objective.policy, keep_ratio, distill_tokens and freeze_backbone are for "
                          "plain models")


def model_overrides(model: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig overrides of the ``model`` section: every key but ``name``, with
    ``responsive_fields: FILE`` (written by ``ired-video fields``) replaced by the
    ``window_radius``/``window_span`` it holds, checked against the model it would restrict."""
    overrides = {k: v for k, v in model.items() if k not in ("name", "responsive_fields")}
    path = model.get("responsive_fields")
    if path is None:
        return overrides
    if not isinstance(path, str):
        raise ConfigError(f"model.responsive_fields: expected a path to a fields JSON file, got {path!r}")
    clash = sorted({"window_radius", "window_span"} & set(overrides))
    if clash:
        raise ConfigError(f"model.responsive_fields and model.{clash[0]} both set the windows: keep one")

    return {**overrides, **settings_from_file(path, model_config(model["name"], **overrides))}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_with_base(path: Union[str, Path], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a ``_base_: other.yaml`` key (relative to this file) is loaded first
    and this file's sections are merged onto it, key by key."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    values = load_yaml(path)
    base = values.pop("_base_", None)
    if base is None:
        return values
    return _merge(load_with_base(path.parent / base, (*seen, path)), values)


def load_train_config(path: Optional[Union[str, Path]], overrides: Optional[list[str]] = None) -> TrainConfig:
    """YAML file (optional, may name a ``_base_``) + ``key=value`` overrides -> checked TrainConfig."""
    values = load_with_base(path) if path is not None else {}
    values = apply_overrides(values, overrides or [])
    try:
        cfg = from_dict(TrainConfig, values)
        validate(cfg)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    return cfg


def dump(cfg: TrainConfig) -> dict[str, Any]:
    return to_dict(cfg)
