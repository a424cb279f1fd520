"""WaveNet as a vocoder: learned upsampling of mel frames, the conditioning table shared by the PyTorch and the
fused step, resynthesis of clips of different lengths in one batch, PESQ/STOI/mel distance, sample logging and
`wavegen test` for vocoders, batch resynthesis from the command line, and its bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile
import torch
from PIL import Image

from arcore.training.callbacks import SampleLogger
from tests.contract import causality_violations, randomise, sample_both_ways, step_logit_error
from tests.test_audio_data import make_audio_folder, tone
from tests.test_wavegen_cli import read_pcm, tiny_config
from tests.tiny_configs import untrained_checkpoint
from wavegen.cli import main
from wavegen.data import AudioDataModule, mu_law_encode
from wavegen.quality import VocoderQuality, mel_distance, pesq_score, stoi_score
from wavegen.wavenet import AudioCond, Upsampler, WaveNet, decode_mu_law, upsample_factors
from wavegen.wavenet_step import FusedStep

RATE = 8000
TINY = {"residual_channels": 6, "gate_channels": 8, "skip_channels": 5, "head_channels": 7, "quantization": 16}


def vocoder(upsample: str, *, dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs) -> WaveNet:
    """A random 3-layer vocoder with 3 speakers, 4 mel bands, frames of 6 samples (upsampled x2 x3)."""
    settings = {"dilations": [1, 2, 4], "num_labels": 3, "n_mels": 4, "hop_length": 6, "cond_channels": 3,
                "upsample": upsample, **TINY, **kwargs}
    return randomise(WaveNet(**settings).to(dtype), std=0.4, seed=seed)


def random_cond(batch: int, length: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> AudioCond:
    gen = torch.Generator().manual_seed(seed)
    return AudioCond(torch.arange(batch) % 3, torch.randn(batch, 4, math.ceil(length / 6), generator=gen, dtype=dtype))


def speech_like(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 150 Hz voice, switched on and off three times a second (PESQ's voice detector finds
    utterances in it)."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150 * (1 + 0.1 * np.sin(2 * np.pi * (1.3 + seed) * t))) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


# ----- upsampling and the conditioning table ---------------------------------------------------------------------
def test_upsample_factors_multiply_to_the_hop():
    assert upsample_factors(80) == [4, 4, 5]
    assert upsample_factors(256) == [4, 4, 4, 4]
    assert upsample_factors(7) == [7]
    for hop in range(1, 200):
        assert math.prod(upsample_factors(hop)) == hop


@pytest.mark.parametrize("mode", ["transposed", "nearest"])
def test_upsampler_starts_as_linear_interpolation_between_frames(mode):
    frames = torch.tensor([[[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]]]).repeat(1, 3, 1)  # 3 channels, 7 frames of 6
    up = Upsampler(3, [2, 3], mode).double()
    out = up(frames.double())
    assert out.shape == (1, 3, 42)
    assert torch.equal(out[0, 0], out[0, 2])  # identity across channels
    plateau = out[0, 0, 18:24]  # frame 3, among frames of the same value
    assert torch.allclose(plateau, torch.ones_like(plateau))
    rises = out[0, 0, 3:10]  # from the middle of frame 0 (0) to the middle of frame 1 (1): a ramp, not a step
    assert (rises.diff() > 0).all() and 0 < rises[0] < 0.5 < rises[-1] < 1


def test_the_conditioning_stack_reaches_15_frames_and_the_upsampling_one_more():
    """What the config header, docs/wavenet.md and the ``cond_layers`` docstring say: a kernel-3 convolution and 3
    residual layers of kernel 5 see 7 frames on each side; the x4 x4 x5 transposed stack adds the next frame on the
    side a sample is nearer, both sides in the middle of a frame."""
    def reach(model: WaveNet, row: int) -> tuple[int, int]:
        mel = torch.randn(1, 4, 41, requires_grad=True)
        (grad,) = torch.autograd.grad(model.cond_features(mel)[0, :, row].sum(), mel)
        frames = grad.abs().sum(1)[0].nonzero().flatten()
        return int(frames[0]), int(frames[-1])

    settings = {"n_mels": 4, "hop_length": 80, "cond_channels": 3, "cond_layers": 3, **TINY}
    assert reach(randomise(WaveNet(**settings), std=0.4), 20) == (13, 27)  # frame 20's row: 15 frames
    model = randomise(WaveNet(upsample="transposed", upsample_scales=[4, 4, 5], **settings), std=0.4)
    assert reach(model, 20 * 80) == (12, 27)  # the first sample of frame 20: 16 frames
    assert reach(model, 20 * 80 + 40) == (12, 28)  # its middle: 17
    assert reach(model, 20 * 80 + 79) == (13, 28)  # its last: 16


@pytest.mark.parametrize("upsample", ["repeat", "transposed", "nearest"])
def test_cached_sampling_equals_cache_free_with_each_upsampling(upsample):
    model = vocoder(upsample)
    assert model.cond_hop == (6 if upsample == "repeat" else 1)
    cond = random_cond(2, 40)
    prime = torch.randint(0, 16, (2, 7), generator=torch.Generator().manual_seed(1))
    cached, naive = sample_both_ways(model, 2, seed=2, length=40, cond=cond, prime=prime, top_p=0.95)
    assert torch.equal(cached, naive)
    other = model.sample(2, cond=AudioCond(cond.speaker, cond.mel.flip(2)), length=40, prime=prime,
                         generator=torch.Generator().manual_seed(2), top_p=0.95)
    assert not torch.equal(other, cached)  # the frames are used


@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
def test_upsampled_conditioning_is_causal_in_the_codes_and_matches_teacher_forcing(upsample):
    model = vocoder(upsample)
    codes = torch.randint(0, 16, (2, 20), generator=torch.Generator().manual_seed(3))
    assert causality_violations(model, codes, random_cond(2, 20)) == []
    small = vocoder(upsample, dtype=torch.float32)
    codes = torch.randint(0, 16, (2, 30), generator=torch.Generator().manual_seed(4))
    assert step_logit_error(small, codes, random_cond(2, 30, torch.float32)) < 1e-4


def test_the_sampler_holds_one_table_row_per_sample_when_upsampled():
    model = vocoder("transposed")
    sampler = model.sampler(2, random_cond(2, 25), (25,))
    assert tuple(sampler.buffers.mel_frames.shape) == (30, 2, 3)  # 5 frames of 6 samples, one row per sample
    repeat = vocoder("repeat").sampler(2, random_cond(2, 25), (25,))
    assert tuple(repeat.buffers.mel_frames.shape) == (5, 2, 3)  # one row per frame


@pytest.mark.parametrize("upsample", ["repeat", "transposed"])
def test_the_fused_step_reads_the_same_table_as_the_pytorch_step(upsample, monkeypatch):
    model = vocoder(upsample, dtype=torch.float32)
    cond = random_cond(3, 30, torch.float32)
    fused = model.sample(3, cond=cond, length=30, generator=torch.Generator().manual_seed(5))
    assert isinstance(model.sampler(3, cond, (30,)).step, FusedStep)
    monkeypatch.setenv("WAVEGEN_FUSED", "0")
    plain = model.sample(3, cond=cond, length=30, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fused, plain)


def test_bad_upsampling_settings_are_one_line_errors():
    from arcore.errors import UsageError

    with pytest.raises(UsageError, match="upsample must be one of repeat, transposed, nearest"):
        WaveNet(n_mels=4, upsample="linear")
    with pytest.raises(UsageError, match=r"multiply to hop_length \(80\), got \[4, 4\]"):
        WaveNet(n_mels=4, upsample="transposed", upsample_scales=[4, 4])


# ----- resynthesis in batches of different lengths ---------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["repeat", "transposed"])
def test_clips_of_different_lengths_resynthesise_in_one_batch_as_they_would_alone(upsample):
    model = vocoder(upsample)
    gen = torch.Generator().manual_seed(6)
    clips = [torch.randint(0, 16, (n,), generator=gen) for n in (50, 23, 37)]
    speakers = torch.tensor([0, 2, 1])
    together = model.resynthesize(clips, speakers, greedy=True)
    assert [len(c) for c in together] == [50, 23, 37]
    for clip, speaker, made in zip(clips, speakers, together):
        alone = model.resynthesize([clip], speaker[None], greedy=True)[0]
        assert torch.equal(made, alone)
    padded = model.resynthesize([clips[1], clips[1]], speakers[[1, 1]], greedy=True)  # equal lengths: no padding
    assert torch.equal(padded[0], together[1])


# ----- quality metrics -------------------------------------------------------------------------------------------
def test_pesq_stoi_and_mel_distance_rank_a_clean_copy_above_a_noisy_one():
    clean = speech_like(2.0).astype(np.float64)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(len(clean))
    assert pesq_score(clean, clean, RATE) > 4.4 and pesq_score(clean, noisy, RATE) < 1.5
    assert stoi_score(clean, clean, RATE) > 0.99 and stoi_score(clean, noisy, RATE) < 0.8
    wide = np.interp(np.arange(2 * len(clean)) / 2, np.arange(len(clean)), clean)  # the same voice at 16 kHz
    assert pesq_score(wide, wide, 2 * RATE) > 4.4  # wide-band at 16 kHz
    assert math.isnan(pesq_score(clean[:400], clean[:400], RATE))  # too short to score: NaN, not an error
    assert math.isnan(stoi_score(clean[:1000], clean[:1000], RATE))
    model = WaveNet(n_mels=16, hop_length=80)
    audio = torch.from_numpy(clean).float()
    assert mel_distance(model, audio, audio) == 0.0
    far = mel_distance(model, audio, torch.from_numpy(noisy).float())
    near = mel_distance(model, audio, torch.from_numpy(clean + 0.01 * (noisy - clean)).float())
    assert far > near > 0.0


def write_speech_folder(root: Path, count: int = 8, seconds: float = 1.2) -> Path:
    """Speech-like clips named DIGIT_SPEAKER_TAKE.wav for two speakers."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        soundfile.write(root / f"{i % 10}_{('alice', 'bob')[i % 2]}_{i}.wav", speech_like(seconds, seed=i % 3), RATE)
    return root


