"""Objective quality of a vocoder's resynthesis of held-out speech, beside its bits/sample.

Three scores of a resynthesised clip against its original (the mu-law codes the model was given, decoded: the
scores measure the vocoder, not the 8-bit mu-law coding):

- PESQ (ITU-T P.862, the ``pesq`` package): narrow-band at 8 kHz, wide-band at 16 kHz; audio at other rates is
  resampled to 16 kHz (wide-band) from 16 kHz up, else to 8 kHz (narrow-band). -0.5 (bad) to 4.5 (transparent).
- STOI (``pystoi``): short-time objective intelligibility, 0 to 1.
- Mel distance: the root-mean-square difference of the two log-mel spectrograms (the model's own mel transform),
  in dB, averaged over frames; 0 for identical clips.

:class:`VocoderQuality` logs their means over the first ``clips`` held-out files as ``test/pesq``, ``test/stoi`` and
``test/mel_distance`` in ``wavegen test`` and as ``val/*`` every ``every_n_validations`` validations of ``fit``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from arcore.errors import UsageError
from wavegen.wavenet import WaveNet, decode_mu_law


def pesq_score(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float:
    """PESQ of ``degraded`` against ``reference`` (float audio at ``rate``); NaN when P.862 finds no speech."""
    from pesq import pesq

    target, mode = (16000, "wb") if rate >= 16000 else (8000, "nb")
    if rate != target:
        import torchaudio.functional as AF

        reference, degraded = (AF.resample(torch.from_numpy(x), rate, target).numpy() for x in (reference, degraded))
    try:
        return float(pesq(target, reference, degraded, mode))
    except Exception:  # noqa: BLE001 - the package raises its own error types for silent or too-short clips
        return math.nan


def stoi_score(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float:
    """STOI of ``degraded`` against ``reference``; NaN for a clip with too little speech to score."""
    from pystoi import stoi

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pystoi warns, and returns a placeholder, when there are too few frames
        try:
            return float(stoi(reference, degraded, rate, extended=False))
        except Warning:
            return math.nan


def mel_distance(model: WaveNet, reference: torch.Tensor, degraded: torch.Tensor) -> float:
    """RMS difference (dB) of the log-mel spectrograms of two clips of codes ``[T]``, averaged over frames."""
    a, b = (10 * model.log_mel(codes[None])[0] for codes in (reference, degraded))  # log10 power -> dB
    return float((a - b).pow(2).mean(dim=0).sqrt().mean())


@dataclass
class Scores:
    """Mean PESQ, STOI and mel distance over the clips that could be scored (PESQ and STOI skip a clip without
    enough speech), and how many clips there were."""

    pesq: float
    stoi: float
    mel_distance: float
    clips: int

    def as_metrics(self, stage: str) -> dict[str, float]:
        return {f"{stage}/pesq": self.pesq, f"{stage}/stoi": self.stoi, f"{stage}/mel_distance": self.mel_distance}


def score(model: WaveNet, originals: Sequence[torch.Tensor], resynthesised: Sequence[torch.Tensor]) -> Scores:
    """The three scores of each resynthesis (codes) against its original (codes), averaged."""
    rate = model.sample_rate
    pesqs, stois, distances = [], [], []
    for original, made in zip(originals, resynthesised):
        ref, deg = (decode_mu_law(c.cpu(), model.num_classes).double().numpy() for c in (original, made))
        pesqs.append(pesq_score(ref, deg, rate))
        stois.append(stoi_score(ref, deg, rate))
        distances.append(mel_distance(model, original.to(model.device), made.to(model.device)))
    mean = (lambda v: float(np.nanmean(v)) if not all(map(math.isnan, v)) else math.nan)
    return Scores(mean(pesqs), mean(stois), mean(distances), len(distances))


def resynthesize_all(model: WaveNet, clips: Sequence[torch.Tensor], speakers: Sequence[int] | None,
                     batch_size: int, generator: torch.Generator, temperature: float = 1.0) -> list[torch.Tensor]:
    """Resynthesise every clip of codes, ``batch_size`` at a time, longest first (so a batch's clips are of similar
    lengths); returned in the order given."""
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    out: list[torch.Tensor | None] = [None] * len(clips)
    for first in range(0, len(order), batch_size):
        rows = order[first: first + batch_size]
        cond = None if not model.num_labels or speakers is None else \
            torch.tensor([speakers[i] for i in rows], device=model.device)
        for i, codes in zip(rows, model.resynthesize([clips[i] for i in rows], cond, temperature=temperature,
                                                     generator=generator)):
            out[i] = codes
    return out  # type: ignore[return-value]


class VocoderQuality(pl.Callback):
    """PESQ, STOI and mel distance of a vocoder's resynthesis of the first ``clips`` held-out files (each cut to its
    first ``seconds``), drawn ``batch_size`` at a time through the cached sampler with a fixed ``seed`` and
    ``temperature``: logged as ``test/*`` at the end of ``wavegen test`` and as ``val/*`` at every
    ``every_n_validations``-th validation of ``fit`` (0: never). The held-out clips are read once and kept. Nothing
    happens for a model without mel conditioning. Listed before :class:`arcore.callbacks.EMA` it scores the
    averaged weights, as validation does. Under DDP rank 0 scores alone."""

    def __init__(self, clips: int = 8, seconds: float = 2.0, every_n_validations: int = 0, batch_size: int = 8,
                 temperature: float = 1.0, seed: int = 0) -> None:
        if clips < 1 or batch_size < 1 or every_n_validations < 0 or not (math.isfinite(seconds) and seconds > 0) \
                or not temperature > 0:
            raise UsageError(f"VocoderQuality needs clips >= 1, seconds > 0, batch_size >= 1, "
                             f"every_n_validations >= 0 and temperature > 0, got {clips}, {seconds}, {batch_size}, "
                             f"{every_n_validations} and {temperature}")
        self.clips, self.seconds, self.every = clips, seconds, every_n_validations
        self.batch_size, self.temperature, self.seed = batch_size, temperature, seed
        self.validations = 0
        self._held_out: dict[str, tuple[list[torch.Tensor], list[int]]] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every:
            return
        self.validations += 1
        if self.validations % self.every == 0:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if not getattr(pl_module, "vocoder", False) or not trainer.is_global_zero:
            return
        originals, speakers = self._clips(trainer, pl_module, split)
        if not originals:
            rank_zero_warn(f"VocoderQuality: no {split} files to resynthesise")
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        made = resynthesize_all(pl_module, originals, speakers, self.batch_size, generator, self.temperature)
        for name, value in score(pl_module, originals, made).as_metrics(split).items():
            pl_module.log(name, value, rank_zero_only=True)

    def _clips(self, trainer: pl.Trainer, pl_module: WaveNet, split: str) -> tuple[list[torch.Tensor], list[int]]:
        """The first held-out files of ``split`` (codes, cut to ``seconds``) and their speakers, read once."""
        if split not in self._held_out:
            splits = getattr(trainer.datamodule, "splits", None)
            if splits is None:
                raise UsageError("VocoderQuality reads the held-out files of wavegen's audio data module: "
                                 "run it with an AudioDataModule")
            shortest = 2 * pl_module.hop_length + 1  # one mel frame
            longest = max(shortest, round(self.seconds * pl_module.sample_rate))
            usable = [f for f in splits()[split] if len(f.codes) >= shortest]
            files = usable[: self.clips]
            self._held_out[split] = ([f.codes[:longest].long() for f in files], [f.speaker for f in files])
        return self._held_out[split]

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = state_dict["validations"]
