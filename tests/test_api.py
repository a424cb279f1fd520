"""The public Python API and the weights files for sharing: the names import (``import arcore`` stays light),
``load`` round-trips every model kind from a ``.ckpt`` and from its ``export`` (identical samples from one seed,
identical ``log_prob``), the export holds the EMA weights, ``test --record_metrics`` writes into the file, and the
README's "From Python" code runs exactly as written."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import arcore
import pixelgen
import wavegen
from arcore.errors import UsageError
from arcore.files.checkpoint import read_checkpoint
from pixelgen.cli import main as pixelgen_main
from tests.contract import randomise
from tests.test_pixelgen_cli import make_folder_dataset, tiny_config
from tests.tiny_configs import untrained_checkpoint
from wavegen.cli import main as wavegen_main

ROOT = Path(__file__).resolve().parents[1]


def test_the_public_names_import_and_are_the_modules_own():
    from arcore import AutoregressiveModule, Decoding, Sampler, StepCache, beam_search, sample
    from pixelgen import ImageDataModule, ImageGPT, PixelCNN, load  # noqa: F401
    from wavegen import AudioCond, AudioDataModule, MelFrames, WaveNet, mel_griffin_lim  # noqa: F401

    assert set(pixelgen.__all__) == {"PixelCNN", "ImageGPT", "ImageDataModule", "load"}
    assert set(wavegen.__all__) == {"WaveNet", "AudioCond", "AudioDataModule", "load", "MelFrames", "mel_griffin_lim",
                                    "least_squares_griffin_lim"}
    assert {"AutoregressiveModule", "sample", "beam_search", "StepCache", "Decoding", "Sampler"} <= set(arcore.__all__)
    for package in (arcore, pixelgen, wavegen):
        assert all(hasattr(package, name) for name in package.__all__)
    assert issubclass(PixelCNN, AutoregressiveModule) and issubclass(WaveNet, AutoregressiveModule)
    assert sample.__module__ == beam_search.__module__ == "arcore.sampling.engine"
    assert Decoding.__module__ == "arcore.sampling.decoding"
    assert StepCache.__module__ == Sampler.__module__ == "arcore.sampling.cache"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        arcore.nothing  # noqa: B018


def test_import_arcore_loads_neither_lightning_nor_wandb():
    probe = ("import sys, arcore; before = set(sys.modules); from arcore import sample, Decoding, StepCache; "
             "print(sorted(m for m in ('torch', 'pytorch_lightning', 'wandb', 'jsonargparse') if m in before), "
             "sorted(m for m in ('pytorch_lightning', 'wandb', 'jsonargparse') if m in sys.modules))")
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert printed.stdout.split() == ["[]", "[]"], printed


def tiny_models() -> dict[str, arcore.AutoregressiveModule]:
    """One small, randomised model of every kind: PixelCNN with a softmax (class-conditional) and with a logistic
    mixture, an image GPT with a fitted palette, WaveNet with speakers and mel conditioning (a learned upsampler)."""
    igpt = pixelgen.ImageGPT(image_shape=(3, 6, 6), palette_size=5, width=8, layers=1, heads=2, palette_steps=3)
    igpt.fit_palette(torch.randint(0, 256, (6, 3, 6, 6), generator=torch.Generator().manual_seed(1),
                                   dtype=torch.uint8))
    return {
        "pixelcnn": randomise(pixelgen.PixelCNN(image_shape=(1, 6, 6), levels=4, hidden=4, layers=2, head=4,
                                                num_labels=3), std=0.3),
        "pixelcnn_mixture": randomise(pixelgen.PixelCNN(image_shape=(3, 5, 5), output="logistic_mixture",
                                                        mixtures=2, hidden=4, layers=1, head=4), std=0.3),
        "igpt": randomise(igpt, std=0.3),
        "wavenet": randomise(wavegen.WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4,
                                             skip_channels=4, head_channels=4, quantization=16, num_labels=2,
                                             n_mels=4, hop_length=8, cond_channels=3, upsample="transposed"),
                             std=0.3),
    }


def sample_and_score(model: arcore.AutoregressiveModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of ``model`` from seed 0 (conditioned as the model needs) and their log-likelihoods."""
    generator = torch.Generator().manual_seed(0)
    if isinstance(model, wavegen.WaveNet):
        mel = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
        cond = wavegen.AudioCond(speaker=torch.tensor([0, 1, 1]), mel=mel)
        codes = model.sample(3, cond=cond, length=40, generator=generator)
    else:
        cond = torch.tensor([0, 2, 1]) if model.num_labels else None
        codes = model.sample(3, cond=cond, generator=generator)
    return codes, model.log_prob(codes, cond)


