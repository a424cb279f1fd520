"""Autoregressive image models: Gated PixelCNN and a small image GPT.

``pixelgen.load(path)`` gives the trained model in a ``.ckpt`` of ``pixelgen fit`` or a ``.safetensors`` of
``pixelgen export``, ready to ``sample``, ``beam_search`` or score with ``log_prob`` (README, "From Python").

The public names load on first use (a module ``__getattr__``, as in :mod:`arcore`), so ``import pixelgen`` and the
``pixelgen`` command's help load neither torch nor Lightning. Each model module registers its class where it is
defined (:func:`arcore.checkpoint.register_model`); :func:`register_models` imports them all, before a file that
may name any of them is read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from arcore.lazy import lazy_names

if TYPE_CHECKING:
    import torch

    from arcore.module import AutoregressiveModule
    from pixelgen.data import ImageDataModule
    from pixelgen.igpt import ImageGPT
    from pixelgen.pixelcnn import PixelCNN

__all__ = ["ImageDataModule", "ImageGPT", "PixelCNN", "load"]

_HOMES = {"ImageDataModule": "pixelgen.data", "ImageGPT": "pixelgen.igpt", "PixelCNN": "pixelgen.pixelcnn"}
MODEL_MODULES = ("pixelgen.pixelcnn", "pixelgen.igpt")
"""The modules whose model classes the files of pixelgen may name."""


def register_models() -> None:
    """Import every model module of pixelgen, which registers its class."""
    for module in MODEL_MODULES:
        importlib.import_module(module)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> AutoregressiveModule:
    """The model in a checkpoint of ``pixelgen fit`` or a weights file of ``pixelgen export``, of the class the file
    records, on ``map_location``, in eval mode. Nothing in the file runs; a damaged file, or one of ``wavegen``, is
    an :class:`arcore.UsageError`."""
    from arcore.module import load_checkpoint

    register_models()
    return load_checkpoint(path, "pixelgen", map_location, command=None).eval()


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
