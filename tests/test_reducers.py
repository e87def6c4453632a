"""Token reducers: the properties of design.md section 5, for every reducer and mode."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ired_video import ConfigError, apply_reducer, create_model
from ired_video.commands.common import reducer_from_args
from ired_video.flops import count_flops
from ired_video.models.blocks import DividedSpaceTimeBlock
from ired_video.reducers import bipartite_soft_matching, parse_r
from ired_video.reducers.bat import dpc_knn
from ired_video.reducers.objectives import policy_gradient_loss
from ired_video.tokens import TokenState, keep_slots, merge_slots

ATTENTION_TYPES = ["divided_space_time", "joint_space_time", "space_only"]
# name, kwargs at keep 0.5 / r 4, kwargs that remove nothing
REDUCERS = [
    ("random", {"keep": 0.5}, {"keep": 1.0}),
    ("topk", {"keep": 0.5}, {"keep": 1.0}),
    ("topk", {"keep": 0.5, "fuse": True}, {"keep": 1.0, "fuse": True}),
    ("attention_received", {"keep": 0.5}, {"keep": 1.0}),
    ("interaction", {"keep": 0.5, "score": "indicator"}, {"keep": 1.0, "score": "indicator"}),
    ("bat", {"keep": 0.5}, {"keep": 1.0, "match_ratio": 0.0}),
    ("tome", {"r": 4}, {"r": 0}),
    ("iared2", {"keep": 0.5}, {"keep": 1.0}),
]
IDS = [f"{name}{'-fuse' if kw.get('fuse') else ''}" for name, kw, _ in REDUCERS]


def _model(attention_type: str = "divided_space_time", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("timesformer_test", attention_type=attention_type, depth=4, **kwargs).eval()
    for block in model.blocks:  # a trained-looking model: temporal mixing switched on
        if hasattr(block, "temporal_fc"):
            torch.nn.init.normal_(block.temporal_fc.weight, std=0.1)
    return model


def _video(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _modes(attention_type: str) -> list[str]:
    return ["tube", "frame"] + (["flat"] if attention_type == "joint_space_time" else [])


@pytest.mark.parametrize("name,_,noop", REDUCERS, ids=IDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_removing_nothing_is_bit_identical(attention_type, name, _, noop):
    model = _model(attention_type)
    video = _video()
    with torch.no_grad():
        plain = model(video)
        for mode in _modes(attention_type):
            apply_reducer(model, name, mode=mode, **noop)
            assert torch.equal(model(video), plain), mode


@pytest.mark.parametrize("name,kwargs,_", REDUCERS, ids=IDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_counts_provenance_and_batch_independence(attention_type, name, kwargs, _):
    """Token counts fall where the schedule says, every original patch is held by exactly
    one token or dropped, sizes add up, and clips in a batch do not affect each other."""
    for mode in _modes(attention_type):
        model = apply_reducer(_model(attention_type), name, mode=mode, **kwargs)
        video = _video()
        with torch.no_grad():
            logits, info = model(video, return_info=True)
            state = info.state
            assert torch.isfinite(logits).all()
            assert (info.tokens[:, 0] == 64).all() and (info.tokens[:, -1] < 64).all(), mode
            assert (info.tokens[:, 1:] <= info.tokens[:, :-1]).all()  # hierarchical: never grows
            if kwargs.get("score") == "indicator":  # its own backward pass is billed: it costs more than it saves
                assert (info.gmacs > model.static_gmacs()).all()
            else:
                assert (info.gmacs < model.static_gmacs()).all()
            _check_provenance(state)
            single = torch.cat([model(video[i:i + 1]) for i in range(3)])
            torch.testing.assert_close(logits, single, atol=1e-5, rtol=0)


def _check_provenance(state: TokenState) -> None:
    batch, frames, slots = state.x.shape[:3]
    slot_of = state.slot_of  # (B, F, N')
    assert slot_of.max() < slots
    valid = state.valid_mask()
    # each real slot holds exactly `size` original patches, padding holds none
    held = torch.zeros(batch, frames, slots + 1).scatter_add_(
        2, torch.where(slot_of >= 0, slot_of, slots), torch.ones(slot_of.shape))[..., :slots]
    torch.testing.assert_close(held, torch.where(valid, state.sizes(), torch.zeros_like(held)))
    # the patch a slot sits at is one of the patches it holds
    at_pos = slot_of.gather(2, state.pos % slot_of.shape[-1])  # (B, F, K)
    own = torch.arange(slots).expand_as(at_pos)
    assert torch.equal(at_pos[valid], own[valid])


@pytest.mark.parametrize("name", ["tome", "bat"])
@pytest.mark.parametrize("mode", ["tube", "frame"])
def test_merged_sizes_sum_to_patches_per_frame(name, mode):
    kwargs = {"r": 6} if name == "tome" else {"keep": 0.5}
    model = apply_reducer(_model(), name, mode=mode, **kwargs)
    _, info = model(_video(), return_info=True)
    torch.testing.assert_close(info.state.size.sum(dim=-1), torch.full((3, 4), 16.0))


def test_class_token_is_never_dropped_or_merged():
    model = apply_reducer(_model(), "tome", r=8)
    _, info = model(_video(), return_info=True)
    assert info.state.cls.shape == (3, 1, 32)
    assert info.state.slot_of.shape == (3, 4, 16)  # only patches are tracked: CLS is apart


def test_eval_is_deterministic_random_included():
    model = apply_reducer(_model(), "random", keep=0.5, mode="frame")
    video = _video()
    with torch.no_grad():
        assert torch.equal(model(video), model(video))
        kept = model(video, return_info=True)[1].state.pos
        assert torch.equal(kept[0], kept[1])  # eval keeps one subset for every clip
        apply_reducer(model, "random", keep=0.5, mode="frame", seed=1)
        assert not torch.equal(model(video, return_info=True)[1].state.pos, kept)  # another seed, another subset
    model.train()
    _, a = model(video, return_info=True)
    _, b = model(video, return_info=True)
    assert not torch.equal(a.state.pos, b.state.pos)  # training draws afresh


def test_tube_and_frame_agree_on_a_single_frame():
    """With one frame there is nothing to share across frames: both modes are the same."""
    for name, kwargs, _ in REDUCERS:
        outputs = []
        for mode in ("tube", "frame"):
            model = apply_reducer(_model(num_frames=1), name, mode=mode, **kwargs)
            with torch.no_grad():
                outputs.append(model(_video()[:, :, :1]))
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0, msg=name)


def test_tube_mode_keeps_the_same_locations_in_every_frame():
    model = apply_reducer(_model(), "topk", keep=0.5, mode="tube")
    _, info = model(_video(), return_info=True)
    spatial = info.state.pos % 16
    assert torch.equal(spatial, spatial[:, :1].expand_as(spatial))
    assert info.state.aligned


def test_frame_mode_temporal_attention_is_the_masked_full_attention():
    """Frames keeping different tokens: temporal attention by location equals the
    unreduced temporal attention with the dropped tokens masked out, at the kept tokens."""
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(32, num_heads=2).eval()
    torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    batch, frames, patches = 2, 5, 16
    x = torch.randn(batch, frames, patches, 32)
    full = TokenState.from_patches(torch.randn(batch, 1, 32), x, grid=(4, 4))
    scores = torch.rand(batch, frames, patches, generator=torch.Generator().manual_seed(3))
    kept = scores.topk(6, dim=-1).indices.sort(dim=-1).values  # (B, F, 6), different per frame
    reduced = keep_slots(full, kept, aligned=False)
    assert not reduced.aligned
    by_location, _ = block.temporal_residual(reduced)

    mask = torch.zeros(batch, frames, patches, dtype=torch.bool).scatter_(2, kept, True)
    masked_full, _ = block.temporal_residual(replace(full, valid=mask))
    expected = masked_full.gather(2, kept[..., None].expand(-1, -1, -1, 32))
    torch.testing.assert_close(by_location, expected, atol=1e-5, rtol=0)
    # and it is not the slot-order ("rank tube") attention some published patches use
    slot_order, _ = block._temporal_by_slot(replace(reduced, aligned=True))
    assert not torch.allclose(slot_order, expected, atol=1e-3)


def _merged_per_frame(seed: int, aligned: bool = False, drop: bool = True) -> TokenState:
    """A (2, 5, 16 -> 9, 32) state whose frames merged (and dropped) different patches."""
    g = torch.Generator().manual_seed(seed)
    batch, frames, patches, slots = 2, 5, 16, 9
    full = TokenState.from_patches(torch.randn(batch, 1, 32, generator=g),
                                   torch.randn(batch, frames, patches, 32, generator=g), grid=(4, 4))
    assign = torch.empty(batch, frames, patches, dtype=torch.long)
    representative = torch.empty(batch, frames, slots, dtype=torch.long)
    for b in range(batch):
        for f in range(frames):
            if aligned and f > 0:
                assign[b, f], representative[b, f] = assign[b, 0], representative[b, 0]
                continue
            reps = torch.randperm(patches, generator=g)[:slots].sort().values
            assign[b, f] = torch.randint(-1 if drop else 0, slots, (patches,), generator=g)
            assign[b, f, reps] = torch.arange(slots)
            representative[b, f] = reps
    state = merge_slots(full, assign, representative, aligned=aligned)
    state.prop_attn = True
    return state


def _temporal_by_brute_force(block: DividedSpaceTimeBlock, state: TokenState) -> torch.Tensor:
    """The definition, with loops: each token attends, from every patch it holds, over the
    frames where that patch's location is held (keys and values: the tokens holding it);
    its output is the mean over its patches, then the projections."""
    attn, dim = block.temporal_attn, state.x.shape[-1]
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    qkv = attn.qkv(block.temporal_norm1(state.x))  # (B, F, K, 3D)
    q, k, v = (qkv[..., i * dim:(i + 1) * dim].reshape(*qkv.shape[:3], heads, head_dim) for i in range(3))
    batch, frames, slots = state.x.shape[:3]
    out = torch.zeros(batch, frames, slots, dim)
    slot_of = state.slot_of
    for b in range(batch):
        for f in range(frames):
            for s in range(slots):
                outputs = []
                for n in torch.nonzero(slot_of[b, f] == s).flatten().tolist():
                    partners = [(t, int(slot_of[b, t, n])) for t in range(frames) if slot_of[b, t, n] >= 0]
                    logits = torch.stack([(q[b, f, s] * k[b, t, j]).sum(-1) * attn.scale for t, j in partners])
                    weights = logits.softmax(dim=0)  # (partners, heads)
                    values = torch.stack([v[b, t, j] for t, j in partners])  # (partners, heads, head_dim)
                    outputs.append((weights[..., None] * values).sum(dim=0).reshape(dim))
                if outputs:
                    out[b, f, s] = attn.proj(torch.stack(outputs).mean(dim=0))
    return block.temporal_fc(out)


@pytest.mark.parametrize("seed", range(3))
def test_frame_mode_merged_temporal_attention_is_its_brute_force_definition(seed):
    torch.manual_seed(seed)
    block = DividedSpaceTimeBlock(32, num_heads=2).eval()
    torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    state = _merged_per_frame(seed)
    assert not state.aligned and (state.sizes() > 1).any() and (state.slot_of < 0).any()
    with torch.no_grad():
        ours, _ = block.temporal_residual(state)
        torch.testing.assert_close(ours, _temporal_by_brute_force(block, state), atol=1e-5, rtol=0)
        # the representative-only rule (a merged token attends through its own position only) differs
        representative_only = replace(state, slot_of=_own_position_only(state))
        assert not torch.allclose(block.temporal_residual(representative_only)[0], ours, atol=1e-3)


def _own_position_only(state: TokenState) -> torch.Tensor:
    """slot_of where every token holds only the patch at its position."""
    slot_of = torch.full_like(state.slot_of, -1)
    slots = torch.arange(state.x.shape[2]).expand_as(state.pos)
    return slot_of.scatter_(2, state.pos % state.num_patches, slots)


def test_tube_mode_merges_attend_by_location_as_by_slot():
    """Same merges in every frame: the by-location definition is attention by slot."""
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(32, num_heads=2).eval()
    torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    state = _merged_per_frame(0, aligned=True, drop=False)
    assert state.aligned and (state.sizes() > 1).any()
    with torch.no_grad():
        torch.testing.assert_close(block._temporal_by_location(state)[0], block._temporal_by_slot(state)[0],
                                   atol=1e-5, rtol=0)


def test_adaptive_threshold_pads_and_bills_each_clip():
    model = apply_reducer(_model(), "iared2", threshold=0.5)
    for reducer in model.reducers.values():  # spread the keep probabilities around 0.5
        torch.nn.init.normal_(reducer.interpreter.key.weight, std=1.0)
    video = _video(batch=4, seed=5)
    with torch.no_grad():
        logits, info = model(video, return_info=True)
        assert len(set(info.tokens[:, -1].tolist())) > 1, "clips should keep different counts"
        for i in range(4):
            single, single_info = model(video[i:i + 1], return_info=True)
            torch.testing.assert_close(logits[i:i + 1], single, atol=1e-5, rtol=0)
            assert torch.equal(info.tokens[i], single_info.tokens[0])
            torch.testing.assert_close(info.gmacs[i], single_info.gmacs[0])


@pytest.mark.parametrize("name,kwargs", [("random", {"keep": 0.5}), ("tome", {"r": 5}),
                                         ("iared2", {"keep": 0.7}), ("topk", {"keep": 0.6})])
@pytest.mark.parametrize("mode", ["tube", "frame"])
def test_reduced_gmacs_match_flop_counter(name, kwargs, mode):
    model = apply_reducer(_model(embed_dim=64, num_heads=4), name, mode=mode, **kwargs)
    video = _video(batch=1)
    _, info = model(video, return_info=True)
    measured = count_flops(model, video) / 2e9
    assert abs(info.gmacs.item() - measured) / measured < 0.01


def test_gradients_reach_the_interpreter_through_the_policy_loss():
    model = apply_reducer(_model(), "iared2", keep=0.5).train()
    logits, info = model(_video(), return_info=True)
    loss, parts = policy_gradient_loss(logits, torch.tensor([0, 1, 2]), info.records)
    loss.backward()
    for reducer in model.reducers.values():
        assert reducer.interpreter.key.weight.grad is not None
        assert reducer.interpreter.key.weight.grad.abs().sum() > 0
    assert set(parts) == {"reward", "policy_loss"}


def test_gradients_reach_the_backbone_through_a_drop():
    model = apply_reducer(_model(), "topk", keep=0.5, fuse=True).train()
    model(_video()).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_tome_caps_r_at_half_and_parses_schedules():
    assign, representative = bipartite_soft_matching(torch.randn(2, 6, 3), r=10)
    assert representative.shape == (2, 3)
    assert parse_r(4, 3) == [3, 3, 3, 3]
    assert parse_r(4, [5, 2]) == [5, 2, 0, 0]
    assert parse_r(3, (4, -1.0)) == [8, 4, 0]  # decreasing schedule: mean 4


def _space_only_block_by_loops(block, cls_tokens: torch.Tensor, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A space-only block on (B, F, 1, D) class tokens and (B, F, K, D) tokens of (B, F, K)
    sizes, written out: each query's logit to key j is q . k_j / sqrt(d) + log(size_j)
    (the class token has size 1), softmax over the keys, then the MLP."""
    attn, dim = block.attn, x.shape[-1]
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    out = torch.empty(*x.shape[:2], 1 + x.shape[2], dim)
    for b in range(x.shape[0]):
        for f in range(x.shape[1]):
            tokens = torch.cat([cls_tokens[b, f], x[b, f]])  # (1 + K, D)
            sizes = torch.cat([torch.ones(1), size[b, f]])
            q, k, v = attn.qkv(block.norm1(tokens)).reshape(len(tokens), 3, heads, head_dim).unbind(1)
            mixed = torch.empty(len(tokens), heads, head_dim)
            for i in range(len(tokens)):
                for h in range(heads):
                    logits = torch.stack([q[i, h] @ k[j, h] * attn.scale + sizes[j].log() for j in range(len(tokens))])
                    mixed[i, h] = (logits.softmax(dim=0)[:, None] * v[:, h]).sum(dim=0)
            tokens = tokens + attn.proj(mixed.reshape(len(tokens), dim))
            out[b, f] = tokens + block.mlp(block.norm2(tokens))
    return out


