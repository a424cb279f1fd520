"""The front of both console scripts: the list of commands, the options every ``sample`` command takes, and the
dispatch to a command, all before torch or Lightning is imported.

``pixelgen --help`` (or a bare ``pixelgen``) prints every command with one line and a few commands to try, at once;
``pixelgen sample --help`` prints its options, each with its default, as fast; torch and Lightning load only once a
command runs. The ``sample`` options that set how samples are drawn are the fields of
:class:`arcore.sampling.decoding.SampleOptions` and :class:`arcore.sampling.decoding.Decoding` that carry a ``help``
(:func:`add_sample_options`), so a new setting appears here, and reaches the engine (:func:`sample_options`),
without an edit to this module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any

from arcore.errors import UsageError
from arcore.sampling.decoding import SampleOptions

COMMANDS = {
    "fit": "train a model from a config (--config lightning_configs/NAME.yaml); run it again to resume",
    "validate": "score a trained model (--ckpt_path) on the validation split",
    "test": "score a trained model (--ckpt_path) on the test split",
    "predict": "the likelihood of every test example, written to a CSV in the run folder",
    "sample": None,  # the tool's own line: its sample parser's description
    "export": "write a checkpoint's model as a .safetensors weights file for sharing (sample, test and load read it)",
}
"""Every command of both tools, with its line in ``--help``."""


def overview(tool: str, about: str, sample: str, examples: Sequence[str], own: Mapping[str, str] | None = None
             ) -> str:
    """The text of ``<tool> --help``: what the tool is, one line per command (``sample`` the tool's own, then the
    tool's ``own`` commands), and ``examples``, commands that run as written from the project's folder."""
    lines_of = {**{name: line or sample for name, line in COMMANDS.items()}, **(own or {})}
    width = max(map(len, lines_of))
    lines = [f"usage: {tool} COMMAND [OPTIONS]", "", about, "", "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, line in lines_of.items()]
    lines += ["", f"`{tool} COMMAND --help` lists a command's options. To try, from the project's folder:"]
    return "\n".join(lines + [f"  {example}" for example in examples])


class SampleHelp(argparse.HelpFormatter):
    """Help that shows each option's default, unless the help says it itself or the option is a switch."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
            return text
        return f"{text} (default: %(default)s)"


def sample_parser(tool: str, description: str, *, out_help: str, num_samples: int, batch_size: int,
                  threads: int | None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the options every ``sample`` command takes; the tool adds its own to it.
    ``threads`` is the ``--threads`` default (None: torch's, all cores)."""
    p = argparse.ArgumentParser(prog=f"{tool} sample", description=description, formatter_class=SampleHelp)
    p.add_argument("--ckpt", required=True,
                   help=f"a checkpoint written by `{tool} fit` (e.g. runs/NAME/checkpoints/last.ckpt) or a "
                        f".safetensors weights file (`{tool} export`, or one of pretrained/)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--num-samples", type=int, default=num_samples, help="how many samples to draw")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="drawn at once; more are drawn in chunks (halved on out-of-memory)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the random draws: the same seed, the same samples")
    add_sample_options(p)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=threads,
                   help="CPU threads" + (" (default: all cores)" if threads is None else
                                         f" (default {threads}: a step's tiny products lose more to thread sync "
                                         f"than they gain)"))
    return p


def add_sample_options(parser: argparse.ArgumentParser, settings: type = SampleOptions) -> None:
    """An option for every field of ``settings`` (and of the settings it holds) that has a ``help``: a switch for a
    bool (setting the opposite of its default), else a value of the field's ``type``."""
    for spec in fields(settings):
        default = spec.default if spec.default is not MISSING else None
        if is_dataclass(default):
            add_sample_options(parser, type(default))
        elif "help" in spec.metadata:
            flag = spec.metadata["flag"] or "--" + spec.name.replace("_", "-")
            if isinstance(default, bool):
                parser.add_argument(flag, dest=spec.name, action="store_false" if default else "store_true",
                                    help=spec.metadata["help"])
            else:
                parser.add_argument(flag, dest=spec.name, type=spec.metadata["type"], default=default,
                                    help=spec.metadata["help"])


def sample_options(args: argparse.Namespace, settings: type = SampleOptions, **fixed: Any) -> Any:
    """The ``settings`` value (:class:`arcore.sampling.decoding.SampleOptions`) that the options of
    :func:`add_sample_options` parsed into ``args`` give, with ``fixed`` fields set (``progress=True``)."""
    values = {}
    for spec in fields(settings):
        default = spec.default if spec.default is not MISSING else None
        if is_dataclass(default):
            values[spec.name] = sample_options(args, type(default))
        elif "help" in spec.metadata:
            values[spec.name] = getattr(args, spec.name)
    return replace(settings(**values), **fixed)


@dataclass(frozen=True)
class Command:
    """A command of one tool alone (``wavegen griffin-lim``): its line in ``--help``, its options (an ``argparse``
    parser built without torch) and what runs once they parse, named as ``"module:attribute"``."""

    line: str
    parser: Callable[[], argparse.ArgumentParser]
    run: str


@dataclass(frozen=True)
class Tool:
    """One console script (``pixelgen``, ``wavegen``): its help texts, its ``sample`` parser, and where the code of
    its commands lives, named as ``"module:attribute"`` so that it is imported only once the arguments parse."""

    name: str
    about: str  # the first line of ``--help``
    sample: str  # the ``sample`` command's line in ``--help``
    examples: Sequence[str]  # commands ``--help`` suggests, each runnable as written from the project's folder
    parser: Callable[[], argparse.ArgumentParser]  # the ``sample`` options (:func:`sample_parser` plus the tool's)
    sample_run: str  # what draws once the ``sample`` options parse, e.g. ``"pixelgen.sample_cli:sample"``
    data_module: str  # the Lightning commands' default LightningDataModule, e.g. ``"pixelgen.data:ImageDataModule"``
    commands: Mapping[str, Command] = field(default_factory=dict)  # the tool's own commands, after COMMANDS

    def sample_main(self, argv: Sequence[str]) -> None:
        """``sample``: the options parsed (``--help`` prints here), then the draw, which loads torch."""
        args = self.parser().parse_args(list(argv))
        draw = _resolve(self.sample_run)
        draw(args)

    def command_main(self, name: str, argv: Sequence[str]) -> None:
        """One of the tool's own :attr:`commands`: its options parsed (``--help`` prints here), then its run."""
        command = self.commands[name]
        args = command.parser().parse_args(list(argv))
        _resolve(command.run)(args)

    def run(self, argv: Sequence[str] | None) -> int:
        """The Lightning commands and ``export`` (:func:`arcore.cli.main.run`)."""
        data_module = _resolve(self.data_module)
        run = _resolve("arcore.cli.main:run")
        return run(self.name, data_module, self.sample_main, argv)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run one command line; returns the exit status. No command, or ``--help``: :func:`overview`; ``sample``:
        :meth:`sample_main`, and one of the tool's own :attr:`commands`: :meth:`command_main`; anything else:
        :meth:`run`. A bad input, or libraries that cannot load (too little memory), is one line with exit status 2."""
        args = list(sys.argv[1:] if argv is None else argv)
        if not args or args[0] in ("-h", "--help"):
            print(overview(self.name, self.about, self.sample, self.examples,
                           {name: command.line for name, command in self.commands.items()}))
            return 0
        try:
            if args[0] == "sample":
                self.sample_main(args[1:])
            elif args[0] in self.commands:
                self.command_main(args[0], args[1:])
            else:
                return self.run(argv)
        except UsageError as exc:
            print(f"{self.name}: error: {exc.for_command_line().strip().splitlines()[0]}", file=sys.stderr)
            return 2
        return 0


def _resolve(target: str) -> Any:
    """The attribute named by ``"module:attribute"``, its module imported (with torch and the rest of the stack the
    first time: a failure to load them is one :class:`UsageError` line, :func:`cannot_load`)."""
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, OSError, MemoryError) as exc:
        message = cannot_load(exc)
        if message is None:
            raise
        raise UsageError(message) from None


def cannot_load(exc: BaseException) -> str | None:
    """Why the libraries failed to load, in one line, when it is lack of memory: under a memory limit (``ulimit -v``
    or ``-d``) torch and OpenBLAS cannot map their code and buffers ("failed to map segment from shared object");
    None for any other failure (a broken installation keeps its traceback)."""
    import resource

    cause = exc
    while cause.__cause__ is not None:  # numpy's ImportError is raised from the loader's own
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(cause).__name__
    limits = [(flag, resource.getrlimit(kind)[0]) for flag, kind in (("-v", resource.RLIMIT_AS),
                                                                      ("-d", resource.RLIMIT_DATA))]
    flag, limit = min(((f, v) for f, v in limits if v != resource.RLIM_INFINITY), key=lambda fv: fv[1],
                      default=(None, None))
    if limit is not None:
        return (f"too little memory to load torch and its libraries: this process may use {limit / 2 ** 30:.1f} GiB "
                f"(ulimit {flag}); raise the limit (ulimit {flag} unlimited) ({detail})")
    if isinstance(cause, MemoryError) or "failed to map segment" in detail or "Cannot allocate memory" in detail:
        return f"too little memory to load torch and its libraries ({detail}): close other programs, or add memory"
    return None
