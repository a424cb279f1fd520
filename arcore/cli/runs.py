"""``fit | validate | test | predict``: LightningCLI's commands, with safe checkpoint reading, atomic writing, the
run's folder and name, its lock, W&B continuity and the checks made before anything is built
(:class:`ProjectCLI`)."""

from __future__ import annotations

import math
import netrc
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from arcore import weights
from arcore.callbacks import JobProgressBar
from arcore.checkpoint import (MODELS, REMOTE, allow_listed, load_checkpoint_bytes, model_class, newest_last,
                               read_checkpoint, read_checkpoint_bytes, sibling_packages)
from arcore.cli.resume import check_resume_matches_config
from arcore.errors import UsageError
from arcore.files import atomic_write, check_output, folder_lock, write_atomically
from arcore.lightning_private import HookedCLI, last_checkpoints
from arcore.module import AutoregressiveModule
from arcore.precision import choose_precision
from arcore.quiet import quiet_wandb_loggers
from arcore.stopping import SaveOnStop, check_resume_averaging, check_resume_position
from arcore.threads import choose_threads, usable_cores
from arcore.wandb_mode import choose_wandb_mode


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
    """Checkpoints written atomically (:func:`arcore.files.atomic_write`: a temporary file with a unique name in the
    target's own folder, flushed to disk, renamed over the target), so a kill, a full disk or a second writer
    mid-save leaves the previous checkpoint whole; and read safely (:func:`arcore.checkpoint.read_checkpoint`: CRCs
    checked, weights-only). Lightning's default writes through a temporary file in the system temp folder, whose
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
            state = states.get(callback.state_key) if isinstance(callback, ModelCheckpoint) else None
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


EVALUATING = ("validate", "test", "predict")
RUN_COMMANDS = ("fit", *EVALUATING)
BASE_CONFIG = Path(__file__).resolve().parents[2] / "lightning_configs" / "base.yaml"
"""What every run shares (trainer defaults, the W&B logger, checkpoints, the NaN guard), composed by LightningCLI
under the run's config for every command of :data:`RUN_COMMANDS`; a run command refuses to start without it (an
install that is not a source checkout or an editable one)."""


class ProjectCLI(HookedCLI):
    """LightningCLI whose trainer reads checkpoints safely and writes them atomically (:class:`AtomicCheckpointIO`),
    with these checks and fixes applied before anything is built or written:

    - a ``ckpt_path`` file is read safely (damage, unsafe contents, a folder: one line) and must hold a model of
      this tool (a ``wavegen`` checkpoint given to ``pixelgen`` is named as such); ``validate``/``test``/``predict``
      refuse to score a model that was never trained (no ``ckpt_path``, or ``last`` finding no checkpoint);
    - ``fit`` resuming a checkpoint (a file or ``last``) of another model, other model settings or other data
      settings is refused in one line naming the setting (LightningCLI would quietly rebuild the checkpoint's model;
      hooked into its reading of ``ckpt_path``, :class:`arcore.lightning_private.HookedCLI`);
    - ``fit`` holds a lock on its checkpoint folders: a second ``fit`` into the same folder refuses at start;
    - a ``LearningRateMonitor`` is dropped when the run has no logger (it would refuse to start);
    - a W&B run resumed from a checkpoint continues the run recorded in that checkpoint instead of starting anew;
    - a ``.safetensors`` weights file (``export``) is a ``ckpt_path`` for ``validate``/``test``/``predict`` (its
      model is built from the settings it records) but not for ``fit`` (it holds no training state);
      ``test --record_metrics true`` writes the test metrics into that file's metadata.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
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
            _continue_wandb_run(config)
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
        bars = [i for i, c in enumerate(trainer.callbacks) if type(c) is TQDMProgressBar]  # Lightning's own bar
        for i in bars:
            trainer.callbacks[i] = JobProgressBar(trainer.callbacks[i].refresh_rate)
        if self.subcommand == "fit":
            resume = ("run the same command again (ckpt_path: last resumes it)"
                      if self.config.fit.get("ckpt_path") == "last" else "run the same command with --ckpt_path last")
            trainer.callbacks.insert(0, SaveOnStop(resume))  # first: its final save precedes EMA's end of training
            trainer.callbacks.append(SameRunFolder())
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

    @property
    def package(self) -> str:
        """``pixelgen`` or ``wavegen``: the tool whose models this CLI builds."""
        return self.datamodule_class.__module__.split(".")[0]

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
                    cls = model_class(checkpoint, path, self.package, AutoregressiveModule, subcommand)
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
        model_class(checkpoint, path, self.package, AutoregressiveModule, subcommand)
        if subcommand == "fit" and checkpoint.get("weights_only"):
            raise UsageError(f"{path} is a weights file: it holds no optimiser or training state, so `fit` cannot "
                             f"resume it; resume a .ckpt written by `{self.package} fit`")
        if subcommand == "fit":
            check_resume_matches_config(config, path, checkpoint, self.datamodule_class)
            check_resume_position(checkpoint, path, (config.get("data") or {}).get("batch_size"))
            check_resume_averaging(checkpoint, path, config.trainer.get("callbacks") or [])


