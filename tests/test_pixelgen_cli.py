"""pixelgen end to end on generated images: fit -> checkpoint -> resume -> test -> sample PNG; data and errors."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arcore.errors import UsageError
from arcore.files.checkpoint import read_checkpoint
from pixelgen.cli import main
from pixelgen.data import ImageDataModule, quantise
from pixelgen.pixelcnn import PixelCNN
from tests.tiny_configs import trainer_yaml, untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def make_folder_dataset(root: Path, size: int = 8, per_class: int = 12) -> Path:
    """Two classes of RGB images: horizontal and vertical stripes with noise, in ImageFolder layout."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 3)):
        for label, name in enumerate(("horizontal", "vertical")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                stripes = (np.arange(size) % 2 * 200)[:, None].repeat(size, 1)
                noise = rng.integers(0, 50, (size, size, 3))
                img = (stripes if label == 0 else stripes.T)[..., None].repeat(3, 2) + noise
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def tiny_config(tmp_path: Path, data_root: Path) -> Path:
    config = tmp_path / "tiny.yaml"
    sample_logger = """
    - class_path: arcore.training.callbacks.SampleLogger
      init_args: {num_samples: 4}"""
    config.write_text(trainer_yaml(tmp_path / "run", callbacks=sample_logger) + f"""
model:
  class_path: pixelgen.pixelcnn.PixelCNN
  init_args: {{image_shape: [3, 8, 8], levels: 16, hidden: 6, layers: 2, head: 6, num_labels: 2}}
data:
  dataset: folder
  root: {data_root}
  bits: 4
  batch_size: 4
  val_size: 4
""")
    return config


def test_fit_resume_test_sample_end_to_end(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "images")
    config = tiny_config(tmp_path, data)
    assert main(["fit", "--config", str(config)]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list((tmp_path / "run" / "samples").glob("*.png"))  # the sample grid logged during validation
    assert torch.load(last, weights_only=False)["global_step"] == 4

    assert main(["fit", "--config", str(config), "--trainer.max_steps", "6"]) == 0  # resumes from last.ckpt
    assert torch.load(last, weights_only=False)["global_step"] == 6

    assert main(["test", "--config", str(config)]) == 0
    assert "test/bpd" in capsys.readouterr().out

    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(last), "--num-samples", "6", "--out", str(out), "--seed", "3",
                 "--class-label", "1", "--top-p", "0.9"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] > 8

    done = tmp_path / "completions.png"
    assert main(["sample", "--ckpt", str(last), "--num-samples", "4", "--out", str(done), "--prime-rows", "3",
                 "--prime-from", "test"]) == 0
    real = np.asarray(Image.open(tmp_path / "completions_real.png"))
    completed = np.asarray(Image.open(done))
    top = slice(2, 2 + 3)  # the primed rows of the first image in the grid (2 px padding)
    assert np.array_equal(real[top, 2:10], completed[top, 2:10])


def test_console_script_prints_one_line_errors(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"model_class": "wavegen.wavenet.WaveNet", "state_dict": {}}, other)
    result = subprocess.run([sys.executable, "-m", "pixelgen.cli", "sample", "--ckpt", str(other), "--out",
                             str(tmp_path / "x.png")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pixelgen: error: {other} holds a wavegen model (WaveNet); use `wavegen sample` for it"]


def test_sample_errors(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert main(["sample", "--ckpt", str(junk), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(junk), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must name a .png file" in capsys.readouterr().err


def test_mismatched_data_and_model_is_one_line(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "images")
    config = tiny_config(tmp_path, data)
    assert main(["fit", "--config", str(config), "--data.bits", "8"]) == 2
    assert "set --model.init_args.levels 256" in capsys.readouterr().err
    assert main(["fit", "--config", str(config), "--model.init_args.image_shape", "[1, 8, 8]"]) == 2
    assert "set --model.init_args.image_shape [3, 8, 8]" in capsys.readouterr().err


def test_missing_data_offline_names_the_root_option(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="point root at a copy$") as refused:
        ImageDataModule("mnist", root=str(tmp_path), download=False).prepare_data()
    assert refused.value.for_command_line().endswith("point --data.root at a copy")

    import torchvision

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(UsageError, match=r"URLError.*point root at"):
        ImageDataModule("cifar10", root=str(tmp_path)).prepare_data()
    with pytest.raises(UsageError, match="threshold, bernoulli or None"):
        ImageDataModule("mnist", binarize="yes")
    with pytest.raises(UsageError, match="train/<class>"):
        _ = ImageDataModule("folder", root=str(tmp_path)).num_labels


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    import torchvision

    def half_a_download(self, *args, **kwargs):  # torchvision makes MNIST/raw/, then the network fails
        Path(self.raw_folder).mkdir(parents=True)
        (Path(self.raw_folder) / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", half_a_download)
    (tmp_path / "kept.txt").write_text("the user's own file")
    for root in (tmp_path, tmp_path / "new" / "data"):
        with pytest.raises(UsageError, match="URLError"):
            ImageDataModule("mnist", root=str(root)).prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]  # no MNIST/raw/, no new/data/


def test_a_nucleus_that_empties_every_sample_is_warned_about(tmp_path, capsys):
    """A 2-level model that gives the black code 95% at every pixel: a 0.9 nucleus keeps only black, so every
    sample is black, and the command says so in one line; without the nucleus it draws strokes and says nothing."""
    model = PixelCNN(image_shape=(1, 8, 8), levels=2, hidden=4, layers=1, head=4)
    with torch.no_grad():
        model.head2.weight.zero_()
        model.head2.bias.copy_(torch.tensor([3.0, 0.0]))  # p(black) = e^3 / (e^3 + 1) = 0.95
    ckpt = untrained_checkpoint(model, tmp_path / "dark.ckpt")
    out = str(tmp_path / "grid.png")
    warning = "pixelgen: warning: all 8 samples hold a single code throughout: --top-p 0.9 keeps only"

    def brightest() -> int:  # the brightest pixel of the 8 images of the grid (3 a row, 2 pixels of white padding)
        grid = np.asarray(Image.open(out))
        return max(int(grid[2 + r * 10: 10 + r * 10, 2 + q * 10: 10 + q * 10].max()) for r, q in
                   (divmod(i, 3) for i in range(8)))

    assert main(["sample", "--ckpt", str(ckpt), "--out", out, "--num-samples", "8", "--top-p", "0.9"]) == 0
    assert brightest() == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(warning)
    assert main(["sample", "--ckpt", str(ckpt), "--out", out, "--num-samples", "8"]) == 0
    assert brightest() == 255 and "warning" not in capsys.readouterr().err


def test_folder_data_codes_labels_and_splits(tmp_path):
    data = ImageDataModule("folder", root=str(make_folder_dataset(tmp_path)), bits=3, val_size=4, batch_size=4)
    assert data.image_shape == (3, 8, 8) and data.num_labels == 2 and data.levels == 8
    codes, labels = data.split("train")
    val_codes, _ = data.split("val")
    test_codes, _ = data.split("test")
    assert len(codes) == 20 and len(val_codes) == 4 and len(test_codes) == 8
    assert int(codes.max()) < 8 and sorted(set(labels.tolist())) == [0, 1]
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert batch[0].dtype == torch.long and batch[0].shape == (4, 3, 8, 8)
    (tmp_path / "train" / "horizontal" / "broken.png").write_text("not an image")
    with_broken = ImageDataModule("folder", root=str(tmp_path), val_size=4)
    assert len(with_broken.split("train")[0]) == 20  # the unreadable file is skipped (with a warning)


def test_quantise_and_binarise():
    pixels = torch.tensor([0, 15, 16, 127, 128, 255], dtype=torch.uint8)
    assert quantise(pixels, bits=4).tolist() == [0, 0, 1, 7, 8, 15]
    assert quantise(pixels, binarize="threshold").tolist() == [0, 0, 0, 0, 1, 1]
    assert torch.equal(quantise(pixels, bits=8), pixels)


def test_bernoulli_binarisation_is_fixed_and_follows_the_intensity():
    pixels = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).repeat(20000, 1)
    codes = quantise(pixels, binarize="bernoulli", seed=3)
    assert torch.equal(codes, quantise(pixels, binarize="bernoulli", seed=3))
    assert not torch.equal(codes, quantise(pixels, binarize="bernoulli", seed=4))
    frequency = codes.double().mean(0)
    assert frequency[0] == 0 and frequency[3] == 1
    assert abs(frequency[1] - 64 / 255) < 0.01 and abs(frequency[2] - 128 / 255) < 0.01


@pytest.mark.slow
def test_real_mnist_loads_from_the_shared_copy():
    root = ROOT.parent / "shared" / "data"
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip("the shared MNIST copy is not on this machine")
    data = ImageDataModule("mnist", root=str(root), binarize="bernoulli", download=False)
    train, labels = data.split("train")
    assert train.shape == (55000, 1, 28, 28) and len(data.split("test")[0]) == 10000
    assert set(train.unique().tolist()) == {0, 1} and len(set(labels.tolist())) == 10


@pytest.mark.slow
def test_shipped_mnist_config_learns_real_digits(tmp_path, monkeypatch, capsys):
    root = ROOT.parent / "shared" / "data"
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip("the shared MNIST copy is not on this machine")
    monkeypatch.chdir(tmp_path)  # the config's run folder (runs/pixelcnn_mnist) lands here
    config = str(ROOT / "lightning_configs" / "pixelcnn_mnist.yaml")
    quick = ["--data.root", str(root), "--trainer.logger", "false", "--trainer.limit_val_batches", "4",
             "--trainer.val_check_interval", "40"]
    assert main(["fit", "--config", config, *quick, "--trainer.max_steps", "40"]) == 0
    assert main(["test", "--config", config, *quick, "--trainer.limit_test_batches", "8"]) == 0
    bpd = float(next(line.split()[-1] for line in capsys.readouterr().out.splitlines() if "test/bpd" in line))
    assert bpd < 0.6  # a uniform model scores 1 bit/dim; 40 steps of the real model get well below


def test_a_fit_that_stops_between_validations_keeps_its_final_step(tmp_path, capsys):
    """max_steps 3 with a validation every 2 steps: last.ckpt holds step 3, not the save of the validation at 2."""
    config = tiny_config(tmp_path, make_folder_dataset(tmp_path / "images"))
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "3"]) == 0, capsys.readouterr().err
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "5"]) == 0, capsys.readouterr().err
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 5  # resumed from 3
