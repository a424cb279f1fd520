"""The small-data recipe's options: dropout in the PixelCNN's gated layers and horizontal flips of training images.
Dropout acts in training only (sampling and likelihoods stay exact and cached = cache-free); flips are drawn from
the run's seed and the epoch, so a resumed run sees the same images."""

from __future__ import annotations

import pytest
import torch

from arcore.errors import UsageError
from arcore.training.data import EpochShuffle, Mirrored
from pixelgen.data import ImageDataModule
from tests.contract import causality_violations, sample_both_ways
from tests.test_pixelcnn import random_codes, tiny
from tests.test_pixelgen_cli import make_folder_dataset


def test_dropout_acts_in_training_only():
    model = tiny(dropout=0.5)
    codes = random_codes(model)
    model.train()
    assert not torch.equal(model(codes), model(codes))  # a fresh mask each pass
    model.eval()
    assert torch.equal(model(codes), model(codes))
    reference = tiny()  # the same weights without dropout
    assert torch.equal(model(codes), reference.eval()(codes))


def test_dropout_keeps_causality_and_exact_cached_sampling():
    model = tiny(dropout=0.3)
    assert causality_violations(model, random_codes(model)) == []
    cached, naive = sample_both_ways(model, 2)
    assert torch.equal(cached, naive)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_out_of_range_is_one_line(dropout):
    with pytest.raises(UsageError, match=r"dropout must be in \[0, 1\)"):
        tiny(dropout=dropout)


def test_mirror_coins_are_fair_and_fixed_by_seed_and_epoch():
    shuffle = EpochShuffle(1000, seed=3, mirror=True)
    first = list(shuffle)
    assert sorted(i % 1000 for i in first) == list(range(1000))  # every image once an epoch
    assert 400 < sum(i >= 1000 for i in first) < 600  # about half of them mirrored
    assert list(EpochShuffle(1000, seed=3, mirror=True)) == first  # a resumed run: the same draws
    shuffle.set_epoch(1)
    assert list(shuffle) != first
    plain = EpochShuffle(1000, seed=3)
    assert [i % 1000 for i in first] == list(plain)  # the same order as without mirroring


def test_mirrored_item_is_the_image_flipped_left_to_right():
    codes = torch.arange(2 * 3 * 4 * 5).view(2, 3, 4, 5)
    items = Mirrored(torch.utils.data.TensorDataset(codes, torch.tensor([7, 8])))
    assert len(items) == 2
    assert torch.equal(items[1][0], codes[1]) and items[1][1] == 8
    assert torch.equal(items[3][0], codes[1][:, :, torch.arange(4, -1, -1)]) and items[3][1] == 8


def test_hflip_data_module_mirrors_training_images_only(tmp_path):
    root = make_folder_dataset(tmp_path / "images", per_class=12)
    batches = {}
    for hflip in (False, True):
        data = ImageDataModule(dataset="folder", root=str(root), bits=8, batch_size=4, val_size=4, hflip=hflip)
        batches[hflip] = (torch.cat([codes for codes, _ in data.train_dataloader()]),
                          torch.cat([codes for codes, _ in data.val_dataloader()]))
    plain, flipped = batches[False][0], batches[True][0]
    mirrored = [not torch.equal(a, b) for a, b in zip(plain, flipped)]
    assert 0 < sum(mirrored) < len(mirrored)
    assert all(torch.equal(a.flip(-1), b) for a, b, m in zip(plain, flipped, mirrored) if m)
    assert torch.equal(batches[False][1], batches[True][1])  # validation is never flipped
