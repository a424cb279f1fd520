"""``fit | validate | test | predict``: LightningCLI's commands, with safe checkpoint reading, atomic writing and the
checks made before anything is built (:class:`ProjectCLI`), over the settings every run shares (:data:`BASE_CONFIG`);
the run's folder and lock (:mod:`arcore.cli.run_folder`), its W&B run (:mod:`arcore.cli.wandb_run`) and recorded test
metrics (:mod:`arcore.cli.record`) each have a module of their own."""

from __future__ import annotations

import importlib
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from arcore.cli.configs import limit_yaml_expansion, restrict_class_paths
from arcore.cli.record import check_recording, record_test_metrics
from arcore.cli.resume import check_resume_matches_config
from arcore.cli.run_folder import SameRunFolder, apply_run_name, checkpoint_folders, first_process, last_checkpoint
from arcore.cli.wandb_run import anchor_wandb_folders, continue_wandb_run, finish_wandb_run
from arcore.errors import UsageError
from arcore.files import weights
from arcore.files.atomic import atomic_write, folder_lock
from arcore.files.checkpoint import allow_listed, load_checkpoint_bytes, read_checkpoint, read_checkpoint_bytes
from arcore.files.registry import model_class
from arcore.training.callbacks import JobProgressBar
from arcore.training.data import CodesDataModule
from arcore.training.lightning_private import HookedCLI
from arcore.training.module import AutoregressiveModule
from arcore.training.precision import choose_precision
from arcore.training.quiet import quiet_wandb_loggers
from arcore.training.stopping import SaveOnStop, check_resume_averaging, check_resume_position
from arcore.training.threads import choose_threads, usable_cores
from arcore.training.wandb_mode import choose_wandb_mode


