"""Audio data for WaveNet: a folder of WAV/FLAC files (or a torchaudio dataset) as 8-bit mu-law codes.

Every usable file is read once with soundfile, mixed to mono, its DC offset removed, resampled to ``sample_rate``,
peak-normalised and mu-law encoded; the codes (uint8, one tensor per file) stay in memory (25 min at 8 kHz is
12 MB). Files are split into train / validation / test by file, never by crop, with a fixed seed. Training batches
are random crops of ``receptive_field + target_length`` samples; validation and test batches tile each held-out
file with non-overlapping crops of the same length, so their bits/sample are comparable across runs.

Batches are ``(codes long [B, T], speakers long [B])``; speaker ids come from the file names when
``speaker_pattern`` is set (e.g. ``7_george_12.wav`` -> ``george``), else they are all 0.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from arcore.errors import UsageError, is_out_of_memory, options
from arcore.files.atomic import nothing_left_on_failure
from arcore.training.data import (
    CodesDataModule,
    EpochDraws,
    ResumableLoader,
    Split,
    machine_memory,
    run_seed,
    scan,
    warn,
)

AUDIO_SUFFIXES = {".wav", ".flac"}
DIGITS_PATTERN = r"^\d+_(?P<speaker>[^_]+)_\d+$"  # DIGIT_SPEAKER_TAKE, the spoken-digits naming
TORCHAUDIO_DATASETS = {"yesno": "YESNO", "ljspeech": "LJSPEECH", "vctk": "VCTK_092"}
MIN_RATE, MAX_RATE = 1_000, 768_000  # sample rates (Hz) a file may have
OPTIONS = options("data", "root", "dataset", "sample_rate", "target_length", "speaker_pattern", "short_clips",
                  "val_fraction", "test_fraction", "batch_size", "crops_per_epoch", "num_workers")
"""How the command line spells :class:`AudioDataModule`'s arguments, for its errors (``--data.root``)."""
MAX_RESAMPLE_TAPS = 1 << 24  # largest resampling filter bank accepted (64 MB of float32)


def mu_law_encode(audio: torch.Tensor, quantization: int = 256) -> torch.Tensor:
    """Float audio in [-1, 1] to mu-law codes (long) in [0, quantization)."""
    import torchaudio.functional as AF

    return AF.mu_law_encoding(audio.clamp(-1.0, 1.0), quantization)


def check_rates(rate: int, sample_rate: int) -> None:
    """Refuse a file rate no real audio has, or a pair of rates whose exact resampling filter bank (about
    ``rate/g * sample_rate/g`` taps, g their greatest common divisor) would not fit in memory: a corrupt header
    can claim any rate, and resampling 1 Hz or 96,001 Hz audio to 8 kHz would take gigabytes."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise UsageError(f"a sample rate of {rate} Hz is not plausible audio ({MIN_RATE:,} to {MAX_RATE:,} Hz)")
    common = math.gcd(rate, sample_rate)
    if rate // common * (sample_rate // common) > MAX_RESAMPLE_TAPS:
        raise UsageError(f"resampling {rate} Hz to {sample_rate} Hz needs a filter bank too large for memory: "
                         f"convert the file to a common rate (e.g. 16000 or 44100 Hz)")


CANCELLED = 1e-3
"""A mix of channels whose peak is this far below its loudest channel's (60 dB) holds nothing of them: the channels
cancel (one is the other inverted), and peak normalisation would only raise the remainder's noise."""
MAX_CLIPPED = 0.01
"""The largest share of a float file's samples that may lie outside [-1, 1] and be clipped (a few spikes); a file
with more was written at another scale, and is refused rather than flattened."""
READ_BYTES = 12
"""Bytes per sample (at the file's rate) that reading a file holds beyond its float32 samples of every channel, at
the peak: the mono mix, its centred copy, the resampled clip and its mu-law codes."""


class NotEnoughMemory(UsageError):
    """An audio file too large to read in this machine's memory: refused, never skipped as an unreadable file (a
    data set silently missing its longest files)."""


