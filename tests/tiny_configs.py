"""The trainer part of the tiny end-to-end configs the CLI tests write (CPU, a few steps, no logger)."""

from __future__ import annotations

from pathlib import Path


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
