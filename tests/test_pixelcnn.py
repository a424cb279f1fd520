"""Gated PixelCNN: masks, causality in raster/channel order, no blind spot, exact likelihood, cached sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arcore.errors import UsageError
from pixelgen.pixelcnn import PixelCNN, channel_groups, horizontal_mask
from tests.contract import brute_force_log_prob, causality_violations, randomise, sample_both_ways, step_logit_error


def tiny(image_shape=(3, 4, 5), levels=4, **kwargs) -> PixelCNN:
    kwargs = {"hidden": 6, "layers": 3, "kernel_size": 5, "head": 6, **kwargs}
    return randomise(PixelCNN(image_shape=image_shape, levels=levels, **kwargs).double())


def random_codes(model: PixelCNN, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.num_classes, (n, *model.image_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("image_shape", [(1, 4, 5), (3, 4, 5)])
def test_no_logit_depends_on_its_own_or_later_positions(image_shape):
    model = tiny(image_shape)
    assert causality_violations(model, random_codes(model)) == []


def test_causality_check_catches_a_broken_channel_mask():
    model = tiny((3, 3, 4))
    first = model.layers[0].horizontal
    groups = channel_groups(first.out_channels // 2, 3).repeat(2)
    first.mask.copy_(horizontal_mask(groups, torch.arange(3), first.mask.shape[-1], "B"))  # B where A belongs
    violations = causality_violations(model, random_codes(model))
    assert violations and all(t == s for t, s in violations)  # each sub-pixel now sees itself


def test_conditional_model_is_causal_and_uses_the_label():
    model = tiny((3, 3, 4), num_labels=3)
    codes = random_codes(model)
    assert causality_violations(model, codes, torch.tensor([0, 2])) == []
    with torch.no_grad():
        a, b = model(codes, torch.tensor([0, 0])), model(codes, torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-3


class PlainMaskedCNN(nn.Module):
    """A stack of masked 3x3 convolutions (the original PixelCNN without gated stacks), grey images."""

    def __init__(self, layers: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1) for i in range(layers))
        self.out = nn.Conv2d(hidden, 2, 1)
        for i, conv in enumerate(self.convs):
            mask = torch.ones_like(conv.weight)
            mask[:, :, 1, 1 + (i > 0):] = 0  # type A excludes the centre, type B keeps it
            mask[:, :, 2] = 0
            conv.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.tanh(F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=1))
        return self.out(x)


def unseen_neighbours(logits_at, image: torch.Tensor, row: int, col: int) -> list[tuple[int, int]]:
    """Pixels in the two rows above (i, j), within +-5 columns, whose change leaves the logits at (i, j) alone."""
    base = logits_at(image)
    unseen = []
    for r, c in itertools.product((row - 1, row - 2), range(col - 5, col + 6)):
        changed = image.clone()
        changed[:, :, r, c] = 1 - changed[:, :, r, c]
        if (logits_at(changed) - base).abs().max() < 1e-12:
            unseen.append((r, c))
    return unseen


def test_gated_stacks_have_no_blind_spot():
    model = tiny((1, 12, 13), levels=2, layers=4)
    image = random_codes(model, 1)
    with torch.no_grad():
        assert unseen_neighbours(lambda x: model(x)[:, :, 8, 6], image, 8, 6) == []


def test_blind_spot_check_fails_on_plain_masked_convolutions():
    torch.manual_seed(0)
    plain = PlainMaskedCNN().double()
    image = torch.randint(0, 2, (1, 1, 12, 13)).double()
    with torch.no_grad():
        unseen = unseen_neighbours(lambda x: plain(x)[:, :, 8, 6], image, 8, 6)
    assert (7, 11) in unseen  # the blind spot up and to the right


@pytest.mark.parametrize("image_shape,num_labels", [((1, 3, 4), 0), ((3, 2, 3), 2)])
def test_log_prob_equals_brute_force_sum(image_shape, num_labels):
    model = tiny(image_shape, num_labels=num_labels)
    codes = random_codes(model, 3)
    cond = torch.tensor([0, 1, 1]) if num_labels else None
    with torch.no_grad():
        exact = model.log_prob(codes, cond).double()
    assert torch.allclose(exact, brute_force_log_prob(model, codes, cond), atol=1e-9)


def test_probabilities_of_all_images_sum_to_one():
    model = tiny((1, 2, 3), levels=2)
    every = torch.tensor(list(itertools.product((0, 1), repeat=6))).view(-1, 1, 2, 3)
    with torch.no_grad():
        total = model.log_prob(every).double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_uniform_model_scores_exactly_log2_levels_bits_per_dim(levels):
    model = PixelCNN(image_shape=(3, 4, 4), levels=levels, hidden=6, layers=2, head=6)
    with torch.no_grad():
        model.head2.weight.zero_()
        model.head2.bias.zero_()
        codes = torch.randint(0, levels, (2, 3, 4, 4))
        bpd = -model.log_prob(codes) / (codes[0].numel() * math.log(2))
    assert torch.allclose(bpd, torch.full_like(bpd, math.log2(levels)), atol=1e-6)


@pytest.mark.parametrize("image_shape,layers,kernel_size,n", [
    ((1, 5, 6), 1, 3, 1), ((1, 5, 6), 4, 5, 3), ((3, 4, 5), 2, 3, 2), ((3, 4, 5), 3, 7, 1)])
def test_cached_sampling_equals_cache_free_sampling(image_shape, layers, kernel_size, n):
    model = tiny(image_shape, layers=layers, kernel_size=kernel_size)
    cached, naive = sample_both_ways(model, n, seed=n)
    assert torch.equal(cached, naive)


def test_cached_equals_cache_free_with_priming_and_labels():
    model = tiny((3, 5, 4), num_labels=4)
    prime = random_codes(model, 2)[:, :, :2]
    cond = torch.tensor([3, 1])
    cached, naive = sample_both_ways(model, 2, seed=5, cond=cond, prime=prime, top_k=3)
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, :, :2], prime)


def test_float32_step_logits_match_teacher_forced_logits():
    model = tiny((3, 6, 7), levels=256, num_labels=2).float()
    codes = random_codes(model, 2)
    assert step_logit_error(model, codes, torch.tensor([1, 0])) < 1e-4


def test_errors_on_wrong_shapes_and_labels():
    model = tiny((3, 4, 5), num_labels=2)
    with pytest.raises(UsageError, match=r"shape \[B, 3, 4, 5\]"):
        model(torch.zeros(2, 1, 4, 5, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 2\)"):
        model(torch.zeros(2, 3, 4, 5, dtype=torch.long), torch.tensor([0, 5]))
    with pytest.raises(UsageError, match="class-conditional"):
        model(torch.zeros(2, 3, 4, 5, dtype=torch.long))
    with pytest.raises(UsageError, match="top rows"):
        model.sample(2, cond=torch.tensor([0, 1]), prime=torch.zeros(2, 3, 5, 5, dtype=torch.long))
    with pytest.raises(UsageError, match="multiples of the channel count"):
        PixelCNN(image_shape=(3, 8, 8), hidden=8)
    with pytest.raises(UsageError, match="C = 1 or 3"):
        PixelCNN(image_shape=(2, 8, 8))
