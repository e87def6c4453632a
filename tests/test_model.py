"""TimeSformer: the reference semantics, attention paths, compute accounting, API."""
from __future__ import annotations

import socket

import pytest
import torch

from ired_video import ConfigError, create_model, flops
from ired_video.flops import count_flops
from ired_video.models.attention import Attention
from tests.reference_timesformer import official_state_dict, reference_forward

ATTENTION_TYPES = ["divided_space_time", "joint_space_time", "space_only"]


def _video(batch: int = 2, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_official_checkpoint_matches_reference(tmp_path, attention_type):
    """An official-layout .pyth loads by name and gives the reference logits."""
    state = official_state_dict(attention_type, dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    path = tmp_path / "TimeSformer_test.pyth"
    torch.save({"epoch": 15, "model_state": state, "optimizer_state": {}, "cfg": "TRAIN: ..."}, path)
    model = create_model("timesformer_test", attention_type=attention_type, checkpoint=path).eval()
    video = _video()
    expected = reference_forward(state, video, attention_type, num_heads=2, depth=2, patch_size=8)
    with torch.no_grad():
        torch.testing.assert_close(model(video), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_other_input_size_resizes_embeddings_like_reference(tmp_path, attention_type):
    """At run time a new grid or frame count resizes the embeddings as the official forward."""
    state = official_state_dict(attention_type, dim=32, depth=2, grid=4, frames=4, patch_size=8, classes=5)
    path = tmp_path / "ckpt.pyth"
    torch.save({"model_state": state}, path)
    model = create_model("timesformer_test", attention_type=attention_type, checkpoint=path).eval()
    video = _video(frames=6, size=48)
    expected = reference_forward(state, video, attention_type, num_heads=2, depth=2, patch_size=8)
    with torch.no_grad():
        torch.testing.assert_close(model(video), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_fused_and_explicit_attention_agree(attention_type):
    torch.manual_seed(0)
    model = create_model("timesformer_test", attention_type=attention_type).eval()
    video = _video()
    with torch.no_grad():
        fused = model(video)
        model.set_fused_attention(False)
        explicit = model(video)
    assert not torch.equal(fused, torch.zeros_like(fused))
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_explicit_attention_returns_maps_with_mask():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2).eval()
    x = torch.randn(3, 5, 16)
    bias = torch.zeros(3, 1, 1, 5)
    bias[:, ..., 4] = float("-inf")  # mask the last key
    out, probs = attn.forward_with_attn(x, bias)
    assert probs.shape == (3, 2, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 5))
    assert torch.all(probs[..., 4] == 0)
    torch.testing.assert_close(out, attn(x, bias), atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gmacs_match_flop_counter(attention_type):
    """The analytic per-clip bill equals FlopCounterMode (2 FLOPs per MAC) within 1%."""
    model = create_model("timesformer_test", attention_type=attention_type, embed_dim=64,
                         num_heads=4, img_size=48).eval()
    video = _video(batch=1, size=48)
    _, info = model(video, return_info=True)
    measured_gmacs = count_flops(model, video) / 2e9
    assert info.gmacs.shape == (1,)
    assert abs(info.gmacs.item() - measured_gmacs) / measured_gmacs < 0.01
    assert abs(model.static_gmacs() - measured_gmacs) / measured_gmacs < 0.01


@pytest.mark.parametrize("stem,temporal_kernel", [("conv", 1), ("conv3d", 3)])
def test_conv_patch_stems_are_billed_as_counted(stem, temporal_kernel):  # patch 8: 3 stages
    """patch_stem conv/conv3d: NHWC patch tokens of the linear stem's shape, one grid per frame;
    the forward's and the static bill equal FlopCounterMode, the stem's own part exactly; the
    default stays linear."""
    model = create_model("timesformer_test", patch_stem=stem, embed_dim=64, num_heads=4, img_size=48).eval()
    linear = create_model("timesformer_test", embed_dim=64, num_heads=4, img_size=48).eval()
    assert type(linear.patch_embed).__name__ == "PatchEmbed" and linear.config.patch_stem == "linear"
    video = _video(batch=1, size=48)
    assert model.patch_embed(video).shape == (4, 6, 6, 64)  # (B*T, h, w, D)
    stem_macs = flops.conv_stem_macs(4, (6, 6), 3, 8, 64, [temporal_kernel] * 3)
    assert flops.conv_stem_widths(8, 64) == [16, 32, 64]
    assert count_flops(model.patch_embed, video) / 2 == stem_macs
    _, info = model(video, return_info=True)
    _, linear_info = linear(video, return_info=True)
    measured_gmacs = count_flops(model, video) / 2e9
    assert abs(info.gmacs.item() - measured_gmacs) / measured_gmacs < 0.01
    assert model.static_gmacs() == pytest.approx(info.gmacs.item(), rel=1e-6)
    linear_embed = flops.embed_macs(4, 36, 3, 8, 64)
    assert (info.gmacs - linear_info.gmacs).item() == pytest.approx((stem_macs - linear_embed) / 1e9, rel=1e-6)


def test_conv3d_stem_sees_neighbour_frames_conv_stem_does_not():
    """Changing frame 0 reaches frames 1-3 only through the conv3d stem (3 stages of 3 frames)."""
    video = _video(batch=1, size=32)
    later = video.clone()
    later[:, :, 0] += 1.0
    for stem, changed in (("conv", [0]), ("conv3d", [0, 1, 2, 3])):
        model = create_model("timesformer_test", patch_stem=stem).eval()
        with torch.no_grad():
            diff = (model.patch_embed(video) - model.patch_embed(later)).abs().flatten(1).amax(1)  # (T,)
        assert [t for t in range(4) if diff[t] > 1e-6] == changed, stem


@pytest.mark.parametrize("attention_type,published", [
    ("divided_space_time", 196.1), ("joint_space_time", 179.7), ("space_only", 140.7)])
def test_base_model_gmacs_near_published(attention_type, published):
    """fvcore counts for TimeSformer-B 8x224 (mmaction2's table: 196 / 180 / 141 G)."""
    model = create_model("timesformer_base_patch16_224", attention_type=attention_type, num_classes=400)
    assert abs(model.static_gmacs() - published) / published < 0.01


def test_base_model_parameter_count():
    """Paper Table 2: 121.4M for divided (121.6M in the original code), 86.1M otherwise."""
    model = create_model("timesformer_base_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(121.57e6, rel=1e-3)


def test_info_shapes_and_tokens():
    model = create_model("timesformer_test").eval()
    logits, info = model(_video(batch=3), return_info=True)
    assert logits.shape == (3, 5)
    assert info.tokens.shape == (3, 2)
    assert info.tokens.tolist() == [[64, 64]] * 3  # 4 frames x (32/8)^2 patches, every block
    assert torch.allclose(info.gmacs, torch.full((3,), model.static_gmacs()))


def test_fresh_model_is_a_per_frame_vit_temporal_fc_zero():
    model = create_model("timesformer_test")
    for block in model.blocks:
        assert torch.count_nonzero(block.temporal_fc.weight) == 0
        assert torch.count_nonzero(block.temporal_fc.bias) == 0
    assert torch.count_nonzero(model.time_embed) == 0


def test_clips_in_a_batch_are_independent():
    model = create_model("timesformer_test").eval()
    video = _video(batch=3)
    with torch.no_grad():
        batched = model(video)
        single = torch.cat([model(video[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    model = create_model("timesformer_test")
    model(_video()).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_named_variants_and_overrides():
    base = create_model("timesformer_base_patch16_224").config
    assert (base.embed_dim, base.depth, base.num_heads, base.num_frames) == (768, 12, 12, 8)
    small = create_model("timesformer_small_patch16_224").config
    assert (small.embed_dim, small.num_heads) == (384, 6)
    tiny = create_model("timesformer_tiny_patch16_224", num_classes=7).config
    assert (tiny.embed_dim, tiny.num_heads, tiny.num_classes) == (192, 3, 7)


def test_issue_example_call():
    model = create_model("timesformer", img_size=32, patch_size=16, num_frames=8, embed_dim=96, depth=2,
                         num_heads=4, mlp_ratio=4, num_classes=5, attention_type="divided_space_time")
    logits, info = model(torch.randn(1, 3, 8, 32, 32), return_info=True)
    assert logits.shape == (1, 5) and info.tokens.shape == (1, 2)


@pytest.mark.parametrize("kwargs,message", [
    ({"embed_dmi": 3}, "embed_dmi"),
    ({"depth": "four"}, "depth"),
    ({"attention_type": "sparse"}, "attention_type"),
    ({"img_size": 30, "patch_size": 8}, "multiple of patch_size"),
    ({"patch_stem": "deep"}, "patch_stem"),
    ({"patch_stem": "conv", "patch_size": 6, "img_size": 36}, "power-of-two patch_size"),
])
def test_bad_model_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("timesformer_test", **kwargs)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="timesformer_base_patch16_224"):
        create_model("timesformer_huge")


def test_wrong_input_layout_is_explained():
    model = create_model("timesformer_test")
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(torch.randn(2, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="frame size 32x36 is not a multiple of patch_size=8"):
        model(torch.randn(2, 3, 4, 32, 36))


def test_building_a_model_never_opens_a_socket(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during model construction")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    create_model("timesformer_base_patch16_224")
