"""Explanations: the interaction indicator against brute force, rollout, localisation
metrics by hand, and deletion faithfulness on a model trained in-test."""
from __future__ import annotations

import pytest
import torch

from ired_video.build import create_model
from ired_video.explain.capture import Site
from ired_video.explain.faithfulness import curves, forward_kept, ranks
from ired_video.explain.interaction import EdgeEffects, exact_edge_effects, first_order_edge_effects, patch_interactions
from ired_video.explain.localisation import mask_iou, object_share_kept, patch_coverage, pointing_game
from ired_video.explain.methods import METHODS, AttentionCall, MissingInterpreter, explain, rollout_from_calls
from ired_video.explain.table import demo_items
from ired_video.reducers import apply_reducer


def tiny_model(**overrides) -> torch.nn.Module:
    """2 frames of 16 px (2 x 2 patches), 2 blocks, float64, non-zero temporal_fc."""
    torch.manual_seed(0)
    model = create_model("timesformer_test", img_size=16, num_frames=2, **overrides).double().eval()
    for block in model.blocks:
        if hasattr(block, "temporal_fc"):
            torch.nn.init.normal_(block.temporal_fc.weight, std=0.3)
    return model


def score_with_edge_bias(model, video, site: Site, group: int, query: int, key: int, value: float,
                         target: int) -> float:
    """The target logit with ``value`` added to one attention logit of one site: written
    independently of ired_video.explain (a hook on the module's bias argument)."""
    module = model.blocks[site.block].temporal_attn if site.kind == "temporal" else model.blocks[site.block].attn

    def hook(mod, args, kwargs):
        x = args[0]
        bias = args[1] if len(args) > 1 else kwargs.get("bias")
        extra = torch.zeros(x.shape[0], 1, x.shape[1], x.shape[1], dtype=x.dtype)
        extra[group, 0, query, key] = value
        return (x, extra if bias is None else bias + extra), {}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    model.set_fused_attention(False)
    try:
        with torch.no_grad():
            return float(model(video)[0, target])
    finally:
        handle.remove()
        model.set_fused_attention(True)