def tiny_vocoder_config(folder: Path, data_root: Path, *, every: int = 1, speakers: int = 0) -> Path:
    """The CLI tests' 3-layer WaveNet as a vocoder with transposed upsampling, scoring 2 held-out clips at every
    ``every``-th validation."""
    return tiny_config(folder, data_root, speakers=speakers, n_mels=8, upsample="transposed", callbacks=f"""
    - class_path: wavegen.quality.VocoderQuality
      init_args: {{clips: 2, seconds: 1.0, every_n_validations: {every}}}""")


def test_vocoder_fit_logs_resynthesis_and_quality_and_test_reports_pesq_stoi(tmp_path, capsys):
    data = write_speech_folder(tmp_path / "speech")
    config = tiny_vocoder_config(tmp_path, data, speakers=2)
    assert main(["fit", "--config", str(config)]) == 0
    samples = tmp_path / "run" / "samples"
    for i in range(2):
        original, _ = read_pcm(samples / f"step0000002_original_{i}.wav")
        made, _ = read_pcm(samples / f"step0000002_resynthesis_{i}.wav")
        assert len(original) == len(made) == 200 + 8  # one validation crop: target length + receptive field
        assert not torch.allclose(original, made)
    with Image.open(samples / "step0000002_resynthesis_spec.png") as picture:
        assert picture.height == 2 * 240 + 4  # the original above its resynthesis
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4
    quality = next(v for k, v in last["callbacks"].items() if "VocoderQuality" in k)
    assert quality == {"validations": 2}  # counted across a resume
    capsys.readouterr()
    assert main(["test", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    scores = {f"{name}{system}": float(re.search(rf"test/{name}{system}\s+([-0-9.e]+)", out).group(1))
              for name in ("pesq", "stoi", "mel_distance") for system in ("", "_mel_griffin_lim", "_griffin_lim",
                                                                            "_mulaw")}
    assert -0.5 <= scores["pesq"] <= 4.6 and 0 <= scores["stoi"] <= 1 and scores["mel_distance"] > 0
    assert re.search(r"test/bpd\s+[0-9.]+", out)
    for system in ("_mel_griffin_lim", "_griffin_lim"):  # an untrained vocoder is the floor, the round trip the top
        assert scores["pesq_mulaw"] > scores[f"pesq{system}"] > scores["pesq"]
        assert scores["stoi_mulaw"] > scores[f"stoi{system}"] > scores["stoi"]
        assert scores["mel_distance_mulaw"] < scores[f"mel_distance{system}"] < scores["mel_distance"]
    # the mel-constrained inversion matches the frames closer than torchaudio's least squares (8 bands, hop 40)
    assert scores["mel_distance_mel_griffin_lim"] < scores["mel_distance_griffin_lim"] - 1.0
    assert scores["stoi_mulaw"] > max(0.85, scores["stoi"])


def test_quality_is_scored_every_k_validations_on_held_out_files(tmp_path):
    data = AudioDataModule(str(write_speech_folder(tmp_path / "speech")), target_length=300, batch_size=2,
                           crops_per_epoch=4, val_fraction=0.25, test_fraction=0.25)
    model = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                    n_mels=8, hop_length=40, cond_channels=4, upsample="nearest")
    quality = VocoderQuality(clips=1, seconds=0.5, every_n_validations=2)
    seen = []

    class Spy(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen.append(sorted(k for k in trainer.callback_metrics if k.startswith("val/") and k != "val/bpd"
                               and k not in ("val/loss", "val/nll")))

    trainer = pl.Trainer(max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                         callbacks=[quality, Spy()], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    scored = sorted(f"val/{name}{system}" for name in ("mel_distance", "pesq", "stoi")
                    for system in ("", "_mel_griffin_lim", "_griffin_lim", "_mulaw"))
    assert seen == [[], scored, scored]
    (clip,), (reference,), _ = quality._held_out["val"]
    assert len(clip) == len(reference) == 4000  # the first half second of the held-out file
    assert not torch.equal(reference, decode_mu_law(clip))  # scored against the file's audio, before mu-law
    plain = WaveNet(dilations=[1], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4)
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                         callbacks=[VocoderQuality(clips=1, every_n_validations=1), Spy()], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(plain, datamodule=data)
    assert seen[-1] == []  # not a vocoder: nothing scored


def test_resynthesis_reaches_tensorboard_beside_the_originals(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    model = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                    n_mels=8, hop_length=40, cond_channels=4)
    codes = mu_law_encode(torch.from_numpy(np.stack([speech_like(0.1, seed=i) for i in range(4)])))
    data = DataLoader(TensorDataset(codes, torch.zeros(4, dtype=torch.long)), batch_size=4)
    logger = TensorBoardLogger(str(tmp_path))
    trainer = pl.Trainer(max_steps=1, logger=logger, callbacks=[SampleLogger(num_completions=2)],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, data, data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"audio": 0, "images": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["samples/audio/original_0", "samples/audio/original_1",
                                              "samples/audio/resynthesis_0", "samples/audio/resynthesis_1"]
    assert events.Tags()["images"] == ["samples/resynthesis_spectrogram"]


# ----- wavegen sample --mel-from, several inputs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocoder_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = WaveNet(dilations=[1, 2, 4], residual_channels=8, gate_channels=8, skip_channels=8, head_channels=8,
                    n_mels=8, hop_length=40, cond_channels=4, upsample="transposed", upsample_scales=[5, 8])
    return untrained_checkpoint(randomise(model.float(), std=0.3), tmp_path_factory.mktemp("vocoder") / "v.ckpt")


def test_a_folder_and_several_files_resynthesise_in_batches_one_wav_each(vocoder_ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    lengths = {"a.wav": 0.30, "b.flac": 0.12, "sub/c.wav": 0.21}
    for name, seconds in lengths.items():
        soundfile.write(inputs / name, speech_like(seconds, seed=len(name)), RATE)
    soundfile.write(tmp_path / "wide.wav", speech_like(0.2, rate=16000), 16000)  # another rate: resampled
    out = tmp_path / "out"
    assert main(["sample", "--ckpt", str(vocoder_ckpt), "--mel-from", str(inputs), str(tmp_path / "wide.wav"),
                 "--out", str(out), "--batch-size", "2", "--greedy"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"4 clips, 6,640 samples: [0-9,]+ samples/s", printed)
    for name, seconds in {**lengths, "wide.wav": 0.2}.items():
        audio, rate = read_pcm(out / Path(name).with_suffix(".wav"))
        assert rate == RATE and len(audio) == round(seconds * RATE)  # each as long as its input, at 8 kHz
    alone = tmp_path / "alone.wav"
    assert main(["sample", "--ckpt", str(vocoder_ckpt), "--mel-from", str(inputs / "sub" / "c.wav"),
                 "--out", str(alone), "--greedy"]) == 0
    assert torch.equal(read_pcm(alone)[0], read_pcm(out / "sub" / "c.wav")[0])  # batched = drawn alone
    assert main(["sample", "--ckpt", str(vocoder_ckpt), "--mel-from", str(inputs / "a.wav"), "--out",
                 str(tmp_path / "two.wav"), "--num-samples", "2", "--seconds", "0.1"]) == 0
    first, second = (read_pcm(tmp_path / f"two_{i}.wav")[0] for i in range(2))
    assert len(first) == len(second) == 800 and not torch.equal(first, second)


@pytest.mark.parametrize("make,argv,expect", [
    ("silent", "--mel-from {silent} --out {out}.wav", "--mel-from {silent} is silent"),
    ("empty folder", "--mel-from {empty} --out {out}", "--mel-from {empty} holds no audio files (.flac, .wav)"),
    ("not audio", "--mel-from {good} {junk} --out {out}", "--mel-from {junk}: not readable audio"),
    ("under one frame", "--mel-from {short} --out {out}.wav", "too few for a mel frame: it needs more than 80"),
    ("implausible rate", "--mel-from {slow} --out {out}.wav", "a sample rate of 100 Hz is not plausible audio"),
    ("wav out for a folder", "--mel-from {folder} --out {out}.wav", "name a folder (one WAV per input)"),
    ("same name twice", "--mel-from {good} {folder} --out {out}", "two inputs would both be written as good.wav"),
    ("num-samples with several", "--mel-from {folder} --out {out} --num-samples 2", "--num-samples applies to one"),
    ("prime", "--mel-from {good} --prime {good} --out {out}.wav", "--prime does not combine with --mel-from"),
])
def test_bad_mel_inputs_are_one_line_and_write_nothing(make, argv, expect, vocoder_ckpt, tmp_path, capsys):
    files = {"silent": tmp_path / "silent.wav", "empty": tmp_path / "empty", "good": tmp_path / "good.wav",
             "junk": tmp_path / "junk.wav", "short": tmp_path / "short.wav", "slow": tmp_path / "slow.wav",
             "folder": tmp_path / "folder", "out": tmp_path / "out"}
    soundfile.write(files["silent"], np.zeros(4000, dtype=np.float32), RATE)
    files["empty"].mkdir()
    (files["empty"] / "notes.txt").write_text("no audio here")
    soundfile.write(files["good"], tone(300.0, 0.2, RATE), RATE)
    files["junk"].write_bytes(b"RIFF not really a wave file" * 10)
    soundfile.write(files["short"], tone(300.0, 0.005, RATE), RATE)
    soundfile.write(files["slow"], tone(30.0, 1.0, 100), 100)
    files["folder"].mkdir()
    soundfile.write(files["folder"] / "good.wav", tone(200.0, 0.2, RATE), RATE)
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    status = main(["sample", "--ckpt", str(vocoder_ckpt), *argv.format(**files).split()])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("wavegen: error: ")
    assert expect.format(**files) in err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_the_speech_config_with_mel_frames_fits_past_its_first_validation(tmp_path, monkeypatch):
    """The issue's reproduction: the shipped speech config turned vocoder by n_mels, whose SampleLogger used to
    sample unconditionally and stop the run at the end of the first validation."""
    from tests.test_readme_commands import ROOT, TINY

    data = make_audio_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["fit", "--config", str(ROOT / "lightning_configs" / "wavenet_speech.yaml"), "--data.root",
                 str(data), "--model.init_args.n_mels", "80", *TINY["wavenet"]]) == 0
    made = sorted(p.name for p in (tmp_path / "runs" / "wavenet_speech" / "samples").glob("*resynthesis_*.wav"))
    assert made == ["step0000002_resynthesis_0.wav", "step0000002_resynthesis_1.wav"]  # the validation batch of 2
