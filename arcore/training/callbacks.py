"""Lightning callbacks shared by both packages: samples logged during validation, a guard against NaN/inf, EMA,
per-example likelihoods from ``predict``, a progress bar that counts the job's steps."""

from __future__ import annotations

import html
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter, TQDMProgressBar, WeightAveraging
from pytorch_lightning.utilities import rank_zero_warn

from arcore.contract import resynthesizer
from arcore.errors import UsageError
from arcore.files.atomic import make_parents, unique_temporary
from arcore.files.media import Audio, Images, Media, interleave, save_image_grid, save_text, save_wav, spectrogram_image
from arcore.training.lightning_private import average_model
from arcore.training.module import AutoregressiveModule


class SampleLogger(pl.Callback):
    """Draw samples at the end of validation and log them to W&B or TensorBoard when one is the logger; the files
    are always written to ``<log_dir>/samples/``.

    What is logged follows what the model renders (:mod:`arcore.files.media`) and declares
    (:class:`arcore.training.module.Capabilities`): images as one grid, audio as clips plus a spectrogram, text as a
    file. For a model declaring ``completion``, the first ``num_completions`` validation items are also completed from
    their first half (:meth:`~arcore.training.module.AutoregressiveModule.prime_from_data`: the top rows of an image),
    each beside its original (the real item first). A model declaring ``resynthesis`` (a vocoder, conditioned on log-mel
    frames) resynthesises those items from their own features instead of drawing unconditional samples, and each is
    logged beside its resynthesis (clips captioned ``original_i`` and ``resynthesis_i``, and both spectrograms, the
    original above). Audio samples last ``audio_seconds``. Sampling uses the cached engine and a fixed seed, so
    successive epochs show the same noise through a better model; ``compile`` samples through captured steps (see
    :func:`arcore.sampling.engine.sample`). Under DDP rank 0 samples and logs alone.
    Listed before :class:`EMA` it samples the averaged weights (EMA swaps the raw ones back at the same hook).
    """

    def __init__(self, num_samples: int = 16, every_n_epochs: int = 1, temperature: float = 1.0,
                 audio_seconds: float = 1.0, seed: int = 0, num_completions: int = 8, compile: bool = False) -> None:
        self.num_samples = num_samples
        self.compile = compile
        self.every_n_epochs = every_n_epochs
        self.temperature = temperature
        self.audio_seconds = audio_seconds
        self.seed = seed
        self.num_completions = num_completions
        self._real: tuple[torch.Tensor, torch.Tensor] | None = None  # validation items and labels

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        capabilities = autoregressive(pl_module).capabilities
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero and self.num_completions \
                and (capabilities.completion or capabilities.resynthesis):
            real, labels = batch
            self._real = real[: self.num_completions].clone(), labels[: self.num_completions].clone()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"  # every rank: a collective in DDP
        if not trainer.is_global_zero:
            return
        prefix = out_dir / f"step{trainer.global_step:07d}"
        logged = Logged()
        model = autoregressive(pl_module)
        if not model.capabilities.resynthesis:  # a vocoder draws nothing without its input
            logged.add(model.render_samples(self._samples(model)), prefix)
        if self._real is not None:
            pairs, kind = self._completions(model, *self._real)
            logged.add(pairs, prefix, kind)
            self._real = None
        logged.publish(trainer)

    def _samples(self, pl_module: AutoregressiveModule) -> torch.Tensor:
        """``num_samples`` codes, labelled in turn for a conditional model, ``audio_seconds`` long for audio."""
        n, rate = self.num_samples, pl_module.capabilities.codes_per_second
        cond = torch.arange(n, device=pl_module.device) % pl_module.num_labels if pl_module.num_labels else None
        return pl_module.sample(n, cond=cond, length=int(self.audio_seconds * rate) if rate else None,
                                temperature=self.temperature, compile=self.compile,
                                generator=self._generator(pl_module))

    def _completions(self, pl_module: AutoregressiveModule, data: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[Media, str]:
        """The originals and their completions from the first half (or resynthesis), interleaved, and the word
        for the second of each pair."""
        cond = labels if pl_module.num_labels else None
        whole = pl_module.prime_from_data(data, data.shape[pl_module.prime_axis])
        sampling: dict[str, Any] = {"temperature": self.temperature, "compile": self.compile,
                                    "generator": self._generator(pl_module)}
        if pl_module.capabilities.resynthesis:
            made = torch.stack(resynthesizer(pl_module).resynthesize(list(whole), cond, **sampling))
            kind = "resynthesis"
        else:
            prime = pl_module.prime_from_data(data, data.shape[pl_module.prime_axis] // 2)
            made, kind = pl_module.sample(len(data), cond=cond, prime=prime, **sampling), "completion"
        return interleave(pl_module.render_samples(whole), pl_module.render_samples(made)), kind

    def _generator(self, pl_module: pl.LightningModule) -> torch.Generator:
        return torch.Generator(device=pl_module.device).manual_seed(self.seed)



def autoregressive(pl_module: pl.LightningModule) -> AutoregressiveModule:
    """``pl_module`` as the model these callbacks draw from, or one line saying it is not one."""
    if not isinstance(pl_module, AutoregressiveModule):
        raise UsageError(f"the sample logger draws from a model of arcore (an AutoregressiveModule), not a "
                         f"{type(pl_module).__name__}")
    return pl_module

class Logged:
    """The files one validation's samples were written to, and what goes to the loggers (:meth:`publish`)."""

    def __init__(self) -> None:
        self.pictures: dict[str, Path] = {}
        self.texts: dict[str, str] = {}
        self.clips: list[tuple[str, torch.Tensor]] = []
        self.sample_rate: int | None = None

    def add(self, media: Media, prefix: Path, kind: str | None = None) -> None:
        """Write ``media`` beside ``prefix``: samples when ``kind`` is None, else pairs (original, ``kind``)."""
        if isinstance(media, Images):
            key, path = ("images", f"{prefix}.png") if kind is None else ("completions", f"{prefix}_completions.png")
            nrow = None if kind is None else 2 * math.ceil(math.sqrt(len(media) / 4))
            self.pictures[f"samples/{key}"] = save_image_grid(media.pixels, path, nrow=nrow)
        elif isinstance(media, Audio):
            self.sample_rate = media.sample_rate
            if kind is None:  # the first four samples, and the first one's spectrogram
                names, clips, spectrogram = [str(i) for i in range(min(4, len(media)))], media.clips[:4], "spec"
            else:  # every pair, and the first pair's spectrograms, the original above
                names = [f"{which}_{i}" for i in range(len(media) // 2) for which in ("original", kind)]
                clips, spectrogram = media.clips, f"{kind}_spec"
            for name, clip in zip(names, clips):
                save_wav(clip, media.sample_rate, f"{prefix}_{name}.wav")
                self.clips.append((name, clip))
            key = "samples/spectrogram" if kind is None else f"samples/{kind}_spectrogram"
            self.pictures[key] = spectrogram_image(clips[0] if kind is None else clips[:2], media.sample_rate,
                                                   f"{prefix}_{spectrogram}.png")
        else:
            key = "text" if kind is None else "completions"
            written = save_text(media, f"{prefix}.txt" if kind is None else f"{prefix}_completions.txt")
            self.texts[f"samples/{key}"] = written.read_text()

    def publish(self, trainer: pl.Trainer) -> None:
        """Log the pictures, clips and texts to every W&B or TensorBoard logger of ``trainer``."""
        if self.pictures or self.clips or self.texts:
            _publish(trainer, self.pictures, self.clips, self.sample_rate, self.texts)


def _publish(trainer: pl.Trainer, pictures: dict[str, Path], clips: list[tuple[str, torch.Tensor]],
             sample_rate: int | None, texts: dict[str, str]) -> None:
    """Log saved pictures (PNG files by key), named audio clips ``[T]`` and texts (by key) to every W&B or
    TensorBoard logger."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logged: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in pictures.items()}
            if clips:
                logged["samples/audio"] = [wandb.Audio(clip.float().cpu().numpy(), sample_rate=sample_rate,
                                                       caption=name) for name, clip in clips]
            logged.update({key: wandb.Html(f"<pre>{html.escape(text)}</pre>") for key, text in texts.items()})
            logger.experiment.log({**logged, "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            for key, path in pictures.items():
                with Image.open(path) as picture:
                    pixels = np.asarray(picture.convert("RGB"))
                logger.experiment.add_image(key, pixels, step, dataformats="HWC")
            for name, clip in clips:
                logger.experiment.add_audio(f"samples/audio/{name}", clip.float().cpu().clamp(-1, 1)[None], step,
                                            sample_rate=sample_rate)
            for key, text in texts.items():
                logger.experiment.add_text(key, f"```\n{text}\n```", step)


class NonFiniteGuard(pl.Callback):
    """Keep NaN and infinity out of the weights: before every optimiser step the gradients' global norm is checked
    (one host sync per step) and, when it is not finite (a non-finite loss gives non-finite gradients too), either
    training stops with a message naming the step (``action="stop"``) or that step's update is skipped and counted
    (``action="skip"``: gradients dropped, so AdamW leaves every weight and moment untouched), stopping after
    ``max_skips`` skipped steps. The weights and the last checkpoint stay as they were before the bad step."""

    def __init__(self, action: str = "stop", max_skips: int = 20) -> None:
        if action not in ("stop", "skip"):
            raise UsageError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_skips = max_skips
        self.skipped = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params or trainer.precision == "16-mixed":  # float16 AMP: the gradient scaler skips these itself
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        if bool(torch.isfinite(norm)):
            return
        step = trainer.global_step
        if self.action == "stop" or self.skipped >= self.max_skips:
            why = "" if self.action == "stop" else f" after {self.skipped} skipped steps"
            raise UsageError(f"training stopped at step {step}: the loss or its gradient is not finite{why}; "
                             f"the weights were not updated (lower the learning rate, clip gradients, or use "
                             f"NonFiniteGuard action=skip), and the last checkpoint resumes the run")
        for p in params:
            p.grad = None
        self.skipped += 1
        rank_zero_warn(f"step {step}: non-finite gradient, update skipped ({self.skipped} so far)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]


class EMA(WeightAveraging):
    """Exponential moving average of the weights (the Polyak averaging of PixelCNN++) on Lightning's
    ``WeightAveraging``: validation and every checkpoint's ``state_dict`` hold the averaged weights, so ``test`` and
    ``sample`` use them, and ``fit`` resumes both the raw weights and the average. The decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run is not dragged back to its initial
    weights. Buffers (such as an image GPT's palette) are copied, not averaged."""

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise UsageError(f"EMA decay must lie in (0, 1), got {decay}")
        super().__init__(use_buffers=False, avg_fn=partial(_ema_update, decay=decay))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if average_model(self) is not None:  # fit; elsewhere the checkpoint's (averaged) weights are used as they are
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._copy_buffers(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._copy_buffers(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def _copy_buffers(self, pl_module: pl.LightningModule) -> None:
        """Give the average the model's current buffers. Lightning copies them only at each update, but a buffer can
        change before the first one: an image GPT fits its palette in ``setup``, after this callback took its copy,
        and validation swaps buffers in with the weights (the sanity check would see no palette)."""
        average_copy = average_model(self)
        if average_copy is not None:
            for average, current in zip(average_copy.buffers(), pl_module.buffers()):
                average.copy_(current)


def _ema_update(average: torch.Tensor, current: torch.Tensor, updates: torch.Tensor, decay: float) -> torch.Tensor:
    """One EMA step with the warm-up decay, computed on the device (no host sync)."""
    n = updates.to(average.dtype)
    return average.lerp(current, 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay))


class LikelihoodWriter(BasePredictionWriter):
    """Write ``predict``'s per-example likelihoods as CSV rows ``index,nll_nats,bits_per_dim`` while they are
    computed, and print the mean at the end. ``path`` defaults to ``<default_root_dir>/likelihoods.csv``; with
    several processes each writes its own ``.rankN`` file. Rows go to a temporary file beside it, renamed over it
    when the pass is complete, so an earlier file stays whole until then; a pass cut short (Ctrl-C, an error) keeps
    the rows written so far in ``<stem>.partial.csv``."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._file: Any = None
        self._target = Path()  # where the rows go, set when a pass starts
        self._sums = [0.0, 0]

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = Path(self.path or Path(trainer.default_root_dir) / "likelihoods.csv")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        make_parents(path)
        self._target = path
        self._file = unique_temporary(path).open("x")
        self._file.write("index,nll_nats,bits_per_dim\n")
        self._sums = [0.0, 0]

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        nll, bpd = prediction["nll"].tolist(), prediction["bpd"].tolist()
        indices = batch_indices if batch_indices is not None else range(len(nll))
        self._file.writelines(f"{i},{n:.6f},{b:.6f}\n" for i, n, b in zip(indices, nll, bpd))
        self._file.flush()
        self._sums[0] += sum(bpd)
        self._sums[1] += len(bpd)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(self._target)
        if self._sums[1]:
            print(f"{self._sums[1]} examples, mean {self._sums[0] / self._sums[1]:.4f} bits/dim: {self._target}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            partial = self._target.with_name(f"{self._target.stem}.partial{self._target.suffix}")
            self._close(partial)
            print(f"{self._sums[1]} examples scored before the pass stopped: {partial}")

    def _close(self, path: Path) -> None:
        """Flush the rows to disk and move them to ``path``."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._file.name, path)
        self._file = None


class JobProgressBar(TQDMProgressBar):
    """Lightning's progress bar, whose training bar counts the job's optimiser steps (``max_steps``) across epochs
    instead of the current epoch's batches, so its time left is the job's. A resumed run's bar starts at the step it
    resumed from and estimates its rate from the steps this run made. Without ``max_steps`` it counts epochs' batches
    as Lightning's does."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.max_steps > 0:  # after a resumed run's restore: global_step is where it resumed
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step
            bar.refresh()

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.max_steps <= 0:
            super().on_train_epoch_start(trainer)
        else:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if trainer.max_steps <= 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if self._should_update(trainer.global_step, bar.total) and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_steps <= 0:
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
