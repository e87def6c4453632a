"""tools/probe_recipe.py: the frames and crop it samples, the mean read-out, one tiny run."""
import json

import pytest
import torch

from ired_video.build import create_model
from ired_video.data.demo import make_demo_dataset
from ired_video.models.weights import save_checkpoint
from tests.tool_modules import load_tool


def _probe():
    return load_tool("probe_recipe")


def test_validation_view_is_the_centre_frames_and_crop():
    probe = _probe()
    clips = torch.zeros(1, 40, 3, 64, 85, dtype=torch.uint8)
    clips[0] += torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)  # pixel value = frame index
    clips[0, :, :, :, 10] = 255  # column 10 is the first of the centre crop (85 - 64) // 2
    video = probe.sample(clips, False, None) * probe.STD[0] + probe.MEAN[0]  # (1, 3, 8, 64, 64), 0-1 units
    frames = (video[0, 0, :, 0, 1] * 255).round().long().tolist()
    assert frames == [5, 9, 13, 17, 21, 25, 29, 33]  # 8 frames 4 apart, centred in 40
    assert torch.all(video[0, :, :, :, 0] == 1.0) and torch.all(video[0, :, :, :, 1:] < 1.0)


def test_training_views_stay_inside_the_clip():
    probe = _probe()
    clips = torch.randint(0, 255, (6, 30, 3, 64, 70), dtype=torch.uint8)
    video = probe.sample(clips, True, torch.Generator().manual_seed(0))
    assert video.shape == (6, 3, 8, 64, 64)


def test_mean_read_out_uses_the_patch_tokens_not_the_class_token():
    probe = _probe()
    torch.manual_seed(0)
    model = create_model("timesformer_test", num_classes=3)
    pooled = probe.MeanPooled(model).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        state = model.forward_blocks(model.embed(video))
        expected = model.head(model.norm(state.x.mean(dim=(1, 2))))
        assert torch.allclose(pooled(video), expected)
        assert not torch.allclose(pooled(video), model.eval()(video))


def test_a_tiny_probe_decodes_once_and_writes_its_row(tmp_path):
    probe = _probe()
    data = make_demo_dataset(tmp_path / "demo", videos_per_class=2, num_frames=32, progress=False).root
    out = tmp_path / "rows.json"
    argv = ["--data", str(data), "--model", "cnn3d", "--steps", "2", "--every", "1", "--out", str(out)]
    assert probe.main(argv) == 0
    assert (data / "probe_cache_train.pt").is_file() and (data / "probe_cache_val.pt").is_file()
    assert probe.main(argv) == 0  # second run reads the cache
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and [p["step"] for p in rows[0]["points"]] == [1, 2]
    assert rows[0]["classes"] == 6 and rows[0]["train_videos"] == 6 and rows[0]["val_videos"] == 6


def test_patch_coverage_follows_the_sampled_frames_and_crop():
    probe = _probe()
    masks = torch.zeros(1, 40, 64, 85, dtype=torch.uint8)
    masks[0, 5, 8:16, 10 + 16:10 + 24] = 255  # frame 5 (the first centre frame), patch row 1, column 2 of the crop
    masks[0, 6, :, :] = 255  # a frame the centre view skips
    starts, lefts = probe.windows(masks, False, None)
    coverage = probe.patch_pixels(masks, starts, lefts, patch=8).mean(-1)  # (1, 8, 64)
    assert coverage.shape == (1, 8, 64)
    assert coverage[0, 0, 1 * 8 + 2] == 1.0 and coverage[0, 0].sum() == 1.0
    assert coverage[0, 1:].sum() == 0.0


def _heads(coverage, shapes=0, pixels=0):
    """Zero outputs of MotionPretraining's heads for a (B, F, K) coverage."""
    out = {"where": torch.zeros_like(coverage), "direction": torch.zeros(*coverage.shape, 2)}
    if shapes:
        out["shape"] = torch.zeros(*coverage.shape, shapes)
    if pixels:
        out["mask"] = torch.zeros(*coverage.shape, pixels)
    return out


def test_motion_losses_are_lowest_at_the_targets_and_ignore_uncovered_patches():
    probe = _probe()
    coverage = torch.zeros(1, 2, 4)
    coverage[0, 0, 1], coverage[0, 0, 2] = 0.75, 0.25  # frame 1: the actor is not in the crop
    direction = torch.tensor([[1.0, 0.0]])
    exact = _heads(coverage)
    exact["where"] = coverage.clamp(min=1e-9).log()
    exact["direction"][0, 0, 1] = direction[0]  # the one patch over a quarter covered points the right way
    exact["direction"][0, 0, 3] = torch.tensor([0.0, 5.0])  # an uncovered patch's direction is not scored
    losses = probe.motion_losses(exact, coverage, direction)
    entropy = -(torch.tensor([0.75, 0.25]) * torch.tensor([0.75, 0.25]).log()).sum()
    assert set(losses) == {"where", "direction"}
    assert torch.isclose(losses["where"], entropy, atol=1e-5) and losses["direction"] == 0.0
    wrong = {k: v.clone() for k, v in exact.items()}
    wrong["direction"][0, 0, 1] = torch.tensor([-1.0, 0.0])
    wrong["where"][0, 0] = 0.0
    worse = probe.motion_losses(wrong, coverage, direction)
    assert worse["where"] > losses["where"] and torch.isclose(worse["direction"], torch.tensor(4.0))


