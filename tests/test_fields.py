"""Responsive fields from a checkpoint on data (``ired-video fields``), the config path
``model.responsive_fields`` and windowed checkpoints (issue 8)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ired_video import cli
from ired_video.build import create_model
from ired_video.config import ConfigError
from ired_video.data.annotations import load_annotations
from ired_video.data.dataset import VideoDataset
from ired_video.data.demo import make_demo_dataset
from ired_video.engine.config import load_train_config
from ired_video.engine.train import build_model
from ired_video.explain.field_summary import block_summaries, spatial_kept_pairs, temporal_kept_pairs
from ired_video.explain.fields import ResponsiveFields, accumulate_fields
from ired_video.explain.interaction import first_order_edge_effects
from ired_video.models.registry import data_config
from ired_video.models.weights import save_checkpoint
from ired_video.models.window import spatial_allowed, spatial_window, temporal_window

CLIPS = 4
GRID, FRAMES, DEPTH = (4, 4), 4, 2  # timesformer_test


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), videos_per_class=2, num_frames=20, width=64,
                             height=48, progress=False)


@pytest.fixture(scope="module")
def checkpoint(demo, tmp_path_factory) -> Path:
    """A timesformer_test checkpoint for the demo classes whose temporal attention matters
    (a fresh model zeroes temporal_fc, which would make every temporal effect 0)."""
    torch.manual_seed(0)
    model = create_model("timesformer_test", num_classes=len(demo.class_names))
    for block in model.blocks:
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    model.data_config = dataclasses.replace(model.data_config, class_names=list(demo.class_names))
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(path, model)
    return path


def run_fields(checkpoint: Path, demo, out: Path, coverage: float) -> ResponsiveFields:
    argv = ["fields", "--checkpoint", str(checkpoint), "--data", str(demo.val_list), "--limit", str(CLIPS),
            "--batch-size", str(CLIPS), "--coverage", str(coverage), "--out", str(out)]
    assert cli.main(argv) == 0
    return ResponsiveFields.load(out)


def demo_clips(model, demo) -> torch.Tensor:
    """(CLIPS, C, T, H, W): the clips the command saw, preprocessed the same way."""
    ann = load_annotations(demo.val_list, class_names=model.data_config.class_names)
    dataset = VideoDataset(ann.records[:CLIPS], model.data_config, "test")
    return torch.stack([dataset[i]["video"] for i in range(CLIPS)])


def direct_mass(model, clips: torch.Tensor) -> tuple[list, list]:
    """Interaction mass of queries at each location by distance, counted edge by edge:
    spatial[l][n][d], temporal[l][n][s] (self-edges and class-token edges left out)."""
    side = GRID[1]
    cells = [(n // side, n % side) for n in range(GRID[0] * GRID[1])]
    spatial = [[[0.0] * side for _ in cells] for _ in range(DEPTH)]
    temporal = [[[0.0] * FRAMES for _ in cells] for _ in range(DEPTH)]
    for effect in first_order_edge_effects(model, clips):
        values = effect.values.abs().double()
        for n, (row, col) in enumerate(cells):
            if effect.site.kind == "spatial":  # (B, T, 1+N, 1+N), rows = queries
                for m, (row2, col2) in enumerate(cells):
                    if m != n:
                        distance = max(abs(row - row2), abs(col - col2))
                        spatial[effect.site.block][n][distance] += float(values[:, :, 1 + n, 1 + m].sum())
            else:  # temporal (B, N, T, T)
                for t in range(FRAMES):
                    for t2 in range(FRAMES):
                        if t != t2:
                            temporal[effect.site.block][n][abs(t - t2)] += float(values[:, n, t, t2].sum())
    return spatial, temporal


def smallest(mass: list[float], coverage: float) -> int:
    total, running = sum(mass), 0.0
    for distance, part in enumerate(mass):
        running += part
        if running >= coverage * total * (1 - 1e-9):
            return distance
    return len(mass) - 1


def test_command_writes_fields_that_fit_the_model(checkpoint, demo, tmp_path, capsys):
    fields = run_fields(checkpoint, demo, tmp_path / "sub" / "fields.json", 0.9)
    model = create_model(checkpoint=checkpoint)
    assert fields.fit_problem(model.config) is None
    assert (fields.clips, fields.frames, tuple(fields.grid)) == (CLIPS, FRAMES, GRID)
    windowed = create_model(checkpoint=checkpoint, **fields.model_settings())  # the settings build a model
    assert windowed.config.window_radius == fields.radius
    out = capsys.readouterr().out
    assert "masked spatial" in out and "billed (gathered kernel)" in out and "kept pairs" in out
    summary = json.loads((tmp_path / "sub" / "fields.json").read_text())["summary"]
    assert summary["videos"] == CLIPS and len(summary["blocks"]) == DEPTH
    assert summary["gmacs_masked"] == pytest.approx(model.static_gmacs())
    with torch.no_grad():  # what the windowed model bills on a clip (gathered kernel, the default)
        _, info = windowed.eval()(torch.randn(1, 3, FRAMES, 32, 32), return_info=True)
    assert summary["gmacs_billed"] == pytest.approx(float(info.gmacs[0]), rel=1e-6)
    assert summary["gmacs_kept_pairs_analytic"] <= summary["gmacs_billed"] <= summary["gmacs_masked"]


def test_fields_are_the_definition_counted_edge_by_edge(checkpoint, demo, tmp_path):
    model = create_model(checkpoint=checkpoint).eval()
    clips = demo_clips(model, demo)
    spatial, temporal = direct_mass(model, clips)
    accumulated = accumulate_fields(model, [(clips[:2], None), (clips[2:], None)])  # clips are independent
    assert torch.allclose(accumulated.spatial[..., 1:], torch.tensor(spatial, dtype=torch.float64)[..., 1:])
    assert torch.allclose(accumulated.temporal[..., 1:], torch.tensor(temporal, dtype=torch.float64)[..., 1:])
    for coverage in (0.6, 1.0):
        fields = run_fields(checkpoint, demo, tmp_path / f"fields_{coverage}.json", coverage)
        assert fields.radius == [[smallest(m, coverage) for m in block] for block in spatial]
        assert fields.span == [[smallest(m, coverage) for m in block] for block in temporal]
    # Coverage 1: every location whose interactions reach distance d gets a field of at least d.
    for block in range(DEPTH):
        for n in range(GRID[0] * GRID[1]):
            reach = max((d for d, m in enumerate(spatial[block][n]) if m > 0), default=0)
            assert fields.radius[block][n] >= reach
            reach = max((s for s, m in enumerate(temporal[block][n]) if m > 0), default=0)
            assert fields.span[block][n] >= reach
    assert any(s > 0 for block in temporal for row in block for s in row)  # temporal edges did matter


def test_full_coverage_fields_leave_the_predictions_unchanged(checkpoint, demo, tmp_path):
    """Coverage 1 masks only edges without effect (here: every patch-to-patch edge of the last
    block, whose patch outputs the head never reads), so the logits stay the same."""
    fields = run_fields(checkpoint, demo, tmp_path / "fields.json", 1.0)
    plain = create_model(checkpoint=checkpoint).eval()
    windowed = create_model(checkpoint=checkpoint, **fields.model_settings()).eval()
    assert windowed.blocks[-1].spatial_window is not None  # something really is masked
    clips = demo_clips(plain, demo)
    with torch.no_grad():
        assert torch.allclose(windowed(clips), plain(clips), atol=1e-5)


def fields_for(depth: int = DEPTH, grid: tuple[int, int] = GRID, frames: int = FRAMES) -> ResponsiveFields:
    generator = torch.Generator().manual_seed(1)
    locations = grid[0] * grid[1]
    radius = torch.randint(0, max(grid), (depth, locations), generator=generator).tolist()
    span = torch.randint(0, frames, (depth, locations), generator=generator).tolist()
    return ResponsiveFields(radius, span, 0.9, grid, frames, clips=1)


def test_gathered_macs_count_the_pairs_the_masks_keep():
    fields = fields_for()
    locations = GRID[0] * GRID[1]
    for block, summary in enumerate(block_summaries(fields, dim=32)):
        spatial = spatial_window(fields.radius[block], GRID)
        spatial = torch.ones(locations, locations, dtype=torch.bool) if spatial is None else spatial
        every = torch.arange(locations)[None]  # (1, N): all slots, in order
        kept = FRAMES * int(spatial_allowed(spatial, every).sum()) + int(temporal_window(
            fields.span[block], FRAMES).sum())
        assert summary["attention_macs_kept"] == 2 * 32 * kept
        full = FRAMES * (1 + locations) ** 2 + locations * FRAMES ** 2
        assert summary["attention_macs_full"] == 2 * 32 * full
    assert spatial_kept_pairs([0] * locations, GRID) == 1 + 3 * locations  # class row + class column + self
    assert temporal_kept_pairs([FRAMES - 1] * locations, FRAMES) == locations * FRAMES ** 2


def write(fields: ResponsiveFields, path: Path) -> Path:
    fields.save(path)
    return path


def train_config(path: Path, *extra: str):
    return load_train_config(None, ["model.name=timesformer_test", f"model.responsive_fields={path}", *extra])


def test_config_path_builds_a_windowed_model_and_rejects_files_that_do_not_fit(tmp_path):
    fields = fields_for()
    cfg = train_config(write(fields, tmp_path / "good.json"))
    model = build_model(cfg, data_config("timesformer_test", create_model("timesformer_test").config))
    assert model.config.window_radius == fields.radius and model.config.window_span == fields.span
    assert model.blocks[0].spatial_window is not None
    for name, bad in (("deep.json", fields_for(depth=3)), ("grid.json", fields_for(grid=(3, 3))),
                      ("frames.json", fields_for(frames=8))):
        with pytest.raises(ConfigError, match=rf"model\.responsive_fields: .*{name}"):
            train_config(write(bad, tmp_path / name))
    with pytest.raises(ConfigError, match=r"model\.responsive_fields: .*missing\.json: no such"):
        train_config(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"junk\.json: not a responsive-fields"):
        train_config(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="both set the windows"):
        train_config(tmp_path / "good.json", "model.window_span=null")


def test_checkpoint_of_a_windowed_model_rebuilds_the_windows(tmp_path):
    fields = fields_for()
    fields.radius[0] = [0] * len(fields.radius[0])  # block 0 sees only itself: the windows matter
    cfg = train_config(write(fields, tmp_path / "fields.json"))
    model = build_model(cfg, data_config("timesformer_test", create_model("timesformer_test").config)).eval()
    save_checkpoint(tmp_path / "windowed.pth", model)
    (tmp_path / "fields.json").unlink()  # the checkpoint alone must carry the windows
    loaded = create_model(checkpoint=tmp_path / "windowed.pth").eval()
    assert loaded.config.window_radius == fields.radius and loaded.config.window_span == fields.span
    plain = create_model("timesformer_test").eval()
    plain.load_state_dict(model.state_dict())
    video = torch.randn(1, 3, FRAMES, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))
        assert not torch.allclose(loaded(video), plain(video), atol=1e-4)


def test_command_errors_name_the_bad_file(checkpoint, demo, tmp_path, capsys):
    out = str(tmp_path / "f.json")
    assert cli.main(["fields", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(demo.val_list),
                     "--out", out]) == 2
    assert "none.pth: no such checkpoint file" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert cli.main(["fields", "--checkpoint", str(tmp_path / "junk.pth"), "--data", str(demo.val_list),
                     "--out", out]) == 2
    assert "junk.pth: not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert cli.main(["fields", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nope.csv"),
                     "--out", out]) == 2
    assert "nope.csv: no such annotation file" in capsys.readouterr().err
    assert not Path(out).exists()
