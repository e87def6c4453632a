"""DVT's reuse modules as the official code builds them, their bill, and the block hooks
they plug into (a plain model's blocks see the default hooks and compute what they did)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ired_video import create_model
from ired_video.cascade.model import Cascade, CascadeConfig, StageConfig, cascade_from_checkpoint
from ired_video.cascade.reuse import CascadeHooks, resize_axis, resize_grid_axis, resize_pair_map
from ired_video.models.registry import model_config
from ired_video.models.weights import load_checkpoint, save_checkpoint
from ired_video.tokens import NO_HOOKS, BlockHooks

# timesformer_test geometry: stage 1 takes 2 frames of a 2x2 grid (patch 16), stage 2 4 frames of 4x4
STAGES = [StageConfig(frames=2, patch_size=16), StageConfig()]


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_official_reuse_has_dvt_shapes_and_parameter_counts_for_deit_s_and_is_billed():
    """DeiT-S sizes (D 384, 12 blocks, 6 heads, MLP 1536): DVT's per-block feature module
    LN(384) -> 384 -> 128 -> 48, norm2 over 384 + 48, fc1 over 384 + 48 inputs; relation MLP
    1x1 convolutions 72 -> 216 -> 72. The forward bills each exactly once."""
    torch.manual_seed(0)
    backbone = model_config("timesformer_test", embed_dim=384, depth=12, num_heads=6)
    model = Cascade(backbone, CascadeConfig(stages=STAGES)).eval()
    dim, depth, hidden, lh = 384, 12, 1536, 72
    # the modules the official Block / VisionTransformer hold, by their shapes
    official_feature_mlp = _count(nn.LayerNorm(dim), nn.Linear(dim, 128), nn.Linear(128, 48))
    official_norm2_growth = _count(nn.LayerNorm(dim + 48)) - _count(nn.LayerNorm(dim))
    official_fc1_growth = _count(nn.Linear(dim + 48, hidden)) - _count(nn.Linear(dim, hidden))
    official_relation = _count(nn.Conv2d(lh, 3 * lh, 1), nn.Conv2d(3 * lh, lh, 1))
    assert (official_feature_mlp, official_norm2_growth, official_fc1_growth, official_relation) == \
        (56240, 96, 73728, 31392)

    assert len(model.feature_reuse["1"]) == len(model.feature_norm["1"]) == len(model.feature_in["1"]) == depth
    for i in range(depth):
        mlp, extension, extra_in = model.feature_reuse["1"][i], model.feature_norm["1"][i], model.feature_in["1"][i]
        assert (mlp.norm.weight.shape, mlp.fc1.weight.shape, mlp.fc2.weight.shape) == ((dim,), (128, dim), (48, 128))
        assert isinstance(mlp.act, nn.GELU)
        assert _count(mlp) == official_feature_mlp
        block = model.stages[1].blocks[i]
        assert torch.cat([block.norm2.weight, extension.weight]).shape == (dim + 48,)
        assert torch.cat([block.mlp.fc1.weight, extra_in.weight], dim=1).shape == (hidden, dim + 48)
        assert _count(extension) == official_norm2_growth and _count(extra_in) == official_fc1_growth
    assert "0" not in model.feature_reuse and sorted(model.feature_reuse) == ["1"]  # stage 1 reuses nothing
    assert sorted(model.relation_reuse) == ["0_1_spatial", "0_1_temporal"]
    for module in model.relation_reuse.values():
        assert module.conv1.weight.shape == (3 * lh, lh, 1, 1) and module.conv2.weight.shape == (lh, 3 * lh, 1, 1)
        assert _count(module) == official_relation

    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, info = model(video, return_info=True)
    t1, n1, t2, n2 = 2, 4, 4, 16
    expected = (depth * t1 * n1 * (dim * 128 + 128 * 48)  # one feature MLP per block on the upstream patches
                + depth * (t2 * n2 + 1) * 48 * hidden  # fc1's 48 extra columns, every token row of every block
                + t1 * (1 + n1) ** 2 * 2 * lh * 3 * lh  # spatial logits: per frame, (1+N) x (1+N) positions
                + n1 * t1 ** 2 * 2 * lh * 3 * lh)  # temporal logits: per location, T x T positions
    stages = sum(stage.static_gmacs() for stage in model.stages)
    assert (float(info.stage_gmacs[0, -1]) - stages) * 1e9 == pytest.approx(expected, rel=1e-9)


def test_official_feature_reuse_is_one_layer_norm_and_fc1_over_the_concatenation():
    torch.manual_seed(0)
    model = Cascade(model_config("timesformer_test"), CascadeConfig(stages=STAGES, feature_dim=4)).eval()
    for param in [*model.feature_norm.parameters(), *model.feature_in.parameters()]:
        nn.init.normal_(param, std=0.5)
    stage, index = model.stages[1], 1
    block, extension, extra_in = stage.blocks[index], model.feature_norm["1"][index], model.feature_in["1"][index]
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    state = stage.embed(video)
    features = [torch.randn(2, 4 * 16, 4) for _ in stage.blocks]  # (B, T*N, e) per block
    hooks = CascadeHooks(stage.blocks, features, model.feature_in["1"], model.feature_norm["1"])
    tokens = torch.cat([state.cls, state.x.reshape(2, 64, 32)], dim=1)  # (B, 1 + T*N, D)
    before = state.macs.clone()
    with torch.no_grad():
        out = hooks.feed_forward(block, tokens, state)
        norm = nn.LayerNorm(36, eps=1e-6)  # the official norm2 over D + e
        norm.weight.copy_(torch.cat([block.norm2.weight, extension.weight]))
        norm.bias.copy_(torch.cat([block.norm2.bias, extension.bias]))
        fc1 = nn.Linear(36, 128)  # the official fc1 over D + e inputs
        fc1.weight.copy_(torch.cat([block.mlp.fc1.weight, extra_in.weight], dim=1))
        fc1.bias.copy_(block.mlp.fc1.bias)
        joint = torch.cat([tokens, torch.cat([torch.zeros(2, 1, 4), features[index]], dim=1)], dim=-1)
        expected = block.mlp.fc2(nn.functional.gelu(fc1(norm(joint))))
    torch.testing.assert_close(out, expected)
    assert (state.macs - before).tolist() == [65 * 4 * 128] * 2  # extra columns billed on every row


def test_dvt_resize_is_nearest_twice_then_average_pooling():
    # [a, b] -> nearest x2 [a, a, b, b] -> 3 average-pooled windows [a, (a+b)/2, b]
    assert resize_axis(torch.tensor([[1.0, 3.0]]), 1, 3, "dvt").tolist() == [[1.0, 2.0, 3.0]]
    assert resize_axis(torch.tensor([[1.0, 3.0]]), 1, 4, "dvt").tolist() == [[1.0, 1.0, 3.0, 3.0]]
    grid = torch.tensor([[1.0, 3.0, 5.0, 7.0]])  # a 2x2 grid, flattened
    assert resize_grid_axis(grid, 1, (2, 2), (3, 3), "dvt").tolist() == [[1, 2, 3, 3, 4, 5, 5, 6, 7]]
    pair = torch.arange(25.0).reshape(1, 5, 5)  # (1+4) x (1+4), class token first
    resized = resize_pair_map(pair, (1, 2), (2, 2), (3, 3), "dvt")
    assert resized.shape == (1, 10, 10) and resized[0, 0, 0] == 0
    assert resized[0, 0, 1:].tolist() == [1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4]  # class-token row: its patch part
    assert resized[0, 1:, 0].tolist() == [5, 7.5, 10, 10, 12.5, 15, 15, 17.5, 20]  # class-token column


class _Recorder(BlockHooks):
    """Hooks that add nothing but note every call."""

    def __init__(self, want_logits: bool) -> None:
        self.want_logits = want_logits
        self.calls: list[tuple[str, str]] = []
        self.logits: list[torch.Tensor] = []

    def attention_bias(self, block, kind, state):
        self.calls.append(("bias", kind))
        return super().attention_bias(block, kind, state)

    def wants_logits(self, block, kind):
        return self.want_logits

    def keep_logits(self, block, kind, logits):
        self.logits.append(logits)

    def feed_forward(self, block, tokens, state):
        self.calls.append(("mlp", ""))
        return super().feed_forward(block, tokens, state)


@pytest.mark.parametrize("attention,kinds", [("divided_space_time", ["temporal", "spatial"]),
                                             ("joint_space_time", ["joint"]), ("space_only", ["spatial"])])
def test_blocks_call_the_hooks_and_the_default_changes_nothing(attention, kinds):
    torch.manual_seed(0)
    model = create_model("timesformer_test", attention_type=attention).eval()
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    per_block = [("bias", kind) for kind in kinds] + [("mlp", "")]
    with torch.no_grad():
        state = model.embed(video)
        assert state.hooks is NO_HOOKS and dataclasses.replace(state).hooks is NO_HOOKS
        plain = model(video)
        for want_logits in (False, True):
            state = model.embed(video)
            state.hooks = recorder = _Recorder(want_logits)
            hooked = model.forward_head(model.forward_blocks(state))
            assert recorder.calls == per_block * model.config.depth
            if want_logits:  # logits force the explicit attention path: same maths, other rounding
                torch.testing.assert_close(hooked, plain)
                assert len(recorder.logits) == len(kinds) * model.config.depth
                assert all(x.ndim == 4 and x.shape[1] == model.config.num_heads for x in recorder.logits)
            else:
                assert torch.equal(hooked, plain) and not recorder.logits


def test_checkpoints_from_before_the_variants_load_as_the_first_version(tmp_path):
    torch.manual_seed(0)
    cfg = CascadeConfig(stages=STAGES, feature_variant="shared", relation_variant="all_upstream",
                        feature_hidden=8, feature_dim=4, relation_hidden=8)
    model = Cascade(model_config("timesformer_test"), cfg).eval()
    save_checkpoint(tmp_path / "cascade.pth", model)
    ckpt = load_checkpoint(tmp_path / "cascade.pth")
    for key in ("feature_variant", "relation_variant"):  # what the first version wrote
        del ckpt.extra["cascade_config"][key]
    loaded = cascade_from_checkpoint(ckpt).eval()
    assert (loaded.cascade_config.feature_variant, loaded.cascade_config.relation_variant) == \
        ("shared", "all_upstream")
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video))


@pytest.mark.parametrize("variants,sources", [(("official", "official"), ["0_1", "1_2"]),
                                              (("shared", "all_upstream"), ["0_1", "0_2", "1_2"])])
def test_three_stages_reuse_the_previous_stage_or_every_upstream_stage_and_bill_what_ran(variants, sources):
    from ired_video.flops import count_flops

    torch.manual_seed(0)
    cfg = CascadeConfig(stages=[StageConfig(frames=2, patch_size=16), StageConfig(frames=4, patch_size=16),
                                StageConfig()], feature_variant=variants[0], relation_variant=variants[1],
                        feature_hidden=8, feature_dim=4, relation_hidden=8)
    model = Cascade(model_config("timesformer_test"), cfg).eval()
    assert sorted({key.rsplit("_", 1)[0] for key in model.relation_reuse}) == sources
    for name, param in model.named_parameters():
        if "feature_in" in name or "relation_reuse" in name:  # zero-initialised: give them weights
            nn.init.normal_(param, std=0.2)
    video = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, info = model(video, return_info=True)
    assert float(info.stage_gmacs[0, -1]) == pytest.approx(sum(model.stage_gmacs_static()), rel=1e-9)
    model.set_fused_attention(False)
    assert count_flops(model, video) / 2 / 1e9 == pytest.approx(float(info.stage_gmacs[0, -1]), rel=1e-12)
