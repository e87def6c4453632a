"""ToMe against the official rules (facebookresearch/ToMe ``tome/merge.py``, ``tome/patch/timm.py``,
``tome/utils.py``), re-implemented here from their description with plain loops.

A one-frame TimeSformer built from a timm ViT's weights *is* that ViT, so ``apply_reducer(model,
"tome", ...)`` must give the logits of the official ToMe applied to the ViT. The reference below
runs the timm ViT's own modules block by block and merges one sequence at a time:

- the split covers the whole sequence, class token at index 0: A = even indices, B = odd;
- each A token's best B is the most cosine-similar one by the head-mean keys of that block's
  attention (the first on ties); the class token's scores are -inf;
- r is capped at (tokens - protected) // 2; the r A tokens with the highest best score merge
  (A tokens of equal score in index order: a stable sort);
- merged values are size-weighted means, sizes add up; the new sequence is [unmerged A, B],
  unmerged A in their original order with a class token, best-match-first without;
- proportional attention adds log(size) to the logits once sizes exist;
- the merge runs between the attention residual and the MLP.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch

from ired_video import apply_reducer, create_model
from ired_video.reducers import bipartite_soft_matching, parse_r, tome

IMG, PATCH, DIM, HEADS, DEPTH, CLASSES = 56, 8, 48, 3, 4, 7  # 7 x 7 = 49 patches: odd lengths too


def official_parse_r(depth: int, r):
    """ToMe's parse_r: a list per layer (padded with 0), or (r, inflection) as a linear ramp."""
    if isinstance(r, list):
        return r + [0] * (depth - len(r))
    r, inflect = r if isinstance(r, tuple) else (r, 0)
    first = int(r * (1.0 - inflect))
    last = 2 * r - first
    step = (last - first) / (depth - 1)
    return [int(first + step * i) for i in range(depth)]


def official_merge(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int, class_token: bool):
    """One sequence: x (L, D), size (L,), keys (L, C) -> merged x, size by the official rules."""
    length = x.shape[0]
    r = min(r, (length - (1 if class_token else 0)) // 2)
    if r <= 0:
        return x, size
    a_idx, b_idx = list(range(0, length, 2)), list(range(1, length, 2))
    unit = keys / keys.norm(dim=-1, keepdim=True)
    best, best_score = {}, {}
    for i in a_idx:
        sims = [float(unit[i] @ unit[j]) for j in b_idx]
        top = max(sims)
        best[i] = b_idx[sims.index(top)]  # the first most similar B
        best_score[i] = -math.inf if (class_token and i == 0) else top
    order = sorted(a_idx, key=lambda i: -best_score[i])  # Python's sort is stable
    merged, unmerged = order[:r], order[r:]
    if class_token:
        unmerged = sorted(unmerged)
    rows, sizes = [x[i] for i in unmerged], [size[i] for i in unmerged]
    for j in b_idx:
        group = [j] + [i for i in merged if best[i] == j]
        total = sum(size[g] for g in group)
        rows.append(sum(x[g] * size[g] for g in group) / total)
        sizes.append(total)
    return torch.stack(rows), torch.stack(sizes)


def official_tome_vit(vit, images: torch.Tensor, r, prop_attn: bool) -> torch.Tensor:
    """Logits of the timm ViT under the official ToMe rules (eval mode)."""
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))  # (B, 1 + N, D)
    size = None
    for block, block_r in zip(vit.blocks, official_parse_r(len(vit.blocks), r)):
        attn = block.attn
        batch, length, dim = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(batch, length, 3, attn.num_heads, dim // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, head_dim)
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        if prop_attn and size is not None:
            logits = logits + size.log()[:, None, None, :]
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + attn.proj(out)
        if block_r > 0:
            size = torch.ones(batch, length) if size is None else size
            pairs = [official_merge(x[b], size[b], k.mean(dim=1)[b], block_r, class_token=True)
                     for b in range(batch)]
            x, size = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        x = x + block.mlp(block.norm2(x))
    return vit.forward_head(vit.norm(x))


@pytest.fixture(scope="module")
def vit_and_weights(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES).eval()
    for p in vit.parameters():  # diverse tokens (no near-ties in the matching), every tensor non-zero
        p.data.add_(torch.randn_like(p) * 0.1)
    for block in vit.blocks:  # the reference uses these as plain ViT blocks
        assert isinstance(block.attn.q_norm, torch.nn.Identity) and isinstance(block.ls1, torch.nn.Identity)
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    torch.save(vit.state_dict(), path)
    return vit, path


def _ours(path, attention_type: str) -> torch.nn.Module:
    return create_model("timesformer_test", checkpoint=path, attention_type=attention_type, num_frames=1,
                        img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                        num_classes=CLASSES).eval()


MODES = [("space_only", "tube"), ("space_only", "frame"), ("divided_space_time", "tube"),
         ("divided_space_time", "frame"), ("joint_space_time", "flat")]
SETTINGS = [(0, True), (2, True), (8, True), (8, False), (24, True), ((8, -1.0), True), ((8, -1.0), False),
            ([3, 0, 12], True)]


@pytest.mark.parametrize("attention_type,mode", MODES, ids=[f"{a}-{m}" for a, m in MODES])
def test_one_frame_tome_equals_the_official_rules_on_the_vit(vit_and_weights, attention_type, mode):
    vit, path = vit_and_weights
    model = _ours(path, attention_type)
    images = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = vit(images)
        for r, prop_attn in SETTINGS:
            if isinstance(r, tuple):
                kwargs = {"r": r[0], "r_inflection": r[1]}
            else:
                kwargs = {"r": r}
            apply_reducer(model, "tome", mode=mode, prop_attn=prop_attn, **kwargs)
            ours = model(images[:, :, None])  # (B, C, T=1, H, W)
            expected = official_tome_vit(vit, images, r, prop_attn)
            print(f"{attention_type} {mode} r={r} prop_attn={prop_attn}: "  # shown with pytest -s
                  f"max |logit difference| {(ours - expected).abs().max():.1e}")
            torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0, msg=f"r={r} prop_attn={prop_attn}")
            if r != 0:  # the setting does merge: the outputs moved away from the plain ViT's
                assert (ours - plain).abs().max() > 1e-3, r


