"""A k-means colour palette: iGPT's reduced vocabulary of pixel colours (Chen et al. 2020 use 512 clusters of RGB).

The palette is fitted once on training pixels with mini-batch k-means (Sculley 2010) started from k-means++
(Arthur & Vassilvitskii 2007), everything drawn from one seeded ``torch.Generator`` so a fit is reproducible. A fit
is cached on disk under a key made of the pixels' bytes and the settings, so a second run (or a resumed one) reuses
it instead of refitting. Colours are in 8-bit units (floats in [0, 255]) and sorted by brightness, so token 0 is
the darkest colour. Encoding maps each pixel to its nearest colour (squared RGB distance, float64); decoding maps
tokens back to colours.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from arcore.errors import UsageError

FIT_VERSION = 1  # part of the cache key: bump when the fitting algorithm changes
_ENCODE_CHUNK = 8192  # pixels per distance matrix in encode (8192 x 512 float64 = 32 MB)


def default_cache_dir() -> Path:
    """Where fitted palettes are kept: ``$PIXELGEN_CACHE`` or ``~/.cache/pixelgen``, subfolder ``palettes``."""
    root = os.environ.get("PIXELGEN_CACHE") or Path.home() / ".cache" / "pixelgen"
    return Path(root) / "palettes"


def pixel_rows(images: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` to one row per pixel, ``[N * H * W, C]`` (same dtype)."""
    return images.movedim(1, -1).reshape(-1, images.shape[1])


def nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (squared Euclidean distance, float64) for each row of ``points`` ``[P, C]``."""
    centres = centres.to(torch.float64)
    norms = centres.square().sum(dim=1)
    out = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], _ENCODE_CHUNK):
        chunk = points[start: start + _ENCODE_CHUNK].to(torch.float64)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every centre of a row
        out[start: start + _ENCODE_CHUNK] = torch.addmm(norms, chunk, centres.t(), alpha=-2.0).argmin(dim=1)
    return out


def kmeans_plus_plus(points: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` initial centres drawn from ``points`` ``[P, C]`` (float64), each with probability ~ squared distance
    to the nearest centre already drawn, so the start covers the colour space."""
    centres = torch.empty(size, points.shape[1], dtype=torch.float64)
    centres[0] = points[torch.randint(len(points), (1,), generator=generator)]
    closest = (points - centres[0]).square().sum(dim=1)
    for k in range(1, size):
        if closest.sum() <= 0:
            raise UsageError(f"the pixels hold only {k} distinct colours, fewer than the palette size {size}: "
                             f"use a palette of at most {k} colours")
        centres[k] = points[torch.multinomial(closest, 1, generator=generator)]
        closest = torch.minimum(closest, (points - centres[k]).square().sum(dim=1))
    return centres


def minibatch_kmeans(pixels: torch.Tensor, size: int, *, seed: int = 0, steps: int = 300, batch_size: int = 4096,
                     init_sample: int = 20000) -> torch.Tensor:
    """Mini-batch k-means on pixel rows ``[P, C]`` (8-bit values): ``[size, C]`` float64 centres, sorted by
    brightness. Each centre moves towards the mean of the pixels assigned to it with step 1 / (pixels seen).
    The steps show as a progress bar on a terminal (none when stderr is not one, e.g. in logs)."""
    generator = torch.Generator().manual_seed(seed)
    start = pixels[torch.randint(len(pixels), (init_sample,), generator=generator)].to(torch.float64)
    centres = kmeans_plus_plus(start, size, generator)
    seen = torch.zeros(size, dtype=torch.float64)
    for _ in tqdm(range(steps), desc=f"palette k-means, {size} colours", unit="step", disable=None):
        batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)].to(torch.float64)
        assigned = nearest(batch, centres)
        counts = torch.bincount(assigned, minlength=size).to(torch.float64)
        sums = torch.zeros_like(centres).index_add_(0, assigned, batch)
        seen += counts
        hit = counts > 0
        # per-centre learning rate 1/seen, applied to the batch mean: c += n_b / seen * (mean_b - c)
        centres[hit] += (sums[hit] - counts[hit, None] * centres[hit]) / seen[hit, None]
    return centres[centres.sum(dim=1).argsort(stable=True)]


def fit_palette(pixels: torch.Tensor, size: int, *, seed: int = 0, steps: int = 300, batch_size: int = 4096,
                cache_dir: str | Path | None = None) -> torch.Tensor:
    """The ``[size, C]`` float32 palette of pixel rows ``[P, C]`` (8-bit values), from the disk cache when this
    data and these settings were fitted before (``cache_dir=None``: :func:`default_cache_dir`)."""
    if pixels.dim() != 2 or pixels.shape[1] not in (1, 3):
        raise UsageError(f"pixels must be rows [P, 1 or 3], got {list(pixels.shape)}")
    if size < 2:
        raise UsageError(f"the palette needs at least 2 colours, got {size}")
    if len(pixels) < size:
        raise UsageError(f"{len(pixels)} pixels cannot make a palette of {size} colours")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((FIT_VERSION, size, seed, steps, batch_size, str(pixels.dtype), tuple(pixels.shape)))
                  .encode())
    digest.update(pixels.contiguous().cpu().numpy().tobytes())
    path = Path(cache_dir or default_cache_dir()) / f"palette-{size}-{digest.hexdigest()}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    palette = minibatch_kmeans(pixels.cpu(), size, seed=seed, steps=steps, batch_size=batch_size).float()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(palette, partial)
        partial.replace(path)  # atomic: a parallel run never reads half a file
    except OSError as exc:  # an unwritable cache costs a refit next time, not this run
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        print(f"pixelgen: warning: the fitted palette was not cached in {path.parent} ({exc.strerror or exc}): set "
              f"PIXELGEN_CACHE (or the model's palette_cache) to a folder you can write to", file=sys.stderr)
    return palette


def encode(images: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` (8-bit values, any dtype) to palette tokens ``[B, H, W]`` (nearest colour)."""
    if images.dim() != 4 or images.shape[1] != palette.shape[1]:
        raise UsageError(f"images must be [B, {palette.shape[1]}, H, W] for this palette, got {list(images.shape)}")
    b, _, h, w = images.shape
    return nearest(pixel_rows(images), palette).view(b, h, w)


def decode(tokens: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Palette tokens ``[B, H, W]`` to images ``[B, C, H, W]`` in 8-bit units (float)."""
    return palette[tokens].movedim(-1, 1)


def reconstruction_rmse(images: torch.Tensor, palette: torch.Tensor) -> float:
    """Root-mean-square error, in 8-bit units per sub-pixel, of images after a round trip through the palette."""
    restored = decode(encode(images, palette), palette)
    return (restored.double() - images.double()).square().mean().sqrt().item()
