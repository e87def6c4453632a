"""``ired-video infer``: documented JSON fields, true GMACs, unreadable files reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ired_video import create_model, save_checkpoint
from ired_video.commands.infer import main
from ired_video.config import ConfigError
from ired_video.data.video_io import write_video
from ired_video.inference import collect_videos, decode_views, load_model, parse_views
from ired_video.reducers import apply_reducer

NAMES = ["archery", "bowling", "cooking", "dancing", "eating"]
VIDEO_FIELDS = {"path", "status", "error", "num_frames", "fps", "backend", "note", "prediction", "gmacs",
                "gmacs_per_view", "decode_ms", "model_ms", "views"}
VIEW_FIELDS = {"clip_index", "crop_index", "frame_indices", "padded", "top_k", "gmacs", "tokens_per_block",
               "stages", "latency_ms", "exit_stage"}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("timesformer_test")
    model.data_config.class_names = list(NAMES)
    apply_reducer(model, "topk", keep=0.5)
    path = tmp_path / "model.pth"
    save_checkpoint(path, model)
    return path


@pytest.fixture
def videos(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "videos"
    folder.mkdir()
    good = folder / "good.mp4"
    write_video(good, rng.integers(0, 256, (30, 36, 48, 3), dtype=np.uint8), 15)
    broken = folder / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 50)
    return {"good": good, "broken": broken, "missing": tmp_path / "missing.mp4", "folder": folder}


def test_json_fields_true_gmacs_and_bad_files(checkpoint: Path, videos: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "preds.json"
    code = main([str(videos["good"]), str(videos["broken"]), str(videos["missing"]), "--checkpoint",
                 str(checkpoint), "--views", "2x3", "--batch-size", "4", "--output", str(out), "--no-progress"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert {"model", "data_config", "views", "batch_size", "top_k", "seconds", "summary", "videos"} <= set(doc)
    assert doc["summary"] == {**doc["summary"], "videos": 3, "ok": 1, "failed": 2, "views": 6}
    assert not doc["model"]["random_weights"] and doc["model"]["reducer"]["name"] == "topk"
    good, broken, missing = doc["videos"]
    assert set(good) == VIDEO_FIELDS and good["status"] == "ok" and good["num_frames"] == 30
    assert broken["status"] == "error" and "pyav" in broken["error"] and broken["views"] == []
    assert missing["status"] == "error" and missing["error"] == "file not found"
    assert "unreadable:" in capsys.readouterr().err

    loaded = load_model(checkpoint)
    decoded = decode_views(videos["good"], loaded.data_config, 2, 3)
    with torch.inference_mode():
        logits, info = loaded.model(decoded.videos, return_info=True)
    probs = logits.softmax(dim=-1)
    assert len(good["views"]) == 6
    for i, view in enumerate(good["views"]):
        assert set(view) == VIEW_FIELDS and view["exit_stage"] is None
        assert (view["clip_index"], view["crop_index"]) == divmod(i, 3)
        assert view["gmacs"] == pytest.approx(float(info.gmacs[i]), rel=1e-6)
        assert view["gmacs"] < doc["model"]["unreduced_gmacs_per_view"]
        assert view["tokens_per_block"] == info.tokens[i].tolist()
        assert [s["tokens"] for s in view["stages"]] == [32]  # keep 0.5 of 4 x 16 at block 1
        assert view["top_k"][0]["label"] in NAMES
        assert view["top_k"][0]["prob"] == pytest.approx(float(probs[i].max()), abs=1e-5)
    mean = probs.mean(dim=0)
    assert good["prediction"]["label"] == NAMES[int(mean.argmax())]
    assert good["prediction"]["prob"] == pytest.approx(float(mean.max()), abs=1e-5)
    assert good["gmacs"] == pytest.approx(float(info.gmacs.sum()), rel=1e-6)


def test_folder_input_and_reducer_override(checkpoint: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    assert collect_videos([videos["folder"]]) == [str(videos["folder"] / "broken.mp4"),
                                                  str(videos["folder"] / "good.mp4")]
    out = tmp_path / "p.json"
    assert main([str(videos["folder"]), "--checkpoint", str(checkpoint), "--reducer", "tome", "r=4",
                 "--output", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    view = [v for v in doc["videos"] if v["status"] == "ok"][0]["views"][0]
    assert [s["reducer"] for s in view["stages"]] == ["tome", "tome"]
    assert [s["tokens"] for s in view["stages"]] == [48, 32]  # 4 frames x (16 - 4), then x (12 - 4)


def test_random_weights_warn_loudly(videos: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(videos["good"]), "--model", "timesformer_test", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and "class_" in captured.out


def test_parse_views() -> None:
    assert parse_views("1x3") == (1, 3) and parse_views("4X1") == (4, 1)
    for bad in ("3", "1x2", "0x1", "ax3"):
        with pytest.raises(ConfigError):
            parse_views(bad)


def test_real_clips(shared_videos_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "real.json"
    clips = sorted(str(p) for p in shared_videos_dir.iterdir() if p.suffix in (".mp4", ".mkv", ".avi"))
    assert main([*clips, "--checkpoint", str(checkpoint), "--views", "1x3", "--output", str(out),
                 "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["summary"]["ok"] == len(clips)
    arm = [v for v in doc["videos"] if v["path"].endswith("arm_wrestling_340x256_28fps.mp4")][0]
    assert (arm["num_frames"], arm["fps"], len(arm["views"])) == (280, 28.0, 3)
