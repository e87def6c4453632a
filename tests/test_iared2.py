"""IA-RED²'s regimes, reward and group-wise curriculum (issue 15)."""
from __future__ import annotations

import json

import pytest
import torch

from ired_video import ConfigError, apply_reducer, create_model
from ired_video.engine import load_train_config, train
from ired_video.engine.config import ObjectiveSection
from ired_video.engine.curriculum import drop_frozen_grads, interpreters, phase_objective, phase_of_epoch, set_phase
from ired_video.engine.losses import objective, soft_targets
from ired_video.reducers import reducer_config
from ired_video.reducers.objectives import kept_share, policy_gradient_loss
from tests.training import config


def _model(stages: list[int], **kwargs) -> torch.nn.Module:
    """A 4-block test model with IA-RED² at ``stages``, keep probabilities spread around 0.5."""
    torch.manual_seed(0)
    model = create_model("timesformer_test", depth=4).eval()
    apply_reducer(model, "iared2", stages=stages, **kwargs)
    for reducer in model.reducers.values():
        torch.nn.init.normal_(reducer.interpreter.key.weight, std=1.0)
    return model


def _video(batch: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _kept(record: dict) -> torch.Tensor:
    """(B, K) bool: which of the stage's input slots survive it (frame 0; tube mode: all frames alike)."""
    return record.slot_of[:, 0] >= 0


def test_adaptive_inference_keeps_exactly_the_tokens_above_one_half_per_clip():
    model = _model([1, 2])
    assert all(r.regime == "adaptive" for r in model.reducers.values())
    video = _video(4)
    with torch.no_grad():
        logits, info = model(video, return_info=True)
        first = info.records[0]  # stage 1: its input slots are the original patches
        probs = first.keep_prob[:, 0]  # (B, K): per location (tube)
        assert torch.equal(_kept(first), probs > 0.5)
        assert (first.slot_of >= 0).all(dim=1).eq((first.slot_of >= 0).any(dim=1)).all()  # a tube per location
        counts = (probs > 0.5).sum(dim=-1)
        assert len(set(counts.tolist())) > 1 and counts.min() > 0 and counts.max() < probs.shape[1]
        for i in range(4):  # a clip alone decides, computes and is billed as in the batch
            single, single_info = model(video[i:i + 1], return_info=True)
            torch.testing.assert_close(logits[i:i + 1], single, atol=1e-5, rtol=0)
            for batched, alone in zip(info.records, single_info.records):  # the same patches survive each stage
                assert torch.equal(batched.slot_of[i] >= 0, alone.slot_of[0] >= 0)
            torch.testing.assert_close(info.gmacs[i], single_info.gmacs[0])


def test_regime_is_named_and_checked():
    assert reducer_config("iared2", keep=0.7).iared2_regime == "fixed_ratio"  # configs written before regime
    assert reducer_config("iared2").iared2_regime == "adaptive"
    assert _model([1], regime="fixed_ratio", keep=0.5).reducers["1"].regime == "fixed_ratio"
    with pytest.raises(ConfigError, match="regime='adaptive' lets the interpreter choose.*drop keep=0.7"):
        reducer_config("iared2", regime="adaptive", keep=0.7)
    with pytest.raises(ConfigError, match="regime='fixed_ratio' needs keep"):
        reducer_config("iared2", regime="fixed_ratio")
    with pytest.raises(ConfigError, match="regime='ratio': expected one of"):
        reducer_config("iared2", regime="ratio", keep=0.7)
    with pytest.raises(ConfigError, match="applies to reducer 'iared2' only"):
        reducer_config("topk", regime="fixed_ratio", keep=0.7)


def _expected_keep(model: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    _, info = model(video, return_info=True)
    return kept_share(info.records, expected=True).mean()


@pytest.mark.parametrize("regime,moves", [("adaptive", True), ("fixed_ratio", False)])
def test_the_efficiency_term_has_a_gradient_only_when_the_count_is_free(regime, moves):
    """The keep-ratio objective's gradient, and the efficiency reward's pull on the expected
    share kept: non-zero in the adaptive regime; nil under the fixed ratio (the rescaling
    holds the share at keep), which is why that regime cannot learn a count."""
    model = _model([1, 2], **({"keep": 0.5} if regime == "fixed_ratio" else {})).train()
    params = [p for r in model.reducers.values() for p in r.parameters()]
    video = _video(8, seed=2)
    torch.manual_seed(0)
    grads = torch.autograd.grad((_expected_keep(model, video) - 0.1) ** 2, params)
    size = sum(g.abs().sum() for g in grads)
    assert (size > 1e-3) if moves else (size < 1e-6)
    if not moves:
        return
    with torch.no_grad():
        before = float(_expected_keep(model, video))
    optimizer = torch.optim.SGD(params, lr=0.5)
    for step in range(3):  # every prediction counts as correct: only the efficiency term speaks
        torch.manual_seed(step)
        logits, info = model(video, return_info=True)
        loss, _ = policy_gradient_loss(logits, logits.argmax(dim=-1), info.records, accuracy=1.0, efficiency=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    with torch.no_grad():
        assert float(_expected_keep(model, video)) < before - 0.02


def test_the_policy_terms_train_the_interpreters_alone():
    """REINFORCE and the keep-ratio term reach every interpreter and no backbone weight (the
    paper's curriculum freezes the backbone while interpreters learn); cross-entropy reaches both."""
    model = _model([1, 2]).train()
    video, labels = _video(8, seed=3), torch.arange(8) % 3
    torch.manual_seed(0)
    logits, info = model(video, return_info=True)
    policy, _ = policy_gradient_loss(logits, labels, info.records)
    keep_ratio = (kept_share(info.records, expected=True).mean() - 0.3) ** 2
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels)
    interpreter = [p for r in model.reducers.values() for p in r.parameters()]
    backbone = [p for name, p in model.named_parameters() if not name.startswith("reducers.")]
    for term in (policy, keep_ratio):
        grads = torch.autograd.grad(term, interpreter + backbone, retain_graph=True, allow_unused=True)
        sizes = [0.0 if g is None else float(g.abs().sum()) for g in grads]
        assert all(size > 0 for size in sizes[:len(interpreter)])
        assert not any(sizes[len(interpreter):])
    grads = torch.autograd.grad(cross_entropy, backbone, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_curriculum_moves_one_interpreter_at_a_time_then_only_the_backbone():
    model = _model([1, 2, 3]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)  # decay would move any stepped param
    cfg = ObjectiveSection(ce=1.0, policy=1.0)
    video, labels = _video(4), torch.tensor([0, 1, 2, 3])
    stages = interpreters(model)
    for phase in range(len(stages) + 1):
        set_phase(model, phase)
        before = _snapshot(model)
        logits, info = model(video, return_info=True)
        sampled = [r.block for r in info.records if r.policy is not None]
        decided = [r.block for r in info.records if r.policy is None]
        assert sampled == ([stages[phase].block] if phase < len(stages) else [])
        assert decided == [s.block for s in stages[:phase]]  # earlier: fixed; later: off, no record
        targets = soft_targets(labels, logits.shape[-1], 0.0)
        loss, _ = objective(phase_objective(cfg, phase, len(stages)), logits, targets, labels, info.records)
        optimizer.zero_grad()
        loss.backward()
        drop_frozen_grads(model)
        optimizer.step()
        moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        if phase < len(stages):
            assert moved and all(name.startswith(f"reducers.{stages[phase].block}.") for name in moved), phase
        else:
            assert "blocks.0.attn.qkv.weight" in moved and not any(name.startswith("reducers.") for name in moved)


def test_interpreter_before_block_zero_drops_from_the_first_block():
    model = _model([0, 2])
    with torch.no_grad():
        _, info = model(_video(2), return_info=True)
    assert (info.tokens[:, 0] < 4 * 16).all()  # 4 frames x 16 patches
    model.train()
    logits, info = model(_video(2), return_info=True)
    loss, _ = policy_gradient_loss(logits, torch.tensor([0, 1]), info.records)
    loss.backward()
    assert model.reducers["0"].interpreter.key.weight.grad.abs().sum() > 0


def test_phase_of_epoch_and_curriculum_config_errors(tmp_path):
    assert [phase_of_epoch([2, 1, 0], e) for e in range(4)] == [0, 0, 1, 2]  # past the end: the last phase
    base = ["model.name=timesformer_test", "reducer.name=iared2", "reducer.stages=[1,2]", "objective.policy=1.0",
            "objective.curriculum=groupwise"]
    assert load_train_config(None, [*base, "train.epochs=3", "objective.curriculum_epochs=[1,1,1]"])
    for extra, message in [
        (["train.epochs=3", "objective.curriculum_epochs=[1,2]"], r"expected 3 entries.*stages \[1, 2\]"),
        (["train.epochs=4", "objective.curriculum_epochs=[1,1,1]"], "sum to 3 but train.epochs=4"),
        (["train.epochs=3", "objective.curriculum_epochs=[0,2,1]"], "epochs >= 1 per interpreter group"),
        (["train.epochs=3", "objective.curriculum_epochs=[1,1,1]", "objective.freeze_backbone=true"],
         "false with curriculum=groupwise"),
        (["train.epochs=3", "objective.curriculum_epochs=[1,1,1]", "objective.ce=0.0"], "set objective.ce"),
        (["train.epochs=3", "objective.curriculum=none", "objective.curriculum_epochs=[1,1,1]"],
         "needs curriculum=groupwise"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_train_config(None, [*base, *extra])


def test_groupwise_training_run_trains_each_interpreter_and_leaves_the_backbone(demo_data, tmp_path):
    """Two interpreter phases, no fine-tuning: both interpreters move, the backbone does not."""
    init = tmp_path / "plain"
    train(config(demo_data, init, "train.epochs=1"))
    train(config(demo_data, tmp_path / "run", "reducer.name=iared2", "reducer.stages=[0,1]", "train.mixup=0.0",
                 f"init.checkpoint={init / 'last.pth'}", "init.drop_head=false", "objective.policy=1.0",
                 "objective.curriculum=groupwise", "objective.curriculum_epochs=[1,1,0]", "optim.weight_decay=0.1"))
    before = torch.load(init / "last.pth", weights_only=True)["model_state"]
    after = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model_state"]
    assert all(torch.equal(after[key], value) for key, value in before.items())
    started = apply_reducer(create_model(checkpoint=init / "last.pth"), "iared2", stages=[0, 1]).state_dict()
    for block in (0, 1):
        assert not torch.equal(after[f"reducers.{block}.interpreter.key.weight"],
                               started[f"reducers.{block}.interpreter.key.weight"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("policy" in row and "reward" in row for row in rows)
