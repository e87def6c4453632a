"""An independent, straightforward TimeSformer forward on an official-layout state dict.

Written for the tests from the reference equations (official ``vit.py`` semantics), not
from our modules: one flat token sequence in the official ``(n t)`` order (spatial
outer, frame inner), plain functional ops, explicit softmax attention. Our model stores
tokens frame-major; agreement of the two shows that layouts, embeddings and the class
token's handling match.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _ln(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _attn(x: Tensor, sd: dict[str, Tensor], name: str, heads: int) -> Tensor:
    b, n, c = x.shape
    qkv = F.linear(x, sd[f"{name}.qkv.weight"], sd.get(f"{name}.qkv.bias"))
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads)
    a = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
    out = a.softmax(-1) @ v
    return F.linear(rearrange(out, "b h n d -> b n (h d)"), sd[f"{name}.proj.weight"], sd[f"{name}.proj.bias"])


def _mlp(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    x = F.gelu(F.linear(x, sd[f"{name}.fc1.weight"], sd[f"{name}.fc1.bias"]))
    return F.linear(x, sd[f"{name}.fc2.weight"], sd[f"{name}.fc2.bias"])


def reference_forward(official_state: dict[str, Tensor], video: Tensor, attention_type: str,
                      num_heads: int, depth: int, patch_size: int) -> Tensor:
    """Logits of the official TimeSformer with ``model.``-prefixed weights on (B, C, T, H, W)."""
    sd = {k[len("model."):]: v for k, v in official_state.items()}
    B, C, T, H, W = video.shape
    x = rearrange(video, "b c t h w -> (b t) c h w")
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size)
    w = x.shape[-1]
    x = rearrange(x, "bt d gh gw -> bt (gh gw) d")
    cls = sd["cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = sd["pos_embed"]
    if x.shape[1] != pos.shape[1]:  # 2-D nearest resize, as the official forward
        side = int((pos.shape[1] - 1) ** 0.5)
        grid = rearrange(pos[:, 1:], "1 (p q) d -> 1 d p q", p=side)
        grid = F.interpolate(grid, size=((x.shape[1] - 1) // w, w), mode="nearest")
        pos = torch.cat([pos[:, :1], rearrange(grid, "1 d p q -> 1 (p q) d")], dim=1)
    x = x + pos
    if attention_type != "space_only":
        cls = x[:B, 0:1]
        x = rearrange(x[:, 1:], "(b t) n d -> (b n) t d", b=B, t=T)
        time = sd["time_embed"]
        if time.shape[1] != T:
            time = F.interpolate(time.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)
        x = x + time
        x = rearrange(x, "(b n) t d -> b (n t) d", b=B, t=T)
        x = torch.cat([cls, x], dim=1)

    for i in range(depth):
        p = f"blocks.{i}"
        if attention_type in ("space_only", "joint_space_time"):
            x = x + _attn(_ln(x, sd, f"{p}.norm1"), sd, f"{p}.attn", num_heads)
            x = x + _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")
            continue
        n = (x.shape[1] - 1) // T
        xt = rearrange(x[:, 1:], "b (n t) d -> (b n) t d", n=n, t=T)
        res = _attn(_ln(xt, sd, f"{p}.temporal_norm1"), sd, f"{p}.temporal_attn", num_heads)
        res = rearrange(res, "(b n) t d -> b (n t) d", b=B, n=n, t=T)
        res = F.linear(res, sd[f"{p}.temporal_fc.weight"], sd[f"{p}.temporal_fc.bias"])
        xt = x[:, 1:] + res
        init_cls = x[:, 0:1]
        cls = rearrange(init_cls.repeat(1, T, 1), "b t d -> (b t) 1 d")
        xs = torch.cat([cls, rearrange(xt, "b (n t) d -> (b t) n d", n=n, t=T)], dim=1)
        res = _attn(_ln(xs, sd, f"{p}.norm1"), sd, f"{p}.attn", num_heads)
        cls_res = rearrange(res[:, 0], "(b t) d -> b t d", b=B, t=T).mean(1, keepdim=True)
        res = rearrange(res[:, 1:], "(b t) n d -> b (n t) d", b=B, t=T)
        x = torch.cat([init_cls, xt], dim=1) + torch.cat([cls_res, res], dim=1)
        x = x + _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")

    if attention_type == "space_only":
        x = rearrange(x, "(b t) n d -> b t n d", b=B, t=T).mean(1)
    x = _ln(x, sd, "norm")
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def official_state_dict(attention_type: str, dim: int, depth: int, grid: int, frames: int,
                        patch_size: int, classes: int, mlp_ratio: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """Random weights under the documented official key layout (``model.`` prefix)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {"model.cls_token": rnd(1, 1, dim), "model.pos_embed": rnd(1, grid * grid + 1, dim),
          "model.patch_embed.proj.weight": rnd(dim, 3, patch_size, patch_size, scale=0.05),
          "model.patch_embed.proj.bias": rnd(dim),
          "model.norm.weight": 1 + rnd(dim), "model.norm.bias": rnd(dim),
          "model.head.weight": rnd(classes, dim), "model.head.bias": rnd(classes)}
    if attention_type != "space_only":
        sd["model.time_embed"] = rnd(1, frames, dim)
    attns = ["attn", "temporal_attn"] if attention_type == "divided_space_time" else ["attn"]
    norms = ["norm1", "norm2"] + (["temporal_norm1"] if attention_type == "divided_space_time" else [])
    for i in range(depth):
        p = f"model.blocks.{i}"
        for a in attns:
            sd[f"{p}.{a}.qkv.weight"] = rnd(3 * dim, dim)
            sd[f"{p}.{a}.qkv.bias"] = rnd(3 * dim)
            sd[f"{p}.{a}.proj.weight"] = rnd(dim, dim)
            sd[f"{p}.{a}.proj.bias"] = rnd(dim)
        for nrm in norms:
            sd[f"{p}.{nrm}.weight"] = 1 + rnd(dim)
            sd[f"{p}.{nrm}.bias"] = rnd(dim)
        if attention_type == "divided_space_time":
            sd[f"{p}.temporal_fc.weight"] = rnd(dim, dim)
            sd[f"{p}.temporal_fc.bias"] = rnd(dim)
        sd[f"{p}.mlp.fc1.weight"] = rnd(mlp_ratio * dim, dim)
        sd[f"{p}.mlp.fc1.bias"] = rnd(mlp_ratio * dim)
        sd[f"{p}.mlp.fc2.weight"] = rnd(dim, mlp_ratio * dim)
        sd[f"{p}.mlp.fc2.bias"] = rnd(dim)
    return sd
