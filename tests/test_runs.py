"""Runs a researcher can follow and that lose nothing: W&B offline records, LightningCLI conventions, resume after
kill -9 to the same weights, EMA, the guard against non-finite gradients, atomic outputs (a full disk mid-write keeps
the earlier file), two fits in one folder, and checkpoints that load weights-only."""

from __future__ import annotations

import builtins
import errno
import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import arcore.files.atomic
from arcore.cli.runs import AtomicCheckpointIO
from arcore.errors import UsageError
from arcore.files.checkpoint import read_checkpoint
from arcore.files.registry import load_checkpoint
from arcore.training.callbacks import EMA, NonFiniteGuard
from pixelgen.cli import main as pixelgen
from pixelgen.data import ImageDataModule
from pixelgen.pixelcnn import PixelCNN
from tests.test_audio_data import make_audio_folder
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_pixelgen_cli import tiny_config as tiny_image_config
from tests.test_wavegen_cli import tiny_config as tiny_audio_config
from tests.tiny_configs import untrained_checkpoint
from wavegen.cli import main as wavegen
from wavegen.wavenet import WaveNet

ROOT = Path(__file__).resolve().parents[1]


def wandb_yaml(path: Path, save_dir: Path) -> Path:
    """A second config that switches the tiny configs' logger to W&B and adds the shipped configs' callbacks."""
    path.write_text(f"""
trainer:
  log_every_n_steps: 1
  logger:
    class_path: pytorch_lightning.loggers.WandbLogger
    init_args: {{project: tiny, name: tiny, save_dir: {save_dir}}}
""")
    return path


def offline_runs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "wandb").glob("offline-run-*"))


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B as a user without an account gets it: offline, chosen by the CLI itself, nothing sent anywhere."""
    import wandb

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()
    assert os.environ.get("WANDB_MODE") == "offline"


def offline_records(run: Path) -> list:
    """The records of an offline W&B run (what ``wandb sync`` uploads): its ``.wandb`` file is a LevelDB-style log
    of 32 KiB blocks after a 7-byte header, each chunk ``crc32, length, type`` then a piece of a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run.glob("run-*.wandb")
    data, block, pos, piece, records = log.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        piece += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            records.append(record)
            piece = b""
    return records


@pytest.mark.parametrize("tool", ["pixelgen", "wavegen"])
def test_offline_wandb_run_records_metrics_config_and_media(tool, tmp_path, offline_wandb):
    import wandb

    if tool == "pixelgen":
        config, main, media = tiny_image_config(tmp_path, make_folder_dataset(tmp_path / "data")), pixelgen, "images"
    else:
        config, main, media = tiny_audio_config(tmp_path, make_audio_folder(tmp_path / "data")), wavegen, "audio"
    save_dir = tmp_path / "logs"
    extra = ["--trainer.callbacks+=pytorch_lightning.callbacks.LearningRateMonitor",
             "--trainer.callbacks+=arcore.training.callbacks.EMA", "--trainer.logger.init_args.log_model", "true"]
    assert main(["fit", "--config", str(config), "--config", str(wandb_yaml(tmp_path / "wandb.yaml", save_dir)),
                 *extra]) == 0
    wandb.finish()
    (run,) = offline_runs(save_dir)
    records = offline_records(run)
    deadline = time.monotonic() + 30
    while not any(r.HasField("exit") for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)  # the W&B service writes the log in the background until the run's exit record
        records = offline_records(run)
    metrics = {item.key or "/".join(item.nested_key) for r in records if r.HasField("history")
               for item in r.history.item}
    for key in ("train/loss_step", "train/bpd_step", "val/bpd", "val/loss", "lr-AdamW", "train/examples_per_s",
                "train/codes_per_s", "trainer/global_step"):
        assert key in metrics, f"{key} missing from the run's history"
    config = {item.key: item.value_json for r in records if r.HasField("config") for item in r.config.update}
    resolved = json.loads(config["config"])  # the full resolved CLI config
    assert resolved["trainer"]["max_steps"] == 4
    assert resolved["model"]["class_path"].endswith("Net" if media == "audio" else "CNN")
    files = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert any(f.startswith(f"media/{media}/") for f in files)
    assert all((run / "files" / f).is_file() for f in files if f.startswith("media/"))
    if media == "audio":
        assert any(f.endswith(".png") for f in files)  # the spectrogram
    artifacts = [r.artifact for r in records if r.HasField("artifact")]  # log_model: the checkpoint, as an artifact
    assert any(a.type == "model" and any(e.path.endswith(".ckpt") for e in a.manifest.contents) for a in artifacts)


