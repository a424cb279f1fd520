"""Shared core: the sampling engine, caches, decoding, base LightningModule, callbacks.

The public names below load on first use (a module ``__getattr__``), so ``import arcore`` loads nothing heavy,
``from arcore import sample`` loads the engine and torch alone, and only :class:`AutoregressiveModule` brings in
PyTorch Lightning (never its command-line part, nor wandb).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arcore.lazy import lazy_names

if TYPE_CHECKING:
    from arcore.cache import Sampler, StepCache
    from arcore.decoding import Decoding, SampleOptions
    from arcore.engine import BeamResult, beam_search, sample
    from arcore.errors import UsageError
    from arcore.module import AutoregressiveModule

_HOMES = {"AutoregressiveModule": "arcore.module", "sample": "arcore.engine", "beam_search": "arcore.engine",
          "BeamResult": "arcore.engine", "StepCache": "arcore.cache", "Sampler": "arcore.cache",
          "Decoding": "arcore.decoding", "SampleOptions": "arcore.decoding", "UsageError": "arcore.errors"}

__all__ = [
    "AutoregressiveModule",
    "BeamResult",
    "Decoding",
    "SampleOptions",
    "Sampler",
    "StepCache",
    "UsageError",
    "beam_search",
    "sample",
]


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
