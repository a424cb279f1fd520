"""A run's W&B run: offline unless an account or a mode is configured, continued by a resumed ``fit``, and ended
with the command."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any

from arcore.cli.run_folder import checkpoint_folders
from arcore.errors import UsageError
from arcore.files.checkpoint import newest_last, read_checkpoint


def wandb_offline_unless_configured() -> None:
    """Log to W&B offline (sync later with ``wandb sync``) unless the user has an account or chose a mode."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    os.environ["WANDB_MODE"] = "offline"


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
