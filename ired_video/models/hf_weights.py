"""Hugging Face transformers TimeSformer snapshots: read one into a ``Checkpoint``, write one.

A snapshot is a folder with ``config.json`` (``model_type: timesformer``), the weights
(``model.safetensors`` or ``pytorch_model.bin``, or shards listed in a
``*.index.json``) and usually ``preprocessor_config.json``. Nothing here imports
transformers: the JSON and the weights are read directly (safetensors, or
``torch.load(weights_only=True)``), and ``save_snapshot`` writes the same three files.

Design notes: docs/design.md, "ired_video.models.hf_weights".
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import save_file
from torch import Tensor

from ired_video.config import ATTENTION_TYPES, ConfigError, DataConfig, ModelConfig, from_dict, to_dict
from ired_video.models.checkpoint_file import Checkpoint, CheckpointError, PathLike, read_file, tensors_only
from ired_video.models.key_map import KeyMap
from ired_video.models.timesformer import TimeSformer
from ired_video.paths import write_atomically

log = logging.getLogger(__name__)

KIND = "transformers"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
CLASSIFIER = "TimesformerForVideoClassification"
BACKBONE = "TimesformerModel"
# Frames -> sampling rate of the official recipes (8x32, HR 16x16, L 96x4).
RECIPE_RATE = {8: 32, 16: 16, 96: 4}
_BLOCK = {"norm1": "layernorm_before", "attn.qkv": "attention.attention.qkv",
          "attn.proj": "attention.output.dense", "temporal_norm1": "temporal_layernorm",
          "temporal_attn.qkv": "temporal_attention.attention.qkv",
          "temporal_attn.proj": "temporal_attention.output.dense", "temporal_fc": "temporal_dense",
          "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def key_map(with_head: bool) -> KeyMap:
    """Our names <-> transformers': ``TimesformerForVideoClassification`` (prefix
    ``timesformer.``, head ``classifier``) or, without a head, ``TimesformerModel``."""
    base = "timesformer." if with_head else ""
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "time_embed": "embeddings.time_embeddings", "patch_embed.proj": "embeddings.patch_embeddings.projection",
           "norm": "layernorm"}
    top = {ours: base + theirs for ours, theirs in top.items()}
    if with_head:
        top["head"] = "classifier"
    return KeyMap(top, _BLOCK, base + "encoder.layer.{i}")


def looks_like_transformers(state: dict[str, Any]) -> bool:
    """Whether a state dict uses transformers' TimeSformer names."""
    return any(k.startswith(("timesformer.embeddings.", "embeddings.patch_embeddings.")) for k in state)


def transformers_state(state: dict[str, Tensor], path: Path) -> Checkpoint:
    """A transformers weights file read without its config.json: weights only (give
    ``create_model`` a model name, or the snapshot folder)."""
    keys = key_map(with_head=any(k.startswith("timesformer.") for k in state))
    return Checkpoint(path, KIND, keys.state_to_ours(state), file_key=keys.to_file)


# ------------------------------------------------------------------ reading
def read_snapshot(folder: PathLike, weights_file: Optional[PathLike] = None) -> Checkpoint:
    """A snapshot folder -> Checkpoint with our names, model config and data config.

    ``weights_file`` picks one weights file of the folder (default: the first of
    ``WEIGHTS`` present, else a sharded index).
    """
    folder = Path(folder)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a folder without {CONFIG} (expected a transformers TimeSformer "
                              "snapshot: config.json + model.safetensors or pytorch_model.bin)")
    config = _read_json(config_path)
    model_config = snapshot_model_config(config, config_path)
    with_head = model_config["num_classes"] > 0
    data_config = snapshot_data_config(config, _read_preprocessor(folder), model_config, folder)
    path, state = _read_weights(folder, weights_file)
    keys = key_map(with_head)
    return Checkpoint(path, KIND, keys.state_to_ours(state), model_config, data_config, file_key=keys.to_file)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _field(config: dict[str, Any], name: str, kind: type, default: Any, source: Path) -> Any:
    """config[name] (default if absent), checked to be a ``kind``; ints pass as floats."""
    value = config.get(name, default)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CheckpointError(f"{source}: {name}={value!r}: expected {kind.__name__}")
    return value


def _square(config: dict[str, Any], name: str, default: int, source: Path) -> int:
    """An int, or a [h, w] pair with h == w (our model and transformers' forward are square)."""
    value = config.get(name, default)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{source}: {name}={value!r}: expected one integer (square images and patches)")
    return value


