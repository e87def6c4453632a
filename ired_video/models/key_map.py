"""Renaming parameters between our TimeSformer and a foreign layout of the same tensors.

A ``KeyMap`` pairs our module (or parameter) paths with another codebase's: top-level
ones, and those inside block ``i``. A path found whole is renamed whole; otherwise its
module is renamed and the leaf (``weight``/``bias``) kept. Used by the transformers and
mmaction2 loaders, and by the transformers export.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from torch import Tensor

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _rename(path: str, table: Mapping[str, str]) -> Optional[str]:
    """``path`` through ``table``: whole, or its module with the leaf kept; None if absent."""
    if path in table:
        return table[path]
    module, _, leaf = path.rpartition(".")
    return f"{table[module]}.{leaf}" if module and module in table else None


@dataclass(frozen=True)
class KeyMap:
    """Our parameter names <-> a file's.

    top: our top-level path -> the file's full path (``"pos_embed"`` ->
        ``"timesformer.embeddings.position_embeddings"``).
    block: our path inside ``blocks.i`` -> the file's path inside its block ``i``.
    block_prefix: the file's path of block ``i``, with ``{i}`` for the index.
    """

    top: Mapping[str, str]
    block: Mapping[str, str]
    block_prefix: str
    _block_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.escape(self.block_prefix).replace(re.escape("{i}"), r"(\d+)") + r"\.(.+)"
        object.__setattr__(self, "_block_re", re.compile(pattern))

    def to_file(self, key: str) -> str:
        """Our name -> the file's name (unknown names come back unchanged)."""
        match = _BLOCK.fullmatch(key)
        if match:
            inner = _rename(match.group(2), self.block)
            return key if inner is None else f"{self.block_prefix.format(i=match.group(1))}.{inner}"
        return _rename(key, self.top) or key

    def to_ours(self, key: str) -> Optional[str]:
        """The file's name -> ours, or None when the layout has no such parameter."""
        match = self._block_re.fullmatch(key)
        if match:
            inner = _rename(match.group(2), {v: k for k, v in self.block.items()})
            return None if inner is None else f"blocks.{match.group(1)}.{inner}"
        return _rename(key, {v: k for k, v in self.top.items()})

    def state_to_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Rename a file's state dict; names the layout does not know are kept as they are,
        so that loading reports them as unexpected keys."""
        return {self.to_ours(key) or key: value for key, value in state.items()}
