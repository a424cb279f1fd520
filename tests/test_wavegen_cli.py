"""wavegen end to end on generated tones and chirps: fit -> resume -> test -> sample WAV; conditioning; errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import soundfile
import torch

from pixelgen.pixelcnn import PixelCNN
from tests.test_audio_data import SHARED_AUDIO, make_audio_folder
from tests.tiny_configs import trainer_yaml
from wavegen.cli import main

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, data_root: Path, *, speakers: int = 0, n_mels: int = 0, upsample: str = "repeat",
                callbacks: str = "") -> Path:
    """A 3-layer WaveNet on 8 kHz clips that logs samples during validation (resynthesised validation clips when
    conditioned on mel frames); ``callbacks`` are more list items, as for :func:`trainer_yaml`."""
    config = tmp_path / "tiny.yaml"
    sample_logger = """
    - class_path: arcore.training.callbacks.SampleLogger
      init_args: {num_samples: 2, audio_seconds: 0.04, num_completions: 2}"""
    config.write_text(trainer_yaml(tmp_path / "run", callbacks=sample_logger + callbacks) + f"""
model:
  class_path: wavegen.wavenet.WaveNet
  init_args: {{dilations: [1, 2, 4], residual_channels: 8, gate_channels: 8, skip_channels: 8, head_channels: 8,
               num_labels: {speakers}, n_mels: {n_mels}, hop_length: 40, cond_channels: 4, upsample: {upsample}}}
data:
  root: {data_root}
  target_length: 200
  batch_size: 2
  crops_per_epoch: 8
  val_fraction: 0.25
  test_fraction: 0.25
  speaker_pattern: {"digits" if speakers else "null"}
""")
    return config


def read_pcm(path: Path) -> tuple[torch.Tensor, int]:
    info = soundfile.info(str(path))
    assert info.subtype == "PCM_16" and info.channels == 1
    audio, rate = soundfile.read(str(path), dtype="float32")
    return torch.from_numpy(audio), rate


def test_fit_resume_test_sample_end_to_end(tmp_path, capsys):
    data = make_audio_folder(tmp_path / "audio")
    config = tiny_config(tmp_path, data)
    assert main(["fit", "--config", str(config)]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    samples = sorted((tmp_path / "run" / "samples").glob("*"))
    assert any(p.suffix == ".wav" for p in samples) and any(p.suffix == ".png" for p in samples)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "6"]) == 0  # resumes from last.ckpt
    assert torch.load(last, weights_only=False)["global_step"] == 6

    capsys.readouterr()
    assert main(["test", "--config", str(config)]) == 0
    assert "test/bpd" in capsys.readouterr().out

    out = tmp_path / "clips" / "clip.wav"
    assert main(["sample", "--ckpt", str(last), "--seconds", "0.05", "--out", str(out), "--num-samples", "2",
                 "--prime", str(data / "0_alice_0.wav"), "--prime-seconds", "0.01", "--top-k", "50"]) == 0
    clips = [read_pcm(out.with_name(f"clip_{i}.wav")) for i in range(2)]
    assert all(rate == 8000 and len(audio) == 400 for audio, rate in clips)
    # the primed 80 samples are the prime's own (through mu-law and 16-bit PCM), the rest differ between clips
    prime, _ = read_pcm(data / "0_alice_0.wav")
    assert torch.allclose(clips[0][0][:80], clips[1][0][:80], atol=1e-4)
    assert torch.allclose(clips[0][0][:80], prime[:80] * 0.95 / prime.abs().max(), atol=0.02)
    assert not torch.allclose(clips[0][0][80:], clips[1][0][80:])
    reference = tmp_path / "reference.wav"
    assert main(["sample", "--ckpt", str(last), "--seconds", "0.01", "--out", str(reference), "--no-cache",
                 "--greedy"]) == 0
    assert len(read_pcm(reference)[0]) == 80


def test_speaker_and_mel_conditioned_sampling(tmp_path, capsys):
    data = make_audio_folder(tmp_path / "audio")
    config = tiny_config(tmp_path, data, speakers=2, n_mels=8)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "2"]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "vocoded.wav"
    assert main(["sample", "--ckpt", str(last), "--speaker", "1", "--mel-from", str(data / "1_bob_1.wav"),
                 "--out", str(out)]) == 0
    audio, rate = read_pcm(out)
    assert rate == 8000 and len(audio) == 4000  # the length of the clip the mel frames come from
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(last), "--speaker", "1", "--out", str(out)]) == 2
    assert "pass --mel-from" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(last), "--mel-from", str(data / "1_bob_1.wav"), "--out", str(out)]) == 2
    assert "pass --speaker K with K in [0, 2)" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(last), "--speaker", "2", "--mel-from", str(data / "1_bob_1.wav"),
                 "--out", str(out)]) == 2
    assert "--speaker 2 is out of range: this model has 2 speakers, pass K in [0, 2)" in capsys.readouterr().err
    assert main(["fit", "--config", str(config), "--ckpt_path", "null", "--model.init_args.num_labels", "1"]) == 2
    assert "set --model.init_args.num_labels 2" in capsys.readouterr().err


def test_sample_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    assert main(["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert main(["sample", "--ckpt", str(junk), "--out", out]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(junk), "--out", str(tmp_path / "x.mp3")]) == 2
    assert "must name a .wav file" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(junk), "--out", out, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err

    pixel = tmp_path / "pixelcnn.ckpt"  # a real pixelgen checkpoint
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(PixelCNN(image_shape=(1, 4, 4), levels=2, hidden=4, layers=1, head=4))
    trainer.save_checkpoint(pixel)
    result = subprocess.run([sys.executable, "-m", "wavegen.cli", "sample", "--ckpt", str(pixel), "--out", out],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"wavegen: error: {pixel} holds a pixelgen model (PixelCNN); use `pixelgen sample` for it"]


def test_fit_on_a_folder_without_usable_audio_is_one_line(tmp_path, capsys):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "broken.wav").write_text("not audio")
    assert main(["fit", "--config", str(tiny_config(tmp_path, tmp_path / "audio"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wavegen: error: no usable audio") and "broken.wav" in err[0]
    data = make_audio_folder(tmp_path / "more")
    assert main(["fit", "--config", str(tiny_config(tmp_path, data)), "--data.sample_rate", "16000"]) == 2
    assert "set --data.sample_rate 8000" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_AUDIO / "speech-en").is_dir(), reason="no shared real speech on this machine")
def test_short_fit_on_real_speech_beats_a_uniform_model(tmp_path, capsys):
    config = tiny_config(tmp_path, SHARED_AUDIO / "speech-en")
    args = ["--trainer.max_steps", "150", "--trainer.val_check_interval", "150", "--trainer.limit_val_batches", "4",
            "--trainer.limit_test_batches", "8", "--data.batch_size", "8", "--data.target_length", "1000",
            "--data.crops_per_epoch", "1200", "--data.val_fraction", "0.05", "--data.test_fraction", "0.05",
            "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "5",
            "--model.init_args.residual_channels", "16", "--model.init_args.gate_channels", "32"]
    assert main(["fit", "--config", str(config), *args]) == 0
    capsys.readouterr()
    assert main(["test", "--config", str(config), *args]) == 0
    bpd = float(re.search(r"test/bpd\W+([0-9.]+)", capsys.readouterr().out).group(1))
    assert bpd < 7.0  # 8 bits is a uniform model over the 256 mu-law codes
