"""A quiet console: the tools print their own progress, results and errors, not the third-party lines that tell a
user nothing they can act on. Each is filtered where it comes from, by its module and its message, so every other
warning of the same libraries still shows:

- Lightning's tip advertising its ``litlogger`` service, logged by its trainer at every start;
- the ``LeafSpec`` deprecation that Lightning's own ``utilities._pytree`` triggers in torch at every fit;
- Lightning's hint to set ``ModelCheckpoint(save_last=True)`` when ``ckpt_path: last`` finds nothing to resume,
  which every first run of a config does, and which the base config's checkpoint already sets;
- W&B's warning that the ``anonymous`` setting has no effect, which Lightning's ``WandbLogger`` causes by passing
  ``anonymous=None`` to ``wandb.init`` (:func:`quiet_wandb_loggers`).

:func:`install` runs when :mod:`arcore.training.module` imports Lightning, so the tools, the Python API and the tests
get it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Any

LIGHTNING_LOG = "pytorch_lightning.utilities.rank_zero"  # the logger of Lightning's rank_zero_info
WARNINGS = (  # (message regex, module regex, category) of each warning filtered out
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree", FutureWarning),
    (r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint available',
     r"pytorch_lightning\.trainer\.connectors\.checkpoint_connector", UserWarning),
)


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's ``💡 Tip:`` lines (an advertisement for its cloud logger); keeps every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_FILTER = _NoAdvertisement()


def install() -> None:
    """Filter out the lines listed in the module docstring (idempotent: a filter already in place is not added
    twice)."""
    for message, module, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logger = logging.getLogger(LIGHTNING_LOG)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def quiet_wandb_loggers(loggers: Iterable[Any]) -> None:
    """Leave W&B's ``anonymous`` setting unset in every Lightning ``WandbLogger`` of ``loggers`` that has not
    started its run yet (:func:`arcore.training.lightning_private.wandb_init_settings`; W&B warns about
    ``anonymous=None`` but not about an unset one, and ignores the setting either way)."""
    from pytorch_lightning.loggers import WandbLogger

    from arcore.training.lightning_private import wandb_init_settings

    for logger in loggers:
        init = wandb_init_settings(logger) if isinstance(logger, WandbLogger) else None
        if isinstance(init, dict) and init.get("anonymous", False) is None:
            del init["anonymous"]
