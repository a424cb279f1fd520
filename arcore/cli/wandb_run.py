"""A run's W&B run: its folder fixed before it starts, continued by a resumed ``fit``, and ended with the command
(the mode, offline unless an account is configured and reachable, is :mod:`arcore.training.wandb_mode`'s)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from arcore.cli.run_folder import checkpoint_folders
from arcore.errors import UsageError
from arcore.files.checkpoint import newest_last, read_checkpoint
from arcore.training.lightning_private import wandb_init_settings


def anchor_wandb_folders(loggers: Iterable[Any]) -> None:
    """Give every Lightning ``WandbLogger`` of ``loggers`` that has not started its run an absolute folder.

    W&B's background service, started by a process's first run, resolves a relative run folder against its own
    working folder: a later run of the same process (a notebook, a script calling the tools) that changed folder
    would write its log where nobody looks, and ``wandb sync`` would find nothing.
    """
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        init = wandb_init_settings(logger) if isinstance(logger, WandbLogger) else None
        if isinstance(init, dict) and init.get("dir"):
            init["dir"] = str(Path(init["dir"]).absolute())


def continue_wandb_run(config: Any) -> None:
    """Set the W&B logger's run id to the one stored in the checkpoint being resumed (``ckpt_path``)."""
    logger = config.trainer.logger
    if not str(getattr(logger, "class_path", "")).endswith("WandbLogger") or logger.init_args.get("id"):
        return
    path = config.ckpt_path
    if path == "last":
        path = max(filter(None, map(newest_last, checkpoint_folders(config))), key=lambda p: p.stat().st_mtime,
                   default=None)
    if not path or not Path(path).is_file():
        return
    try:
        run_id = read_checkpoint(path).get("wandb_run_id")
    except UsageError:  # an unreadable checkpoint is reported when the run checks or loads it
        return
    if run_id:
        logger.init_args.id = run_id


def finish_wandb_run() -> None:
    """End the W&B run this command started, if any: called from Python (a notebook, the tests), a run left open
    would be reused by the next command's logger, which would then log into the wrong run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
