"""Per-stage token masks on the original patch grid, from a forward pass's records.

Every reducer call leaves a record (``ForwardInfo.records``) with ``slot_of`` (B, F, N'):
for every original patch, the slot of its frame that holds it *after* that call, or -1
once dropped (``ired_video.reducers.base.Reducer.__call__``). From that alone each stage's
picture follows: a patch is kept if its slot is >= 0, and patches that share a token
(same frame row, same slot) were merged into one. Scoring reducers also record their
scores (``scores``, or ``keep_prob`` for IA-RED² interpreters) with ``pos`` (B, F, K), the
original patch each scored token sat at *before* the call; a merged token's score is
spread over every patch it stands for, using the previous stage's groups.

Layouts: before a ``flat`` reducer the state is (B, T, K) and ``slot_of`` is (B, T, N)
(slot within frame t); once flattened it is (B, 1, T*N) with slots of one sequence. Token
ids here are unique within a clip either way: ``t * N + slot`` per frame, ``slot`` flat.

Everything is a pure function of tensors: no model, no global state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ired_video.tokens import ReducerRecord


@dataclass
class StageMasks:
    """What one stage left of one clip, on the (T, h, w) patch grid of the input.

    Attributes:
        reducer: the reducer's name (``"tome"``, ``"iared2"``, ...).
        block: the block it acted at.
        mode: ``tube``, ``frame`` or ``flat``.
        keep: (T, h, w) bool, the patch is still represented by a token.
        slot: (T, h, w) long, the token's slot (-1 where dropped). Within one frame, patches
            with the same slot form one token; in tube and flat modes a slot is the same
            token group in every frame, so colouring by slot is consistent over time.
        merged: (T, h, w) bool, the patch shares its token with other patches.
        heat: (T, h, w) float, the score the reducer gave the token holding each patch
            before it acted (NaN where it recorded none or the patch was already gone).
        heat_name: what ``heat`` is (``"keep_prob"``, ``"scores"``) or None.
        tokens: real tokens of the clip after the stage.
        total: patches of the input, T * h * w.
    """

    reducer: str
    block: int
    mode: str
    keep: np.ndarray
    slot: np.ndarray
    merged: np.ndarray
    heat: np.ndarray
    heat_name: Optional[str]
    tokens: int
    total: int

    @property
    def kept_fraction(self) -> float:
        """Tokens after the stage over patches of the input."""
        return self.tokens / self.total

    @property
    def label(self) -> str:
        return f"{self.reducer} @ block {self.block}"


def token_ids(slot_of: Tensor, num_patches: int) -> Tensor:
    """(B, F, N') slot_of -> (B, T*N) token id of every original patch, -1 where dropped.

    Per-frame layout (F = T, N' = N): id = t * N + slot; flat (F = 1, N' = T*N): id = slot.
    """
    batch, frames, patches = slot_of.shape
    offset = torch.arange(frames, device=slot_of.device)[None, :, None] * num_patches  # (1, F, 1)
    ids = torch.where(slot_of >= 0, slot_of + offset, slot_of)
    return ids.reshape(batch, frames * patches)  # (B, F, N') -> (B, T*N)


def identity_ids(batch: int, frames: int, num_patches: int, device: Optional[torch.device] = None) -> Tensor:
    """(B, T*N) token ids of the unreduced state: every patch its own token."""
    return torch.arange(frames * num_patches, device=device).expand(batch, -1)


def spread_scores(scores: Tensor, pos: Tensor, ids_before: Tensor) -> Tensor:
    """Per-token scores onto every patch each token stands for.

    scores: (U, K) with U = 1 (tube: shared by frames) or U = F; pos: (F, K) original patch
    of each token; ids_before: (T*N,) token id of every patch when the scores were made.
    Returns (T*N,) float with NaN where a patch had no scored token.
    """
    frames, slots = pos.shape
    scores = scores.expand(frames, slots).reshape(-1).double()  # (F*K,)
    token = ids_before.gather(0, pos.reshape(-1))  # (F*K,) id of the token at each scored slot
    real = token >= 0  # padding slots sit on dropped patches
    by_id = torch.full((ids_before.numel(),), float("nan"), dtype=torch.float64, device=scores.device)
    by_id[token[real]] = scores[real]
    heat = by_id.gather(0, ids_before.clamp(min=0))
    return torch.where(ids_before >= 0, heat, torch.full_like(heat, float("nan")))


def stage_masks(records: Sequence[ReducerRecord], grid: tuple[int, int], num_frames: int,
                clip: int = 0) -> list[StageMasks]:
    """One :class:`StageMasks` per reducer record of clip ``clip`` of the batch.

    ``records``: ``ForwardInfo.records``; ``grid``: (h, w) patch grid; ``num_frames``: T.
    Records without ``slot_of`` (made outside ``Reducer.__call__``) cannot be drawn.
    """
    height, width = grid
    num_patches = height * width
    total = num_frames * num_patches
    ids_before: Optional[Tensor] = None
    stages = []
    for index, record in enumerate(records):
        if record.slot_of is None:
            raise ValueError(f"record {index} ({record.reducer} @ block {record.block}) "
                             f"has no slot_of: it was not made by a Reducer call")
        slot_of = record.slot_of[clip : clip + 1].detach().cpu()  # (1, F, N')
        if ids_before is None:
            ids_before = identity_ids(1, num_frames, num_patches)
        ids = token_ids(slot_of, num_patches)[0]  # (T*N,)
        heat = torch.full((total,), float("nan"), dtype=torch.float64)
        key, values = record.heat()
        if values is not None and record.pos is not None:
            heat = spread_scores(values[clip].detach().cpu(), record.pos[clip].detach().cpu(), ids_before[0])
        keep = ids >= 0
        counts = torch.bincount(ids[keep], minlength=total)  # patches per token id
        merged = keep & (counts.gather(0, ids.clamp(min=0)) > 1)
        slot = slot_of.reshape(-1)  # (T*N,): per-frame slots, or the flat sequence's slots
        shape = (num_frames, height, width)
        stages.append(StageMasks(
            reducer=record.reducer, block=record.block, mode=record.mode, keep=keep.reshape(shape).numpy(),
            slot=slot.reshape(shape).numpy(),
            merged=merged.reshape(shape).numpy(), heat=heat.reshape(shape).float().numpy(),
            heat_name=key, tokens=int(ids[keep].unique().numel()), total=total))
        ids_before = ids[None]
    return stages


def stage_masks_from_info(info: Any, clip: int = 0) -> list[StageMasks]:
    """:func:`stage_masks` for a ``ForwardInfo`` (records, grid and frames from its state)."""
    if info.state is None:
        raise ValueError("ForwardInfo has no state: run the model with return_info=True")
    return stage_masks(info.records, info.state.grid, info.state.num_frames_in, clip)


def heat_from_tokens(scores: Tensor, pos: Tensor, slot_of: Tensor, grid: tuple[int, int],
                     num_frames: int) -> np.ndarray:
    """(F, K) token scores at positions ``pos`` (F, K) of a state with ``slot_of`` (F, N')
    -> (T, h, w) float per patch (NaN where dropped); e.g. a block's class attention."""
    num_patches = grid[0] * grid[1]
    ids = token_ids(slot_of[None].cpu(), num_patches)[0]
    heat = spread_scores(scores.detach().cpu(), pos.cpu(), ids)
    return heat.reshape(num_frames, *grid).float().numpy()  # (T*N,) -> (T, h, w)


def stage_token_counts(records: Sequence[ReducerRecord], num_patches: int) -> list[dict[str, Any]]:
    """Per reducer record: its name, block, mode and ``tokens`` (B,) long, the real tokens
    each clip kept after it (distinct tokens still holding a patch; a cheap summary of
    :func:`stage_masks` for a whole batch)."""
    out = []
    for record in records:
        if record.slot_of is None:
            raise ValueError(f"{record.reducer} @ block {record.block}: a record without slot_of (not made by a "
                             "Reducer call)")
        ids = token_ids(record.slot_of.detach(), num_patches)  # (B, T*N)
        total = ids.shape[1]
        seen = torch.zeros(ids.shape[0], total + 1, dtype=torch.bool, device=ids.device)
        seen.scatter_(1, torch.where(ids >= 0, ids, torch.full_like(ids, total)), True)  # -1 -> spill column
        out.append({"reducer": record.reducer, "block": record.block, "mode": record.mode,
                    "tokens": seen[:, :total].sum(dim=1).cpu()})
    return out