def test_resumed_fit_continues_the_same_wandb_run_step_count_and_schedule(tmp_path, offline_wandb):
    import wandb

    config = tiny_image_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    save_dir = tmp_path / "logs"
    logger = ["--config", str(wandb_yaml(tmp_path / "wandb.yaml", save_dir))]
    assert pixelgen(["fit", "--config", str(config), *logger]) == 0
    wandb.finish()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = read_checkpoint(last)
    assert first["global_step"] == 4 and first["wandb_run_id"]
    assert pixelgen(["fit", "--config", str(config), *logger, "--trainer.max_steps", "8"]) == 0
    wandb.finish()
    second = read_checkpoint(last)
    assert second["global_step"] == 8 and second["wandb_run_id"] == first["wandb_run_id"]
    runs = offline_runs(save_dir)
    assert len(runs) == 2 and all(first["wandb_run_id"] in r.name for r in runs)  # resumed, not forked
    schedule = second["lr_schedulers"][0]
    assert schedule["last_epoch"] == 8 and schedule["_step_count"] == 9  # the schedule went on from step 4

    assert pixelgen(["fit", "--config", str(config), "--trainer.logger", "false",
                     "--trainer.callbacks+=pytorch_lightning.callbacks.LearningRateMonitor",
                     "--trainer.max_steps", "10"]) == 0  # no logger: the monitor is dropped, not fatal


def test_one_line_switches_the_logger_to_csv(tmp_path):
    config = tiny_image_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    assert pixelgen(["fit", "--config", str(config), "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "csv"),
                     "--trainer.log_every_n_steps", "1"]) == 0
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/bpd", "train/examples_per_s"} <= set(header)
    (hparams,) = (tmp_path / "csv").rglob("hparams.yaml")
    assert "max_steps" in hparams.read_text()


KILL_CONFIG = """
seed_everything: 7
ckpt_path: last
threads: 1
trainer:
  accelerator: cpu
  max_epochs: 6
  deterministic: true
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {run}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {run}/checkpoints, save_last: true, every_n_train_steps: 2}}
    - class_path: arcore.training.callbacks.EMA
      init_args: {{decay: 0.9}}
    - class_path: tests.test_runs.SlowSteps
model:
  class_path: pixelgen.pixelcnn.PixelCNN
  init_args: {{image_shape: [3, 8, 8], levels: 16, hidden: 6, layers: 2, head: 6, num_labels: 2, lr: 0.01}}
data:
  dataset: folder
  root: {data}
  bits: 4
  batch_size: 4
  val_size: 4
"""


class SlowSteps(pl.Callback):
    """Stretch each training step to 50 ms so a test can kill a run in the middle of it."""

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(0.05)


