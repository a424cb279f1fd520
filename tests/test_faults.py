"""Faults a careless or unlucky user meets, each ending in one line, the right exit status and nothing lost: a run
stopped by Ctrl-C, SIGTERM or its step budget keeps its work and resumes exactly where it stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from arcore.files.atomic import write_atomically
from arcore.files.checkpoint import read_checkpoint
from pixelgen.cli import main as pixelgen
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_runs import KILL_CONFIG, fit_process, same_training_state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    """The data and the final checkpoint of the kill -9 test's run (6 epochs of 5 steps), never stopped."""
    tmp = tmp_path_factory.mktemp("whole")
    data = make_folder_dataset(tmp / "data")
    config = tmp / "whole.yaml"
    config.write_text(KILL_CONFIG.format(run=tmp / "whole", data=data))
    whole = fit_process(config)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    return data, read_checkpoint(tmp / "whole" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_saves_the_step_and_the_resumed_run_ends_with_the_uninterrupted_weights(
        signum, uninterrupted, tmp_path, capfd):
    data, whole = uninterrupted
    config = tmp_path / "stopped.yaml"
    config.write_text(KILL_CONFIG.format(run=tmp_path / "run", data=data))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stopped = fit_process(config)
    deadline = time.monotonic() + 900  # a busy machine can take minutes to start a run
    while not last.is_file() and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped.poll() is None and last.is_file(), f"not stoppable mid-run: {stopped.stderr.read()[-500:]}"
    seen = read_checkpoint(last)["global_step"]
    stopped.send_signal(signum)
    status, err = stopped.wait(timeout=120), stopped.stderr.read()
    assert status == 128 + signum and "Traceback" not in err, err[-3000:]  # 130 for Ctrl-C, 143 for SIGTERM
    name = "Ctrl-C \\(SIGINT\\)" if signum == signal.SIGINT else "SIGTERM"
    line = err.strip().splitlines()[-1]  # the command's last word
    match = re.fullmatch(rf"pixelgen: stopped by {name} at step (\d+) \(epoch (\d+), after batch (\d+) of it\): "
                         rf"saved {re.escape(str(last))}; to resume, run the same command again \(ckpt_path: last "
                         rf"resumes it\)", line)
    assert match, f"signalled when last.ckpt held step {seen}: {err[-3000:]}"
    step = int(match[1])
    saved = read_checkpoint(last)
    assert saved["global_step"] == step and 0 < step < 30 and step % 5, step  # in the middle of an epoch
    assert (int(match[2]), int(match[3])) == divmod(step, 5)

    capfd.readouterr()
    assert pixelgen(["fit", "--config", str(config), "--data.batch_size", "2"]) == 2  # would skip or repeat data
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        f"pixelgen: error: {last} stopped {step % 5} batches into an epoch at --data.batch_size 4; resuming at "
        f"--data.batch_size 2 would skip or repeat examples of that epoch: resume with --data.batch_size 4 (change "
        f"it at an epoch's end), or start a new run")

    plain = tmp_path / "no_ema.yaml"  # the trained weights would be dropped for the average
    plain.write_text(config.read_text().replace("    - class_path: arcore.training.callbacks.EMA\n      init_args: {decay: 0.9}\n",
                                                ""))
    assert plain.read_text() != config.read_text()
    assert pixelgen(["fit", "--config", str(plain)]) == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        f"pixelgen: error: {last} was trained with EMA (a weight average): resuming without it would go on from the "
        f"average and drop the trained weights; add --trainer.callbacks+=arcore.training.callbacks.EMA, or start a new "
        f"run")
    resumed = fit_process(config)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    same_training_state(whole, read_checkpoint(last))


def test_a_run_stopped_by_its_step_budget_mid_epoch_resumes_in_that_epoch(tmp_path):
    """max_steps 7 (epoch 1, batch 2 of 5), then on to 12: the weights of a run of 12 steps, not of one that skipped
    the rest of epoch 1 (Lightning counted the cut epoch as done)."""
    data = make_folder_dataset(tmp_path / "data")
    checkpoints = {}
    for name, budgets in (("whole", ["12"]), ("split", ["7", "12"])):
        config = tmp_path / f"{name}.yaml"
        config.write_text(KILL_CONFIG.format(run=tmp_path / name, data=data)
                          .replace("    - class_path: tests.test_runs.SlowSteps\n", "")
                          .replace("lr: 0.01}", "lr: 0.01, lr_schedule: constant}"))  # the same schedule at 7 and 12
        for budget in budgets:
            assert pixelgen(["fit", "--config", str(config), "--trainer.max_steps", budget]) == 0
            checkpoints[name, budget] = read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
    assert checkpoints["split", "7"]["global_step"] == 7 and checkpoints["split", "7"]["epoch"] == 1
    same_training_state(checkpoints["whole", "12"], checkpoints["split", "12"])


