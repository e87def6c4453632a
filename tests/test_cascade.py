"""The DVT cascade: routing, reuse, compute accounting, calibration, checkpoints, training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ired_video import ConfigError, apply_reducer, create_model
from ired_video.cascade.calibration import calibration_table, choose, exit_shares, fit_thresholds, route
from ired_video.cascade.model import Cascade, CascadeConfig, StageConfig, build_cascade, load_cascade_config
from ired_video.flops import count_flops
from ired_video.models.registry import model_config
from ired_video.models.weights import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
REUSE = [(False, False), (True, False), (False, True), (True, True)]
VARIANTS = [("official", "official"), ("shared", "all_upstream")]
# timesformer_test: 32 px, patch 8, 4 frames -> stage 1: 2 frames of a 2x2 grid (patch 16); stage 2: 4 x 4x4
STAGES = [StageConfig(frames=2, patch_size=16), StageConfig()]


def _cascade(feature: bool = True, relation: bool = True, stages=None, trained: bool = True,
             variants: tuple[str, str] = VARIANTS[0], **kwargs) -> Cascade:
    torch.manual_seed(0)
    cfg = CascadeConfig(stages=stages or STAGES, feature_reuse=feature, relation_reuse=relation,
                        feature_variant=variants[0], relation_variant=variants[1],
                        feature_hidden=8, feature_dim=4, relation_hidden=8, **kwargs)
    model = Cascade(model_config("timesformer_test"), cfg).eval()
    if trained:  # zero-initialised reuse is an exact no-op: give it (and temporal mixing) weights
        for name, param in model.named_parameters():
            if "feature_in" in name or "relation_reuse" in name or "temporal_fc" in name:
                torch.nn.init.normal_(param, std=0.2)
    return model


def _video(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("feature,relation", REUSE)
def test_threshold_zero_exits_everything_at_stage_one(feature, relation):
    model = _cascade(feature, relation, thresholds=[0.0])
    video = _video()
    with torch.no_grad():
        logits, info = model(video, return_info=True)
        alone = model.stages[0](model.stage_input(video, 0))
    assert info.exit_stage.tolist() == [0] * 4
    torch.testing.assert_close(logits, alone)
    assert info.gmacs.tolist() == pytest.approx([model.stages[0].static_gmacs()] * 4, rel=1e-6)
    assert info.tokens[:, model.config.depth:].eq(0).all()  # stage 2's blocks never ran


@pytest.mark.parametrize("thresholds", [None, [1.5]])
def test_thresholds_above_one_run_every_stage_and_equal_the_last_stage_without_reuse(thresholds):
    model = _cascade(False, False, thresholds=thresholds)
    video = _video()
    with torch.no_grad():
        logits, info = model(video, return_info=True)
        assert torch.equal(logits, model.stages[-1](video))
    assert info.exit_stage.tolist() == [1] * 4
    reused = _cascade(True, True, thresholds=thresholds)
    reused.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(reused(video), logits)  # reuse switched on changes the answer


@pytest.mark.parametrize("variants", VARIANTS, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("feature,relation", REUSE)
def test_per_clip_gmacs_add_up_and_match_flop_counter(feature, relation, variants):
    model = _cascade(feature, relation, variants=variants)
    video = _video(1)
    with torch.no_grad():
        _, info = model(video, return_info=True)
    per_stage = model.stage_gmacs_static()
    assert float(info.gmacs[0]) == pytest.approx(sum(per_stage), rel=1e-6)
    assert info.stage_gmacs[0].tolist() == pytest.approx([per_stage[0], sum(per_stage)], rel=1e-6)
    reuse_bill = sum(per_stage) - sum(stage.static_gmacs() for stage in model.stages)
    assert (reuse_bill > 0) == (feature or relation)
    model.set_fused_attention(False)
    assert count_flops(model, video) / 2 / 1e9 == pytest.approx(float(info.stage_gmacs[0, -1]), rel=1e-12)


def _mixed_thresholds(model: Cascade, video: torch.Tensor) -> list[float]:
    """A stage-1 threshold halfway between the two middle confidences: half the clips exit and
    none sits on the threshold (the median itself would: batched and single-clip rounding
    differ by ~1e-7, which flipped that clip's exit on another CPU)."""
    with torch.no_grad():
        confidence = model.stages[0](model.stage_input(video, 0)).softmax(-1).amax(-1)
    middle = len(confidence) // 2
    low, high = confidence.sort().values[middle - 1:middle + 1].tolist()
    assert high - low > 1e-4, "the two middle clips are too close to tell apart"
    return [(low + high) / 2]


@pytest.mark.parametrize("variants", VARIANTS, ids=lambda v: "-".join(v))
@pytest.mark.parametrize("feature,relation", REUSE[1:])
def test_clips_exit_alone_and_do_not_depend_on_their_batch(feature, relation, variants):
    model = _cascade(feature, relation, variants=variants)
    video = _video(6)
    model.set_thresholds(_mixed_thresholds(model, video))
    with torch.no_grad():
        logits, info = model(video, return_info=True)
        exits = info.exit_stage.tolist()
        assert 0 < sum(exits) < 6  # some clips exit at stage 1, some go on
        per_stage = model.stage_gmacs_static()
        for i in range(6):
            one, one_info = model(video[i:i + 1], return_info=True)
            torch.testing.assert_close(one[0], logits[i], atol=1e-5, rtol=1e-5)
            assert int(one_info.exit_stage[0]) == exits[i]
            assert float(info.gmacs[i]) == pytest.approx(sum(per_stage[:exits[i] + 1]), rel=1e-6)
        _, every = model(video, return_info=True, all_exits=True)  # routed answers, all stages run
    assert every.exit_stage.tolist() == exits
    assert float(every.gmacs.min()) == pytest.approx(sum(per_stage), rel=1e-6)


@pytest.mark.parametrize("variants,names", [
    (VARIANTS[0], ("feature_reuse.1.0.fc1", "feature_reuse.1.0.fc2", "feature_norm.1.0", "feature_in.1.0",
                   "relation_reuse.0_1_spatial.conv1", "relation_reuse.0_1_temporal.conv1")),
    (VARIANTS[1], ("feature_reuse.1.fc1", "feature_in.1.0", "relation_reuse.0_1_spatial.fc1",
                   "relation_reuse.0_1_temporal.fc1"))], ids=["official", "shared"])
def test_training_returns_every_exit_and_reuse_gets_gradients(variants, names):
    model = _cascade(True, True, variants=variants).train()
    logits, info = model(_video(), return_info=True)
    assert len(info.stage_logits) == 2 and all(out.shape == (4, 5) for out in info.stage_logits)
    sum(out.logsumexp(-1).sum() for out in info.stage_logits).backward()
    for prefix in (*names, "stages.0.blocks.0.attn.qkv"):
        grad = dict(model.named_parameters())[f"{prefix}.weight"].grad
        assert grad is not None and grad.abs().sum() > 0, prefix


def test_reducer_runs_inside_the_last_stage():
    model = _cascade(True, False)
    video = _video(2)
    with torch.no_grad():
        _, plain = model(video, return_info=True)
        apply_reducer(model, "topk", keep=0.5, stages=[1])
        _, reduced = model(video, return_info=True)
    assert reduced.records and reduced.state.real_tokens().tolist() == [32, 32]  # half of 4 x 16 in block 1
    assert (reduced.gmacs < plain.gmacs).all()
    assert model.cascade_config.reducer.name == "topk"
    with pytest.raises(ConfigError, match="relation_reuse"):
        apply_reducer(_cascade(True, True), "topk", keep=0.5)


# ------------------------------------------------------------------ calibration
def _synthetic(n: int = 400, stages: int = 3, classes: int = 10, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=generator)
    probs = []
    for k in range(stages):  # later stages are sharper and more often right
        logits = torch.randn(n, classes, generator=generator)
        logits[torch.arange(n), labels] += 1.0 + 1.5 * k
        probs.append((logits * (1 + k)).softmax(-1))
    cumulative = torch.tensor([1.0, 3.0, 7.0])[:stages].expand(n, stages).clone()
    return torch.stack(probs), labels, cumulative


def test_dvt_thresholds_give_the_asked_exit_shares():
    probs, _, _ = _synthetic()
    confidence = probs.amax(-1)
    shares = exit_shares(0.5, 3)
    assert sum(shares) == pytest.approx(1) and shares[0] > shares[1] > shares[2]
    exits = route(confidence, fit_thresholds(confidence, shares))
    counts = torch.bincount(exits, minlength=3).tolist()
    assert counts[0] == int(400 * shares[0]) and counts[1] == pytest.approx(400 * shares[1], abs=1)


@pytest.mark.parametrize("budget", [1.0, 2.0, 3.5, 5.0, 7.0])
def test_calibration_meets_the_budget_on_synthetic_exits(budget):
    probs, labels, cumulative = _synthetic()
    table = calibration_table(probs, labels, cumulative)
    assert len(table) == 61 and table[0]["gmacs"] == 1.0 and table[-1]["gmacs"] == 7.0
    row = choose(table, budget)
    assert row["gmacs"] <= budget
    assert row["gmacs"] == max(r["gmacs"] for r in table if r["gmacs"] <= budget)
    assert row["top1"] == max(r["top1"] for r in table if r["gmacs"] == row["gmacs"])
    with pytest.raises(ConfigError, match="below the cheapest"):
        choose(table, 0.5)


def test_calibration_meets_the_budget_on_a_generated_split_and_survives_a_checkpoint(small_demo, tmp_path):
    from torch.utils.data import DataLoader

    from ired_video.cascade.calibration import calibrate
    from ired_video.data.annotations import load_annotations
    from ired_video.data.dataset import VideoDataset
    from ired_video.models.registry import data_config

    model = _cascade(True, True)
    model.data_config = data_config("timesformer_test", model.config)
    records = load_annotations(small_demo.root / "train.csv").records[:10]
    loader = DataLoader(VideoDataset(records, model.data_config, "test"), batch_size=4)
    per_stage = model.stage_gmacs_static()
    budget = per_stage[0] + 0.5 * per_stage[1]
    result = calibrate(model, loader, budget)
    chosen = result["chosen"]
    assert chosen["gmacs"] <= budget and model.thresholds == chosen["thresholds"]
    # routing the split with the chosen thresholds spends what the table promised
    with torch.no_grad():
        spent = [model(batch["video"], return_info=True)[1].gmacs for batch in loader]
    assert float(torch.cat(spent).double().mean()) == pytest.approx(chosen["gmacs"], rel=1e-5)

    save_checkpoint(tmp_path / "cascade.pth", model)
    loaded = create_model(checkpoint=tmp_path / "cascade.pth").eval()
    assert isinstance(loaded, Cascade) and loaded.thresholds == model.thresholds
    assert loaded.cascade_config.calibration == model.cascade_config.calibration
    video = _video(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video))
    assert loaded.set_budget(per_stage[0])["gmacs"] == pytest.approx(per_stage[0])