def snapshot_model_config(config: dict[str, Any], source: Path) -> dict[str, Any]:
    """config.json -> ModelConfig fields (transformers' defaults for absent keys), checked."""
    model_type = config.get("model_type")
    if model_type != "timesformer":
        raise CheckpointError(f"{source}: model_type={model_type!r}: only 'timesformer' snapshots are supported")
    attention = _field(config, "attention_type", str, "divided_space_time", source)
    if attention not in ATTENTION_TYPES:
        raise CheckpointError(f"{source}: attention_type={attention!r}: expected one of {', '.join(ATTENTION_TYPES)}")
    act = _field(config, "hidden_act", str, "gelu", source)
    if act != "gelu":
        raise CheckpointError(f"{source}: hidden_act={act!r}: only 'gelu' (exact, erf) is supported")
    dim = _field(config, "hidden_size", int, 768, source)
    hidden = _field(config, "intermediate_size", int, 3072, source)
    if dim <= 0 or int(dim * (hidden / dim)) != hidden:
        raise CheckpointError(f"{source}: intermediate_size={hidden} is not a whole ratio of hidden_size={dim}")
    architectures = config.get("architectures") or [CLASSIFIER]
    with_head = CLASSIFIER in architectures
    if not with_head and BACKBONE not in architectures:
        raise CheckpointError(f"{source}: architectures={architectures!r}: expected {CLASSIFIER} or {BACKBONE}")
    fields = dict(
        img_size=_square(config, "image_size", 224, source), patch_size=_square(config, "patch_size", 16, source),
        num_frames=_field(config, "num_frames", int, 8, source),
        in_chans=_field(config, "num_channels", int, 3, source), embed_dim=dim,
        depth=_field(config, "num_hidden_layers", int, 12, source),
        num_heads=_field(config, "num_attention_heads", int, 12, source), mlp_ratio=hidden / dim,
        qkv_bias=_field(config, "qkv_bias", bool, True, source),
        num_classes=len(_labels(config, source)) if with_head else 0, attention_type=attention,
        drop_rate=_field(config, "hidden_dropout_prob", float, 0.0, source),
        attn_drop_rate=_field(config, "attention_probs_dropout_prob", float, 0.0, source),
        drop_path_rate=_field(config, "drop_path_rate", float, 0.0, source),
        layer_norm_eps=_field(config, "layer_norm_eps", float, 1e-6, source))
    try:
        return to_dict(from_dict(ModelConfig, fields))
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


def _labels(config: dict[str, Any], source: Path) -> list[str]:
    """``id2label`` as a list in index order (transformers' default: 2 labels ``LABEL_i``)."""
    id2label = config.get("id2label")
    if id2label is None:
        count = _field(config, "num_labels", int, 2, source)
        return [f"LABEL_{i}" for i in range(count)]
    if not isinstance(id2label, dict) or not id2label:
        raise CheckpointError(f"{source}: id2label: expected a non-empty mapping of class index to name")
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise CheckpointError(f"{source}: id2label: keys must be class indices 0..n-1") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"{source}: id2label: keys must be class indices 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _read_preprocessor(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / PREPROCESSOR
    return _read_json(path) if path.is_file() else None