def test_shape_loss_scores_only_the_actor_patches():
    probe = _probe()
    coverage = torch.zeros(1, 1, 3)
    coverage[0, 0, 0] = 1.0
    out = _heads(coverage, shapes=2)
    out["shape"][0, 0, 0] = torch.tensor([10.0, -10.0])  # the actor's patch says shape 0
    out["shape"][0, 0, 1] = torch.tensor([-10.0, 10.0])  # an empty patch says shape 1: not scored
    right = probe.motion_losses(out, coverage, torch.zeros(1, 2), torch.tensor([0]))["shape"]
    wrong = probe.motion_losses(out, coverage, torch.zeros(1, 2), torch.tensor([1]))["shape"]
    assert right < 1e-6 and torch.isclose(wrong, torch.tensor(20.0), atol=1e-4)


def test_patch_pixels_are_the_patch_tokens_pixels_row_major():
    probe = _probe()
    masks = torch.zeros(1, 40, 64, 64, dtype=torch.uint8)
    masks[0, 5, 8 + 2, 16 + 3] = 255  # frame 5 (the first centre frame): patch (1, 2), pixel (2, 3) inside it
    starts, lefts = probe.windows(masks, False, None)
    pixels = probe.patch_pixels(masks, starts, lefts, patch=8)  # (1, 8, 64, 64)
    assert pixels.shape == (1, 8, 64, 64)
    assert pixels[0, 0, 1 * 8 + 2, 2 * 8 + 3] == 1.0 and pixels.sum() == 1.0


def test_mask_loss_weighs_the_actor_patches_as_much_as_all_the_others():
    probe = _probe()
    pixels = torch.zeros(1, 1, 4, 4)
    pixels[0, 0, 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # the actor's half of patch 0
    coverage = pixels.mean(-1)
    drawn = _heads(coverage, pixels=4)
    drawn["mask"][:] = -20.0
    drawn["mask"][0, 0, 0, :2] = 20.0  # every pixel right
    loss = probe.motion_losses(drawn, coverage, torch.zeros(1, 2), pixels=pixels)["mask"]
    assert loss < 1e-6
    blank = {k: v.clone() for k, v in drawn.items()}
    blank["mask"][0, 0, 0, :2] = -20.0  # the actor left out: half the actor patch's pixels 20 nats off
    missed = probe.motion_losses(blank, coverage, torch.zeros(1, 2), pixels=pixels)["mask"]
    assert torch.isclose(missed, torch.tensor(10.0), atol=1e-3)
    ghost = {k: v.clone() for k, v in drawn.items()}
    ghost["mask"][0, 0, 3, :2] = 20.0  # a shape drawn on one of three empty patches
    assert torch.isclose(probe.motion_losses(ghost, coverage, torch.zeros(1, 2), pixels=pixels)["mask"],
                         torch.tensor(10.0 / 3), atol=1e-3)


def test_pretrained_backbone_starts_a_probe_with_a_new_head(tmp_path):
    probe = _probe()
    data = make_demo_dataset(tmp_path / "demo", videos_per_class=2, num_frames=32, progress=False).root
    backbone, out = tmp_path / "backbone.pth", tmp_path / "rows.json"
    common = ["--model", "timesformer_test", "--steps", "2", "--every", "2", "--batch-size", "2", "--out", str(out)]
    pretrain = ["--pretrain", str(data), "--save", str(backbone), "--shape-target", "--mask-target"]
    assert probe.main([*pretrain, *common]) == 0
    saved = torch.load(backbone, weights_only=True)
    assert saved["format"] == "ired_video" and saved["pretraining"]["phase"] == "pretrain"
    assert probe.main(["--data", str(data), "--init", str(backbone), *common]) == 0
    pretrained, probed = json.loads(out.read_text())
    assert pretrained["phase"] == "pretrain" and pretrained["shape_target"] and pretrained["mask_target"]
    assert {"actor_found", "direction", "shape", "shape_loss", "mask_loss"} <= set(pretrained["points"][-1])
    assert probed["init"] == str(backbone) and probed["classes"] == 6
    save_checkpoint(tmp_path / "micro.pth", create_model("timesformer_micro", num_classes=6))
    with pytest.raises(SystemExit, match="micro.pth"):  # a backbone of another model is refused
        probe.main(["--data", str(data), "--init", str(tmp_path / "micro.pth"), *common])


def test_validation_scores_split_the_label_into_shape_and_direction():
    probe = _probe()
    names = ["circle moving left", "circle moving right", "square moving left", "square moving right"]
    guesses = torch.tensor([1, 1, 2, 2])  # predicted class of each video, whatever it is shown

    class Fixed(torch.nn.Module):
        def forward(self, video):
            return torch.nn.functional.one_hot(guesses[:len(video)], 4).float()

    x = torch.zeros(4, 40, 3, 64, 64, dtype=torch.uint8)
    y = torch.tensor([1, 0, 1, 0])  # right / shape only / neither / direction only
    scores = probe.validation_scores(Fixed(), x, y, names)
    assert scores == {"val_top1": 25.0, "val_shape": 50.0, "val_direction": 50.0}
    assert probe.validation_scores(Fixed(), x, y, ["a", "b", "c", "d"]) == {"val_top1": 25.0}
