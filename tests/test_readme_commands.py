"""Every shell and Python block of the README and of the documentation pages, run as written, page after page, in
one folder laid out like the project's root (the shipped configs, models and docs, untouched) on small generated
data: MNIST digits, a folder of images, a folder of tones and chirps, a text. Only sizes are substituted: a tiny
model, a few steps, a few samples (:data:`TINY`), and placeholders (``DIR``, ``/path/to/audio``) name the generated
data. What every command wrote is checked (a grid of the samples asked for, clips as long as asked for and not
silent, lines of text), so a documented command that stops working, or that runs but makes nothing, fails here.
Pages share the folder, in :data:`PAGES` order: ``docs/sharing.md`` exports the runs the README's commands trained.

Two commands are not run here, each checked where it belongs: the test command (it runs this suite:
:func:`test_the_readme_test_command_is_what_ci_runs`) and ``mkdocs`` (``tests/test_docs.py`` builds the site)."""

from __future__ import annotations

import glob
import io
import os
import re
import shlex
import struct
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tomllib
from PIL import Image

from pixelgen.cli import main as pixelgen_main
from tests.test_audio_data import make_audio_folder
from tests.test_example_model import install
from tests.test_pixelgen_cli import make_folder_dataset
from wavegen.cli import main as wavegen_main

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/pixelcnn.md", "docs/igpt.md", "docs/wavenet.md", "docs/own-model.md", "docs/sharing.md",
         "docs/runs.md", "docs/getting-started.md", "docs/index.md", "docs/engine.md", "docs/results.md"]
"""Every page, in the order its commands run (later pages use the runs of earlier ones)."""
TOOLS: dict[str, Callable[[list[str]], int]] = {"pixelgen": pixelgen_main, "wavegen": wavegen_main}
STEPS = ["--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.val_check_interval", "2",
         "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1"]
TINY = {  # the options added to a fit or test, by the config's name
    "pixelcnn": STEPS + ["--model.init_args.hidden", "6", "--model.init_args.layers", "1", "--model.init_args.head",
                         "6", "--data.batch_size", "4", "--data.val_size", "8"],
    "igpt": STEPS + ["--model.init_args.width", "8", "--model.init_args.layers", "1", "--model.init_args.heads", "2",
                     "--model.init_args.palette_steps", "5", "--data.batch_size", "4", "--data.val_size", "8"],
    "wavenet": STEPS + ["--model.init_args.layers", "2", "--model.init_args.cycles", "1",
                        "--model.init_args.residual_channels", "4", "--model.init_args.gate_channels", "4",
                        "--model.init_args.skip_channels", "4", "--model.init_args.head_channels", "4",
                        "--model.init_args.cond_channels", "4", "--data.target_length", "400", "--data.batch_size",
                        "2", "--data.crops_per_epoch", "4", "--data.val_fraction", "0.25", "--data.test_fraction",
                        "0.25"],
    "tiny_char": STEPS + ["--model.length", "16", "--data.length", "16", "--model.channels", "8"],
}
SAMPLES = {"pixelgen": ["--num-samples", "4"]}
"""The options added to every ``sample``: a few images (whatever a page asks for, a grid of four shows it works)."""
RECORD = ("#!/usr/bin/env bash\nprintf '%s\\0' \"$(basename \"$0\")\" \"$@\" >> \"$RECORDED\"\n"
          "printf '\\n' >> \"$RECORDED\"\n")
"""A command's stand-in for running a script: it records its words (NUL-separated, one command a line)."""