def snapshot_data_config(config: dict[str, Any], preprocessor: Optional[dict[str, Any]],
                         model_config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """DataConfig fields: frames, crop and short side, mean/std from the preprocessor, class
    names from ``id2label``; sampling rate from the TimeSformer recipe for the frame count."""
    frames, size = model_config["num_frames"], model_config["img_size"]
    values: dict[str, Any] = dict(num_frames=frames, sampling_rate=RECIPE_RATE.get(frames, max(1, 256 // frames)),
                                  crop_size=size, test_short_side=size,
                                  train_short_side=(round(size * 8 / 7), round(size * 10 / 7)))
    if model_config["num_classes"]:
        values["class_names"] = _labels(config, folder / CONFIG)
    if preprocessor is None:
        log.warning("%s: no %s; mean/std are TimeSformer's Kinetics values (0.45 / 0.225)", folder, PREPROCESSOR)
    else:
        values.update(_preprocessing(preprocessor, folder / PREPROCESSOR))
    try:
        return to_dict(from_dict(DataConfig, values))
    except ConfigError as err:
        raise CheckpointError(f"{folder / PREPROCESSOR}: {err}") from None


def _preprocessing(pre: dict[str, Any], source: Path) -> dict[str, Any]:
    """preprocessor_config.json -> mean, std, crop_size, test_short_side (0-1 pixel units)."""
    values: dict[str, Any] = {}
    if pre.get("do_normalize", True):
        for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
            if theirs in pre:
                value = pre[theirs]
                if isinstance(value, (int, float)):
                    value = [value] * 3
                values[ours] = tuple(value) if isinstance(value, list) else value
    else:
        values.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    crop = pre.get("crop_size")
    if pre.get("do_center_crop", True) and crop is not None:
        if isinstance(crop, dict):
            height, width = crop.get("height"), crop.get("width")
            if height != width:
                raise CheckpointError(f"{source}: crop_size={crop!r}: only square crops are supported")
            crop = height
        values["crop_size"] = crop
    size = pre.get("size")
    if pre.get("do_resize", True) and isinstance(size, dict) and "shortest_edge" in size:
        values["test_short_side"] = size["shortest_edge"]
    return values


def _read_weights(folder: Path, weights_file: Optional[PathLike]) -> tuple[Path, dict[str, Tensor]]:
    """The snapshot's weights as one state dict, from a named file, the first of WEIGHTS, or shards."""
    if weights_file is not None:
        path = Path(weights_file)
        return path, tensors_only(read_file(path), path)
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name, tensors_only(read_file(folder / name), folder / name)
    for name in WEIGHTS:
        index = folder / f"{name}.index.json"
        if index.is_file():
            return index, _read_shards(folder, index)
    raise CheckpointError(f"{folder}: {CONFIG} but no weights ({', '.join(WEIGHTS)}, or a sharded *.index.json)")


def _read_shards(folder: Path, index: Path) -> dict[str, Tensor]:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map")
    state: dict[str, Tensor] = {}
    for name in sorted(set(map(str, weight_map.values()))):
        shard = folder / name
        if shard.parent != folder or shard.name != name:
            raise CheckpointError(f"{index}: shard {name!r} is not a file of the snapshot folder")
        state.update(tensors_only(read_file(shard), shard))
    return state


# ------------------------------------------------------------------ writing
def snapshot_config(model: TimeSformer) -> dict[str, Any]:
    """The config.json transformers builds ``model``'s architecture from."""
    cfg = model.config
    if cfg.window_radius is not None or cfg.window_span is not None:
        raise ConfigError("window_radius/window_span: windowed attention has no transformers equivalent")
    hidden = int(cfg.embed_dim * cfg.mlp_ratio)
    config: dict[str, Any] = {
        "architectures": [CLASSIFIER if cfg.num_classes > 0 else BACKBONE], "model_type": "timesformer",
        "image_size": cfg.img_size, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "num_frames": cfg.num_frames, "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "intermediate_size": hidden, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.drop_rate, "attention_probs_dropout_prob": cfg.attn_drop_rate,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "qkv_bias": cfg.qkv_bias,
        "attention_type": cfg.attention_type, "drop_path_rate": 0}
    if cfg.drop_path_rate:  # transformers 5 types the field int; it is a training regulariser only
        log.info("drop_path_rate %g written as 0 (transformers types it int; it does not change outputs)",
                 cfg.drop_path_rate)
    if cfg.num_classes > 0:
        names = list(model.data_config.class_names)
        if len(names) != cfg.num_classes:
            names = [f"LABEL_{i}" for i in range(cfg.num_classes)]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
    return config


def preprocessor_config(data: DataConfig) -> dict[str, Any]:
    """The preprocessor_config.json of the hub's TimeSformer snapshots, from our data config."""
    return {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
            "size": {"shortest_edge": data.test_short_side}, "resample": 2, "do_center_crop": True,
            "crop_size": {"height": data.crop_size, "width": data.crop_size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(data.mean),
            "image_std": list(data.std)}


def snapshot_state(model: TimeSformer) -> dict[str, Tensor]:
    """The model's weights under transformers' names (reducers are not part of a snapshot)."""
    keys = key_map(with_head=model.config.num_classes > 0)
    state: dict[str, Tensor] = {}
    for name, value in model.state_dict().items():
        if name.startswith("reducers."):
            continue
        theirs = keys.to_file(name)
        if theirs == name:
            raise ConfigError(f"{name}: a parameter transformers' TimeSformer has no place for")
        state[theirs] = value.detach().to("cpu").contiguous()
    return state


def save_snapshot(model: TimeSformer, folder: PathLike, overwrite: bool = False) -> list[Path]:
    """Write ``model`` as a transformers snapshot (config.json, model.safetensors,
    preprocessor_config.json) that ``TimesformerForVideoClassification.from_pretrained``
    loads. A reducer with trained parameters (IA-RED² interpreters) is refused: a snapshot
    holds the backbone only. Existing files are kept unless ``overwrite``."""
    if not isinstance(model, TimeSformer):
        raise ConfigError(f"a {type(model).__name__} cannot be written as a transformers TimeSformer "
                          "(a cascade is several models)")
    if any(True for _ in model.reducers.parameters()):
        raise ConfigError("the model's reducer has trained parameters (IA-RED² interpreters), which a "
                          "transformers snapshot cannot hold; export the plain model")
    if len(model.reducers):
        log.info("the reducer is a run-time option and is not part of the snapshot")
    folder = Path(folder)
    files = {CONFIG: snapshot_config(model), PREPROCESSOR: preprocessor_config(model.data_config),
             WEIGHTS[0]: snapshot_state(model)}
    existing = [name for name in files if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder}: already holds {', '.join(existing)} "
                              "(overwrite=True or --force to replace)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = folder / name
        if name == WEIGHTS[0]:
            write_atomically(path, lambda tmp, tensors=content: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        else:
            write_atomically(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def snapshot_weights_file(path: Path) -> bool:
    """Whether ``path`` is the weights file of a snapshot folder (its config.json beside it)."""
    return path.is_file() and path.name in WEIGHTS and (path.parent / CONFIG).is_file()

