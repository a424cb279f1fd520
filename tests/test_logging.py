"""W&B logging: offline unless an account is configured, and sample grids logged during validation (to W&B,
TensorBoard and files), with completions of real validation images for image models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from arcore.errors import UsageError
from arcore.training.wandb_mode import api_key_configured, choose_wandb_mode
from pixelgen.cli import main as pixelgen_main
from arcore.training.callbacks import SampleLogger
from pixelgen.igpt import ImageGPT
from pixelgen.pixelcnn import PixelCNN
from tests.test_palette import COLOURS, patch_images
from tests.test_pixelgen_cli import ROOT, make_folder_dataset
from wavegen.wavenet import WaveNet


def test_wandb_is_offline_unless_an_account_is_configured_and_reachable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    choose_wandb_mode("pixelgen")
    assert os.environ["WANDB_MODE"] == "offline" and capsys.readouterr().err == ""

    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password secret-key\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert api_key_configured() is False  # an entry for another server than W&B's
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # an account on a server that is down
    assert api_key_configured() is True
    choose_wandb_mode("pixelgen")
    assert os.environ["WANDB_MODE"] == "offline"
    assert "W&B server 127.0.0.1 cannot be reached: logging offline" in capsys.readouterr().err

    monkeypatch.setenv("WANDB_MODE", "disabled")
    choose_wandb_mode("pixelgen")
    assert os.environ["WANDB_MODE"] == "disabled"

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_BASE_URL")
    with pytest.raises(UsageError, match="WANDB_MODE=online but no W&B API key is configured"):
        choose_wandb_mode("pixelgen")


def test_a_run_logs_into_its_own_folder_after_the_process_changed_folder(tmp_path, monkeypatch):
    """W&B's service resolves a relative run folder against the folder it started in: each run's folder is made
    absolute before it starts, so a second run from another folder writes its log where ``wandb sync`` looks."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    images = make_folder_dataset(tmp_path / "images", size=8)
    for first in ("a", "b"):
        (tmp_path / first).mkdir()
        monkeypatch.chdir(tmp_path / first)
        status = pixelgen_main(["fit", "--config", str(ROOT / "lightning_configs" / "pixelcnn_mnist.yaml"), "--name", "run",
                       "--data.dataset", "folder", "--data.root", str(images), "--data.channels", "1",
                       "--data.batch_size", "2", "--data.val_size", "2", "--model.init_args.image_shape", "[1, 8, 8]",
                                 "--model.init_args.hidden", "4",
                       "--model.init_args.layers", "1", "--trainer.max_steps", "1", "--trainer.limit_val_batches",
                       "1", "--trainer.enable_progress_bar", "false"])
        assert status == 0
        runs = list((tmp_path / first / "runs" / "run" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), (first, runs)


def wandb_history(run: Path, wait: float = 60.0) -> list[dict[str, object]]:
    """The history rows an offline W&B run recorded, read from its ``run-*.wandb`` log (LevelDB-style blocks of
    32 KiB after a 7-byte header, each record ``crc32 length type data``, a protobuf ``Record``), each as
    ``{key: value}`` (nested keys joined with ``/``, values parsed from JSON). W&B's service writes the log after
    ``finish`` returns: this waits (at most ``wait`` seconds) for the run's closing ``exit`` record."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + wait
    while True:
        raw = next(run.glob("run-*.wandb")).read_bytes()
        records, pos, chunk = [], 7, b""
        while pos + 7 <= len(raw):
            left = 32768 - pos % 32768
            if left < 7:  # a block's tail too short for a record header is padding
                pos += left
                continue
            length, kind = int.from_bytes(raw[pos + 4: pos + 6], "little"), raw[pos + 6]
            if kind == 0 or pos + 7 + length > len(raw):  # the end of what is written so far
                break
            chunk += raw[pos + 7: pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                records.append(wandb_internal_pb2.Record.FromString(chunk))
                chunk = b""
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def logged_media(tmp_path: Path, logger, kinds: tuple[str, ...]) -> None:
    """The grids of ``kinds`` (``images``, ``completions``) reached the offline W&B run of ``logger`` at the
    training step they were drawn at, once each, pixel for pixel the files written under ``samples/``."""
    run = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    rows = [row for row in wandb_history(run) if any(key.startswith("samples/") for key in row)]
    assert len(rows) == 1 and rows[0]["trainer/global_step"] == 2, rows
    row = rows[0]
    assert sorted({key.split("/")[1] for key in row if key.startswith("samples/")}) == sorted(kinds)
    for kind, written in (("images", "step0000002.png"), ("completions", "step0000002_completions.png")):
        if kind in kinds:
            assert row[f"samples/{kind}/_type"] == "image-file"
            logged = np.asarray(Image.open(run / "files" / row[f"samples/{kind}/path"]))
            expected = np.asarray(Image.open(tmp_path / "samples" / written))
            assert np.array_equal(logged, expected) and expected.std() > 0
            assert (row[f"samples/{kind}/width"], row[f"samples/{kind}/height"]) == expected.shape[1::-1]


def test_sample_grids_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)
    logger = WandbLogger(project="pixelgen-test", save_dir=str(tmp_path))
    fit_briefly(model, torch.randint(0, 2, (8, 1, 6, 6)), logger, tmp_path, num_samples=4, num_completions=0)
    logged_media(tmp_path, logger, ("images",))


def fit_briefly(model: pl.LightningModule, codes: torch.Tensor, logger, root: Path, **sample_logger) -> pl.Trainer:
    """Train ``model`` 2 steps on ``codes`` (labels 0), validating once on the same data with a SampleLogger."""
    data = TensorDataset(codes, torch.zeros(len(codes), dtype=torch.long))
    trainer = pl.Trainer(max_steps=2, logger=logger, callbacks=[SampleLogger(**sample_logger)],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(root), num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return trainer


def tiles(path: Path, size: int, count: int, per_row: int) -> list[np.ndarray]:
    """The first ``count`` square tiles of a grid PNG written by ``arcore.files.media`` (2 pixels of padding)."""
    grid = np.asarray(Image.open(path))
    corners = [(2 + r * (size + 2), 2 + q * (size + 2)) for r, q in (divmod(i, per_row) for i in range(count))]
    return [grid[y: y + size, x: x + size] for y, x in corners]


@pytest.mark.parametrize("kind", ["pixelcnn", "igpt"])
def test_completions_of_validation_images_keep_their_top_half_beside_the_original(kind, tmp_path):
    if kind == "igpt":  # 8-bit colour images through a palette: the prime is the palette tokens of the top rows
        images = patch_images(COLOURS, n=8, size=8, noise=0.0).long()
        model = ImageGPT(image_shape=(3, 8, 8), palette_size=8, width=16, layers=1, heads=2,
                         palette_cache=str(tmp_path))
        model.fit_palette(images)
        real = model.render_samples(model.encode_images(images)).pixels
    else:
        images = torch.randint(0, 2, (8, 1, 8, 8), generator=torch.Generator().manual_seed(0))
        model = PixelCNN(image_shape=(1, 8, 8), levels=2, hidden=4, layers=2, head=4)
        real = images.float()
    fit_briefly(model, images, False, tmp_path, num_samples=2, num_completions=4)
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["step0000002.png", "step0000002_completions.png"]
    # 4 pairs, 2 a row: (original, completion) of the first 4 validation images
    pictures = tiles(tmp_path / "samples" / "step0000002_completions.png", 8, 8, per_row=4)
    for i in range(4):
        original, completion = pictures[2 * i], pictures[2 * i + 1]
        expected = (real[i].movedim(0, -1) * 255).round().to(torch.uint8).expand(8, 8, 3).numpy()
        assert np.array_equal(original, expected)
        assert np.array_equal(completion[:4], original[:4])  # the top half is the real one


def test_wandb_run_gets_the_completions(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)
    logger = WandbLogger(project="pixelgen-test", save_dir=str(tmp_path))
    fit_briefly(model, torch.randint(0, 2, (8, 1, 6, 6)), logger, tmp_path, num_samples=2, num_completions=2)
    logged_media(tmp_path, logger, ("images", "completions"))


@pytest.mark.parametrize("kind", ["pixelcnn", "wavenet"])
def test_tensorboard_gets_the_pictures_and_audio_and_files_land_in_its_log_dir(kind, tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    if kind == "wavenet":
        model = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                        quantization=16)
        fit_briefly(model, torch.randint(0, 16, (8, 40)), logger, tmp_path, num_samples=2, audio_seconds=0.01)
        expected = {"images": ["samples/spectrogram"], "audio": ["samples/audio/0", "samples/audio/1"]}
    else:
        model = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)
        fit_briefly(model, torch.randint(0, 2, (8, 1, 6, 6)), logger, tmp_path, num_samples=2, num_completions=2)
        expected = {"images": ["samples/completions", "samples/images"], "audio": []}
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {tag_type: sorted(events.Tags()[tag_type]) for tag_type in expected} == expected
    assert events.Images(expected["images"][0])[0].step == 2
    assert (Path(logger.log_dir) / "samples" / "step0000002.png").is_file() is (kind == "pixelcnn")
    assert (Path(logger.log_dir) / "samples" / "step0000002_spec.png").is_file() is (kind == "wavenet")


def test_a_fit_prints_its_own_lines_and_real_warnings_but_no_third_party_noise(tmp_path):
    """A tiny fit over the base config (the W&B logger, offline; checkpoints that save last.ckpt; ckpt_path: last
    with nothing to resume yet), run as a user runs it: Lightning's litlogger tip, torch's LeafSpec deprecation,
    W&B's anonymous-setting warning and Lightning's save_last hint are gone (arcore.training.quiet), a real warning of
    Lightning's (too few batches for the logging interval) is still there."""
    config = tmp_path / "run.yaml"
    config.write_text(f"""
name: quiet
trainer: {{accelerator: cpu, max_steps: 4, val_check_interval: 2, check_val_every_n_epoch: null}}
model:
  class_path: pixelgen.pixelcnn.PixelCNN
  init_args: {{image_shape: [3, 8, 8], levels: 16, hidden: 6, layers: 2, head: 6, num_labels: 2}}
data: {{dataset: folder, root: {make_folder_dataset(tmp_path / "images")}, bits: 4, batch_size: 4, val_size: 4}}
""")
    result = subprocess.run([sys.executable, "-m", "pixelgen.cli", "fit", "--config", str(config)], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, check=False)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert (tmp_path / "runs" / "quiet" / "checkpoints" / "last.ckpt").is_file()
    for noise in ("litlogger", "Tip:", "LeafSpec", "anonymous setting", "save_last"):
        assert noise not in console, noise
    assert "smaller than the logging interval" in console and "`max_steps=4` reached" in console
