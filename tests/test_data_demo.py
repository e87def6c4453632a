"""Generated demo dataset: layout, annotations, masks, determinism, the two commands."""
import json

import numpy as np
import pytest

from ired_video.cli import main as cli_main
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.decoding import read_clip
from ired_video.data.demo import demo_class_names, load_mask, make_demo_dataset


def test_all_annotation_forms_agree(small_demo):
    names = demo_class_names()
    assert len(names) == 6 and names == sorted(names)
    by_list = load_annotations(small_demo.train_list)
    by_csv = load_annotations(small_demo.kinetics_train)
    by_folder = load_annotations(small_demo.root / "train")
    for ann in (by_list, by_csv, by_folder):
        assert ann.class_names == names and not ann.missing
        assert sorted((r.path, r.label) for r in ann.records) == sorted(
            (r.path, r.label) for r in by_list.records)
    assert len(by_list.records) == 6 and len(load_annotations(small_demo.val_list).records) == 6
    ids = [r.split(",")[1] for r in small_demo.kinetics_train.read_text().splitlines()[1:]]
    assert all(len(i) == 11 for i in ids)


def test_masks_follow_the_target_in_its_direction(small_demo):
    for rec in load_annotations(small_demo.train_list).records:
        mask = load_mask(rec.path)
        assert mask.shape == (16, 48, 64) and mask.dtype == bool
        assert mask.sum(axis=(1, 2)).min() > 10
        xs = [np.nonzero(m)[1].mean() for m in mask]  # target centroid x per frame
        moves_right = xs[-1] > xs[0]
        assert moves_right == rec.class_name.endswith("right"), rec.path
        frames = read_clip(rec.path, lambda n, fps: list(range(n))).frames
        assert frames.shape == (16, 48, 64, 3)


def test_same_seed_same_annotations_and_frames(tmp_path, small_demo):
    again = make_demo_dataset(tmp_path / "again", videos_per_class=2, seed=3, width=64,
                              height=48, num_frames=16, fps=10, progress=False)
    for a, b in [(small_demo.train_list, again.train_list),
                 (small_demo.kinetics_val, again.kinetics_val)]:
        assert a.read_bytes() == b.read_bytes()
    first = load_annotations(small_demo.train_list).records[0].path
    second = first.replace(str(small_demo.root), str(again.root))
    everything = lambda n, fps: list(range(n))  # noqa: E731
    assert np.array_equal(read_clip(first, everything).frames, read_clip(second, everything).frames)
    other = make_demo_dataset(tmp_path / "other", videos_per_class=2, seed=4, width=64,
                              height=48, num_frames=16, fps=10, progress=False)
    assert other.train_list.read_bytes() != again.train_list.read_bytes()


def test_demo_data_config_trains_on_it(small_demo):
    cfg = small_demo.data_config
    ds = VideoDataset(load_annotations(small_demo.train_list).records, cfg, "train")
    item = ds[0]
    assert item["video"].shape == (3, cfg.num_frames, cfg.crop_size, cfg.crop_size)


def test_make_demo_data_command(tmp_path, capsys):
    assert cli_main(["make-demo-data", str(tmp_path / "d"), "--videos-per-class", "1",
                     "--frames", "8", "--size", "64", "48", "--no-progress"]) == 0
    assert "wrote 6 classes" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "train").rglob("*.mp4"))) == 6
    assert (tmp_path / "d" / "data_config.yaml").is_file()


def test_commands_have_help_with_examples(capsys):
    for name in ("make-demo-data", "check-videos"):
        with pytest.raises(SystemExit) as info:
            cli_main([name, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_check_videos_reports_bad_files_and_cleans_annotations(small_demo, tmp_path, capsys):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(small_demo.root, root)
    records = load_annotations(root / "train.csv").records
    open(records[0].path, "wb").close()  # zero bytes
    with open(records[1].path, "r+b") as f:  # keep 1/5 of the file
        f.truncate(f.seek(0, 2) // 5)
    (root / "train.csv").write_text((root / "train.csv").read_text() + "train/nowhere.mp4 0\n")
    report_path = tmp_path / "r.json"
    assert cli_main(["check-videos", str(root / "train.csv"), "-o", str(report_path),
                     "--clean-output", str(tmp_path / "clean.csv"), "-j", "2",
                     "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    by_path = {r["path"]: r for r in report}
    assert len(report) == 7 and set(report[0]) >= {"path", "ok", "frames", "error"}
    assert by_path[records[0].path]["error"] == "empty file (0 bytes)"
    assert by_path[str(root / "train/nowhere.mp4")]["error"] == "file not found"
    ok = [r for r in report if r["ok"]]
    assert all(r["frames"] == 16 and r["error"] is None for r in ok) and len(ok) >= 4
    clean = load_annotations(tmp_path / "clean.csv", video_root=root)
    assert sorted(r.path for r in clean.records) == sorted(r["path"] for r in ok)
    assert "bad" in capsys.readouterr().out


def test_check_videos_kills_a_hanging_decoder(monkeypatch, tmp_path, small_demo):
    import time

    from ired_video.data import checking

    monkeypatch.setattr(checking, "check_video", lambda *a, **k: time.sleep(30))
    path = load_annotations(small_demo.train_list).records[0].path
    start = time.monotonic()
    report = checking.check_videos([path], timeout=0.5, progress=False)
    assert time.monotonic() - start < 10
    assert report[0]["ok"] is False and "timed out" in report[0]["error"]
