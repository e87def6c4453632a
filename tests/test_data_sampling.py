"""Clip samplers: exact indices, computed by hand."""
import numpy as np
import pytest

from ired_video.data.sampling import DenseSampler, SegmentSampler, make_sampler


def test_dense_8x32_centred_at_native_30fps():
    # stride 32, window 256, starts 0..44, centred start 22
    s = DenseSampler(8, 32, 30.0)(300, 30.0, "val")
    assert s.indices == (22, 54, 86, 118, 150, 182, 214, 246)
    assert s.start == 22.0 and not s.padded


def test_dense_fps_normalisation_doubles_stride_at_60fps():
    # stride 64, window 512, max start 88, centred 44
    s = DenseSampler(8, 32, 30.0)(600, 60.0, "test")
    assert s.indices == tuple(44 + 64 * i for i in range(8))


def test_dense_fractional_stride_at_25fps():
    # stride 32 * 25 / 30 = 26.667, window 213.33, max start 36.67, centred 18.33
    s = DenseSampler(8, 32, 30.0)(250, 25.0, "val")
    expected = tuple(int(np.floor(18.3333333 + i * 26.6666667)) for i in range(8))
    assert s.indices == expected == (18, 45, 71, 98, 125, 151, 178, 205)


def test_multi_clip_spread_and_centred_in_their_share():
    sampler = DenseSampler(8, 32, 30.0)
    starts = [sampler(300, 30.0, "test", k, 3).indices[0] for k in range(3)]
    assert starts == [7, 22, 36]  # 44 * (k + 0.5) / 3 = 7.33, 22, 36.67


def test_short_video_repeats_last_frame_or_loops():
    s = DenseSampler(8, 32, 30.0)(100, 30.0, "val")
    assert s.indices == (0, 32, 64, 96, 99, 99, 99, 99) and s.padded
    s = DenseSampler(8, 32, 30.0, pad="loop")(100, 30.0, "val")
    assert s.indices == (0, 32, 64, 96, 28, 60, 92, 24) and s.padded
    one = DenseSampler(8, 32, 30.0)(1, 30.0, "train", rng=np.random.default_rng(0))
    assert one.indices == (0,) * 8


def test_train_start_is_random_integer_with_exact_stride():
    sampler = DenseSampler(8, 32, 30.0)
    starts = set()
    for seed in range(40):
        s = sampler(300, 30.0, "train", rng=np.random.default_rng(seed))
        assert np.diff(s.indices).tolist() == [32] * 7
        assert 0 <= s.indices[0] <= 44
        starts.add(s.indices[0])
    assert len(starts) > 10
    a = sampler(300, 30.0, "train", rng=np.random.default_rng(5))
    assert a == sampler(300, 30.0, "train", rng=np.random.default_rng(5))


def test_unknown_fps_uses_the_plain_rate():
    assert DenseSampler(4, 2, 30.0)(100, 0.0, "val").indices == (46, 48, 50, 52)


def test_segment_sampler_centres_and_repeats_on_short_videos():
    assert SegmentSampler(8)(80, 0, "val").indices == tuple(range(5, 80, 10))
    assert SegmentSampler(8)(5, 0, "val").indices == (0, 0, 1, 2, 2, 3, 4, 4)
    s = SegmentSampler(4)(40, 0, "train", rng=np.random.default_rng(0))
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(s.indices))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="clip_index"):
        DenseSampler(8, 32, 30.0)(300, 30.0, "test", 3, 3)
    with pytest.raises(ValueError, match="rng"):
        DenseSampler(8, 32, 30.0)(300, 30.0, "train")
    with pytest.raises(ValueError, match="sampling"):
        make_sampler("random", 8)
