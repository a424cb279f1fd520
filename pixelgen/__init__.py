"""Autoregressive image models: Gated PixelCNN and a small image GPT.

``pixelgen.load(path)`` gives the trained model in a ``.ckpt`` of ``pixelgen fit`` or a ``.safetensors`` of
``pixelgen export``, ready to ``sample``, ``beam_search`` or score with ``log_prob`` (README, "From Python").
"""

from __future__ import annotations

from pathlib import Path

import torch

from arcore.checkpoint import register_model
from arcore.module import AutoregressiveModule, load_checkpoint
from pixelgen.data import ImageDataModule
from pixelgen.igpt import ImageGPT
from pixelgen.pixelcnn import PixelCNN

__all__ = ["ImageDataModule", "ImageGPT", "PixelCNN", "load"]

# the model classes pixelgen checkpoints and weights files may name (an allow-list: arcore.checkpoint.MODELS)
# the model classes that pixelgen checkpoints and weights files may name (arcore.checkpoint.MODELS)
register_model("pixelgen", PixelCNN)
register_model("pixelgen", ImageGPT)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> AutoregressiveModule:
    """The model in a checkpoint of ``pixelgen fit`` or a weights file of ``pixelgen export``, of the class the file
    records, on ``map_location``, in eval mode. Nothing in the file runs; a damaged file, or one of ``wavegen``, is
    an :class:`arcore.UsageError`."""
    return load_checkpoint(path, "pixelgen", map_location, command=None).eval()