def use_threads(requested: int | None, tool: str) -> None:
    """Set torch's intra-op threads for a run (:mod:`arcore.threads`) and say how many, and why, in one line."""
    threads, why = choose_threads(requested)
    if not 1 <= threads <= max(usable_cores(), 1) * 4:
        raise UsageError(f"--threads must be between 1 and {usable_cores() * 4}, got {threads}")
    torch.set_num_threads(threads)
    if first_process():  # progress goes to stdout: stderr holds a failing command's one line alone
        print(f"{tool}: {threads} CPU thread{'s' if threads > 1 else ''} ({why})")


def check_recording(subcommand: str, path: Any, limit: Any = None) -> None:
    """Refuse ``--record_metrics true``, before any work, unless ``test`` is to score a weights file it can
    rewrite, on the whole test set (``limit``: ``limit_test_batches``)."""
    if subcommand != "test":
        raise UsageError(f"--record_metrics applies to `test` only, not to `{subcommand}`")
    if limit not in (None, 1.0):
        raise UsageError(f"--record_metrics true records a score of the whole test set, but "
                         f"--trainer.limit_test_batches {limit} tests part of it: drop one of the two")
    if not (path and str(path).endswith(weights.SUFFIX)):
        raise UsageError(f"--record_metrics true writes the test metrics into the .safetensors weights file being "
                         f"tested: pass one as --ckpt_path (`export` writes one), got {path}")
    check_output(path, "--ckpt_path")


def record_test_metrics(path: str | Path, metrics: dict[str, Any], datamodule: Any) -> None:
    """Write the ``test/*`` values of ``metrics`` (a trainer's ``callback_metrics``) and the settings of the data
    they were measured on into the metadata of the weights file ``path`` (:func:`arcore.weights.with_test_metrics`),
    atomically."""
    tested = {name: float(value) for name, value in metrics.items() if name.startswith("test/")}
    broken = sorted(name for name, value in tested.items() if not math.isfinite(value))
    if broken:
        raise UsageError(f"the test gave {', '.join(f'{k} {tested[k]}' for k in broken)}: nothing was recorded in "
                         f"{path} (its weights or the test data hold non-finite values)")
    data = read_checkpoint_bytes(path, "--ckpt_path")
    write_atomically(path, weights.with_test_metrics(data, path, tested, getattr(datamodule, "hparams", {}),
                                                     "--ckpt_path"))
    print(f"recorded {', '.join(f'{k} {v:.4f}' for k, v in sorted(tested.items()))} in {path}")


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


def check_run_name(name: str) -> None:
    """Refuse a run name that is not one plain folder name: ``runs/NAME`` must stay inside ``runs/``, since ``..``,
    a ``/`` or an absolute path would put the run's ``config.yaml`` and checkpoints elsewhere, over the user's own
    files (``--name ..`` would write into the working folder)."""
    if name in ("", ".", "..") or any(character in name for character in "/\\\0"):
        raise UsageError(f"--name {name or repr(name)} is not a plain folder name: the run's folder is runs/NAME, so "
                         f"NAME cannot be empty, '.' or '..' nor hold '/' or '\\' (e.g. --name mnist_small)")


def checkpoint_folders(config: Any) -> list[Path]:
    """The folders a run's checkpoints go to, from its parsed config: each ``ModelCheckpoint``'s ``dirpath``, or
    ``<default_root_dir>/checkpoints`` for one that names none or when the config lists none."""
    default = Path(config.trainer.get("default_root_dir") or ".") / "checkpoints"
    folders = [Path(c.init_args.get("dirpath") or default) for c in config.trainer.get("callbacks") or []
               if str(getattr(c, "class_path", "")).endswith("ModelCheckpoint")]
    return folders or [default]


def last_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The checkpoint ``ckpt_path: last`` resumes: the newest ``last*.ckpt`` of the trainer's ``ModelCheckpoint``
    callbacks, found as Lightning finds it (:func:`arcore.lightning_private.last_checkpoints`), or None."""
    found = [p for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
             for p in last_checkpoints(c, trainer)]
    return max((p for p in found if p.exists()), key=lambda p: p.stat().st_mtime, default=None)


def first_process() -> bool:
    """Whether this is the first process of a run (the one that launches the others under DDP, or rank 0 of one
    started by torchrun or SLURM): only it takes the run's folder lock."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _continue_wandb_run(config: Any) -> None:
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