@pytest.mark.parametrize("kind", ["pixelcnn", "pixelcnn_mixture", "igpt", "wavenet"])
def test_load_round_trips_every_model_kind_through_ckpt_and_export(kind, tmp_path, capsys):
    model = tiny_models()[kind]
    package, main = (wavegen, wavegen_main) if kind == "wavenet" else (pixelgen, pixelgen_main)
    ckpt = untrained_checkpoint(model, tmp_path / f"{kind}.ckpt")
    shared = tmp_path / f"{kind}.safetensors"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(shared)]) == 0
    assert f"wrote {shared}: {type(model).__name__}" in capsys.readouterr().out
    expected_codes, expected_log_prob = sample_and_score(model.eval())
    for path in (ckpt, shared):
        loaded = package.load(path)
        assert type(loaded) is type(model) and not loaded.training
        assert loaded.hparams == model.hparams
        original = model.state_dict()
        assert loaded.state_dict().keys() == original.keys()
        assert all(torch.equal(v, original[k]) for k, v in loaded.state_dict().items())
        codes, log_prob = sample_and_score(loaded)
        assert torch.equal(codes, expected_codes) and torch.equal(log_prob, expected_log_prob)
    if kind == "igpt":
        assert bool(loaded.palette_fitted) and torch.equal(loaded.palette, model.palette)
    with safe_open(shared, "pt") as f:
        metadata = f.metadata()
        assert "optimizer" not in " ".join(f.keys())
    assert metadata["model_class"] == f"{type(model).__module__}.{type(model).__name__}"
    assert json.loads(metadata["hyper_parameters"])["image_shape" if kind != "wavenet" else "n_mels"]
    assert json.loads(metadata["metrics"])["test"] is None and metadata["weights"] == "trained"


def test_export_with_half_weights_ships_a_wavenet_whose_fused_step_holds_float16(tmp_path, capsys):
    from wavegen.wavenet_step import weight_dtype

    model = tiny_models()["wavenet"]
    ckpt = untrained_checkpoint(model, tmp_path / "wavenet.ckpt")
    shared = tmp_path / "half.safetensors"
    assert wavegen_main(["export", "--ckpt", str(ckpt), "--out", str(shared), "--half-weights"]) == 0
    assert "weights rounded to float16 values" in capsys.readouterr().out
    loaded = wavegen.load(shared)
    assert weight_dtype(loaded) == torch.float16 and weight_dtype(model) == torch.float32
    model.round_weights_to_half()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    with safe_open(shared, "pt") as f:
        assert f.metadata()["weight_values"] == "float16"
    pixel = untrained_checkpoint(tiny_models()["pixelcnn"], tmp_path / "pixelcnn.ckpt")
    assert pixelgen_main(["export", "--ckpt", str(pixel), "--out", str(tmp_path / "p.safetensors"),
                          "--half-weights"]) == 2
    assert "--half-weights: a PixelCNN has no float16 sampling step" in capsys.readouterr().err


