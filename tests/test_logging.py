"""W&B logging: offline unless an account is configured, and sample grids logged during validation."""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from arcore.callbacks import SampleLogger
from arcore.cli import wandb_offline_unless_configured
from pixelgen.pixelcnn import PixelCNN


def test_wandb_is_offline_unless_an_account_or_mode_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    wandb_offline_unless_configured()
    assert os.environ["WANDB_MODE"] == "offline"

    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret-key\n")
    (tmp_path / ".netrc").chmod(0o600)
    wandb_offline_unless_configured()
    assert "WANDB_MODE" not in os.environ

    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb_offline_unless_configured()
    assert os.environ["WANDB_MODE"] == "disabled"


def test_sample_grids_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)
    data = TensorDataset(torch.randint(0, 2, (8, 1, 6, 6)), torch.zeros(8, dtype=torch.long))
    logger = WandbLogger(project="pixelgen-test", save_dir=str(tmp_path))
    trainer = pl.Trainer(max_steps=2, logger=logger, callbacks=[SampleLogger(num_samples=4)],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    run_dir = logger.experiment.dir
    logger.experiment.finish()
    logged = [f for _, _, files in os.walk(run_dir) for f in files if f.startswith("images")]
    assert logged, f"no sample grid in {run_dir}"