def blocks(page: str) -> list[tuple[str, int, str]]:
    """The ``bash`` and ``python`` blocks of ``page``: (language, line, text)."""
    text = (ROOT / page).read_text()
    return [(m.group(1), text[: m.start()].count("\n") + 1, m.group(2))
            for m in re.finditer(r"^```(bash|sh|python)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)]


def shell_commands(block: str) -> list[list[str]]:
    """A shell block as commands: continuations joined, comments dropped, ``a && b`` as two commands."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def write_idx(path: Path, array: np.ndarray) -> None:
    """An array of uint8 in the IDX format MNIST is distributed in (what torchvision reads from MNIST/raw)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, train: int = 40, test: int = 16) -> Path:
    """A local copy of MNIST with ``train`` and ``test`` random 28x28 digits, laid out as torchvision keeps it."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    return root


class Project:
    """The folder the documented commands run in, its generated data, and how each kind of command runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in ("lightning_configs", "pretrained", "docs", "scripts", "README.md"):
            (folder / name).symlink_to(ROOT / name)
        self.mnist = make_mnist(folder / "data")  # what ./data and /path/to/data name
        self.images = make_folder_dataset(folder / "images", size=32)  # a folder of 32x32 RGB images
        self.audio = make_audio_folder(folder / "audio", count=8, seconds=0.5)
        self.site = folder / "site-packages"  # where `pip install docs/examples` installs the example
        self.ran: list[str] = []

    def place(self, words: list[str]) -> list[str]:
        """Placeholders as the generated data: ``./data`` and ``/path/to/data`` MNIST, ``DIR`` the audio folder
        (images for pixelgen), ``/path/to/audio`` the audio folder, ``NAME`` the README's first run."""
        images = words[0].endswith("pixelgen")
        names = {"/path/to/data": str(self.mnist), "/path/to/audio": str(self.audio), "NAME": "pixelcnn_mnist",
                 "DIR": str(self.images if images else self.audio)}
        return [re.sub(r"/path/to/data|/path/to/audio|\bNAME\b|^DIR$", lambda m: names[m.group()], w) for w in words]

    def run(self, words: list[str], env: dict[str, str], where: str) -> None:
        """One documented command (``where`` names its page and line in failures)."""
        name = Path(words[0]).name
        self.ran.append(shlex.join(words))
        if name in TOOLS:
            self.tool(self.place(words), where)
        elif words[:2] == ["bash", "scripts/main.sh"]:
            for recorded in self.script(words[1], env):
                self.tool(recorded, f"{where} (scripts/main.sh)")
        elif words == [".venv/bin/pip", "install", "docs/examples"]:
            if not self.site.exists():
                self.site.mkdir()
                install(self.site)
                sys.path.insert(0, str(self.site))
        elif name == "python" and words[1] == "-c":
            self.python(words[2], where)
        elif name == "wandb" and words[1] == "sync":
            if not (self.folder / "runs" / "pixelcnn_mnist").is_dir():  # NAME: the README's first run, made here
                self.tool([".venv/bin/pixelgen", "fit", "--config", "lightning_configs/pixelcnn_mnist.yaml",
                           "--data.root", str(self.mnist)], f"{where} (the run it syncs)")
            found = [Path(p) for w in self.place(words)[2:] for p in glob.glob(str(self.folder / w))]
            assert found and all(next(p.glob("*.wandb"), None) for p in found), f"{where}: no offline run {words[2:]}"
        elif words == ["source", ".venv/bin/activate"]:
            pass  # the tools run from this environment's install already
        elif words[:3] == ["python3", "-m", "venv"] or name == "mkdocs" or words[1:3] == ["-m", "pytest"] or (
                name == "pip" and "-e" in words):
            assert where.split(":")[0] in ("README.md", "docs/getting-started.md", "docs/index.md"), where
        else:
            raise AssertionError(f"{where}: a documented command this test cannot run: {shlex.join(words)}")

    def tool(self, words: list[str], where: str) -> None:
        """``pixelgen`` or ``wavegen`` in this process, with :data:`TINY` sizes; what it wrote is checked."""
        tool, command = Path(words[0]).name, words[1]
        extra: list[str] = []
        if command in ("fit", "test"):
            config = Path(words[words.index("--config") + 1]).stem
            extra = next(v for k, v in TINY.items() if config.startswith(k))
            if "--record_metrics" in words:  # it records a score of the whole (tiny) test set
                extra = [w for i, w in enumerate(extra) if "limit_test_batches" not in extra[max(i - 1, 0): i + 1]]
            if "cifar10" in config and "--data.root" not in words:  # CIFAR-10 would be downloaded: the folder
                extra = extra + ["--data.dataset", "folder", "--data.root", str(self.images)]
        elif command == "sample":
            extra = SAMPLES.get(tool, [])
        cwd, printed = Path.cwd(), io.StringIO()
        os.chdir(self.folder)
        try:
            with redirect_stdout(printed):
                status = TOOLS[tool](words[1:] + extra)
        finally:
            os.chdir(cwd)
            sys.stdout.write(printed.getvalue())
        assert status == 0, f"{where}: `{shlex.join(words)}` exited with {status}"
        if command in ("sample", "griffin-lim"):
            self.check_written(words, where)
        elif command == "test":
            scored = printed.getvalue()
            assert "test/bpd" in scored, f"{where}: `{shlex.join(words)}` printed no test/bpd"
            if "wavenet_vocoder" in words[words.index("--config") + 1]:  # beside the classical inversions
                assert all(f"test/{name}{system}" in scored for name in ("pesq", "stoi", "mel_distance")
                           for system in ("", "_mel_griffin_lim", "_griffin_lim", "_mulaw")), scored

    def check_written(self, words: list[str], where: str) -> None:
        """The files a ``sample`` wrote hold what it drew: a grid of its images, clips as long as asked for and
        not silent, lines of text."""
        out = self.folder / words[words.index("--out") + 1]
        if out.suffix == ".png":
            with Image.open(out) as grid:
                pixels = np.asarray(grid.convert("L"), dtype=float)
            assert min(pixels.shape) >= 2 + 2 * 4 + 2 and pixels.std() > 1, f"{where}: {out} shows nothing"
        elif out.suffix == ".txt":
            assert out.read_text().strip(), f"{where}: {out} is empty"
        else:
            clips = sorted(out.rglob("*.wav")) if out.is_dir() else \
                [p for p in out.parent.glob(f"{out.stem}*.wav") if re.fullmatch(rf"{out.stem}(_\d+)?", p.stem)]
            assert clips, f"{where}: no clip written at {out}"
            for clip in clips:
                audio, rate = soundfile.read(clip)
                if "--seconds" in words:
                    assert len(audio) == round(float(words[words.index("--seconds") + 1]) * rate), clip
                assert audio.std() > 1e-4, f"{where}: {clip} is silent"

    def script(self, script: str, env: dict[str, str]) -> list[list[str]]:
        """The tool commands ``bash script`` runs, recorded by running the script itself with stand-ins for the
        environment's commands (``python3 -m venv``, ``pip``, the tools), so its own variables and options are
        expanded by bash as they would be."""
        copy = self.folder / "script-run"
        (copy / "scripts").mkdir(parents=True, exist_ok=True)
        (copy / "scripts" / Path(script).name).write_text((ROOT / script).read_text())
        shims = copy / "shims"
        for folder, names in ((copy / ".venv" / "bin", ("pip", "pixelgen", "wavegen")), (shims, ("python3",))):
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                (folder / name).write_text(RECORD)
                (folder / name).chmod(0o755)
        recorded = copy / "recorded"
        recorded.write_text("")
        environment = {**os.environ, **{k: self.place([v])[0] for k, v in env.items()},
                       "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}", "RECORDED": str(recorded)}
        done = subprocess.run(["bash", str(copy / script)], env=environment, capture_output=True, text=True,
                              check=False, timeout=60)
        assert done.returncode == 0, done.stderr
        commands = [line.strip("\0").split("\0") for line in recorded.read_text().splitlines() if line.strip("\0")]
        assert commands[0][:3] == ["python3", "-m", "venv"] and commands[1][:2] == ["pip", "install"], commands
        return [[f".venv/bin/{c[0]}", *c[1:]] for c in commands[2:]]

    def python(self, code: str, where: str) -> None:
        """Python code in a fresh interpreter in the folder, as a reader runs it."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (self.site, ROOT)))}
        done = subprocess.run([sys.executable, "-c", code], cwd=self.folder, env=env, capture_output=True, text=True,
                              check=False, timeout=600)
        assert done.returncode == 0, f"{where}: {done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One folder for every page, W&B offline, the example's distribution removed from ``sys.path`` at the end."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    folder = Project(tmp_path_factory.mktemp("project"))
    yield folder
    if str(folder.site) in sys.path:
        sys.path.remove(str(folder.site))
        sys.modules.pop("tiny_char_model", None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs_as_written(page, project):
    code = []
    for language, line, text in blocks(page):
        if language == "python":
            code.append(text)
            continue
        for words in shell_commands(text):
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            project.run(words, env, f"{page}:{line}")
    if code:
        project.python("\n".join(code), page)


def test_every_page_with_commands_is_run():
    pages = {str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    assert pages == set(PAGES)
    assert sum(len(blocks(page)) for page in PAGES) >= 20


def test_the_runner_reads_shell_blocks_as_a_shell_does():
    block = "A=1 tool fit \\\n    --x 'a b'  # a comment\ntool one && tool two\n"
    assert shell_commands(block) == [["A=1", "tool", "fit", "--x", "a b"], ["tool", "one"], ["tool", "two"]]
    assert [language for language, _, _ in blocks("docs/own-model.md")] == ["bash", "python", "python"]


def test_the_readme_test_command_is_what_ci_runs():
    body = (ROOT / "README.md").read_text().split("Install and run the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", body, re.DOTALL).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    for step in command.split(" && "):
        assert step.replace("pip install -e", "pip install -q -e") in ci, step
    assert (ROOT / "docs" / "getting-started.md").read_text().count(command) == 1


def test_ci_runs_the_pinned_type_checker_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index(".venv/bin/python -m pytest -q\n") < ci.index(".venv/bin/python -m mypy\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(re.fullmatch(r"mypy==[\d.]+", pin) for pin in project["project"]["optional-dependencies"]["test"])
    assert project["tool"]["mypy"]["files"] == ["arcore", "pixelgen", "wavegen"]


def test_the_wavenet_page_lists_fit_test_and_sample_for_every_wavenet_config():
    found = [w for _, _, text in blocks("docs/wavenet.md") for w in shell_commands(text)]
    for config in ("wavenet_speech", "wavenet_digits", "wavenet_vocoder"):
        assert ["wavegen", "fit", "--config", f"lightning_configs/{config}.yaml"] in [w[:4] for w in found], config
        assert (ROOT / "lightning_configs" / f"{config}.yaml").is_file()
    assert any("--mel-from" in words and "DIR" in words for words in found)


@pytest.mark.parametrize("config", ["wavenet_speech", "wavenet_digits", "wavenet_vocoder"])
def test_shipped_wavenet_configs_parse_as_they_are(config, capsys):
    with pytest.raises(SystemExit) as done:
        wavegen_main(["fit", "--config", str(ROOT / "lightning_configs" / f"{config}.yaml"), "--print_config"])
    assert done.value.code == 0
    assert "wavegen.wavenet.WaveNet" in capsys.readouterr().out
