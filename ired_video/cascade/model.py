"""A DVT cascade of TimeSformers ("Not All Images are Worth 16x16 Words", for video).

Stages are full TimeSformers of the same backbone (depth, width, heads, classes) on
increasing token counts; each has its own weights and head. A clip runs stage 1; if its
max softmax probability reaches ``thresholds[0]`` it exits there, else it goes on to stage
2, and so on; the last stage answers every clip that reaches it. Within a batch only the
clips that have not exited run the next stage (per-clip routing: a clip's answer and bill
never depend on the other clips of its batch).

Stage inputs come from the one clip tensor (B, C, T, H, W) given to the cascade, which is
the last stage's input (the checkpoint's data config: T frames, H = W = crop): a stage
with ``frames`` F < T takes frames ``floor((i + 0.5) * T / F)`` (segment centres); with
``size`` S < H the frames are resized to S x S (bilinear, antialiased); ``patch_size``
sets its patch grid (S / p per side). Either coarser patches or a smaller image give a
coarser grid; the first is DVT's DeiT setting, the second its T2T setting.

Training (``model.train()`` or ``all_exits=True``) runs every stage on every clip and
returns every stage's logits (``CascadeInfo.stage_logits``) for the summed loss; the
per-stage cumulative GMACs (``stage_gmacs``) feed threshold calibration
(``ired_video.cascade.calibration``). Reuse between stages: ``ired_video.cascade.reuse``.

Every stage starts from one set of weights (``build_cascade(..., checkpoint=...)``): the
patch-embedding kernel is resampled to the stage's patch size (FlexiViT's pseudo-inverse
resize, timm ``resample_patch_embed``), position embeddings 2-D (bicubic) and time
embeddings 1-D (nearest), as ``ired_video.models.weights`` does for any checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from torch import Tensor, nn

from ired_video.cascade.calibration import choose
from ired_video.cascade.reuse import (
    FEATURE_VARIANTS,
    KINDS,
    RELATION_EXPANSION,
    RELATION_VARIANTS,
    CascadeHooks,
    FeatureReuse,
    NormExtension,
    OfficialRelationReuse,
    RelationReuse,
    chunk_layers,
    concat_logits,
    nearest_indices,
    resize_relations,
    resize_relations_dvt,
    split_layers,
)
from ired_video.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ReducerConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from ired_video.models.timesformer import ForwardInfo, TimeSformer, evaluating
from ired_video.models.weights import Checkpoint, load_checkpoint, load_weights
from ired_video.reducers import apply_reducer, reducer_config
from ired_video.tokens import NO_HOOKS, BlockHooks, TokenState

NEVER_EXIT = 2.0  # a threshold above any probability: every clip goes on


@dataclass
class StageConfig:
    """One stage's input: frames taken from the clip, image side, patch size (None: the backbone's)."""

    frames: Optional[int] = None
    size: Optional[int] = None
    patch_size: Optional[int] = None


@dataclass
class CascadeConfig:
    """A cascade: its stages (cheapest first), exit thresholds and reuse switches.

    thresholds: one per stage but the last; a clip exits at stage k when its max softmax
        probability >= thresholds[k]. None: never exit (every stage runs).
    feature_variant: "official" (DVT: one feature MLP per downstream block, norm2 over the
        concatenation [x; f], nearest x2 + average pooling) or "shared" (one MLP per stage,
        norm2 on x only, trilinear); ``ired_video.cascade.reuse``.
    relation_variant: "official" (DVT: the previous stage's logits, 1x1 convolutions
        L*H -> 3*L*H -> L*H) or "all_upstream" (every upstream stage, three layers of width
        ``relation_hidden``, summed).
    feature_hidden / feature_dim: the feature-reuse MLP, D -> 128 -> 48 as DVT.
    relation_hidden: width of the all-upstream relation MLP (the official one is 3*L*H wide).
    reducer: a token reducer inside the last stage (``ReducerConfig`` fields).
    calibration: the threshold table ``calibrate`` stored (rows of p, thresholds, GMACs,
        accuracy on the held-out split), read by ``set_budget``.
    """

    stages: list[StageConfig] = field(default_factory=list)
    thresholds: Optional[list[float]] = None
    feature_reuse: bool = True
    relation_reuse: bool = True
    feature_variant: str = "official"
    relation_variant: str = "official"
    feature_hidden: int = 128
    feature_dim: int = 48
    relation_hidden: int = 64
    reducer: Optional[ReducerConfig] = None
    calibration: list[dict[str, Any]] = field(default_factory=list)


def load_cascade_config(values: Union[str, Path, dict[str, Any]], overrides: Optional[list[str]] = None,
                        prefix: str = "cascade.") -> CascadeConfig:
    """A YAML file, or a mapping whose optional ``config`` key names one, -> CascadeConfig.

    Keys given next to ``config`` override the file's. Errors name the file and the key.
    """
    where = ""
    if isinstance(values, (str, Path)):
        where, values = f"{values}: ", load_yaml(values)
    elif "config" in values:
        values = dict(values)
        path = values.pop("config")
        where, values = f"{path}: ", {**load_yaml(path), **values}
    values = apply_overrides(values, overrides or [])
    try:
        return from_dict(CascadeConfig, values, prefix=prefix)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def stage_model_config(backbone: ModelConfig, stage: StageConfig, index: int) -> ModelConfig:
    """The backbone with a stage's image size, patch size and frames."""
    values = {"img_size": stage.size or backbone.img_size, "patch_size": stage.patch_size or backbone.patch_size,
              "num_frames": stage.frames or backbone.num_frames}
    try:
        return dataclasses.replace(backbone, **values)
    except ConfigError as err:
        raise ConfigError(f"cascade.stages[{index}]: {err}") from None


