"""Faults a careless or unlucky user meets, each ending in one line, the right exit status and nothing lost: a run
stopped by Ctrl-C, SIGTERM or its step budget keeps its work and resumes exactly where it stopped."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from arcore.errors import UsageError
from arcore.files.atomic import write_atomically
from arcore.files.checkpoint import read_checkpoint
from pixelgen.cli import main as pixelgen
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_runs import KILL_CONFIG, ROOT, fit_process, same_training_state


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


# ----- fourth round: run names, moved runs, data read as it is, outputs and writers, memory ------------------------
def tiny_pixelcnn(path: Path) -> Path:
    """An untrained 3x8x8 PixelCNN's checkpoint: enough for ``sample`` and ``export`` to write an output."""
    from pixelgen.pixelcnn import PixelCNN
    from tests.tiny_configs import untrained_checkpoint

    return untrained_checkpoint(PixelCNN(image_shape=(3, 8, 8), levels=16, hidden=6, layers=2, head=6), path)


def named_config(folder: Path, data: Path) -> Path:
    """The tiny PixelCNN run of ``tests.test_pixelgen_cli`` with its folder left to its name: ``runs/NAME`` under
    the working folder (``folder/tiny.yaml``)."""
    from tests.test_pixelgen_cli import tiny_config

    config = tiny_config(folder, data)
    text = re.sub(r"  default_root_dir: .*\n", "", config.read_text())
    text = text.replace(f"dirpath: {folder / 'run'}/checkpoints, ", "")
    assert "default_root_dir" not in text and "dirpath" not in text
    config.write_text(text)
    return config


def test_a_run_name_is_one_folder_under_runs_and_nothing_outside_it_is_written(tmp_path, monkeypatch, capfd):
    from tests.test_bad_input import tree

    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    config = named_config(work, make_folder_dataset(tmp_path / "data"))
    (work / "config.yaml").write_text("the user's own config\n")
    (work / "shared.yaml").write_text("name: ..\n")
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    for extra, name in ((["--name", ".."], ".."), (["--name", "../../escaped"], "../../escaped"),
                        (["--config", "shared.yaml"], ".."), (["--name", ""], "''")):
        capfd.readouterr()
        assert pixelgen(["fit", "--config", str(config), *extra]) == 2
        assert capfd.readouterr().err.strip().splitlines() == [
            f"pixelgen: error: --name {name} is not a plain folder name: the run's folder is runs/NAME, so NAME cannot "
            f"be empty, '.' or '..' nor hold '/' or '\\' (e.g. --name mnist_small)"]
    assert tree(tmp_path) == before  # the user's config.yaml whole, no checkpoints/ beside it, nothing above runs/


def test_a_moved_run_keeps_saving_last_ckpt_and_a_stale_last_ckpt_is_never_read_silently(tmp_path, monkeypatch,
                                                                                          capfd):
    """Lightning took a moved run's ``last.ckpt`` for another run's and saved ``last-v1.ckpt`` from then on; sample
    and export of ``last.ckpt`` read the old step without a word."""
    config = named_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert pixelgen(["fit", "--config", str(config), "--name", "first"]) == 0
    shutil.copytree(tmp_path / "runs" / "first", tmp_path / "runs" / "moved")
    assert pixelgen(["fit", "--config", str(config), "--name", "moved", "--trainer.max_steps", "6"]) == 0
    moved = tmp_path / "runs" / "moved" / "checkpoints"
    assert sorted(p.name for p in moved.glob("last*")) == ["last.ckpt"]
    assert read_checkpoint(moved / "last.ckpt")["global_step"] == 6
    assert len([p for p in moved.glob("*.ckpt") if p.name != "last.ckpt"]) == 1  # its best, not a second "first"

    first = tmp_path / "runs" / "first" / "checkpoints"  # as an earlier version left a moved run: last-v1 is ahead
    shutil.copy(moved / "last.ckpt", first / "last-v1.ckpt")
    os.utime(first / "last.ckpt", (time.time() - 60, time.time() - 60))
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    for command in (["sample", "--ckpt", str(first / "last.ckpt"), "--out", str(tmp_path / "grid.png")],
                    ["export", "--ckpt", str(first / "last.ckpt"), "--out", str(tmp_path / "model.safetensors")]):
        capfd.readouterr()
        assert pixelgen(command) == 2
        (line,) = capfd.readouterr().err.strip().splitlines()
        assert line.endswith(f"{first / 'last.ckpt'} is older than last-v1.ckpt beside it, the run's later last "
                             f"checkpoint (saved under that name after the run folder was moved or copied): pass "
                             f"{first / 'last-v1.ckpt'}, or remove the older file"), line
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before and not list(tmp_path.glob("grid*"))

    assert pixelgen(["fit", "--config", str(config), "--name", "first", "--trainer.max_steps", "8"]) == 0
    assert read_checkpoint(first / "last.ckpt")["global_step"] == 8  # resumed from last-v1, saved as last.ckpt
    assert pixelgen(["sample", "--ckpt", str(first / "last.ckpt"), "--num-samples", "2",
                     "--out", str(tmp_path / "grid.png")]) == 0


