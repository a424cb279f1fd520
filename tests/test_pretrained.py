"""The models shipped in ``pretrained/`` and their catalogue (``pretrained/catalogue.py``): every file is in the
catalogue and every entry matches its file (model, training, size, every test metric it records), the README's table
is the catalogue's; each file loads and samples on the CPU with no training, and scores real data (the held-out
digits, images and speech shipped in ``docs/``) far better than the same model freshly initialised; the slow test
measures each again on the real data sets."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from arcore.files.registry import load_checkpoint
from arcore.files.weights import split
from pixelgen.cli import main as pixelgen_main
from pixelgen.igpt import ImageGPT
from wavegen.cli import main as wavegen_main
from wavegen.data import mu_law_encode, read_audio

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
DATA = ROOT.parent / "shared" / "data"


def load_catalogue():
    """``pretrained/catalogue.py`` (a file beside the weights, not a package)."""
    spec = importlib.util.spec_from_file_location("catalogue", PRETRAINED / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


catalogue = load_catalogue()
ENTRIES = {entry.name: entry.value for entry in catalogue.Shipped}


def metadata(path: Path) -> dict[str, str]:
    return split(path.read_bytes(), path, "weights file")[1]


def test_the_catalogue_lists_every_shipped_file_within_the_size_budget():
    assert sorted(p.name for p in PRETRAINED.glob("*.safetensors")) == sorted(e.file for e in ENTRIES.values())
    assert sum(p.stat().st_size for p in PRETRAINED.glob("*.safetensors")) <= 30 * 2 ** 20


@pytest.mark.parametrize("name", ENTRIES)
def test_a_catalogue_entry_is_what_its_file_records(name):
    entry = ENTRIES[name]
    meta = metadata(entry.path)
    assert meta["model_class"] == entry.model and meta["weights"] == "ema"
    assert (entry.tool == "wavegen") == (meta.get("weight_values") == "float16")  # WaveNets ship float16 values
    trained = json.loads(meta["trained"])
    assert trained["global_step"] == entry.steps
    if trained["train_seconds"] is not None:  # a run that was not resumed records its time
        assert entry.minutes == f"{trained['train_seconds'] / 60:.0f}"
    assert entry.size_mb == round(entry.path.stat().st_size / 1e6, 1)
    recorded = json.loads(meta["metrics"])["test"]
    for key, value in entry.metrics.items():
        assert recorded[key] == value, (key, recorded[key], value)
    assert (ROOT / "lightning_configs" / entry.config).is_file()
    shown = set(re.findall(r"\{([^:}]+)", entry.shown))
    assert shown and shown <= entry.metrics.keys()


def test_the_readme_table_is_the_catalogues():
    readme = (ROOT / "README.md").read_text()
    assert catalogue.readme_with_table(readme) == readme
    assert catalogue.main(["--check"]) == 0
    row = ENTRIES["PIXELCNN_MNIST"].row()
    assert row.startswith("| `pretrained/pixelcnn_mnist.safetensors` (1.2 MB) | Gated PixelCNN, binarised MNIST |")
    assert "4,000 steps, 106 min | **83.3 nats/image** (0.153 bits/dim) |" in row
    stale = readme.replace("**83.3 nats/image**", "**80.0 nats/image**")
    assert catalogue.readme_with_table(stale) == readme  # the renderer puts the catalogue's figures back


def grid_cells(path: Path, size: int, channels: int, count: int = 32, scale: int = 1) -> torch.Tensor:
    """The ``count`` pictures of a grid written by ``arcore.files.media.image_grid`` (2-pixel padding, as many
    columns as rows), enlarged ``scale`` times, as uint8 ``[count, channels, size, size]``."""
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"))[::scale, ::scale]
    columns = math.ceil(math.sqrt(count))
    cells = [pixels[2 + r * (size + 2): 2 + r * (size + 2) + size, 2 + c * (size + 2): 2 + c * (size + 2) + size]
             for r, c in (divmod(i, columns) for i in range(count))]
    array = np.stack(cells).reshape(count, size, size, channels).transpose(0, 3, 1, 2)
    return torch.from_numpy(array.copy())


def real_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out data of a shipped model's kind, from the pictures and clips in ``docs/``, as a batch its data
    module would give: (items, labels)."""
    docs = ROOT / "docs"
    if name == "PIXELCNN_MNIST":
        digits = grid_cells(docs / "pixelcnn_mnist_completions_real.png", 28, 1)
        return (digits >= 128).long(), torch.zeros(32, dtype=torch.long)  # binarised
    if name == "PIXELCNN_CIFAR10":
        return grid_cells(docs / "pixelcnn_cifar10_completions_real.png", 32, 3).long(), torch.zeros(32)
    if name == "IGPT_MNIST":  # palette-quantised 14x14 digits, drawn at twice the size
        digits = grid_cells(docs / "igpt_mnist_completions_real.png", 14, 1, scale=2)
        return digits.repeat_interleave(2, 2).repeat_interleave(2, 3), torch.zeros(32)
    speech = mu_law_encode(read_audio(docs / "wavenet_vocoder_original.wav", 8000), 256)
    return speech[None], torch.zeros(1)


