"""Every place where this project reaches into PyTorch Lightning's private API, in one module.

Lightning's public API lacks a few things the runs need: a hook before LightningCLI reads ``ckpt_path`` (safe
loading, refusing a mismatched resume), one after a subcommand ran (``last.ckpt`` at the final step, recording test
metrics), writing ``last.ckpt`` between validations, finding the checkpoint ``ckpt_path: last`` resumes, the trainer
a module is attached to (``module.trainer`` raises when there is none), the average model of ``WeightAveraging``
and the settings a ``WandbLogger`` will pass to ``wandb.init``. Each is a private name of the pinned version
(:data:`PINNED`), used here and nowhere else; the names are listed in :data:`TOUCHED`, and
``tests/test_lightning_private.py`` checks that the installed Lightning is the pinned one and still has each of
them, so an upgrade fails there first, in one place, not somewhere in a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import WandbLogger

if TYPE_CHECKING:
    from torch import nn

PINNED = "2.6.6"
"""The Lightning version these private names were read from (``pyproject.toml`` pins the same)."""

TOUCHED = {
    LightningCLI: ("_parse_ckpt_path", "_run_subcommand"),
    ModelCheckpoint: ("_find_last_checkpoints", "_save_last_checkpoint", "_monitor_candidates",
                      "_last_global_step_saved"),
    pl.LightningModule: ("_trainer",),
    WeightAveraging: ("_average_model",),
    WandbLogger: ("_wandb_init",),
}
"""The private methods and attributes used here, by the class that holds them."""


class HookedCLI(LightningCLI):
    """LightningCLI with two public hooks on its private steps: :meth:`parse_ckpt_path` (before ``ckpt_path`` is
    read and the model maybe rebuilt from a checkpoint's settings) and :meth:`run_subcommand` (the trainer call of
    ``fit``, ``validate``, ``test`` or ``predict``). A subclass overrides them and calls ``super()`` for
    Lightning's own behaviour."""

    def parse_ckpt_path(self) -> None:
        """Lightning's reading of the subcommand's ``ckpt_path`` (its ``_parse_ckpt_path``)."""
        super()._parse_ckpt_path()

    def run_subcommand(self, subcommand: str) -> None:
        """Lightning's run of ``subcommand`` (its ``_run_subcommand``)."""
        super()._run_subcommand(subcommand)

    def _parse_ckpt_path(self) -> None:
        self.parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand)


def last_checkpoints(callback: ModelCheckpoint, trainer: pl.Trainer) -> list[Path]:
    """The ``last*.ckpt`` files ``callback`` would resume from, found as ``ckpt_path: last`` finds them."""
    return [Path(p) for p in callback._find_last_checkpoints(trainer)]


def save_last_if_behind(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Have ``callback`` write its ``last.ckpt`` at the trainer's step unless it holds that step already."""
    if callback._last_global_step_saved < trainer.global_step or not callback.last_model_path:
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or None (outside ``fit`` / ``test``, where ``module.trainer``
    raises)."""
    return module._trainer


def attached_datamodule(module: pl.LightningModule) -> Any:
    """The data module of the trainer ``module`` is attached to, or None (no trainer, or a trainer given loaders)."""
    trainer = attached_trainer(module)
    return None if trainer is None else trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning


def average_model(callback: WeightAveraging) -> nn.Module | None:
    """The averaged copy of the model that ``callback`` keeps during ``fit`` (None elsewhere)."""
    average: Any = callback._average_model
    return None if average is None else average.module


def wandb_init_settings(logger: WandbLogger) -> dict[str, Any]:
    """The settings ``logger`` will pass to ``wandb.init`` when its run starts (a dict to edit in place)."""
    return logger._wandb_init
