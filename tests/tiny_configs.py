"""Tiny end-to-end configs the CLI tests write (CPU, a few steps, no logger) and untrained checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


def trainer_yaml(run_dir: Path, *, max_steps: int = 4, callbacks: str = "") -> str:
    """YAML for ``seed_everything``, ``ckpt_path: last`` and a trainer that validates every 2 steps and keeps
    ``last.ckpt`` in ``run_dir/checkpoints``; ``callbacks`` are more list items, indented by four spaces."""
    return f"""
seed_everything: 0
ckpt_path: last
trainer:
  accelerator: cpu
  max_steps: {max_steps}
  max_epochs: 50
  val_check_interval: 2
  check_val_every_n_epoch: null
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {run_dir}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {run_dir}/checkpoints, save_last: true, monitor: val/bpd}}{callbacks}
"""


def igpt_config(folder: Path, data_root: Path, *, palette_size: int = 4, palette_cache: Path) -> Path:
    """``folder/igpt.yaml``: a one-block ImageGPT over a ``palette_size``-colour palette (5 k-means steps, cached in
    ``palette_cache``) on the 3x8x8 8-bit images of an ImageFolder tree, trained as in :func:`trainer_yaml`."""
    config = folder / "igpt.yaml"
    config.write_text(trainer_yaml(folder / "run") + f"""
model:
  class_path: pixelgen.igpt.ImageGPT
  init_args: {{image_shape: [3, 8, 8], palette_size: {palette_size}, width: 8, layers: 1, heads: 2,
               palette_steps: 5, palette_cache: {palette_cache}}}
data:
  dataset: folder
  root: {data_root}
  batch_size: 4
  val_size: 4
""")
    return config


def untrained_checkpoint(model: pl.LightningModule, path: Path) -> Path:
    """Save ``model`` as it is (no training) in a checkpoint that ``pixelgen sample`` / ``wavegen sample`` load."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path
