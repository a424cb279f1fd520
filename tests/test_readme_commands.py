"""The command lines of the README and of the WaveNet page, run exactly as written (in order, from a folder laid out
like the project's root, with the shipped configs and models) on small generated data: only the model's size, the
training steps and the data's split are overridden, so a documented command that stops working fails here."""

from __future__ import annotations

import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest

from pixelgen.cli import main as pixelgen_main
from tests.test_audio_data import make_audio_folder
from wavegen.cli import main as wavegen_main

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"pixelgen": pixelgen_main, "wavegen": wavegen_main}
# size only: a tiny model, 2 training steps, one validation and test batch
STEPS = ["--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.val_check_interval", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
WAVENET = STEPS + ["--model.init_args.layers", "2", "--model.init_args.cycles", "1",
                   "--model.init_args.residual_channels", "4", "--model.init_args.gate_channels", "4",
                   "--model.init_args.skip_channels", "4", "--model.init_args.head_channels", "4",
                   "--model.init_args.cond_channels", "4", "--data.target_length", "400", "--data.batch_size", "2",
                   "--data.crops_per_epoch", "4", "--data.val_fraction", "0.25", "--data.test_fraction", "0.25"]
PIXELCNN = STEPS + ["--model.init_args.hidden", "4", "--model.init_args.layers", "1", "--model.init_args.head", "4",
                    "--data.batch_size", "4", "--data.val_size", "8"]
AUDIO_PLACEHOLDERS = ("DIR", "/path/to/audio")


def commands(path: Path, section: str) -> list[list[str]]:
    """The command lines of the first bash block under ``## section`` of ``path`` (continuations joined, comments
    dropped) that run one of the tools, split into words."""
    body = path.read_text().split(f"## {section}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.DOTALL).group(1).replace("\\\n", " ")
    lines = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]
    return [words for words in lines if Path(words[0]).name in TOOLS]


def readme_commands(section: str) -> list[list[str]]:
    """The README's tool commands of ``section``: each as written for the install of the test command, whose
    ``.venv/bin`` is not on the PATH."""
    found = commands(ROOT / "README.md", section)
    assert found, section
    for words in found:
        assert words[0] in (".venv/bin/pixelgen", ".venv/bin/wavegen"), words
    return found


def run(words: list[str], extra: list[str], capsys) -> str:
    """Run one documented command line in-process (plus ``extra`` for fit and test); its standard output."""
    argv = words[1:] + (extra if words[1] in ("fit", "test") else [])
    capsys.readouterr()
    status = TOOLS[Path(words[0]).name](argv)
    out, err = capsys.readouterr()
    assert status == 0, f"{shlex.join(words)}: {err[-2000:]}"
    return out


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


@pytest.fixture
def project_folder(tmp_path, monkeypatch):
    """A working folder laid out like the project's root (shipped configs, models and docs, untouched), offline W&B."""
    for name in ("lightning_configs", "pretrained", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_the_readme_test_command_is_what_ci_runs():
    body = (ROOT / "README.md").read_text().split("Install and run the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", body, re.DOTALL).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    for step in command.split(" && "):
        assert step.replace("pip install -e", "pip install -q -e") in ci, step


def test_the_shipped_models_sample_as_the_readme_says(project_folder, capsys):
    for words in readme_commands("Shipped models"):
        run(words, [], capsys)
        out = project_folder / words[words.index("--out") + 1]
        assert out.is_file() and out.stat().st_size > 0, out
    assert (ROOT / "docs" / "wavenet_vocoder_original.wav").is_file()


def test_the_readme_pixelgen_commands_run_on_a_local_mnist(project_folder, capsys):
    make_mnist(project_folder / "data")  # the README's --data.root ./data
    printed = [run(words, PIXELCNN, capsys) for words in readme_commands("pixelgen: train, score, sample")]
    assert [words[1] for words in readme_commands("pixelgen: train, score, sample")] == ["fit", "test", "sample"]
    assert "test/nll" in printed[1]
    assert (project_folder / "runs" / "pixelcnn_mnist" / "checkpoints" / "last.ckpt").is_file()
    assert (project_folder / "grid.png").is_file()


def test_the_readme_wavegen_commands_run_on_a_folder_of_audio(project_folder, capsys):
    data = make_audio_folder(project_folder / "audio", count=8, seconds=0.5)
    found = readme_commands("wavegen: train, score, sample")
    assert [words[1] for words in found] == ["fit", "test", "sample", "griffin-lim"]
    for words in found:
        run([str(data) if word in AUDIO_PLACEHOLDERS else word for word in words], WAVENET, capsys)
    assert (project_folder / "clip.wav").is_file() and (project_folder / "griffin_lim.wav").is_file()


def test_the_wavenet_page_lists_fit_test_and_sample_for_every_wavenet_config():
    found = commands(ROOT / "docs" / "wavenet.md", "Commands")
    for config in ("wavenet_speech", "wavenet_digits", "wavenet_vocoder"):
        assert ["wavegen", "fit", "--config", f"lightning_configs/{config}.yaml"] in [w[:4] for w in found], config
        assert (ROOT / "lightning_configs" / f"{config}.yaml").is_file()
    assert any("--mel-from" in words and "DIR" in words for words in found)


def test_every_command_of_the_wavenet_page_runs_as_written(project_folder, capsys):
    data = make_audio_folder(project_folder / "data", count=8, seconds=0.5)
    for words in commands(ROOT / "docs" / "wavenet.md", "Commands"):
        printed = run([str(data) if word in AUDIO_PLACEHOLDERS else word for word in words], WAVENET, capsys)
        if words[1] == "test" and "lightning_configs/wavenet_vocoder.yaml" in words:
            assert all(f"test/{name}{system}" in printed for name in ("pesq", "stoi", "mel_distance")
                       for system in ("", "_mel_griffin_lim", "_griffin_lim", "_mulaw")), printed
            assert "test/bpd" in printed
    assert (project_folder / "clip.wav").is_file() and (project_folder / "continued_3.wav").is_file()
    assert (project_folder / "digit.wav").is_file() and (project_folder / "resynth.wav").is_file()
    written = sorted(p.relative_to(project_folder / "resynth") for p in (project_folder / "resynth").rglob("*.wav"))
    expected = sorted(p.relative_to(data).with_suffix(".wav") for p in data.rglob("*") if p.is_file())
    assert written == expected  # one WAV per input file, the folder's layout kept
    assert (project_folder / "griffin_lim.wav").is_file()  # from clip.wav, with no model
    inverted = project_folder / "griffin_lim"
    assert sorted(p.relative_to(inverted) for p in inverted.rglob("*.wav")) == expected


@pytest.mark.parametrize("config", ["wavenet_speech", "wavenet_digits", "wavenet_vocoder"])
def test_shipped_wavenet_configs_parse_as_they_are(config, capsys):
    with pytest.raises(SystemExit) as done:
        wavegen_main(["fit", "--config", str(ROOT / "lightning_configs" / f"{config}.yaml"), "--print_config"])
    assert done.value.code == 0
    assert "wavegen.wavenet.WaveNet" in capsys.readouterr().out
