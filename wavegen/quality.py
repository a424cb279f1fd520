"""Objective quality of a vocoder's resynthesis of held-out speech, beside its bits/sample and three baselines.

Every score compares a clip to its reference, the held-out file's own audio (before the 8-bit mu-law coding the
model is trained on). Four clips are scored, all made from the same log-mel frames (the model's own transform of the
mu-law-decoded audio, what the vocoder is given):

- the vocoder's resynthesis (``test/pesq``, ``test/stoi``, ``test/mel_distance``);
- mel-constrained Griffin-Lim from the same frames (``*_mel_griffin_lim``, :func:`wavegen.griffinlim.mel_griffin_lim`,
  100 iterations from a seeded random phase): the classical inversion a vocoder has to beat, which needs no training;
- torchaudio's Griffin-Lim from the same frames (``*_griffin_lim``): ``InverseMelScale`` (least squares) then
  ``GriffinLim`` (100 iterations, deterministic start), the baseline of earlier releases, kept for comparison;
- the 8-bit mu-law round trip (``*_mulaw``): the audio the model is trained to reproduce, so the ceiling of any
  resynthesis scored against the original.

The scores:

- PESQ (ITU-T P.862, the ``pesq`` package): narrow-band at 8 kHz, wide-band at 16 kHz; audio at other rates is
  resampled to 16 kHz (wide-band) from 16 kHz up, else to 8 kHz (narrow-band). -0.5 (bad) to 4.5 (transparent).
  The mean over the clips P.862 can score.
- STOI (``pystoi``): short-time objective intelligibility, 0 to 1, of all clips joined end to end, each pair brought
  to one level first: STOI needs about 400 ms of speech, so a single spoken digit scored alone gets nothing, and
  joined clips at different levels would lose the quiet ones to its silent-frame removal.
- Mel distance: the root-mean-square difference of the two log-mel spectrograms (the model's own frames, or the
  :class:`wavegen.griffinlim.MelFrames` given), in dB, averaged over frames and clips; 0 for identical clips.

:class:`VocoderQuality` logs them over the first ``clips`` held-out files in ``wavegen test`` (``test/*``) and every
``every_n_validations`` validations of ``fit`` (``val/*``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from arcore.errors import UsageError
from arcore.training.lightning_private import attached_datamodule
from wavegen.griffinlim import MelFrames
from wavegen.wavenet import WaveNet, decode_mu_law

BASELINES = {"_mel_griffin_lim": "mel", "_griffin_lim": "least-squares"}
"""The classical inversions scored beside a vocoder: the suffix of their metrics and their
:meth:`wavegen.griffinlim.MelFrames.resynthesize` method."""


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


def stoi_joined(references: Sequence[np.ndarray], degraded: Sequence[np.ndarray], rate: int) -> float:
    """STOI of every pair joined end to end, each pair scaled so that its reference has one RMS level."""
    scale = [0.1 / max(float(np.sqrt(np.mean(ref ** 2))), 1e-8) for ref in references]
    return stoi_score(np.concatenate([r * k for r, k in zip(references, scale)]),
                      np.concatenate([d * k for d, k in zip(degraded, scale)]), rate)


def log_mel_db(frames: WaveNet | MelFrames, audio: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrogram ``[n_mels, F]`` in dB of float audio ``[T]`` (a model's frames, or the layout given),
    computed on the CPU."""
    return 10 * MelFrames.of(frames).log_mel(audio.detach().float().cpu())


def mel_distance(frames: WaveNet | MelFrames, reference: torch.Tensor, degraded: torch.Tensor) -> float:
    """RMS difference (dB) of the log-mel spectrograms of two float clips ``[T]``, averaged over frames."""
    return float((log_mel_db(frames, reference) - log_mel_db(frames, degraded)).pow(2).mean(dim=0).sqrt().mean())


@dataclass
class Scores:
    """Mean PESQ (over the clips P.862 could score), STOI (all clips joined) and mean mel distance of one set of
    clips against their references, and how many clips there were."""

    pesq: float
    stoi: float
    mel_distance: float
    clips: int

    def as_metrics(self, stage: str, suffix: str = "") -> dict[str, float]:
        return {f"{stage}/pesq{suffix}": self.pesq, f"{stage}/stoi{suffix}": self.stoi,
                f"{stage}/mel_distance{suffix}": self.mel_distance}


def score(frames: WaveNet | MelFrames, references: Sequence[torch.Tensor], made: Sequence[torch.Tensor]) -> Scores:
    """The three scores of each float clip ``made`` against its float reference, at the rate of ``frames`` (a model
    or a layout), whose log-mel spectrograms the mel distance compares."""
    frames = MelFrames.of(frames)
    rate = frames.sample_rate
    refs = [r.detach().cpu().double().numpy() for r in references]
    degs = [d.detach().cpu().double().numpy()[: len(r)] for d, r in zip(made, refs)]
    pesqs = [pesq_score(r, d, rate) for r, d in zip(refs, degs)]
    distances = [mel_distance(frames, torch.from_numpy(r), torch.from_numpy(d)) for r, d in zip(refs, degs)]
    mean = (lambda v: float(np.nanmean(v)) if not all(map(math.isnan, v)) else math.nan)
    return Scores(mean(pesqs), stoi_joined(refs, degs, rate), mean(distances), len(distances))


def resynthesize_all(model: WaveNet, clips: Sequence[torch.Tensor], speakers: Sequence[int] | None,
                     batch_size: int, generator: torch.Generator, temperature: float = 1.0) -> list[torch.Tensor]:
    """Resynthesise every clip of codes, ``batch_size`` at a time, longest first (so a batch's clips are of similar
    lengths); returned in the order given, as codes."""
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


