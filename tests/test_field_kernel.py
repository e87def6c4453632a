"""The gathered responsive-field kernel (issue 15): equal to the masked dense attention,
billed by the pairs it computes, and the masked kernel wherever the grid is not whole."""
from __future__ import annotations

import pytest
import torch

from ired_video import ConfigError, apply_reducer
from ired_video.build import create_model
from ired_video.explain.interaction import first_order_edge_effects
from ired_video.flops import count_flops
from ired_video.models.attention import Attention, AttentionProbe, GatherWindow
from ired_video.models.window import SpatialPlan, add_window, gathered_attention

HEADS, HEAD_DIM = 2, 8


def masked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Dense attention with -inf outside ``allowed`` (1+N, 1+N), written out in float64."""
    logits = (q.double() @ k.double().transpose(-2, -1)) * HEAD_DIM ** -0.5
    logits = logits + add_window(None, allowed[None], torch.float64)  # (G, 1, L, L) broadcast over heads
    return logits.softmax(dim=-1) @ v.double()


def random_radius(grid: tuple[int, int], low: int, high: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (grid[0] * grid[1],), generator=generator).tolist()


@pytest.mark.parametrize("grid", [(3, 5), (5, 5), (7, 6)])
@pytest.mark.parametrize("tile", [1, 2, 3])
def test_gathered_attention_equals_the_masked_dense_attention(grid, tile):
    torch.manual_seed(0)
    length = 1 + grid[0] * grid[1]
    q, k, v = (torch.randn(3, HEADS, length, HEAD_DIM) for _ in range(3))  # 3 frames
    for low, high in ((0, 0), (1, 1), (2, 2), (3, 3), (0, 3)):
        radius = random_radius(grid, low, high, seed=low + 7 * high)
        plan = SpatialPlan(radius, grid, tile)
        expected = masked_reference(q, k, v, plan.allowed)
        for fused in (False, True):
            out = gathered_attention(q, k, v, plan, HEAD_DIM ** -0.5, fused)
            assert (out.double() - expected).abs().max() < 1e-5, (radius, fused)


def brute_force_pairs(radius: list[int], grid: tuple[int, int], tile: int) -> int:
    """Pairs per frame, tile by tile: each query of a tile of q grid rows reads the band of
    min(h, q + 2R) grid rows (R = the tile's largest radius), each row a class-token copy
    and w patches."""
    height, width = grid
    pairs = 1 + height * width  # the class token's row
    for row in range(0, height, tile):
        lines = min(tile, height - row)
        reach = max(radius[row * width:(row + lines) * width])
        pairs += lines * width * min(height, lines + 2 * reach) * (width + 1)
    return pairs


def test_plan_counts_the_pairs_of_its_tiles_and_covers_every_field():
    for grid, tile in (((5, 7), 2), ((14, 14), 2), ((6, 4), 4), ((7, 3), 1)):
        for radius in ([1] * grid[0] * grid[1], random_radius(grid, 0, 3, seed=1)):
            plan = SpatialPlan(radius, grid, tile)
            assert plan.pairs_per_frame() == brute_force_pairs(radius, grid, tile)
            seen = torch.zeros(1 + grid[0] * grid[1], 1 + grid[0] * grid[1], dtype=torch.long)
            seen[0] = 1  # the class row is computed densely
            for index, (row, lines, _, _) in enumerate(plan.tiles):
                queries = 1 + torch.arange(row * grid[1], (row + lines) * grid[1])
                readable = (plan.mask(index) == 0).long()  # (q*w, b*(w+1))
                seen.index_put_((queries[:, None], plan.key_positions(index)[None]), readable, accumulate=True)
            assert torch.equal(seen, plan.allowed.long())  # each query's field, each key once, nothing else


def windowed_models(radius: list[list[int]], span=None, **overrides):
    """(gathered, masked) timesformer_test models with the same weights and windows."""
    torch.manual_seed(0)
    gathered = create_model("timesformer_test", window_radius=radius, window_span=span, **overrides).eval()
    for block in gathered.blocks:  # temporal attention matters (a fresh model zeroes temporal_fc)
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    masked = create_model("timesformer_test", window_radius=radius, window_span=span, window_kernel="masked",
                          **overrides).eval()
    masked.load_state_dict(gathered.state_dict())
    return gathered, masked


ODD = dict(img_size=40)  # 5x5 patch grid


@pytest.mark.parametrize("reach", [0, 1, 2])
def test_windowed_model_outputs_and_gradients_match_the_masked_kernel(reach):
    radius = [random_radius((5, 5), 0, reach, seed=block) for block in range(2)]
    gathered, masked = windowed_models(radius, span=[[1] * 25, [2] * 25], **ODD)
    # Radius 2 on a 5x5 grid: every band is the whole grid, more pairs than dense: masked kernel.
    assert all((block.spatial_plan is None) == (reach == 2) for block in gathered.blocks)
    video = torch.randn(2, 3, 4, 40, 40)
    logits, info = gathered(video, return_info=True)
    reference, masked_info = masked(video, return_info=True)
    assert (logits - reference).abs().max() < 1e-5
    logits.sum().backward()
    reference.sum().backward()
    for (name, param), other in zip(gathered.named_parameters(), masked.parameters()):
        assert (param.grad - other.grad).abs().max() < 1e-5, name
    assert (info.gmacs < masked_info.gmacs).all() if reach < 2 else torch.equal(info.gmacs, masked_info.gmacs)


def test_billed_gmacs_are_the_pairs_computed():
    radius = [random_radius((5, 5), 0, 1, seed=3), [0] * 25]
    gathered, masked = windowed_models(radius, **ODD)
    assert all(block.spatial_plan is not None for block in gathered.blocks)
    video = torch.randn(2, 3, 4, 40, 40)
    with torch.no_grad():
        _, info = gathered(video, return_info=True)
        _, masked_info = masked(video, return_info=True)
    # FlopCounterMode sees every matmul the gathered kernel ran (2 FLOPs per MAC), per batch.
    assert count_flops(gathered, video) / 2 == pytest.approx(float(info.gmacs.double().sum()) * 1e9, rel=1e-6)
    # The saving is exactly the attention pairs the plans skip: 2 D MACs per (query, key) pair.
    dense_pairs = 4 * 26 * 26  # frames x (1 + N)^2 per block
    saved = sum(dense_pairs - 4 * brute_force_pairs(r, (5, 5), 2) for r in radius)
    assert float(masked_info.gmacs[0] - info.gmacs[0]) * 1e9 == pytest.approx(2 * 32 * saved, rel=1e-5)


def test_reduced_states_and_attention_maps_take_the_masked_kernel():
    radius = [random_radius((5, 5), 0, 1, seed=block) for block in range(2)]
    gathered, masked = windowed_models(radius, **ODD)
    video = torch.randn(2, 3, 4, 40, 40)
    # Explanations want the dense maps: the window is applied as a mask, same edge effects.
    for got, expected in zip(first_order_edge_effects(gathered, video), first_order_edge_effects(masked, video)):
        assert got.site == expected.site and (got.values - expected.values).abs().max() < 1e-5
    # Top-k inside block 0 (after its attention) drops tokens: block 1's frames no longer hold
    # the whole grid and take the masked kernel, billed as the masked model.
    for model in (gathered, masked):
        apply_reducer(model, "topk", keep=0.5, stages=[0])
    with torch.no_grad():
        logits, info = gathered(video, return_info=True)
        reference, masked_info = masked(video, return_info=True)
    assert (logits - reference).abs().max() < 1e-5
    block_0_saving = 2 * 32 * 4 * (26 * 26 - brute_force_pairs(radius[0], (5, 5), 2))
    assert float(masked_info.gmacs[0] - info.gmacs[0]) * 1e9 == pytest.approx(block_0_saving, rel=1e-5)


def test_attention_module_gathers_unless_another_bias_comes_in():
    plan = SpatialPlan(random_radius((3, 3), 0, 1, seed=0), (3, 3), tile_rows=1)
    attn = Attention(HEADS * HEAD_DIM, HEADS).eval()
    x, bias = torch.randn(2, 10, HEADS * HEAD_DIM), torch.randn(2, 1, 10, 10)
    mask = add_window(None, plan.allowed[None].expand(2, -1, -1), x.dtype)
    window, probe, dense_probe = GatherWindow(plan), AttentionProbe(want_cls_attn=True, want_keys=True), \
        AttentionProbe(want_cls_attn=True, want_keys=True)
    with torch.no_grad():
        assert torch.allclose(attn(x, probe=probe, window=window), attn(x, mask, dense_probe), atol=1e-6)
        assert window.gathered  # the class token's attention row and the keys, as the masked kernel gives them
        assert torch.allclose(probe.cls_attn, dense_probe.cls_attn) and torch.equal(probe.keys, dense_probe.keys)
        window = GatherWindow(plan)
        out = attn(x, bias, window=window)
        expected = attn(x, add_window(bias, plan.allowed[None].expand(2, -1, -1), x.dtype))
    assert not window.gathered and torch.allclose(out, expected)


def test_window_kernel_is_validated():
    with pytest.raises(ConfigError, match="window_kernel='dense'"):
        create_model("timesformer_test", window_kernel="dense")
    masked = create_model("timesformer_test", window_radius=[[1] * 16] * 2, window_kernel="masked")
    assert all(block.spatial_plan is None for block in masked.blocks)


def test_static_gmacs_are_the_forward_bill_fields_included():
    """The unreduced static cost of a windowed model is what its forward bills (fewer pairs
    with the gathered kernel), not the dense model's cost."""
    radius = [[1] * 25, [0] * 25]
    gathered, masked = windowed_models(radius, **ODD)
    dense = create_model("timesformer_test", **ODD)
    _, info = gathered(torch.randn(1, 3, 4, 40, 40), return_info=True)
    assert gathered.static_gmacs() == pytest.approx(float(info.gmacs[0]), rel=1e-6)
    assert gathered.static_gmacs() < masked.static_gmacs() == pytest.approx(dense.static_gmacs(), rel=1e-12)
