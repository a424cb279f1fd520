"""WaveNet: mu-law, receptive field, causality, exact likelihood, cache == no cache, cache memory, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from arcore.errors import UsageError
from arcore.sampling.engine import stepper
from tests.contract import (
    brute_force_log_prob,
    causality_violations,
    randomise,
    sample_both_ways,
    step_logit_error,
)
from wavegen.data import mu_law_encode
from wavegen.wavenet import AudioCond, WaveNet, decode_mu_law, dilation_schedule

TINY = {"residual_channels": 6, "gate_channels": 8, "skip_channels": 5, "head_channels": 7, "quantization": 16}
SCHEDULES = [  # (dilations, kernel size): doubling, odd dilations, wide kernels, one layer
    ([1, 2, 4, 8], 2),
    ([1, 3, 1, 5], 2),
    ([1, 2], 3),
    ([3], 4),
]


def tiny(dilations: list[int], kernel_size: int = 2, seed: int = 0, **kwargs) -> WaveNet:
    model = WaveNet(dilations=dilations, kernel_size=kernel_size, **{**TINY, **kwargs}).double()
    return randomise(model, std=0.4, seed=seed)


def conditioned(length: int, batch: int, seed: int = 0) -> tuple[WaveNet, AudioCond]:
    """A float64 model with 3 speakers and 4-band mel frames every 5 samples, and a matching random condition."""
    model = tiny([1, 2, 4], 2, seed=seed, num_labels=3, n_mels=4, hop_length=5, cond_channels=3)
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 4, math.ceil(length / 5), generator=gen, dtype=torch.float64)
    return model, AudioCond(torch.arange(batch) % 3, mel)


def test_mu_law_round_trip_error_bound():
    x = torch.cat([torch.linspace(-1, 1, 20001), torch.logspace(-6, 0, 500), -torch.logspace(-6, 0, 500)])
    codes = mu_law_encode(x)
    assert codes.min() == 0 and codes.max() == 255 and len(codes.unique()) == 256
    error = (decode_mu_law(codes) - x).abs()
    # half a code in the compressed domain (1/255) maps to at most (256^(1/255) - 1)(|x| + 1/255) of amplitude
    bound = (256 ** (1 / 255) - 1) * (x.abs() + 1 / 255)
    assert (error <= bound * 1.0001).all()
    assert error.max() > 0.5 * bound.max()  # the bound is tight, not vacuous
    every = torch.arange(256)
    assert torch.equal(mu_law_encode(decode_mu_law(every)), every)


def test_dilation_schedule_and_receptive_field():
    assert dilation_schedule(6, 2) == [1, 2, 4, 1, 2, 4]
    assert WaveNet().receptive_field == 2 * (2 ** 10 - 1) + 1  # 20 layers in 2 cycles, kernel 2
    model = tiny([1, 2, 4], kernel_size=3)
    rf = model.receptive_field
    assert rf == 2 * 7 + 1
    t = 20
    codes = torch.randint(0, 16, (1, t + 1), generator=torch.Generator().manual_seed(1))
    base = model(codes)[0, t]
    for back, matters in ((rf, True), (rf + 1, False)):
        changed = codes.clone()
        changed[0, t - back] = (changed[0, t - back] + 1) % 16
        assert bool((model(changed)[0, t] - base).abs().max() > 1e-9) == matters


@pytest.mark.parametrize("dilations,kernel_size", SCHEDULES)
def test_causality(dilations, kernel_size):
    model = tiny(dilations, kernel_size)
    codes = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(2))
    assert causality_violations(model, codes) == []


def test_causality_with_speaker_and_mel():
    model, cond = conditioned(20, 2)
    codes = torch.randint(0, 16, (2, 20), generator=torch.Generator().manual_seed(3))
    assert causality_violations(model, codes, cond) == []


def test_log_prob_is_the_sum_of_per_position_log_probs():
    model, cond = conditioned(18, 3)
    codes = torch.randint(0, 16, (3, 18), generator=torch.Generator().manual_seed(4))
    exact = model.log_prob(codes, cond)
    assert exact.dtype == torch.float64
    assert torch.allclose(exact, brute_force_log_prob(model, codes, cond), rtol=0, atol=1e-9)
    plain = tiny([1, 2], 3)
    assert torch.allclose(plain.log_prob(codes), brute_force_log_prob(plain, codes), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dilations,kernel_size", SCHEDULES)
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_sampling_equals_cache_free(dilations, kernel_size, batch):
    model = tiny(dilations, kernel_size)
    cached, naive = sample_both_ways(model, batch, seed=5, length=40)
    assert cached.shape == (batch, 40)
    assert torch.equal(cached, naive)
    assert len(cached.unique()) > 3  # real sampling, not a constant


def test_cached_sampling_equals_cache_free_with_prime_speaker_and_mel():
    model, cond = conditioned(40, 3)
    prime = torch.randint(0, 16, (3, 9), generator=torch.Generator().manual_seed(6))
    cached, naive = sample_both_ways(model, 3, seed=7, length=40, cond=cond, prime=prime, top_p=0.9)
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, :9], prime)
    other_speaker = model.sample(3, cond=AudioCond(cond.speaker.roll(1), cond.mel), length=40, prime=prime,
                                 generator=torch.Generator().manual_seed(7), top_p=0.9)
    assert not torch.equal(other_speaker, cached)  # the condition is used


def test_step_logits_match_teacher_forcing_in_float32():
    model, cond = conditioned(30, 2)
    model = model.float()
    cond = AudioCond(cond.speaker, cond.mel.float())
    codes = torch.randint(0, 16, (2, 30), generator=torch.Generator().manual_seed(8))
    assert step_logit_error(model, codes, cond) < 1e-4


def test_beam_search_with_mel_condition_width_one_is_greedy():
    model, cond = conditioned(12, 2)
    beams = model.beam_search(2, beams=1, cond=cond, length=12)
    greedy = model.sample(2, cond=cond, length=12, greedy=True)
    assert torch.equal(beams.codes[:, 0], greedy)
    assert torch.allclose(beams.log_prob[:, 0], model.log_prob(greedy, cond), atol=1e-9)


def test_cache_buffers_have_the_designed_shapes_and_stay_put():
    dilations, k, batch, length = [1, 2, 4, 3], 3, 2, 25
    model = tiny(dilations, k, num_labels=2, n_mels=4, hop_length=5, cond_channels=3)
    cond = AudioCond(torch.tensor([0, 1]), torch.randn(batch, 4, 5, dtype=torch.float64))
    step, sampler = stepper(model, batch, cond, (length,))
    cache = sampler.cache
    n_layers, r, g = len(dilations), TINY["residual_channels"], TINY["gate_channels"]
    expected = {
        "ring": (sum((k - 1) * d + 1 for d in dilations), batch, r),  # each layer's last (k-1) d + 1 inputs
        "gate_bias": (batch, n_layers * g), "mel_frames": (5, batch, 3), "position": (),
    }
    buffers = cache.buffers()
    assert {name: tuple(b.shape) for name, b in buffers.items()} == expected
    before = {name: (tuple(b.shape), b.data_ptr()) for name, b in buffers.items()}
    seq = torch.randint(0, 16, (batch, length))
    for t in range(length):
        step(t, seq)
    assert {name: (tuple(b.shape), b.data_ptr()) for name, b in cache.buffers().items()} == before
    assert sampler.buffers.ring is buffers["ring"] and sampler.buffers.mel_frames is buffers["mel_frames"]
    assert sampler.buffers.ring.abs().sum() > 0


def test_bad_input_is_a_usage_error():
    model = tiny([1, 2])
    with pytest.raises(UsageError, match=r"expects codes of shape \[B, 10\], got \[2, 3, 10\]"):
        model(torch.zeros(2, 3, 10, dtype=torch.long))
    with pytest.raises(UsageError, match="integers"):
        model(torch.zeros(2, 10))
    with pytest.raises(UsageError, match="without class labels"):
        model(torch.zeros(2, 10, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="without mel"):
        model(torch.zeros(2, 10, dtype=torch.long), AudioCond(mel=torch.zeros(2, 4, 3)))
    vocoder, cond = conditioned(10, 2)
    with pytest.raises(UsageError, match="vocoder"):
        vocoder(torch.zeros(2, 10, dtype=torch.long), AudioCond(speaker=cond.speaker))
    with pytest.raises(UsageError, match=r"\[2, 4, >= 4\]"):
        vocoder(torch.zeros(2, 16, dtype=torch.long), cond)  # 10 samples of frames for 16 samples
    with pytest.raises(UsageError, match=r"in \[0, 3\)"):
        vocoder(torch.zeros(2, 10, dtype=torch.long), AudioCond(torch.tensor([0, 3]), cond.mel))
    with pytest.raises(UsageError, match="even"):
        WaveNet(gate_channels=7)
    with pytest.raises(UsageError, match="multiple of cycles"):
        WaveNet(layers=5, cycles=2)
    with pytest.raises(UsageError, match="length"):
        model.sample(1, length=0)
