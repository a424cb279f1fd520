"""Lightning callbacks shared by both packages: samples logged during validation, a guard against NaN/inf, EMA,
per-example likelihoods from ``predict``."""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter, WeightAveraging
from pytorch_lightning.utilities import rank_zero_warn

from arcore.errors import UsageError
from arcore.files import make_parents, unique_temporary
from arcore.media import save_image_grid, save_wav, spectrogram_image


class SampleLogger(pl.Callback):
    """Draw samples at the end of validation and log them to W&B or TensorBoard when one is the logger; the files
    are always written to ``<log_dir>/samples/``.

    Images are logged as one grid of samples and, for image models, one grid of completions: the first
    ``num_completions`` validation images completed from their top half, each beside its original (the real image
    on the left). Audio is logged as clips plus a spectrogram image; for a vocoder (a model whose ``vocoder`` is
    true, conditioned on log-mel frames) the first ``num_completions`` validation clips are resynthesised from their
    own frames instead, and each is logged beside its resynthesis (clips captioned ``original_i`` and
    ``resynthesis_i``, and both spectrograms, the original above). Sampling uses the cached engine and a fixed
    seed, so successive epochs show the same noise through a better model; ``compile`` samples through captured
    steps (see :func:`arcore.engine.sample`). Under DDP rank 0 samples and logs alone.
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
        self._real: tuple[torch.Tensor, torch.Tensor] | None = None  # validation images or clips, and labels

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero and self.num_completions \
                and (hasattr(pl_module, "image_shape") or _is_vocoder(pl_module)):
            real, labels = batch
            self._real = real[: self.num_completions].clone(), labels[: self.num_completions].clone()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"  # every rank: a collective in DDP
        if not trainer.is_global_zero:
            return
        prefix = out_dir / f"step{trainer.global_step:07d}"
        if _is_vocoder(pl_module):
            if self._real is not None:
                self._resynthesis(trainer, pl_module, *self._real, prefix)
                self._real = None
            return
        n = self.num_samples
        cond = None
        if getattr(pl_module, "num_labels", 0):
            cond = torch.arange(n, device=pl_module.device) % pl_module.num_labels
        rate = getattr(pl_module, "sample_rate", None)
        length = int(self.audio_seconds * rate) if rate else None
        codes = pl_module.sample(n, cond=cond, length=length, temperature=self.temperature, compile=self.compile,
                                 generator=self._generator(pl_module))
        media = pl_module.render_samples(codes)
        pictures: dict[str, Path] = {}
        clips = None
        if "images" in media:
            pictures["samples/images"] = save_image_grid(media["images"], f"{prefix}.png")
        if "audio" in media:
            clips = media["audio"][:4]
            for i, clip in enumerate(clips):
                save_wav(clip, rate, f"{prefix}_{i}.wav")
            pictures["samples/spectrogram"] = spectrogram_image(clips[0], rate, f"{prefix}_spec.png")
        if self._real is not None:
            pictures["samples/completions"] = self._completions(pl_module, *self._real, f"{prefix}_completions.png")
            self._real = None
        _publish(trainer, pictures, clips, rate)

    def _resynthesis(self, trainer: pl.Trainer, pl_module: pl.LightningModule, codes: torch.Tensor,
                     labels: torch.Tensor, prefix: Path) -> None:
        """Resynthesise validation clips ``codes [N, T]`` from their own mel frames; save and log each original
        beside its resynthesis, with the spectrograms of the first pair."""
        made = pl_module.resynthesize(list(codes), labels if pl_module.num_labels else None,
                                      temperature=self.temperature, compile=self.compile,
                                      generator=self._generator(pl_module))
        rate = pl_module.sample_rate
        pairs = torch.stack([pl_module.render_samples(codes)["audio"],
                             pl_module.render_samples(torch.stack(made))["audio"]], dim=1)  # [N, 2, T]
        captions = []
        for i, pair in enumerate(pairs):
            for kind, clip in zip(("original", "resynthesis"), pair):
                save_wav(clip, rate, f"{prefix}_{kind}_{i}.wav")
                captions.append(f"{kind}_{i}")
        picture = spectrogram_image(pairs[0], rate, f"{prefix}_resynthesis_spec.png")
        _publish(trainer, {"samples/resynthesis_spectrogram": picture}, pairs.flatten(0, 1), rate, captions)

    def _generator(self, pl_module: pl.LightningModule) -> torch.Generator:
        return torch.Generator(device=pl_module.device).manual_seed(self.seed)

    def _completions(self, pl_module: pl.LightningModule, images: torch.Tensor, labels: torch.Tensor,
                     path: str) -> Path:
        """Complete ``images`` from their top half and save the pairs (original, completion) as one grid."""
        height = images.shape[2]
        cond = labels if pl_module.num_labels else None
        done = pl_module.sample(len(images), cond=cond, prime=image_prime(pl_module, images, height // 2),
                                temperature=self.temperature, compile=self.compile,
                                generator=self._generator(pl_module))
        real = pl_module.render_samples(image_prime(pl_module, images, height))["images"]
        pairs = torch.stack([real, pl_module.render_samples(done)["images"]], dim=1).flatten(0, 1)
        return save_image_grid(pairs, path, nrow=2 * math.ceil(math.sqrt(len(images) / 2)))


def _is_vocoder(model: pl.LightningModule) -> bool:
    return bool(getattr(model, "vocoder", False))


def image_prime(model: pl.LightningModule, images: torch.Tensor, rows: int) -> torch.Tensor:
    """The model's codes for the top ``rows`` rows of ``images`` as the data gives them (models over palette tokens
    convert with their ``prime_from_images``); ``rows`` = the image height gives the codes of the whole image."""
    if hasattr(model, "prime_from_images"):
        return model.prime_from_images(images, rows)
    return images[:, :, :rows]


def _publish(trainer: pl.Trainer, pictures: dict[str, Path], clips: torch.Tensor | None,
             sample_rate: int | None, captions: list[str] | None = None) -> None:
    """Log saved pictures (PNG files by key) and audio clips ``[N, T]`` (named by ``captions``, else numbered) to
    every W&B or TensorBoard logger."""
    names = captions or [str(i) for i in range(len(clips) if clips is not None else 0)]
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logged: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in pictures.items()}
            if clips is not None:
                logged["samples/audio"] = [wandb.Audio(clip.float().cpu().numpy(), sample_rate=sample_rate,
                                                       caption=name) for clip, name in zip(clips, names)]
            logger.experiment.log({**logged, "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            for key, path in pictures.items():
                with Image.open(path) as picture:
                    pixels = np.asarray(picture.convert("RGB"))
                logger.experiment.add_image(key, pixels, step, dataformats="HWC")
            for name, clip in zip(names, clips if clips is not None else []):
                logger.experiment.add_audio(f"samples/audio/{name}", clip.float().cpu().clamp(-1, 1)[None], step,
                                            sample_rate=sample_rate)


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
        if self._average_model is not None:  # fit; elsewhere the checkpoint's (averaged) weights are used as they are
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
        if self._average_model is not None:
            for average, current in zip(self._average_model.module.buffers(), pl_module.buffers()):
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
        self._target: Path | None = None
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
