"""The models shipped in ``pretrained/``: each loads and samples on the CPU with no training, records how it was
trained and the test metrics it was measured at, and those are the README's; the slow test measures each again on
the real data."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import pixelgen
import wavegen
from arcore.weights import split
from pixelgen.cli import main as pixelgen_main
from wavegen.cli import main as wavegen_main

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
DATA = ROOT.parent / "shared" / "data"
# file -> (tool, config, data options of its test run, [(test metric, how the README prints it)])
SHIPPED = {
    "pixelcnn_mnist": ("pixelgen", "pixelcnn_mnist", ["--data.root", str(DATA)],
                       [("test/nll", "{:.1f} nats/image")]),
    "pixelcnn_cifar10": ("pixelgen", "pixelcnn_cifar10",
                         ["--data.dataset", "folder", "--data.root", str(DATA / "cifar10-subset")],
                         [("test/bpd", "{:.2f} bits/dim")]),
    "igpt_mnist": ("pixelgen", "igpt_mnist", ["--data.root", str(DATA), "--model.init_args.resolution", "14"],
                   [("test/bpd", "{:.3f} bits/token")]),
    "wavenet_speech": ("wavegen", "wavenet_speech", ["--data.root", str(DATA / "audio" / "speech-en")],
                       [("test/bpd", "{:.2f} bits/sample")]),
    "wavenet_vocoder": ("wavegen", "wavenet_vocoder", ["--data.root", str(DATA / "audio" / "speech-en")],
                        [("test/pesq", "PESQ {:.2f}"), ("test/stoi", "STOI {:.3f}")]),
}


def metadata(name: str) -> dict[str, str]:
    path = PRETRAINED / f"{name}.safetensors"
    return split(path.read_bytes(), path, "weights file")[1]


def readme_row(name: str) -> str:
    """The README's row of the shipped-models table for ``pretrained/<name>.safetensors``."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith(f"| `pretrained/{name}.safetensors`")]
    assert len(rows) == 1, name
    return rows[0]


def printed(name: str, metrics: dict[str, float]) -> list[str]:
    return [shape.format(metrics[key]) for key, shape in SHIPPED[name][3]]


def test_every_shipped_file_is_in_the_readme_and_they_fit_the_size_budget():
    files = sorted(p.stem for p in PRETRAINED.glob("*.safetensors"))
    assert files == sorted(SHIPPED)
    assert sum(p.stat().st_size for p in PRETRAINED.iterdir()) <= 30 * 2 ** 20
    for name in SHIPPED:
        row = readme_row(name)
        assert f"`{SHIPPED[name][1]}.yaml`" in row


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_file_records_its_training_and_the_readmes_test_metrics(name):
    meta = metadata(name)
    assert meta["weights"] == "ema"
    trained = json.loads(meta["trained"])
    row = readme_row(name)
    assert f"{trained['global_step']:,} steps" in row
    test = json.loads(meta["metrics"])["test"]
    for text in printed(name, test):
        assert f"**{text}" in row or f", {text}" in row, (text, row)


@pytest.mark.parametrize("name", ["pixelcnn_mnist", "pixelcnn_cifar10", "igpt_mnist"])
def test_a_shipped_image_model_samples_from_a_fresh_clone(name, tmp_path, capsys):
    out = tmp_path / f"{name}.png"
    status = pixelgen_main(["sample", "--ckpt", str(PRETRAINED / f"{name}.safetensors"), "--num-samples", "2",
                            "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    model = pixelgen.load(PRETRAINED / f"{name}.safetensors")
    samples = model.sample(2, generator=torch.Generator().manual_seed(0))
    noise = torch.randint_like(samples, model.num_classes)
    assert (model.log_prob(samples) > model.log_prob(noise)).all()  # trained: its own draws beat noise


def test_the_shipped_wavenet_and_vocoder_generate_audio(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    status = wavegen_main(["sample", "--ckpt", str(PRETRAINED / "wavenet_speech.safetensors"), "--seconds", "0.05",
                           "--out", str(clip)])
    assert status == 0, capsys.readouterr().err
    assert len(soundfile.read(clip)[0]) == 400
    assert "fused CPU step, float16 weights)" in capsys.readouterr().out  # shipped with float16-valued weights
    speech = tmp_path / "speech.wav"
    t = np.arange(2400) / 8000
    soundfile.write(speech, 0.3 * np.sin(2 * math.pi * 220 * t) * (1 + np.sin(2 * math.pi * 3 * t)), 8000)
    out = tmp_path / "resynth.wav"
    status = wavegen_main(["sample", "--ckpt", str(PRETRAINED / "wavenet_vocoder.safetensors"), "--mel-from",
                           str(speech), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert len(soundfile.read(out)[0]) == 2400
    assert "fused CPU step, float16 weights)" in capsys.readouterr().out
    assert wavegen.load(PRETRAINED / "wavenet_vocoder.safetensors").n_mels == 20  # compact frames
    assert metadata("wavenet_speech")["weight_values"] == metadata("wavenet_vocoder")["weight_values"] == "float16"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="needs the real data in ../shared/data")
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_models_test_metric_measured_again_is_the_readmes(name, tmp_path, capsys):
    tool, config, data, _ = SHIPPED[name]
    copy = tmp_path / f"{name}.safetensors"
    shutil.copy(PRETRAINED / f"{name}.safetensors", copy)
    main = pixelgen_main if tool == "pixelgen" else wavegen_main
    status = main(["test", "--config", str(ROOT / "lightning_configs" / f"{config}.yaml"), *data,
                   "--ckpt_path", str(copy), "--record_metrics", "true", "--trainer.logger", "false",
                   "--trainer.default_root_dir", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    measured = json.loads(split(copy.read_bytes(), copy, "weights file")[1]["metrics"])["test"]
    recorded = json.loads(metadata(name)["metrics"])["test"]
    row = readme_row(name)
    for key, shape in SHIPPED[name][3]:
        assert shape.format(recorded[key]) in row
        # likelihoods to the README's last digit; the vocoder's scores of drawn audio within a draw's spread (a
        # CPU with other vector units rounds the logits differently, which can change a few drawn samples)
        digits = int(re.search(r"\.(\d)f", shape).group(1))
        tolerance = {"test/pesq": 0.05, "test/stoi": 0.01}.get(key, 0.6 * 10 ** -digits)
        assert abs(measured[key] - recorded[key]) <= tolerance, (key, measured[key], recorded[key])


def test_the_readme_shows_the_fresh_clone_command():
    assert re.search(r"pixelgen sample --ckpt pretrained/pixelcnn_mnist\.safetensors\b.*--out \S+\.png",
                     (ROOT / "README.md").read_text())