def prepare_audio(audio: np.ndarray | torch.Tensor, rate: int, sample_rate: int) -> torch.Tensor:
    """Samples ``[T]`` or ``[T, channels]`` at ``rate`` to a mono float32 clip at ``sample_rate``, its DC offset
    (mean) removed, then peak 0.95. Removing the offset first matters: speech riding on an offset of 0.3 would
    otherwise be scaled by its distance from zero and use a fraction of the mu-law levels (39 of 256), and a tone
    on an offset would look silent. Channels that cancel when mixed (:data:`CANCELLED`) are refused."""
    import torchaudio.functional as AF

    check_rates(rate, sample_rate)
    clip = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    loudest, channels = None, clip.shape[1] if clip.dim() == 2 else 1
    if clip.dim() == 2:
        if clip.shape[0] and channels > 1:
            means = clip.double().mean(dim=0)
            loudest = float(torch.maximum(clip.amax(dim=0) - means, means - clip.amin(dim=0)).max())
        clip = clip.mean(dim=1)
    if clip.numel():
        clip = clip - clip.double().mean().float()
    if loudest and math.isfinite(loudest) and float(clip.abs().max()) <= CANCELLED * loudest:
        raise UsageError(f"its {channels} channels cancel when mixed to mono (the mix is "
                         f"{_decibels(float(clip.abs().max()) / loudest)} below the loudest channel), which leaves "
                         f"silence; save one channel as a mono file")
    if rate != sample_rate:
        clip = AF.resample(clip, rate, sample_rate)
    peak = clip.abs().max() if clip.numel() else torch.tensor(0.0)
    return clip * (0.95 / peak) if peak > 0 else clip


def _decibels(ratio: float) -> str:
    return f"{-20 * math.log10(ratio):.0f} dB" if ratio > 0 else "infinitely far"


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """One file to a mono float clip at ``sample_rate`` (see :func:`prepare_audio`); soundfile errors propagate
    (:func:`why_unusable` words any of them for the user). The file is opened by Python, so a name that is not
    valid UTF-8 reads as any other; a float file's samples outside [-1, 1] are clipped, and said in one warning line
    (:func:`_within_range`). A file too large for this machine's memory is :class:`NotEnoughMemory`, found from its
    header before it is read, or when reading runs out of memory."""
    import soundfile

    try:
        with open(path, "rb") as file, soundfile.SoundFile(file) as sound:
            need = sound.frames * (4 * sound.channels + READ_BYTES)
            if need > machine_memory():
                raise NotEnoughMemory(
                    f"its {sound.frames / sound.samplerate / 60:,.0f} minutes of {sound.channels}-channel audio at "
                    f"{sound.samplerate:,} Hz need about {need / 2 ** 30:,.1f} GiB to read, more than this machine's "
                    f"{machine_memory() / 2 ** 30:,.0f} GiB of memory: split it into shorter files")
            audio, rate = sound.read(dtype="float32", always_2d=True), sound.samplerate
        return prepare_audio(_within_range(audio, path), rate, sample_rate)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise NotEnoughMemory(f"reading it ran out of memory ({type(exc).__name__}): split it into shorter files, or "
                              f"free memory for this run") from None


def _within_range(audio: np.ndarray, path: str | Path) -> np.ndarray:
    """Float samples ``audio`` with the few outside [-1, 1] (a float file may hold any value) clipped to the loudest
    of the others, and said: the rest of the file sets its level, where peak normalisation by such a spike would
    squash it into a few mu-law levels. More than :data:`MAX_CLIPPED` of them is a file at another scale, refused.
    Non-finite samples are left for the caller to refuse."""
    outside = (audio > 1) | (audio < -1)
    count = int(np.count_nonzero(outside))
    if not count or not np.isfinite(audio).all():
        return audio
    peak = float(np.abs(audio).max())
    if count > MAX_CLIPPED * audio.size:
        raise UsageError(f"{count:,} of its {audio.size:,} samples ({count / audio.size:.0%}) lie outside [-1, 1], "
                         f"up to {peak:.3g}: a float file holds audio in [-1, 1]; divide it by {peak:.3g} and save it "
                         f"again")
    level = float(np.abs(np.where(outside, 0, audio)).max())
    warn("wavegen", f"{path}: {count:,} of its {audio.size:,} samples lie outside [-1, 1], up to {peak:.3g}: clipped "
                    f"to the loudest of the others, {level:.3g}")
    return np.clip(audio, -level, level, out=audio)


