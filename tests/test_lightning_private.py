"""The private Lightning names this project relies on (arcore.training.lightning_private): the installed Lightning is
the pinned one and still has every one of them, and no other module of the project reaches into Lightning's
privates."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import WandbLogger

from arcore.training import lightning_private
from arcore.training.lightning_private import TOUCHED, attached_datamodule, attached_trainer, average_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_lightning_is_the_pinned_one():
    pinned = re.search(r'"pytorch-lightning==([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert version("pytorch-lightning") == pinned == lightning_private.PINNED


def test_every_private_name_used_still_exists():
    instances = {LightningCLI: LightningCLI, ModelCheckpoint: ModelCheckpoint(), WeightAveraging: WeightAveraging(),
                 pl.LightningModule: pl.LightningModule(), WandbLogger: WandbLogger(offline=True)}  # set in __init__
    missing = [f"{cls.__name__}.{name}" for cls, names in TOUCHED.items() for name in names
               if not hasattr(instances[cls], name)]
    assert missing == []


def test_no_other_module_uses_a_private_lightning_name():
    names = {name for names in TOUCHED.values() for name in names}
    pattern = re.compile(r"[.\"'](" + "|".join(sorted(names)) + r")\b")  # an attribute, or its name in getattr
    users = [str(path.relative_to(ROOT)) for folder in ("arcore", "pixelgen", "wavegen")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name != "lightning_private.py" and pattern.search(path.read_text())]
    assert users == []


def test_a_module_knows_its_trainer_only_inside_a_run(tmp_path):
    seen = []

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append((attached_trainer(self), attached_datamodule(self)))
            return (self.w - 1).square().sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Probe()
    assert attached_trainer(model) is None and attached_datamodule(model) is None
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(torch.zeros(2, 1)))
    assert seen == [(trainer, None)]  # attached, given loaders rather than a data module
    assert average_model(WeightAveraging()) is None  # no average outside fit
