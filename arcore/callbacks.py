"""Lightning callbacks shared by both packages: samples logged during validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from arcore.media import save_image_grid, save_wav, spectrogram_image


class SampleLogger(pl.Callback):
    """Draw samples at the end of validation and log them: to W&B when it is the logger, else to files.

    Images are logged as one grid, audio as clips plus a spectrogram image. Sampling uses the cached engine and a
    fixed seed, so successive epochs show the same noise through a better model.
    """

    def __init__(self, num_samples: int = 16, every_n_epochs: int = 1, temperature: float = 1.0,
                 audio_seconds: float = 1.0, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.temperature = temperature
        self.audio_seconds = audio_seconds
        self.seed = seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        n = self.num_samples
        cond = None
        if getattr(pl_module, "num_labels", 0):
            cond = torch.arange(n, device=pl_module.device) % pl_module.num_labels
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        length = None
        if getattr(pl_module, "sample_rate", None):
            length = int(self.audio_seconds * pl_module.sample_rate)
        codes = pl_module.sample(n, cond=cond, length=length, temperature=self.temperature, generator=generator)
        self._log(trainer, pl_module.render_samples(codes), getattr(pl_module, "sample_rate", None))

    def _log(self, trainer: pl.Trainer, media: dict[str, Any], sample_rate: int | None) -> None:
        step = trainer.global_step
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        wandb_run = _wandb_run(trainer)
        if "images" in media:
            path = save_image_grid(media["images"], out_dir / f"step{step:07d}.png")
            if wandb_run is not None:
                import wandb

                wandb_run.log({"samples/images": wandb.Image(str(path)), "trainer/global_step": step})
        if "audio" in media:
            audio = media["audio"]
            paths = [save_wav(clip, sample_rate, out_dir / f"step{step:07d}_{i}.wav") for i, clip in
                     enumerate(audio[:4])]
            spec = spectrogram_image(audio[0], sample_rate, out_dir / f"step{step:07d}_spec.png")
            if wandb_run is not None:
                import wandb

                wandb_run.log({"samples/audio": [wandb.Audio(str(p), sample_rate=sample_rate) for p in paths],
                               "samples/spectrogram": wandb.Image(str(spec)), "trainer/global_step": step})


def _wandb_run(trainer: pl.Trainer) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None