@pytest.mark.parametrize("site", [Site(1, "spatial"), Site(0, "temporal"), Site(1, "temporal")])
def test_exact_edge_effects_match_brute_force(site):
    model = tiny_model()
    video = torch.randn(1, 3, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = 2
    exact = exact_edge_effects(model, video, site, torch.tensor([target]), chunk=7).values[0]
    with torch.no_grad():
        full = float(model(video)[0, target])
    first = {e.site: e.values[0] for e in first_order_edge_effects(model, video, torch.tensor([target]))}[site]
    groups, length = exact.shape[0], exact.shape[-1]  # temporal (N, T, T); spatial (T, 1+N, 1+N)
    eps = 1e-4
    for g in range(groups):
        for i in range(length):
            for j in range(length):
                removed = score_with_edge_bias(model, video, site, g, i, j, float("-inf"), target)
                assert exact[g, i, j] == pytest.approx(full - removed, abs=1e-10)
                up = score_with_edge_bias(model, video, site, g, i, j, eps, target)
                down = score_with_edge_bias(model, video, site, g, i, j, -eps, target)
                assert first[g, i, j] == pytest.approx((up - down) / (2 * eps), abs=1e-7)
    assert exact.abs().sum() > 0  # the edges do matter: the test can fail


def test_first_order_tracks_exact_effects():
    model = tiny_model()
    video = torch.randn(1, 3, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    site = Site(1, "spatial")
    exact = exact_edge_effects(model, video, site).values.flatten()
    first = {e.site: e.values for e in first_order_edge_effects(model, video)}[site].flatten()
    assert torch.corrcoef(torch.stack([exact, first]))[0, 1] > 0.9


def test_patch_interactions_sum_edges_by_hand():
    spatial = torch.zeros(1, 1, 3, 3)  # (B, T=1, 1+N, 1+N), N = 2
    spatial[0, 0, 0, 1] = 2.0  # CLS reads patch 0
    spatial[0, 0, 2, 1] = -1.0  # patch 1 reads patch 0
    spatial[0, 0, 1, 1] = 5.0  # self-edge: not an interaction
    temporal = torch.zeros(1, 2, 1, 1)  # (B, N=2, T=1, T=1): one frame, only self-edges
    effects = [EdgeEffects(Site(0, "temporal"), temporal, (1, 1, 2)),
               EdgeEffects(Site(0, "spatial"), spatial, (1, 1, 2))]
    key = patch_interactions(effects, depth=1, role="key")
    assert key.spatial[0, 0, 0].tolist() == [3.0, 0.0]
    query = patch_interactions(effects, depth=1, role="query")
    assert query.spatial[0, 0, 0].tolist() == [0.0, 1.0]
    signed = patch_interactions(effects, depth=1, role="both", absolute=False)
    assert signed.total()[0, 0].tolist() == [1.0, -1.0]


def test_patch_interactions_temporal_split():
    temporal = torch.zeros(1, 1, 2, 2)  # (B, N=1, T=2, T=2)
    temporal[0, 0, 1, 0] = 4.0  # frame 1 reads frame 0 at location 0
    effects = [EdgeEffects(Site(0, "temporal"), temporal, (1, 2, 1))]
    key = patch_interactions(effects, depth=1, role="key")
    assert key.temporal[0, 0, :, 0].tolist() == [4.0, 0.0]
    assert key.spatial.abs().sum() == 0


def test_rollout_by_hand():
    batch, frames, num_patches = 1, 2, 3
    temporal = torch.eye(frames).expand(batch * num_patches, 1, frames, frames)  # identity
    spatial = torch.full((batch * frames, 1, 1 + num_patches, 1 + num_patches), 1.0 / (1 + num_patches))
    calls = [AttentionCall(Site(0, "temporal"), temporal), AttentionCall(Site(0, "spatial"), spatial)]
    heat = rollout_from_calls(calls, batch, frames, num_patches)
    # CLS row of (S + I)/2: 1/2 e_cls + 1/2 mean_t (uniform over 1+N of frame t) -> each patch 1/(2 T (1+N))
    assert torch.allclose(heat, torch.full((1, frames, num_patches), 1 / (2 * frames * (1 + num_patches))))


def test_methods_shapes_and_interpreter_missing():
    model = create_model("timesformer_test").eval()
    video = torch.randn(2, 3, 4, 32, 32)
    for name in METHODS:
        if name == "interpreter":
            with pytest.raises(MissingInterpreter, match="iared2"):
                explain(model, video, name)
            continue
        assert explain(model, video, name).shape == (2, 4, 16)
    from ired_video.reducers import apply_reducer
    apply_reducer(model, "iared2", keep=0.5)
    probs = explain(model, video, "interpreter")
    assert probs.shape == (2, 4, 16) and bool(((probs > 0) & (probs < 1)).all())


def test_localisation_by_hand():
    coverage = torch.tensor([[[0.0, 1.0], [0.3, 0.0]],
                             [[0.0, 0.0], [0.0, 0.0]]])  # (T=2, 2, 2): frame 1 has no object
    importance = torch.tensor([[[0.1, 0.2], [0.9, 0.0]],
                               [[0.5, 0.0], [0.0, 0.0]]])
    assert pointing_game(importance, coverage) == 1.0  # frame 0's best patch has 0.3 object
    assert pointing_game(importance.flip(-1), coverage) == 0.0
    # O = {(0,0,1)} (cover >= 0.5); top-1 = (0,1,0): IoU 0
    assert mask_iou(importance, coverage) == 0.0
    assert mask_iou(importance, coverage, min_cover=0.25) == pytest.approx(1 / 3)  # top-2 {(0,1,0),(1,0,0)}
    keep = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    assert object_share_kept(keep, coverage) == (1.0, 0.25)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :1] = True
    assert patch_coverage(mask, 2)[0].tolist() == [[0.5, 0.0], [0.0, 0.0]]


def test_ranks_and_kept_forward():
    assert ranks(torch.tensor([[[0.1, 0.7, 0.3]]])).tolist() == [[[2, 0, 1]]]
    model = create_model("timesformer_test").eval()
    video = torch.randn(1, 3, 4, 32, 32)
    everything = torch.ones(1, 4, 16, dtype=torch.bool)
    assert torch.allclose(forward_kept(model, video, everything), model(video), atol=1e-5)
    # Removal is real: what a removed patch holds cannot change the output.
    keep = everything.clone()
    keep[0, :, 5] = False
    other = video.clone()
    other[..., 8:16, 8:16] = torch.randn(3, 4, 8, 8)  # patch (1, 1) = 5 of every frame
    assert torch.allclose(forward_kept(model, video, keep), forward_kept(model, other, keep), atol=1e-5)


def test_curves_batched_views_equal_one_forward_per_view():
    model = create_model("timesformer_test").eval()
    video = torch.randn(2, 3, 4, 32, 32)
    importance = torch.rand(2, 4, 16)
    target = torch.tensor([1, 3])
    batched = curves(model, video, importance, target, steps=4, chunk=7)
    for index, fraction in enumerate(batched.fractions.tolist()):
        top = ranks(importance) < round(fraction * 64)
        for keep, scores in ((~top, batched.deletion), (top, batched.insertion)):
            probs = forward_kept(model, video, keep).softmax(dim=-1)
            assert torch.allclose(scores[:, index], probs[torch.arange(2), target], atol=1e-5)
    assert batched.deletion[:, 0].tolist() == pytest.approx(batched.insertion[:, -1].tolist(), abs=1e-6)


def _localised_batch(count: int, generator: torch.Generator, frames: int = 2, size: int = 32, patch: int = 8):
    """Dim grey noise with one saturated patch whose colour (R, G or B) is the class."""
    grid = size // patch
    video = 0.3 * torch.rand(count, 1, frames, size, size, generator=generator)
    video = video.expand(count, 3, frames, size, size).clone()
    labels = torch.randint(0, 3, (count,), generator=generator)
    where = torch.randint(0, grid * grid, (count,), generator=generator)
    for b in range(count):
        r, c = divmod(int(where[b]), grid)
        video[b, :, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 0.0
        video[b, labels[b], :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 1.0
    return video, labels


def test_deletion_of_important_patches_beats_random_on_a_trained_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster than two contended ones
    try:
        torch.manual_seed(0)
        model = create_model("timesformer_test", num_frames=2, num_classes=3)
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(300):  # ~6 s on one core
            video, labels = _localised_batch(32, generator)
            loss = torch.nn.functional.cross_entropy(model(video), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        video, labels = _localised_batch(16, torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert (model(video).argmax(-1) == labels).float().mean() >= 0.9  # it learned the task
        auc = {name: float(curves(model, video, explain(model, video, name), labels, steps=8).deletion_auc().mean())
               for name in ("attention", "interaction", "random")}
    finally:
        torch.set_num_threads(threads)
    assert auc["attention"] < auc["random"] - 0.1, auc
    assert auc["interaction"] < auc["random"] - 0.1, auc


def _demo_clips(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` demo clips rendered in memory (4 frames, 32x32, normalised) and their
    shape labels (circle 0, square 1, triangle 2): the demo task without the direction."""
    import torch.nn.functional as F

    from ired_video.data.demo import SHAPES, _Spec, render_video
    rng = torch.Generator().manual_seed(seed)
    videos, labels = [], []
    for index in range(count):
        shape = int(torch.randint(0, 3, (1,), generator=rng))
        direction = ("left", "right")[int(torch.randint(0, 2, (1,), generator=rng))]
        frames, _ = render_video(_Spec("", seed * 10_000 + index, SHAPES[shape], direction, shape,
                                       64, 48, 16, 10))  # (16, 48, 64, 3) uint8
        clip = torch.from_numpy(frames[::4, :, 8:56]).permute(3, 0, 1, 2).float() / 255  # (3, 4, 48, 48)
        clip = F.interpolate(clip, size=(32, 32), mode="bilinear", antialias=True)  # (3, 4, 32, 32)
        videos.append((clip - 0.45) / 0.225)
        labels.append(shape)
    return torch.stack(videos), torch.tensor(labels)


def test_deletion_beats_random_on_a_model_trained_on_demo_clips():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train_videos, train_labels = _demo_clips(96, seed=0)
        model = create_model("timesformer_test", num_classes=3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(150):
            batch = torch.randint(0, 96, (16,))
            loss = torch.nn.functional.cross_entropy(model(train_videos[batch]), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        video, labels = _demo_clips(24, seed=1)
        with torch.no_grad():
            assert (model(video).argmax(-1) == labels).float().mean() >= 0.9  # it tells the shapes apart
        auc = {name: float(curves(model, video, explain(model, video, name), labels, steps=8).deletion_auc().mean())
               for name in ("attention", "rollout", "interaction", "random")}
    finally:
        torch.set_num_threads(threads)
    # Seen here: attention 0.30, rollout 0.40, interaction 0.74, random 0.87.
    assert auc["attention"] < auc["random"] - 0.2, auc
    assert auc["rollout"] < auc["random"] - 0.2, auc
    assert auc["interaction"] < auc["random"] - 0.05, auc


def _demo_checkpoint(small_demo, tmp_path, reducer=None):
    """A random-weight timesformer_test checkpoint preprocessing as the demo data says (32 px crops)."""
    import dataclasses

    from ired_video import save_checkpoint
    model = create_model("timesformer_test", num_classes=len(small_demo.class_names))
    model.data_config = dataclasses.replace(small_demo.data_config, num_frames=4, crop_size=32,
                                            test_short_side=32, train_short_side=(32, 40))
    if reducer is not None:
        from ired_video.reducers import apply_reducer
        apply_reducer(model, reducer, keep=0.5)
    path = tmp_path / "demo_test.pth"
    save_checkpoint(path, model)
    return path


def test_explain_command_writes_arrays_and_pngs(small_demo, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from ired_video.commands.explain import main
    ckpt = _demo_checkpoint(small_demo, tmp_path, reducer="iared2")
    video = small_demo.root / small_demo.val_list.read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    out = tmp_path / "explain"
    assert main([str(video), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    for method in METHODS:  # the checkpoint has an interpreter: every method runs
        heat = np.load(out / f"{method}.npy")
        assert heat.shape == (4, 4, 4) and heat.dtype == np.float32 and np.isfinite(heat).all()
        assert Image.open(out / f"{method}_frame3.png").size == (224, 224)  # 32 px crop drawn 7x
        assert (out / f"{method}.png").is_file()
    assert main([str(tmp_path / "missing.mp4"), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err


def test_explain_command_without_interpreter_names_the_problem(small_demo, tmp_path, capsys):
    from ired_video.commands.explain import main
    ckpt = _demo_checkpoint(small_demo, tmp_path)
    video = small_demo.root / small_demo.val_list.read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    assert main([str(video), "--checkpoint", str(ckpt), "--method", "interpreter", "--out", str(tmp_path)]) == 2
    assert "no IA-RED² interpreter" in capsys.readouterr().err


def test_faithfulness_command_writes_the_table(small_demo, tmp_path, capsys):
    import json

    from ired_video.commands.faithfulness import main
    ckpt = _demo_checkpoint(small_demo, tmp_path)
    assert main(["--checkpoint", str(ckpt), "--data", str(small_demo.root), "--methods", "attention", "random",
                 "--reducer", "topk keep=0.5", "--limit", "2", "--steps", "2", "--out", str(tmp_path / "f")]) == 0
    report = json.loads((tmp_path / "f" / "faithfulness.json").read_text())
    assert report["videos"] == 2 and set(report["methods"]) == {"attention", "random"}
    for row in report["methods"].values():
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
        assert 0 <= row["mask_iou"] <= 1
    assert report["reducers"]["topk keep=0.5 mode=tube"]["all_kept"] == pytest.approx(0.5)
    assert "| attention |" in capsys.readouterr().out


def test_fields_of_a_constructed_interaction_map():
    from ired_video.explain.fields import FieldAccumulator
    grid, frames = (3, 3), 3
    spatial = torch.zeros(1, frames, 10, 10)  # (B, T, 1+N, 1+N)
    centre = 1 + 4  # query at the centre cell (1, 1)
    spatial[0, :, centre, 1 + 0] = 1.0  # a corner: distance 1
    spatial[0, :, centre, 1 + 3] = 8.0  # a side: distance 1
    corner = 1 + 0
    spatial[0, :, corner, 1 + 8] = 5.0  # corner (0,0) reads (2,2): distance 2
    spatial[0, :, corner, 1 + 1] = 5.0  # and (0,1): distance 1
    temporal = torch.zeros(1, 9, frames, frames)  # (B, N, T, T)
    temporal[0, 4, 0, 2] = 1.0  # centre location, frame 0 reads frame 2: span 2
    temporal[0, 4, 1, 0] = 9.0  # frame 1 reads frame 0: span 1
    acc = FieldAccumulator(depth=1, grid=grid, frames=frames)
    acc.add([EdgeEffects(Site(0, "temporal"), temporal, (1, frames, 9)),
             EdgeEffects(Site(0, "spatial"), spatial, (1, frames, 9))])
    fields = acc.fields(coverage=0.9)
    assert fields.radius[0][4] == 1 and fields.radius[0][0] == 2 and fields.radius[0][8] == 0
    assert fields.span[0][4] == 1  # 9 of 10 at span 1: exactly 0.9
    assert acc.fields(coverage=0.95).span[0][4] == 2
    assert acc.fields(coverage=0.5).radius[0][0] == 1


def test_window_attention_full_field_is_the_plain_model_and_small_fields_are_local():
    from ired_video.config import ConfigError
    from ired_video.flops import count_flops
    torch.manual_seed(0)
    plain = create_model("timesformer_test", depth=1).eval()
    grid_side, frames = 4, 4
    full = create_model("timesformer_test", depth=1, window_radius=[[grid_side - 1] * 16],
                        window_span=[[frames - 1] * 16]).eval()
    full.load_state_dict(plain.state_dict())
    video = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(full(video), plain(video))
    local = create_model("timesformer_test", depth=1, window_radius=[[0] * 16], window_span=[[0] * 16]).eval()
    local.load_state_dict(plain.state_dict())
    for model in (local, full):
        torch.nn.init.normal_(model.blocks[0].temporal_fc.weight, generator=torch.Generator().manual_seed(0), std=0.3)
    # After one block a patch has read only itself and the class token: other patches cannot reach it.
    other = video.clone()
    other[:, :, 1:] = torch.randn(3, 3, 32, 32)  # frames 1..3
    other[:, :, 0, :, 8:] = torch.randn(3, 32, 24)  # frame 0 outside patch (0, 0)'s columns
    with torch.no_grad():
        x, y = (local.forward_blocks(local.embed(v)).x for v in (video, other))
        x_full, y_full = (full.forward_blocks(full.embed(v)).x for v in (video, other))
    assert torch.allclose(x[0, 0, 0], y[0, 0, 0], atol=1e-6)  # frame 0, patch (0, 0)
    assert not torch.allclose(x_full[0, 0, 0], y_full[0, 0, 0], atol=1e-3)  # full attention does see them
    # The gathered kernel (default) computes fewer spatial pairs and is billed so; the masked
    # kernel runs densely and is billed as full attention; FlopCounterMode sees either bill.
    masked = create_model("timesformer_test", depth=1, window_radius=[[0] * 16], window_span=[[0] * 16],
                          window_kernel="masked").eval()
    masked.load_state_dict(local.state_dict())
    _, info = local(video, return_info=True)
    _, masked_info = masked(video, return_info=True)
    assert float(info.gmacs[0]) == pytest.approx(count_flops(local, video) / 2e9, rel=1e-6)
    assert float(masked_info.gmacs[0]) == pytest.approx(count_flops(masked, video) / 2e9, rel=1e-6)
    assert float(masked_info.gmacs[0]) == pytest.approx(masked.static_gmacs(), rel=1e-6)  # = the plain model's
    assert float(info.gmacs[0]) == pytest.approx(local.static_gmacs(), rel=1e-6)  # static cost is the forward's bill
    assert float(info.gmacs[0]) < float(masked_info.gmacs[0])
    with pytest.raises(ConfigError, match="window_radius"):
        create_model("timesformer_test", window_radius=[[0] * 16])  # depth 2: one block missing


def test_reducer_shares_use_the_models_own_trained_interpreters():
    from ired_video.explain.table import _with_reducer
    from ired_video.reducers import reducer_config
    model = apply_reducer(create_model("timesformer_test", depth=4), "iared2", keep=0.7)
    for reducer in model.reducers.values():  # "trained": away from the attention initialisation
        torch.nn.init.normal_(reducer.interpreter.key.weight)
    same = _with_reducer(model, model.reducer_config)
    for key, value in model.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    other = _with_reducer(model, reducer_config("iared2", keep=0.5))
    assert not torch.equal(other.reducers["1"].interpreter.key.weight, model.reducers["1"].interpreter.key.weight)


def test_demo_items_takes_the_first_videos_of_each_class_in_list_order(tmp_path):
    (tmp_path / "val.csv").write_text("a0.mp4 0\na1.mp4 0\na2.mp4 0\nb0.mp4 1\nb1.mp4 1\nc0.mp4 2\n")
    names = [(path.name, label) for path, label in demo_items(tmp_path, "val", per_class=2)]
    assert names == [("a0.mp4", 0), ("a1.mp4", 0), ("b0.mp4", 1), ("b1.mp4", 1), ("c0.mp4", 2)]
    assert [path.name for path, _ in demo_items(tmp_path, "val", limit=2, per_class=1)] == ["a0.mp4", "b0.mp4"]
    assert len(demo_items(tmp_path, "val")) == 6
