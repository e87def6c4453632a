"""Output paths checked before any work: a command that would fail to write its result
fails first, with a one-line ``ConfigError`` naming the option, instead of after the work."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from ired_video.config import ConfigError

PathLike = Union[str, os.PathLike]


def writable_dir(folder: PathLike, option: str) -> Path:
    """Create ``folder`` with its parents and make sure a file can be created in it.
    ``option``: how the user named it (``--output`` or ``output=``)."""
    folder = Path(folder)
    try:
        _probe(folder)
    except OSError as err:
        raise ConfigError(f"{_named(option, folder)}: cannot write there ({err.strerror or err})") from None
    return folder


def writable_file(path: PathLike, option: str) -> Path:
    """``path`` can be (re)written: not a folder, its folder created and writable, and the
    file itself, if there, not read-only."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{_named(option, path)}: is a folder; give a file name")
    try:
        _probe(path.parent)
    except OSError as err:
        raise ConfigError(f"{_named(option, path)}: cannot write in {path.parent} ({err.strerror or err})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{_named(option, path)}: the file is read-only")
    return path


def _probe(folder: Path) -> None:
    """Create ``folder`` (and parents) and a file in it, then remove the file; OSError if not."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
        pass


def _named(option: str, path: Path) -> str:
    """``--output x.json`` for a command-line option, ``output=runs/x`` for a config key."""
    return f"{option}{path}" if option.endswith("=") else f"{option} {path}"


def write_atomically(path: PathLike, content: Union[str, Callable[[Path], None]]) -> None:
    """Write ``path`` all or nothing: ``content`` (text, or a function that writes the file it
    is given) goes to a temporary file beside ``path``, which is then renamed over ``path``;
    on failure the temporary file is removed and ``path`` is as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
