"""Generated demo dataset: layout, annotations, masks, determinism, the two commands."""
import colorsys
import hashlib
import json

import numpy as np
import pytest

from ired_video.cli import main as cli_main
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.decoding import read_clip
from ired_video.data.demo import (
    _Spec,
    class_name_parts,
    demo_class_names,
    demo_data_config,
    label_factor_shares,
    load_mask,
    make_demo_dataset,
    render_video,
)


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


@pytest.mark.parametrize("option,value,message", [
    ("--videos-per-class", "0", "videos_per_class >= 1 (got 0)"),
    ("--val-fraction", "1.5", "val_fraction in [0, 1) (got 1.5)"),  # wrote 6 of 192 videos to train
    ("--jobs", "0", "jobs >= 1 (got 0)"),
])
def test_make_demo_data_refuses_values_that_make_no_dataset(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["make-demo-data", str(tmp_path / "d"), option, value, "--no-progress"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


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


def test_easy_task_renders_exactly_as_before():
    """The default task's pixels and masks are unchanged by the task option (hashes recorded
    before it was added)."""
    for (seed, shape, direction), digest in [
            ((5, "circle", "left"), "da619cbf166a053125839d026ae611845e37d010358099ca84afe7e42ebe85af"),
            ((11, "triangle", "right"), "e16e5cf49ced945af0e0c1c216921858f2e5d63fdcd12f6810fc282ac515eac1")]:
        for spec in (_Spec("", seed, shape, direction, 0, 128, 96, 40, 20),
                     _Spec("", seed, shape, direction, 0, 128, 96, 40, 20, "easy")):
            frames, masks = render_video(spec)
            assert hashlib.sha256(frames.tobytes() + masks.tobytes()).hexdigest() == digest


@pytest.mark.parametrize("task", ["moderate", "medium", "hard"])
def test_harder_tasks_twelve_classes_masks_on_the_moving_target(task):
    names = demo_class_names(task)
    assert len(names) == 12 and names == sorted(names) and "square moving up" in names
    assert demo_data_config(task=task).class_names == names
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for index, name in enumerate(names):
        shape, _, direction = name.split(" ")
        spec = _Spec("", 100 + index, shape, direction, index, 128, 96, 24, 20, task)
        frames, masks = render_video(spec)
        assert frames.shape == (24, 96, 128, 3) and masks.shape == (24, 96, 128)
        assert masks.sum(axis=(1, 2)).min() >= 20, name  # about one patch (12 px) across or more
        for t in (0, 12, 23):  # the mask covers pixels of one colour: the target drawn last
            assert len(np.unique(frames[t][masks[t]], axis=0)) == 1, (name, t)
        ys, xs = zip(*[(np.nonzero(m)[0].mean(), np.nonzero(m)[1].mean()) for m in masks])
        dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
        along = dx * steps[direction][0] + dy * steps[direction][1]
        assert along > 25 and abs(dx * steps[direction][1] + dy * steps[direction][0]) < 1, name
        again, again_masks = render_video(spec)
        assert np.array_equal(frames, again) and np.array_equal(masks, again_masks)
    other, _ = render_video(_Spec("", 99, "circle", "up", 0, 128, 96, 24, 20, task))
    assert not np.array_equal(other, render_video(_Spec("", 98, "circle", "up", 0, 128, 96, 24, 20, task))[0])


def test_moderate_target_hue_names_its_shape_and_trails_behind_it():
    """moderate keeps easy's cues: a vivid target whose hue family is its shape's, with a fading
    trail on the side it comes from, among distractors of other shapes."""
    hues = {"circle": 0.0, "square": 1 / 3, "triangle": 2 / 3}
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for index, name in enumerate(demo_class_names("moderate")):
        shape, _, direction = name.split(" ")
        frames, masks = render_video(_Spec("", 200 + index, shape, direction, index, 128, 96, 16, 20, "moderate"))
        hue, saturation, _ = colorsys.rgb_to_hsv(*(frames[8][masks[8]][0].astype(float) / 255))
        assert saturation > 0.5, name
        assert min(abs(hue - hues[shape]), 1 - abs(hue - hues[shape])) < 0.08, (name, hue)
        ys, xs = np.nonzero(masks[8])
        cy, cx = ys.mean(), xs.mean()
        radius = (masks[8].sum() / np.pi) ** 0.5
        (ux, uy), colour = steps[direction], frames[8][masks[8]][0].astype(float)
        behind = frames[8][int(round(cy - 1.6 * uy * radius)), int(round(cx - 1.6 * ux * radius))]
        ahead = frames[8][int(round(cy + 1.6 * uy * radius)), int(round(cx + 1.6 * ux * radius))]
        assert np.abs(behind - colour).sum() < np.abs(ahead - colour).sum(), name  # the trail is behind


def test_hard_task_dataset_and_command(tmp_path, capsys):
    demo = make_demo_dataset(tmp_path / "h", videos_per_class=1, seed=2, width=64, height=48,
                             num_frames=8, fps=10, progress=False, task="hard")
    assert demo.class_names == demo_class_names("hard") and demo.data_config.class_names == demo.class_names
    assert (demo.root / "classes.txt").read_text().splitlines() == demo.class_names
    records = load_annotations(demo.train_list).records
    assert len(records) == 12 and {r.class_name for r in records} == set(demo.class_names)
    for rec in records:
        assert load_mask(rec.path).sum(axis=(1, 2)).min() > 5
    assert cli_main(["make-demo-data", str(tmp_path / "m"), "--task", "medium", "--videos-per-class", "1",
                     "--frames", "8", "--size", "64", "48", "--no-progress"]) == 0
    assert "wrote 12 classes" in capsys.readouterr().out
    with pytest.raises(ValueError, match="task='tiny'"):
        make_demo_dataset(tmp_path / "x", videos_per_class=1, task="tiny", progress=False)


def test_label_factor_shares_split_each_prediction_into_shape_and_direction():
    names = demo_class_names("hard")
    assert class_name_parts(names)[0] == ("circle", "down")  # sorted: "circle moving down" first
    index = {name: i for i, name in enumerate(names)}
    truth = [index["circle moving left"]] * 4
    predicted = [index[n] for n in ("circle moving left", "circle moving up", "square moving left", "square moving up")]
    assert label_factor_shares(predicted, truth, names) == {"shape": 0.5, "direction": 0.5}
    assert label_factor_shares(predicted, truth, ["a"] * len(names)) is None  # other names: nothing to split
    assert label_factor_shares([], [], names) is None