def fit_process(config: Path, *args: str) -> subprocess.Popen:
    """A ``fit`` in its own process, on one thread: runs compared bit for bit must add their sums in one order, and
    the automatic choice would give each run the cores that were free when it started."""
    return subprocess.Popen([sys.executable, "-m", "pixelgen.cli", "fit", "--config", str(config), "--threads", "1",
                             *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def same_training_state(a: dict, b: dict) -> None:
    """The raw weights, the EMA average, the optimiser moments and the schedule of two checkpoints are equal."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after the resume"
    moments = [(s["exp_avg"], t["exp_avg"]) for s, t in zip(a["optimizer_states"][0]["state"].values(),
                                                             b["optimizer_states"][0]["state"].values())]
    assert moments and all(torch.equal(x, y) for x, y in moments)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_kill_9_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    configs = {}
    for name in ("whole", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(KILL_CONFIG.format(run=tmp_path / name, data=data))

    whole = fit_process(configs["whole"])
    killed = fit_process(configs["killed"])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 900  # a busy machine can take minutes to start a run
    while not last.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, f"the run ended before it could be killed: {killed.stderr.read()[-500:]}"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    interrupted_at = read_checkpoint(last)["global_step"]  # saved atomically: always whole
    assert 0 < interrupted_at < 30 and interrupted_at % 5  # in the middle of an epoch of 5 steps

    resumed = fit_process(configs["killed"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
    a = read_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert a["global_step"] == 6 * 5  # 20 training images, batch 4, 6 epochs
    same_training_state(a, b)


class PoisonGradient(pl.Callback):
    """Put a NaN into one gradient at the given optimiser step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def tiny_fit(model: PixelCNN, steps: int, *callbacks: pl.Callback, root: Path | None = None) -> None:
    data = TensorDataset(torch.randint(0, 2, (16, 1, 6, 6), generator=torch.Generator().manual_seed(0)),
                         torch.zeros(16, dtype=torch.long))
    saving = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = pl.Trainer(max_steps=steps, logger=False, callbacks=list(callbacks), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=saving, limit_val_batches=0,
                         default_root_dir=root)
    trainer.fit(model, DataLoader(data, batch_size=4))


def tiny_model() -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)


def test_non_finite_gradient_stops_before_the_update_or_skips_it():
    clean = tiny_model()
    tiny_fit(clean, 2)
    stopped = tiny_model()
    with pytest.raises(UsageError, match="training stopped at step 2: the loss or its gradient is not finite"):
        tiny_fit(stopped, 4, NonFiniteGuard(), PoisonGradient(2))
    assert all(torch.equal(p, q) for p, q in zip(clean.parameters(), stopped.parameters()))  # step 2 not applied

    skipped = tiny_model()
    guard = NonFiniteGuard(action="skip")
    tiny_fit(skipped, 4, guard, PoisonGradient(2))
    assert guard.skipped == 1
    assert all(torch.isfinite(p).all() for p in skipped.parameters())
    assert not all(torch.equal(p, q) for p, q in zip(clean.parameters(), skipped.parameters()))  # went on

    with pytest.raises(UsageError, match="after 0 skipped steps"):
        tiny_fit(tiny_model(), 4, NonFiniteGuard(action="skip", max_skips=0), PoisonGradient(1))
    with pytest.raises(UsageError, match="'stop' or 'skip'"):
        NonFiniteGuard(action="ignore")


def test_ema_checkpoints_hold_the_average_and_sampling_uses_it(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    tiny_fit(tiny_model(), 6, EMA(decay=0.9), saver, root=tmp_path)
    path = tmp_path / "step=3.ckpt"
    checkpoint = read_checkpoint(path)
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(average[k], raw[k]) for k in average)
    loaded = load_checkpoint(path, "pixelgen")
    assert all(torch.equal(v, average[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(UsageError, match="decay must lie in"):
        EMA(decay=1.0)


class FailAtPredictBatch(pl.Callback):
    """Raise after the first predict batch was scored and written (a pass cut short)."""

    def on_predict_batch_end(self, *args: object) -> None:
        raise RuntimeError("the pass stops here")


def test_predict_writes_each_test_examples_exact_likelihood(tmp_path, capsys):
    config = tiny_image_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    assert pixelgen(["fit", "--config", str(config)]) == 0
    out = tmp_path / "scores" / "likelihoods.csv"
    predict = ["predict", "--config", str(config), "--trainer.callbacks+=arcore.training.callbacks.LikelihoodWriter",
               "--trainer.callbacks.path", str(out)]
    out.parent.mkdir()
    out.write_text("an earlier file\n")
    with pytest.raises(RuntimeError, match="the pass stops here"):
        pixelgen([*predict, "--trainer.callbacks+=tests.test_runs.FailAtPredictBatch"])
    assert out.read_text() == "an earlier file\n"  # replaced only by a complete pass
    partial = out.with_name("likelihoods.partial.csv")
    assert len(partial.read_text().splitlines()) == 1 + 4  # the header and the first batch's rows
    assert pixelgen(predict) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert sorted(int(r[0]) for r in rows) == list(range(8))  # every test image, once
    assert sorted(p.name for p in out.parent.iterdir()) == ["likelihoods.csv", "likelihoods.partial.csv"]
    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", "pixelgen")
    codes, labels = ImageDataModule("folder", root=str(tmp_path / "data"), bits=4).split("test")
    expected = (-model.log_prob(codes.long(), labels) / (3 * 8 * 8 * math.log(2))).tolist()
    assert [float(r[2]) for r in sorted(rows, key=lambda r: int(r[0]))] == pytest.approx(expected, abs=1e-5)
    assert f"8 examples, mean {sum(expected) / 8:.4f} bits/dim" in capsys.readouterr().out


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(1000)}, path)

    def disk_full(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UsageError, match="No space left on device.; the earlier file is unchanged"):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    kept = read_checkpoint(path)
    assert kept["global_step"] == 1 and torch.equal(kept["weights"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_concurrent_checkpoint_writers_never_share_a_temporary_file(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    failures: list[BaseException] = []

    def writer(k: int) -> None:
        for i in range(15):
            try:
                io.save_checkpoint({"writer": k, "step": i, "weights": torch.full((50_000,), float(k))}, path)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                failures.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    kept = read_checkpoint(path)
    assert torch.equal(kept["weights"], torch.full((50_000,), float(kept["writer"])))  # one writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class FullDisk:
    """A file whose writes stop with ENOSPC after ``room`` bytes: a disk that fills up in the middle of a write."""

    def __init__(self, file: object, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        taken = bytes(data[: self.room])
        self.file.write(taken)
        self.room -= len(taken)
        if len(taken) < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(taken)

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)

    def __enter__(self) -> FullDisk:  # noqa: PYI034 - a test double, never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@pytest.mark.parametrize("tool", ["pixelgen", "wavegen"])
def test_a_full_disk_while_sample_overwrites_a_good_file_keeps_it_whole(tool, tmp_path, monkeypatch, capfd):
    if tool == "pixelgen":
        model, main, out, extra = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=1, head=4), pixelgen, \
            tmp_path / "keep.png", []
    else:
        model, main, out, extra = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4,
                                          head_channels=4), wavegen, tmp_path / "keep.wav", ["--seconds", "0.05"]
    ckpt = untrained_checkpoint(model, tmp_path / "model.ckpt")
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(out), "--seed", "1", *extra]) == 0
    good = out.read_bytes()
    monkeypatch.setattr(arcore.files.atomic, "open", lambda fd, mode: FullDisk(builtins.open(fd, mode), 20),  # noqa: SIM115
                        raising=False)
    capfd.readouterr()
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(out), "--seed", "2", *extra]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"{tool}: error: could not write {out} (No space left on device); the earlier file is unchanged"]
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.ckpt", out.name])  # no temporary left


