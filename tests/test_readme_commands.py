"""The README's WaveNet commands, run exactly as written (in order, from a folder laid out like the project's root,
with the shipped configs) on tiny generated audio: only the model's size, the training steps and the data's split
are overridden, so a README command that stops working fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_audio_data import make_audio_folder
from wavegen.cli import main

ROOT = Path(__file__).resolve().parents[1]
# size only: a 2-layer model, 2 training steps, one validation and test batch, short crops, a quarter of the files
# held out each for validation and test
TRAINING = ["--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.val_check_interval", "2",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--model.init_args.layers", "2",
            "--model.init_args.cycles", "1", "--model.init_args.residual_channels", "4",
            "--model.init_args.gate_channels", "4", "--model.init_args.skip_channels", "4",
            "--model.init_args.head_channels", "4", "--model.init_args.cond_channels", "4",
            "--data.target_length", "400", "--data.batch_size", "2", "--data.crops_per_epoch", "4",
            "--data.val_fraction", "0.25", "--data.test_fraction", "0.25"]


def readme_commands(section: str, tool: str) -> list[str]:
    """The ``tool`` command lines of the first bash block under ``## section`` (continuations joined, comments
    dropped)."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.DOTALL).group(1).replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith(f"{tool} ")]


def test_the_readme_lists_fit_test_and_sample_for_every_wavenet_config():
    commands = readme_commands("WaveNet", "wavegen")
    for config in ("wavenet_speech", "wavenet_digits", "wavenet_vocoder"):
        assert any(f"fit  --config lightning_configs/{config}.yaml" in c or
                   f"fit --config lightning_configs/{config}.yaml" in c for c in commands), config
        assert (ROOT / "lightning_configs" / f"{config}.yaml").is_file()
    assert any("--mel-from DIR" in c for c in commands)


def test_every_wavenet_command_of_the_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    data = make_audio_folder(tmp_path / "data", count=8, seconds=0.5)
    (tmp_path / "lightning_configs").symlink_to(ROOT / "lightning_configs")  # the shipped configs, untouched
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for command in readme_commands("WaveNet", "wavegen"):
        argv = [str(data) if arg == "DIR" else arg for arg in shlex.split(command)[1:]]
        if argv[0] in ("fit", "test"):
            argv += TRAINING
        capsys.readouterr()
        status = main(argv)
        assert status == 0, f"{command}: {capsys.readouterr().err[-2000:]}"
        if argv[0] == "test" and "vocoder" in command:
            printed = capsys.readouterr().out
            assert all(f"test/{name}" in printed for name in ("bpd", "pesq", "stoi", "mel_distance")), printed
    assert (tmp_path / "clip.wav").is_file() and (tmp_path / "continued_3.wav").is_file()
    assert (tmp_path / "digit.wav").is_file() and (tmp_path / "resynth.wav").is_file()
    written = sorted(p.relative_to(tmp_path / "resynth") for p in (tmp_path / "resynth").rglob("*.wav"))
    expected = sorted(p.relative_to(data).with_suffix(".wav") for p in data.rglob("*") if p.is_file())
    assert written == expected  # one WAV per input file, the folder's layout kept


@pytest.mark.parametrize("config", ["wavenet_speech", "wavenet_digits", "wavenet_vocoder"])
def test_shipped_wavenet_configs_parse_as_they_are(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "lightning_configs" / f"{config}.yaml"), "--print_config"])
    assert done.value.code == 0
    assert "wavegen.wavenet.WaveNet" in capsys.readouterr().out