def rf64_silence(path: Path, frames: int, rate: int = 8000) -> Path:
    """An RF64 WAV (64-bit sizes) of ``frames`` 16-bit mono samples of silence, written sparse: its header says how
    long it is, and the disk holds only the header."""
    data, unknown = 2 * frames, struct.pack("<I", 2 ** 32 - 1)  # the 32-bit sizes say: read them from ds64
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    riff = 4 + (8 + 28) + len(fmt) + 8 + data  # everything after the RIFF size: WAVE, ds64, fmt and data
    header = (b"RF64" + unknown + b"WAVE" + b"ds64" + struct.pack("<IQQQI", 28, riff, data, frames, 0) + fmt
              + b"data" + unknown)
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return path


def test_audio_too_large_for_memory_is_refused_naming_the_file_never_skipped(tmp_path, monkeypatch):
    import resource

    import soundfile

    from tests.test_audio_data import make_audio_folder
    from tests.test_wavegen_cli import tiny_config
    from wavegen.data import AudioDataModule

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    audio = make_audio_folder(tmp_path / "audio")
    huge = rf64_silence(audio / "9_carol_9.wav", memory // 8)  # a float32 copy alone takes half the memory
    assert soundfile.info(str(huge)).frames == memory // 8
    config = tiny_config(tmp_path, audio)
    cap = 8 * 2 ** 30  # as the user had it, under the copy's size: reading it would fail, not swamp the host

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    done = subprocess.run([sys.executable, "-m", "wavegen.cli", "fit", "--config", str(config), "--threads", "1"],
                          preexec_fn=capped, capture_output=True, text=True, cwd=ROOT, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("wavegen: error: ")]
    assert done.returncode == 2 and len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]) and re.fullmatch(
        rf"wavegen: error: {re.escape(str(huge))}: its [\d,]+ minutes of 1-channel audio at 8,000 Hz need about "
        rf"[\d,.]+ GiB to read, more than this machine's [\d,]+ GiB of memory: split it into shorter files",
        errors[0]), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "skipping" not in done.stderr
    assert not (tmp_path / "run").exists()
    huge.unlink()

    def out_of_memory(*args: object, **kwargs: object) -> None:  # numpy's error when a cap (ulimit -v) is reached
        raise MemoryError("Unable to allocate 2.37 GiB for an array with shape (317520000, 2) and data type float32")

    monkeypatch.setattr(soundfile.SoundFile, "read", out_of_memory)
    with pytest.raises(UsageError) as refused:
        AudioDataModule(str(audio), val_fraction=0, test_fraction=0).setup()
    assert str(refused.value) == (f"{audio / '0_alice_0.wav'}: reading it ran out of memory (MemoryError): split it "
                                  f"into shorter files, or free memory for this run")


def test_an_image_that_runs_out_of_memory_is_refused_naming_it_never_skipped(tmp_path, monkeypatch):
    import pixelgen.data

    def out_of_memory(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(pixelgen.data, "_read_image", out_of_memory)
    data = make_folder_dataset(tmp_path / "images")
    with pytest.raises(UsageError, match=re.escape(f"{data / 'train' / 'horizontal' / '0.png'}: reading it ran out of "
                                                   f"memory (MemoryError)")):
        pixelgen.data.ImageDataModule("folder", str(data), val_size=2).split("train")


def test_float_images_are_read_as_0_to_1_and_out_of_range_ones_are_named(tmp_path, capsys):
    from PIL import Image

    from pixelgen.data import _folder_split, _read_image

    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(path)
    with Image.open(path) as img:
        assert img.mode == "F"  # 32-bit float grey, which Pillow's convert("L") clips: 0.5 would be 0
    assert _read_image(path, 1, None).tolist() == [[0, 128, 255, 64]]
    assert _read_image(path, 3, None)[0, :, 1].tolist() == [0, 128, 255, 64]

    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(folder / "good.tif")
    Image.fromarray(np.array([[-0.5, 0.5, 2.0, 0.25]], dtype=np.float32)).save(folder / "wide.tif")
    images, _ = _folder_split(tmp_path / "train", ["a"], 1, None)
    assert images.tolist() == [[[[0, 128, 255, 64]]]]
    assert capsys.readouterr().err.splitlines() == [
        f"pixelgen: warning: skipping {folder / 'wide.tif'}: its 32-bit float pixels run from -0.5 to 2, outside 0..1 "
        f"(0 black, 1 white): scale it to 0..1, or save it with 8-bit pixels"]


def test_a_photo_is_turned_as_its_exif_orientation_says(tmp_path):
    from PIL import Image

    from pixelgen.data import _read_image

    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :8] = 255  # white on the left as stored, 16 wide; orientation 6: shown turned a quarter clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    shown = _read_image(tmp_path / "portrait.jpg", 3, None)
    assert shown.shape == (16, 8, 3)
    assert shown[:7].min() > 200 and shown[9:].max() < 50  # the left half is now on top
    squashed = _read_image(tmp_path / "portrait.jpg", 1, 4)
    assert squashed[:2].min() > 200 and squashed[2:].max() < 50


