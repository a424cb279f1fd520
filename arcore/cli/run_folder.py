"""A run's folder: what its name decides (``runs/NAME``, the W&B run's name and folder, the checkpoints' folder),
where its checkpoints go, the checkpoint ``ckpt_path: last`` resumes (also once the folder was moved), and which
process holds the folder's lock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from arcore.errors import UsageError
from arcore.files.checkpoint import REMOTE
from arcore.training.lightning_private import last_checkpoints


def apply_run_name(config: Any, tool: str) -> None:
    """Fill in what a run's name decides and its config leaves unset: ``default_root_dir`` ``runs/NAME``, the W&B
    logger's ``save_dir``, ``name`` and ``project`` (the tool), and each ``ModelCheckpoint``'s ``dirpath``
    (``<default_root_dir>/checkpoints``, also without a name, which is where ``ckpt_path: last`` looks)."""
    trainer, name = config.trainer, config.get("name")
    if name is not None:
        check_run_name(str(name))
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


class SameRunFolder(pl.Callback):
    """A ``fit`` that resumes a ``last*.ckpt`` of its own checkpoint folder goes on saving ``last.ckpt`` there, also
    when the folder was moved or copied since (``runs/a`` to ``runs/b``, or the whole project elsewhere).

    Each ``ModelCheckpoint`` records its folder in the checkpoint; Lightning takes a checkpoint from another folder
    for another run's, forgets which files it saved, and then names every later save ``last-v1.ckpt`` to spare the
    ``last.ckpt`` it finds, which stays at the old step (and is what ``sample --ckpt .../last.ckpt`` reads). Before
    that state is restored, this reads it as the state of the folder it now lies in: paths to files of the recorded
    folder that are here too point here, and the last checkpoint is ``last.ckpt`` again (so a run left saving
    ``last-v1.ckpt`` by an earlier version returns to it). A checkpoint of another folder starts a new run there, as
    Lightning has it."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        resumed, states = trainer.ckpt_path, checkpoint.get("callbacks") or {}
        if not resumed or REMOTE.match(str(resumed)):
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            state = states.get(callback.state_key)
            if state is None or not callback.dirpath or REMOTE.match(str(callback.dirpath)):
                continue
            folder = Path(callback.dirpath)
            if Path(resumed).resolve() not in {p.resolve() for p in last_checkpoints(callback, trainer)}:
                continue
            recorded = Path(state.get("dirpath") or folder)
            for key in ("best_model_path", "kth_best_model_path"):
                state[key] = _moved(state.get(key), recorded, folder)
            state["best_k_models"] = {_moved(path, recorded, folder): score
                                      for path, score in (state.get("best_k_models") or {}).items()}
            state["dirpath"] = callback.dirpath
            state["last_model_path"] = str(folder / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")


def _moved(path: str | None, recorded: Path, folder: Path) -> str | None:
    """``path``, a file of the ``recorded`` checkpoint folder, as the same file of ``folder`` where that exists."""
    if not path or not Path(path).is_relative_to(recorded):
        return path
    here = folder / Path(path).relative_to(recorded)
    return str(here) if here.exists() else path


def check_run_name(name: str) -> None:
    """Refuse a run name that is not one plain folder name: ``runs/NAME`` must stay inside ``runs/``, since ``..``,
    a ``/`` or an absolute path would put the run's ``config.yaml`` and checkpoints elsewhere, over the user's own
    files (``--name ..`` would write into the working folder)."""
    if name in ("", ".", "..") or any(character in name for character in "/\\\0"):
        raise UsageError(f"--name {name or repr(name)} is not a plain folder name: the run's folder is runs/NAME, so "
                         f"NAME cannot be empty, '.' or '..' nor hold '/' or '\\' (e.g. --name mnist_small)")