# ---------------------------------------------------------------- configs, init
@pytest.mark.parametrize("values,message", [
    ({"stages": [{}]}, "cascade.stages: a cascade needs at least 2"),
    ({"stages": [{"frame": 2}, {}]}, r"cascade.stages\[0\].frame"),
    ({"stages": [{"frames": 2}, {}], "thresholds": [0.5, 0.5]}, "cascade.thresholds"),
    ({"stages": [{"frames": 8}, {}]}, r"cascade.stages\[0\]"),
    ({"stages": [{"size": 30}, {}]}, r"cascade.stages\[0\].*img_size=30"),
    ({"stages": [{}, {}], "relation_reuse": True, "reducer": {"name": "topk", "keep": 0.5}}, "cascade.reducer"),
    ({"stages": [{}, {}], "feature_reus": True}, "cascade.feature_reus"),
    ({"stages": [{}, {}], "feature_variant": "dvt"}, "cascade.feature_variant: expected one of official, shared"),
    ({"stages": [{}, {}], "relation_variant": "all"}, "cascade.relation_variant: expected one of official, all_up"),
])
def test_config_mistakes_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        Cascade(model_config("timesformer_test"), load_cascade_config(values))


def test_train_config_checks_the_cascade_section():
    base = REPO / "configs/train/demo_micro_cascade.yaml"
    with pytest.raises(ConfigError, match="cascade.relation_hiden"):
        from ired_video.engine import load_train_config
        load_train_config(base, ["cascade.relation_hiden=3"])
    with pytest.raises(ConfigError, match="cascade.reducer"):
        load_train_config(base, ["reducer.name=topk", "reducer.keep=0.5"])
    load_train_config(base, ["reducer.name=topk", "reducer.keep=0.5", "cascade.relation_reuse=false"])
    with pytest.raises(ConfigError, match="distill_tokens"):
        load_train_config(base, ["objective.distill_tokens=1.0"])


