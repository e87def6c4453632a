"""The faster paths of the token operations give the results of the general ones.

ToMe and BAT merge through ``merge_into_representatives`` (rows selected and added, no pass over
every slot) and divided blocks leave out proportional attention's log(size) in temporal
attention by slot, where it is the same for every key of a tube (docs/design.md,
"Reducer overhead at batch 1").
"""
from __future__ import annotations

import pytest
import torch

from ired_video import apply_reducer, create_model
from ired_video.models.blocks import DividedSpaceTimeBlock
from ired_video.reducers import bipartite_soft_matching
from ired_video.tokens import TokenState, merge_into_representatives, merge_slots

BATCH, FRAMES, PATCHES, DIM = 2, 3, 16, 8


def _plan(metric: torch.Tensor, r: int, tube: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F, K, C) metrics -> ToMe's (B, F, K) assign and (B, F, K') representatives,
    one plan for all frames (tube) or one per frame."""
    batch, frames, slots, channels = metric.shape
    if tube:
        metric = metric.mean(dim=1, keepdim=True)
    assign, representative = bipartite_soft_matching(metric.reshape(-1, slots, channels), r)
    units = metric.shape[1]
    return (assign.reshape(batch, units, slots).expand(-1, frames, -1),
            representative.reshape(batch, units, -1).expand(-1, frames, -1))


@pytest.mark.parametrize("weighted", [False, True], ids=["sizes", "weights"])
@pytest.mark.parametrize("tube", [True, False], ids=["tube", "frame"])
@pytest.mark.parametrize("seed", range(2))
def test_merge_into_representatives_is_merge_slots(tube, seed, weighted):
    g = torch.Generator().manual_seed(seed)
    state = TokenState.from_patches(torch.randn(BATCH, 1, DIM, generator=g),
                                    torch.randn(BATCH, FRAMES, PATCHES, DIM, generator=g), (4, 4))
    for r in (5, 3):  # the second merge starts from sizes > 1
        assign, representative = _plan(torch.randn(BATCH, FRAMES, state.num_slots, 4, generator=g), r, tube)
        weights = state.sizes() * torch.rand(state.x.shape[:3], generator=g) if weighted else None  # BAT's kind
        general = merge_slots(state, assign, representative, weights=weights, aligned=tube)
        fast = merge_into_representatives(state, assign, representative, weights=weights, aligned=tube)
        torch.testing.assert_close(fast.x, general.x, atol=1e-6, rtol=0)
        for name in ("size", "pos", "slot_of"):
            assert torch.equal(getattr(fast, name), getattr(general, name)), name
        assert fast.aligned == general.aligned == tube and fast.valid is None
        state = fast
    assert (state.size > 2).any()  # some token holds several merges
    torch.testing.assert_close(state.size.sum(dim=-1), torch.full((BATCH, FRAMES), float(PATCHES)))


def test_tube_temporal_attention_leaves_out_a_size_bias_the_softmax_ignores():
    """By slot, log(size) is the same for every frame of a tube: attention without it is
    attention with it."""
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(DIM * 4, num_heads=2).eval()
    g = torch.Generator().manual_seed(1)
    state = TokenState.from_patches(torch.randn(BATCH, 1, DIM * 4, generator=g),
                                    torch.randn(BATCH, FRAMES, PATCHES, DIM * 4, generator=g), (4, 4))
    for r in (6, 4):
        assign, representative = _plan(torch.randn(BATCH, FRAMES, state.num_slots, 4, generator=g), r, tube=True)
        state = merge_into_representatives(state, assign, representative, aligned=True)
    state.prop_attn = True
    assert (state.size > 2).any()
    batch, frames, slots, dim = state.x.shape
    tubes = state.x.transpose(1, 2).reshape(batch * slots, frames, dim)  # (B*K, F, D)
    log_size = state.size.transpose(1, 2).reshape(batch * slots, 1, 1, frames).log()  # (B*K, 1, 1, F)
    with torch.no_grad():
        res = block.temporal_attn(block.temporal_norm1(tubes), log_size)  # (B*K, F, D)
        expected = block.temporal_fc(res.reshape(batch, slots, frames, dim).transpose(1, 2))  # (B, F, K, D)
        torch.testing.assert_close(block._temporal_by_slot(state)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,kwargs", [("tome", {"r": 5}), ("bat", {"keep": 0.5}),
                                         ("topk", {"keep": 0.5, "fuse": True})])
def test_tube_reducers_give_each_slot_one_size_in_every_frame(name, kwargs):
    """What leaving out the temporal size bias rests on: aligned states have frame-constant sizes."""
    torch.manual_seed(0)
    model = apply_reducer(create_model("timesformer_test", depth=3).eval(), name, mode="tube", **kwargs)
    with torch.no_grad():
        _, info = model(torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2)), return_info=True)
    state = info.state
    assert state.aligned and state.size is not None and (state.size > 1).any()
    assert torch.equal(state.size, state.size[:, :1].expand_as(state.size))
