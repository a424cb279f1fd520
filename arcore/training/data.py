"""Base data module: batches of integer codes with labels, stored compactly and widened on the device."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

Split = Literal["train", "val", "test"]
T = TypeVar("T")


@rank_zero_only
def warn(tool: str, message: str) -> None:
    """One ``<tool>: warning: ...`` line on stderr (once, on the first process), clear of any progress bar."""
    from tqdm import tqdm

    tqdm.write(f"{tool}: warning: {message}", file=sys.stderr)


def machine_memory() -> int:
    """This machine's memory in bytes: the bound a size is checked against before it is allocated."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def scan(items: Sequence[T], desc: str) -> Iterable[T]:
    """``items`` with a progress bar on stderr for a long data scan; no bar when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", disable=None, leave=False, mininterval=0.5, file=sys.stderr)


def run_seed() -> int:
    """The run's ``seed_everything`` value (0 when none was set): the root of every data-order seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


class EpochShuffle(Sampler[int]):
    """A random order of ``size`` indices drawn from ``(seed, epoch)`` alone, so a run resumed from a checkpoint sees
    the same batches as an uninterrupted one. The seed defaults to :func:`run_seed`; Lightning calls
    :meth:`set_epoch` at the start of every epoch (and forwards it through its distributed sampler). With ``mirror``
    each index ``i`` comes as ``i`` or ``i + size`` by a fair coin drawn from the same generator: the second names
    the mirrored example (:class:`Mirrored`), so augmentation too is the same in a resumed run."""

    def __init__(self, size: int, seed: int | None = None, mirror: bool = False) -> None:
        self.size = size
        self.seed = run_seed() if seed is None else seed
        self.epoch = 0
        self.mirror = mirror

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        if self.mirror:
            order += self.size * torch.randint(0, 2, (self.size,), generator=generator)
        return iter(order.tolist())


class Mirrored(Dataset):
    """``(codes [C, H, W], label)`` items of a dataset, where index ``i + len(items)`` is item ``i`` mirrored left to
    right (a horizontal flip: the augmentation of natural images; digits and text are not mirror-symmetric)."""

    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = len(self)
        codes, label = self.items[index % size]
        return (codes.flip(-1) if index >= size else codes), label


class EpochDraws(EpochShuffle):
    """Indices ``epoch * size + i`` for ``i < size``, for a dataset that draws a fresh random example from the index
    it is given (random crops): every epoch draws new examples, each reproducible from its index alone."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.size, (self.epoch + 1) * self.size))


class ResumableLoader(DataLoader):
    """A DataLoader whose pass can start some batches in: ``batches_done``, when set, is asked at the first fetch of
    every pass how many batches of it are already done, and those are drawn and dropped. A run resumed from a
    checkpoint taken in the middle of an epoch so continues with the batch after the last one trained on (with a
    sampler drawn from ``(seed, epoch)`` alone, the batches of an uninterrupted run), not the epoch's first."""

    batches_done: Callable[[], int] | None = None

    def __iter__(self) -> Iterator:  # type: ignore[override]  # a generator when resumed, as Lightning only iterates
        iterator = super().__iter__()
        return iterator if self.batches_done is None else self._resumed(iterator, self.batches_done)

    def state_dict(self) -> dict:
        """Nothing to save: the position comes back from Lightning's own batch counter. Having this pair marks the
        loader as resumable to Lightning (no mid-epoch warning)."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """See :meth:`state_dict`."""

    def _resumed(self, iterator: Iterator, batches_done: Callable[[], int]) -> Iterator:
        for _ in range(batches_done()):  # asked only now: Lightning restores its loops after iter()
            next(iterator)
        yield from iterator


class CodesDataModule(pl.LightningDataModule):
    """Serves ``(codes, labels)`` batches for the three splits; a subclass builds one split's loader.

    Codes travel as uint8/int16 (a quarter or less of int64's memory and copy cost) and become ``long`` only once
    the batch is on the model's device.
    """

    resume_settings: ClassVar[tuple[str, ...]] = ()
    """The settings that change what a model learns (dataset, quantisation, crop sizes): ``fit`` refuses to resume
    a checkpoint trained with other values (see ``arcore.cli.resume.check_resume_matches_config``)."""

    @classmethod
    def settings_from_checkpoint(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """The data settings a checkpoint recorded (``datamodule_hyper_parameters``), as this version names them.

        Args:
            hparams: a checkpoint's ``datamodule_hyper_parameters``.
        """
        return {key: value for key, value in hparams.items() if not key.startswith("_")}

    def _loader(self, split: Split) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train")
        if isinstance(loader, ResumableLoader):
            loader.batches_done = self._batches_done_this_epoch
        return loader

    def _batches_done_this_epoch(self) -> int:
        """Training batches of the current epoch already done when its first batch is fetched: 0, except in a
        ``fit`` resumed mid-epoch, where Lightning has just restored its batch counter (pinned Lightning version)."""
        trainer = self.trainer  # None outside a Trainer
        if trainer is None or not trainer.training:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """``predict`` scores the test split example by example (see ``arcore.training.callbacks.LikelihoodWriter``)."""
        return self._loader("test")

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        codes, labels = batch
        return codes.long(), labels.long()
