"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides.

Every config is a tree of dataclasses. Loading checks each key and each value's type, so
a typo (``modle.depth=4``) or a wrong type (``model.depth=four``) is an error naming the
key before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import yaml

T = TypeVar("T")

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
REGIMES = ("adaptive", "fixed_ratio")  # IA-RED²: per-clip counts from the interpreter, or a fixed share


class ConfigError(ValueError):
    """A config key is unknown or its value has the wrong type or range."""


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Range checks of ``__post_init__``: ``ConfigError("key=value: expected ...")`` unless ``ok``
    (``from_dict`` puts the section in front of ``key``)."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ModelConfig:
    """Architecture of a TimeSformer (every field a constructor argument)."""

    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 8
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 400
    attention_type: str = "divided_space_time"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    fused_attention: bool = True
    layer_norm_eps: float = 1e-6  # every LayerNorm's epsilon (TimeSformer, timm, transformers: 1e-6)
    # Window-free attention (ired_video.models.window): per block, per patch location, the
    # spatial radius (Chebyshev, in patches) and temporal span (frames) a query may read.
    # Usually written by ``ired_video.explain.fields``; None = full attention.
    window_radius: Optional[list[list[int]]] = None
    window_span: Optional[list[list[int]]] = None
    # How the spatial window is computed: "gathered" (only the pairs inside the fields,
    # billed so) or "masked" (dense attention with a -inf mask, billed as full attention).
    window_kernel: str = "gathered"
    # Patch embedding: "linear" (one p x p projection, TimeSformer's), "conv" (log2(p) 3x3
    # stride-2 conv-BN-GELU stages and a 1x1 projection; power-of-two patch sizes) or
    # "conv3d" (the same, every stage over 3 frames; still one token grid per frame).
    # See docs/recipes.md.
    patch_stem: str = "linear"

    def __post_init__(self) -> None:
        for key in ("img_size", "patch_size", "num_frames", "in_chans", "embed_dim", "depth", "num_heads"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "at least 1")
        require(self.num_classes >= 0, "num_classes", self.num_classes, "at least 0 (0: no classifier)")
        require(is_number(self.mlp_ratio) and self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a number > 0")
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            value = getattr(self, key)
            require(is_number(value) and 0 <= value < 1, key, value, "a probability in [0, 1)")
        if self.attention_type not in ATTENTION_TYPES:
            raise ConfigError(
                f"attention_type={self.attention_type!r}: expected one of {ATTENTION_TYPES}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        require(self.window_kernel in ("gathered", "masked"), "window_kernel", self.window_kernel,
                "'gathered' or 'masked'")
        require(self.patch_stem in ("linear", "conv", "conv3d"), "patch_stem", self.patch_stem,
                "'linear', 'conv' or 'conv3d'")
        if self.patch_stem != "linear" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(f"patch_stem={self.patch_stem!r} needs a power-of-two patch_size >= 2, "
                              f"got {self.patch_size}")
        if self.window_radius is not None or self.window_span is not None:
            if self.attention_type != "divided_space_time":
                raise ConfigError("window_radius/window_span: windows are implemented for "
                                  f"divided_space_time, not {self.attention_type}")
            problem = check_fields(self.window_radius, self.window_span, self.depth,
                                   (self.img_size // self.patch_size) ** 2)
            if problem:
                raise ConfigError(problem)


def check_fields(radius: Optional[list[list[int]]], span: Optional[list[list[int]]], depth: int,
                 num_patches: int) -> Optional[str]:
    """None if the per-block, per-location fields fit the model, else what is wrong."""
    for key, values in (("window_radius", radius), ("window_span", span)):
        if values is None:
            continue
        if len(values) != depth:
            return f"{key}: {len(values)} blocks given, the model has depth={depth}"
        for block, row in enumerate(values):
            if len(row) != num_patches or min(row) < 0:
                return f"{key}[{block}]: expected {num_patches} non-negative values (one per patch location)"
    return None


@dataclass
class DataConfig:
    """How clips are made for a model: travels inside every checkpoint.

    ``num_frames`` frames are sampled ``sampling_rate`` frames apart at ``target_fps``
    (TimeSformer's 8x32: 8 frames spread over 256 frames at 30 fps), resized so the short
    side is in ``train_short_side`` (training jitter) or equals ``test_short_side``, cropped
    to ``crop_size`` and normalised with ``mean``/``std`` (0-1 pixel units).
    ``sampling`` is ``"dense"`` (T x rate, above) or ``"uniform"`` (one frame per equal
    segment, TSN); ``temporal_pad`` says what indices past the last frame of a short video
    become: ``"repeat_last"`` or ``"loop"`` (see ``ired_video.data.sampling``).
    """

    num_frames: int = 8
    sampling_rate: int = 32
    target_fps: float = 30.0
    crop_size: int = 224
    train_short_side: tuple[int, int] = (256, 320)
    test_short_side: int = 224
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    class_names: list[str] = field(default_factory=list)
    # Random horizontal flips in training. Off where the label depends on left/right
    # (the demo's "moving left/right"; Something-Something's directional classes).
    flip: bool = True
    sampling: str = "dense"
    temporal_pad: str = "repeat_last"

    def __post_init__(self) -> None:
        """Each value on its own; whether crops fit the short sides and the sampler names are
        checked by ``ired_video.data.dataset.check_data_config``."""
        for key in ("num_frames", "sampling_rate", "crop_size", "test_short_side"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "at least 1")
        require(is_number(self.target_fps) and self.target_fps > 0, "target_fps", self.target_fps, "a number > 0")
        low, high = self.train_short_side
        require(1 <= low <= high, "train_short_side", list(self.train_short_side), "[low, high] with 1 <= low <= high")
        require(all(is_number(m) for m in self.mean), "mean", list(self.mean), "finite numbers")
        require(all(is_number(s) and s > 0 for s in self.std), "std", list(self.std),
                "numbers > 0 (the pixels are divided by them)")


@dataclass
class ReducerConfig:
    """Which token reducer a model runs, and its knobs (see ``ired_video.reducers``).

    name: none | random | topk | attention_received | interaction | bat | tome | iared2.
    stages: blocks the reducer acts at (default: a quarter, half and three quarters of
        the depth); ToMe acts at every block its ``r`` schedule gives tokens to.
    keep: fraction of tokens kept at each stage, in (0, 1] (iared2: only in the
        ``fixed_ratio`` regime).
    regime: iared2 only. ``adaptive`` (the default, the paper's): no rescaling; training
        keeps each token by a Bernoulli draw of its probability, evaluation keeps every
        token whose probability exceeds ``threshold`` (0.5), so the reward decides how many
        tokens each clip keeps. ``fixed_ratio``: ``keep`` of the tokens per stage (training
        rescales the probabilities per clip to that mean). Left unset it follows ``keep``
        (given: fixed_ratio, else adaptive), as configs written before it did.
    r: ToMe's tokens merged per block: an int >= 0, or a per-block list; with
        ``r_inflection`` (-1..1) an int r becomes a linear ramp with mean r (-1: from 2r
        down to 0), as ToMe's schedules.
    prop_attn: merged tokens (ToMe, BAT) add log(size) to the attention logits.
    score: how ``interaction`` ranks patches: ``predictor`` (a per-token head fitted to
        the indicator, cheap) or ``indicator`` (the first-order patch-interaction
        indicator itself: a backward pass through the later blocks at every stage).
    interpreter_init: how IA-RED² interpreters start: ``attention`` copies the query and
        key projections of the block each one guards (its class attention, EViT's
        ranking), ``random`` a fresh initialisation.

    Values that cannot be right whatever the model (negative r, keep outside (0, 1]) are
    refused here; r larger than the model's tokens when the reducer is applied.
    """

    name: str = "none"
    stages: Optional[list[int]] = None
    keep: Optional[float] = None
    threshold: Optional[float] = None
    regime: Optional[str] = None  # iared2: adaptive (default) | fixed_ratio (needs keep)
    mode: str = "tube"
    r: Union[int, list[int]] = 0
    r_inflection: float = 0.0
    fuse: bool = False
    cluster_ratio: float = 0.25
    match_ratio: float = 0.1
    prop_attn: bool = True
    score: str = "predictor"
    interpreter_heads: Optional[int] = None
    interpreter_init: str = "attention"  # iared2: attention (the guarded block's class-token query/key) | random
    seed: int = 0

    def __post_init__(self) -> None:
        """Ranges only; names, modes and stages against a model are checked by ``apply_reducer``."""
        if self.keep is not None:
            require(is_number(self.keep) and 0 < self.keep <= 1, "keep", self.keep, "a fraction in (0, 1]")
        if self.threshold is not None:
            require(is_number(self.threshold) and 0 < self.threshold < 1, "threshold", self.threshold,
                    "a fraction in (0, 1)")
        self._check_regime()
        counts = self.r if isinstance(self.r, list) else [self.r]
        require(all(r >= 0 for r in counts), "r", self.r, "tokens merged per block >= 0")
        require(is_number(self.r_inflection) and -1 <= self.r_inflection <= 1, "r_inflection", self.r_inflection,
                "a number in [-1, 1]")
        require(is_number(self.cluster_ratio) and 0 < self.cluster_ratio <= 1, "cluster_ratio",
                self.cluster_ratio, "a fraction in (0, 1]")
        require(is_number(self.match_ratio) and 0 <= self.match_ratio <= 0.5, "match_ratio", self.match_ratio,
                "a fraction in [0, 0.5]")
        if self.stages is not None:
            require(all(s >= 0 for s in self.stages), "stages", self.stages, "block indices >= 0")
        if self.interpreter_heads is not None:
            require(self.interpreter_heads >= 1, "interpreter_heads", self.interpreter_heads, "at least 1")
        require(self.score in ("predictor", "indicator"), "score", self.score, "'predictor' or 'indicator'")

    def _check_regime(self) -> None:
        """``regime`` names IA-RED²'s rule; it must agree with ``keep``/``threshold``."""
        if self.regime is None:
            return
        require(self.regime in REGIMES, "regime", self.regime, f"one of {REGIMES}")
        if self.name != "iared2":
            raise ConfigError(f"regime={self.regime!r} applies to reducer 'iared2' only (this is {self.name!r})")
        if self.regime == "adaptive" and self.keep is not None:
            raise ConfigError(f"regime='adaptive' lets the interpreter choose each clip's count: drop keep="
                              f"{self.keep}, or set regime=fixed_ratio to keep that share per stage")
        if self.regime == "fixed_ratio" and self.keep is None:
            raise ConfigError("regime='fixed_ratio' needs keep=<fraction of tokens kept per stage>")
        if self.regime == "fixed_ratio" and self.threshold is not None:
            raise ConfigError(f"regime='fixed_ratio' keeps a ratio: threshold={self.threshold} is for "
                              "regime=adaptive")

    @property
    def iared2_regime(self) -> str:
        """IA-RED²'s regime as it runs: the one given, else ``fixed_ratio`` when ``keep`` is set."""
        return self.regime or ("fixed_ratio" if self.keep is not None else "adaptive")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# scalar annotation -> (accepts the value, converts it, what the error says was expected)
_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v, "true/false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v, "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float, "a number"),
    str: (lambda v: isinstance(v, str), lambda v: v, "a string"),
}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting YAML lists to tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, typing.get_args(tp), key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        return _convert_sequence(value, origin, typing.get_args(tp), key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in _SCALARS:
        accepts, convert, expected = _SCALARS[tp]
        if accepts(value):
            return convert(value)
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _convert_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """``Optional[X]`` / ``Union[...]``: None where allowed, else the first member that fits."""
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key)
        except ConfigError:
            continue
    raise ConfigError(f"{key}: {value!r} matches none of {args}")


def _convert_sequence(value: Any, origin: Any, args: tuple[Any, ...], key: str) -> Any:
    """``list[X]``, ``tuple[X, ...]`` or a fixed ``tuple[X, Y]`` from a YAML list."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:  # from __post_init__: "key=value: ..." -> "section.key=value: ..."
        raise ConfigError(f"{prefix or cls.__name__ + '.'}{err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data dict of a dataclass (tuples become lists, as YAML and JSON write them)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of a nested dict with ``key=value`` overrides set (types checked later)."""
    out = yaml.safe_load(yaml.safe_dump(values))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return out


def load_yaml(path: Union[str, Path]) -> dict[str, Any]:
    """Read a YAML mapping, naming the file on any error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: Optional[Union[str, Path]] = None,
                overrides: Optional[list[str]] = None) -> T:
    """Load dataclass ``cls`` from a YAML file (optional) plus ``key=value`` overrides."""
    values = load_yaml(path) if path is not None else {}
    values = apply_overrides(values, overrides or [])
    try:
        return from_dict(cls, values)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
