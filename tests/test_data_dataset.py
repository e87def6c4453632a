"""VideoDataset: views, exact frames, transforms, bad-file replacement, DataLoader workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ired_video.config import DataConfig
from ired_video.data.annotations import VideoRecord
from ired_video.data.dataset import BadFileTracker, VideoDataset

CFG = DataConfig(num_frames=4, sampling_rate=2, target_fps=30.0, crop_size=32,
                 train_short_side=(32, 40), test_short_side=32, mean=(0.0,) * 3, std=(1.0,) * 3)


def records(bitpattern_video, tmp_path, bad=()):
    recs = [VideoRecord(str(bitpattern_video(20 + 4 * i, name=f"v{i}.mp4")), i) for i in range(3)]
    for name in bad:
        (tmp_path / name).write_text("not a video")
        recs.append(VideoRecord(str(tmp_path / name), 9))
    return recs


def frames_of(item):
    """Undo normalisation (mean 0, std 1) -> (T, H, W, 3) uint8-range for the bit reader."""
    video = item["video"].permute(1, 2, 3, 0)  # (C, T, H, W) -> (T, H, W, C)
    return (video * 255).round().numpy()


def test_views_are_videos_x_clips_x_crops_with_crops_innermost(bitpattern_video, tmp_path):
    ds = VideoDataset(records(bitpattern_video, tmp_path), CFG, "test", num_clips=2, num_crops=3)
    assert len(ds) == 18
    assert [ds.view(i) for i in (0, 1, 2, 3, 17)] == [(0, 0, 0), (0, 0, 1), (0, 0, 2),
                                                      (0, 1, 0), (2, 1, 2)]
    item = ds[4]  # video 0 (20 frames), clip 1 of 2, crop 1 of 3
    assert (item["video_index"], item["clip_index"], item["crop_index"], item["label"]) == (
        0, 1, 1, 0)
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
    # max start 20 - 8 = 12, clip 1 of 2 starts at 12 * 0.75 = 9 -> 9, 11, 13, 15
    assert item["frame_indices"].tolist() == [9, 11, 13, 15]
    with pytest.raises(IndexError):
        ds[18]


def test_val_item_frames_are_the_sampled_ones(bitpattern_video, tmp_path):
    # the 64x32 frame becomes 64x32 (short side 32); the centre crop keeps stripes 2..5
    ds = VideoDataset(records(bitpattern_video, tmp_path), CFG, "val")
    item = ds[1]  # 24 frames: max start 16, centred 8 -> 8, 10, 12, 14
    assert item["frame_indices"].tolist() == [8, 10, 12, 14]
    centre = frames_of(item)[:, 16, 4::8, 0]  # stripes 2..5 of the pattern -> (T, 4)
    bits = [sum(1 << (b + 2) for b in range(4) if row[b] > 127) for row in centre]
    assert bits == [i & 0b111100 for i in (8, 10, 12, 14)]
    assert item["failed_paths"] == "" and item["num_failed"] == 0 and not item["padded"]


def test_train_items_are_random_per_epoch_but_reproducible(bitpattern_video, tmp_path):
    ds = VideoDataset(records(bitpattern_video, tmp_path), CFG, "train")

    def draws() -> list[list[int]]:
        out = []
        for epoch in range(6):
            ds.set_epoch(epoch)
            out.append(ds[2]["frame_indices"].tolist())
        return out

    a = draws()
    torch.manual_seed(123)  # the process RNG plays no part
    b = draws()
    assert a == b and len({tuple(x) for x in a}) > 1
    assert all(np.diff(x).tolist() == [2, 2, 2] for x in a)


def test_bad_file_is_replaced_deterministically_and_counted(bitpattern_video, tmp_path, caplog):
    ds = VideoDataset(records(bitpattern_video, tmp_path, bad=["bad.mp4"]), CFG, "val", seed=7)
    item = ds[3]
    again = VideoDataset(ds.records, CFG, "val", seed=7)[3]
    assert item["failed_paths"] == str(tmp_path / "bad.mp4") and item["num_failed"] == 1
    assert item["video_index"] == again["video_index"] != 3
    assert item["label"] == item["video_index"] and torch.equal(item["video"], again["video"])
    assert "bad video, replaced" in caplog.text and "bad.mp4" in caplog.text
    assert list(ds.bad_files) == [str(tmp_path / "bad.mp4")]


def test_all_retries_failing_is_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    ds = VideoDataset([VideoRecord(str(tmp_path / "a.mp4"), 0)], CFG, "val", max_retries=2)
    with pytest.raises(RuntimeError, match="3 videos failed to decode"):
        ds[0]


def test_bad_files_are_counted_in_the_main_process_with_workers(bitpattern_video, tmp_path):
    recs = records(bitpattern_video, tmp_path, bad=["x.mp4", "y.avi"])
    loader = DataLoader(VideoDataset(recs, CFG, "train"), batch_size=2, num_workers=2)
    tracker = BadFileTracker()
    seen = []
    for batch in loader:
        tracker.update(batch)
        seen += batch["index"].tolist()
        assert batch["video"].shape == (len(batch["index"]), 3, 4, 32, 32)
    assert sorted(seen) == list(range(5))
    assert tracker.count == 2 and "bad files: 2" in tracker.summary()
    tracker.reset()
    assert tracker.summary() == "bad files: 0"


def test_config_that_cannot_crop_is_rejected(bitpattern_video, tmp_path):
    bad = DataConfig(crop_size=64, train_short_side=(32, 40), test_short_side=64)
    with pytest.raises(ValueError, match="train_short_side"):
        VideoDataset(records(bitpattern_video, tmp_path), bad, "train")


def test_flip_can_be_switched_off_for_direction_labels(bitpattern_video, tmp_path):
    import dataclasses
    flips = dataclasses.replace(CFG, flip=True)
    steady = dataclasses.replace(CFG, flip=False)
    seen_flip = False
    for epoch in range(12):
        a, b = VideoDataset(records(bitpattern_video, tmp_path), flips, "train"), \
            VideoDataset(records(bitpattern_video, tmp_path), steady, "train")
        a.set_epoch(epoch), b.set_epoch(epoch)
        x, y = a[1]["video"], b[1]["video"]
        if not torch.equal(x, y):
            assert torch.equal(x, y.flip(-1))  # the only difference a flip may make
            seen_flip = True
    assert seen_flip
