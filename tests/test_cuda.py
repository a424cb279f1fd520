"""On a GPU: every model's step captured as CUDA graphs, replayed over many positions, equals eager; the sampling
loop never synchronises with the host. Skipped without CUDA (``benchmarks/gpu_check.sh`` runs it)."""

from __future__ import annotations

import math

import pytest
import torch

from arcore.sampling.decoding import Decoding
from arcore.sampling.engine import stepper
from tests.test_capture import MODELS, PIECES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(name: str, size: int) -> tuple[torch.nn.Module, dict]:
    model, kwargs = MODELS[name][0](size)
    kwargs = dict(kwargs)
    kwargs["cond"] = kwargs["cond"].to("cuda")
    return model.cuda(), kwargs


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("capture", [True, "reduce-overhead"])
def test_captured_sampling_on_the_gpu_equals_eager(name, capture):
    model, kwargs = on_gpu(name, MODELS[name][2])  # the larger size: many positions replayed
    eager = model.sample(2, generator=torch.Generator("cuda").manual_seed(0), top_k=3, **kwargs)
    captured = model.sample(2, generator=torch.Generator("cuda").manual_seed(0), top_k=3, compile=capture, **kwargs)
    assert torch.equal(captured, eager)


@pytest.mark.parametrize("name", MODELS)
def test_captured_beam_search_on_the_gpu_equals_eager(name):
    model, kwargs = on_gpu(name, MODELS[name][1])
    eager = model.beam_search(2, beams=3, **kwargs)
    captured = model.beam_search(2, beams=3, compile=True, **kwargs)
    assert torch.equal(captured.codes, eager.codes)
    assert torch.allclose(captured.log_prob, eager.log_prob)


@pytest.mark.parametrize("name", MODELS)
def test_the_captured_sampling_loop_never_synchronises_with_the_host(name):
    """The engine's loop (pieces, decoding, the code write) under ``set_sync_debug_mode("error")``, once every
    piece is captured (capture itself synchronises, once per piece, before the loop)."""
    model, kwargs = on_gpu(name, MODELS[name][1])
    event_shape = model.event_shape_for(kwargs.get("length"))
    run, _ = stepper(model, 2, kwargs["cond"], event_shape, capture=True)
    seq = torch.zeros(2, math.prod(event_shape), dtype=torch.long, device="cuda")
    decoding = Decoding(top_p=0.9)
    noise = torch.empty(2, model.num_classes, device="cuda")
    generator = torch.Generator("cuda").manual_seed(0)
    run.prepare(seq)
    assert run.graphs == PIECES[name]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(seq.shape[1]):
            logits = run(t, seq)
            noise.uniform_(generator=generator)
            seq[:, t] = decoding.choose(logits, noise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    reference = model.sample(2, generator=torch.Generator("cuda").manual_seed(0), top_p=0.9, **kwargs)
    assert torch.equal(model.from_order(seq, event_shape), reference)
