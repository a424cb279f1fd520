"""The shared engine: decoding rules, reproducibility, beam search, cache memory."""

from __future__ import annotations

import itertools

import pytest
import torch

from arcore.errors import UsageError
from arcore.sampling.cache import StepCache
from arcore.sampling.decoding import Decoding, SampleOptions, gumbel, top_p_filter
from arcore.sampling.engine import stepper
from pixelgen.pixelcnn import PixelCNN
from tests.contract import randomise


def tiny(image_shape=(1, 2, 3), levels=2, **kwargs) -> PixelCNN:
    kwargs = {"hidden": 6, "layers": 2, "kernel_size": 3, "head": 6, **kwargs}
    return randomise(PixelCNN(image_shape=image_shape, levels=levels, **kwargs).double(), std=1.0)


def all_images(model: PixelCNN) -> torch.Tensor:
    dims = model.image_shape[0] * model.image_shape[1] * model.image_shape[2]
    every = itertools.product(range(model.num_classes), repeat=dims)
    return model.from_order(torch.tensor(list(every)), model.image_shape)


def test_top_k_one_keeps_the_most_likely_code_whatever_the_noise_and_low_temperature_tends_to_greedy():
    logits = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    noise = gumbel(torch.rand(500, 6, generator=torch.Generator().manual_seed(1)))
    kept = Decoding(top_k=1).filter(logits)
    assert torch.equal(torch.isfinite(kept).sum(-1), torch.ones(500, dtype=torch.long))
    assert torch.equal((kept + noise).argmax(-1), logits.argmax(-1))  # so the engine may skip the noise (argmax)
    assert not torch.equal((Decoding(top_k=2).filter(logits) + noise).argmax(-1), logits.argmax(-1))
    model = tiny((1, 4, 4), levels=4)
    greedy = model.sample(3, greedy=True)
    assert torch.equal(model.sample(3, temperature=1e-3, generator=torch.Generator().manual_seed(2)), greedy)
    assert not torch.equal(model.sample(3, temperature=5.0, generator=torch.Generator().manual_seed(3)), greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()
    assert kept(0.45) == [True, False, False, False]
    assert kept(0.79) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    shuffled = logits[:, [2, 0, 3, 1]]  # the order of the classes does not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.79))[0].tolist() == [False, True, False, True]


def test_top_k_restricts_samples_to_the_k_most_likely():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0, 0.5]]).repeat(4000, 1)
    codes = Decoding(top_k=2).choose(logits, torch.rand(4000, 5, generator=torch.Generator().manual_seed(0)))
    assert set(codes.tolist()) == {0, 2}


def test_sampling_frequencies_match_the_softmax_chi_square():
    logits = torch.tensor([1.5, 0.2, -0.7, 0.9, 0.0])
    n = 20000
    noise = torch.rand(n, 5, generator=torch.Generator().manual_seed(0))
    codes = Decoding().choose(logits.expand(n, 5), noise)
    observed = torch.bincount(codes, minlength=5).double()
    expected = logits.double().softmax(0) * n
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.47  # the 99.9% quantile of chi-square with 4 degrees of freedom
    tempered = Decoding(temperature=0.5).choose(logits.expand(n, 5), noise)
    assert torch.bincount(tempered, minlength=5)[0] > observed[0] * 1.2  # sharper around the mode


