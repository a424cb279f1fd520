"""The classical inversions of log-mel frames (wavegen/griffinlim.py): the frames are the vocoder's own, mel-constrained
Griffin-Lim matches them closer than torchaudio's least squares + Griffin-Lim and recovers a tone, it is seeded and
batched, silence stays silent, bad frames are one-line errors; and ``wavegen griffin-lim`` on files and folders, with
its bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from arcore.errors import UsageError
from tests.test_vocoder import RATE, speech_like
from tests.test_wavegen_cli import read_pcm
from wavegen.cli import main
from wavegen.data import mu_law_encode
from wavegen.griffinlim import MelFrames, least_squares_griffin_lim, mel_griffin_lim
from wavegen.quality import mel_distance, score
from wavegen.wavenet import WaveNet, decode_mu_law


def dominant(audio: torch.Tensor, frequency: float) -> tuple[float, float]:
    """The frequency (Hz) of the strongest component of the middle of a clip at 8 kHz, and the share of its energy
    within 50 Hz of ``frequency``."""
    middle = audio[len(audio) // 8: -len(audio) // 8]
    spectrum = torch.fft.rfft(middle * torch.hann_window(len(middle))).abs().pow(2)
    hertz = torch.arange(len(spectrum)) * RATE / len(middle)
    return float(hertz[spectrum.argmax()]), float(spectrum[(hertz - frequency).abs() < 50].sum() / spectrum.sum())


@pytest.mark.parametrize(("n_mels", "hop_length"), [(80, 80), (8, 40)])
def test_the_frames_are_the_vocoders_own(n_mels, hop_length):
    model = WaveNet(n_mels=n_mels, hop_length=hop_length)
    codes = mu_law_encode(torch.from_numpy(speech_like(0.3)))
    frames = MelFrames.of(model)
    assert frames == MelFrames(RATE, n_mels, hop_length, 4 * hop_length) == MelFrames(RATE, n_mels, hop_length)
    assert torch.equal(frames.log_mel(decode_mu_law(codes)), model.log_mel(codes[None])[0])
    assert MelFrames.of(frames) is frames


@pytest.mark.parametrize("n_mels", [80, 20])
def test_mel_constrained_griffin_lim_matches_a_voice_closer_than_torchaudios(n_mels):
    frames = MelFrames(RATE, n_mels, 80)
    voice = torch.from_numpy(speech_like(1.0)).float()
    mel = frames.log_mel(voice)
    made = mel_griffin_lim(mel, RATE, 80, length=len(voice))
    baseline = least_squares_griffin_lim(mel, RATE, 80, length=len(voice))
    assert made.shape == baseline.shape == voice.shape and made.dtype == torch.float32
    ours, theirs = score(frames, [voice], [made]), score(frames, [voice], [baseline])
    assert ours.mel_distance < 0.5 * theirs.mel_distance  # 0.42 against 3.71 dB at 80 bands, 1.47 against 8.39 at 20
    assert ours.pesq > theirs.pesq + 0.2
    assert torch.equal(frames.resynthesize(voice), made)  # a clip's own frames, the default method
    assert torch.equal(frames.resynthesize(voice, "least-squares"), baseline)


def test_it_recovers_a_tone_that_torchaudios_spreads_over_the_band():
    tone = 0.5 * torch.sin(2 * torch.pi * 1234.0 * torch.arange(RATE) / RATE)
    peak, share = dominant(MelFrames(RATE, 80, 80).resynthesize(tone), 1234.0)
    assert abs(peak - 1234.0) < 3 and share > 0.99  # 80 bands: 1233.3 Hz, all of it
    coarse = MelFrames(RATE, 20, 80)  # 20 bands: one band is about 110 Hz wide at 440 Hz
    low = 0.5 * torch.sin(2 * torch.pi * 440.0 * torch.arange(RATE) / RATE)
    peak, share = dominant(coarse.resynthesize(low), 440.0)
    _, spread = dominant(coarse.resynthesize(low, "least-squares"), 440.0)
    assert abs(peak - 440.0) < 15 and share > 0.95 and spread < 0.8  # 432 Hz with 0.99, against 0.61


def test_it_is_seeded_and_a_clip_comes_out_of_a_batch_as_alone():
    frames = MelFrames(RATE, 20, 40, 200)
    voices = torch.from_numpy(np.stack([speech_like(0.4, seed=i) for i in range(3)]))
    mel = frames.log_mel(voices)
    batch = mel_griffin_lim(mel, RATE, 40, n_fft=200, iterations=20, seed=3)
    assert batch.shape == (3, 40 * (mel.shape[-1] - 1))
    for row, frames_of_row in zip(batch, mel):
        assert torch.allclose(row, mel_griffin_lim(frames_of_row, RATE, 40, n_fft=200, iterations=20, seed=3),
                              atol=1e-6)
    assert not torch.allclose(batch, mel_griffin_lim(mel, RATE, 40, n_fft=200, iterations=20, seed=4), atol=1e-3)
    twice = mel_griffin_lim(mel.double(), RATE, 40, n_fft=200, iterations=20, seed=3)
    assert twice.dtype == torch.float64 and torch.allclose(twice.float(), batch, atol=1e-4)


def test_silent_frames_stay_silent_and_more_rounds_match_the_frames_closer():
    frames = MelFrames(RATE, 40, 80)
    silence = frames.log_mel(torch.zeros(2000))
    assert bool((silence == -5).all())  # every band at the floor
    assert mel_griffin_lim(silence, RATE, 80).abs().max() < 0.01  # at most that loud, so nothing is raised
    voice = torch.from_numpy(speech_like(0.5)).float()
    mel = frames.log_mel(voice)
    distances = [mel_distance(frames, voice, mel_griffin_lim(mel, RATE, 80, length=len(voice), iterations=n))
                 for n in (0, 10, 100)]
    assert distances[0] > distances[1] > distances[2]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: mel_griffin_lim(torch.zeros(80), RATE, 80), r"shape \[n_mels, F\] or \[B, n_mels, F\], got \[80\]"),
    (lambda: mel_griffin_lim(torch.full((8, 5), float("nan")), RATE, 80), "not finite"),
    (lambda: mel_griffin_lim(torch.zeros(8, 5), RATE, 80, length=100),
     "5 frames at hop 80 are the frames of 320 to 399 samples, at least 161; got a length of 100"),
    (lambda: mel_griffin_lim(torch.zeros(8, 5), RATE, 80, momentum=1.0), r"momentum in \[0, 1\)"),
    (lambda: least_squares_griffin_lim(torch.zeros(8, 5), RATE, 80, iterations=-1), "iterations must be >= 0"),
    (lambda: MelFrames(RATE, 8, 80, n_fft=100), "n_fft >= 2 \\* hop_length"),
    (lambda: MelFrames(RATE, 8, 80).resynthesize(torch.zeros(1000), "wavenet"), "method must be one of mel, "
                                                                                "least-squares"),
    (lambda: MelFrames(RATE, 8, 80).log_mel(torch.zeros(160)), "160 samples are too few for a mel frame"),
    (lambda: MelFrames.of(WaveNet(dilations=[1])), "this model has no log-mel frames"),
])
def test_bad_frames_and_settings_are_one_line_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()


# ----- wavegen griffin-lim ---------------------------------------------------------------------------------------
def test_the_command_resynthesises_files_and_folders_from_their_own_frames(tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    lengths = {"a.wav": 0.5, "sub/b.flac": 0.3}
    for name, seconds in lengths.items():
        soundfile.write(inputs / name, speech_like(seconds, seed=len(name)), RATE)
    soundfile.write(tmp_path / "wide.wav", speech_like(0.4, rate=16000), 16000)  # another rate: resampled
    out = tmp_path / "out"
    assert main(["griffin-lim", "--mel-from", str(inputs), str(tmp_path / "wide.wav"), "--out", str(out),
                 "--n-mels", "20", "--iterations", "30"]) == 0
    assert "3 clips, 9,600 samples" in capsys.readouterr().out
    for name, seconds in {**lengths, "wide.wav": 0.4}.items():
        audio, rate = read_pcm(out / name.replace(".flac", ".wav"))
        assert rate == RATE and len(audio) == round(seconds * RATE)  # each as long as its input, at 8 kHz

    one, again = tmp_path / "one.wav", tmp_path / "again.wav"
    for path in (one, again):
        assert main(["griffin-lim", "--mel-from", str(inputs / "a.wav"), "--out", str(path), "--n-mels", "20",
                     "--iterations", "30"]) == 0
    made = read_pcm(one)[0]
    assert torch.equal(made, read_pcm(again)[0]) and torch.equal(made, read_pcm(out / "a.wav")[0])  # seeded
    voice = torch.from_numpy(speech_like(0.5, seed=5))
    expected = MelFrames(RATE, 20, 80).resynthesize(voice * 0.95 / voice.abs().max(), iterations=30)
    assert (made - expected).abs().max() < 2e-3  # what the Python function makes, through 16-bit PCM

    short = tmp_path / "short.wav"
    assert main(["griffin-lim", "--mel-from", str(inputs / "a.wav"), "--out", str(short), "--seconds", "0.1",
                 "--method", "least-squares", "--hop-length", "40", "--n-fft", "256", "--sample-rate", "16000"]) == 0
    audio, rate = read_pcm(short)
    assert rate == 16000 and len(audio) == 1600


@pytest.mark.parametrize(("argv", "expect"), [
    ("--mel-from {good} --out {out}.wav --hop-length 0", "mel frames need --sample-rate >= 1, --n-mels >= 1, "
                                                          "--hop-length >= 1 and --n-fft >= 2 * --hop-length"),
    ("--mel-from {good} --out {out}.wav --n-fft 100", "got 8000, 80, 80 and 100"),
    ("--mel-from {good} --out {out}.wav --momentum 1", "--momentum in [0, 1), got 100 and 1.0"),
    ("--mel-from {good} --out {out}.wav --seconds 0", "--seconds must be a finite number > 0"),
    ("--mel-from {good} --out {out}.wav --threads 0", "--threads must be >= 1"),
    ("--mel-from {missing} --out {out}.wav", "--mel-from {missing} does not exist"),
    ("--mel-from {silent} --out {out}.wav", "--mel-from {silent} is silent"),
    ("--mel-from {good} --out {out}.wav --n-fft 4000",
     "1600 samples at 8000 Hz, too few for a mel frame: it needs more than 2000"),
    ("--mel-from {good} {good2} --out {out}.wav", "name a folder (one WAV per input)"),
    ("--mel-from {good} --out {out}.mp3", "--out must name a .wav file"),
    ("--mel-from {good} --out {good}", "is the --mel-from input"),
])
def test_the_commands_bad_input_is_one_line_and_writes_nothing(argv, expect, tmp_path, capsys):
    files = {"good": tmp_path / "good.wav", "good2": tmp_path / "good2.wav", "silent": tmp_path / "silent.wav",
             "missing": tmp_path / "missing.wav", "out": tmp_path / "out"}
    for name in ("good", "good2"):
        soundfile.write(files[name], speech_like(0.2), RATE)
    soundfile.write(files["silent"], np.zeros(4000, dtype=np.float32), RATE)
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    status = main(["griffin-lim", *argv.format(**files).split()])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("wavegen: error: "), err
    assert expect.format(**files) in err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
