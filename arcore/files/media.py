"""What the models make, as typed values, and writing it: PNG grids of images, 16-bit PCM WAV clips and
spectrogram pictures, UTF-8 text, each written atomically (:func:`arcore.files.atomic.atomic_write`): a failed write
leaves the earlier file whole.

A model's ``render_samples(codes)`` returns one of :class:`Images`, :class:`Audio` or :class:`Text` (together
:data:`Media`, defined with the model's contract in :mod:`arcore.contract` and importable from here too).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arcore.contract import Audio, Images, Media, Text
from arcore.files.atomic import write_atomically


SUFFIXES: dict[type, str] = {Images: ".png", Audio: ".wav", Text: ".txt"}
"""The file each kind of media is written as."""


def interleave(first: Media, second: Media) -> Media:
    """Two media values of the same kind and length as one: ``first[0], second[0], first[1], ...``."""
    if isinstance(first, Images) and isinstance(second, Images):
        return Images(torch.stack([first.pixels, second.pixels], dim=1).flatten(0, 1))
    if isinstance(first, Audio) and isinstance(second, Audio):
        return Audio(torch.stack([first.clips, second.clips], dim=1).flatten(0, 1), first.sample_rate)
    if isinstance(first, Text) and isinstance(second, Text):
        return Text(tuple(text for pair in zip(first.texts, second.texts) for text in pair))
    raise TypeError(f"cannot pair {type(first).__name__} with {type(second).__name__}")


def save_media(media: Media, path: str | Path) -> Path:
    """Write pictures as one PNG grid (:func:`save_image_grid`), texts as one text file (:func:`save_text`); audio,
    one WAV per clip, goes through :func:`save_wav` instead.

    Args:
        media: what a model rendered.
        path: the file to write (``.png`` or ``.txt``, :data:`SUFFIXES`).
    """
    if isinstance(media, Images):
        return save_image_grid(media.pixels, path)
    if isinstance(media, Text):
        return save_text(media, path)
    raise TypeError("audio is written one WAV per clip (save_wav), not as one file")


def save_text(text: Text, path: str | Path) -> Path:
    """Write the strings of ``text`` as UTF-8, one block per sample, separated by a line of dashes."""
    path = Path(path)
    write_atomically(path, "\n----\n".join(text.texts).encode() + b"\n")
    return path


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile float images ``[B, C, H, W]`` in [0, 1] (C = 1 or 3) into one uint8 ``[H', W', 3]`` array."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got {list(images.shape)}")
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = torch.ones(3, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a PNG grid of ``images`` (see :func:`image_grid`) and return its path."""
    path = Path(path)
    _write_png(Image.fromarray(image_grid(images, nrow)), path)
    return path


def save_wav(clip: torch.Tensor, sample_rate: int, path: str | Path) -> Path:
    """Write a mono float clip in [-1, 1] as 16-bit PCM WAV."""
    import soundfile

    path = Path(path)
    encoded = io.BytesIO()  # encoded in memory, so a failed write is the file system's plain OSError
    soundfile.write(encoded, clip.detach().float().cpu().clamp(-1, 1).numpy(), int(sample_rate), subtype="PCM_16",
                    format="WAV")
    write_atomically(path, encoded.getvalue())
    return path


def spectrogram_image(clip: torch.Tensor, sample_rate: int, path: str | Path, n_mels: int = 80) -> Path:
    """Save a log-mel spectrogram of a mono clip ``[T]`` as a PNG (low frequencies at the bottom); clips ``[N, T]``
    (e.g. an original and its resynthesis) are drawn one above the other, each on its own 80 dB scale."""
    import torchaudio

    n_fft = 1024 if sample_rate > 12000 else 512
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels,
                                               pad_mode="constant")  # clips shorter than n_fft stay valid
    spec = mel(clip.detach().float().cpu().reshape(-1, clip.shape[-1])).clamp(min=1e-10).log10()  # [N, M, F]
    spec = (spec - spec.amax(dim=(1, 2), keepdim=True) + 8.0).clamp(min=0) / 8.0  # 80 dB of range
    heat = torch.stack([spec.sqrt(), spec ** 1.5, 0.3 + 0.7 * spec * (1 - spec)], dim=1).flip(2)  # [N, 3, M, F]
    rows = [Image.fromarray((h.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            .resize((max(h.shape[2], 400), 240)) for h in heat]
    picture = Image.new("RGB", (rows[0].width, 240 * len(rows) + 4 * (len(rows) - 1)), "white")
    for i, row in enumerate(rows):
        picture.paste(row, (0, i * 244))
    _write_png(picture, Path(path))
    return Path(path)


def _write_png(picture: Image.Image, path: Path) -> None:
    """Encode ``picture`` as PNG in memory, then write it atomically."""
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue())