def test_load_refuses_the_other_package_and_names_the_python_call(tmp_path):
    ckpt = untrained_checkpoint(tiny_models()["wavenet"], tmp_path / "wavenet.ckpt")
    with pytest.raises(UsageError, match=r"holds a wavegen model \(WaveNet\); use wavegen.load for it"):
        pixelgen.load(ckpt)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A class-conditional PixelCNN fitted for 4 steps with EMA on generated images, its config, and its export."""
    root = tmp_path_factory.mktemp("fitted")
    data = make_folder_dataset(root / "images")
    config = tiny_config(root, data)
    config.write_text(config.read_text().replace("  callbacks:\n", "  callbacks:\n    - class_path: "
                                                 "arcore.training.callbacks.EMA\n      init_args: {decay: 0.5}\n"))
    assert pixelgen_main(["fit", "--config", str(config)]) == 0
    last = root / "run" / "checkpoints" / "last.ckpt"
    shared = root / "model.safetensors"
    assert pixelgen_main(["export", "--ckpt", str(last), "--out", str(shared)]) == 0
    return {"data": data, "config": config, "last": last, "shared": shared}


def test_export_holds_the_ema_weights_and_what_is_known_of_the_run(fitted):
    checkpoint = read_checkpoint(fitted["last"])
    exported = read_checkpoint(fitted["shared"])
    assert exported["weights_only"] and "optimizer_states" not in exported
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)  # the average differs from the raw weights
    assert all(torch.equal(exported["state_dict"][k], average[k]) for k in average)
    metadata = exported["metadata"]
    assert metadata["weights"] == "ema"
    assert json.loads(metadata["trained"])["global_step"] == 4
    metrics = json.loads(metadata["metrics"])
    assert metrics["test"] is None and "--record_metrics true" in metrics["note"]
    assert math.isfinite(metrics["validation"]["val/bpd"])
    data = json.loads(metadata["data"])
    assert data["bits"] == 4 and data["dataset"] == "folder" and "root" not in data  # no path of this machine


def test_test_and_sample_take_the_weights_file_like_the_checkpoint(fitted, tmp_path, capsys):
    config, last, shared = fitted["config"], fitted["last"], fitted["shared"]
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(shared.read_bytes())
    capsys.readouterr()
    assert pixelgen_main(["test", "--config", str(config), "--ckpt_path", str(last)]) == 0
    from_ckpt = re.findall(r"test/bpd\s+([\d.]+)", capsys.readouterr().out)
    assert pixelgen_main(["test", "--config", str(config), "--ckpt_path", str(copy), "--record_metrics", "true"]) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"test/bpd\s+([\d.]+)", printed)[0] == from_ckpt[0] and "recorded test/bpd" in printed
    recorded = json.loads(read_checkpoint(copy)["metadata"]["metrics"])
    assert recorded["test"]["test/bpd"] == pytest.approx(float(from_ckpt[0]), abs=1e-5)
    assert recorded["test_data"]["bits"] == 4 and "note" not in recorded
    assert all(torch.equal(v, read_checkpoint(shared)["state_dict"][k])
               for k, v in read_checkpoint(copy)["state_dict"].items())  # tensors untouched
    for path, out in ((last, tmp_path / "a.png"), (shared, tmp_path / "b.png")):
        assert pixelgen_main(["sample", "--ckpt", str(path), "--out", str(out), "--num-samples", "4",
                              "--prime-rows", "3", "--data-root", str(fitted["data"])]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a_real.png").read_bytes() == (tmp_path / "b_real.png").read_bytes()


def readme_python() -> str:
    """The first python block under the README's "From Python" heading."""
    body = (ROOT / "README.md").read_text().split("## From Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


def test_the_readme_python_code_runs_as_written(fitted, tmp_path, monkeypatch):
    code = readme_python()
    assert len(code.strip().splitlines()) <= 14
    named = re.findall(r'load\("([^"]+)"\)', code)
    assert named, code
    model = pixelgen.PixelCNN(image_shape=(1, 28, 28), levels=2, hidden=2, layers=1, head=2)
    ckpt = untrained_checkpoint(randomise(model, std=0.3), tmp_path / "run.ckpt")
    monkeypatch.chdir(tmp_path)
    target = tmp_path / named[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    assert pixelgen_main(["export", "--ckpt", str(ckpt), "--out", str(target)]) == 0
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert scope["samples"].shape == (16, 1, 28, 28)
    assert torch.equal(scope["completed"][:, :, :14], scope["samples"][:4, :, :14])
    assert scope["bits_per_dim"].shape == (4,) and bool((scope["bits_per_dim"] > 0).all())


def test_library_errors_name_python_arguments_and_the_tools_their_flags():
    """One check, two spellings: the message names the Python argument; the command-line tools print it with
    their flag (``arcore.cli`` prints :meth:`UsageError.for_command_line`)."""
    with pytest.raises(UsageError, match=r"temperature must be > 0, got 0 \(use greedy=True") as refused:
        arcore.Decoding(temperature=0)
    assert refused.value.for_command_line().startswith("--temperature must be > 0, got 0 (use --greedy for")
    with pytest.raises(UsageError, match=r"^top_p must be in \(0, 1\]") as refused:
        tiny_models()["pixelcnn"].sample(1, cond=torch.tensor([0]), top_p=1.5)
    assert refused.value.for_command_line().startswith("--top-p must be")
    with pytest.raises(UsageError, match="^bits must be between 1 and 8, got 9$") as refused:
        pixelgen.ImageDataModule(bits=9)
    assert refused.value.for_command_line() == "--data.bits must be between 1 and 8, got 9"
    vocoder = tiny_models()["wavenet"]
    with pytest.raises(UsageError, match=r"as cond=AudioCond\(mel=model.log_mel\(codes\)\)$") as refused:
        vocoder.sample(1, cond=torch.tensor([0]), length=8)
    assert refused.value.for_command_line().endswith("pass its log-mel frames with --mel-from clip.wav")
    with pytest.raises(UsageError, match=r"^root=/tmp/pytest-of-root/x is not a folder") as refused:
        wavegen.AudioDataModule(root="/tmp/pytest-of-root/x").splits()
    assert refused.value.for_command_line().startswith("--data.root /tmp/pytest-of-root/x is not")  # paths kept
