"""A run's folder: what its name decides (``runs/NAME``, the W&B run's name and folder, the checkpoints' folder),
where its checkpoints go, the checkpoint ``ckpt_path: last`` resumes, and which process holds the folder's lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from arcore.training.lightning_private import last_checkpoints


def apply_run_name(config: Any, tool: str) -> None:
    """Fill in what a run's name decides and its config leaves unset: ``default_root_dir`` ``runs/NAME``, the W&B
    logger's ``save_dir``, ``name`` and ``project`` (the tool), and each ``ModelCheckpoint``'s ``dirpath``
    (``<default_root_dir>/checkpoints``, also without a name, which is where ``ckpt_path: last`` looks)."""
    trainer, name = config.trainer, config.get("name")
    if name and not trainer.get("default_root_dir"):
        trainer.default_root_dir = f"runs/{name}"
    root = trainer.get("default_root_dir")
    logger = trainer.get("logger")
    if name and root and str(getattr(logger, "class_path", "")).endswith("WandbLogger"):
        args = logger.init_args
        if args.get("save_dir") in (None, "."):
            args.save_dir = root
        args.name = args.get("name") or name
        args.project = args.get("project") or tool
    for callback in trainer.get("callbacks") or []:
        if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and not callback.init_args.get(
                "dirpath"):
            callback.init_args.dirpath = f"{root or '.'}/checkpoints"


def checkpoint_folders(config: Any) -> list[Path]:
    """The folders a run's checkpoints go to, from its parsed config: each ``ModelCheckpoint``'s ``dirpath``, or
    ``<default_root_dir>/checkpoints`` for one that names none or when the config lists none."""
    default = Path(config.trainer.get("default_root_dir") or ".") / "checkpoints"
    folders = [Path(c.init_args.get("dirpath") or default) for c in config.trainer.get("callbacks") or []
               if str(getattr(c, "class_path", "")).endswith("ModelCheckpoint")]
    return folders or [default]


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The checkpoint ``ckpt_path: last`` resumes: the newest ``last*.ckpt`` of the trainer's ``ModelCheckpoint``
    callbacks, found as Lightning finds it (:func:`arcore.training.lightning_private.last_checkpoints`), or None."""
    found = [p for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
             for p in last_checkpoints(c, trainer)]
    return max((p for p in found if p.exists()), key=lambda p: p.stat().st_mtime, default=None)


def first_process() -> bool:
    """Whether this is the first process of a run (the one that launches the others under DDP, or rank 0 of one
    started by torchrun or SLURM): only it takes the run's folder lock."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))
