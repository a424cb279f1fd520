"""WaveNet over 8-bit mu-law audio on the shared autoregressive engine (``arcore``).

``wavegen.load(path)`` gives the trained model in a ``.ckpt`` of ``wavegen fit`` or a ``.safetensors`` of
``wavegen export``, ready to ``sample`` (conditioned through :class:`AudioCond`), ``resynthesize`` or score.
:func:`mel_griffin_lim` (and torchaudio's :func:`least_squares_griffin_lim`) turn log-mel frames into audio with no
model, and :class:`MelFrames` computes the frames of any layout, as the vocoders do::

    frames = wavegen.MelFrames(sample_rate=8000, n_mels=20, hop_length=80)
    audio = wavegen.mel_griffin_lim(frames.log_mel(clip), 8000, 80, length=len(clip))  # or frames.resynthesize(clip)

The public names load on first use (a module ``__getattr__``, as in :mod:`arcore`), so ``import wavegen`` and the
``wavegen`` command's help load neither torch nor Lightning. The models are declared in the entry-point group
``wavegen.models`` (``pyproject.toml``), where a model of another installed distribution joins them
(:mod:`arcore.files.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from arcore.lazy import lazy_names

if TYPE_CHECKING:
    import torch

    from arcore.contract import Model
    from wavegen.data import AudioDataModule
    from wavegen.griffinlim import MelFrames, least_squares_griffin_lim, mel_griffin_lim
    from wavegen.wavenet import AudioCond, WaveNet

__all__ = ["AudioCond", "AudioDataModule", "MelFrames", "WaveNet", "least_squares_griffin_lim", "load",
           "mel_griffin_lim"]

_HOMES = {"AudioCond": "wavegen.wavenet", "AudioDataModule": "wavegen.data", "WaveNet": "wavegen.wavenet",
          "MelFrames": "wavegen.griffinlim", "mel_griffin_lim": "wavegen.griffinlim",
          "least_squares_griffin_lim": "wavegen.griffinlim"}


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Model:
    """The model in a checkpoint of ``wavegen fit`` or a weights file of ``wavegen export``, of the class the file
    records, on ``map_location``, in eval mode. Nothing in the file runs; a damaged file, or one of ``pixelgen``, is
    an :class:`arcore.UsageError`.

    Args:
        path: a ``.ckpt`` of ``wavegen fit`` or a ``.safetensors`` of ``wavegen export``.
        map_location: where the weights go (``cpu``, ``cuda``).
    """
    from arcore.files.registry import load_checkpoint

    return load_checkpoint(path, "wavegen", map_location, command=None).eval()


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
