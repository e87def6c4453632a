"""TimeSformer blocks for the three attention types, acting on a ``TokenState``.

Parameter names follow the official TimeSformer (``norm1``, ``attn``, ``temporal_norm1``,
``temporal_attn``, ``temporal_fc``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so that official
checkpoints load by name.

A block runs in two halves, ``attend`` (the attention residuals) and ``feed_forward``
(the MLP). A reducer placed *inside* the block (ToMe, top-k, BAT, as their papers do)
runs between the two, with this block's attention maps. Each half bills every clip for
the tokens it really processed (``state.spend``).

Extension points: a block calls ``state.hooks`` (``ired_video.tokens.BlockHooks``) for
its MLP branch, for an extra bias on each attention's logits and to hand over those
logits; the default hooks do nothing, so a block knows nothing of who extends it (a
cascade stage supplies DVT's feature and relation reuse, and bills its own modules).
Temporal attention by location (frames holding different tokens after a frame-mode
reducer) asks for no bias and hands back no logits.

Drop path is applied per attention group, as in the official code: per spatial location
for temporal attention, per frame for spatial attention, per clip for the MLP.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from ired_video import flops
from ired_video.models import window as windows
from ired_video.models.attention import Attention, AttentionProbe, GatherWindow, key_mask_bias
from ired_video.tokens import TokenState, gather_slots, pool_to_slots

Tail = Callable[[TokenState, AttentionProbe, Optional[AttentionProbe]], tuple[Tensor, Tensor]]


@dataclass
class AttentionMaps:
    """This block's attention, in state layout, for a reducer inside the block.

    cls_attn: (B, F, K) head-mean attention of the class token to each patch token (per
        frame for divided and space-only blocks: each frame's row sums to 1 with CLS).
    keys: (B, F, K, C) head-mean keys, ToMe's similarity metric.
    probs: full probabilities over [CLS, patches]: (B*F, heads, 1+K, 1+K) for divided and
        space-only blocks, (B, heads, 1+F*K, 1+F*K) for joint blocks.
    state_in: the block's input state (reducers that need "input").
    tail: ``tail(state_in, probe, temporal_probe) -> (logits, macs)``: the rest of the model from
        this block's input, without reducers, with probes on this block's attention
        (reducers that need "tail"; given by the model).
    """

    cls_attn: Optional[Tensor] = None
    keys: Optional[Tensor] = None
    probs: Optional[Tensor] = None
    state_in: Optional[TokenState] = None
    tail: Optional[Tail] = None


class InnerReducer(Protocol):
    needs: frozenset[str]

    def __call__(self, state: TokenState, maps: Optional[AttentionMaps]) -> TokenState: ...


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


def _bias(valid: Optional[Tensor], size: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """(G, L) validity and sizes -> (G, 1, 1, L) additive logit bias, or None."""
    bias = None if valid is None else key_mask_bias(valid, dtype)
    if size is not None:
        log_size = size.to(dtype).log()[:, None, None, :]
        bias = log_size if bias is None else bias + log_size
    return bias


def _add_bias(bias: Optional[Tensor], extra: Optional[Tensor]) -> Optional[Tensor]:
    return extra if bias is None else bias if extra is None else bias + extra


def _with_cls(per_token: Optional[Tensor], groups: int, length: int) -> Optional[Tensor]:
    """(G, ...) per-token validity or sizes -> (G, 1 + length), class token first (True / 1)."""
    if per_token is None:
        return None
    per_token = per_token.reshape(groups, length)  # (G, L)
    prefix = torch.ones(groups, 1, dtype=per_token.dtype, device=per_token.device)
    return torch.cat([prefix, per_token], dim=1)


def _probe_for(inner: Optional[InnerReducer]) -> Optional[AttentionProbe]:
    if inner is None or not inner.needs:
        return None
    return AttentionProbe(want_cls_attn="cls_attn" in inner.needs, want_keys="keys" in inner.needs,
                          want_probs="probs" in inner.needs)


def _maps(probe: Optional[AttentionProbe], batch: int, frames: int, slots: int,
          state_in: Optional[TokenState] = None, tail: Optional[Tail] = None) -> Optional[AttentionMaps]:
    """Probe over (G, 1 + L) sequences -> maps in (B, F, K) layout, class token removed."""
    if probe is None and state_in is None and tail is None:
        return None
    probe = probe if probe is not None else AttentionProbe()
    cls_attn = None if probe.cls_attn is None else probe.cls_attn[:, 1:].reshape(batch, frames, slots)
    keys = None if probe.keys is None else probe.keys[:, 1:].reshape(batch, frames, slots, -1)
    return AttentionMaps(cls_attn=cls_attn, keys=keys, probs=probe.probs, state_in=state_in, tail=tail)


class Block(nn.Module):
    """Attention over one grouping of the tokens, then the MLP (joint and space-only)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused_attention: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.mlp_ratio = mlp_ratio
        self.norm1 = _layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, state: TokenState, inner: Optional[InnerReducer] = None, tail: Optional[Tail] = None
                ) -> TokenState:
        state_in = state if inner is not None and "input" in inner.needs else None
        state.tokens.append(state.real_tokens())
        probe = _probe_for(inner)
        state = self.attend(state, probe)
        if inner is not None:
            state = inner(state, _maps(probe, *self._map_layout(state), state_in, tail))
        return self.feed_forward(state)

    def _hooked_attention(self, state: TokenState, kind: str, probe: Optional[AttentionProbe]
                          ) -> tuple[Optional[Tensor], Optional[AttentionProbe]]:
        """The hooks' extra logit bias for this ``kind`` of attention ("temporal", "spatial"
        or "joint"), and the probe, asking for the logits if the hooks want them."""
        hooks = state.hooks
        if hooks.wants_logits(self, kind):
            probe = probe if probe is not None else AttentionProbe()
            probe.want_logits = True
        return hooks.attention_bias(self, kind, state), probe

    def _hand_logits(self, state: TokenState, kind: str, probe: Optional[AttentionProbe]) -> None:
        if probe is not None and probe.logits is not None and state.hooks.wants_logits(self, kind):
            state.hooks.keep_logits(self, kind, probe.logits)

    def _map_layout(self, state: TokenState) -> tuple[int, int, int]:
        return state.batch_size, state.num_frames, state.num_slots

    def attend(self, state: TokenState, probe: Optional[AttentionProbe],
               temporal_probe: Optional[AttentionProbe] = None) -> TokenState:
        """The attention residual(s); ``probe`` gets the spatial (or joint) attention's maps,
        ``temporal_probe`` the temporal attention's (divided blocks only)."""
        raise NotImplementedError

    def _attention_residual(self, tokens: Tensor, valid: Optional[Tensor], size: Optional[Tensor],
                            probe: Optional[AttentionProbe] = None, allowed: Optional[Tensor] = None,
                            extra: Optional[Tensor] = None, window: Optional[GatherWindow] = None) -> Tensor:
        """(G, L, D) tokens, (G, L) valid/size or None, (G, L, L) window or None -> (G, L, D)
        attention residual; ``extra`` is added to the logits; ``window`` (full grid only)
        goes to the attention's gathered kernel."""
        bias = _add_bias(_bias(valid, size, tokens.dtype), extra)
        if allowed is not None:
            bias = windows.add_window(bias, allowed, tokens.dtype)
        if window is None:
            return self.drop_path(self.attn(self.norm1(tokens), bias, probe))
        return self.drop_path(self.attn(self.norm1(tokens), bias, probe, window=window))

    def feed_forward(self, state: TokenState) -> TokenState:
        """Pre-norm MLP with residual on the class token(s) and every patch token."""
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls, state.x.reshape(batch, frames * slots, dim)], dim=1)  # (B, C+F*K, D)
        tokens = tokens + self.drop_path(state.hooks.feed_forward(self, tokens, state))
        num_cls = state.cls.shape[1]
        state.spend(flops.mlp_macs(state.real_tokens().double() + num_cls, dim, self.mlp_ratio))
        return state.with_tokens(tokens[:, :num_cls], tokens[:, num_cls:].reshape(batch, frames, slots, dim))

    def _frame_counts(self, state: TokenState) -> Tensor:
        """(B, F) float64 real tokens in each frame."""
        return state.valid_mask().sum(dim=2).double()