def _finish_wandb_run() -> None:
    """End the W&B run this command started, if any: called from Python (a notebook, the tests), a run left open
    would be reused by the next command's logger, which would then log into the wrong run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


TRUSTED_PACKAGES = ("arcore", "pytorch_lightning", "lightning_fabric", "torch")
"""Packages whose classes a config may name (``class_path``) beside those of the tools and their registered models:
the core, and Lightning's and torch's callbacks, loggers and plugins."""


def restrict_class_paths(folder: Path) -> None:
    """Let a config or a flag name classes (``class_path``) of :data:`TRUSTED_PACKAGES`, of the tools installed with
    ``arcore``, of the registered models' packages and of the modules in ``folder`` (a user's own callback beside
    the config: the working folder) only. jsonargparse imports the module a ``class_path`` names before it checks
    that the class is of the right type, so any installed module's code would run from a config; its import-path
    policy refuses the others before the import."""
    from jsonargparse import set_parsing_settings

    try:
        with os.scandir(folder) as entries:
            local = [entry.name.removesuffix(".py") for entry in entries if entry.name.endswith(".py")
                     or (entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")))]
    except OSError:  # a working folder this process cannot list holds nothing it could import
        local = []
    allowed = {*TRUSTED_PACKAGES, *sibling_packages(), *(name.split(".")[0] for name in MODELS), *local}
    set_parsing_settings(import_path_denylist=["*"],
                         import_path_allowlist=sorted(name for name in allowed if name.isidentifier()))


MAX_CONFIG_VALUES = 1_000_000
"""The most values (mappings, lists and scalars, each alias counted as what it stands for) one YAML config or
value may hold: thousands of times a run's config, and far below what exhausts memory."""


def limit_yaml_expansion() -> None:
    """Have jsonargparse refuse, before building it, YAML that its aliases expand beyond :data:`MAX_CONFIG_VALUES`
    (an alias bomb: nine aliases of nine aliases, ten levels deep, are 9**10 strings from a few hundred bytes) or
    that refers to itself; anything else is read by jsonargparse's own YAML loader, as before."""
    from jsonargparse import get_loader, set_loader

    read = get_loader("yaml")
    if getattr(read, "bounded", False):
        return

    def bounded(stream: str, path: Any = None) -> Any:
        given = f"--config {path}" if path else "a YAML value"  # jsonargparse gives a config file's name
        try:
            node = yaml.compose(stream, Loader=yaml.SafeLoader)
            size = 0 if node is None else _yaml_values(node, {}, set(), given)
        except yaml.YAMLError:  # reported by jsonargparse's own loader, as before
            size = 0
        except RecursionError:
            raise UsageError(f"{given} nests its values too deeply to be read") from None
        if size > MAX_CONFIG_VALUES:
            raise UsageError(f"{given} expands, through its aliases (&name, *name), to more than "
                             f"{MAX_CONFIG_VALUES:,} values: refused before it is built (an alias bomb?); write the "
                             f"values out")
        return read(stream)

    bounded.bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, (yaml.YAMLError,))


def _yaml_values(node: yaml.Node, counted: dict[int, int], open_nodes: set[int], given: str) -> int:
    """How many values the composed YAML ``node`` holds once built, each alias as the value it names (``counted``
    keeps the count of every node already seen, so a shared node is counted, not walked, again); ``given`` names the
    YAML in errors."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        raise UsageError(f"{given} refers to itself through an alias (*name inside the value &name marks): it would "
                         f"never end")
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_yaml_values(key, counted, open_nodes, given) + _yaml_values(value, counted, open_nodes, given)
                       for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_yaml_values(item, counted, open_nodes, given) for item in node.value)
    else:
        size = 1
    open_nodes.discard(id(node))
    counted[id(node)] = size
    return size


def lightning_command(tool: str, datamodule_class: type, args: list[str], from_sys_argv: bool) -> None:
    """Run ``fit | validate | test | predict`` with ``args`` (LightningCLI reads ``sys.argv`` itself when
    ``from_sys_argv``), over the base config of every run (:data:`BASE_CONFIG`); W&B logs offline unless an
    account or a mode is configured."""
    wandb_offline_unless_configured()
    limit_yaml_expansion()
    restrict_class_paths(Path.cwd())
    if not BASE_CONFIG.is_file():
        raise UsageError(f"{BASE_CONFIG} is missing: the run configs are composed over it; install the "
                         f"project from a source checkout (pip install -e .)")
    base = {"default_config_files": [str(BASE_CONFIG)]}
    try:
        ProjectCLI(AutoregressiveModule, datamodule_class, subclass_mode_model=True,
                   args=None if from_sys_argv else args,  # None: LightningCLI reads sys.argv itself
                   save_config_callback=ConfigToLoggers, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False,
                   parser_kwargs={"exit_on_error": False, **{command: base for command in RUN_COMMANDS}})
    finally:
        _finish_wandb_run()