def test_same_seed_same_samples_other_seed_other_samples():
    model = tiny((3, 3, 3), levels=8)
    draw = lambda seed: model.sample(4, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_noise_drawn_in_blocks_is_the_noise_drawn_per_position(monkeypatch):
    """The CPU engine draws a block of positions' noise per generator call: the codes, and where the generator's
    stream ends, are those of one call per position."""
    import arcore.sampling.engine

    model = tiny((1, 5, 5), levels=4)
    blocked_gen = torch.Generator().manual_seed(5)
    blocked = model.sample(3, generator=blocked_gen)
    monkeypatch.setattr(arcore.sampling.engine, "NOISE_BLOCK", 1)  # one position per call
    single_gen = torch.Generator().manual_seed(5)
    single = model.sample(3, generator=single_gen)
    assert torch.equal(blocked, single) and len(blocked.unique()) == 4
    stream = torch.Generator().manual_seed(5)
    for _ in range(25):  # the 25 positions' [3, 4] draws, one at a time
        torch.empty(3, 4).uniform_(generator=stream)
    assert torch.equal(blocked_gen.get_state(), stream.get_state())
    assert torch.equal(single_gen.get_state(), stream.get_state())
    monkeypatch.setattr(arcore.sampling.engine, "NOISE_BLOCK", 3 * 4 * 7)  # blocks of 7 positions: 25 = 3 x 7 + 4
    assert torch.equal(model.sample(3, generator=torch.Generator().manual_seed(5)), blocked)


def test_beam_of_width_one_is_greedy():
    model = tiny((3, 3, 4), levels=4)
    result = model.beam_search(2, beams=1)
    assert torch.equal(result.codes[:, 0], model.sample(2, greedy=True))
    assert torch.allclose(result.log_prob[:, 0], model.log_prob(result.codes[:, 0]).double(), atol=1e-9)


@pytest.mark.parametrize("use_cache", [True, False])
def test_wide_beam_finds_the_exact_most_likely_image(use_cache):
    model = tiny((1, 2, 3), levels=2)
    every = all_images(model)
    with torch.no_grad():
        scores = model.log_prob(every).double()
    best = scores.argmax()
    result = model.beam_search(1, beams=64, use_cache=use_cache)
    assert torch.equal(result.codes[0, 0], every[best])
    assert result.log_prob[0, 0].item() == pytest.approx(scores[best].item(), abs=1e-9)
    assert torch.allclose(result.log_prob[0], scores.sort(descending=True).values, atol=1e-9)  # all 64, ranked


def test_beam_search_completes_a_prime_with_the_most_likely_rest():
    model = tiny((1, 3, 2), levels=2, num_labels=2)
    every = all_images(model)
    prime = torch.tensor([[[[1, 0]]]])
    cond = torch.tensor([1])
    with torch.no_grad():
        scores = model.log_prob(every, cond.expand(len(every))).double()
    scores[(every[:, :, :1] != prime).flatten(1).any(1)] = float("-inf")
    result = model.beam_search(1, beams=16, prime=prime, cond=cond)
    assert torch.equal(result.codes[0, 0], every[scores.argmax()])
    assert result.log_prob[0, 0].item() == pytest.approx(scores.max().item(), abs=1e-9)


def test_cache_buffers_have_the_designed_size_and_stay_in_place():
    model = PixelCNN(image_shape=(3, 6, 8), levels=16, hidden=12, layers=3, kernel_size=5, head=12)
    n, half = 2, 2
    with torch.no_grad():
        step, sampler = stepper(model, n, None, model.image_shape)
        cache = sampler.cache
        shapes = {name: tuple(t.shape) for name, t in cache.buffers().items()}
        assert shapes["v_rows0"] == (n, 3, half + 1, 8 + 2 * half)  # last k//2+1 input rows, padded
        assert shapes["v_rows1"] == (n, 12, half + 1, 8 + 2 * half)
        assert "h_row0" not in shapes  # the first horizontal layer reads the codes themselves
        assert shapes["h_row1"] == (n, 8 + half, 12)  # the current row of each later horizontal layer's input
        assert shapes["h_row2"] == (n, 8 + half, 12)
        assert shapes["row_bias"] == (3, n, 8, 24)
        before = {name: (t.data_ptr(), t.shape) for name, t in cache.buffers().items()}
        seq = torch.randint(0, 16, (n, 6 * 8 * 3))
        for t in range(seq.shape[1]):
            step(t, seq)
        assert {name: (t.data_ptr(), t.shape) for name, t in cache.buffers().items()} == before
        assert cache.position.item() == seq.shape[1]


def test_step_cache_reorders_every_batched_buffer():
    cache = StepCache(3, "cpu", torch.float32)
    a = cache.alloc("a", (3, 2))
    b = cache.alloc("b", (4, 3), batch_dim=1)
    shared = cache.register("shared", torch.arange(5.0), batch_dim=None)
    a.copy_(torch.tensor([[0.0, 0], [1, 1], [2, 2]]))
    b.copy_(torch.arange(3.0).expand(4, 3))
    cache.reorder_(torch.tensor([2, 2, 0]))
    assert a[:, 0].tolist() == [2, 2, 0] and b[0].tolist() == [2, 2, 0]
    assert shared.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch size 3"):
        cache.alloc("bad", (2, 5))


def test_bad_decoding_and_prime_arguments_are_clear_errors():
    model = tiny((1, 3, 3), levels=4)
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(UsageError, match=r"temperature must be > 0, got .* \(use greedy=True"):
            model.sample(1, temperature=temperature)
    with pytest.raises(UsageError, match="temperature must be finite"):
        model.sample(1, temperature=float("inf"))
    for temperature in (1e-45, 1e-4):  # logits over it overflow to ties of inf: a greedy choice that ignores them
        with pytest.raises(UsageError, match=r"temperature must be at least 0.001, got .* \(use greedy=True"):
            model.sample(1, temperature=temperature)
    assert model.sample(1, temperature=1e-3, generator=torch.Generator().manual_seed(0)).shape == (1, 1, 3, 3)
    with pytest.raises(UsageError, match="top_p"):
        model.sample(1, top_p=1.5)
    with pytest.raises(UsageError, match=r"integer codes in \[0, 4\)"):
        model.sample(1, prime=torch.full((1, 1, 1, 3), 7))
    with pytest.raises(UsageError, match="prime holds 2 samples"):
        model.sample(1, prime=torch.zeros(2, 1, 1, 3, dtype=torch.long))


def test_sampling_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from tests.test_palette import Terminal

    model = tiny()
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        model.sample(2, progress=True, generator=torch.Generator().manual_seed(0))
        assert ("sampling" in stream.getvalue() and "6/6" in stream.getvalue()) is shown


def test_one_options_value_draws_what_its_keyword_arguments_draw():
    """``SampleOptions`` carries every setting to the engine; keyword arguments replace its fields by name."""
    model = tiny((1, 4, 4), levels=4)
    options = SampleOptions(Decoding(temperature=0.7, top_k=3), use_cache=False)
    draw = lambda **kw: model.sample(3, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(draw(options=options), draw(temperature=0.7, top_k=3, use_cache=False))
    assert torch.equal(draw(options=options, top_k=None), draw(temperature=0.7, use_cache=False))
    assert SampleOptions.of(options, greedy=True, progress=True) == SampleOptions(
        Decoding(temperature=0.7, top_k=3, greedy=True), use_cache=False, progress=True)
    assert SampleOptions.of(options) is options and SampleOptions.of() == SampleOptions()
    with pytest.raises(TypeError, match="unknown sampling setting.*min_p"):
        model.sample(1, min_p=0.1)
    with pytest.raises(UsageError, match="top_p must be in"):
        SampleOptions.of(top_p=2.0)


def test_a_new_setting_is_a_field_and_reaches_the_command_line_from_there():
    """The ``sample`` options are the settings' fields that carry a help: a field added to a settings class is an
    option, parsed back into the value that travels to the engine, with no other edit."""
    import argparse
    from dataclasses import dataclass

    from arcore.cli.launch import add_sample_options, sample_options
    from arcore.sampling.decoding import option

    @dataclass(frozen=True)
    class WithMinP(SampleOptions):
        min_p: float = option(0.0, "drop codes below this fraction of the most likely one's probability", type=float)

    parser = argparse.ArgumentParser()
    add_sample_options(parser, WithMinP)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert {"--temperature", "--top-k", "--top-p", "--greedy", "--no-cache", "--compile", "--min-p"} <= flags
    parsed = sample_options(parser.parse_args(["--min-p", "0.2", "--top-k", "5", "--no-cache"]), WithMinP,
                            progress=True)
    assert parsed == WithMinP(Decoding(top_k=5), use_cache=False, progress=True, min_p=0.2)
    assert sample_options(parser.parse_args([]), WithMinP) == WithMinP()


def test_truncates_says_whether_a_draw_can_leave_codes_out():
    assert Decoding(top_p=0.9).truncates(2) and Decoding(top_k=3).truncates(4)
    assert not Decoding(top_k=4).truncates(4) and not Decoding(top_p=1.0).truncates(2)
    assert not Decoding(greedy=True, top_p=0.9).truncates(2) and not Decoding().truncates(256)
