"""Discretized mixture of logistics (PixelCNN++, Salimans et al. 2017) as exact per-sub-pixel log-probabilities.

A pixel's C values x_c in {0..L-1} sit at the bin centres v = 2 x / (L - 1) - 1 in [-1, 1], bin width 2 / (L - 1).
K logistic components share one mixture indicator per pixel. Component k gives channel c the mean
``mu_ck + sum_{j<c} a_cjk v_j`` (green shifted by red, blue by red and green; ``a = tanh`` of the raw coefficient)
and the log-scale ``s_ck``, floored at -7. A value's probability under a component is the logistic mass of its bin,
the lowest bin reaching down to -inf and the highest up to +inf, so the L masses sum to one.

The pixel's likelihood ``sum_k pi_k prod_c P_ck(x_c)`` factors exactly into the raster order's sub-pixel
conditionals: channel c given the earlier channels of its pixel is the same mixture with the posterior weights
``w_k ~ pi_k prod_{j<c} P_jk(x_j)``. :func:`channel_logits` gives that conditional over all L values (so a model can
hand it to the engine as logits); :func:`log_prob` evaluates the joint at the observed values only, O(K) per pixel
instead of O(K L), for training.

The log mass of a bin is written without cancellation, as
``log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(-(a - b)))`` for the scaled bin
edges a > b, so it is accurate in the tails and for narrow bins alike. PixelCNN++ subtracts the two sigmoids instead
and falls back to the density at the bin centre when the difference is tiny; that fallback is not needed here, and
without it the L probabilities of a sub-pixel sum to one exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LOG_SCALE_FLOOR = -7.0


def num_params(channels: int, mixtures: int) -> int:
    """Parameters per pixel: per component a mixture logit, C means, C log-scales and C (C - 1) / 2 coefficients."""
    return mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


class Mixture(NamedTuple):
    """The mixture of every pixel: ``log_weights [..., K]`` (normalised), ``means`` and ``log_scales [..., C, K]``
    (floored), ``coeffs [..., C (C - 1) / 2, K]`` in [-1, 1], ordered (1, 0), (2, 0), (2, 1): green on red, blue on
    red, blue on green."""

    log_weights: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor
    coeffs: torch.Tensor

    @property
    def channels(self) -> int:
        return self.means.shape[-2]


def split(params: torch.Tensor, channels: int, mixtures: int) -> Mixture:
    """Raw network outputs ``[..., num_params(channels, mixtures)]`` (laid out as the fields of :class:`Mixture`,
    component last) to the mixture they parameterise."""
    if params.shape[-1] != num_params(channels, mixtures):
        raise ValueError(f"expected {num_params(channels, mixtures)} mixture parameters, got {params.shape[-1]}")
    k, c = mixtures, channels
    logits, means, log_scales, coeffs = params.split([k, c * k, c * k, c * (c - 1) // 2 * k], dim=-1)
    lead = params.shape[:-1]
    return Mixture(logits.log_softmax(-1), means.reshape(*lead, c, k),
                   log_scales.reshape(*lead, c, k).clamp(min=LOG_SCALE_FLOOR),
                   torch.tanh(coeffs.reshape(*lead, c * (c - 1) // 2, k)))


def centres(codes: torch.Tensor, levels: int, dtype: torch.dtype) -> torch.Tensor:
    """Codes in {0..L-1} to their bin centres in [-1, 1]."""
    return codes.to(dtype) * (2.0 / (levels - 1)) - 1.0


def bin_log_mass(codes: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(code) under discretized logistics (all arguments broadcast): the mass of the code's bin, the end bins
    open to -inf and +inf."""
    half = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scales)
    centre = centres(codes, levels, means.dtype)
    below_upper = F.logsigmoid((centre + half - means) * inv_scale)  # log P(value < upper edge)
    above_lower = F.logsigmoid((means - centre + half) * inv_scale)  # log P(value > lower edge)
    width = torch.log(-torch.expm1(-2.0 * half * inv_scale))  # log(1 - exp(-(a - b)))
    first, last = codes == 0, codes == levels - 1
    return (torch.where(last, 0.0, below_upper) + torch.where(first, 0.0, above_lower)
            + torch.where(first | last, 0.0, width))


def channel_mean(mix: Mixture, values: torch.Tensor, channel: int) -> torch.Tensor:
    """Component means ``[..., K]`` of ``channel`` given the bin centres ``values [..., >= channel]`` of the earlier
    channels of the pixel."""
    mean = mix.means[..., channel, :]
    if channel:
        first = channel * (channel - 1) // 2
        mean = mean + (mix.coeffs[..., first: first + channel, :] * values[..., :channel, None]).sum(-2)
    return mean


def joint_log_weights(mix: Mixture, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """``log pi_k + sum_c log P_ck(x_c)`` over the channels in ``codes [..., c]`` (the first c of the pixel),
    ``[..., K]``."""
    values = centres(codes, levels, mix.means.dtype)
    total = mix.log_weights
    for c in range(codes.shape[-1]):
        total = total + bin_log_mass(codes[..., c, None], channel_mean(mix, values, c), mix.log_scales[..., c, :],
                                     levels)
    return total


def log_prob(mix: Mixture, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Log-likelihood of whole pixels ``codes [..., C]``, ``[...]``."""
    return joint_log_weights(mix, codes, levels).logsumexp(-1)


def channel_logits(mix: Mixture, earlier: torch.Tensor, levels: int) -> torch.Tensor:
    """log p(x_c = v | x_<c) for every value v, ``[..., L]``, of channel c = ``earlier.shape[-1]`` given the codes
    ``earlier [..., c]`` of the pixel's earlier channels. The exponentials sum to one."""
    c = earlier.shape[-1]
    posterior = joint_log_weights(mix, earlier, levels).log_softmax(-1)  # mixture weights after channels < c
    values = centres(earlier, levels, mix.means.dtype)
    grid = torch.arange(levels, device=earlier.device)
    masses = bin_log_mass(grid, channel_mean(mix, values, c)[..., None], mix.log_scales[..., c, :, None], levels)
    return (posterior[..., None] + masses).logsumexp(-2)


def logits(mix: Mixture, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Every sub-pixel's conditional ``[..., C, L]`` given the earlier channels of its pixel in ``codes [..., C]``."""
    return torch.stack([channel_logits(mix, codes[..., :c], levels) for c in range(mix.channels)], dim=-2)