def check_config(backbone: ModelConfig, cfg: CascadeConfig) -> None:
    """What the dataclass cannot check; errors name the key."""
    count = len(cfg.stages)
    if count < 2:
        raise ConfigError(f"cascade.stages: a cascade needs at least 2 stages, got {count}")
    last = stage_model_config(backbone, cfg.stages[-1], count - 1)
    for index, stage in enumerate(cfg.stages):
        model = stage_model_config(backbone, stage, index)
        if model.num_frames > last.num_frames or model.img_size > last.img_size:
            raise ConfigError(f"cascade.stages[{index}]: {model.num_frames} frames of {model.img_size} px; no stage "
                              f"may take more than the last ({last.num_frames} of {last.img_size} px), whose input "
                              "the cascade is given")
    if cfg.thresholds is not None and len(cfg.thresholds) != count - 1:
        raise ConfigError(f"cascade.thresholds: expected {count - 1} values (one per stage but the last), "
                          f"got {len(cfg.thresholds)}")
    if cfg.relation_reuse and backbone.attention_type != "divided_space_time":
        raise ConfigError("cascade.relation_reuse: defined for divided_space_time attention only; "
                          f"model.attention_type is {backbone.attention_type}")
    reducing = cfg.reducer is not None and cfg.reducer.name != "none"
    if cfg.relation_reuse and reducing:
        raise ConfigError("cascade.reducer: a reducer in the last stage changes its token grid, onto which "
                          "relation reuse cannot map upstream attention; set cascade.relation_reuse=false")
    if cfg.feature_variant not in FEATURE_VARIANTS:
        raise ConfigError(f"cascade.feature_variant: expected one of {', '.join(FEATURE_VARIANTS)}, "
                          f"got {cfg.feature_variant!r}")
    if cfg.relation_variant not in RELATION_VARIANTS:
        raise ConfigError(f"cascade.relation_variant: expected one of {', '.join(RELATION_VARIANTS)}, "
                          f"got {cfg.relation_variant!r}")
    if cfg.relation_reuse and (backbone.window_radius is not None or backbone.window_span is not None):
        raise ConfigError("cascade.relation_reuse: window-masked attention logits (-inf) cannot feed the "
                          "relation MLP; set cascade.relation_reuse=false or drop model.window_*")
    if min(cfg.feature_hidden, cfg.feature_dim, cfg.relation_hidden) < 1:
        raise ConfigError("cascade.feature_hidden, cascade.feature_dim and cascade.relation_hidden must be >= 1")


