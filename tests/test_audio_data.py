"""Audio data: reading, mono mixdown, resampling, mu-law crops, split by file, speakers, bad files, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from arcore.errors import UsageError
from wavegen.data import AudioDataModule
from wavegen.wavenet import decode_mu_law

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)


def chirp(seconds: float, rate: int, f0: float = 200.0, f1: float = 1500.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))).astype(np.float32)


def make_audio_folder(root: Path, count: int = 8, rate: int = 8000, seconds: float = 0.5) -> Path:
    """``count`` tones and chirps named DIGIT_SPEAKER_TAKE.wav for two speakers, one FLAC in a subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        speaker = ("alice", "bob")[i % 2]
        clip = tone(220.0 * (1 + i % 3), seconds, rate) if i % 2 == 0 else chirp(seconds, rate)
        folder = root / "more" if i == count - 1 else root
        folder.mkdir(exist_ok=True)
        soundfile.write(folder / f"{i % 10}_{speaker}_{i}.{'flac' if i == count - 1 else 'wav'}", clip, rate)
    return root


def test_mono_mixdown_resampling_and_normalisation(tmp_path):
    left = tone(440.0, 1.0, 16000)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000)
    data = AudioDataModule(str(tmp_path), sample_rate=8000, val_fraction=0, test_fraction=0)
    (clip,) = data.splits()["train"]
    assert clip.codes.dtype == torch.uint8 and len(clip.codes) == 8000  # 1 s at 8 kHz
    audio = decode_mu_law(clip.codes.long()).numpy()
    assert 0.9 < np.abs(audio).max() <= 0.97  # peak-normalised to 0.95 (within a mu-law step)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 8000 / len(audio) - 440.0) <= 1.0  # the tone survives the resampling


def test_crops_split_by_file_and_speakers_from_names(tmp_path):
    root = make_audio_folder(tmp_path / "audio", count=10)
    data = AudioDataModule(str(root), speaker_pattern="digits", receptive_field=100, target_length=300,
                           val_fraction=0.2, test_fraction=0.2, batch_size=4, crops_per_epoch=8)
    splits = data.splits()
    names = {split: {c.name for c in clips} for split, clips in splits.items()}
    assert sum(map(len, names.values())) == 10 and not (names["train"] & names["val"]) \
        and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert "more/9_bob_9.flac" in set().union(*names.values())
    assert data.speakers == ["alice", "bob"] and data.num_speakers == 2
    assert all(c.speaker == (0 if "alice" in c.name else 1) for clips in splits.values() for c in clips)
    codes, speakers = next(iter(data.train_dataloader()))
    assert codes.shape == (4, 400) and speakers.shape == (4,)
    val_clips = {bytes(c.codes.numpy()) for c in splits["val"]}
    tiles = [bytes(x.numpy()) for batch, _ in data.val_dataloader() for x in batch]
    assert len(tiles) == 2 * (4000 // 400)  # every non-overlapping crop of the 2 held-out files
    assert all(any(t in clip for clip in val_clips) for t in tiles)


def test_training_crops_follow_the_epoch_and_seed_only(tmp_path, monkeypatch):
    """What a resumed run needs: epoch e's crops depend on (seed, e) alone, not on what ran before."""
    root = make_audio_folder(tmp_path / "audio", count=6)
    data = AudioDataModule(str(root), receptive_field=100, target_length=300, val_fraction=0, test_fraction=0,
                           batch_size=4, crops_per_epoch=8)

    def epoch(e: int) -> list[bytes]:
        loader = data.train_dataloader()
        loader.sampler.set_epoch(e)
        torch.randn(5)  # global random state must not matter
        return [bytes(x.numpy()) for batch, _ in loader for x in batch]

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    first, second = epoch(0), epoch(1)
    assert first != second and epoch(1) == second and epoch(0) == first
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    assert epoch(0) != first


def test_bad_files_are_skipped_with_one_line_each(tmp_path, capsys):
    root = make_audio_folder(tmp_path / "audio", count=4)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    (root / "text.flac").write_text("this is not audio")
    soundfile.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    (root / "notes.txt").write_text("ignored: not an audio suffix")
    (root / "unlabelled.wav").write_bytes((root / "0_alice_0.wav").read_bytes())
    data = AudioDataModule(str(root), speaker_pattern="digits", val_fraction=0, test_fraction=0)
    assert len(data.splits()["train"]) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    for name in ("corrupt.wav", "text.flac", "empty.wav", "unlabelled.wav"):
        assert sum(name in line and line.startswith("wavegen: warning: skipping") for line in lines) == 1


def test_nothing_usable_is_one_clear_error(tmp_path):
    (tmp_path / "bad.wav").write_text("nope")
    with pytest.raises(UsageError, match="no usable audio .* under .*: point root at"):
        AudioDataModule(str(tmp_path)).splits()
    with pytest.raises(UsageError, match="not a folder"):
        AudioDataModule(str(tmp_path / "missing")).splits()
    make_audio_folder(tmp_path / "two", count=2)
    with pytest.raises(UsageError, match="too few"):
        AudioDataModule(str(tmp_path / "two"), val_fraction=0.3, test_fraction=0.3).splits()


@pytest.mark.parametrize("policy", ["pad", "skip"])
def test_short_clips_are_padded_or_skipped_and_said_once(tmp_path, capsys, policy):
    root = make_audio_folder(tmp_path / "audio", count=4, seconds=0.5)
    soundfile.write(root / "short1.wav", tone(300.0, 0.01, 8000), 8000)
    soundfile.write(root / "short2.wav", tone(300.0, 0.02, 8000), 8000)
    data = AudioDataModule(str(root), receptive_field=50, target_length=250, short_clips=policy,
                           val_fraction=0, test_fraction=0, batch_size=2, crops_per_epoch=4)
    capsys.readouterr()
    loader = data.train_dataloader()
    data.val_dataloader()
    lines = capsys.readouterr().err.strip().splitlines()
    said = "padded with leading silence" if policy == "pad" else "skipped"
    assert lines == [f"wavegen: warning: 2 clips are shorter than one crop (300 samples): {said}"]
    clips = loader.dataset.clips
    assert len(clips) == (6 if policy == "pad" else 4) and min(len(c.codes) for c in clips) >= 300
    if policy == "pad":
        padded = next(c for c in clips if c.name == "short1.wav")
        # mu-law silence (code 128) before the clip's own 80 samples
        assert len(padded.codes) == 300 and (padded.codes[:220] == 128).all()


def test_torchaudio_dataset_offline_names_the_root_option(tmp_path):
    with pytest.raises(UsageError, match="could not load yesno .*point root at") as refused:
        AudioDataModule(str(tmp_path), dataset="yesno", download=False).splits()
    assert "point --data.root at a folder of audio files with --data.dataset folder" in refused.value.for_command_line()
    with pytest.raises(UsageError, match="dataset must be folder or one of"):
        AudioDataModule(str(tmp_path), dataset="timit")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason="no shared real audio on this machine")
def test_real_spoken_digits_have_six_speakers_and_held_out_files():
    data = AudioDataModule(str(SHARED_AUDIO / "spoken-digits"), speaker_pattern="digits", receptive_field=1023,
                           target_length=1000, batch_size=8)
    assert data.num_speakers == 6
    splits = data.splits()
    assert len(splits["val"]) == len(splits["test"]) == 150
    codes, speakers = next(iter(data.train_dataloader()))
    assert codes.shape == (8, 2023) and int(speakers.max()) < 6
    assert codes.float().std() > 5  # real audio, not padding silence only
