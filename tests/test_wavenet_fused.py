"""The fused C++ WaveNet step (wavegen.wavenet_step) against the PyTorch step and the cache-free sampler."""

from __future__ import annotations

import pytest
import torch

from arcore.errors import UsageError
from arcore.sampling.decoding import Decoding
from arcore.sampling.engine import stepper
from tests.contract import randomise, sample_both_ways
from tests.test_native import no_compiler
from wavegen.wavenet import AudioCond, WaveNet
from wavegen.wavenet_step import FusedStep, gate_folded, kernel, weight_dtype

# widths that are not multiples of the kernel's 16-column panels, so the padding is exercised too
WIDTHS = {"residual_channels": 20, "gate_channels": 36, "skip_channels": 17, "head_channels": 33, "quantization": 40}
KINDS = {  # conditioning: (model settings, speaker, mel)
    "none": ({"dilations": [1, 2, 4, 8, 1, 2]}, False, False),
    "speaker": ({"dilations": [1, 2, 4], "kernel_size": 3, "num_labels": 3}, True, False),
    "speaker and mel": ({"dilations": [1, 2, 4, 8], "num_labels": 3, "n_mels": 4, "hop_length": 5,
                         "cond_channels": 3}, True, True),
    "learned upsampling of mel": ({"dilations": [1, 2, 4], "n_mels": 4, "hop_length": 5, "cond_channels": 3,
                                   "upsample": "transposed"}, False, True),  # one table row per sample
}


