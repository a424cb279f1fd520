"""Command-line plumbing shared by ``pixelgen`` and ``wavegen``: LightningCLI subcommands plus ``sample``.

``fit | validate | test | predict`` are LightningCLI's own (configs in ``lightning_configs/``); ``sample`` is the
package's own parser. Bad input surfaces as one ``<tool>: error: ...`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from arcore.errors import UsageError
from arcore.module import AutoregressiveModule


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
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ConfigToLoggers(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder (LightningCLI's default) and log the full resolved config to every
    logger, so a W&B / TensorBoard / CSV run records exactly what produced it."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the target's own folder, flushed to disk, then renamed over the
    target: a kill or a full disk mid-save leaves the previous checkpoint whole. (Lightning's default writes through
    a temporary file in the system temp folder, whose move is a plain copy when that folder is on another disk.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's own writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with partial.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


class ProjectCLI(LightningCLI):
    """LightningCLI whose trainer saves checkpoints atomically (:class:`AtomicCheckpointIO`), with three fixes
    applied to the parsed config before anything is built:

    - ``fit --ckpt_path`` of a checkpoint of another model or other settings is refused in one line (LightningCLI
      would quietly rebuild the checkpoint's model; hooked into its ``_parse_ckpt_path``, pinned Lightning version);
    - a ``LearningRateMonitor`` is dropped when the run has no logger (it would refuse to start);
    - a W&B run resumed from a checkpoint continues the run recorded in that checkpoint instead of starting anew.
    """

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        trainer = config.trainer
        if trainer.logger is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks
                                 if not str(getattr(c, "class_path", "")).endswith("LearningRateMonitor")]
        if self.subcommand == "fit":
            _continue_wandb_run(config)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _parse_ckpt_path(self) -> None:
        if self.config.get("subcommand") == "fit":
            check_resume_matches_config(self.config.fit)
        super()._parse_ckpt_path()


def _continue_wandb_run(config: Any) -> None:
    """Set the W&B logger's run id to the one stored in the checkpoint being resumed (``ckpt_path``)."""
    logger = config.trainer.logger
    if not str(getattr(logger, "class_path", "")).endswith("WandbLogger") or logger.init_args.get("id"):
        return
    path = config.ckpt_path
    if path == "last":
        dirs = [c.init_args.get("dirpath") for c in config.trainer.callbacks or []
                if str(getattr(c, "class_path", "")).endswith("ModelCheckpoint")]
        path = next((f"{d}/last.ckpt" for d in dirs if d and Path(d, "last.ckpt").is_file()), None)
    if not path or not Path(path).is_file():
        return
    try:
        run_id = torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("wandb_run_id")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by the trainer when it loads it
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
        wandb_offline_unless_configured()
        ProjectCLI(AutoregressiveModule, datamodule_class, subclass_mode_model=True,
                   args=None if argv is None else args,  # None: LightningCLI reads sys.argv itself
                   save_config_callback=ConfigToLoggers, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False)
        return 0
    except (UsageError, FileNotFoundError) as exc:
        print(f"{tool}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a constructor's UsageError, wrapped by jsonargparse
        usage = usage_error_in(exc)
        if usage is None:
            raise
        print(f"{tool}: error: {_one_line(usage)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        print(f"{tool}: error: the checkpoint does not match this model's configuration "
              f"({_one_line(exc)}); resume with the config it was trained with", file=sys.stderr)
        return 2


def output_path(path: str, suffix: str) -> Path:
    """Check an output file name and create its folder."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UsageError(f"--out must name a {suffix} file, got {path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def load_for_sampling(ckpt: str, package: str, device: torch.device) -> AutoregressiveModule:
    from arcore.module import load_checkpoint

    model = load_checkpoint(ckpt, package, map_location=device)
    return model.to(device).eval()


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


def check_resume_matches_config(config: Any) -> None:
    """Refuse, in one line, a ``fit`` whose ``ckpt_path`` names a checkpoint of another model than the configured.

    Given a checkpoint file, LightningCLI rebuilds the model from the hyperparameters stored in it and silently
    drops the config's, so another model class, width or palette asked for would quietly train the checkpoint's
    model instead. ``config`` is the subcommand's parsed config; call this before ``_parse_ckpt_path``.
    ``validate``/``test``/``predict`` evaluate the checkpoint's own model, which is what they are for.
    """
    path = config.get("ckpt_path")
    if not path or not Path(path).is_file() or not config.get("model"):
        return  # ``last``, ``best`` and missing files are resolved (or reported) by the trainer
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise UsageError(f"--ckpt_path {path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"--ckpt_path {path} is not a checkpoint written by `fit`")
    stored = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    stored_class = (checkpoint.get("hyper_parameters") or {}).get("_class_path") or checkpoint.get("model_class")
    wanted_class = config.model.get("class_path")
    if stored_class and wanted_class and stored_class != wanted_class:
        raise UsageError(f"--ckpt_path {path} holds {_a(stored_class.rsplit('.', 1)[-1])} but the config builds "
                         f"{_a(wanted_class.rsplit('.', 1)[-1])}: resume with the config it was trained with, or "
                         f"leave out --ckpt_path to start a new run")
    wanted = _plain(config.model.get("init_args") or {})
    differ = sorted(k for k in wanted.keys() & stored.keys() if wanted[k] != _plain(stored[k]))
    if differ:
        raise UsageError(f"--ckpt_path {path} was trained with {', '.join(f'{k}={stored[k]}' for k in differ)}, "
                         f"the config {', '.join(f'{k}={wanted[k]}' for k in differ)}: resume with the settings it "
                         f"was trained with, or leave out --ckpt_path to start a new run")
