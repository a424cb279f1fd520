"""Every error a tool prints speaks the language of the command that printed it: each flag the line names is one that
command takes (``pixelgen sample`` sets the data's folder with ``--data-root``, ``pixelgen fit`` with
``--data.root``), and no message points at a path of a particular machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from arcore.files.checkpoint import read_checkpoint
from pixelgen.cli import main as pixelgen
from pixelgen.pixelcnn import PixelCNN
from tests.test_audio_data import make_audio_folder
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_pixelgen_cli import tiny_config as image_config
from tests.test_wavegen_cli import tiny_config as audio_config
from tests.tiny_configs import untrained_checkpoint
from wavegen.cli import main as wavegen
from wavegen.wavenet import WaveNet

MAINS = {"pixelgen": pixelgen, "wavegen": wavegen}
FLAG = re.compile(r"(?<![\w.-])--[a-z][\w.-]*[\w]")
MODELS = {"pixelgen": ("PixelCNN", "ImageGPT"), "wavegen": ("WaveNet",)}
DATA = {"pixelgen": "ImageDataModule", "wavegen": "AudioDataModule"}


def printed_help(tool: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``tool *argv`` prints, a help that ends the command with status 0."""
    capsys.readouterr()
    try:
        status = MAINS[tool](argv)
    except SystemExit as done:  # argparse and LightningCLI exit after a help
        status = done.code
    assert status == 0, capsys.readouterr().err
    return capsys.readouterr().out


def flags_of(tool: str, command: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The flags ``tool command`` takes, read from its own help (a Lightning command's model and data settings from
    the help of each model class and of the tool's data module, spelled ``--model.init_args.NAME`` as well as
    ``--model.NAME``)."""
    text = printed_help(tool, [command, "--help"], capsys)
    if command != "sample" and command != "export":
        text += "".join(printed_help(tool, [command, "--model.help", name], capsys) for name in MODELS[tool])
        text += printed_help(tool, [command, "--data.help", DATA[tool]], capsys)
    flags = set(FLAG.findall(text))
    return flags | {flag.replace(f"--{group}.", f"--{group}.init_args.") for flag in flags
                    for group in ("model", "data") if flag.startswith(f"--{group}.")}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small untrained checkpoints and data: an image model whose recorded MNIST folder is missing, a WaveNet, a
    vocoder, an ImageFolder tree and a folder of clips, with a config for each tool."""
    root = tmp_path_factory.mktemp("errors")
    pixel = untrained_checkpoint(PixelCNN(image_shape=(1, 8, 8), levels=2, hidden=4, layers=1, head=4),
                                 root / "pixel.ckpt")
    checkpoint = read_checkpoint(pixel)
    checkpoint["datamodule_hyper_parameters"] = {"dataset": "mnist", "root": str(root / "no-mnist"),
                                                 "binarize": "threshold", "download": False}
    torch.save(checkpoint, pixel)
    wave = untrained_checkpoint(WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4,
                                        head_channels=4, quantization=16), root / "wave.ckpt")
    vocoder = untrained_checkpoint(WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4,
                                           head_channels=4, quantization=16, n_mels=8, hop_length=40,
                                           cond_channels=4), root / "vocoder.ckpt")
    images, audio = make_folder_dataset(root / "images"), make_audio_folder(root / "audio")
    (root / "pixelgen").mkdir()
    (root / "wavegen").mkdir()
    return {"pixel": pixel, "wave": wave, "vocoder": vocoder, "root": root, "audio": audio,
            "pixelgen_config": image_config(root / "pixelgen", images),
            "wavegen_config": audio_config(root / "wavegen", audio)}


