"""Base data module: batches of integer codes with labels, stored compactly and widened on the device."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

Split = Literal["train", "val", "test"]


class CodesDataModule(pl.LightningDataModule):
    """Serves ``(codes, labels)`` batches for the three splits; a subclass builds one split's loader.

    Codes travel as uint8/int16 (a quarter or less of int64's memory and copy cost) and become ``long`` only once
    the batch is on the model's device.
    """

    def _loader(self, split: Split) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        codes, labels = batch
        return codes.long(), labels.long()
