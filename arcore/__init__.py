"""Shared core: the sampling engine, caches, decoding, base LightningModule, callbacks.

The public names below load on first use (a module ``__getattr__``), so ``import arcore`` loads nothing heavy,
``from arcore import sample`` loads the engine and torch alone, and only :class:`AutoregressiveModule` brings in
PyTorch Lightning (never its command-line part, nor wandb).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from arcore.lazy import lazy_names, moved_modules

if TYPE_CHECKING:
    from arcore.errors import UsageError
    from arcore.sampling.cache import Sampler, StepCache
    from arcore.sampling.decoding import Decoding, SampleOptions
    from arcore.sampling.engine import BeamResult, beam_search, sample
    from arcore.training.module import AutoregressiveModule

_HOMES = {"AutoregressiveModule": "arcore.training.module", "sample": "arcore.sampling.engine",
          "beam_search": "arcore.sampling.engine", "BeamResult": "arcore.sampling.engine",
          "StepCache": "arcore.sampling.cache", "Sampler": "arcore.sampling.cache",
          "Decoding": "arcore.sampling.decoding", "SampleOptions": "arcore.sampling.decoding",
          "UsageError": "arcore.errors"}

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


MOVED = {f"arcore.{old}": f"arcore.{new}" for old, new in (
    ("engine", "sampling.engine"), ("cache", "sampling.cache"), ("decoding", "sampling.decoding"),
    ("native", "sampling.native"), ("module", "training.module"), ("data", "training.data"),
    ("callbacks", "training.callbacks"), ("stopping", "training.stopping"), ("threads", "training.threads"),
    ("quiet", "training.quiet"), ("lightning_private", "training.lightning_private"),
    ("wandb_mode", "training.wandb_mode"), ("checkpoint", "files.checkpoint"), ("weights", "files.weights"),
    ("media", "files.media"), ("launch", "cli.launch"), ("sample_cli", "cli.sample"), ("chunks", "cli.chunks"),
    ("precision", "training.precision"), ("cli.sampling", "cli.sample"))}
"""The modules' paths before arcore was laid out by job, to their paths now: still importable
(:func:`arcore.lazy.moved_modules`), so configs naming ``arcore.callbacks.EMA`` keep working. ``arcore.files``, a
module then, is the package of the file modules now; the names it held are found there still."""

moved_modules(MOVED)
__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