def error_paths(tool: str, f: dict[str, Path]) -> dict[str, list[list[str]]]:
    """Command lines of ``tool`` that each fail on one bad input, by command."""
    root, out = f["root"], str(f["root"] / ("x.png" if tool == "pixelgen" else "x.wav"))
    model = str(f["pixel" if tool == "pixelgen" else "wave"])
    sample = ["sample", "--ckpt", model, "--out", out]
    config = ["--config", str(f[f"{tool}_config"])]
    paths = {
        "sample": [
            ["sample", "--ckpt", str(root / "missing.ckpt"), "--out", out],
            ["sample", "--ckpt", model, "--out", str(root / "x.jpg")],
            ["sample", "--ckpt", str(f["wave" if tool == "pixelgen" else "pixel"]), "--out", out],
            [*sample, "--temperature", "0"], [*sample, "--temperature", "inf"], [*sample, "--top-p", "1.5"],
            [*sample, "--top-k", "0"], [*sample, "--num-samples", "0"], [*sample, "--batch-size", "0"],
            [*sample, "--seed", "-1"], [*sample, "--threads", "0"], [*sample, "--device", "nowhere"],
            [*sample, "--greedy", "--top-k", "3"],
        ],
        "export": [
            ["export", "--ckpt", str(root / "missing.ckpt"), "--out", str(root / "x.safetensors")],
            ["export", "--ckpt", model, "--out", str(root / "x.bin")],
        ],
        "fit": [
            ["fit", *config, "--record_metrics", "true"],
            ["fit", *config, "--model.init_args.lr", "nan"],
            ["fit", *config, "--name", ".."], ["fit", *config, "--seed_everything", "-1"],
            ["fit", *config, "--trainer.accumulate_grad_batches", "0"],
            ["fit", *config, "--trainer.val_check_interval", "1000000", "--trainer.check_val_every_n_epoch", "1"],
        ],
        "test": [["test", *config, "--ckpt_path", "best"], ["test", *config]],
    }
    if tool == "pixelgen":
        paths["sample"] += [[*sample, "--prime-rows", "4", "--prime-from", "test"],  # the recorded MNIST is missing
                            [*sample, "--prime-rows", "8"], [*sample, "--beams", "-1"],
                            [*sample, "--class-label", "3"]]
        paths["export"] += [["export", "--ckpt", model, "--out", str(root / "x.safetensors"), "--half-weights"]]
        paths["fit"] += [["fit", *config, "--data.bits", "9"],
                         ["fit", *config, "--data.dataset", "mnist", "--data.root", str(root / "none"),
                          "--data.download", "false"],
                         ["fit", *config, "--model.init_args.image_shape", "[1, 8, 8]"]]
    else:
        mel = ["--mel-from", str(f["audio"] / "0_alice_0.wav")]
        paths["sample"] += [[*sample, "--seconds", "0"], [*sample, "--prime-seconds", "-1"],
                            [*sample, "--mel-from", str(root / "nothing.wav")], [*sample, *mel],
                            [*sample, "--speaker", "1"], [*sample, "--prime", str(root / "nothing.wav")],
                            ["sample", "--ckpt", str(f["vocoder"]), "--out", out],
                            ["sample", "--ckpt", str(f["vocoder"]), "--out", out, *mel, "--prime", mel[1]]]
        paths["fit"] += [["fit", *config, "--data.root", str(root / "none")],
                         ["fit", *config, "--data.sample_rate", "16000"],
                         ["fit", *config, "--data.target_length", "1000000000"]]
    return paths


@pytest.mark.parametrize("tool", ["pixelgen", "wavegen"])
def test_every_flag_an_error_names_exists_on_its_command(tool, files, capsys, monkeypatch):
    monkeypatch.chdir(files["root"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for command, lines in error_paths(tool, files).items():
        known = flags_of(tool, command, capsys)
        for argv in lines:
            capsys.readouterr()
            assert MAINS[tool](argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            line = err[-1]
            assert line.startswith(f"{tool}: error: "), (argv, err)
            unknown = set(FLAG.findall(line)) - known
            assert not unknown, f"`{tool} {' '.join(argv)}` printed {line!r}, naming {unknown}: not flags of {command}"
            assert "shared/data" not in line, line


def test_sample_names_its_own_data_flag_for_missing_images(files, capsys):
    out = str(files["root"] / "completions.png")
    assert pixelgen(["sample", "--ckpt", str(files["pixel"]), "--out", out, "--prime-rows", "4"]) == 2
    line = capsys.readouterr().err.strip()
    assert "point --data-root at a copy" in line and "--data.root" not in line, line


@pytest.mark.parametrize("tool", ["pixelgen", "wavegen"])
def test_no_help_text_names_a_path_outside_the_project(tool, capsys):
    texts = [printed_help(tool, [*command, "--help"], capsys) for command in ([], ["sample"], ["export"], ["fit"])]
    for text in texts:
        assert "shared/data" not in text and "project's machines" not in text
