"""WaveNet over 8-bit mu-law audio on the shared autoregressive engine (``arcore``).

``wavegen.load(path)`` gives the trained model in a ``.ckpt`` of ``wavegen fit`` or a ``.safetensors`` of
``wavegen export``, ready to ``sample`` (conditioned through :class:`AudioCond`), ``resynthesize`` or score.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arcore.checkpoint import register_model
from arcore.module import AutoregressiveModule, load_checkpoint
from wavegen.data import AudioDataModule
from wavegen.wavenet import AudioCond, WaveNet

__all__ = ["AudioCond", "AudioDataModule", "WaveNet", "load"]

# the model class wavegen checkpoints and weights files may name (an allow-list: arcore.checkpoint.MODELS)
# the model class that wavegen checkpoints and weights files may name (arcore.checkpoint.MODELS)
register_model("wavegen", WaveNet)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> AutoregressiveModule:
    """The model in a checkpoint of ``wavegen fit`` or a weights file of ``wavegen export``, of the class the file
    records, on ``map_location``, in eval mode. Nothing in the file runs; a damaged file, or one of ``pixelgen``, is
    an :class:`arcore.UsageError`."""
    return load_checkpoint(path, "wavegen", map_location, command=None).eval()
