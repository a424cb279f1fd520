"""Discretized logistic mixture: normalised conditionals, PixelCNN++'s closed-form likelihood, end bins, accuracy."""

from __future__ import annotations

import decimal
import itertools
import math

import pytest
import torch

from pixelgen import mixture


def random_params(channels: int, mixtures: int, *lead: int, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    """Raw parameters in float64: means around [-1, 1], log-scales around -1.5 (wider with ``spread``)."""
    gen = torch.Generator().manual_seed(seed)
    k, c = mixtures, channels
    logits = torch.randn(*lead, k, generator=gen, dtype=torch.float64)
    means = torch.randn(*lead, c * k, generator=gen, dtype=torch.float64) * 0.6 * spread
    log_scales = torch.randn(*lead, c * k, generator=gen, dtype=torch.float64) * 0.5 * spread - 1.5
    coeffs = torch.randn(*lead, c * (c - 1) // 2 * k, generator=gen, dtype=torch.float64)
    return torch.cat([logits, means, log_scales, coeffs], dim=-1)


def pixelcnnpp_log_prob(params: torch.Tensor, codes: torch.Tensor, levels: int, mixtures: int) -> torch.Tensor:
    """PixelCNN++'s discretized logistic mixture likelihood of whole pixels ``codes [..., C]``, written from the
    paper: sigmoid differences at the bin edges, the end bins open, float64 (no mid-bin fallback needed there)."""
    k, c = mixtures, codes.shape[-1]
    logit_probs = params[..., :k]
    means = params[..., k: k + c * k].unflatten(-1, (c, k))
    log_scales = params[..., k + c * k: k + 2 * c * k].unflatten(-1, (c, k)).clamp(min=-7.0)
    coeffs = torch.tanh(params[..., k + 2 * c * k:].unflatten(-1, (c * (c - 1) // 2, k)))
    x = (codes.double() * 2 / (levels - 1) - 1)[..., None]  # [..., C, 1]
    if c == 3:  # green mean + c0 * red, blue mean + c1 * red + c2 * green
        means = torch.stack([means[..., 0, :], means[..., 1, :] + coeffs[..., 0, :] * x[..., 0, :],
                             means[..., 2, :] + coeffs[..., 1, :] * x[..., 0, :] + coeffs[..., 2, :] * x[..., 1, :]],
                            dim=-2)
    inv_scale = torch.exp(-log_scales)
    plus = inv_scale * (x - means + 1 / (levels - 1))
    minus = inv_scale * (x - means - 1 / (levels - 1))
    code = codes[..., None].expand_as(means)
    log_p = torch.where(code == 0, torch.log(torch.sigmoid(plus)),
                        torch.where(code == levels - 1, torch.log(1 - torch.sigmoid(minus)),
                                    torch.log(torch.sigmoid(plus) - torch.sigmoid(minus))))
    return torch.logsumexp(log_p.sum(-2) + torch.log_softmax(logit_probs, -1), dim=-1)


def every_earlier(channels: int, levels: int, channel: int) -> torch.Tensor:
    """All combinations of codes for the channels before ``channel``, ``[levels ** channel, channel]``."""
    return torch.tensor(list(itertools.product(range(levels), repeat=channel)), dtype=torch.long).view(-1, channel)


@pytest.mark.parametrize("channels,levels,spread", [(1, 2, 1.0), (1, 256, 4.0), (3, 8, 1.0), (3, 256, 4.0)])
def test_each_sub_pixel_distribution_sums_to_one(channels, levels, spread):
    params = random_params(channels, 5, 6, seed=levels, spread=spread)
    mix = mixture.split(params, channels, 5)
    for c in range(channels):
        earlier = torch.randint(0, levels, (6, c), generator=torch.Generator().manual_seed(c))
        probs = mixture.channel_logits(mix, earlier, levels).exp()
        assert probs.shape == (6, levels)
        assert torch.allclose(probs.sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("channels,levels", [(1, 256), (3, 256), (3, 32), (1, 4)])
def test_log_prob_equals_pixelcnnpp_closed_form_and_the_chain_rule(channels, levels):
    params = random_params(channels, 4, 50, seed=channels)
    codes = torch.randint(0, levels, (50, channels), generator=torch.Generator().manual_seed(3))
    codes[:5] = 0  # both end bins on every channel
    codes[5:10] = levels - 1
    mix = mixture.split(params, channels, 4)
    expected = pixelcnnpp_log_prob(params, codes, levels, 4)
    assert torch.allclose(mixture.log_prob(mix, codes, levels), expected, atol=1e-9, rtol=0)
    chain = mixture.logits(mix, codes, levels).gather(-1, codes[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(chain, expected, atol=1e-9, rtol=0)


def test_every_pixel_of_a_small_image_space_has_total_probability_one():
    """Summing the joint over all L**3 pixels checks the end bins and the channel coefficients together."""
    levels = 4
    params = random_params(3, 3, 1, seed=7)
    every = every_earlier(3, levels, 3)
    mix = mixture.split(params.expand(len(every), -1), 3, 3)
    assert mixture.log_prob(mix, every, levels).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_end_bins_hold_the_tails():
    levels = 256
    params = torch.tensor([[0.0, -3.0, math.log(0.1)], [0.0, 3.0, math.log(0.1)]], dtype=torch.float64)
    mix = mixture.split(params, 1, 1)
    probs = mixture.channel_logits(mix, torch.zeros(2, 0, dtype=torch.long), levels).exp()
    below = torch.sigmoid(torch.tensor((-1 + 1 / 255 + 3) / 0.1, dtype=torch.float64))  # P(value < first edge)
    assert probs[0, 0].item() == pytest.approx(below.item(), abs=1e-12)  # everything left of the first edge
    assert probs[1, -1].item() == pytest.approx(below.item(), abs=1e-12)  # mirror image at the top
    assert probs[0, 0] > 0.99 and probs[1, -1] > 0.99


def test_green_and_blue_means_follow_the_earlier_channels():
    """One component with narrow bins: the likeliest green moves with red, the likeliest blue with red and green."""
    levels = 256
    means, log_scales, coeffs = [0.0, 0.0, 0.0], [-6.0] * 3, [math.atanh(0.5), math.atanh(-0.5), math.atanh(0.25)]
    mix = mixture.split(torch.tensor([[0.0, *means, *log_scales, *coeffs]], dtype=torch.float64), 3, 1)
    red, green = 255, 64  # bin centres 1 and 64 * 2 / 255 - 1
    v_red, v_green = 1.0, green * 2 / 255 - 1
    green_mode = mixture.channel_logits(mix, torch.tensor([[red]]), levels).argmax(-1).item()
    blue_mode = mixture.channel_logits(mix, torch.tensor([[red, green]]), levels).argmax(-1).item()
    assert green_mode == round((0.5 * v_red + 1) * 255 / 2)
    assert blue_mode == round((-0.5 * v_red + 0.25 * v_green + 1) * 255 / 2)


def exact_log_mass(code: int, mean: float, log_scale: float, levels: int) -> float:
    """log P(code) in 60-digit decimal arithmetic: the reference for float32 in the tails."""
    decimal.getcontext().prec = 60
    d = decimal.Decimal
    inv_scale = (-d(log_scale)).exp()
    half = d(1) / (levels - 1)
    centre = d(code) * 2 * half - 1

    def tail(edge: decimal.Decimal, sign: int) -> decimal.Decimal:
        """P(value < edge) for sign 1, P(value > edge) for sign -1: a small number in the tail it names."""
        return 1 / (1 + (-sign * (edge - d(mean)) * inv_scale).exp())

    sign = 1 if centre <= d(mean) else -1  # subtract the two edges' masses on the side where both are small
    inner, outer = (centre + sign * half, centre - sign * half)
    far = d(0) if code == (0 if sign == 1 else levels - 1) else tail(outer, sign)
    near = d(1) if code == (levels - 1 if sign == 1 else 0) else tail(inner, sign)
    return float((near - far).ln())


@pytest.mark.parametrize("code,mean,log_scale", [
    (255, -1.0, -7.0),  # the far tail of a narrow component: mass e^-2200, subtracting sigmoids gives log 0
    (0, 0.9, -6.5), (128, -0.6, -5.0), (3, 0.99, -3.0),  # tails
    (100, 0.0, 9.0), (200, 0.3, 3.0),  # a very wide component: two nearly equal sigmoids
    (77, 77 * 2 / 255 - 1, -7.0)])  # the peak of the narrowest component
def test_bin_log_mass_is_accurate_in_float32(code, mean, log_scale):
    got = mixture.bin_log_mass(torch.tensor(code), torch.tensor(mean), torch.tensor(log_scale), 256)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(exact_log_mass(code, mean, log_scale, 256), rel=1e-5, abs=1e-6)


def test_log_scales_are_floored_and_gradients_stay_finite_at_the_end_bins():
    params = random_params(3, 2, 8, seed=4, spread=6.0).float()
    params[:, 2 + 6: 2 + 12] = -40.0  # far below the floor
    params.requires_grad_(True)
    mix = mixture.split(params, 3, 2)
    assert torch.equal(mix.log_scales, torch.full_like(mix.log_scales, mixture.LOG_SCALE_FLOOR))
    codes = torch.tensor([[0, 255, 0], [255, 0, 255], [0, 0, 0], [255, 255, 255]] * 2)
    total = mixture.log_prob(mix, codes, 256).sum() + mixture.logits(mix, codes, 256).logsumexp(-1).sum()
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(params.grad).all()
    assert params.grad[:, :2].abs().sum() > 0  # the mixture logits still learn


def test_split_rejects_the_wrong_parameter_count():
    assert mixture.num_params(3, 10) == 100 and mixture.num_params(1, 10) == 30
    with pytest.raises(ValueError, match="expected 100 mixture parameters, got 99"):
        mixture.split(torch.zeros(2, 99), 3, 10)
