"""Overlays: pixel-exact drawing on synthetic frames, per-stage masks that agree with the
token state for every reducer and mode, and MP4/PNG files that decode as promised."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ired_video import create_model
from ired_video.data.video_io import write_video
from ired_video.reducers import apply_reducer
from ired_video.viz.attention import capture_class_attention
from ired_video.viz.draw import DIM, GREY, blend_heatmap, denormalize, dim_dropped, group_colour, outline_groups
from ired_video.viz.masks import StageMasks, stage_masks_from_info
from ired_video.viz.overlay import overlay_frames, overlay_grid, stage_tile

REDUCERS = [("random", dict(keep=0.5)), ("topk", dict(keep=0.5)), ("topk", dict(keep=0.5, fuse=True)),
            ("attention_received", dict(keep=0.6)), ("interaction", dict(keep=0.6, score="indicator")),
            ("bat", dict(keep=0.5)), ("tome", dict(r=3)),
            ("iared2", dict(keep=0.5)), ("iared2", dict(threshold=0.5))]


def synthetic_frame(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Random pixels in 0..100, so that no pixel equals the grey dropped patches move towards."""
    return np.random.default_rng(seed).integers(0, 101, (height, width, 3), dtype=np.uint8)


def test_dim_dropped_changes_exactly_the_dropped_patches() -> None:
    frame = synthetic_frame()  # 3 x 4 patches of 16 x 16
    keep = np.random.default_rng(1).random((3, 4)) < 0.5
    out = dim_dropped(frame, keep)
    expected = frame.copy()
    for r in range(3):
        for c in range(4):
            if not keep[r, c]:
                block = frame[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].astype(np.float64)
                expected[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = np.rint((1 - DIM) * block + DIM * GREY)
    np.testing.assert_array_equal(out, expected)
    changed = (out != frame).any(axis=-1)  # (H, W)
    dropped_px = np.repeat(np.repeat(~keep, 16, axis=0), 16, axis=1)
    np.testing.assert_array_equal(changed, dropped_px)


def test_outline_marks_only_the_border_of_a_merged_group() -> None:
    frame = np.zeros((32, 48, 3), np.uint8)  # 2 x 3 patches of 16
    slot = np.array([[0, 1, 1], [2, 3, 4]])
    merged = slot == 1  # patches (0, 1) and (0, 2) form one token
    out = outline_groups(frame, slot, merged, width=2)
    expected = np.zeros((32, 48), bool)
    expected[0:2, 16:48] = True  # top of both
    expected[14:16, 16:48] = True  # bottom of both
    expected[0:16, 16:18] = True  # left of the left patch
    expected[0:16, 46:48] = True  # right of the right patch (the shared edge stays clear)
    np.testing.assert_array_equal((out != 0).any(axis=-1), expected)
    assert tuple(out[0, 20]) == group_colour(1)


def test_heatmap_greys_patches_without_a_score() -> None:
    frame = synthetic_frame(32, 32)
    heat = np.array([[0.1, np.nan], [0.5, 0.9]])
    out = blend_heatmap(frame, heat)
    assert (out[:16, 16:] == dim_dropped(frame, ~np.isnan(heat))[:16, 16:]).all()
    assert not (out[16:, :] == frame[16:, :]).all()


def test_denormalize_inverts_the_normalisation() -> None:
    from ired_video.data.transforms import normalize, to_tchw
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    video = normalize(to_tchw(frames), (0.45, 0.4, 0.5), (0.225, 0.2, 0.25))  # (C, T, H, W)
    np.testing.assert_array_equal(denormalize(video, (0.45, 0.4, 0.5), (0.225, 0.2, 0.25)), frames)


def _run(name: str, kwargs: dict, attention: str = "divided_space_time", batch: int = 2, height: int = 32,
         width: int = 32):
    torch.manual_seed(0)
    model = create_model("timesformer_test", attention_type=attention).eval()
    apply_reducer(model, name, **kwargs)
    with torch.inference_mode():
        _, info = model(torch.randn(batch, 3, 4, height, width), return_info=True)
    return model, info


@pytest.mark.parametrize("mode", ["tube", "frame"])
@pytest.mark.parametrize("name,kwargs", REDUCERS, ids=lambda v: v if isinstance(v, str) else "")
def test_stage_masks_match_the_token_state(name: str, kwargs: dict, mode: str) -> None:
    _, info = _run(name, {**kwargs, "mode": mode})
    for clip in range(2):
        stages = stage_masks_from_info(info, clip)
        assert stages, "the reducer should have acted"
        final = info.state
        last = stages[-1]
        np.testing.assert_array_equal(last.keep.reshape(-1), (final.slot_of[clip] >= 0).reshape(-1).numpy())
        assert last.tokens == int(final.real_tokens()[clip])
        for before, after in zip(stages, stages[1:]):
            assert not (after.keep & ~before.keep).any(), "a dropped patch came back"
        sizes = final.sizes()[clip][final.valid_mask()[clip]]
        assert int(sizes.sum()) == int(last.keep.sum()), "merged tokens stand for exactly the kept patches"
        merges = name in ("tome", "bat") or kwargs.get("fuse", False)
        for stage in stages:
            assert bool(stage.merged.any()) == merges
            if stage.heat_name is not None:  # scores exist exactly where the stage began with a token
                index = stages.index(stage)
                present = stages[index - 1].keep if index else np.ones_like(stage.keep)
                np.testing.assert_array_equal(np.isfinite(stage.heat), present)


@pytest.mark.parametrize("name,kwargs", [("tome", dict(r=6)), ("topk", dict(keep=0.4)), ("bat", dict(keep=0.5))])
def test_flat_mode_groups_may_span_frames(name: str, kwargs: dict) -> None:
    _, info = _run(name, {**kwargs, "mode": "flat"}, attention="joint_space_time")
    last = stage_masks_from_info(info, 0)[-1]
    np.testing.assert_array_equal(last.keep.reshape(-1), (info.state.slot_of[0, 0] >= 0).numpy())
    assert last.tokens == int(info.state.real_tokens()[0])


def test_stage_tile_dims_dropped_patches_pixel_exactly() -> None:
    frame = synthetic_frame(32, 32)
    keep = np.array([[[True, False, True, True], [False, True, True, True],
                      [True, True, True, False], [True, True, True, True]]])  # (T=1, 4, 4)
    slot = np.where(keep, np.arange(16).reshape(1, 4, 4), -1)
    stage = StageMasks("random", 1, "tube", keep, slot, np.zeros_like(keep), np.full(keep.shape, np.nan),
                       None, int(keep.sum()), 16)
    np.testing.assert_array_equal(stage_tile(frame, stage, 0), dim_dropped(frame, keep[0]))
    grid = overlay_grid(frame[None], [stage], None, ["caption"], scale=2)
    tiles = overlay_frames(frame[None], [stage], None, ["caption"], scale=2)
    assert grid.shape[1] == tiles.shape[2] and tiles.shape[0] == 1


def test_overlay_of_a_real_forward_dims_exactly_the_patches_the_model_dropped() -> None:
    _, info = _run("random", dict(keep=0.5, mode="frame", stages=[1]), batch=1)
    stage = stage_masks_from_info(info, 0)[0]
    dropped = (info.state.slot_of[0] < 0).reshape(4, 4, 4).numpy()  # (T, h, w) from the state itself
    frames = np.stack([synthetic_frame(32, 32, seed=t) for t in range(4)])
    for t in range(4):
        changed = (stage_tile(frames[t], stage, t) != frames[t]).any(axis=-1)  # (32, 32)
        np.testing.assert_array_equal(changed, np.repeat(np.repeat(dropped[t], 8, axis=0), 8, axis=1))


def test_class_attention_capture_covers_every_kept_patch() -> None:
    model = create_model("timesformer_test").eval()
    apply_reducer(model, "tome", r=3)
    with torch.inference_mode(), capture_class_attention(model) as capture:
        model(torch.randn(1, 3, 4, 32, 32))
    heat = capture.heat(0)  # (T, h, w)
    assert heat.shape == (4, 4, 4) and np.isfinite(heat).all()  # ToMe merges, never drops
    assert not model.blocks[-1]._forward_pre_hooks and not model.blocks[-1].attn._forward_hooks


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("rotation", [0, 90])
def test_overlay_command_writes_a_playable_mp4_and_png(tmp_path: Path, rotation: int) -> None:
    from ired_video import save_checkpoint
    from ired_video.commands.overlay import main
    frames = np.random.default_rng(0).integers(0, 256, (24, 42, 58, 3), dtype=np.uint8)  # odd-ish sizes
    video = tmp_path / "clip.mp4"
    write_video(video, frames, 12, rotation=rotation)
    model = create_model("timesformer_test")
    model.data_config.class_names = ["a", "b", "c", "d", "e"]
    apply_reducer(model, "tome", r=3, mode="frame")
    ckpt = tmp_path / "m.pth"
    save_checkpoint(ckpt, model)
    out, png = tmp_path / "o.mp4", tmp_path / "g.png"
    assert main([str(video), "--checkpoint", str(ckpt), "--output", str(out), "--png", str(png)]) == 0
    decoded = _decode(out)
    assert len(decoded) == 4  # one per sampled frame
    from PIL import Image
    grid = np.asarray(Image.open(png))
    # columns: input, heatmap, 2 stages; 32 px crop enlarged 7x; even video size
    assert grid.shape[1] == 4 * 224 + 3 * 4
    assert decoded[0].shape[1] == grid.shape[1] + grid.shape[1] % 2 and decoded[0].shape[0] % 2 == 0


def test_overlay_on_a_real_clip(shared_videos_dir: Path, tmp_path: Path) -> None:
    from ired_video.inference import load_model
    from ired_video.overlay_view import build_overlay
    from ired_video.reducers import reducer_config
    loaded = load_model(model_name="timesformer_test", reducer=reducer_config("iared2", keep=0.5, mode="frame"))
    result = build_overlay(loaded, str(shared_videos_dir / "arm_wrestling_340x256_28fps.mp4"))
    assert result.frames.shape[0] == 4 and result.grid.shape[0] > 4 * 224
    assert [s.tokens for s in result.stages] == [32]  # 4 frames x ceil(0.5 * 16) at block 1
