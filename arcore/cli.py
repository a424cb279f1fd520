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

import torch

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


def run(tool: str, datamodule_class: type, sample_main: Callable[[Sequence[str]], None],
        argv: Sequence[str] | None = None) -> int:
    """Entry point of a package's console script; returns the exit status."""
    from pytorch_lightning.cli import LightningCLI

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "sample":
            sample_main(args[1:])
            return 0
        wandb_offline_unless_configured()
        LightningCLI(AutoregressiveModule, datamodule_class, subclass_mode_model=True, args=args,
                     save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
        return 0
    except (UsageError, FileNotFoundError) as exc:
        print(f"{tool}: error: {_one_line(exc)}", file=sys.stderr)
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