def test_a_dead_writers_temporary_file_is_removed_by_the_next_write_to_its_folder(tmp_path):
    """A writer killed mid-write (kill -9 during export, sample or a checkpoint save) leaves ``.NAME.<pid>-<hex>
    .partial``; the next atomic write to that folder removes it once its writer is gone and it has been quiet for a
    minute, and keeps those of live writers."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = tmp_path / f".model.safetensors.{gone.pid}-0123abcd.partial"
        live = tmp_path / f".model.safetensors.{alive.pid}-0123abcd.partial"
        fresh = tmp_path / f".grid.png.{gone.pid}-4567abcd.partial"  # its writer may be on another machine
        for path in (dead, live, fresh):
            path.write_bytes(b"half a file")
        for path in (dead, live):
            os.utime(path, (time.time() - 120, time.time() - 120))
        write_atomically(tmp_path / "grid.png", b"a picture")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, fresh.name, "grid.png"])
    finally:
        alive.kill()
        alive.wait()


def test_16_bit_grey_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    from pixelgen.data import _read_image

    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow's 16-bit grey, which its convert("L") clips at 255
    assert _read_image(path, 1, None).tolist() == [[0, 1, 128, 255]]
    assert _read_image(path, 3, None)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_a_dc_offset_is_removed_before_peak_normalisation():
    """Speech riding on an offset of 0.3 uses (nearly) all the mu-law levels a centred recording uses."""
    from wavegen.data import mu_law_encode, prepare_audio

    t = torch.arange(8000) / 8000
    speech = 0.5 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)
    centred, offset = (prepare_audio(x.numpy(), 8000, 8000) for x in (speech, speech + 0.3))
    assert abs(float(offset.mean())) < 1e-3 and float(offset.abs().max()) == pytest.approx(0.95)
    assert torch.allclose(offset, centred, atol=2e-3)
    levels = [len(mu_law_encode(x).unique()) for x in (centred, offset)]
    assert levels[1] >= levels[0] - 3 and levels[1] > 200, levels


def test_wandb_with_a_key_but_no_network_logs_offline_at_once_and_an_impossible_mode_is_one_line(
        tmp_path, monkeypatch, capfd):
    import wandb

    from tests.test_pixelgen_cli import tiny_config
    from tests.test_runs import offline_runs, wandb_yaml

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no W&B server
    config = ["fit", "--config", str(tiny_config(tmp_path, make_folder_dataset(tmp_path / "data"))),
              "--config", str(wandb_yaml(tmp_path / "wandb.yaml", tmp_path / "logs"))]
    capfd.readouterr()
    try:
        assert pixelgen(config) == 0
    finally:
        wandb.finish()
    assert "pixelgen: W&B server 127.0.0.1 cannot be reached: logging offline (upload the run later with `wandb " \
           "sync`)" in capfd.readouterr().err.splitlines()
    assert len(offline_runs(tmp_path / "logs")) == 1

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY")
    assert pixelgen([*config, "--trainer.max_steps", "6"]) == 2
    assert capfd.readouterr().err.strip() == (
        "pixelgen: error: WANDB_MODE=online but no W&B API key is configured: run `wandb login` or set "
        "WANDB_API_KEY, or unset WANDB_MODE to log offline (`wandb sync` uploads later)")


def test_a_checkpoint_larger_than_memory_is_refused_before_it_is_read(tmp_path, capfd):
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    huge = tmp_path / "huge.ckpt"
    with huge.open("wb") as f:
        f.truncate(memory)  # sparse: nothing is written, the file only says how long it is
    capfd.readouterr()
    assert pixelgen(["sample", "--ckpt", str(huge), "--out", str(tmp_path / "x.png")]) == 2
    assert capfd.readouterr().err.strip() == (
        f"pixelgen: error: checkpoint {huge} is {memory / 2 ** 30:,.1f} GiB, too large to load in this machine's "
        f"{memory / 2 ** 30:,.0f} GiB of memory (it is read whole, then unpacked): is it the file you meant?")


def test_a_non_finite_test_metric_is_never_recorded(tmp_path):
    from arcore.cli.record import record_test_metrics
    from arcore.errors import UsageError

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"never read")
    with pytest.raises(UsageError, match=r"the test gave test/bpd nan: nothing was recorded in"):
        record_test_metrics(path, {"test/bpd": torch.tensor(float("nan")), "test/loss": torch.tensor(1.0)}, None)
    assert path.read_bytes() == b"never read"


def test_an_unwritable_palette_cache_costs_a_warning_not_the_run(tmp_path, capsys):
    from pixelgen.palette import fit_palette

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a cache folder under a file cannot be made, even by root
    pixels = torch.randint(0, 256, (500, 3), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    palette = fit_palette(pixels, 4, steps=3, cache_dir=blocker / "palettes")
    assert palette.shape == (4, 3)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"pixelgen: warning: the fitted palette was not cached in {blocker / 'palettes'} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