class ConfigToLoggers(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder (atomically) and log the full resolved config to every logger, so a
    W&B / TensorBoard / CSV run records exactly what produced it. Both happen when the run's loop starts, after the
    data and the model were set up, so a run refused at setup (bad data, a bad setting) writes nothing."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Nothing yet (LightningCLI's callback writes here): see :meth:`_save`."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":  # not fit's validation (nor its sanity check, before the training data)
            self._save(trainer, pl_module, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "predict")

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # asked on every rank: under DDP this is a collective
        if trainer.is_global_zero:
            if self.save_to_log_dir and log_dir is not None:
                with atomic_write(Path(log_dir) / self.config_filename) as f:
                    f.write(self.parser.dump(self.config, skip_none=False).encode())
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (:func:`arcore.files.atomic.atomic_write`: a temporary file with a unique name in
    the target's own folder, flushed to disk, renamed over the target), so a kill, a full disk or a second writer
    mid-save leaves the previous checkpoint whole; and read safely (:func:`arcore.files.checkpoint.read_checkpoint`:
    CRCs checked, weights-only). Lightning's default writes through a temporary file in the system temp folder, whose
    move is a plain copy when that folder is on another disk, and reads without checking the archive."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's own writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        if "://" in str(path):
            with allow_listed():
                return super().load_checkpoint(path, map_location, weights_only=True)
        data = read_checkpoint_bytes(path, "--ckpt_path")
        return load_checkpoint_bytes(data, path, "--ckpt_path", map_location=map_location)


EVALUATING = ("validate", "test", "predict")
RUN_COMMANDS = ("fit", *EVALUATING)
BASE_CONFIG = Path(__file__).with_name("base.yaml")
"""What every run shares (trainer defaults, the W&B logger, checkpoints, the NaN guard), composed by LightningCLI
under the run's config for every command of :data:`RUN_COMMANDS`; shipped inside the package (its package data), so
an installed tool finds it wherever it runs, and a run command refuses to start without it (a damaged install)."""


class ProjectCLI(HookedCLI):
    """LightningCLI whose trainer reads checkpoints safely and writes them atomically (:class:`AtomicCheckpointIO`),
    with these checks and fixes applied before anything is built or written:

    - a ``ckpt_path`` file is read safely (damage, unsafe contents, a folder: one line) and must hold a model of
      this tool (a ``wavegen`` checkpoint given to ``pixelgen`` is named as such); ``validate``/``test``/``predict``
      refuse to score a model that was never trained (no ``ckpt_path``, or ``last`` finding no checkpoint);
    - ``fit`` resuming a checkpoint (a file or ``last``) of another model, other model settings or other data
      settings is refused in one line naming the setting (LightningCLI would quietly rebuild the checkpoint's model;
      hooked into its reading of ``ckpt_path``, :class:`arcore.training.lightning_private.HookedCLI`);
    - ``fit`` holds a lock on its checkpoint folders: a second ``fit`` into the same folder refuses at start;
    - a ``LearningRateMonitor`` is dropped when the run has no logger (it would refuse to start);
    - a W&B run resumed from a checkpoint continues the run recorded in that checkpoint instead of starting anew;
    - a ``.safetensors`` weights file (``export``) is a ``ckpt_path`` for ``validate``/``test``/``predict`` (its
      model is built from the settings it records) but not for ``fit`` (it holds no training state);
      ``test --record_metrics true`` writes the test metrics into that file's metadata.

    The data module is the tool's own unless the config names another (``data: class_path: ...``, a
    :class:`arcore.training.data.CodesDataModule`): a model of another distribution brings its own data.

    Args:
        tool: the tool whose models this CLI builds (``pixelgen``, ``wavegen``).
        data: the tool's data module, the default of ``data: class_path``.
        args, kwargs: LightningCLI's.
    """

    def __init__(self, *args: Any, tool: str, data: type[CodesDataModule], **kwargs: Any) -> None:
        self.package, self.default_data = tool, data
        with ExitStack() as self._held:  # the run folder lock of a fit, released on any way out
            super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        trainer = config.trainer
        if (config.get("model") or {}).get("class_path") == f"{AutoregressiveModule.__module__}.AutoregressiveModule":
            raise UsageError(f"--model: AutoregressiveModule is the base of the models, not one: name a model class "
                             f"(`{self.package} fit --help` lists them; the configs in lightning_configs/ set one)")
        if trainer.logger is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks
                                 if not str(getattr(c, "class_path", "")).endswith("LearningRateMonitor")]
        if str(getattr(trainer.logger, "class_path", "")).endswith("WandbLogger"):
            choose_wandb_mode(self.package)
        if self.subcommand == "fit":
            continue_wandb_run(config)
        use_threads(config.get("threads"), self.package)
        if self.subcommand == "fit":
            precision, why = choose_precision(trainer.get("precision"), trainer.get("accelerator"))
            trainer.precision = precision
            if first_process():
                print(f"{self.package}: training precision {precision} ({why}); scoring in float32")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        quiet_wandb_loggers(trainer.loggers)
        anchor_wandb_folders(trainer.loggers)
        callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's init
        for i, callback in enumerate(callbacks):
            if type(callback) is TQDMProgressBar:  # Lightning's own bar
                callbacks[i] = JobProgressBar(callback.refresh_rate)
        if self.subcommand == "fit":
            resume = ("run the same command again (ckpt_path: last resumes it)"
                      if self.config.fit.get("ckpt_path") == "last" else "run the same command with --ckpt_path last")
            callbacks.insert(0, SaveOnStop(resume))  # first: its final save precedes EMA's end of training
            callbacks.append(SameRunFolder())
        return trainer

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="the run's name: its folder runs/NAME (checkpoints, logs) and its W&B run name")
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads for the run (default: the cores with nothing running on them at the "
                                 "start, or OMP_NUM_THREADS)")
        parser.add_argument("--record_metrics", type=bool, default=False,
                            help="test only: write the test metrics into the metadata of the .safetensors weights "
                                 "file given as --ckpt_path")
        data = self.default_data
        parser.set_defaults({"data": {"class_path": f"{data.__module__}.{data.__qualname__}"}})

    def parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            apply_run_name(config, self.package)
            check_run_settings(config)
            if subcommand == "fit" and first_process():  # before anything is printed, read or built
                root = config.trainer.get("default_root_dir")  # config.yaml and the logs: writable before anything
                folders = checkpoint_folders(config) + ([Path(root)] if root else [])
                self._held.enter_context(folder_lock(folders, f"{self.package} fit"))
            path = config.get("ckpt_path")
            if subcommand in EVALUATING and path in (None, "best"):
                raise UsageError(f"`{self.package} {subcommand}` scores a trained model: pass --ckpt_path FILE "
                                 f"(a .ckpt written by `{self.package} fit`), or ckpt_path: last to take the run's "
                                 f"last checkpoint" + (" (best is known only inside the fit that saved it)"
                                                       if path == "best" else ""))
            if config.get("record_metrics"):
                check_recording(subcommand, path, config.trainer.get("limit_test_batches"))
            if path and path not in ("last", "hpc"):
                checkpoint = read_checkpoint(path, "--ckpt_path")
                self._check_checkpoint(path, checkpoint, config, subcommand)
                if checkpoint.get("weights_only"):
                    cls = model_class(checkpoint, path, self.package, subcommand)
                    settings = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
                    weights.build_checked(cls, settings, checkpoint["state_dict"], f"--ckpt_path {path}")
                    self._build_recorded_model(subcommand, checkpoint)
                    return
        with allow_listed():
            super().parse_ckpt_path()

    def _build_recorded_model(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        """Have the config build the model a weights file records, as LightningCLI does from a checkpoint's
        ``hyper_parameters`` (its reading of ``ckpt_path`` reads those with ``torch.load``,
        which a safetensors file is not for)."""
        hparams = dict(checkpoint["hyper_parameters"])
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def run_subcommand(self, subcommand: str) -> None:
        config = self.config[subcommand]
        if config.get("ckpt_path") == "last":
            found = last_checkpoint(self.trainer)
            if found is not None:
                self._check_checkpoint(found, read_checkpoint(found, "ckpt_path: last found"), config, subcommand)
            elif subcommand in EVALUATING:
                folders = ", ".join(sorted(map(str, checkpoint_folders(config))))
                raise UsageError(f"`{self.package} {subcommand}` scores a trained model, but ckpt_path: last found "
                                 f"no checkpoint in {folders}: train first with `{self.package} fit` and the same "
                                 f"config, or pass --ckpt_path FILE")
        super().run_subcommand(subcommand)
        if config.get("record_metrics") and self.trainer.is_global_zero:
            record_test_metrics(config.ckpt_path, self.trainer.callback_metrics, self.datamodule)

    def _check_checkpoint(self, path: str | Path, checkpoint: dict[str, Any], config: Any, subcommand: str) -> None:
        model_class(checkpoint, path, self.package, subcommand)
        if subcommand == "fit" and checkpoint.get("weights_only"):
            raise UsageError(f"{path} is a weights file: it holds no optimiser or training state, so `fit` cannot "
                             f"resume it; resume a .ckpt written by `{self.package} fit`")
        if subcommand == "fit":
            data_class, data_settings = configured_data(config)
            check_resume_matches_config(config, path, checkpoint, data_class)
            check_resume_position(checkpoint, path, data_settings.get("batch_size"))
            check_resume_averaging(checkpoint, path, config.trainer.get("callbacks") or [])


def use_threads(requested: int | None, tool: str) -> None:
    """Set torch's intra-op threads for a run (:mod:`arcore.training.threads`) and say how many, and why, in one
    line."""
    threads, why = choose_threads(requested)
    if not 1 <= threads <= max(usable_cores(), 1) * 4:
        raise UsageError(f"--threads must be between 1 and {usable_cores() * 4}, got {threads}")
    torch.set_num_threads(threads)
    if first_process():  # progress goes to stdout: stderr holds a failing command's one line alone
        print(f"{tool}: {threads} CPU thread{'s' if threads > 1 else ''} ({why})")


def configured_data(config: Any) -> tuple[type[CodesDataModule], dict[str, Any]]:
    """The data module class a run's parsed ``config`` names and its settings. The class was imported when the
    config was parsed (the config names it: the user's own consent), so this only looks it up."""
    data = config.get("data") or {}
    module, _, name = str(data.get("class_path")).rpartition(".")
    cls = getattr(sys.modules.get(module) or importlib.import_module(module), name)
    return cls, dict(data.get("init_args") or {})


def check_run_settings(config: Any) -> None:
    """Refuse, in one line naming the flag and before the seed is set or anything built, settings that numpy or
    Lightning would reject only later, with a traceback or a division by zero: a seed outside numpy's range, a
    count of batches or epochs below 1, a negative gradient clip (which would flip the gradients' sign)."""
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2 ** 32:
        raise UsageError(f"--seed_everything must be in [0, 2**32) (numpy's range), or true for a random seed, got "
                         f"{seed}")
    trainer = config.trainer
    for name in ("accumulate_grad_batches", "check_val_every_n_epoch"):
        value = trainer.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise UsageError(f"--trainer.{name} must be >= 1, got {value}")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise UsageError(f"--trainer.val_check_interval must be > 0 (training batches between validations, or a "
                         f"fraction of an epoch), got {interval}")
    clip = trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and not clip >= 0:
        raise UsageError(f"--trainer.gradient_clip_val must be >= 0 (0 or null: no clipping), got {clip}")


def lightning_command(tool: str, datamodule_class: type[CodesDataModule], args: list[str], from_sys_argv: bool
                      ) -> None:
    """Run ``fit | validate | test | predict`` with ``args`` (LightningCLI reads ``sys.argv`` itself when
    ``from_sys_argv``), over the base config of every run (:data:`BASE_CONFIG`); W&B logs offline unless an
    account or a mode is configured.

    Args:
        tool: the tool running it, e.g. ``pixelgen``.
        datamodule_class: the tool's data module, used unless the config names another.
        args: the command line after the tool's name.
        from_sys_argv: whether ``args`` are ``sys.argv``'s (LightningCLI then reads them itself).
    """
    limit_yaml_expansion()
    restrict_class_paths(Path.cwd())
    if not BASE_CONFIG.is_file():
        raise UsageError(f"{BASE_CONFIG} is missing: the run configs are composed over it; install the project "
                         f"again (pip install -e .)")
    base = {"default_config_files": [str(BASE_CONFIG)]}
    try:
        ProjectCLI(AutoregressiveModule, CodesDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   tool=tool, data=datamodule_class,
                   args=None if from_sys_argv else args,  # None: LightningCLI reads sys.argv itself
                   save_config_callback=ConfigToLoggers, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False,
                   parser_kwargs={"exit_on_error": False, **{command: base for command in RUN_COMMANDS}})
    finally:
        finish_wandb_run()
