"""Arguments shared by commands: choosing a reducer on the command line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ired_video.config import ConfigError, ReducerConfig, apply_overrides, from_dict, load_yaml

REDUCER_HELP = ("token reducer: a name (random, topk, attention_received, interaction, bat, tome, iared2) or "
                "a YAML file "
                "from configs/reducers/, then key=value settings, e.g. "
                "'--reducer tome r=8' or '--reducer topk keep=0.7 mode=frame'")


def add_reducer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reducer", nargs="+", metavar="NAME_OR_YAML [KEY=VALUE]", default=None,
                        help=REDUCER_HELP)


def add_annotation_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --root and --split: annotated videos, as ``load_annotations`` reads them."""
    parser.add_argument("--data", required=True, help="annotations: Kinetics CSV, list file or class folders")
    parser.add_argument("--root", default=None, help="folder the annotation's videos live in")
    parser.add_argument("--split", default=None, help="keep only this CSV split (e.g. val)")


def reducer_from_args(spec: Optional[list[str]]) -> Optional[ReducerConfig]:
    """``["tome", "r=8"]`` or ``["configs/reducers/x.yaml", "keep=0.5"]`` -> ReducerConfig."""
    if not spec:
        return None
    head, overrides = spec[0], spec[1:]
    from_file = head.endswith((".yaml", ".yml")) or Path(head).is_file()
    values = load_yaml(head) if from_file else {"name": head}
    try:
        return from_dict(ReducerConfig, apply_overrides(values, overrides), prefix="reducer.")
    except ConfigError as err:
        raise ConfigError(f"{head}: {err}" if from_file else str(err)) from None


def parse_clip(text: str, prog: str) -> tuple[int, int]:
    """``"1/4"`` -> (clip 1, of 4)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise SystemExit(f"{prog}: --clip {text!r}: expected I/N, e.g. 0/1") from None
    if not 0 <= index < count:
        raise SystemExit(f"{prog}: --clip {text!r}: need 0 <= I < N")
    return index, count
