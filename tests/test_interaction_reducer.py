"""The interaction reducer drops by the package's patch-interaction indicator (or a predictor
fitted to it); attention received is its own reducer."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import replace

import pytest
import torch

from ired_video import apply_reducer, cli, create_model, save_checkpoint
from ired_video.explain.interaction import interaction_indicator
from ired_video.flops import count_flops
from ired_video.reducers.interaction import block_indicator
from ired_video.reducers.interaction_fit import agreement, fit_interaction_predictors, spearman
from ired_video.tokens import TokenState

MODES = [("divided_space_time", "tube"), ("divided_space_time", "frame"), ("space_only", "frame"),
         ("joint_space_time", "flat")]


def _model(attention_type: str = "divided_space_time") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("timesformer_test", attention_type=attention_type, depth=4).eval()
    for block in model.blocks:  # temporal mixing switched on
        if hasattr(block, "temporal_fc"):
            torch.nn.init.normal_(block.temporal_fc.weight, std=0.1)
    return model


def _clips(count: int, seed: int, batch: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 4, 32, 32, generator=g) for _ in range(count)]


@pytest.mark.parametrize("attention_type,mode", MODES, ids=[f"{a}-{m}" for a, m in MODES])
def test_the_reducer_keeps_the_patches_the_indicator_ranks_highest(attention_type, mode):
    """First stage: the reducer's scores are explain's indicator (role key, magnitudes, the
    predicted class) of that block, and it keeps the top of them (frame means in tube mode)."""
    model = _model(attention_type)
    video = _clips(1, 1, batch=2)[0]
    expected = interaction_indicator(model, video)  # (B, depth, T, N) spatial and temporal parts
    expected = (expected.spatial[:, 1] + expected.temporal[:, 1])  # (B, T, N) at block 1
    apply_reducer(model, "interaction", keep=0.5, stages=[1, 2], score="indicator", mode=mode)
    with torch.inference_mode():  # the indicator's own backward pass runs even here
        _, info = model(video, return_info=True)
    record = next(r for r in info.records if r.block == 1)
    torch.testing.assert_close(record.indicator.reshape(2, 4, 16), expected, atol=1e-7, rtol=1e-4)
    unit = expected.mean(dim=1, keepdim=True) if mode == "tube" else expected  # (B, U, N)
    if mode == "flat":
        unit = expected.reshape(2, 1, 64)
    top = unit.topk(unit.shape[-1] // 2, dim=-1).indices.sort(dim=-1).values
    kept = record.slot_of.reshape(unit.shape[0], -1, unit.shape[-1]) >= 0  # (B, U', N) patches still held
    for b in range(2):
        for u in range(unit.shape[1]):
            assert torch.nonzero(kept[b, u]).flatten().tolist() == top[b, u].tolist()


def test_temporal_interactions_by_location_equal_those_by_slot():
    """Aligned tokens attend in time by slot; the by-location path, each token holding its
    own patch, gives the same per-token indicator."""
    model = _model()
    state = model.embed(_clips(1, 2, batch=2)[0])
    by_slot, _ = block_indicator(lambda *args: model.tail_logits(1, *args), state)
    by_location, _ = block_indicator(lambda *args: model.tail_logits(1, *args), replace(state, aligned=False))
    torch.testing.assert_close(by_location, by_slot, atol=1e-9, rtol=1e-4)
    assert by_slot.abs().min() > 0


def test_fitting_the_predictor_raises_its_agreement_with_the_indicator():
    """Held-out clips: Spearman correlation of predictor and indicator rises from about 0
    (a random head) to clearly positive after fitting on other clips."""
    model = apply_reducer(_model(), "interaction", keep=0.5, stages=[1, 2])
    held_out = _clips(2, 7)
    before = agreement(model, held_out)
    report = fit_interaction_predictors(model, _clips(4, 3), steps=200)
    after = agreement(model, held_out)
    for block in (1, 2):
        assert abs(before[block]["spearman_frame"]) < 0.2
        assert after[block]["spearman_frame"] > before[block]["spearman_frame"] + 0.3, (before, after)
        assert report[block]["loss_end"] < report[block]["loss_start"]


def test_an_unfitted_predictor_is_refused_and_a_fitted_one_travels_in_checkpoints(tmp_path):
    model = apply_reducer(_model(), "interaction", keep=0.5, stages=[1, 2])
    video = _clips(1, 5, batch=2)[0]
    with pytest.raises(ValueError, match="interaction reducer at block 1: its predictor is not fitted"):
        model(video)
    fit_interaction_predictors(model, _clips(1, 3), steps=5)
    with torch.no_grad():
        logits, info = model(video, return_info=True)
    record = next(r for r in info.records if r.block == 1)
    assert record.indicator is None and record.scores.shape == (2, 1, 16)  # the predictor's tube scores
    top = record.scores[:, 0].topk(8, dim=-1).indices.sort(dim=-1).values  # (B, 8)
    kept = record.slot_of[:, 0] >= 0  # (B, N): tube mode keeps the same patches in every frame
    assert [torch.nonzero(row).flatten().tolist() for row in kept] == top.tolist()
    save_checkpoint(tmp_path / "fitted.pth", model)
    restored = create_model(checkpoint=tmp_path / "fitted.pth").eval()
    assert restored.reducers["1"].fitted
    apply_reducer(restored, "interaction", keep=0.5, stages=[1, 2])  # the same reducer again: kept as it is
    with torch.no_grad():
        assert torch.equal(restored(video), logits)
    apply_reducer(restored, "interaction", keep=0.6, stages=[1, 2])  # another one: a fresh predictor
    assert not restored.reducers["1"].fitted


def test_predictor_mode_bills_its_head():
    model = apply_reducer(_model(), "interaction", keep=0.5, stages=[1, 2], mode="frame")
    for reducer in model.reducers.values():
        reducer.fitted = True  # a random head ranks as well as any for counting
    video = _clips(1, 4, batch=1)[0]
    _, info = model(video, return_info=True)
    assert abs(info.gmacs.item() - count_flops(model, video) / 2e9) / info.gmacs.item() < 0.01


@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only", "joint_space_time"])
def test_indicator_mode_bills_its_extra_pass_close_to_the_flop_counter(attention_type):
    """The tail's forward and backward are billed as twice its forward: within 5% of what
    FlopCounterMode counts (forward and backward) on the whole run."""
    model = apply_reducer(_model(attention_type), "interaction", keep=0.5, stages=[1, 2], score="indicator")
    video = _clips(1, 4, batch=1)[0]
    with torch.no_grad():
        _, info = model(video, return_info=True)
    counted = count_flops(model, video) / 2e9
    assert abs(info.gmacs.item() - counted) / counted < 0.05
    assert info.gmacs.item() > 1.5 * create_model("timesformer_test", attention_type=attention_type,
                                                  depth=4).static_gmacs()


def test_spearman_is_rank_correlation():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 400.0], [4.0, 3.0, 2.0, 1.0]])
    torch.testing.assert_close(spearman(a, b), torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_attention_received_is_its_own_reducer():
    model = apply_reducer(_model(), "attention_received", keep=0.5, stages=[1])
    with torch.no_grad():
        _, info = model(_clips(1, 6, batch=2)[0], return_info=True)
    record = info.records[0]
    assert record.reducer == "attention_received" and record.scores.shape == (2, 1, 16)
    assert isinstance(info.state, TokenState) and info.state.x.shape[2] == 8


def test_fit_interaction_command_writes_a_fitted_checkpoint(small_demo, tmp_path, capsys):
    model = create_model("timesformer_test", num_classes=len(small_demo.class_names))
    model.data_config = dataclasses.replace(small_demo.data_config, num_frames=4, crop_size=32,
                                            test_short_side=32, train_short_side=(32, 40))
    save_checkpoint(tmp_path / "plain.pth", model)
    out = tmp_path / "fit"
    code = cli.main(["fit-interaction", "--checkpoint", str(tmp_path / "plain.pth"), "--data",
                     str(small_demo.train_list), "--val", str(small_demo.val_list), "--reducer", "interaction",
                     "keep=0.5", "stages=[1]", "--steps", "5", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "fit.json").read_text())
    assert set(report["agreement_after"]) == {"1"}
    assert report["train_clips"] == len(small_demo.train_list.read_text().splitlines())
    assert -1 <= report["agreement_after"]["1"]["spearman_frame"] <= 1
    fitted = create_model(checkpoint=out / "interaction.pth")
    assert fitted.reducers["1"].fitted and fitted.reducer_config.score == "predictor"
    assert "| 1 |" in capsys.readouterr().out
    code = cli.main(["fit-interaction", "--checkpoint", str(tmp_path / "plain.pth"), "--data",
                     str(small_demo.train_list), "--val", str(small_demo.val_list), "--reducer", "topk",
                     "keep=0.5", "--out", str(out)])
    assert code == 2


def test_reducer_start_reuses_a_fit_of_the_same_checkpoint_reducer_and_data(tmp_path, monkeypatch):
    """A rerun of a benchmark skips the predictor's fit it already made, never a stale one."""
    from ired_video.config import to_dict
    from ired_video.engine import interaction_fit
    from ired_video.reducers import reducer_config
    fits = []

    def fit(checkpoint, cfg, data, val, out):
        fits.append(checkpoint)
        out.mkdir(exist_ok=True)
        (out / "interaction.pth").write_bytes(b"fitted")
        report = {"checkpoint": str(checkpoint), "reducer": to_dict(cfg), "data": data, "val": val}
        (out / "fit.json").write_text(json.dumps(report))
        return report
    monkeypatch.setattr(interaction_fit, "fit_checkpoint", fit)
    plain, out = tmp_path / "plain.pth", tmp_path / "fit"
    plain.write_bytes(b"plain")
    cfg = reducer_config("interaction", keep=0.5)
    start, reducer, report = interaction_fit.reducer_start(plain, cfg, tmp_path, out)
    assert (start, reducer, fits) == (out / "interaction.pth", None, [plain])
    assert interaction_fit.reducer_start(plain, cfg, tmp_path, out)[2] == report and fits == [plain]
    interaction_fit.reducer_start(plain, reducer_config("interaction", keep=0.7), tmp_path, out)
    assert len(fits) == 2  # another reducer setting
    interaction_fit.reducer_start(plain, reducer_config("interaction", keep=0.7), tmp_path / "other", out)
    assert len(fits) == 3  # other annotations
    later = (out / "interaction.pth").stat().st_mtime_ns + 10**9
    os.utime(plain, ns=(later, later))  # the plain model was retrained after the fit
    interaction_fit.reducer_start(plain, reducer_config("interaction", keep=0.7), tmp_path / "other", out)
    assert len(fits) == 4
    assert interaction_fit.reducer_start(plain, reducer_config("topk", keep=0.5), tmp_path, out)[0] == plain
    assert len(fits) == 4  # only the predictor is fitted