class WaitForFile(pl.Callback):
    """Hold the run at the start of training until ``path`` exists (at most a minute)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, *args: object) -> None:
        deadline = time.monotonic() + 60
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_two_fits_in_one_folder_the_second_refuses_at_start_and_every_checkpoint_loads(tmp_path):
    config = tiny_image_config(tmp_path, make_folder_dataset(tmp_path / "data"))
    release = tmp_path / "release"
    wait = ["--trainer.callbacks+=tests.test_runs.WaitForFile", "--trainer.callbacks.path", str(release)]
    runs = [fit_process(config, *wait), fit_process(config, *wait)]
    deadline = time.monotonic() + 120
    while all(r.poll() is None for r in runs) and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = next((r for r in runs if r.poll() is not None), None)
    assert refused is not None, "neither fit ended: the second should refuse at start"
    holder = runs[1 - runs.index(refused)]
    assert holder.poll() is None, "both fits ended before one was let go"
    err = refused.stderr.read().strip().splitlines()
    assert refused.returncode == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0] == (f"pixelgen: error: {tmp_path / 'run'} is in use by another `pixelgen fit` "
                      f"(pid {holder.pid}): wait for it to end, or give this run its own folder "
                      f"(--trainer.default_root_dir and the checkpoint dirpath)")
    release.touch()
    assert holder.wait(timeout=120) == 0, holder.stderr.read()[-2000:]
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints and all(load_checkpoint(p, "pixelgen") for p in checkpoints)
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert pixelgen(["fit", "--config", str(config), "--trainer.max_steps", "6"]) == 0  # the lock went with its run
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert not list(tmp_path.rglob("*.lock"))


def test_checkpoints_holding_paths_in_their_settings_load_weights_only(tmp_path):
    """A run set up from Python keeps ``root=Path(...)`` in its data settings: a type beyond torch's weights-only
    defaults that the allow-list admits, for the model and for --prime-from."""
    data = ImageDataModule("folder", root=make_folder_dataset(tmp_path / "data"), bits=4, batch_size=4, val_size=4)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(PixelCNN(image_shape=(3, 8, 8), levels=16, hidden=6, layers=1, head=6, num_labels=2), datamodule=data)
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)
    assert "pathlib.PosixPath" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert isinstance(read_checkpoint(path)["datamodule_hyper_parameters"]["root"], Path)
    assert isinstance(load_checkpoint(path, "pixelgen"), PixelCNN)
    out = tmp_path / "done.png"
    assert pixelgen(["sample", "--ckpt", str(path), "--prime-rows", "3", "--num-samples", "2", "--out", str(out)]) == 0
    assert out.is_file() and out.with_name("done_real.png").is_file()