@pytest.mark.parametrize("path", sorted((REPO / "configs/cascade").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_cascade_configs_build(path):
    name = "timesformer_micro" if "micro" in path.stem else "timesformer_base_patch16_224"
    backbone = model_config(name, depth=1)  # geometry only: one block keeps the base model small
    Cascade(backbone, load_cascade_config(path))


@pytest.mark.parametrize("feature,variants,no_op", [
    (True, ("shared", "all_upstream"), True),  # zero extra fc1 columns and last relation layer
    (False, ("official", "official"), True),   # zero last relation convolution
    (True, ("official", "official"), False),   # norm2 over [x; f]: other statistics than over x
], ids=["shared", "official-relation", "official-feature"])
def test_every_stage_starts_from_one_plain_checkpoint(tmp_path, feature, variants, no_op):
    torch.manual_seed(0)
    plain = create_model("timesformer_test").eval()
    save_checkpoint(tmp_path / "plain.pth", plain)
    cfg = CascadeConfig(stages=STAGES, feature_reuse=feature, relation_reuse=True, feature_variant=variants[0],
                        relation_variant=variants[1])
    cascade = build_cascade(plain.config, cfg, plain.data_config, checkpoint=tmp_path / "plain.pth").eval()
    video = _video(2)
    with torch.no_grad():
        if no_op:
            torch.testing.assert_close(cascade(video), plain(video))  # untrained reuse is a no-op
        else:
            assert not torch.allclose(cascade(video), plain(video))
    first = cascade.stages[0]
    assert first.patch_embed.proj.weight.shape[-1] == 16 and first.patch_grid == (2, 2)
    torch.testing.assert_close(first.blocks[0].mlp.fc1.weight, plain.blocks[0].mlp.fc1.weight)


# ------------------------------------------------------------------ end to end
def test_cascade_trains_calibrates_evaluates_and_infers(small_demo, tmp_path, capsys):
    from ired_video import cli
    from ired_video.engine import load_train_config, train

    root = small_demo.root
    cfg = load_train_config(REPO / "configs/train/demo_micro.yaml", [
        f"data.train={root / 'train.csv'}", f"data.val={root / 'val.csv'}", f"output={tmp_path / 'run'}",
        "model.name=timesformer_test", "data.num_workers=0", "train.batch_size=4", "train.epochs=1",
        "train.log_every=1", "eval.batch_size=4", "data.preprocess.num_frames=4", "data.preprocess.sampling_rate=2",
        "data.preprocess.crop_size=32", "data.preprocess.train_short_side=[32,40]",
        "data.preprocess.test_short_side=32", f"cascade.config={REPO / 'configs/cascade/demo_micro.yaml'}",
        "cascade.feature_hidden=8", "cascade.feature_dim=4", "cascade.relation_hidden=8"])
    report = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert rows and all({"ce_exit1", "ce_exit2"} <= set(r) and "ce" not in r for r in rows)
    assert rows[0]["loss"] == pytest.approx(rows[0]["ce_exit1"] + rows[0]["ce_exit2"], rel=1e-5)
    assert report["exit_shares"] == {"1": 0.0, "2": 1.0}  # uncalibrated: every view runs both stages
    views = [json.loads(line) for line in (tmp_path / "run" / "eval_views.jsonl").read_text().splitlines()]
    assert {v["exit_stage"] for v in views} == {2}

    best = tmp_path / "run" / "best.pth"
    model = create_model(checkpoint=best)
    per_stage = model.stage_gmacs_static()
    budget = per_stage[0] + 0.5 * per_stage[1]
    assert cli.main(["calibrate", "--checkpoint", str(best), "--data", str(root / "val.csv"), "--budget",
                     str(budget), "--workers", "0", "--report", str(tmp_path / "cal.json")]) == 0
    calibrated = json.loads((tmp_path / "cal.json").read_text())["chosen"]
    assert calibrated["gmacs"] <= budget
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(best), "--data", str(root / "val.csv"), "--budget", str(budget),
                     "--workers", "0", "--cpu", "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["gmacs_per_view"] == pytest.approx(calibrated["gmacs"], rel=1e-5)  # same split, same routing
    assert evaluated["top1"] == pytest.approx(calibrated["top1"])
    video = root / (root / "val.csv").read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    assert cli.main(["infer", str(video), "--checkpoint", str(best), "--budget", str(budget), "--no-progress",
                     "--output", str(tmp_path / "infer.json")]) == 0
    view = json.loads((tmp_path / "infer.json").read_text())["videos"][0]["views"][0]
    assert view["exit_stage"] in (1, 2)
    assert cli.main(["eval", "--checkpoint", str(best), "--data", str(root / "val.csv"), "--budget", "1e-9",
                     "--workers", "0"]) == 2
    assert "below the cheapest" in capsys.readouterr().err