def why_unusable(exc: Exception) -> str:
    """A few words on why :func:`read_audio` failed: the message of this module's own checks, else the error type."""
    return str(exc) if isinstance(exc, UsageError) else f"not readable audio ({type(exc).__name__})"


@dataclass
class Clip:
    """One file's mu-law codes (uint8) and speaker id; for held-out files also the float audio the codes encode
    (the reference a vocoder's resynthesis and its baselines are scored against, :mod:`wavegen.quality`)."""

    name: str
    codes: torch.Tensor
    speaker: int
    audio: torch.Tensor | None = None


def _speaker_of(path: Path, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return ""
    match = pattern.match(path.stem)
    if match is None:
        return None
    return match.group("speaker") if "speaker" in pattern.groupindex else match.group(1)


class CropDataset(Dataset):
    """Random crops of ``length`` samples from clips (drawn in proportion to their length), ``size`` per epoch.

    The crop of index ``i`` is drawn from ``(seed, i)`` alone, and :class:`arcore.training.data.EpochDraws` hands epoch
    ``e`` the indices ``e * size + i``: fresh crops every epoch, the same ones after a resume, in any worker process.
    """

    def __init__(self, clips: list[Clip], length: int, size: int, seed: int | None = None) -> None:
        self.clips, self.length, self.size = clips, length, size
        self.seed = run_seed() if seed is None else seed
        weights = torch.tensor([max(len(c.codes) - length + 1, 1) for c in clips], dtype=torch.float64)
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        clip = self.clips[int(torch.multinomial(self.weights, 1, generator=generator))]
        start = int(torch.randint(0, len(clip.codes) - self.length + 1, (), generator=generator))
        return clip.codes[start: start + self.length], clip.speaker


class TileDataset(Dataset):
    """Every non-overlapping crop of ``length`` samples of every clip, in order (validation and test)."""

    def __init__(self, clips: list[Clip], length: int) -> None:
        self.items = [(clip, start) for clip in clips for start in range(0, len(clip.codes) - length + 1, length)]
        self.length = length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip, start = self.items[index]
        return clip.codes[start: start + self.length], clip.speaker


class AudioDataModule(CodesDataModule):
    """A folder of WAV/FLAC files (recursive) or a torchaudio dataset as mu-law crops.

    Args:
        root: the folder of audio files, or where a torchaudio dataset lives / is downloaded to.
        dataset: ``folder`` or a torchaudio dataset name (``yesno``, ``ljspeech``, ``vctk``).
        sample_rate: every clip is resampled to this rate (it must equal the model's).
        target_length: samples per crop beyond the model's receptive field.
        receptive_field: the model's receptive field; None takes it from the model being trained.
        speaker_pattern: a regex on the file stem whose group ``speaker`` (or first group) names the speaker;
            ``digits`` is ``DIGIT_SPEAKER_TAKE``; None: no speaker labels. For ``vctk`` any pattern turns on
            the dataset's own speaker ids.
        short_clips: ``pad`` (with leading silence) or ``skip`` files shorter than one crop.
        val_fraction, test_fraction: share of the files held out for validation and test.
        crops_per_epoch: random training crops per epoch.
        batch_size: crops per batch.
        num_workers: data-loader processes.
        download: fetch a torchaudio dataset when missing.
        quantization: mu-law levels of the codes (the model's).
        split_seed: the seed of the files' assignment to the train, validation and test splits.
    """

    resume_settings = ("dataset", "sample_rate", "target_length", "receptive_field", "quantization",
                       "speaker_pattern", "short_clips")

    def __init__(self, root: str = "./data/audio", dataset: str = "folder", sample_rate: int = 8000,
                 target_length: int = 2000, receptive_field: int | None = None, speaker_pattern: str | None = None,
                 short_clips: Literal["pad", "skip"] = "pad", val_fraction: float = 0.05,
                 test_fraction: float = 0.05, batch_size: int = 8, crops_per_epoch: int = 2000,
                 num_workers: int = 0, download: bool = True, quantization: int = 256, split_seed: int = 0) -> None:
        super().__init__()
        if dataset != "folder" and dataset not in TORCHAUDIO_DATASETS:
            raise UsageError(f"dataset must be folder or one of {', '.join(TORCHAUDIO_DATASETS)}, "
                             f"got {dataset!r}", OPTIONS)
        if short_clips not in ("pad", "skip"):
            raise UsageError(f"short_clips must be pad or skip, got {short_clips!r}", OPTIONS)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise UsageError("val_fraction and test_fraction must be in [0, 1) and sum below 1", OPTIONS)
        if sample_rate < 1 or target_length < 1 or batch_size < 1 or crops_per_epoch < 1 or num_workers < 0:
            raise UsageError(f"sample_rate, target_length, batch_size and crops_per_epoch must be >= 1 and "
                             f"num_workers >= 0, got {sample_rate}, {target_length}, {batch_size}, {crops_per_epoch} "
                             f"and {num_workers}", OPTIONS)
        logits = batch_size * target_length * quantization * 2  # one batch's logits, in bfloat16 at the least
        if logits > machine_memory():
            raise UsageError(f"target_length={target_length} with batch_size={batch_size}: one batch's logits alone "
                             f"would take {logits / 2 ** 30:,.0f} GiB, more than this machine's "
                             f"{machine_memory() / 2 ** 30:,.0f} GiB of memory; target_length counts the samples of a "
                             f"crop beyond the receptive field (e.g. 2000)", OPTIONS)
        self.save_hyperparameters()
        self.root, self.dataset, self.sample_rate = Path(root), dataset, sample_rate
        self.target_length, self.receptive_field = target_length, receptive_field
        pattern = DIGITS_PATTERN if speaker_pattern == "digits" else speaker_pattern
        try:
            self.speaker_pattern = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise UsageError(f"speaker_pattern is not a valid regex: {exc}", OPTIONS) from None
        self.short_clips, self.val_fraction, self.test_fraction = short_clips, val_fraction, test_fraction
        self.batch_size, self.crops_per_epoch, self.num_workers = batch_size, crops_per_epoch, num_workers
        self.download, self.quantization, self.split_seed = download, quantization, split_seed
        self.speakers: list[str] = []
        self._splits: dict[str, list[Clip]] | None = None
        self._cropped: tuple[int, dict[str, list[Clip]]] | None = None

    # ----- reading ----------------------------------------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        """Distinct speakers found in the file names (0 without ``speaker_pattern``)."""
        self.splits()
        return len(self.speakers)

    def _folder_clips(self) -> list[tuple[str, str, torch.Tensor]]:
        """(name, speaker, clip) of every readable audio file under ``root``; the rest is skipped with a warning."""
        if not self.root.is_dir():
            raise UsageError(f"root={self.root} is not a folder of audio files", OPTIONS)
        paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        clips = []
        for path in scan(paths, "reading audio"):
            speaker = _speaker_of(path, self.speaker_pattern)
            if speaker is None:
                warn("wavegen", f"skipping {path}: its name does not match --data.speaker_pattern")
                continue
            try:
                clip = read_audio(path, self.sample_rate)
            except NotEnoughMemory as exc:  # the file is fine: the data set would silently lose it
                raise UsageError(f"{path}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - soundfile raises several types for unreadable files
                warn("wavegen", f"skipping {path}: {why_unusable(exc)}")
                continue
            if clip.numel() == 0 or not torch.isfinite(clip).all():
                warn("wavegen", f"skipping {path}: empty or not finite")
                continue
            clips.append((str(path.relative_to(self.root)), speaker, clip))
        return clips

    def _torchaudio_dataset(self) -> Any:
        """The named torchaudio dataset under ``root`` (downloaded when allowed), or a one-line error."""
        import torchaudio

        cls = getattr(torchaudio.datasets, TORCHAUDIO_DATASETS[self.dataset])
        try:
            with nothing_left_on_failure(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
                return cls(str(self.root), download=self.download)
        except Exception as exc:  # noqa: BLE001 - downloads fail in many ways offline
            raise UsageError(f"could not load {self.dataset} from {self.root} ({type(exc).__name__}); without "
                             f"network access put a copy there or point root at a folder of audio files "
                             f"with dataset=folder", OPTIONS) from None

    def _torchaudio_clips(self) -> list[tuple[str, str, torch.Tensor]]:
        """(name, speaker, clip) of every item; VCTK's speaker ids are used when ``speaker_pattern`` is set."""
        data = self._torchaudio_dataset()
        with_speakers = self.dataset == "vctk" and self.speaker_pattern is not None
        clips = []
        for i in scan(range(len(data)), f"reading {self.dataset}"):
            item = data[i]
            speaker = str(item[3]) if with_speakers else ""
            clips.append((f"{self.dataset}_{i}", speaker, prepare_audio(item[0].T.numpy(), item[1], self.sample_rate)))
        return clips

    def crop_length(self) -> int:
        """Samples per crop: the model's receptive field plus ``target_length``."""
        rf = self.receptive_field
        if rf is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            rf = getattr(model, "receptive_field", 0)
        return rf + self.target_length

    def splits(self) -> dict[str, list[Clip]]:
        """The clips of each split (read on first use)."""
        if self._splits is not None:
            return self._splits
        raw = self._folder_clips() if self.dataset == "folder" else self._torchaudio_clips()
        if not raw:
            raise UsageError(f"no usable audio ({', '.join(sorted(AUDIO_SUFFIXES))}) under {self.root}: "
                             f"point root at a folder of WAV/FLAC files", OPTIONS)
        self.speakers = sorted({speaker for _, speaker, _ in raw}) if self.speaker_pattern else []
        index = {name: i for i, name in enumerate(self.speakers)}
        clips = [Clip(name, mu_law_encode(clip, self.quantization).to(torch.uint8), index.get(speaker, 0), clip)
                 for name, speaker, clip in raw]
        random.Random(self.split_seed).shuffle(clips)
        n_val = math.ceil(self.val_fraction * len(clips)) if self.val_fraction else 0
        n_test = math.ceil(self.test_fraction * len(clips)) if self.test_fraction else 0
        for clip in clips[n_val + n_test:]:
            clip.audio = None  # training crops need the codes only
        if len(clips) <= n_val + n_test:
            raise UsageError(f"only {len(clips)} usable files under {self.root}: too few to hold out "
                             f"{n_val} for validation and {n_test} for test (lower the fractions)")
        self._splits = {"val": clips[:n_val], "test": clips[n_val: n_val + n_test],
                        "train": clips[n_val + n_test:]}
        return self._splits

    def crops(self, length: int) -> dict[str, list[Clip]]:
        """The splits with clips shorter than ``length`` padded (leading silence) or dropped, said once.

        Args:
            length: the samples one training example spans.
        """
        if self._cropped is not None and self._cropped[0] == length:
            return self._cropped[1]
        splits = self.splits()
        short = sum(len(c.codes) < length for clips in splits.values() for c in clips)
        if short:
            warn("wavegen", f"{short} clips are shorter than one crop ({length} samples): "
                            f"{'padded with leading silence' if self.short_clips == 'pad' else 'skipped'}")
        silence = int(mu_law_encode(torch.zeros(1), self.quantization))

        def fit(clip: Clip) -> Clip | None:
            missing = length - len(clip.codes)
            if missing <= 0:
                return clip
            if self.short_clips == "skip":
                return None
            pad = torch.full((missing,), silence, dtype=torch.uint8)
            return Clip(clip.name, torch.cat([pad, clip.codes]), clip.speaker)

        fitted = {name: [f for f in map(fit, clips) if f is not None] for name, clips in splits.items()}
        if not fitted["train"]:
            raise UsageError(f"no training file is as long as one crop ({length} samples): use "
                             f"short_clips=pad or a smaller target_length", OPTIONS)
        self._cropped = (length, fitted)
        return fitted

    # ----- loaders ----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.dataset != "folder" and self.download:
            self._torchaudio_dataset()

    def setup(self, stage: str | None = None) -> None:
        self.splits()

    def _loader(self, split: Split) -> DataLoader:
        length = self.crop_length()
        clips = self.crops(length)[split]
        sampler = None
        if split == "train":
            dataset: CropDataset | TileDataset = CropDataset(clips, length, self.crops_per_epoch)
            sampler = EpochDraws(len(dataset))
        else:
            dataset = TileDataset(clips, length)
        return ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=split == "train",
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
