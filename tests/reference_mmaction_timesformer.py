"""An independent forward of mmaction2's TimeSformer on an mmaction2-layout state dict.

Written for the tests from mmaction2's documented data flow (``backbones/timesformer.py``,
``common/transformer.py``: DividedTemporalAttentionWithNorm, DividedSpatialAttentionWithNorm,
FFNWithNorm; mmcv's BaseTransformerLayer with ``norms``/``attentions``/``ffns``), not from
our modules: every attention is ``torch``'s own multi-head attention (the
``nn.MultiheadAttention`` mmaction2 uses, sequence-first) on ``in_proj_*``/``out_proj``,
tokens in mmaction2's ``(p t)`` order. Agreement with our model shows the key mapping and
the three attention types' semantics match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

LAYER = "backbone.transformer_layers.layers"


def _ln(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _mha(x: Tensor, sd: dict[str, Tensor], name: str, heads: int) -> Tensor:
    """nn.MultiheadAttention on a sequence-first (L, N, D) input, as mmaction2 calls it."""
    return F.multi_head_attention_forward(
        x, x, x, x.shape[-1], heads, sd[f"{name}.in_proj_weight"], sd.get(f"{name}.in_proj_bias"), None, None,
        False, 0.0, sd[f"{name}.out_proj.weight"], sd[f"{name}.out_proj.bias"], training=False,
        need_weights=False)[0]


def _ffn(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    """mmcv FFN without its identity: layers.0 = (Linear, GELU), layers.1 = Linear."""
    x = F.gelu(F.linear(x, sd[f"{name}.layers.0.0.weight"], sd[f"{name}.layers.0.0.bias"]))
    return F.linear(x, sd[f"{name}.layers.1.weight"], sd[f"{name}.layers.1.bias"])


def _temporal(x: Tensor, sd: dict[str, Tensor], name: str, frames: int, heads: int) -> Tensor:
    init_cls, xt = x[:, :1], x[:, 1:]
    b, pt, m = xt.shape
    p = pt // frames
    q = _ln(xt.reshape(b * p, frames, m), sd, f"{name}.norm").permute(1, 0, 2)  # (t, b p, m)
    res = _mha(q, sd, f"{name}.attn", heads).permute(1, 0, 2)  # (b p, t, m)
    res = F.linear(res, sd[f"{name}.temporal_fc.weight"], sd[f"{name}.temporal_fc.bias"]).reshape(b, p * frames, m)
    return torch.cat([init_cls, xt + res], dim=1)


def _spatial(x: Tensor, sd: dict[str, Tensor], name: str, frames: int, heads: int) -> Tensor:
    init_cls, xs = x[:, :1], x[:, 1:]
    b, pt, m = xs.shape
    p = pt // frames
    cls = init_cls.repeat(1, frames, 1).reshape(b * frames, 1, m)
    xs = torch.cat([cls, rearrange(xs, "b (p t) m -> (b t) p m", p=p, t=frames)], dim=1)
    res = _mha(_ln(xs, sd, f"{name}.norm").permute(1, 0, 2), sd, f"{name}.attn", heads).permute(1, 0, 2)
    cls_res = res[:, 0].reshape(b, frames, m).mean(1, keepdim=True)
    res = rearrange(res[:, 1:], "(b t) p m -> b (p t) m", p=p, t=frames)
    return x + torch.cat([cls_res, res], dim=1)


def mmaction_reference_forward(sd: dict[str, Tensor], video: Tensor, attention_type: str, num_heads: int
                               ) -> Tensor:
    """Logits of mmaction2's Recognizer3D (TimeSformer + TimeSformerHead) on (B, C, T, H, W)."""
    batch, _, frames = video.shape[:3]
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(LAYER))
    patch = sd["backbone.patch_embed.projection.weight"].shape[-1]
    x = F.conv2d(rearrange(video, "b c t h w -> (b t) c h w"), sd["backbone.patch_embed.projection.weight"],
                 sd["backbone.patch_embed.projection.bias"], stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd["backbone.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["backbone.pos_embed"]
    if attention_type != "space_only":
        cls = x[:batch, 0].unsqueeze(1)
        x = rearrange(x[:, 1:], "(b t) p m -> (b p) t m", b=batch) + sd["backbone.time_embed"]
        x = torch.cat([cls, rearrange(x, "(b p) t m -> b (p t) m", b=batch)], dim=1)
    for i in range(depth):
        layer = f"{LAYER}.{i}"
        if attention_type == "divided_space_time":
            x = _temporal(x, sd, f"{layer}.attentions.0", frames, num_heads)
            x = _spatial(x, sd, f"{layer}.attentions.1", frames, num_heads)
            x = x + _ffn(_ln(x, sd, f"{layer}.ffns.0.norm"), sd, f"{layer}.ffns.0")
        else:  # operation_order (norm, self_attn, norm, ffn), batch-first MultiheadAttention
            h = _ln(x, sd, f"{layer}.norms.0").transpose(0, 1)
            x = x + _mha(h, sd, f"{layer}.attentions.0.attn", num_heads).transpose(0, 1)
            x = x + _ffn(_ln(x, sd, f"{layer}.norms.1"), sd, f"{layer}.ffns.0")
    if attention_type == "space_only":
        x = x.view(-1, frames, *x.shape[-2:]).mean(1)
    x = _ln(x, sd, "backbone.norm")
    return F.linear(x[:, 0], sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])


def mmaction_state_dict(attention_type: str, dim: int, depth: int, grid: int, frames: int, patch_size: int,
                        classes: int, seed: int = 0) -> dict[str, Tensor]:
    """Random weights under mmaction2's key layout for one attention type."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {"backbone.cls_token": rnd(1, 1, dim), "backbone.pos_embed": rnd(1, grid * grid + 1, dim),
          "backbone.patch_embed.projection.weight": rnd(dim, 3, patch_size, patch_size, scale=0.05),
          "backbone.patch_embed.projection.bias": rnd(dim),
          "backbone.norm.weight": 1 + rnd(dim), "backbone.norm.bias": rnd(dim),
          "cls_head.fc_cls.weight": rnd(classes, dim), "cls_head.fc_cls.bias": rnd(classes)}
    if attention_type != "space_only":
        sd["backbone.time_embed"] = rnd(1, frames, dim)

    def linear(name: str, out: int, inp: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rnd(out, inp), rnd(out)

    def norm(name: str) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + rnd(dim), rnd(dim)

    def mha(name: str) -> None:
        sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"] = rnd(3 * dim, dim), rnd(3 * dim)
        linear(f"{name}.out_proj", dim, dim)

    for i in range(depth):
        layer = f"{LAYER}.{i}"
        if attention_type == "divided_space_time":
            for a in ("attentions.0", "attentions.1"):
                norm(f"{layer}.{a}.norm")
                mha(f"{layer}.{a}.attn")
            linear(f"{layer}.attentions.0.temporal_fc", dim, dim)
            norm(f"{layer}.ffns.0.norm")
        else:
            norm(f"{layer}.norms.0")
            norm(f"{layer}.norms.1")
            mha(f"{layer}.attentions.0.attn")
        linear(f"{layer}.ffns.0.layers.0.0", 4 * dim, dim)
        linear(f"{layer}.ffns.0.layers.1", dim, 4 * dim)
    return sd
