"""Numerics on the device the user trains on: the CPU here, a GPU in ``tools/bench_gpu.sh``.

``IRED_DEVICE=cuda python -m pytest tests/test_device.py`` runs the same checks on a GPU
(with a larger model); without the variable they run on the CPU. Checked: the fused
attention kernel against the explicit path, every reducer's no-op against the plain model
(bit-identical), bf16 autocast against fp32, a compiled forward against eager.
"""
from __future__ import annotations

import os

import pytest
import torch

from ired_video import apply_reducer, create_model
from ired_video.speed import autocast

DEVICE = torch.device(os.environ.get("IRED_DEVICE", "cpu"))
# A GPU gets a model large enough to run its real kernels (flash / efficient attention).
MODEL = ("timesformer_tiny_patch16_224", dict(num_frames=4, num_classes=10)) if DEVICE.type == "cuda" \
    else ("timesformer_test", {})

NO_OPS = [("random", dict(keep=1.0)), ("topk", dict(keep=1.0)), ("topk", dict(keep=1.0, fuse=True)),
          ("interaction", dict(keep=1.0)), ("bat", dict(keep=1.0, match_ratio=0.0)), ("tome", dict(r=0)),
          ("iared2", dict(keep=1.0))]


@pytest.fixture(scope="module")
def model_and_clip():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("IRED_DEVICE=cuda but PyTorch sees no CUDA GPU")
    torch.manual_seed(0)
    name, overrides = MODEL
    model = create_model(name, **overrides).eval().to(DEVICE)
    cfg = model.config
    clip = torch.randn(2, cfg.in_chans, cfg.num_frames, cfg.img_size, cfg.img_size, device=DEVICE)
    return model, clip


def _logits(model: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(clip).float()


def test_fused_attention_matches_the_explicit_path(model_and_clip):
    model, clip = model_and_clip
    fused = _logits(model, clip)
    model.set_fused_attention(False)
    try:
        explicit = _logits(model, clip)
    finally:
        model.set_fused_attention(True)
    # GPU matmuls may run in TF32 inside SDPA kernels: allow for it there
    tolerance = 1e-4 if DEVICE.type == "cpu" else 2e-3
    assert (fused - explicit).abs().max().item() <= tolerance * max(1.0, explicit.abs().max().item())


@pytest.mark.parametrize("name, settings", NO_OPS, ids=[f"{n}-{'-'.join(map(str, s.values()))}" for n, s in NO_OPS])
def test_a_reducer_that_removes_nothing_is_bit_identical(model_and_clip, name, settings):
    model, clip = model_and_clip
    apply_reducer(model, "none")
    plain = _logits(model, clip)
    apply_reducer(model, name, **settings)
    try:
        assert torch.equal(_logits(model, clip), plain)
    finally:
        apply_reducer(model, "none")


def test_bf16_logits_stay_close_to_fp32(model_and_clip):
    model, clip = model_and_clip
    full = _logits(model, clip)
    with torch.inference_mode(), autocast(DEVICE, torch.bfloat16):
        half = model(clip).float()
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # bf16 keeps 8 mantissa bits: a few percent of the logit range
    assert (half - full).abs().max().item() <= 0.05 * max(1.0, full.abs().max().item())


@pytest.mark.skipif(DEVICE.type == "cpu" and os.environ.get("IRED_COMPILE_TESTS") != "1",
                    reason="compiling on the CPU takes minutes; tests/test_compile.py checks the graphs here")
def test_compiled_forward_equals_eager(model_and_clip):
    model, clip = model_and_clip
    eager = _logits(model, clip)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    assert (_logits(compiled, clip) - eager).abs().max().item() <= 1e-4 * max(1.0, eager.abs().max().item())
