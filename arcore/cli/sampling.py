"""What a ``sample`` command sets up and checks before drawing (:mod:`arcore.sample_cli` builds on it): the
device, the seeded generator, the model of ``--ckpt``, the output path and the memory the samples need."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from arcore.errors import UsageError
from arcore.files import check_output
from arcore.module import AutoregressiveModule, load_checkpoint


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return device


def output_path(path: str | Path, suffix: str) -> Path:
    """Check an output file name before any work (:func:`arcore.files.check_output`); creates nothing."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UsageError(f"--out must name a {suffix} file, got {path}")
    return check_output(out)


def check_fits_in_memory(num_samples: int, codes_per_sample: int, bytes_per_code: int = 8) -> None:
    """Refuse a request that could not fit in this machine's memory: its codes (int64, all kept until written) and
    whatever else the draw holds per code (``bytes_per_code``: a vocoder's conditioning, one row per sample)."""
    need = num_samples * codes_per_sample * bytes_per_code
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise UsageError(f"{num_samples:,} samples of {codes_per_sample:,} codes need {need / 2 ** 30:,.1f} GiB, more "
                         f"than this machine's {have / 2 ** 30:,.0f} GiB of memory: ask for fewer or shorter samples")


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def load_for_sampling(ckpt: str, package: str, device: torch.device) -> AutoregressiveModule:
    model = load_checkpoint(ckpt, package, map_location=device)
    return model.to(device).eval()