@dataclass
class CascadeInfo(ForwardInfo):
    """``ForwardInfo`` plus the cascade's routing, per clip.

    exit_stage: (B,) long, 0-based stage whose answer the clip got.
    stage_logits: per stage (B, classes) logits, when every stage ran (training,
        ``all_exits``); else empty.
    stage_gmacs: (B, K) cumulative GMACs to the end of each stage (stages a clip did not
        run: NaN).
    gmacs: what each clip really cost (all stages it ran, reuse modules included).
    tokens: (B, total blocks of all stages), 0 for blocks a clip did not run.
    """

    exit_stage: Optional[Tensor] = None
    stage_logits: list[Tensor] = field(default_factory=list)
    stage_gmacs: Optional[Tensor] = None


class Cascade(nn.Module):
    """Stages of TimeSformers with early exit and DVT's feature and relationship reuse."""

    def __init__(self, backbone: ModelConfig, cascade: CascadeConfig, data_config: Optional[DataConfig] = None
                 ) -> None:
        super().__init__()
        check_config(backbone, cascade)
        self.config = backbone
        self.cascade_config = cascade
        self.stage_configs = [stage_model_config(backbone, s, i) for i, s in enumerate(cascade.stages)]
        last = self.stage_configs[-1]
        self.data_config = data_config or DataConfig(num_frames=last.num_frames, crop_size=last.img_size)
        self.stages = nn.ModuleList(TimeSformer(cfg, self.data_config) for cfg in self.stage_configs)
        # Per downstream stage k (key "k"): feature_reuse (official: one FeatureReuse per
        # block; shared: one), feature_norm (official only: per block the extra entries of
        # norm2), feature_in (per block fc1's extra columns); relation_reuse "j_k_kind" per
        # upstream stage j (official: j = k - 1 only).
        self.feature_reuse = nn.ModuleDict()
        self.feature_norm = nn.ModuleDict()
        self.feature_in = nn.ModuleDict()
        self.relation_reuse = nn.ModuleDict()
        dim, depth, extra = backbone.embed_dim, backbone.depth, cascade.feature_dim
        hidden = int(dim * backbone.mlp_ratio)
        channels = depth * backbone.num_heads
        official_features = cascade.feature_variant == "official"
        for k in range(1, len(self.stages)):
            if cascade.feature_reuse:
                if official_features:
                    self.feature_reuse[str(k)] = nn.ModuleList(
                        FeatureReuse(dim, cascade.feature_hidden, extra, "dvt") for _ in range(depth))
                    self.feature_norm[str(k)] = nn.ModuleList(NormExtension(extra) for _ in range(depth))
                else:
                    self.feature_reuse[str(k)] = FeatureReuse(dim, cascade.feature_hidden, extra, "trilinear")
                layers = nn.ModuleList(nn.Linear(extra, hidden, bias=False) for _ in range(depth))
                for layer in layers:
                    nn.init.zeros_(layer.weight)
                self.feature_in[str(k)] = layers
            if cascade.relation_reuse:
                for j in self._relation_sources(k):
                    for kind in KINDS:
                        self.relation_reuse[f"{j}_{k}_{kind}"] = (
                            OfficialRelationReuse(channels, RELATION_EXPANSION)
                            if cascade.relation_variant == "official"
                            else RelationReuse(channels, cascade.relation_hidden, channels))
        if cascade.reducer is not None:
            self.apply_last_stage_reducer(cascade.reducer)

    def _relation_sources(self, k: int) -> list[int]:
        """Upstream stages whose attention logits stage k reuses."""
        return [k - 1] if self.cascade_config.relation_variant == "official" else list(range(k))

    # ------------------------------------------------------------- settings
    @property
    def thresholds(self) -> list[float]:
        cfg = self.cascade_config
        return list(cfg.thresholds) if cfg.thresholds is not None else [NEVER_EXIT] * (len(self.stages) - 1)

    def set_thresholds(self, thresholds: Optional[list[float]]) -> None:
        cfg = dataclasses.replace(self.cascade_config, thresholds=None if thresholds is None else
                                  [float(t) for t in thresholds])
        check_config(self.config, cfg)
        self.cascade_config = cfg

    def set_budget(self, gmacs: float) -> dict[str, Any]:
        """Thresholds from the stored calibration table for a mean GMACs per clip; returns the row."""
        if not self.cascade_config.calibration:
            raise ConfigError("this cascade has no calibration table: run 'ired-video calibrate --checkpoint C "
                              "--data HELD_OUT --budget G' first")
        row = choose(self.cascade_config.calibration, gmacs)
        self.set_thresholds(row["thresholds"])
        return row

    def apply_last_stage_reducer(self, reducer: Union[str, ReducerConfig], **kwargs: Any) -> None:
        """Put a token reducer into the last stage (see ``ired_video.reducers.apply_reducer``)."""
        cfg = reducer_config(reducer, **kwargs)
        check_config(self.config, dataclasses.replace(self.cascade_config, reducer=cfg))
        apply_reducer(self.stages[-1], cfg)
        self.cascade_config = dataclasses.replace(self.cascade_config, reducer=cfg)

    @property
    def reducer_config(self) -> Optional[ReducerConfig]:
        return getattr(self.stages[-1], "reducer_config", None)

    def checkpoint_extras(self) -> dict[str, Any]:
        """What ``save_checkpoint`` stores besides the backbone config: the cascade config."""
        return {"cascade_config": to_dict(self.cascade_config)}

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.{name}" for i, stage in enumerate(self.stages) for name in stage.no_weight_decay()}

    def set_fused_attention(self, fused: bool) -> None:
        self.config = dataclasses.replace(self.config, fused_attention=fused)
        for stage in self.stages:
            stage.set_fused_attention(fused)

    def static_gmacs(self, frames: Optional[int] = None, size: Optional[int] = None) -> float:
        """GMACs of one clip through every stage, reuse modules included (the most a clip can
        cost; no reducer). Stage inputs are fixed by their configs: ``frames``/``size`` are ignored."""
        return float(sum(self.stage_gmacs_static()))

    def stage_gmacs_static(self) -> list[float]:
        """GMACs each stage adds for a clip that runs it (the stage, and the reuse modules
        computed on entering it): the forward's own bill for a zero clip through every
        stage, batch 1, reducers set aside."""
        data, chans = self.data_config, self.stage_configs[0].in_chans
        video = self.stages[0].pos_embed.new_zeros(1, chans, data.num_frames, data.crop_size, data.crop_size)
        with torch.inference_mode(), evaluating(self), ExitStack() as stack:
            for stage in self.stages:
                stack.enter_context(stage.reducers_set_aside())
            _, info = self(video, return_info=True, all_exits=True)
        running = info.stage_gmacs[0].tolist()  # cumulative GMACs after each stage
        return [after - before for before, after in zip([0.0, *running[:-1]], running)]

    # ---------------------------------------------------------------- input
    def stage_input(self, video: Tensor, index: int) -> Tensor:
        """(B, C, T, H, W) clip -> stage ``index``'s (B, C, F, S, S) input (module docstring)."""
        cfg = self.stage_configs[index]
        batch, chans, frames, height, width = video.shape
        if cfg.num_frames > frames:
            raise ValueError(f"cascade stage {index + 1} takes {cfg.num_frames} frames; the clip has {frames}")
        if cfg.num_frames != frames:
            video = video.index_select(2, nearest_indices(frames, cfg.num_frames, video.device))
        if (height, width) != (cfg.img_size, cfg.img_size):
            images = video.transpose(1, 2).reshape(-1, chans, height, width)  # (B*F, C, H, W)
            images = F.interpolate(images, size=(cfg.img_size, cfg.img_size), mode="bilinear",
                                   align_corners=False, antialias=True)
            video = images.reshape(batch, cfg.num_frames, chans, cfg.img_size, cfg.img_size).transpose(1, 2)
        return video  # (B, C, F, S, S)

    # -------------------------------------------------------------- forward
    def forward(self, video: Tensor, return_info: bool = False, all_exits: Optional[bool] = None
                ) -> Union[Tensor, tuple[Tensor, CascadeInfo]]:
        """(B, C, T, H, W) -> logits (B, classes) from each clip's exit stage, and a ``CascadeInfo``.

        ``all_exits`` (default: in training mode) runs every stage on every clip; the
        logits are still those of the stage the thresholds would exit at.
        """
        all_exits = self.training if all_exits is None else all_exits
        routing = _Routing.start(video.shape[0], len(self.stages), self.config.depth, video.device)
        carry: Optional[_Carry] = None
        for k, stage in enumerate(self.stages):
            state = stage.embed(self.stage_input(video.index_select(0, routing.active), k))
            state.hooks = self._hooks_for(k, carry, state)
            state = stage.forward_blocks(state)
            keep = routing.after_stage(k, state, stage.forward_head(state), self.thresholds, all_exits)
            if keep is None:
                break
            carry = _Carry.after(state, carry, self.cascade_config).select(keep)
        logits = routing.answers(all_exits)
        if not return_info:
            return logits
        return logits, routing.info()

    def _hooks_for(self, k: int, carry: Optional["_Carry"], state: TokenState) -> BlockHooks:
        """Stage k's block hooks from what upstream stages left (bills the reuse modules)."""
        cfg = self.cascade_config
        stage = self.stages[k]
        keeps = cfg.relation_reuse and k < len(self.stages) - 1
        if carry is None and not keeps:
            return NO_HOOKS
        features: Optional[list[Tensor]] = None
        feature_in = feature_norm = None
        biases: dict[str, list[Tensor]] = {}
        if carry is not None and cfg.feature_reuse:
            modules = self.feature_reuse[str(k)]
            features = []
            for module in (modules if isinstance(modules, nn.ModuleList) else [modules]):
                feats, macs = module(carry.tokens, carry.grid, state.num_frames, state.grid)
                state.spend(torch.full_like(state.macs, float(macs)))
                features.append(feats)
            if len(features) == 1:  # shared: the one MLP's features for every block
                features = features * len(stage.blocks)
            feature_in = self.feature_in[str(k)]
            feature_norm = self.feature_norm[str(k)] if str(k) in self.feature_norm else None
        if carry is not None and cfg.relation_reuse:
            heads = stage.config.num_heads
            for kind in KINDS:
                total = None
                for j in self._relation_sources(k):
                    entry = carry.logits[kind][j]
                    assert entry is not None
                    maps, grid = entry
                    module = self.relation_reuse[f"{j}_{k}_{kind}"]
                    if cfg.relation_variant == "official":
                        out, macs = module(maps)  # (B, A, C, P, P)
                        out = resize_relations_dvt(out, kind, state.num_frames, (grid, state.grid))
                    else:
                        out, macs = module(maps.permute(0, 1, 3, 4, 2))  # channels last: (B, A, P, P, C)
                        out = resize_relations(out, kind, state.num_frames, (grid, state.grid))
                    state.spend(torch.full_like(state.macs, float(macs)))
                    total = out if total is None else total + out
                assert total is not None
                biases[kind] = chunk_layers(total, heads) if cfg.relation_variant == "official" else \
                    split_layers(total, heads)
        return CascadeHooks(stage.blocks, features, feature_in, feature_norm, biases, keeps)


