"""The entry point of both console scripts: ``run`` dispatches ``sample``, ``export`` and the Lightning
commands, and turns bad input into one ``<tool>: error: ...`` line and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import inspect
import re
import signal
import sys
from collections.abc import Callable, Sequence

from pytorch_lightning.utilities.exceptions import MisconfigurationException

from arcore.cli.export import export_main
from arcore.cli.runs import lightning_command
from arcore.errors import UsageError
from arcore.files.registry import load_models
from arcore.training.stopping import RunStopped, signal_name


def _one_line(exc: BaseException) -> str:
    """The first line of an error as the command line reads it (a library error's Python arguments as flags)."""
    text = (exc.for_command_line() if isinstance(exc, UsageError) else str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run(tool: str, datamodule_class: type, sample_main: Callable[[Sequence[str]], None],
        argv: Sequence[str] | None = None) -> int:
    """Entry point of a package's console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        load_models(tool)  # the model classes a config may name, by their short name too (--model PixelCNN)
        if args and args[0] == "sample":
            sample_main(args[1:])
            return 0
        if args and args[0] == "export":
            export_main(tool, args[1:])
            return 0
        lightning_command(tool, datamodule_class, args, from_sys_argv=argv is None)
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
    except ValueError as exc:  # a constructor's UsageError wrapped by jsonargparse, or Lightning refusing a setting
        usage = usage_error_in(exc)
        line = _one_line(usage) if usage is not None else trainer_setting_error(exc)
        if line is None:
            raise
        print(f"{tool}: error: {line}", file=sys.stderr)
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


def parse_error_line(message: str) -> str:
    """jsonargparse's nested parse error as one line: the option it is about and the innermost cause, e.g.
    ``--model.init_args.lr: expected a float, got nan``."""
    denied = re.search(r"Importing '([\w.]+)' is not allowed", message)
    key = re.match(r'\s*Parser key "([^"]+)":', message)
    if denied:  # refused by the import-path policy of arcore.cli.runs.restrict_class_paths, before any import
        return (f"{'--' + key[1] + ': ' if key else ''}{denied[1]} is not in a module a config may name: classes of "
                f"arcore, the tools, their models, Lightning, torch or a module in the working folder only (the "
                f"module is imported before its class is checked)")
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


def trainer_setting_error(exc: BaseException) -> str | None:
    """Lightning's refusal of a trainer setting that it can only make once the run is set up (a
    ``val_check_interval`` beyond the batches of an epoch) as one line, each setting it quotes spelled as the command
    line spells it (``limit_val_batches`` as ``--trainer.limit_val_batches``); None for an error that was not raised
    by Lightning or quotes no trainer setting."""
    from pytorch_lightning import Trainer

    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    module = frame.tb_frame.f_globals.get("__name__", "") if frame is not None else ""
    settings = inspect.signature(Trainer.__init__).parameters
    text = " ".join(str(exc).split())
    if not module.startswith(("pytorch_lightning.", "lightning_fabric.")) or not any(
            name in settings for name in re.findall(r"`(\w+)", text)):
        return None

    def flag(match: re.Match[str]) -> str:
        name, value = match[1], match[2]
        if name not in settings:
            return match[0]
        return f"--trainer.{name}" + ("" if value is None else f" {'null' if value == 'None' else value}")

    return re.sub(r"`(\w+)(?:=([^`]*))?`", flag, text)


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
