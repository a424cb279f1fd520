"""Data-parallel training and evaluation on 2 CPU processes (DDP over gloo) through the ``pixelgen`` console script:
the fit completes with samples and a checkpoint, and a DDP test gives the single-process metrics."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from pixelgen.cli import main
from tests.test_pixelgen_cli import make_folder_dataset, tiny_config

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def pixelgen_ddp(*args: str, cwd: Path, timeout: float = 120.0) -> None:
    """Run ``pixelgen ARGS`` with DDP on 2 CPU processes; a hang (a collective one rank never reaches) fails the
    test after ``timeout`` seconds instead of blocking it, and kills both ranks."""
    command = [str(ROOT / ".venv" / "bin" / "pixelgen"), *args, *DDP]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # both ranks in one process group
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"pixelgen {args[0]} with DDP did not finish in {timeout:.0f} s")
    assert process.returncode == 0, output[-3000:]


def csv_metrics(save_dir: Path) -> dict[str, float]:
    """The test metrics a CSVLogger wrote under ``save_dir``."""
    (path,) = save_dir.glob("**/metrics.csv")
    with path.open() as rows:
        (row,) = list(csv.DictReader(rows))
    return {key: float(value) for key, value in row.items() if key.startswith("test/")}


def test_ddp_fit_then_test_matches_one_process(tmp_path):
    data = make_folder_dataset(tmp_path / "images")  # 20 training, 4 validation, 8 test images
    config = str(tiny_config(tmp_path, data))  # batch size 4, 4 steps, validation and samples every 2 steps
    pixelgen_ddp("fit", "--config", config, "--model.init_args.lr", "0.02", "--model.init_args.warmup_steps", "1",
                 cwd=tmp_path)  # a model that has learned something scores the test images unequally
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    # each process gets 10 of the 20 training images, 2 batches an epoch, so step 4 ends the second epoch
    # (one process would still be in its first: 5 batches an epoch)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 1
    samples = {path.name for path in (tmp_path / "run" / "samples").iterdir()}
    assert {"step0000004.png", "step0000004_completions.png"} <= samples  # rank 0 logged during validation

    def test_args(save_dir: str, *more: str) -> list[str]:
        """Test in batches of 2 (8 = 2 processes x 2 x 2: the distributed sampler pads nothing), metrics to CSV."""
        return ["test", "--config", config, "--ckpt_path", str(last), "--data.batch_size", "2", "--trainer.logger",
                "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.init_args.save_dir",
                str(tmp_path / save_dir), *more]

    assert main(test_args("one")) == 0  # 1 process, all 4 batches
    assert main(test_args("half", "--trainer.limit_test_batches", "2")) == 0  # 1 process, the first 4 images
    # 2 processes, 2 batches each: the 8 test images only if the sampler gives each process its own half
    # (a limit of 1 would not do: the CLI reads it as 1.0, all batches)
    pixelgen_ddp(*test_args("ddp", "--trainer.limit_test_batches", "2"), cwd=tmp_path)
    one, ddp = csv_metrics(tmp_path / "one"), csv_metrics(tmp_path / "ddp")
    assert set(one) == {"test/bpd", "test/loss", "test/nll"}
    assert ddp == pytest.approx(one, rel=1e-6)  # rank 0 reports the mean over both processes' images
    # and half the images would not: their mean is off by far more than float rounding
    assert abs(csv_metrics(tmp_path / "half")["test/nll"] / one["test/nll"] - 1) > 1e-4
