"""The token state: what travels down the block loop with the tokens, and its operations.

Layout. Patch tokens are stored frame-major as ``x: (B, F, K, D)``: clip, frame, token
slot, channel. Before any reduction F = T frames and K = N = (H/p)*(W/p) patches, and slot
k of frame t is patch k of that frame (row-major over the grid). The official TimeSformer
keeps one flat sequence in ``(n t)`` order (spatial outer, frame inner); the two layouts
hold the same numbers and give the same outputs, ours just makes "one frame" and "one
location" plain reshapes. The class token is kept apart: ``cls: (B, 1, D)``, or
``(B, T, D)`` for the space-only model, which carries one class token per frame.

Original patches are numbered globally, ``t * N + n`` for patch n of frame t: ``pos``
holds that number for each token (for a merged token, the number of the token it was
merged into). A joint-attention model may ``flatten_frames`` the state to F = 1 frame of
T*K slots, after which reducers can merge and drop across frames.

Operations (``keep_slots``, ``merge_slots``, ``merge_into_representatives``, ``flatten_frames``) return a new state and
keep ``x``, ``pos``, ``size``, ``valid`` and ``slot_of`` consistent. A state is built by
the model on every forward and never stored on a module.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor, nn


class BlockHooks:
    """Extension points every block calls on every forward; this default changes nothing
    (timm's ``nn.Identity`` idiom: the hook is always there, no block tests for it).

    A caller that needs more (a cascade stage reusing earlier stages,
    ``ired_video.cascade.reuse.CascadeHooks``) puts a subclass in
    ``TokenState.hooks``. ``kind`` names an attention: "temporal", "spatial" or "joint".
    """

    replayable: bool = True  # blocks may run again on a state carrying these hooks (a reducer's tail pass)

    def attention_bias(self, block: nn.Module, kind: str, state: "TokenState") -> Optional[Tensor]:
        """An additive logit bias (G, heads, L, L) for ``block``'s ``kind`` attention, or None."""
        return None

    def wants_logits(self, block: nn.Module, kind: str) -> bool:
        """Whether ``keep_logits`` should get this attention's pre-softmax logits."""
        return False

    def keep_logits(self, block: nn.Module, kind: str, logits: Tensor) -> None:
        """Receives (G, heads, L, L) pre-softmax logits (bias included) when ``wants_logits``."""

    def feed_forward(self, block: nn.Module, tokens: Tensor, state: "TokenState") -> Tensor:
        """The MLP branch of ``block`` on its (G, L, D) input, before drop path: mlp(norm2(x))."""
        return block.mlp(block.norm2(tokens))


NO_HOOKS = BlockHooks()


@dataclass
class PolicyDecision:
    """A sampled (training-mode) keep decision of IA-RED², per clip (B,): ``log_prob`` of
    the kept set, ``kept_fraction`` of the units kept, ``expected_keep`` its differentiable
    expectation under the keep probabilities."""

    log_prob: Tensor
    kept_fraction: Tensor
    expected_keep: Tensor


@dataclass
class ReducerRecord:
    """What one reducer call did, for overlays, analysis and training objectives.

    reducer, block, mode: which reducer acted, before or in which block, on which units.
    slot_of: (B, F, N') where each original patch sits after the call (-1: dropped; a
        shared slot: merged); filled in by the reducer's ``__call__``.
    pos: (B, F, K) positions of the tokens ``scores``/``keep_prob`` refer to.
    scores: (B, U, K) what units were ranked by (drop, BAT, attention received, interaction).
    keep_prob: (B, U, K) IA-RED²'s interpreter keep probabilities; ``policy`` its sampled
        decision in training.
    indicator, predicted, features: the interaction indicator pass (``score=indicator``).
    """

    reducer: str
    block: int
    mode: str
    slot_of: Optional[Tensor] = None
    pos: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    keep_prob: Optional[Tensor] = None
    policy: Optional[PolicyDecision] = None
    indicator: Optional[Tensor] = None
    predicted: Optional[Tensor] = None
    features: Optional[Tensor] = None

    def heat(self) -> tuple[Optional[str], Optional[Tensor]]:
        """(name, (B, U, K) values) an overlay draws per patch: the interpreter's keep
        probability, else the scores; (None, None) when the call scored nothing."""
        if self.pos is None:
            return None, None
        if self.keep_prob is not None:
            return "keep_prob", self.keep_prob
        if self.scores is not None:
            return "scores", self.scores
        return None, None


@dataclass
class TokenState:
    """Tokens of a batch of clips plus what each token stands for.

    Attributes:
        cls: (B, C, D) class token(s); C = 1, or T for the space-only model.
        x: (B, F, K, D) patch tokens.
        pos: (B, F, K) long, global index t * N + n of the original patch each token sits at.
        slot_of: (B, F, N') long, for every original patch (N' = N per frame, or T*N once
            flattened), the slot of its frame that holds it now, or -1 once dropped.
        grid: (h, w) patch grid of the input; N = h * w.
        num_frames_in: T, frames of the input clip.
        macs: (B,) float64, multiply-accumulates spent so far on each clip.
        size: (B, F, K) float, original patches each token stands for; None while every
            token is one patch.
        valid: (B, F, K) bool, False on padding slots (clips of one batch that kept
            different counts) and on tokens masked out while training; None while every
            slot is real.
        aligned: True while slot k holds the same location in every frame (no reduction,
            or tube-mode reduction), so temporal attention can run per slot; slot k then
            also has one size in every frame.
        prop_attn: add log(size) to attention logits (ToMe's proportional attention).
        tokens: per block, a (B,) long tensor of the real patch tokens it processed.
        records: per reducer call, a ``ReducerRecord`` of what it did.
        hooks: what blocks call at their extension points (``BlockHooks``); left out or
            None it is ``NO_HOOKS``, which does nothing; a cascade stage supplies its reuse of
            earlier stages.
    """

    cls: Tensor
    x: Tensor
    pos: Tensor
    slot_of: Tensor
    grid: tuple[int, int]
    num_frames_in: int
    macs: Tensor
    size: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    aligned: bool = True
    prop_attn: bool = False
    tokens: list[Tensor] = field(default_factory=list)
    records: list[ReducerRecord] = field(default_factory=list)
    # None, not NO_HOOKS, as the default: torch.compile up to 2.11 cannot trace an object held
    # as a function default (dataclass __init__), and broke the model into one graph per block
    hooks: Optional[BlockHooks] = None

    def __post_init__(self) -> None:
        if self.hooks is None:
            self.hooks = NO_HOOKS

    @classmethod
    def from_patches(cls, cls_tokens: Tensor, patches: Tensor, grid: tuple[int, int]) -> "TokenState":
        """Start state: every patch of every frame, one patch per token, nothing spent."""
        batch, frames, num_patches, _ = patches.shape
        device = patches.device
        spatial = torch.arange(num_patches, device=device)
        frame_offset = torch.arange(frames, device=device)[:, None] * num_patches
        pos = (frame_offset + spatial).expand(batch, frames, num_patches)  # (B, T, N)
        slot_of = spatial.expand(batch, frames, num_patches)  # (B, T, N)
        macs = torch.zeros(batch, dtype=torch.float64, device=device)
        return cls(cls=cls_tokens, x=patches, pos=pos, slot_of=slot_of, grid=grid,
                   num_frames_in=frames, macs=macs)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_frames(self) -> int:
        """F: frames along the state's frame axis (1 once flattened)."""
        return self.x.shape[1]

    @property
    def num_slots(self) -> int:
        """K: token slots per frame (padding included)."""
        return self.x.shape[2]

    @property
    def num_patches(self) -> int:
        """N: patches per input frame."""
        return self.grid[0] * self.grid[1]

    def sizes(self) -> Tensor:
        """(B, F, K) float sizes (ones while nothing was merged)."""
        if self.size is None:
            return torch.ones(self.x.shape[:3], dtype=self.x.dtype, device=self.x.device)
        return self.size

    def valid_mask(self) -> Tensor:
        """(B, F, K) bool validity (all True while nothing is padded or masked)."""
        if self.valid is None:
            return torch.ones(self.x.shape[:3], dtype=torch.bool, device=self.x.device)
        return self.valid

    def real_tokens(self) -> Tensor:
        """(B,) long: real patch tokens of each clip over all frames."""
        if self.valid is None:
            count = self.num_frames * self.num_slots
            return torch.full((self.batch_size,), count, dtype=torch.long, device=self.x.device)
        return self.valid.sum(dim=(1, 2))

    def with_tokens(self, cls_tokens: Tensor, patches: Tensor) -> "TokenState":
        """Same bookkeeping, new token values (shapes unchanged)."""
        return replace(self, cls=cls_tokens, x=patches)

    def spend(self, macs: Tensor) -> None:
        """Add (B,) multiply-accumulates to each clip's bill."""
        self.macs = self.macs + macs.to(self.macs.dtype)


def _frame_numbers(index: Tensor) -> Tensor:
    """(B, F, ...) -> (B, F, 1) long: the number b * F + f of every frame."""
    batch, frames = index.shape[:2]
    return torch.arange(batch * frames, device=index.device).reshape(batch, frames, 1)  # (B, F, 1)


def _slot_rows(index: Tensor, slots: int, frame: Optional[Tensor] = None) -> Tensor:
    """(B, F, K') slot indices into frames of ``slots`` slots -> (B*F*K',) row numbers of
    the same slots in a (B*F*slots, ...) flattening of the (B, F, slots, ...) tensor;
    ``frame``: ``_frame_numbers(index)``, when the caller has it already."""
    frame = _frame_numbers(index) if frame is None else frame
    return (index + frame * slots).reshape(-1)


def gather_slots(values: Tensor, index: Tensor) -> Tensor:
    """values (B, F, K, ...) gathered along the slot axis by index (B, F, K') -> (B, F, K', ...).

    Whole rows by ``index_select`` on the flattened slots: the same values as ``gather``
    with the index expanded over the trailing axes, which the CPU walks element by element
    (docs/design.md, "Reducer overhead at batch 1")."""
    batch, frames, slots = values.shape[:3]
    extra = values.shape[3:]
    rows = values.reshape(batch * frames * slots, *extra)  # (B*F*K, ...)
    return rows.index_select(0, _slot_rows(index, slots)).reshape(*index.shape, *extra)  # (B, F, K', ...)


def _remap_slot_of(slot_of: Tensor, new_slot: Tensor) -> Tensor:
    """Compose (B, F, N') patch -> old slot with (B, F, K) old slot -> new slot (or -1)."""
    alive = slot_of >= 0
    mapped = new_slot.gather(2, slot_of.clamp(min=0))
    return torch.where(alive, mapped, torch.full_like(mapped, -1))


def keep_slots(state: TokenState, index: Tensor, valid: Optional[Tensor] = None,
               aligned: Optional[bool] = None) -> TokenState:
    """Keep the slots ``index`` (B, F, K') of each frame, in that order; drop the rest.

    ``valid`` (B, F, K') marks padding among the kept slots (clips that kept fewer);
    ``aligned`` says whether the same slots were kept in every frame (defaults to the
    state's alignment if ``index`` is the same for every frame, else False).
    """
    batch, frames, slots = state.x.shape[:3]
    if aligned is None:
        aligned = state.aligned and bool((index == index[:, :1]).all())
    kept_valid = gather_slots(state.valid, index) if state.valid is not None else None
    if valid is not None:
        kept_valid = valid if kept_valid is None else kept_valid & valid
    new_slot = torch.full((batch, frames, slots), -1, dtype=torch.long, device=index.device)
    rank = torch.arange(index.shape[2], device=index.device).expand_as(index)
    if kept_valid is not None:
        rank = torch.where(kept_valid, rank, torch.full_like(rank, -1))  # padding keeps no patch
    new_slot.scatter_(2, index, rank)
    return replace(state, x=gather_slots(state.x, index), pos=state.pos.gather(2, index),
                   size=None if state.size is None else state.size.gather(2, index),
                   valid=kept_valid, slot_of=_remap_slot_of(state.slot_of, new_slot), aligned=aligned,
                   tokens=list(state.tokens), records=list(state.records))


def merge_slots(state: TokenState, assign: Tensor, representative: Tensor,
                weights: Optional[Tensor] = None, aligned: Optional[bool] = None) -> TokenState:
    """Merge the slots of each frame into groups.

    assign: (B, F, K) long, the new slot each old slot goes to, or -1 to drop it.
    representative: (B, F, K') long, the old slot whose position each new slot takes.
    weights: (B, F, K) averaging weights; by default the sizes (ToMe's size-weighted
        mean). New tokens are sum(w x) / sum(w) over their group; new sizes add up.
    """
    if state.valid is not None and not bool(state.valid.all()):
        raise ValueError("merging needs every slot to be real: run merge reducers before adaptive "
                         "(padded) ones, or use ratio keeping")
    batch, frames, slots, dim = state.x.shape
    new_slots = representative.shape[2]
    sizes = state.sizes()
    weights = sizes if weights is None else weights
    keep = assign >= 0
    target = torch.where(keep, assign, torch.full_like(assign, new_slots))  # dropped -> spill slot
    weights = torch.where(keep, weights, torch.zeros_like(weights))
    weighted = (state.x * weights[..., None]).reshape(batch * frames * slots, dim)  # (B*F*K, D)
    summed = torch.zeros(batch * frames * (new_slots + 1), dim, dtype=state.x.dtype, device=state.x.device)
    summed.index_add_(0, _slot_rows(target, new_slots + 1), weighted)  # whole rows, in slot order as scatter_add_
    summed = summed.reshape(batch, frames, new_slots + 1, dim)  # (B, F, K'+1, D)
    total_w = torch.zeros(batch, frames, new_slots + 1, dtype=weights.dtype, device=weights.device)
    total_w.scatter_add_(2, target, weights)
    new_size = torch.zeros(batch, frames, new_slots + 1, dtype=sizes.dtype, device=sizes.device)
    new_size.scatter_add_(2, target, torch.where(keep, sizes, torch.zeros_like(sizes)))
    x = summed[:, :, :new_slots] / total_w[:, :, :new_slots, None].clamp(min=torch.finfo(weights.dtype).tiny)
    if aligned is None:
        aligned = state.aligned and bool((assign == assign[:, :1]).all())
    return replace(state, x=x, pos=state.pos.gather(2, representative), size=new_size[:, :, :new_slots],
                   valid=None, slot_of=_remap_slot_of(state.slot_of, assign), aligned=aligned,
                   tokens=list(state.tokens), records=list(state.records))


def merge_into_representatives(state: TokenState, assign: Tensor, representative: Tensor,
                               aligned: bool, weights: Optional[Tensor] = None) -> TokenState:
    """``merge_slots`` for a plan that drops nothing (ToMe's, BAT's): every old slot is the
    representative of its new slot or merges into one (``assign`` >= 0 everywhere);
    ``weights`` (B, F, K) as for ``merge_slots`` (default: the sizes).

    Only rows are moved: the K' representatives are selected whole and each of the K - K'
    others (the sources, in slot order) adds w_s / W (x_s - x_rep) onto its representative,
    W = w_rep + the w of all its sources: the weighted mean sum(w x) / W, computed on the
    rows that receive sources only (no zero-filled buffer, no pass over every slot; it may
    differ from ``merge_slots``' sums in the last bits). A new token without sources keeps
    its value.
    """
    if state.valid is not None and not bool(state.valid.all()):
        raise ValueError("merging needs every slot to be real: run merge reducers before adaptive "
                         "(padded) ones, or use ratio keeping")
    batch, frames, slots, dim = state.x.shape
    new_slots = representative.shape[2]
    is_rep = torch.zeros(batch, frames, slots, dtype=torch.uint8, device=assign.device)
    is_rep.scatter_(2, representative, 1)
    sources = is_rep.sort(dim=2, stable=True).indices[:, :, :slots - new_slots]  # (B, F, r) in slot order
    frame = _frame_numbers(assign)  # (B, F, 1), shared by the three row lists
    rep_rows = _slot_rows(representative, slots, frame)  # (B*F*K',)
    src_rows = _slot_rows(sources, slots, frame)  # (B*F*r,)
    dst_rows = _slot_rows(assign.gather(2, sources), new_slots, frame)  # (B*F*r,) rows of the merged tensor
    rows = state.x.reshape(batch * frames * slots, dim)  # (B*F*K, D)
    x, moved = rows.index_select(0, rep_rows), rows.index_select(0, src_rows)  # (B*F*K', D), (B*F*r, D)
    if state.size is None:
        size = torch.ones(rep_rows.shape[0], dtype=x.dtype, device=x.device)
        moved_size = torch.ones(src_rows.shape[0], dtype=x.dtype, device=x.device)
    else:
        sizes = state.size.reshape(-1)  # (B*F*K,)
        size, moved_size = sizes.index_select(0, rep_rows), sizes.index_select(0, src_rows)
    new_size = size.index_add(0, dst_rows, moved_size)  # (B*F*K',)
    if weights is None:
        total, moved_weight = new_size, moved_size
    else:
        flat_weights = weights.reshape(-1)  # (B*F*K,)
        moved_weight = flat_weights.index_select(0, src_rows)
        total = flat_weights.index_select(0, rep_rows).index_add(0, dst_rows, moved_weight)
    share = moved_weight / total.index_select(0, dst_rows).clamp(min=torch.finfo(total.dtype).tiny)  # (B*F*r,)
    x.index_add_(0, dst_rows, (moved - x.index_select(0, dst_rows)) * share[:, None])  # every source read x_rep first
    x = x.reshape(batch, frames, new_slots, dim)  # (B, F, K', D)
    return replace(state, x=x, pos=state.pos.gather(2, representative),
                   size=new_size.reshape(batch, frames, new_slots), valid=None,
                   slot_of=_remap_slot_of(state.slot_of, assign), aligned=aligned,
                   tokens=list(state.tokens), records=list(state.records))


def flatten_frames(state: TokenState) -> TokenState:
    """(B, T, K, D) -> (B, 1, T*K, D): one sequence, so joint-attention reducers can act
    across frames. Only meaningful for joint space-time models."""
    if state.num_frames == 1:
        return state
    batch, frames, slots, dim = state.x.shape
    offset = torch.arange(frames, device=state.x.device)[None, :, None] * slots  # (1, T, 1)
    slot_of = torch.where(state.slot_of >= 0, state.slot_of + offset, state.slot_of)

    def flat(values: Optional[Tensor]) -> Optional[Tensor]:
        return None if values is None else values.reshape(batch, 1, frames * slots, *values.shape[3:])

    return replace(state, x=flat(state.x), pos=flat(state.pos), size=flat(state.size), valid=flat(state.valid),
                   slot_of=slot_of.reshape(batch, 1, -1), aligned=False,
                   tokens=list(state.tokens), records=list(state.records))


def pool_to_slots(state: TokenState, per_patch: Tensor) -> tuple[Tensor, Tensor]:
    """Average values given per original patch over the patches each slot holds now.

    per_patch: (B, T, N, D), frame-major like the input (e.g. the unreduced model's
    tokens). Returns the (B, F, K, D) mean over each slot's patches (by ``slot_of``) and
    the (B, F, K) count of patches it holds; a slot holding none (padding) gets zeros.
    """
    batch, frames, slots, _ = state.x.shape
    dim = per_patch.shape[-1]
    values = per_patch.reshape(batch, frames, state.slot_of.shape[2], dim)  # (B, F, N', D): a flattened state's F = 1
    target = torch.where(state.slot_of >= 0, state.slot_of, torch.full_like(state.slot_of, slots))  # dropped -> spill
    summed = torch.zeros(batch * frames * (slots + 1), dim, dtype=values.dtype, device=values.device)
    summed.index_add_(0, _slot_rows(target, slots + 1), values.reshape(-1, dim))  # whole rows, in patch order
    summed = summed.reshape(batch, frames, slots + 1, dim)  # (B, F, K+1, D)
    count = torch.zeros(batch, frames, slots + 1, dtype=values.dtype, device=values.device)
    count.scatter_add_(2, target, torch.ones_like(target, dtype=values.dtype))
    count = count[:, :, :slots]
    return summed[:, :, :slots] / count.clamp(min=1)[..., None], count
