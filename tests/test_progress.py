"""The training progress bar counts the job's steps: its total is ``max_steps`` across epochs (the time left is the
job's), a resumed run's bar starts where the run resumed, and the command line's runs use it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from arcore.training.callbacks import JobProgressBar
from pixelgen.pixelcnn import PixelCNN


class Seen(pl.Callback):
    """Records the training bar's (n, total, initial) after every batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *_: object) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        self.seen.append((bar.n, bar.total, bar.initial))


def fit(steps: int, root, ckpt_path: str | None = None) -> list[tuple[int, int, int]]:
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 6, 6), levels=2, hidden=4, layers=2, head=4)
    data = TensorDataset(torch.randint(0, 2, (12, 1, 6, 6)), torch.zeros(12, dtype=torch.long))
    seen = Seen()
    trainer = pl.Trainer(max_steps=steps, max_epochs=100, logger=False, limit_val_batches=0,
                         enable_model_summary=False, default_root_dir=root,
                         callbacks=[JobProgressBar(), seen, ModelCheckpoint(dirpath=root, save_last=True)])
    trainer.fit(model, DataLoader(data, batch_size=4), ckpt_path=ckpt_path)  # 3 batches an epoch
    return seen.seen


def test_bar_counts_the_jobs_steps_across_epochs(tmp_path):
    seen = fit(7, tmp_path)
    assert [n for n, _, _ in seen] == list(range(1, 8))  # 7 steps over 3 epochs, never reset at an epoch's start
    assert {total for _, total, _ in seen} == {7}


def test_resumed_bar_starts_at_the_resumed_step(tmp_path):
    fit(3, tmp_path)
    seen = fit(8, tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [n for n, _, _ in seen] == list(range(4, 9))
    assert {(total, initial) for _, total, initial in seen} == {(8, 3)}  # the rate counts this run's steps only


def test_fit_from_the_command_line_shows_the_jobs_steps(tmp_path, capsys):
    """4 steps of a 5-batch epoch: the bar reads 4/4 (Lightning's own would read 4/5)."""
    from pixelgen.cli import main
    from tests.test_pixelgen_cli import make_folder_dataset, tiny_config

    config = tiny_config(tmp_path, make_folder_dataset(tmp_path / "images"))
    assert main(["fit", "--config", str(config), "--trainer.enable_progress_bar", "true", "--threads", "1"]) == 0
    shown = capsys.readouterr().out  # Lightning's bars write to stdout
    assert "4/4 [" in shown and "/5 [" not in shown
