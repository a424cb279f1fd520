"""Autoregressive image models: Gated PixelCNN and a small image GPT.

``pixelgen.load(path)`` gives the trained model in a ``.ckpt`` of ``pixelgen fit`` or a ``.safetensors`` of
``pixelgen export``, ready to ``sample``, ``beam_search`` or score with ``log_prob`` (README, "From Python").

The public names load on first use (a module ``__getattr__``, as in :mod:`arcore`), so ``import pixelgen`` and the
``pixelgen`` command's help load neither torch nor Lightning. The models are declared in the entry-point group
``pixelgen.models`` (``pyproject.toml``), where a model of another installed distribution joins them
(:mod:`arcore.files.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from arcore.lazy import lazy_names

if TYPE_CHECKING:
    import torch

    from arcore.contract import Model
    from pixelgen.data import ImageDataModule
    from pixelgen.igpt import ImageGPT
    from pixelgen.pixelcnn import PixelCNN

__all__ = ["ImageDataModule", "ImageGPT", "PixelCNN", "load"]

_HOMES = {"ImageDataModule": "pixelgen.data", "ImageGPT": "pixelgen.igpt", "PixelCNN": "pixelgen.pixelcnn"}


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Model:
    """The model in a checkpoint of ``pixelgen fit`` or a weights file of ``pixelgen export``, of the class the file
    records, on ``map_location``, in eval mode. Nothing in the file runs; a damaged file, or one of ``wavegen``, is
    an :class:`arcore.UsageError`.

    Args:
        path: a ``.ckpt`` of ``pixelgen fit`` or a ``.safetensors`` of ``pixelgen export``.
        map_location: where the weights go (``cpu``, ``cuda``).
    """
    from arcore.files.registry import load_checkpoint

    return load_checkpoint(path, "pixelgen", map_location, command=None).eval()


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