class JointSpaceTimeBlock(Block):
    """One attention over the class token and every patch token of every frame."""

    def attend(self, state: TokenState, probe: Optional[AttentionProbe],
               temporal_probe: Optional[AttentionProbe] = None) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls, state.x.reshape(batch, frames * slots, dim)], dim=1)  # (B, 1+F*K, D)
        size = state.size if state.prop_attn else None
        extra, probe = self._hooked_attention(state, "joint", probe)
        tokens = tokens + self._attention_residual(
            tokens, _with_cls(state.valid, batch, frames * slots), _with_cls(size, batch, frames * slots), probe,
            extra=extra)
        self._hand_logits(state, "joint", probe)
        state.spend(flops.joint_attention_macs(self._frame_counts(state), dim))
        return state.with_tokens(tokens[:, :1], tokens[:, 1:].reshape(batch, frames, slots, dim))


def _frames_as_batch(per_token: Optional[Tensor]) -> Optional[Tensor]:
    """(B, F, K) -> (B*F, K), passing None through."""
    return None if per_token is None else per_token.reshape(-1, per_token.shape[-1])


class SpaceOnlyBlock(Block):
    """Each frame attends within itself, with its own class token; frames never meet."""

    def attend(self, state: TokenState, probe: Optional[AttentionProbe],
               temporal_probe: Optional[AttentionProbe] = None) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls.reshape(batch * frames, 1, dim),
                            state.x.reshape(batch * frames, slots, dim)], dim=1)  # (B*F, 1+K, D)
        size = state.size if state.prop_attn else None
        extra, probe = self._hooked_attention(state, "spatial", probe)
        tokens = tokens + self._attention_residual(
            tokens, _with_cls(_frames_as_batch(state.valid), batch * frames, slots),
            _with_cls(_frames_as_batch(size), batch * frames, slots), probe, extra=extra)
        self._hand_logits(state, "spatial", probe)
        state.spend(flops.space_only_attention_macs(self._frame_counts(state), dim))
        return state.with_tokens(tokens[:, 0].reshape(batch, frames, dim),
                                 tokens[:, 1:].reshape(batch, frames, slots, dim))

    def feed_forward(self, state: TokenState) -> TokenState:
        """The MLP per frame (drop path per frame, as the official space-only model)."""
        batch, frames, slots, dim = state.x.shape
        tokens = torch.cat([state.cls.reshape(batch * frames, 1, dim),
                            state.x.reshape(batch * frames, slots, dim)], dim=1)  # (B*F, 1+K, D)
        tokens = tokens + self.drop_path(state.hooks.feed_forward(self, tokens, state))
        state.spend(flops.mlp_macs(state.real_tokens().double() + frames, dim, self.mlp_ratio))
        return state.with_tokens(tokens[:, 0].reshape(batch, frames, dim),
                                 tokens[:, 1:].reshape(batch, frames, slots, dim))


