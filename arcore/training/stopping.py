"""A stopped ``fit`` keeps its work and resumes exactly where it stopped, whatever stopped it.

Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, SLURM and ``docker stop`` send) during training finish the step in
progress (and a validation due after it), save ``last.ckpt`` at that step (atomically, as every save) and end the
command with one line saying where the checkpoint is and how to resume, exit status 130 or 143 (128 + the signal's
number). A second Ctrl-C stops at once, without saving.

A run that ends in the middle of an epoch (``max_steps``, ``max_time``, a signal) must resume in that epoch, at the
next batch. Lightning closes the epoch's books when its loop stops early (the epoch counts as done), so a checkpoint
written after that resumed at the *next* epoch and the rest of the cut one was never trained on.
:class:`SaveOnStop` keeps the loop state of the last finished training batch and writes it into any checkpoint
saved after such a cut, at the same step: the state Lightning records for a save at a batch's end (as
``every_n_train_steps`` does), from which it resumes mid-epoch.
"""

from __future__ import annotations

import copy
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from arcore.errors import UsageError
from arcore.training.lightning_private import save_last_if_behind

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """``fit`` stopped by a signal; :attr:`message` says where its work is and how to resume; the exit status is
    ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class SaveOnStop(pl.Callback):
    """Added first to every ``fit`` of the command-line tools (single process): see the module docstring.
    ``resume`` says in the final line how to resume (the same command when it resumes ``ckpt_path: last``)."""

    def __init__(self, resume: str = "run the same command again (ckpt_path: last resumes it)") -> None:
        self.resume = resume
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._loops: tuple[int, dict[str, Any], int] | None = None  # (global step, fit loop state, epoch)
        self._start_step = 0
        self._snapshot_forced = False

    # -- signals ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        if trainer.received_sigterm:  # SIGTERM while the run was set up (Lightning's own handler noted it)
            self.signum = signal.SIGTERM
            self._stop(trainer)
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            for signum in STOPPING_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        """A signal handler: note the first signal (acted on when the current step ends); a second Ctrl-C stops
        at once."""
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    # -- where the run stands --------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.signum is not None:  # the weights are those of the last step, whose end every callback has seen
            self._snapshot_forced = True
            self._stop(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._loops = (trainer.global_step, copy.deepcopy(trainer.fit_loop.state_dict()), trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save the final step before anything changes the weights (Lightning's ``WeightAveraging``, under
        :class:`arcore.training.callbacks.EMA`, copies the average over the trained weights when training ends)."""
        paths = save_last(trainer)
        self._restore_handlers()
        if self.signum is not None:
            self._stop(trainer, paths)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """A checkpoint saved after the loop moved on from the last finished training batch (an epoch stopped early
        and counted as done although its last batch was not trained on, or a stop at the next batch's start) gets
        the loop state of that batch's end, so it resumes at the next batch."""
        if self._loops is None or trainer.global_step != self._loops[0] or "loops" not in checkpoint:
            return
        _, state, epoch = self._loops
        processed = trainer.fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]  # typed narrower
        cut = (processed > state["epoch_progress"]["current"]["processed"]
               and not state["epoch_loop.batch_progress"]["is_last_batch"])
        if cut or self._snapshot_forced:
            checkpoint["loops"]["fit_loop"] = copy.deepcopy(state)
            checkpoint["epoch"] = epoch

    def _stop(self, trainer: pl.Trainer, paths: list[Path] | None = None) -> None:
        assert self.signum is not None
        self._restore_handlers()
        how = signal_name(self.signum)
        if trainer.global_step == self._start_step or self._loops is None:
            raise RunStopped(self.signum, f"stopped by {how} before the first training step of this run: nothing "
                                          f"new to save")
        paths = paths or save_last(trainer, fallback=True)
        epoch, batch = self._loops[2], self._loops[1]["epoch_loop.batch_progress"]["current"]["ready"]
        raise RunStopped(self.signum, f"stopped by {how} at step {trainer.global_step} (epoch {epoch}, after "
                                      f"batch {batch} of it): saved {', '.join(map(str, paths))}; to resume, "
                                      f"{self.resume}")


def save_last(trainer: pl.Trainer, fallback: bool = False) -> list[Path]:
    """Write ``last.ckpt`` at the trainer's current step unless it holds that step already, and return the paths
    of the last checkpoints: each ``ModelCheckpoint`` with ``save_last`` writes its own
    (:func:`arcore.training.lightning_private.save_last_if_behind`); with none, ``fallback`` (a stop) writes
    ``<dirpath>/last.ckpt`` of the first ``ModelCheckpoint``, or ``<default_root_dir>/checkpoints/last.ckpt``.
    Lightning's ``ModelCheckpoint`` saves the last state only after a validation or at an epoch's end, so without
    this the steps since then were lost."""
    savers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    paths = []
    for callback in savers:
        if callback.save_last:
            save_last_if_behind(callback, trainer)
            paths.append(Path(callback.last_model_path))
    if not paths and fallback:
        folder = Path(savers[0].dirpath) if savers and savers[0].dirpath else \
            Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        paths.append(path)
    return paths


def check_resume_position(checkpoint: dict[str, Any], path: str | Path, batch_size: Any) -> None:
    """Refuse, in one line, to resume a checkpoint taken in the middle of an epoch with another ``--data.batch_size``:
    the epoch's remaining batches are found by counting those done, which at another size would skip or repeat
    examples. Between epochs the batch size may change."""
    loops = ((checkpoint.get("loops") or {}).get("fit_loop") or {})
    progress = loops.get("epoch_loop.batch_progress") or {}
    done = (progress.get("current") or {}).get("ready", 0)
    stored = (checkpoint.get("datamodule_hyper_parameters") or {}).get("batch_size")
    if done and not progress.get("is_last_batch") and stored is not None and batch_size is not None \
            and int(stored) != int(batch_size):
        raise UsageError(f"{path} stopped {done} batches into an epoch at --data.batch_size {stored}; resuming at "
                         f"--data.batch_size {batch_size} would skip or repeat examples of that epoch: resume with "
                         f"--data.batch_size {stored} (change it at an epoch's end), or start a new run")


def check_resume_averaging(checkpoint: dict[str, Any], path: str | Path, callbacks: list[Any]) -> None:
    """Refuse, in one line, to resume a checkpoint that kept a weight average (:class:`arcore.training.callbacks.EMA`:
    its ``state_dict`` is the average, the trained weights are ``current_model_state``) with a config that keeps none:
    Lightning would train on from the average and drop the trained weights."""
    averaging = any(str(getattr(c, "class_path", "")).endswith(("EMA", "WeightAveraging")) for c in callbacks)
    if "current_model_state" in checkpoint and not averaging:
        raise UsageError(f"{path} was trained with EMA (a weight average): resuming without it would go on from the "
                         f"average and drop the trained weights; add "
                         f"--trainer.callbacks+=arcore.training.callbacks.EMA, or start a new run")