@dataclass
class _Routing:
    """One forward's bookkeeping across stages: which clips still run (``active``, indices
    into the batch), where each exits, what each spent, and the answers so far."""

    active: Tensor  # (A,) long
    exit_stage: Tensor  # (B,) long
    spent: Tensor  # (B,) float64 MACs
    stage_gmacs: Tensor  # (B, K) float64 cumulative MACs, NaN where not run
    tokens: Tensor  # (B, K * depth) long
    depth: int
    logits: Optional[Tensor] = None  # (B, classes), filled as clips exit
    stage_logits: list[Tensor] = field(default_factory=list)
    last_state: Optional[TokenState] = None

    @classmethod
    def start(cls, batch: int, stages: int, depth: int, device: torch.device) -> "_Routing":
        return cls(active=torch.arange(batch, device=device),
                   exit_stage=torch.full((batch,), stages - 1, dtype=torch.long, device=device),
                   spent=torch.zeros(batch, dtype=torch.float64, device=device),
                   stage_gmacs=torch.full((batch, stages), float("nan"), dtype=torch.float64, device=device),
                   tokens=torch.zeros(batch, stages * depth, dtype=torch.long, device=device), depth=depth)

    def after_stage(self, k: int, state: TokenState, logits: Tensor, thresholds: list[float],
                    all_exits: bool) -> Optional[Tensor]:
        """Book stage k's cost and answers for the active clips; returns which of them go on
        (A,) bool, or None when none does (the last stage, or every clip exited)."""
        active, last = self.active, self.stage_gmacs.shape[1] - 1
        self.last_state = state
        self.spent[active] += state.macs
        self.stage_gmacs[active, k] = self.spent[active]
        self.tokens[active, k * self.depth:(k + 1) * self.depth] = torch.stack(state.tokens, dim=1)
        if self.logits is None:
            self.logits = logits.new_zeros(self.exit_stage.shape[0], logits.shape[-1])
        if all_exits:
            self.stage_logits.append(logits)
        if k == last:
            self.logits[active] = logits
            return None
        confident = logits.softmax(dim=-1).amax(dim=-1) >= thresholds[k]  # (A,)
        if all_exits:  # every clip goes on; its answer is still the first confident stage's
            self.exit_stage[active[confident & (self.exit_stage[active] == last)]] = k
            keep = torch.ones_like(confident)
        else:
            self.logits[active[confident]] = logits[confident]
            self.exit_stage[active[confident]] = k
            keep = ~confident
        self.active = active[keep]
        return keep if self.active.numel() else None

    def answers(self, all_exits: bool) -> Tensor:
        """(B, classes) logits of each clip's exit stage."""
        assert self.logits is not None
        if all_exits:
            for k, stage_logits in enumerate(self.stage_logits[:-1]):
                chosen = self.exit_stage == k
                self.logits[chosen] = stage_logits[chosen]
        return self.logits

    def info(self) -> CascadeInfo:
        assert self.last_state is not None
        reached_all = bool((~torch.isnan(self.stage_gmacs[:, -1])).all())
        return CascadeInfo(gmacs=(self.spent / 1e9).float(), tokens=self.tokens,
                           records=self.last_state.records if reached_all else [], state=self.last_state,
                           exit_stage=self.exit_stage, stage_logits=self.stage_logits,
                           stage_gmacs=self.stage_gmacs / 1e9)


