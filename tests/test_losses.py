"""Training objectives: token distillation against the unreduced teacher."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ired_video import apply_reducer, create_model
from ired_video.engine.losses import token_distillation
from ired_video.tokens import pool_to_slots


def _model(attention_type: str = "divided_space_time") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("timesformer_test", attention_type=attention_type, depth=4).eval()


def _video() -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("attention_type,reducer,knobs", [
    ("divided_space_time", "tome", {"r": 4}),
    ("divided_space_time", "bat", {"keep": 0.5}),
    ("divided_space_time", "topk", {"keep": 0.5, "mode": "frame"}),
    ("joint_space_time", "tome", {"r": 6, "mode": "flat"}),
])
def test_pooled_targets_average_the_patches_each_token_holds(attention_type, reducer, knobs):
    model = _model(attention_type)
    apply_reducer(model, reducer, **knobs)
    with torch.no_grad():
        _, info = model(_video(), return_info=True)
    state = info.state
    batch, frames_in, patches = state.batch_size, state.num_frames_in, state.num_patches
    per_patch = torch.randn(batch, frames_in, patches, 5)
    pooled, count = pool_to_slots(state, per_patch)
    flat_values = per_patch.reshape(batch, state.num_frames, -1, 5)  # frame-major, like slot_of
    for b in range(batch):
        for f in range(state.num_frames):
            for k in range(state.num_slots):
                held = (state.slot_of[b, f] == k).nonzero().flatten()
                assert count[b, f, k] == len(held)
                expected = flat_values[b, f, held].mean(0) if len(held) else torch.zeros(5)
                torch.testing.assert_close(pooled[b, f, k], expected)
    assert int(count.sum()) == int((state.slot_of >= 0).sum())  # every surviving patch counted once


def test_token_loss_is_zero_for_the_unreduced_model_and_grows_with_reduction():
    teacher = _model()
    with torch.no_grad():
        _, teacher_info = teacher(_video(), return_info=True)
        _, same_info = _model()(_video(), return_info=True)
    assert float(token_distillation(same_info.state, teacher_info.state)) == 0.0

    student = _model()
    apply_reducer(student, "topk", keep=0.5)
    _, info = student(_video(), return_info=True)
    loss = token_distillation(info.state, teacher_info.state)
    assert float(loss.detach()) > 0
    loss.backward()
    assert student.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_token_loss_is_the_mean_error_over_kept_tokens():
    teacher = _model()
    student = _model()
    apply_reducer(student, "random", keep=0.5)
    with torch.no_grad():
        _, teacher_info = teacher(_video(), return_info=True)
        _, info = student(_video(), return_info=True)
    state, dim = info.state, info.state.x.shape[-1]
    errors = []
    for b in range(state.batch_size):
        for f in range(state.num_frames):
            for k in range(state.num_slots):
                patch = int(state.pos[b, f, k]) % state.num_patches  # unmerged: the token's own patch
                target = F.layer_norm(teacher_info.state.x[b, f, patch], (dim,))
                errors.append((F.layer_norm(state.x[b, f, k], (dim,)) - target).pow(2).mean())
    torch.testing.assert_close(token_distillation(state, teacher_info.state), torch.stack(errors).mean())