def test_the_old_split_of_patches_alone_is_not_the_official_rule(vit_and_weights, monkeypatch):
    """Without the class token's index-0 role (A = even patch slots), outputs differ: the
    reference above is able to tell."""
    vit, path = vit_and_weights
    model = apply_reducer(_ours(path, "space_only"), "tome", r=8)
    images = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        official = official_tome_vit(vit, images, 8, True)
        assert torch.allclose(model(images[:, :, None]), official, atol=1e-4)
        monkeypatch.setattr(tome, "bipartite_soft_matching",
                            lambda metric, r: bipartite_soft_matching(metric, r, class_token=False))
        assert not torch.allclose(model(images[:, :, None]), official, atol=1e-2)


def _plan_by_loops(metric: torch.Tensor, r: int, class_token: bool) -> tuple[list[int], list[list[int]]]:
    """Slots of one sequence of patch metrics (K, C) -> (representative slot per new token,
    old slots per new token), by the official rules with the class token (if any) before slot 0."""
    slots = metric.shape[0]
    x = torch.eye(slots + class_token)  # one-hot rows: a merged row says which slots it holds
    keys = torch.cat([torch.ones(1, metric.shape[1]), metric]) if class_token else metric
    merged, _ = official_merge(x, torch.ones(slots + class_token), keys, r, class_token)
    held = [[int(j) - class_token for j in torch.nonzero(row).flatten()] for row in merged]
    return held[class_token:]


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("slots,r", [(2, 1), (7, 1), (7, 3), (8, 4), (11, 2), (11, 9), (16, 5)])
def test_matching_equals_the_loops(class_token, slots, r):
    for seed in range(3):
        metric = torch.randn(2, slots, 5, generator=torch.Generator().manual_seed(seed))
        assign, representative = bipartite_soft_matching(metric, r, class_token=class_token)
        for g in range(2):
            held = _plan_by_loops(metric[g], r, class_token)
            ours = [sorted(torch.nonzero(assign[g] == new).flatten().tolist()) for new in range(len(held))]
            assert ours == [sorted(h) for h in held], (seed, g)
            assert representative.shape[1] == slots - min(r, slots // 2)
            for new, slot in enumerate(representative[g].tolist()):  # each new token sits at one it holds
                assert slot in held[new]


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_plan_merges_values_and_sizes_as_the_loops(class_token, seed):
    """Applied to tokens with sizes, the plan gives the official size-weighted means and sizes."""
    g = torch.Generator().manual_seed(seed)
    metric, x = torch.randn(1, 11, 6, generator=g), torch.randn(1, 11, 4, generator=g)
    size = torch.randint(1, 4, (1, 11), generator=g).float()
    assign, _ = bipartite_soft_matching(metric, r=4, class_token=class_token)
    summed = torch.zeros(1, 7, 4).index_add_(1, assign[0], x * size[..., None])
    sizes = torch.zeros(1, 7).index_add_(1, assign[0], size)
    if class_token:  # the reference sees the class token at index 0, and returns it first
        cls = torch.randn(1, 4, generator=g)
        expected_x, expected_size = official_merge(torch.cat([cls, x[0]]), torch.cat([torch.ones(1), size[0]]),
                                                   torch.cat([torch.randn(1, 6, generator=g), metric[0]]), 4, True)
        torch.testing.assert_close(expected_x[0], cls[0])
        expected_x, expected_size = expected_x[1:], expected_size[1:]
    else:
        expected_x, expected_size = official_merge(x[0], size[0], metric[0], 4, False)
    torch.testing.assert_close(summed[0] / sizes[0, :, None], expected_x)
    torch.testing.assert_close(sizes[0], expected_size)


@pytest.mark.parametrize("class_token", [True, False])
def test_ties_take_the_first_b_and_keep_a_in_index_order(class_token):
    """Equal metrics everywhere: every A token's best B is the first B, and the A tokens
    merged are the first r in index order (stable sort); ToMe's own default sort leaves this
    order to the sort kernel (on the CPU it differs from stable from 17 elements on)."""
    slots, r = 40, 6
    metric = torch.ones(1, slots, 4)
    assign, representative = bipartite_soft_matching(metric, r, class_token=class_token)
    first_a, first_b = (1, 0) if class_token else (0, 1)
    a_slots = list(range(first_a, slots, 2))
    merged = [s for s in a_slots if assign[0, s] == assign[0, first_b]]
    assert merged == a_slots[:r]
    assert [held for held in _plan_by_loops(metric[0], r, class_token)] == [
        sorted(torch.nonzero(assign[0] == new).flatten().tolist()) for new in range(slots - r)]
    # a tie among the B candidates of one A token: it goes to the first of them
    metric = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0))
    a, b1, b2 = (1, 0, 2) if class_token else (0, 1, 3)
    metric[0, b2] = metric[0, b1]
    metric[0, a] = metric[0, b1] * 2  # a is most similar (cosine 1) to both b1 and b2
    assign, _ = bipartite_soft_matching(metric, 1, class_token=class_token)
    assert assign[0, a] == assign[0, b1] != assign[0, b2]


def test_parse_r_is_the_official_formula():
    for depth in (2, 4, 12):
        for r in (0, 1, 5, 8, 13):
            for inflection in (-1.0, -0.5, 0.0, 0.3, 1.0):
                assert parse_r(depth, (r, inflection)) == official_parse_r(depth, (r, inflection))
            assert parse_r(depth, r) == official_parse_r(depth, r)
    assert parse_r(12, (8, -1.0)) == [16, 14, 13, 11, 10, 8, 7, 5, 4, 2, 1, 0]
    assert parse_r(4, [5, 2]) == [5, 2, 0, 0]
    assert parse_r(1, (4, -1.0)) == [8]  # the official formula divides by zero on one block
    for bad in ([1, -2], (3, 2.0), -1):
        with pytest.raises(ValueError):
            parse_r(4, bad)
