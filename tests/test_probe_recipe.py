"""tools/probe_recipe.py: the frames and crop it samples, the mean read-out, one tiny run."""
import json

import torch

from ired_video.build import create_model
from ired_video.data.demo import make_demo_dataset
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
