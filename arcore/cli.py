"""Command-line plumbing shared by ``pixelgen`` and ``wavegen``: LightningCLI subcommands plus ``sample``.

``fit | validate | test | predict`` are LightningCLI's own (configs in ``lightning_configs/``); ``sample`` is the
package's own parser, ``export`` (:func:`export_main`) is shared by both tools. Bad input surfaces as one
``<tool>: error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import netrc
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from arcore import weights
from arcore.checkpoint import allow_listed, load_checkpoint_bytes, model_class, read_checkpoint, read_checkpoint_bytes
from arcore.errors import UsageError
from arcore.files import atomic_write, check_output, folder_lock, refuse_replacing_inputs, write_atomically
from arcore.module import AutoregressiveModule, load_checkpoint, read_model
from arcore.quiet import quiet_wandb_loggers
from arcore.stopping import RunStopped, SaveOnStop, check_resume_averaging, check_resume_position, signal_name
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


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return device


def _one_line(exc: BaseException) -> str:
    """The first line of an error as the command line reads it (a library error's Python arguments as flags)."""
    text = (exc.for_command_line() if isinstance(exc, UsageError) else str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


EVALUATING = ("validate", "test", "predict")
RUN_COMMANDS = ("fit", *EVALUATING)
BASE_CONFIG = Path(__file__).resolve().parents[1] / "lightning_configs" / "base.yaml"
"""What every run shares (trainer defaults, the W&B logger, checkpoints, the NaN guard), composed by LightningCLI
under the run's config for every command of :data:`RUN_COMMANDS`; a run command refuses to start without it (an
install that is not a source checkout or an editable one)."""


class ProjectCLI(LightningCLI):
    """LightningCLI whose trainer reads checkpoints safely and writes them atomically (:class:`AtomicCheckpointIO`),
    with these checks and fixes applied before anything is built or written:

    - a ``ckpt_path`` file is read safely (damage, unsafe contents, a folder: one line) and must hold a model of
      this tool (a ``wavegen`` checkpoint given to ``pixelgen`` is named as such); ``validate``/``test``/``predict``
      refuse to score a model that was never trained (no ``ckpt_path``, or ``last`` finding no checkpoint);
    - ``fit`` resuming a checkpoint (a file or ``last``) of another model, other model settings or other data
      settings is refused in one line naming the setting (LightningCLI would quietly rebuild the checkpoint's model;
      hooked into its ``_parse_ckpt_path``, pinned Lightning version);
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

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        quiet_wandb_loggers(trainer.loggers)
        if self.subcommand == "fit":
            resume = ("run the same command again (ckpt_path: last resumes it)"
                      if self.config.fit.get("ckpt_path") == "last" else "run the same command with --ckpt_path last")
            trainer.callbacks.insert(0, SaveOnStop(resume))  # first: its final save precedes EMA's end of training
        return trainer

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="the run's name: its folder runs/NAME (checkpoints, logs) and its W&B run name")
        parser.add_argument("--record_metrics", type=bool, default=False,
                            help="test only: write the test metrics into the metadata of the .safetensors weights "
                                 "file given as --ckpt_path")

    @property
    def package(self) -> str:
        """``pixelgen`` or ``wavegen``: the tool whose models this CLI builds."""
        return self.datamodule_class.__module__.split(".")[0]

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            apply_run_name(config, self.package)
            if subcommand == "fit" and first_process():  # before anything is printed, read or built
                self._held.enter_context(folder_lock(checkpoint_folders(config), f"{self.package} fit"))
            path = config.get("ckpt_path")
            if subcommand in EVALUATING and path in (None, "best"):
                raise UsageError(f"`{self.package} {subcommand}` scores a trained model: pass --ckpt_path FILE "
                                 f"(a .ckpt written by `{self.package} fit`), or ckpt_path: last to take the run's "
                                 f"last checkpoint" + (" (best is known only inside the fit that saved it)"
                                                       if path == "best" else ""))
            if config.get("record_metrics"):
                check_recording(subcommand, path, config.trainer.get("limit_test_batches"))
            if path and path not in ("last", "hpc") and "://" not in str(path):
                checkpoint = read_checkpoint(path, "--ckpt_path")
                self._check_checkpoint(path, checkpoint, config, subcommand)
                if checkpoint.get("weights_only"):
                    cls = model_class(checkpoint, path, self.package, AutoregressiveModule, subcommand)
                    settings = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
                    weights.build_checked(cls, settings, checkpoint["state_dict"], f"--ckpt_path {path}")
                    self._build_recorded_model(subcommand, checkpoint)
                    return
        with allow_listed():
            super()._parse_ckpt_path()

    def _build_recorded_model(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        """Have the config build the model a weights file records, as LightningCLI does from a checkpoint's
        ``hyper_parameters`` (its ``_parse_ckpt_path``, pinned Lightning version, reads those with ``torch.load``,
        which a safetensors file is not for)."""
        hparams = dict(checkpoint["hyper_parameters"])
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def _run_subcommand(self, subcommand: str) -> None:
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
        super()._run_subcommand(subcommand)
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
    callbacks, found as Lightning finds it (pinned Lightning version), or None."""
    found = [Path(p) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
             for p in c._find_last_checkpoints(trainer)]
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
        path = next((folder / "last.ckpt" for folder in checkpoint_folders(config)
                     if (folder / "last.ckpt").is_file()), None)
    if not path or not Path(path).is_file():
        return
    try:
        run_id = read_checkpoint(path).get("wandb_run_id")
    except UsageError:  # an unreadable checkpoint is reported when the run checks or loads it
        return
    if run_id:
        logger.init_args.id = run_id


def run(tool: str, datamodule_class: type, sample_main: Callable[[Sequence[str]], None],
        argv: Sequence[str] | None = None) -> int:
    """Entry point of a package's console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "sample":
            sample_main(args[1:])
            return 0
        if args and args[0] == "export":
            export_main(tool, args[1:])
            return 0
        wandb_offline_unless_configured()
        if not BASE_CONFIG.is_file():
            raise UsageError(f"{BASE_CONFIG} is missing: the run configs are composed over it; install the "
                             f"project from a source checkout (pip install -e .)")
        base = {"default_config_files": [str(BASE_CONFIG)]}
        try:
            ProjectCLI(AutoregressiveModule, datamodule_class, subclass_mode_model=True,
                       args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
                       save_config_callback=ConfigToLoggers, save_config_kwargs={"overwrite": True},
                       auto_configure_optimizers=False,
                       parser_kwargs={"exit_on_error": False, **{command: base for command in RUN_COMMANDS}})
        finally:
            _finish_wandb_run()
        return 0
    except RunStopped as exc:
        print(f"{tool}: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except (KeyboardInterrupt, SystemExit) as exc:
        signum = stopped_by(exc)
        if signum is None:
            raise
        print(f"{tool}: stopped by {signal_name(signum)}: nothing new was saved (files written before are whole)",
              file=sys.stderr)
        return 128 + signum
    except argparse.ArgumentError as exc:  # jsonargparse's parse errors: a usage text and a tree of causes
        print(f"{tool}: error: {parse_error_line(str(exc))} (see `{tool} {args[0] if args else 'fit'} --help`)",
              file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"{tool}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a constructor's UsageError, wrapped by jsonargparse
        usage = usage_error_in(exc)
        if usage is None:
            raise
        print(f"{tool}: error: {_one_line(usage)}", file=sys.stderr)
        return 2
    except MisconfigurationException as exc:  # Lightning's own refusal of a trainer setting
        print(f"{tool}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        print(f"{tool}: error: the checkpoint does not match this model's configuration "
              f"({_one_line(exc)}); resume with the config it was trained with", file=sys.stderr)
        return 2


def stopped_by(exc: BaseException) -> int | None:
    """The signal behind an exception that ends a command, or None: Ctrl-C's ``KeyboardInterrupt`` (Lightning turns
    one inside a trainer into ``sys.exit(1)``, raised while handling it) and Lightning's ``SIGTERMException``."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return signal.SIGTERM if isinstance(exc, SIGTERMException) else None


def _finish_wandb_run() -> None:
    """End the W&B run this command started, if any: called from Python (a notebook, the tests), a run left open
    would be reused by the next command's logger, which would then log into the wrong run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def parse_error_line(message: str) -> str:
    """jsonargparse's nested parse error as one line: the option it is about and the innermost cause, e.g.
    ``--model.init_args.lr: expected a float, got nan``."""
    keys: list[str] = []
    for line in message.splitlines():
        text = line.strip().lstrip("-").strip()
        key = re.fullmatch(r'Parser key "([^"]+)":', text)
        if key:
            keys.append(key.group(1))
        elif text.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif text and not text.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value")):
            detail = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
            detail = re.sub(r"^Expected a (\w+)\. Got value: (.*)$",
                            lambda m: f"expected {'an' if m[1][0] in 'aeiou' else 'a'} {m[1]}, got {m[2]}", detail)
            return f"--{'.'.join(keys)}: {detail}" if keys else detail
    return message.strip().splitlines()[0] if message.strip() else "invalid arguments"


def output_path(path: str | Path, suffix: str) -> Path:
    """Check an output file name before any work (:func:`arcore.files.check_output`); creates nothing."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UsageError(f"--out must name a {suffix} file, got {path}")
    return check_output(out)


def check_fits_in_memory(num_samples: int, codes_per_sample: int, bytes_per_code: int = 8) -> None:
    """Refuse a request that could not fit in this machine's memory: its codes (int64, all kept until written) and
    whatever else the draw holds per code (``bytes_per_code``: a vocoder's conditioning, one row per sample)."""
    need = num_samples * codes_per_sample * bytes_per_code
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise UsageError(f"{num_samples:,} samples of {codes_per_sample:,} codes need {need / 2 ** 30:,.1f} GiB, more "
                         f"than this machine's {have / 2 ** 30:,.0f} GiB of memory: ask for fewer or shorter samples")


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def load_for_sampling(ckpt: str, package: str, device: torch.device) -> AutoregressiveModule:
    model = load_checkpoint(ckpt, package, map_location=device)
    return model.to(device).eval()


def export_main(tool: str, argv: Sequence[str]) -> None:
    """``<tool> export --ckpt run.ckpt --out model.safetensors``: the weights ``sample`` and ``test`` use (the EMA
    average when the run kept one) and the settings to rebuild the model, in a safetensors file for sharing
    (:mod:`arcore.weights`); no optimiser or training state. The output path is checked before any work and the
    file written atomically."""
    parser = argparse.ArgumentParser(prog=f"{tool} export", description="Write a checkpoint's model as a "
                                     "safetensors weights file that sample, test and load accept.")
    parser.add_argument("--ckpt", required=True, help=f"checkpoint written by `{tool} fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--half-weights", action="store_true",
                        help="round the sampling step's weights to float16 values (WaveNet: its fused CPU step "
                             "then holds them as float16, about 2x faster; test the file to measure the change)")
    args = parser.parse_args(list(argv))
    out = output_path(args.out, weights.SUFFIX)
    refuse_replacing_inputs([out], [("--ckpt", args.ckpt)])
    model, checkpoint = read_model(args.ckpt, tool, command="export", what="--ckpt")
    if checkpoint.get("weights_only"):
        raise UsageError(f"--ckpt {args.ckpt} is already a weights file; export reads a .ckpt written by "
                         f"`{tool} fit`")
    metadata = weights.metadata_of(checkpoint, model, args.ckpt, tool)
    if args.half_weights:
        if not model.capabilities.half_weights:
            raise UsageError(f"--half-weights: a {type(model).__name__} has no float16 sampling step (WaveNet has)")
        print(f"weights rounded to float16 values (largest change {model.round_weights_to_half():.2g})")
        metadata["weight_values"] = "float16"
    data = weights.encode(model.state_dict(), metadata)
    write_atomically(out, data)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {type(model).__name__}, {count:,} weights ({metadata['weights']}), "
          f"{len(data) / 2 ** 20:.2f} MiB")