def model_and_cond(kind: str, batch: int, length: int, seed: int = 0) -> tuple[WaveNet, AudioCond | None]:
    settings, speaker, mel = KINDS[kind]
    model = randomise(WaveNet(**WIDTHS, **settings).float(), std=0.3, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    cond = AudioCond(torch.arange(batch) % 3 if speaker else None,
                     torch.randn(batch, 4, -(-length // 5), generator=gen) if mel else None)
    return model, cond if speaker or mel else None


def codes(model: WaveNet, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.num_classes, (batch, length), generator=torch.Generator().manual_seed(seed))


def half_model(kind: str, batch: int, length: int, seed: int = 0) -> tuple[WaveNet, AudioCond | None]:
    """:func:`model_and_cond` with its weights rounded to float16 values (the fused step then holds float16)."""
    model, cond = model_and_cond(kind, batch, length, seed)
    model.round_weights_to_half()
    return model, cond


MODELS = {"float32": model_and_cond, "float16": half_model}  # weights as the fused step holds them


@pytest.mark.parametrize("weights", list(MODELS))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fused_step_writes_the_same_ring_and_logits_as_the_pytorch_step(batch, kind, weights, monkeypatch):
    assert kernel() is not None, "the fused step did not build (is a C++ compiler installed?)"
    length = 40
    model, cond = MODELS[weights](kind, batch, length)
    seq = codes(model, batch, length)
    fused_run, fused = stepper(model, batch, cond, (length,))
    monkeypatch.setenv("WAVEGEN_FUSED", "0")
    plain_run, plain = stepper(model, batch, cond, (length,))
    assert isinstance(fused.step, FusedStep) and not isinstance(plain.step, FusedStep)
    assert fused.step.weight_dtype == getattr(torch, weights)
    for t in range(length):
        logits, expected = fused_run(t, seq), plain_run(t, seq)
        assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max().clamp(min=1), f"logits at {t}"
        ring, expected_ring = fused.buffers.ring, plain.buffers.ring
        assert (ring - expected_ring).abs().max() <= 1e-5 * expected_ring.abs().max().clamp(min=1), f"ring at {t}"
    assert torch.equal(fused.cache.position, plain.cache.position)
    assert (fused.buffers.ring != 0).all()  # every row of every layer written


@pytest.mark.parametrize("kind,batch,prime_length", [("none", 1, 0), ("speaker and mel", 3, 9), ("speaker", 2, 5)])
def test_fused_sampling_equals_cache_free_sampling(kind, batch, prime_length):
    length = 48
    model, cond = model_and_cond(kind, batch, length, seed=2)
    prime = codes(model, batch, prime_length, seed=3) if prime_length else None
    assert isinstance(model.sampler(batch, cond, (length,)).step, FusedStep)
    cached, naive = sample_both_ways(model, batch, seed=4, length=length, cond=cond, prime=prime, top_p=0.95)
    assert torch.equal(cached, naive)
    assert len(cached.unique()) > 5  # real draws, not a constant
    other = model.sample(batch, cond=cond, prime=prime, length=length, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(cached, other)


DECODINGS = {"default": {}, "temperature": {"temperature": 0.7}, "greedy": {"greedy": True}, "top-k 1": {"top_k": 1}}


@pytest.mark.parametrize("weights", list(MODELS))
@pytest.mark.parametrize("decoding", list(DECODINGS))
def test_a_whole_position_in_one_call_samples_as_the_cache_free_sampler(decoding, weights):
    """The fused draw (the step, the Gumbel-max choice, the code write and the advance in one C++ call) gives the
    cache-free sampler's codes, with the same noise blocks, at every decoding it serves."""
    length, batch = 60, 3
    model, cond = MODELS[weights]("speaker and mel", batch, length, seed=12)
    prime = codes(model, batch, 7, seed=13)
    assert model.sampler(batch, cond, (length,)).drawer(Decoding(**DECODINGS[decoding])) is not None
    cached, naive = sample_both_ways(model, batch, seed=14, length=length, cond=cond, prime=prime,
                                     **DECODINGS[decoding])
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, :7], prime) and len(cached[:, 7:].unique()) > (1 if decoding in ("greedy", "top-k 1")
                                                                                 else 5)


def test_the_fused_draw_leaves_top_k_and_top_p_to_the_engine():
    model, cond = model_and_cond("none", 1, 10)
    sampler = model.sampler(1, cond, (10,))
    assert sampler.drawer(Decoding(top_k=5)) is None and sampler.drawer(Decoding(top_p=0.9)) is None
    cached, naive = sample_both_ways(model, 2, seed=15, length=30, top_k=5)
    assert torch.equal(cached, naive)


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_rounded_to_half_are_float16_values_within_a_half_ulp(kind):
    model, _ = model_and_cond(kind, 1, 10)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert weight_dtype(model) == torch.float32
    change = model.round_weights_to_half()
    assert weight_dtype(model) == torch.float16
    largest = 0.0
    for name, p in model.named_parameters():
        moved = (p - before[name]).abs()
        largest = max(largest, moved.max().item())
        if name.endswith("bias") or "embed" in name or "mel_net" in name or "upsampler" in name:
            assert torch.equal(p, before[name]), name  # only the step's weight matrices are rounded
        else:
            assert torch.equal(p.half().float(), p), name
            assert (moved <= before[name].abs() * 2.0 ** -11 + 2.0 ** -25).all(), name  # half an ulp of float16
    assert change == largest > 0


def test_a_weight_beyond_float16_range_is_refused_in_one_line():
    model, _ = model_and_cond("none", 1, 10)
    with torch.no_grad():
        model.head2.weight[0, 0, 0] = 1e5
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(UsageError, match="beyond float16's range"):
        model.round_weights_to_half()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # nothing half-rounded


def test_fused_beam_search_equals_beam_search_through_the_pytorch_step(monkeypatch):
    model, cond = model_and_cond("speaker and mel", 2, 20, seed=6)
    prime = codes(model, 2, 4, seed=7)
    fused = model.beam_search(2, beams=4, cond=cond, prime=prime, length=20)  # 8 rows reordered at every step
    monkeypatch.setenv("WAVEGEN_FUSED", "0")
    plain = model.beam_search(2, beams=4, cond=cond, prime=prime, length=20)
    assert torch.equal(fused.codes, plain.codes)
    assert torch.allclose(fused.log_prob, plain.log_prob, atol=1e-4)
    assert len(fused.codes[0].unique(dim=0)) == 4  # four distinct beams


def test_fused_step_serves_float32_cpu_sampling_unless_turned_off(monkeypatch):
    model, _ = model_and_cond("none", 1, 10)
    assert FusedStep.applies(model)
    assert not FusedStep.applies(model.to(torch.float64))
    model.float()
    for switch in ("WAVEGEN_FUSED", "ARCORE_FUSED"):
        with monkeypatch.context() as m:
            m.setenv(switch, "0")
            assert not FusedStep.applies(model)
            assert not isinstance(model.sampler(1, None, (10,)).step, FusedStep)


def test_without_a_compiler_sampling_falls_back_to_the_pytorch_step(monkeypatch, tmp_path):
    no_compiler(monkeypatch, tmp_path)
    model, _ = model_and_cond("none", 1, 30)
    with pytest.warns(UserWarning, match="could not be built.*WaveNet sampling uses the PyTorch step"):
        assert not isinstance(model.sampler(1, None, (30,)).step, FusedStep)
    cached, naive = sample_both_ways(model, 1, seed=8, length=30)
    assert torch.equal(cached, naive)



def test_a_compiled_run_keeps_the_fused_step_as_it_is_and_samples_as_eager():
    torch._dynamo.reset()
    model, cond = model_and_cond("speaker and mel", 2, 30, seed=9)
    prime = codes(model, 2, 3, seed=10)
    sampler = model.sampler(2, cond, (30,))
    assert isinstance(sampler.step, FusedStep) and not sampler.capturable(sampler.step)
    eager = model.sample(2, cond=cond, prime=prime, length=30, generator=torch.Generator().manual_seed(11))
    captured = model.sample(2, cond=cond, prime=prime, length=30, generator=torch.Generator().manual_seed(11),
                            compile="aot_eager")
    assert torch.equal(captured, eager)


def test_wavegen_sample_says_which_step_ran(tmp_path, capsys, monkeypatch):
    from tests.tiny_configs import untrained_checkpoint
    from wavegen.cli import main

    model, _ = model_and_cond("none", 1, 10)
    ckpt = untrained_checkpoint(model, tmp_path / "tiny.ckpt")
    for extra, env, step in (([], "1", "fused CPU step"), ([], "0", "PyTorch step"),
                             (["--no-cache"], "1", "cache-free step"),
                             (["--half-weights"], "1", "fused CPU step, float16 weights")):
        monkeypatch.setenv("WAVEGEN_FUSED", env)
        assert main(["sample", "--ckpt", str(ckpt), "--seconds", "0.002", "--out", str(tmp_path / "a.wav"),
                     *extra]) == 0
        assert f"x real time at 8000 Hz, {step})" in capsys.readouterr().out


def test_the_gate_folding_halves_the_sigmoid_half_of_every_block_and_undoes_exactly():
    weight = torch.randn(3 * 4, 5, 2, generator=torch.Generator().manual_seed(0))  # 3 layers' gates of 4 channels
    folded = gate_folded(weight, 4)
    blocks, expected = folded.view(3, 4, 5, 2), weight.view(3, 4, 5, 2)
    assert torch.equal(blocks[:, :2], expected[:, :2]) and torch.equal(blocks[:, 2:], expected[:, 2:] / 2)
    assert torch.equal(gate_folded(folded, 4, undo=True), weight)
    assert torch.equal(gate_folded(weight[:, :, 0].t(), 4, dim=1), folded[:, :, 0].t())  # blocks along dim 1
