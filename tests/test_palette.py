"""k-means palette: round-trip error on generated images, exact palette colours, reproducible and cached fits."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from arcore.errors import UsageError
from pixelgen import palette as pal


def patch_images(colours: torch.Tensor, n: int = 24, size: int = 16, noise: float = 3.0, seed: int = 0
                 ) -> torch.Tensor:
    """uint8 images ``[n, C, size, size]`` tiled with 4x4 patches, each one of ``colours`` plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(colours), (n, size // 4, size // 4), generator=gen)
    clean = colours[which].repeat_interleave(4, 1).repeat_interleave(4, 2).movedim(-1, 1).float()
    noisy = clean + noise * torch.randn(clean.shape, generator=gen)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def gradient_images(n: int = 16, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 RGB images of random smooth colour gradients: a continuum of colours, no natural clusters."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    start, slope_y, slope_x = (torch.rand(3, n, 3, 1, 1, generator=gen) * torch.tensor([150.0, 100.0, 100.0])
                               .view(3, 1, 1, 1, 1))
    images = start + slope_y * ramp.view(1, 1, size, 1) + slope_x * ramp.view(1, 1, 1, size)
    return images.round().clamp(0, 255).to(torch.uint8)


COLOURS = torch.tensor([[0, 0, 0], [250, 250, 250], [200, 30, 30], [30, 200, 30], [30, 30, 200],
                        [200, 200, 30], [128, 128, 128], [60, 120, 180]], dtype=torch.float32)


def test_round_trip_error_of_clustered_colours_is_the_noise(tmp_path):
    images = patch_images(COLOURS, noise=3.0)
    palette = pal.fit_palette(pal.pixel_rows(images), len(COLOURS), cache_dir=tmp_path)
    # the noise is the only error left when every cluster is found: RMSE ~ 3 (clipped at 0 and 255: a bit less)
    assert pal.reconstruction_rmse(images, palette) < 3.5
    # and each true colour has a palette colour within a few noise widths of its centre
    assert torch.cdist(COLOURS, palette).min(dim=1).values.max() < 3.0


def test_round_trip_error_shrinks_with_palette_size(tmp_path):
    images = gradient_images()
    errors = [pal.reconstruction_rmse(images, pal.fit_palette(pal.pixel_rows(images), size, cache_dir=tmp_path))
              for size in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2]
    # k-means distortion in d = 3 dimensions falls like K^(-2/3): 16x the colours, ~0.4x the RMSE
    assert errors[2] < 0.6 * errors[0]


def test_grey_palette_round_trip(tmp_path):
    images = (torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)).repeat(2, 1, 1, 1)
    palette = pal.fit_palette(pal.pixel_rows(images), 16, cache_dir=tmp_path)
    assert palette.shape == (16, 1)
    # 16 levels evenly spread over 256 values: the best possible RMSE is 16 / sqrt(12) = 4.6
    assert pal.reconstruction_rmse(images, palette) < 6.0
    assert torch.all(palette[1:, 0] > palette[:-1, 0])  # sorted: token 0 is the darkest


def test_palette_colours_encode_to_their_own_index(tmp_path):
    images = gradient_images()
    palette = pal.fit_palette(pal.pixel_rows(images), 32, cache_dir=tmp_path)
    as_image = palette.t().reshape(1, 3, 4, 8)  # the 32 colours laid out as one image
    tokens = pal.encode(as_image, palette)
    assert torch.equal(tokens.flatten(), torch.arange(32))
    assert torch.equal(pal.decode(tokens, palette), as_image)


def test_fit_is_reproducible_from_the_seed(tmp_path):
    pixels = pal.pixel_rows(gradient_images())
    first = pal.fit_palette(pixels, 16, seed=3, cache_dir=tmp_path / "a")
    again = pal.fit_palette(pixels, 16, seed=3, cache_dir=tmp_path / "b")  # a fresh fit, not the cached one
    other = pal.fit_palette(pixels, 16, seed=4, cache_dir=tmp_path / "c")
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_fit_is_cached_on_disk_and_keyed_by_data_and_settings(tmp_path, monkeypatch):
    pixels = pal.pixel_rows(gradient_images())
    fitted = pal.fit_palette(pixels, 8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("palette-8-*.pt"))) == 1

    def no_refit(*args, **kwargs):
        raise AssertionError("refitted although the cache holds this fit")

    monkeypatch.setattr(pal, "minibatch_kmeans", no_refit)
    assert torch.equal(pal.fit_palette(pixels, 8, cache_dir=tmp_path), fitted)
    for changed in ({"steps": 10}, {"seed": 1}):
        with pytest.raises(AssertionError, match="refitted"):
            pal.fit_palette(pixels, 8, cache_dir=tmp_path, **changed)
    with pytest.raises(AssertionError, match="refitted"):
        pal.fit_palette(pixels.flip(0), 8, cache_dir=tmp_path)


def test_too_few_colours_and_bad_shapes_are_usage_errors(tmp_path):
    two_colours = patch_images(COLOURS[:2], noise=0.0)
    with pytest.raises(UsageError, match="only 2 distinct colours"):
        pal.fit_palette(pal.pixel_rows(two_colours), 4, cache_dir=tmp_path)
    with pytest.raises(UsageError, match=r"rows \[P, 1 or 3\]"):
        pal.fit_palette(two_colours, 4, cache_dir=tmp_path)
    with pytest.raises(UsageError, match=r"\[B, 3, H, W\]"):
        pal.encode(torch.zeros(1, 1, 2, 2), COLOURS)


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_palette_fit_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    pixels = pal.pixel_rows(patch_images(COLOURS))
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        pal.minibatch_kmeans(pixels, 8, steps=5)
        assert ("palette k-means, 8 colours" in stream.getvalue()) is shown
        assert ("5/5" in stream.getvalue()) is shown