def usage_error_in(exc: BaseException) -> UsageError | None:
    """The :class:`UsageError` behind ``exc``, if any: jsonargparse re-raises a model's or data module's
    constructor error as a many-line ``ValueError`` (every type it tried), with the original as its context."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UsageError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _plain(value: Any) -> Any:
    """Config values as plain data, so a tuple from the command line equals the list stored in a checkpoint."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value.items()).items()}
    return value


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


def check_resume_matches_config(config: Any, path: str | Path, checkpoint: dict[str, Any],
                                datamodule_class: type) -> None:
    """Refuse, in one line, a ``fit`` resuming a checkpoint of another model, other model settings or other data
    settings than the config's (``config`` is the subcommand's parsed config; ``path`` a file or what
    ``ckpt_path: last`` found).

    Given a checkpoint file, LightningCLI rebuilds the model from the hyperparameters stored in it and silently
    drops the config's, so another model class, width or palette asked for would quietly train the checkpoint's
    model instead; with ``last`` the config's model is built and the checkpoint's weights loaded into it. Of the data
    settings, those that change what is learned (``datamodule_class.resume_settings``: dataset, binarisation, bits,
    sample rate, crop sizes) must match too; the data's location may move.
    ``validate``/``test``/``predict`` evaluate the checkpoint's own model, which is what they are for.
    """
    how = "resume with the config it was trained with, or start a new run in another folder"
    hparams = checkpoint.get("hyper_parameters") or {}
    stored_class = hparams.get("_class_path") or checkpoint.get("model_class")
    wanted_class = config.model.get("class_path") if config.get("model") else None
    if stored_class and wanted_class and stored_class != wanted_class:
        raise UsageError(f"{path} holds {_a(stored_class.rsplit('.', 1)[-1])} but the config builds "
                         f"{_a(wanted_class.rsplit('.', 1)[-1])}: {how}")
    for kind, stored, wanted, keys in (
            ("model", hparams, (config.get("model") or {}).get("init_args"), None),
            ("data", datamodule_class.settings_from_checkpoint(checkpoint.get("datamodule_hyper_parameters") or {}),
             config.get("data"), datamodule_class.resume_settings)):
        stored = {k: _plain(v) for k, v in stored.items() if not k.startswith("_")}
        wanted = _plain(wanted or {})
        differ = sorted(k for k in wanted.keys() & stored.keys() if (keys is None or k in keys)
                        and wanted[k] != stored[k])
        if differ:
            prefix = "--data." if kind == "data" else ""
            raise UsageError(f"{path} was trained with {', '.join(f'{prefix}{k}={stored[k]}' for k in differ)}, "
                             f"the config asks for {', '.join(f'{prefix}{k}={wanted[k]}' for k in differ)}: {how}")
