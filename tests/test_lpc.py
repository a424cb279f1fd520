"""The predictive vocoder (wavegen/lpc.py): Levinson-Durbin against the normal equations, stable filters from any
frames, analysis and synthesis as exact inverses, the excitation round trip, the noise shaped by the envelope, the
engine's contract (causality, cached = cache-free, fused = PyTorch step, exact likelihood of the excitation) with the
residual conditioning stack, and the baselines the quality callback scores beside the vocoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arcore.errors import UsageError
from tests.contract import causality_violations, randomise, sample_both_ways, step_logit_error
from tests.test_vocoder import RATE, TINY, random_cond, speech_like
from wavegen import lpc
from wavegen.data import mu_law_encode
from wavegen.griffinlim import least_squares_griffin_lim
from wavegen.quality import baseline_audio, baselines, decoded_clips, pesq_score, score, stoi_joined, stoi_score
from wavegen.wavenet import AudioCond, WaveNet, decode_mu_law
from wavegen.wavenet_step import FusedStep


def predictive(dtype: torch.dtype = torch.float64, **kwargs) -> WaveNet:
    """A random 3-layer predictive vocoder with a 2-layer conditioning stack (4 mel bands, frames of 6 samples)."""
    settings = {"dilations": [1, 2, 4], "num_labels": 3, "n_mels": 4, "hop_length": 6, "cond_channels": 3,
                "upsample": "transposed", "cond_layers": 2, "lpc_order": 4, "preemphasis": 0.85, **TINY, **kwargs}
    return randomise(WaveNet(**settings).to(dtype), std=0.4, seed=0)


def speech_codes(seconds: float = 0.5, seed: int = 0, quantization: int = 256) -> torch.Tensor:
    return mu_law_encode(torch.from_numpy(speech_like(seconds, seed=seed)), quantization)


def test_levinson_solves_the_normal_equations_and_gives_a_stable_filter():
    rng = np.random.default_rng(0)
    for order in (1, 4, 16):
        signal = rng.standard_normal(400)
        signal = np.convolve(signal, [1.0, -1.6, 0.8])  # a resonance, so the predictor has something to find
        r = np.array([signal[: len(signal) - k] @ signal[k:] for k in range(order + 1)])
        a = lpc.levinson(torch.from_numpy(r), order).numpy()
        toeplitz = np.array([[r[abs(i - j)] for j in range(order)] for i in range(order)])
        expected = np.linalg.solve(toeplitz, -r[1:])
        assert a[0] == 1.0 and np.allclose(a[1:], expected, atol=1e-9)
        assert np.abs(np.roots(a)).max() < 1.0


def test_filters_from_any_frames_are_stable():
    model = WaveNet(n_mels=80, hop_length=80, lpc_order=16, preemphasis=0.85)
    frames = torch.cat([model.log_mel(speech_codes(1.0)[None]),
                        torch.empty(1, 80, 40).uniform_(-5, 1, generator=torch.Generator().manual_seed(0)),
                        torch.full((1, 80, 5), -5.0)], 2)  # speech, random frames, the silence floor
    filters = model.lpc_filters(frames)[0].numpy()
    assert filters.shape == (frames.shape[2], 17)
    assert max(np.abs(np.roots(a)).max() for a in filters) < 1.0


def test_synthesis_inverts_analysis_exactly_across_frame_boundaries():
    gen = torch.Generator().manual_seed(1)
    model = WaveNet(n_mels=16, hop_length=20, lpc_order=8, preemphasis=0.9)
    audio = torch.from_numpy(speech_like(0.2)).double()[None].repeat(2, 1) + 0.01 * torch.randn(2, 1600,
                                                                                                 generator=gen,
                                                                                                 dtype=torch.float64)
    filters = model.lpc_filters(torch.randn(2, 16, 81, generator=gen) - 3)
    excitation = lpc.analysis(lpc.preemphasize(audio, 0.9), filters, 20)
    back = lpc.synthesis(excitation, filters, 20, deemphasis=0.9)
    assert torch.allclose(back, audio, atol=1e-9)


def test_the_excitation_codes_round_trip_to_the_audio_and_shape_their_noise_like_the_speech():
    model = WaveNet(n_mels=80, hop_length=80, lpc_order=16, preemphasis=0.85)
    codes = speech_codes(1.0)[None]
    mel = model.log_mel(codes)
    excitation = model.excitation_codes(codes, mel)
    assert excitation.shape == codes.shape and excitation.dtype == torch.long
    spread = (lambda c: decode_mu_law(c).pow(2).mean())
    assert spread(excitation) < 0.2 * spread(codes)  # the frames' predictor removes most of the energy
    reference = decode_mu_law(codes)[0].double().numpy()
    back = model.excitation_to_audio(excitation, mel)[0].double().numpy()
    assert pesq_score(reference, back, RATE) > 4.0  # the 8-bit excitation is as good as the 8-bit audio
    # the same uniform noise on the codes: through the synthesis filter it follows the speech's envelope
    noise = torch.randint(-3, 4, codes.shape, generator=torch.Generator().manual_seed(2))
    shaped = model.excitation_to_audio((excitation + noise).clamp(0, 255), mel)[0]
    white = decode_mu_law((codes + noise).clamp(0, 255))[0]
    assert model_mel_distance(model, codes[0], shaped) < model_mel_distance(model, codes[0], white)


def model_mel_distance(model: WaveNet, codes: torch.Tensor, audio: torch.Tensor) -> float:
    a, b = (10 * model.mel_transform(x.float()).clamp(min=1e-5).log10() for x in (decode_mu_law(codes), audio))
    return float((a - b).pow(2).mean(0).sqrt().mean())


def test_a_predictive_vocoder_trains_on_excitation_codes_and_resynthesises_audio():
    model = predictive(torch.float32)
    codes = speech_codes(0.05, quantization=16)[None].repeat(2, 1)
    excitation, cond = model.unpack((codes, torch.tensor([0, 1])))
    assert isinstance(cond, AudioCond) and not torch.equal(excitation, codes)
    assert torch.equal(excitation, model.excitation_codes(codes, cond.mel))
    made = model.resynthesize([codes[0], codes[0, :250]], torch.tensor([0, 1]), greedy=True)
    assert [len(m) for m in made] == [400, 250]
    alone = model.resynthesize([codes[0, :250]], torch.tensor([1]), greedy=True)[0]
    assert torch.equal(made[1], alone)  # audio codes of its own frames, as if drawn alone
    assert all(0 <= int(m.min()) and int(m.max()) < 16 for m in made)


def test_the_predictive_vocoder_keeps_the_contract():
    model = predictive()
    codes = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(3))
    assert causality_violations(model, codes, random_cond(2, 24)) == []
    cond = random_cond(2, 40)
    cached, naive = sample_both_ways(model, 2, seed=4, length=40, cond=cond)
    assert torch.equal(cached, naive)
    small = predictive(torch.float32)
    assert step_logit_error(small, codes, random_cond(2, 24, torch.float32)) < 1e-4
    assert isinstance(small.sampler(2, random_cond(2, 24, torch.float32), (24,)).step, FusedStep)
    # exact likelihood of the excitation: the sum of the teacher-forced per-position log-probabilities
    logits = model(codes, cond=random_cond(2, 24)).log_softmax(-1)
    brute = logits.gather(-1, codes[..., None])[..., 0].sum(1)
    assert torch.allclose(model.log_prob(codes, random_cond(2, 24)), brute, atol=1e-9)


def test_the_conditioning_stack_is_used_and_widens_what_a_sample_hears():
    model = predictive(cond_layers=2)
    mel = random_cond(1, 60).mel
    table = model.cond_features(mel)
    later = mel.clone()
    later[..., 6:] += 1.0  # change frame 6 onwards only
    changed = (model.cond_features(later) - table).abs().sum(1)[0] > 0
    first = int(changed.nonzero()[0])
    plain = predictive(cond_layers=0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "cond_stack" not in k})
    plain_first = int(((plain.cond_features(later) - plain.cond_features(mel)).abs().sum(1)[0] > 0).nonzero()[0])
    assert first < plain_first  # two 5-tap layers see 4 frames further back than the 3-tap frame convolution


@pytest.mark.parametrize(("settings", "message"), [
    ({"lpc_order": 4}, "set n_mels too"),
    ({"n_mels": 4, "lpc_order": 40}, r"lpc_order in \[0, 32\]"),
    ({"n_mels": 4, "preemphasis": 1.0}, r"preemphasis in \[0, 1\)"),
    ({"n_mels": 4, "cond_layers": -1}, "cond_layers >= 0"),
])
def test_bad_predictive_settings_are_one_line_errors(settings, message):
    with pytest.raises(UsageError, match=message):
        WaveNet(**settings)


def test_both_griffin_lims_and_the_mulaw_round_trip_score_between_noise_and_transparency():
    model = WaveNet(n_mels=80, hop_length=80)
    references = [torch.from_numpy(speech_like(1.5, seed=i)) for i in range(2)]
    codes = [mu_law_encode(r) for r in references]
    decoded = decoded_clips(model, codes)
    scores = baselines(model, decoded, references, "test")
    noise = [torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, len(r))) for r in references]
    floor = score(model, references, noise)
    assert 4.6 > scores["test/pesq_mulaw"] > scores["test/pesq_mel_griffin_lim"] > scores["test/pesq_griffin_lim"] \
        > floor.pesq + 0.5
    for system in ("_mulaw", "_mel_griffin_lim", "_griffin_lim"):
        assert scores[f"test/stoi{system}"] > floor.stoi + 0.3
    assert scores["test/mel_distance_mel_griffin_lim"] < scores["test/mel_distance_griffin_lim"]
    made = baseline_audio(model, decoded)
    assert sorted(made) == ["_griffin_lim", "_mel_griffin_lim", "_mulaw"]
    assert all(torch.equal(a, b) for a, b in zip(made["_mulaw"], decoded))  # the round trip is the decoded clips
    again = baseline_audio(model, decoded)  # both inversions are the same at every run
    assert all(torch.equal(a, b) for suffix in made for a, b in zip(made[suffix], again[suffix]))
    frames = model.log_mel(codes[0][None])[0]  # the model's own frames: what the vocoder is given
    assert torch.equal(made["_griffin_lim"][0], least_squares_griffin_lim(frames, 8000, 80, length=len(codes[0])))


def test_stoi_counts_short_clips_when_they_are_joined():
    clips = [speech_like(0.3, seed=i).astype(np.float64) for i in range(4)]
    noisy = [c + 0.05 * np.random.default_rng(i).standard_normal(len(c)) for i, c in enumerate(clips)]
    assert all(math.isnan(stoi_score(c, n, RATE)) for c, n in zip(clips, noisy))  # each alone is too short
    joined = stoi_joined(clips, noisy, RATE)
    assert 0.3 < joined < stoi_joined(clips, clips, RATE)
    quiet = [c * 0.01 if i % 2 else c for i, c in enumerate(clips)]  # one level per pair: the quiet ones count
    assert stoi_joined(quiet, [n * 0.01 if i % 2 else n for i, n in enumerate(noisy)], RATE) == \
        pytest.approx(joined, abs=1e-6)