@pytest.mark.parametrize("mode", ["tube", "frame"])
def test_bat_merged_tokens_get_proportional_attention(mode):
    """The block after BAT, on the merged tokens and their sizes, equals the loop-written
    attention with log(size) on the logits; switched off, outputs change."""
    model = apply_reducer(_model("space_only"), "bat", keep=0.5, stages=[1], mode=mode)
    assert model.reducers["1"].prop_attn  # on by default
    seen = {}
    model.blocks[2].register_forward_pre_hook(lambda _, args: seen.update(state=replace(args[0])))
    model.blocks[2].register_forward_hook(lambda _, args, out: seen.update(out=out))
    with torch.no_grad():
        logits = model(_video())
        state, out = seen["state"], seen["out"]
        assert state.prop_attn and (state.size > 1).any()
        expected = _space_only_block_by_loops(model.blocks[2], state.cls[:, :, None], state.x, state.size)
        torch.testing.assert_close(out.cls, expected[:, :, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.x, expected[:, :, 1:], atol=1e-5, rtol=0)
        apply_reducer(model, "bat", keep=0.5, stages=[1], mode=mode, prop_attn=False)
        assert not torch.allclose(model(_video()), logits, atol=1e-4)


def test_dpc_knn_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(5, 2, generator=g) for c in centres])[None]  # (1, 15, 2)
    assign, picked = dpc_knn(points, num_clusters=3, k=3)
    groups = assign[0].reshape(3, 5)
    assert all(len(set(row.tolist())) == 1 for row in groups)  # each blob is one cluster
    assert len(set(groups[:, 0].tolist())) == 3  # and the blobs differ


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "tomato"}, "unknown reducer 'tomato'"),
    ({"name": "topk"}, "needs keep="),
    ({"name": "topk", "keep": 1.5}, r"keep=1.5: expected a fraction"),
    ({"name": "random", "keep": 0.5, "stages": [9]}, r"stages \[9\] are outside"),
    ({"name": "topk", "keep": 0.5, "stages": []}, r"stages=\[\] reduces nowhere"),
    ({"name": "random", "keep": 0.5, "mode": "flat"}, "only joint_space_time"),
    ({"name": "random", "keep": 0.5, "mode": "diagonal"}, "mode 'diagonal'"),
    ({"name": "tome", "r": 2, "stages": [1]}, "every block with r > 0"),
    ({"name": "random", "keep": "half"}, "keep"),
    ({"name": "iared2", "keep": 0.5, "interpreter_init": "zeros"}, "interpreter_init='zeros'"),
    ({"name": "iared2", "keep": 0.5, "interpreter_heads": 1}, "needs the block's 2 heads"),
    ({"name": "topk", "keep": 0.0}, r"keep=0.0: expected a fraction in \(0, 1\]"),
    ({"name": "bat", "keep": -0.5}, r"keep=-0.5: expected a fraction"),
    ({"name": "iared2", "threshold": 1.0}, r"threshold=1.0: expected a fraction in \(0, 1\)"),
    ({"name": "tome", "r": -1}, r"r=-1: expected tokens merged per block >= 0"),
    ({"name": "tome", "r": [2, -1]}, r"r=\[2, -1\]: expected tokens merged per block >= 0"),
    ({"name": "tome", "r": 2, "r_inflection": 2.0}, r"r_inflection=2.0: expected a number in \[-1, 1\]"),
    ({"name": "tome", "r": 17}, "more tokens in one block than the 16 patch tokens per frame"),
    ({"name": "tome", "r": 10, "r_inflection": -1.0}, r"schedule \[20, 13, 6, 0\] asks to merge more tokens"),
    ({"name": "interaction", "keep": 0.5, "score": "oracle"}, "score='oracle': expected"),
])
def test_bad_reducer_configs_are_explained(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        apply_reducer(_model(), **kwargs)


@pytest.mark.parametrize("text,message", [("name: tome\nr: -2\n", "r=-2: expected tokens merged per block >= 0"),
                                          ("name: topk\nkeep: 0\n", r"keep=0.0: expected a fraction in \(0, 1\]")])
def test_bad_reducer_yaml_is_refused_when_read(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: reducer.{message}"):
        reducer_from_args([str(path)])


CONFIGS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "reducers").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_reducer_config_builds_on_the_base_model(path):
    cfg = reducer_from_args([str(path)])
    model = apply_reducer(create_model("timesformer_base_patch16_224", depth=12), cfg)
    assert len(model.reducers) > 0 and model.reducer_config.name == cfg.name


def test_checkpoint_restores_reducer_and_interpreter_weights(tmp_path):
    from ired_video import save_checkpoint
    model = apply_reducer(_model(), "iared2", keep=0.5, stages=[1, 2])
    for reducer in model.reducers.values():
        torch.nn.init.normal_(reducer.interpreter.key.weight)
    save_checkpoint(tmp_path / "iared2.pth", model)
    restored = create_model(checkpoint=tmp_path / "iared2.pth").eval()
    assert restored.reducer_config == model.reducer_config
    video = _video()
    with torch.no_grad():
        assert torch.equal(restored(video), model(video))


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_interpreters_start_as_the_class_attention_of_their_block(attention_type):
    """Interpreter logits per head equal q_cls . k_j / sqrt(d) of the guarded block's own
    (spatial) attention on the same tokens: its LayerNorm affine folded in exactly."""
    model = _model(attention_type)
    for block in model.blocks:  # a trained-looking LayerNorm: affine parameters away from 1 / 0
        torch.nn.init.normal_(block.norm1.weight, mean=1.0, std=0.3)
        torch.nn.init.normal_(block.norm1.bias, std=0.3)
    apply_reducer(model, "iared2", keep=0.5, stages=[2])
    interpreter, block = model.reducers["2"].interpreter, model.blocks[2]
    cls_token, patches = torch.randn(3, 1, 32), torch.randn(3, 4, 16, 32)
    heads, dim = block.attn.num_heads, 32
    q = block.attn.qkv(block.norm1(cls_token))[..., :dim].reshape(3, 1, 1, heads, dim // heads)
    k = block.attn.qkv(block.norm1(patches))[..., dim:2 * dim].reshape(3, 4, 16, heads, dim // heads)
    expected = ((q * k).sum(-1) * block.attn.scale).sigmoid().mean(-1)  # (B, F, K)
    torch.testing.assert_close(interpreter(cls_token, patches), expected)

    fresh = apply_reducer(_model(attention_type), "iared2", keep=0.5, stages=[2], interpreter_init="random")
    assert not torch.allclose(fresh.reducers["2"].interpreter(cls_token, patches), expected)


@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_training_samples_as_many_tokens_as_evaluation_keeps(keep):
    """Ratio IA-RED² in training: Bernoulli keep decisions around the evaluation share,
    whatever the interpreter's raw probabilities (about 0.5 here)."""
    model = apply_reducer(_model(), "iared2", keep=keep, stages=[1]).train()
    torch.manual_seed(0)
    _, info = model(_video(batch=32), return_info=True)
    record = next(r for r in info.records if r.policy is not None)
    assert float(record.policy.kept_fraction.mean()) == pytest.approx(keep, abs=0.05)
    assert float(record.policy.expected_keep.detach().mean()) == pytest.approx(keep, abs=0.01)