class DividedSpaceTimeBlock(Block):
    """Temporal attention (same location across frames), spatial attention (within a
    frame, with a copy of the class token per frame, whose updates are averaged), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused_attention: bool = True) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, fused_attention)
        self.temporal_norm1 = _layer_norm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attention)
        self.temporal_fc = nn.Linear(dim, dim)
        # Window-free attention (set_window): (N, N) and (N, T, T) bool key masks, or None;
        # the gathered kernel's plan of the spatial window, or None (masked kernel).
        self.register_buffer("spatial_window", None, persistent=False)
        self.register_buffer("temporal_window", None, persistent=False)
        self.spatial_plan: Optional[windows.SpatialPlan] = None

    def set_window(self, radius: Optional[list[int]], span: Optional[list[int]], grid: tuple[int, int],
                   frames: int, kernel: str = "gathered") -> None:
        """Restrict attention to per-location fields (``ired_video.models.window``); derived from
        the config, so kept out of the state dict. ``kernel``: "gathered" computes only the
        spatial pairs inside the fields on full-grid frames (where that is fewer pairs than
        dense attention), "masked" masks dense attention."""
        if kernel not in windows.WINDOW_KERNELS:
            raise ValueError(f"window kernel {kernel!r}: expected one of {windows.WINDOW_KERNELS}")
        spatial = None if radius is None else windows.spatial_window(radius, grid)
        temporal = None if span is None else windows.temporal_window(span, frames)
        self.spatial_window, self.temporal_window = spatial, temporal
        gathers = radius is not None and kernel == "gathered"
        self.spatial_plan = windows.gathered_plan(radius, grid) if gathers else None  # type: ignore[arg-type]

    def _full_grid(self, state: TokenState) -> bool:
        """Every frame holds the whole grid in order, one unmasked patch per slot (what the
        gathered kernel needs); reduced, padded or masked states take the masked kernel."""
        if state.valid is not None or state.size is not None or state.num_slots != state.num_patches:
            return False
        location = torch.arange(state.num_patches, device=state.pos.device)
        return bool(torch.equal(state.pos % state.num_patches, location.expand_as(state.pos)))

    def _temporal_allowed(self, location: Tensor, frames: int) -> Optional[Tensor]:
        """(G,) locations -> (G, F, F) temporal window rows, or None without a window."""
        if self.temporal_window is None:
            return None
        if self.temporal_window.shape[-1] != frames:
            raise ValueError(f"the temporal window is for {self.temporal_window.shape[-1]} frames, "
                             f"the clip has {frames}")
        return self.temporal_window[location]

    def temporal_residual(self, state: TokenState, probe: Optional[AttentionProbe] = None) -> tuple[Tensor, Tensor]:
        """(B, F, K, D) -> temporal residual (B, F, K, D) and (B,) (query, key) pairs computed.

        ``probe`` receives this attention's maps: per slot (B*K groups of F) while the state
        is aligned, per patch location (B*N groups of F) once frames hold different tokens."""
        if state.aligned:
            return self._temporal_by_slot(state, probe)
        return self._temporal_by_location(state, probe)

    def _temporal_by_slot(self, state: TokenState, probe: Optional[AttentionProbe] = None) -> tuple[Tensor, Tensor]:
        """Slot k is the same location in every frame: attend over the frames of each slot."""
        batch, frames, slots, dim = state.x.shape
        tubes = state.x.transpose(1, 2).reshape(batch * slots, frames, dim)  # (B*K, F, D)
        valid = None if state.valid is None else state.valid.transpose(1, 2).reshape(batch * slots, frames)
        extra, probe = self._hooked_attention(state, "temporal", probe)
        size = None
        if state.prop_attn and state.size is not None and probe is not None and probe.want_logits:
            # Proportional attention's log(size) is the same for every key of a tube (aligned: each frame's
            # slot k holds the same merged locations, so the same size) and the softmax ignores it; it is
            # added only where the logits are handed out (docs/design.md, "Reducer overhead at batch 1").
            size = state.size.transpose(1, 2).reshape(batch * slots, frames)  # (B*K, F)
        bias = _add_bias(_bias(valid, size, tubes.dtype), extra)
        allowed = self._temporal_allowed((state.pos[:, 0] % state.num_patches).reshape(-1), frames)  # (B*K,)
        if allowed is not None:
            bias = windows.add_window(bias, allowed, tubes.dtype)
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(tubes), bias, probe))
        self._hand_logits(state, "temporal", probe)
        res = res.reshape(batch, slots, frames, dim).transpose(1, 2)  # (B, F, K, D)
        present = state.valid_mask().sum(dim=1).double()  # (B, K) frames each slot is real in
        return self.temporal_fc(res), (present * present).sum(dim=-1)

    def _temporal_by_location(self, state: TokenState, probe: Optional[AttentionProbe] = None
                              ) -> tuple[Tensor, Tensor]:
        """Frames hold different tokens: attend per original patch location, over the frames
        where some token holds that location (masked).

        Tokens are "unmerged" to the dense (B, F, N) grid through ``slot_of``: each patch of
        each frame gets the q, k, v of the token holding it. Attention runs per location over
        the frames, and each token's output is the mean of its outputs over the patches it
        holds: a merged token attends in time through every location it covers, weighted by
        the patches it holds there. A token holding one patch gets the unreduced model's
        temporal attention restricted to the surviving tokens; in tube mode this equals
        attention by slot. Projections run per token; the attention runs on the dense
        (B*N, F) grid and is billed for it.
        """
        batch, frames, slots, dim = state.x.shape
        num_patches = state.num_patches
        attn = self.temporal_attn
        qkv = attn.qkv(self.temporal_norm1(state.x))  # (B, F, K, 3D)
        holder = state.slot_of.clamp(min=0)  # (B, F, N)
        alive = (state.slot_of >= 0) & state.valid_mask().gather(2, holder)  # (B, F, N): held by a real token
        grid = gather_slots(qkv, holder)  # (B, F, N, 3D)
        grid = grid.transpose(1, 2).reshape(batch * num_patches, frames, 3 * dim)  # (B*N, F, 3D)
        present = alive.transpose(1, 2).reshape(batch * num_patches, frames)  # (B*N, F)
        q, k, v = attn.split_qkv(grid)
        bias = _bias(present, None, qkv.dtype)  # one patch per grid cell: no size term
        allowed = self._temporal_allowed(torch.arange(num_patches, device=qkv.device).repeat(batch), frames)
        if allowed is not None:
            bias = windows.add_window(bias, allowed, qkv.dtype)
        out = attn.attend(q, k, v, bias, probe)  # (B*N, heads, F, head_dim)
        out = out.transpose(1, 2).reshape(batch, num_patches, frames, dim).transpose(1, 2)  # (B, F, N, D)
        per_token, _ = pool_to_slots(state, out)  # (B, F, K, D) mean over each token's patches
        res = attn.proj_drop(attn.proj(per_token))
        res = self.drop_path(res.transpose(1, 2).reshape(batch * slots, frames, dim))  # per slot, as by slot
        res = res.reshape(batch, slots, frames, dim).transpose(1, 2)  # (B, F, K, D)
        pairs = torch.full((batch,), float(num_patches * frames * frames), dtype=torch.float64, device=qkv.device)
        return self.temporal_fc(res), pairs

    def attend(self, state: TokenState, probe: Optional[AttentionProbe],
               temporal_probe: Optional[AttentionProbe] = None) -> TokenState:
        batch, frames, slots, dim = state.x.shape
        temporal, pairs = self.temporal_residual(state, temporal_probe)
        xt = state.x + temporal  # (B, F, K, D)

        cls_copies = state.cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim)
        tokens = torch.cat([cls_copies, xt.reshape(batch * frames, slots, dim)], dim=1)  # (B*F, 1+K, D)
        size = state.size if state.prop_attn else None
        extra, probe = self._hooked_attention(state, "spatial", probe)
        allowed, window = None, None
        if self.spatial_plan is not None and extra is None and self._full_grid(state):
            window = GatherWindow(self.spatial_plan)
        elif self.spatial_window is not None:
            location = (state.pos % state.num_patches).reshape(batch * frames, slots)  # (B*F, K)
            allowed = windows.spatial_allowed(self.spatial_window, location)
        res = self._attention_residual(tokens, _with_cls(_frames_as_batch(state.valid), batch * frames, slots),
                                       _with_cls(_frames_as_batch(size), batch * frames, slots), probe, allowed,
                                       extra, window)
        self._hand_logits(state, "spatial", probe)
        cls_res = res[:, 0].reshape(batch, frames, dim).mean(dim=1, keepdim=True)  # (B, 1, D)
        patch_res = res[:, 1:].reshape(batch, frames, slots, dim)  # (B, F, K, D)
        spatial_pairs = None
        if window is not None and window.gathered:  # the kernel computed only the plan's pairs
            spatial_pairs = state.macs.new_full((batch,), float(frames * window.plan.pairs_per_frame()))
        state.spend(flops.divided_attention_macs(self._frame_counts(state), dim, pairs, spatial_pairs))
        return state.with_tokens(state.cls + cls_res, xt + patch_res)


BLOCKS: dict[str, type[Block]] = {
    "divided_space_time": DividedSpaceTimeBlock,
    "joint_space_time": JointSpaceTimeBlock,
    "space_only": SpaceOnlyBlock,
}