@dataclass
class _Carry:
    """What the clips still running take to the next stage (batch-major, indexable).

    tokens: (B, T, N, D) the last stage's final patch tokens; grid: its (h, w).
    logits: per kind, per upstream stage j (index j; None where not kept: the official
        relation reuse needs only the previous stage's) a tuple (maps (B, A, L*H, P, P),
        grid); frames are the maps' own axes.
    """

    tokens: Tensor
    grid: tuple[int, int]
    logits: dict[str, list[Optional[tuple[Tensor, tuple[int, int]]]]]

    @classmethod
    def after(cls, state: TokenState, previous: Optional["_Carry"], cfg: CascadeConfig) -> "_Carry":
        """A stage's final state (not the last stage's) -> what the next stage may reuse."""
        logits = {kind: list(previous.logits[kind]) if previous is not None else [] for kind in KINDS}
        if cfg.relation_reuse:
            assert isinstance(state.hooks, CascadeHooks)
            batch = state.batch_size
            for kind in KINDS:
                if cfg.relation_variant == "official":  # only the previous stage's are reused
                    logits[kind] = [None] * len(logits[kind])
                logits[kind].append((concat_logits(state.hooks.logits[kind], batch), state.grid))
        return cls(state.x, state.grid, logits)

    def select(self, keep: Tensor) -> "_Carry":
        """Only the clips that go on (``keep``: (B,) bool)."""
        logits = {kind: [None if entry is None else (entry[0][keep], *entry[1:]) for entry in entries]
                  for kind, entries in self.logits.items()}
        return _Carry(self.tokens[keep], self.grid, logits)