def speech_like(seconds: float = 1.0, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


@pytest.mark.parametrize("spike", [4.0, 20.0, 1e30])
def test_a_float_file_with_a_spike_keeps_its_levels_the_spike_clipped_and_said(spike, tmp_path, capsys):
    import soundfile

    from wavegen.data import mu_law_encode, read_audio

    speech = speech_like()
    soundfile.write(tmp_path / "clean.wav", speech, 8000, subtype="FLOAT")
    spiked = speech.copy()
    spiked[4000] = spike
    soundfile.write(tmp_path / "spiked.wav", spiked, 8000, subtype="FLOAT")
    clean = read_audio(tmp_path / "clean.wav", 8000)
    assert capsys.readouterr().err == ""
    read = read_audio(tmp_path / "spiked.wav", 8000)
    levels = [len(mu_law_encode(x).unique()) for x in (clean, read)]
    assert levels[1] >= levels[0] - 3 and levels[1] > 200, levels  # not scaled down by the spike
    assert capsys.readouterr().err.splitlines() == [
        f"wavegen: warning: {tmp_path / 'spiked.wav'}: 1 of its 8,000 samples lie outside [-1, 1], up to {spike:g}: "
        f"clipped to the loudest of the others, {float(np.abs(speech).max()):.3g}"]

    soundfile.write(tmp_path / "loud.wav", speech * 4, 8000, subtype="FLOAT")  # another scale: refused, not clipped
    with pytest.raises(UsageError, match=r"^[\d,]+ of its 8,000 samples \(\d+%\) lie outside \[-1, 1\], up to 2: a "
                                         r"float file holds audio in \[-1, 1\]; divide it by 2 and save it again$"):
        read_audio(tmp_path / "loud.wav", 8000)


def test_channels_that_cancel_are_refused_in_fit_and_as_a_prime_and_a_non_utf8_name_is_read(tmp_path, capfd):
    import soundfile

    from tests.tiny_configs import untrained_checkpoint
    from wavegen.cli import main as wavegen
    from wavegen.data import AudioDataModule
    from wavegen.wavenet import WaveNet

    audio = tmp_path / "audio"
    audio.mkdir()
    speech = speech_like(0.5)
    soundfile.write(audio / "tone.wav", speech, 8000)
    soundfile.write(audio / "cancel.wav", np.stack([speech, -speech], axis=1), 8000)
    odd = Path(os.fsdecode(b"caf\xe9.wav"))  # Latin-1, not UTF-8: soundfile could not encode the name
    with (audio / odd).open("wb") as f:
        soundfile.write(f, speech, 8000, format="WAV")
    capfd.readouterr()
    data = AudioDataModule(str(audio), val_fraction=0, test_fraction=0)
    assert sorted(clip.name for clip in data.splits()["train"]) == sorted([str(odd), "tone.wav"])
    cancel = ("its 2 channels cancel when mixed to mono (the mix is {} below the loudest channel), which leaves "
              "silence; save one channel as a mono file")
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert re.fullmatch(re.escape(f"wavegen: warning: skipping {audio / 'cancel.wav'}: "
                                  + cancel.format("@")).replace("@", r"\d+ dB"), line), line

    model = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4)
    ckpt = untrained_checkpoint(model, tmp_path / "wavenet.ckpt")
    out = tmp_path / "continued.wav"
    assert wavegen(["sample", "--ckpt", str(ckpt), "--prime", str(audio / "cancel.wav"), "--prime-seconds", "0.1",
                    "--seconds", "0.2", "--out", str(out)]) == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert re.fullmatch(re.escape(f"wavegen: error: --prime {audio / 'cancel.wav'}: "
                                  + cancel.format("@")).replace("@", r"\d+ dB"), line), line
    assert not out.exists()
    assert wavegen(["sample", "--ckpt", str(ckpt), "--prime", str(audio / odd), "--prime-seconds", "0.1",
                    "--seconds", "0.2", "--out", str(out)]) == 0
    assert out.is_file()


