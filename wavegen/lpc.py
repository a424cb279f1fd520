"""Linear prediction from log-mel frames: the vocoder models only what the spectral envelope does not predict.

LPCNet's idea (Valin and Skoglund 2019), applied to WaveNet: the frames already say what the spectral envelope of
each 10 ms is, so a short all-pole filter ``1 / A(z)`` computed from them predicts most of every sample from the
samples before it. The network then models the excitation ``e = A(z) s`` (what the prediction misses) as 8-bit
mu-law codes, and the audio is ``s = e / A(z)``. Whatever noise the drawn excitation holds (the mu-law steps and
the randomness of sampling) leaves through the same filter, so it takes the shape of the speech's envelope and hides
under its formants instead of covering the quiet bands above them. A first-order pre-emphasis ``1 - alpha z^-1``
before the analysis (and the matching de-emphasis after the synthesis) tilts that noise further under the
low-frequency energy of speech.

The filter is computed from the frames alone (:func:`lpc_from_mel`), so the teacher-forced pass, the cache-free
reference and every cached or fused sampler see the same excitation codes: the network is unchanged, and so are
its exact likelihood (now of the excitation) and the sampling engine. Analysis and synthesis use the same
coefficients at every sample and are exact inverses of each other.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def envelope_power(log_mel: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
    """A power spectrum ``[..., F, n_freqs]`` from log10 mel powers ``[..., n_mels, F]``: each frequency bin gets the
    mean power density of the mel bands that cover it, weighted as the filterbank ``[n_freqs, n_mels]`` weights it.
    Never negative (a pseudo-inverse of the filterbank would ring below zero between band centres)."""
    mel_power = torch.pow(10.0, log_mel.double()).transpose(-1, -2)  # [..., F, n_mels]
    fb = filterbank.double()
    density = mel_power / fb.sum(0).clamp(min=1e-12)  # power per bin inside each band
    share = fb / fb.sum(1, keepdim=True).clamp(min=1e-12)  # [n_freqs, n_mels], rows sum to 1 where covered
    return density @ share.t()


def levinson(autocorr: torch.Tensor, order: int) -> torch.Tensor:
    """Coefficients ``[..., order + 1]`` of ``A(z) = 1 + a_1 z^-1 + ... + a_p z^-p`` minimising the prediction error
    of a signal with autocorrelation ``autocorr [..., >= order + 1]`` (Levinson-Durbin, batched). For a positive
    definite autocorrelation every reflection coefficient lies inside (-1, 1), so ``1 / A(z)`` is stable."""
    r = autocorr.double()
    a = torch.zeros(*r.shape[:-1], order + 1, dtype=torch.float64, device=r.device)
    a[..., 0] = 1.0
    error = r[..., 0].clone()
    for i in range(1, order + 1):
        acc = r[..., i] + (a[..., 1:i] * r[..., 1:i].flip(-1)).sum(-1)
        k = -acc / error
        a[..., 1:i] = a[..., 1:i] + k[..., None] * a[..., 1:i].flip(-1)
        a[..., i] = k
        error = error * (1.0 - k * k)
    return a


def lpc_from_mel(log_mel: torch.Tensor, filterbank: torch.Tensor, order: int, preemphasis: float,
                 sample_rate: int) -> torch.Tensor:
    """Prediction filters ``A(z)`` ``[B, F, order + 1]`` (float64) of log-mel frames ``[B, n_mels, F]`` for the
    pre-emphasised signal: the envelope's power spectrum tilted by ``|1 - alpha e^{-jw}|^2``, its autocorrelation
    (inverse FFT), a Gaussian lag window (60 Hz) and a -40 dB noise floor that keep the filter well conditioned."""
    power = envelope_power(log_mel, filterbank)  # [B, F, n_freqs]
    n_freqs = power.shape[-1]
    w = torch.linspace(0.0, math.pi, n_freqs, dtype=torch.float64, device=power.device)
    power = power * (1.0 + preemphasis ** 2 - 2.0 * preemphasis * torch.cos(w))
    autocorr = torch.fft.irfft(power, dim=-1)[..., : order + 1]
    lags = torch.arange(order + 1, dtype=torch.float64, device=power.device)
    autocorr = autocorr * torch.exp(-0.5 * (2 * math.pi * 60.0 * lags / sample_rate) ** 2)
    autocorr[..., 0] = autocorr[..., 0] * (1.0 + 1e-4) + 1e-12
    return levinson(autocorr, order)


def frame_of_sample(length: int, hop_length: int, frames: int, device: torch.device | None = None) -> torch.Tensor:
    """The frame whose centre is nearest each of ``length`` samples (frame ``f`` is centred on sample
    ``f * hop_length``), clamped to the ``frames`` there are."""
    t = torch.arange(length, device=device)
    return torch.div(t + hop_length // 2, hop_length, rounding_mode="floor").clamp(max=frames - 1)


def preemphasize(audio: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x[t] - alpha x[t - 1]`` along the last axis (the sample before the first taken as 0)."""
    if not alpha:
        return audio
    return audio - alpha * torch.nn.functional.pad(audio[..., :-1], (1, 0))


def analysis(audio: torch.Tensor, filters: torch.Tensor, hop_length: int) -> torch.Tensor:
    """The excitation ``e[t] = sum_j a_j(t) s[t - j]`` ``[B, T]`` of signals ``[B, T]`` (samples before the first
    taken as 0) under per-frame filters ``[B, F, order + 1]``."""
    length = audio.shape[-1]
    order = filters.shape[-1] - 1
    coefs = filters[:, frame_of_sample(length, hop_length, filters.shape[1], audio.device)]  # [B, T, order + 1]
    past = torch.nn.functional.pad(audio.double(), (order, 0)).unfold(1, order + 1, 1)  # [B, T, order + 1]
    return (past.flip(-1) * coefs).sum(-1).to(audio.dtype)


def synthesis(excitation: torch.Tensor, filters: torch.Tensor, hop_length: int, deemphasis: float) -> torch.Tensor:
    """The inverse of :func:`analysis` (``s = e / A(z)``, frame by frame with the filter state carried across),
    then the de-emphasis ``1 / (1 - alpha z^-1)``: audio ``[B, T]`` of excitations ``[B, T]``."""
    from scipy.signal import lfilter, lfiltic

    e = excitation.detach().double().cpu().numpy()
    a = filters.detach().cpu().numpy()
    batch, length = e.shape
    order = a.shape[-1] - 1
    out = np.zeros((batch, length + order))
    which = frame_of_sample(length, hop_length, a.shape[1]).numpy()
    bounds = np.flatnonzero(np.diff(which)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [length]])
    for b in range(batch):
        for start, end in zip(starts, ends):
            coefs = a[b, which[start]]
            state = lfiltic([1.0], coefs, out[b, start: start + order][::-1])  # the last `order` outputs, newest first
            out[b, start + order: end + order], _ = lfilter([1.0], coefs, e[b, start:end], zi=state)
    audio = out[:, order:]
    if deemphasis:
        audio = lfilter([1.0], [1.0, -deemphasis], audio, axis=1)
    return torch.from_numpy(audio).to(excitation.dtype if excitation.is_floating_point() else torch.float32)