# --------------------------------------------------------------------- building
def _stage_checkpoint(ckpt: Checkpoint, stage: TimeSformer) -> Checkpoint:
    """The checkpoint with its patch-embedding kernel resampled to the stage's patch size."""
    state = dict(ckpt.state_dict)
    key = "patch_embed.proj.weight"
    weight = state.get(key)
    target = stage.patch_embed.proj.weight
    if weight is not None and weight.ndim == 4 and weight.shape[-2:] != target.shape[-2:]:
        state[key] = resample_patch_embed(weight, list(target.shape[-2:]))
    return dataclasses.replace(ckpt, state_dict=state)


def build_cascade(backbone: ModelConfig, cascade: CascadeConfig, data_config: Optional[DataConfig] = None,
                  checkpoint: Optional[Union[str, Path, Checkpoint]] = None, drop_head: bool = False) -> Cascade:
    """A cascade whose every stage starts from one checkpoint (a plain model: official,
    timm or ours), or one of our cascade checkpoints loaded whole."""
    model = Cascade(backbone, cascade, data_config)
    if checkpoint is None:
        return model
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if (ckpt.extra or {}).get("cascade_config"):
        load_weights(model, ckpt, drop_head=drop_head)
        return model
    reducers = [stage.reducers for stage in model.stages]
    for stage in model.stages:  # plain weights carry no reducer parameters
        stage.reducers = nn.ModuleDict()
    for stage in model.stages:
        load_weights(stage, _stage_checkpoint(ckpt, stage), drop_head=drop_head)
    for stage, saved in zip(model.stages, reducers):
        stage.reducers = saved
    return model


