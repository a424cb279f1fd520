"""Media writers: image grids, 16-bit WAV clips, spectrogram pictures (also of clips shorter than one FFT)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from arcore.files.media import image_grid, save_wav, spectrogram_image


def test_image_grid_tiles_grey_and_colour_images():
    grey = torch.zeros(5, 1, 4, 6)
    grey[2] = 1.0
    grid = image_grid(grey, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 15:21] == 255).all() and (grid[1:5, 1:7] == 0).all()  # third tile white, first black
    colour = torch.rand(4, 3, 5, 5)
    assert image_grid(colour, pad=0).shape == (10, 10, 3)


def test_wav_round_trip_is_16_bit_pcm(tmp_path):
    clip = torch.sin(torch.linspace(0, 200, 8000)) * 0.5
    path = save_wav(clip, 8000, tmp_path / "a" / "tone.wav")
    data, rate = soundfile.read(path)
    assert rate == 8000 and soundfile.info(path).subtype == "PCM_16"
    assert np.abs(data - clip.numpy()).max() < 1 / 2 ** 14


def test_spectrogram_of_long_and_very_short_clips(tmp_path):
    for samples in (8000, 100):
        path = spectrogram_image(torch.randn(samples) * 0.1, 8000, tmp_path / f"spec{samples}.png")
        width, height = Image.open(path).size
        assert height == 240 and width >= 400


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 2500.0])
def test_a_tone_is_one_bright_band_at_its_mel_row(frequency, tmp_path):
    """Low frequencies at the bottom: a tone's band sits at the row of its mel band (80 bands up to 4 kHz, on the
    HTK mel scale, over 240 rows), and the rows away from it are dark."""
    t = torch.arange(16000) / 8000
    path = spectrogram_image(0.5 * torch.sin(2 * math.pi * frequency * t), 8000, tmp_path / "tone.png")
    rows = np.asarray(Image.open(path).convert("RGB"), dtype=float)[..., 0].mean(axis=1)  # red: sqrt of the level

    def mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    band = mel(frequency) / mel(4000) * 81 - 1  # the mel filter centred on the tone, counted from the bottom
    expected_row = (80 - 0.5 - band) * 240 / 80
    assert abs(int(rows.argmax()) - expected_row) <= 3
    far = np.abs(np.arange(240) - expected_row) > 30
    assert rows[far].max() < 0.5 * rows.max()
