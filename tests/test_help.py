"""``pixelgen --help`` and ``wavegen --help``: every command with one line; ``sample --help``: every option with its
help and default; the commands the overview suggests run as written (from the project's folder)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pixelgen.cli import _parser as pixelgen_sample_parser
from pixelgen.cli import main as pixelgen
from wavegen.cli import _griffin_lim_parser
from wavegen.cli import _parser as wavegen_sample_parser
from wavegen.cli import main as wavegen

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"pixelgen": (pixelgen, pixelgen_sample_parser), "wavegen": (wavegen, wavegen_sample_parser)}
OWN = {"pixelgen": [], "wavegen": ["griffin-lim"]}
"""Each tool's own commands, listed after the shared ones."""


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
@pytest.mark.parametrize("tool", TOOLS)
def test_the_overview_lists_every_command_with_one_line(tool, argv, capsys):
    assert TOOLS[tool][0](argv) == 0
    text = capsys.readouterr().out
    commands = text.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in commands] == ["fit", "validate", "test", "predict", "sample", "export",
                                                      *OWN[tool]]
    assert all(len(line.split()) > 3 for line in commands)  # each with its line


@pytest.mark.parametrize("make", [pixelgen_sample_parser, wavegen_sample_parser, _griffin_lim_parser],
                         ids=["pixelgen sample", "wavegen sample", "wavegen griffin-lim"])
def test_every_sample_option_has_help_and_shows_its_default(make):
    parser = make()
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help, f"{flag} has no help"
        shown = parser.formatter_class(parser.prog)._get_help_string(action)
        assert action.required or action.nargs == 0 or "default" in shown, f"{flag} does not show its default"
        assert flag in text


def suggested(tool: str, capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    """The commands ``tool --help`` suggests, as argument lists."""
    TOOLS[tool][0](["--help"])
    lines = capsys.readouterr().out.split("from the project's folder:\n", 1)[1].splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith(f"  {tool} ")]


@pytest.mark.parametrize("tool", TOOLS)
def test_the_commands_the_overview_suggests_run_as_written(tool, tmp_path, capsys, monkeypatch):
    """From a folder laid out as the project's (its pretrained/ and docs/ linked), fewer or shorter samples only."""
    for folder in ("pretrained", "docs"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    smaller = {"pixelgen": ["--num-samples", "2"], "wavegen": ["--seconds", "0.05"]}[tool]
    commands = suggested(tool, capsys)
    assert commands
    for argv in commands:
        assert TOOLS[tool][0]([*argv, *smaller]) == 0, (argv, capsys.readouterr().err[-2000:])
        assert Path(argv[argv.index("--out") + 1]).is_file()


@pytest.mark.parametrize("tool", TOOLS)
def test_help_loads_neither_torch_nor_lightning(tool):
    """The overview, ``sample --help`` and the help of the tool's own commands print before anything heavy is
    imported (in well under a second)."""
    helps = "".join(f"exec('try: main([\\'{command}\\', \\'--help\\'])\\nexcept SystemExit: pass'); "
                    for command in ("sample", *OWN[tool]))
    probe = (f"import sys; from {tool}.cli import main; main(['--help']); {helps}"
             "print(sorted(m for m in ('torch', 'pytorch_lightning', 'jsonargparse') if m in sys.modules))")
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert printed.stdout.splitlines()[-1] == "[]", printed.stderr