def cascade_from_checkpoint(ckpt: Checkpoint, **overrides: Any) -> Cascade:
    """Rebuild a cascade from our checkpoint (backbone, cascade and data configs inside)."""
    extra = ckpt.extra or {}
    backbone = from_dict(ModelConfig, {**(ckpt.model_config or {}), **overrides})
    # Checkpoints from before the variants existed hold the first version's modules.
    saved = {"feature_variant": "shared", "relation_variant": "all_upstream", **extra["cascade_config"]}
    cascade = from_dict(CascadeConfig, saved, prefix="cascade.")
    data = from_dict(DataConfig, ckpt.data_config) if ckpt.data_config else None
    model = Cascade(backbone, cascade, data)
    load_weights(model, ckpt)
    return model


def is_cascade_checkpoint(ckpt: Checkpoint) -> bool:
    return bool((ckpt.extra or {}).get("cascade_config"))


def apply_budget(model: nn.Module, gmacs: Optional[float]) -> Optional[dict[str, Any]]:
    """``--budget`` of ``eval``/``infer``: set a cascade's thresholds for a mean GMACs per clip."""
    if gmacs is None:
        return None
    if not isinstance(model, Cascade):
        raise ConfigError("--budget needs a cascade checkpoint (a plain model has one fixed cost)")
    if not math.isfinite(gmacs) or gmacs <= 0:
        raise ConfigError(f"--budget {gmacs}: expected a positive number of GMACs per clip")
    return model.set_budget(gmacs)