def test_a_pipe_or_device_at_out_is_written_to_never_replaced_and_a_socket_is_refused(tmp_path, capfd):
    import socket
    import stat

    ckpt = tiny_pixelcnn(tmp_path / "model.ckpt")
    fifo = tmp_path / "grid.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the program at the other end
    try:
        assert pixelgen(["sample", "--ckpt", str(ckpt), "--num-samples", "2", "--out", str(fifo)]) == 0
        received = os.read(reader, 1 << 20)
    finally:
        os.close(reader)
    assert received.startswith(b"\x89PNG\r\n\x1a\n") and stat.S_ISFIFO(fifo.stat().st_mode)

    null = tmp_path / "null.png"
    null.symlink_to("/dev/null")
    assert pixelgen(["sample", "--ckpt", str(ckpt), "--num-samples", "2", "--out", str(null)]) == 0
    assert null.is_symlink() and os.readlink(null) == "/dev/null" and stat.S_ISCHR(Path("/dev/null").stat().st_mode)

    listening = socket.socket(socket.AF_UNIX)
    try:
        listening.bind(str(tmp_path / "socket.png"))
        capfd.readouterr()
        assert pixelgen(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "socket.png")]) == 2
        assert capfd.readouterr().err.strip() == (
            f"pixelgen: error: --out {tmp_path / 'socket.png'} is a socket: name a file (a named pipe or a character "
            f"device is written to)")
        assert stat.S_ISSOCK((tmp_path / "socket.png").stat().st_mode)
    finally:
        listening.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "model.ckpt", "null.png", "socket.png"]


def test_a_second_writer_of_one_output_at_the_same_moment_is_refused(tmp_path, capfd):
    from arcore.files.atomic import output_lock

    ckpt = tiny_pixelcnn(tmp_path / "model.ckpt")
    for command, out in (("export", tmp_path / "model.safetensors"), ("sample", tmp_path / "grid.png")):
        out.write_bytes(b"an earlier output")
        with output_lock(out, f"pixelgen {command}"):  # as another process writing it now holds it
            capfd.readouterr()
            assert pixelgen([command, "--ckpt", str(ckpt), "--out", str(out)]) == 2
            assert capfd.readouterr().err.strip() == (
                f"pixelgen: error: --out {out} is being written by another `pixelgen {command}` (pid {os.getpid()}): "
                f"wait for it to end, or choose another --out")
        assert out.read_bytes() == b"an earlier output"
        assert pixelgen([command, "--ckpt", str(ckpt), "--out", str(out)]) == 0  # once it is done
        assert out.read_bytes() != b"an earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "model.ckpt", "model.safetensors"]


def test_a_class_path_outside_the_tools_is_refused_before_its_module_is_imported(tmp_path, monkeypatch, capfd):
    from tests.test_pixelgen_cli import tiny_config

    marker = tmp_path / "MARKER"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "installed_elsewhere.py").write_text(
        f"open({str(marker)!r}, 'w').close()  # runs when imported\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    config = tiny_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    for flag in ("--trainer.callbacks+=installed_elsewhere.Thing", "--model=installed_elsewhere.Thing"):
        capfd.readouterr()
        assert pixelgen(["fit", "--config", str(config), flag]) == 2
        key = flag.split("=")[0].rstrip("+")
        assert capfd.readouterr().err.strip() == (
            f"pixelgen: error: {key}: installed_elsewhere.Thing is not in a module a config may name: classes of "
            f"arcore, the tools, their models, Lightning, torch or a module in the working folder only (the module "
            f"is imported before its class is checked) (see `pixelgen fit --help`)")
    assert not marker.exists() and not (tmp_path / "run").exists()
    import installed_elsewhere  # noqa: F401 - the module is real: importing it runs it

    assert marker.exists()


@pytest.mark.parametrize("tool", ["pixelgen", "wavegen"])
def test_too_little_memory_to_load_torch_is_one_line(tool, tmp_path):
    import resource

    limit = 2 ** 30  # ulimit -v 1048576: torch's libraries alone map more

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", f"{tool}.cli", "sample", "--ckpt", str(tmp_path / "x.ckpt"),
                           "--out", str(tmp_path / "x.png")], preexec_fn=capped, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.fullmatch(rf"{tool}: error: too little memory to load torch and its libraries: this process may use 1.0 "
                        rf"GiB \(ulimit -v\); raise the limit \(ulimit -v unlimited\) \(.+\)", done.stderr.strip()), \
        done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