def baseline_audio(frames: WaveNet | MelFrames, decoded: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """The baselines of each mu-law-decoded clip ``[T]`` as float audio, by metric suffix: ``_mulaw``, the clips
    themselves (the round trip), and each of :data:`BASELINES` from the clip's own log-mel frames (of a model, or of
    the layout given: what the vocoder is given)."""
    layout = MelFrames.of(frames)
    clips = [clip.detach().float().cpu() for clip in decoded]
    made = {suffix: [layout.resynthesize(clip, method) for clip in clips] for suffix, method in BASELINES.items()}
    return {"_mulaw": clips, **made}


def baselines(frames: WaveNet | MelFrames, decoded: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
              stage: str) -> dict[str, float]:
    """``stage/*_mulaw``, ``stage/*_mel_griffin_lim`` and ``stage/*_griffin_lim``: the scores of
    :func:`baseline_audio` of the mu-law-decoded clips against the references."""
    return {name: value for suffix, made in baseline_audio(frames, decoded).items()
            for name, value in score(frames, references, made).as_metrics(stage, suffix).items()}


def decoded_clips(model: WaveNet, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Clips of the model's mu-law codes as float audio on the CPU: the round trip, whose frames the vocoder gets."""
    return [decode_mu_law(c.cpu().long(), model.num_classes) for c in clips]


def held_out_clips(files: Sequence[Any], frames: WaveNet | MelFrames, clips: int, seconds: float,
                   quantization: int = 256) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Codes, reference audio and speakers of the first ``clips`` files (``wavegen.data.Clip``) long enough for a
    mel frame of ``frames`` (a model or a layout), each cut to its first ``seconds``. Without a file's own audio (a
    data module that keeps codes only) the reference is the codes decoded (``quantization`` levels), and the mu-law
    baseline then scores as transparent."""
    layout = MelFrames.of(frames)
    shortest = layout.min_length
    longest = max(shortest, round(seconds * layout.sample_rate))
    chosen = [f for f in files if len(f.codes) >= shortest][:clips]
    codes = [f.codes[:longest].long() for f in chosen]
    references = [decode_mu_law(c, quantization) if getattr(f, "audio", None) is None
                  else f.audio[:longest].float() for f, c in zip(chosen, codes)]
    return codes, references, [f.speaker for f in chosen]


class VocoderQuality(pl.Callback):
    """PESQ, STOI and mel distance of a vocoder's resynthesis of the first ``clips`` held-out files (each cut to its
    first ``seconds``), drawn ``batch_size`` at a time through the cached sampler with a fixed ``seed`` and
    ``temperature``, and (``baselines``) of both Griffin-Lims and the mu-law round trip on the same clips
    (:func:`baselines`): logged as
    ``test/*`` at the end of ``wavegen test`` and as ``val/*`` at every ``every_n_validations``-th validation of
    ``fit`` (0: never). The held-out clips and the baselines' scores are computed once and kept. Nothing happens for
    a model without mel conditioning. Listed before :class:`arcore.training.callbacks.EMA` it scores the averaged
    weights, as validation does. Under DDP rank 0 scores alone."""

    def __init__(self, clips: int = 8, seconds: float = 2.0, every_n_validations: int = 0, batch_size: int = 8,
                 temperature: float = 1.0, seed: int = 0, baselines: bool = True) -> None:
        if clips < 1 or batch_size < 1 or every_n_validations < 0 or not (math.isfinite(seconds) and seconds > 0) \
                or not temperature > 0:
            raise UsageError(f"VocoderQuality needs clips >= 1, seconds > 0, batch_size >= 1, "
                             f"every_n_validations >= 0 and temperature > 0, got {clips}, {seconds}, {batch_size}, "
                             f"{every_n_validations} and {temperature}")
        self.clips, self.seconds, self.every = clips, seconds, every_n_validations
        self.batch_size, self.temperature, self.seed, self.baselines = batch_size, temperature, seed, baselines
        self.validations = 0
        self._held_out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], list[int]]] = {}
        self._baselines: dict[str, dict[str, float]] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every:
            return
        self.validations += 1
        if self.validations % self.every == 0:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if not isinstance(pl_module, WaveNet) or not pl_module.capabilities.resynthesis or not trainer.is_global_zero:
            return
        codes, references, speakers = self._clips(trainer, pl_module, split)
        if not codes:
            rank_zero_warn(f"VocoderQuality: no {split} files to resynthesise")
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        made = resynthesize_all(pl_module, codes, speakers, self.batch_size, generator, self.temperature)
        metrics = score(pl_module, references, decoded_clips(pl_module, made)).as_metrics(split)
        if self.baselines:
            if split not in self._baselines:
                self._baselines[split] = baselines(pl_module, decoded_clips(pl_module, codes), references, split)
            metrics.update(self._baselines[split])
        for name, value in metrics.items():
            pl_module.log(name, value, rank_zero_only=True)

    def _clips(self, trainer: pl.Trainer, pl_module: WaveNet, split: str
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """The held-out clips of ``split`` (:func:`held_out_clips`), read once."""
        if split not in self._held_out:
            splits = getattr(attached_datamodule(pl_module), "splits", None)
            if splits is None:
                raise UsageError("VocoderQuality reads the held-out files of wavegen's audio data module: "
                                 "run it with an AudioDataModule")
            self._held_out[split] = held_out_clips(splits()[split], pl_module, self.clips, self.seconds,
                                                   pl_module.num_classes)
        return self._held_out[split]

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = state_dict["validations"]