@pytest.mark.parametrize("name", ENTRIES)
def test_a_shipped_model_scores_real_data_far_better_than_untrained(name):
    entry = ENTRIES[name]
    trained = load_checkpoint(entry.path, entry.tool, command=None).eval()
    torch.manual_seed(0)
    fresh = type(trained)(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")}).eval()
    if isinstance(trained, ImageGPT):  # its palette is fitted on the data before training: the same for both
        fresh.palette.copy_(trained.palette)
        fresh.palette_fitted.fill_(True)
    batch = real_data(name)
    with torch.no_grad():
        bits = {}
        for which, model in (("trained", trained), ("fresh", fresh)):
            codes, cond = model.unpack(batch)
            bits[which] = (-model.log_prob(codes, cond).mean() / (model.dims(codes) * math.log(2))).item()
    assert bits["trained"] < 0.75 * bits["fresh"], bits
    if "test/bpd" in entry.metrics:  # near its test set's score
        assert abs(bits["trained"] - entry.metrics["test/bpd"]) < 0.25 * entry.metrics["test/bpd"], bits


@pytest.mark.parametrize("name", ["PIXELCNN_MNIST", "PIXELCNN_CIFAR10", "IGPT_MNIST"])
def test_a_shipped_image_model_samples_from_a_fresh_clone(name, tmp_path, capsys):
    out = tmp_path / f"{name}.png"
    status = pixelgen_main(["sample", "--ckpt", str(ENTRIES[name].path), "--num-samples", "2", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    with Image.open(out) as grid:
        assert grid.width > 28 and np.asarray(grid).std() > 10  # two drawn images, not a blank grid


def test_the_shipped_wavenet_and_vocoder_generate_audio(tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    status = wavegen_main(["sample", "--ckpt", str(ENTRIES["WAVENET_SPEECH"].path), "--seconds", "0.05",
                           "--out", str(clip)])
    assert status == 0, capsys.readouterr().err
    assert len(soundfile.read(clip)[0]) == 400
    assert "fused CPU step, float16 weights)" in capsys.readouterr().out  # shipped with float16-valued weights
    speech = tmp_path / "speech.wav"
    t = np.arange(2400) / 8000
    soundfile.write(speech, 0.3 * np.sin(2 * math.pi * 220 * t) * (1 + np.sin(2 * math.pi * 3 * t)), 8000)
    out = tmp_path / "resynth.wav"
    status = wavegen_main(["sample", "--ckpt", str(ENTRIES["WAVENET_VOCODER"].path), "--mel-from", str(speech),
                           "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    resynthesis = soundfile.read(out)[0]
    assert len(resynthesis) == 2400 and resynthesis.std() > 0.01
    assert "fused CPU step, float16 weights)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="needs the real data in ../shared/data")
@pytest.mark.parametrize("name", ENTRIES)
def test_a_shipped_models_test_metric_measured_again_is_the_catalogues(name, tmp_path, capsys):
    entry = ENTRIES[name]
    copy = tmp_path / entry.file
    shutil.copy(entry.path, copy)
    main = pixelgen_main if entry.tool == "pixelgen" else wavegen_main
    status = main(["test", "--config", str(ROOT / "lightning_configs" / entry.config),
                   *entry.test_data.format(data=DATA).split(), "--ckpt_path", str(copy), "--record_metrics", "true",
                   "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    measured = json.loads(metadata(copy)["metrics"])["test"]
    for key, recorded in entry.metrics.items():
        # likelihoods to the README's last digit; the vocoder's scores of drawn audio within a draw's spread (a
        # CPU with other vector units rounds the logits differently, which can change a few drawn samples)
        drawn = next((t for part, t in (("pesq", 0.05), ("stoi", 0.01), ("mel_distance", 0.2)) if part in key), None)
        digits = re.search(rf"\{{{re.escape(key)}:\.(\d)f\}}", entry.shown)
        tolerance = drawn if drawn is not None else 0.6 * 10 ** -int(digits.group(1)) if digits else 1e-3
        assert abs(measured[key] - recorded) <= tolerance, (key, measured[key], recorded)


def test_the_readme_shows_the_fresh_clone_command():
    assert re.search(r"pixelgen sample --ckpt pretrained/pixelcnn_mnist\.safetensors\b.*--out \S+\.png",
                     (ROOT / "README.md").read_text())
