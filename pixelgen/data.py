"""Image data for the pixel models: MNIST, CIFAR-10 (torchvision) or any ImageFolder tree, as integer codes.

Images are held in memory as one uint8 tensor per split (MNIST is 47 MB, CIFAR-10 150 MB), so batches cost a
slice and a shift, not a PIL decode. Codes are the 8-bit pixel values reduced to ``bits`` bits, or {0, 1} when
``binarize`` maps pixels to {0, 1}: ``bernoulli`` draws each pixel once, with probability intensity/255, from a
fixed seed (how the binarised MNIST of the PixelCNN papers' NLL in nats was made, so the numbers compare);
``threshold`` cuts at 128 (an easier, less noisy data set: lower NLLs that do not compare with the papers').
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from arcore.errors import UsageError, is_out_of_memory, options
from arcore.files.atomic import nothing_left_on_failure
from arcore.training.data import CodesDataModule, EpochShuffle, Mirrored, ResumableLoader, Split, scan, warn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


BINARIZATIONS = ("threshold", "bernoulli")
OPTIONS = {**options("data", "dataset", "root", "bits", "binarize", "channels", "batch_size", "val_size",
                     "image_size", "num_workers", "hflip"), "None": "null"}
"""How the command line spells :class:`ImageDataModule`'s arguments, for its errors (``--data.bits``)."""


def quantise(pixels: torch.Tensor, bits: int = 8, binarize: str | None = None, seed: int = 0) -> torch.Tensor:
    """8-bit pixels (uint8) to integer codes in [0, 2**bits) (still uint8), or {0, 1} when binarised.

    ``bernoulli`` is deterministic given ``seed``: the same images always get the same binarisation.
    """
    if binarize == "threshold":
        return (pixels >= 128).to(torch.uint8)
    if binarize == "bernoulli":
        noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(seed))
        return (noise * 255 < pixels).to(torch.uint8)
    return pixels >> (8 - bits)


def dequantise(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer codes to intensities in [0, 1] (each code maps to the middle of its bin's range, ends exact)."""
    return codes.float() / max(levels - 1, 1)


def _offline_error(dataset: str, root: Path, exc: BaseException) -> UsageError:
    return UsageError(
        f"could not load {dataset} from {root} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        f"; without network access, put the files there or point root at a copy", OPTIONS)


def _torchvision_split(dataset: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[dataset]
    try:
        with nothing_left_on_failure(root / "MNIST" if dataset == "mnist" else root):  # no empty MNIST/raw/
            ds = cls(str(root), train=train, download=download)
    except Exception as exc:  # noqa: BLE001 - torchvision raises several types for a failed download
        raise _offline_error(dataset, root, exc) from None
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def _read_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    """One image file as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), resized to ``size`` x ``size`` if given,
    turned as its EXIF orientation says (a camera stores a portrait photo sideways, with a tag saying so). Pixels are
    read in their own range: 16-bit grey scaled to 8 bits (65535 becomes 255) and 32-bit float grey (TIFF mode
    ``F``) from 0..1, where Pillow's own conversion clips both at 255 (a float image would be black); values outside
    those ranges are a :class:`UsageError` naming them."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        img: Image.Image = ImageOps.exif_transpose(opened)
        if img.mode == "F":  # 32-bit float grey, 0 black to 1 white
            values = np.asarray(img, dtype=np.float64)
            if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
                raise UsageError(f"its 32-bit float pixels run from {values.min():g} to {values.max():g}, outside "
                                 f"0..1 (0 black, 1 white): scale it to 0..1, or save it with 8-bit pixels")
            img = Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
        elif img.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" as Pillow opens 16-bit PNGs)
            wide = np.asarray(img, dtype=np.int64)
            if wide.min() < 0 or wide.max() > 65535:
                raise UsageError(f"its {img.mode} pixels run from {wide.min()} to {wide.max()}, outside 0..65535: save "
                                 f"it with 8- or 16-bit pixels")
            img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.array(img)


def _folder_split(folder: Path, classes: list[str], channels: int, size: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every readable image under ``folder/<class>/`` (recursive) with its class index; unreadable files are
    skipped with one warning line each."""
    files = [(label, path) for label, name in enumerate(classes) for path in sorted((folder / name).rglob("*"))
             if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if size is not None:
        need = len(files) * (1 if channels == 1 else 3) * size * size
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have // 2:
            raise UsageError(f"image_size {size}: the {len(files):,} images under {folder} would take "
                             f"{need / 2 ** 30:,.1f} GiB at {size}x{size}, more than half this machine's "
                             f"{have / 2 ** 30:,.0f} GiB of memory: choose a smaller image_size", OPTIONS)
    images, labels = [], []
    for label, path in scan(files, f"reading {folder.name} images"):
        try:
            array = _read_image(path, channels, size)
        except UsageError as exc:
            warn("pixelgen", f"skipping {path}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt or truncated files
            if is_out_of_memory(exc):  # the file is fine: the data set would silently lose it
                raise UsageError(f"{path}: reading it ran out of memory ({type(exc).__name__}): free memory for "
                                 f"this run, or make the image smaller") from None
            warn("pixelgen", f"skipping {path}: not a readable image ({type(exc).__name__})")
            continue
        images.append(torch.from_numpy(array))
        labels.append(label)
    if not images:
        found = f"{len(files)} files, none readable" if files else "none found"
        raise UsageError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}/<class>/ "
                         f"({found}): put PNG or JPEG images there in ImageFolder layout")
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise UsageError(f"images under {folder} differ in size ({sorted(shapes)[:3]}...): set image_size", OPTIONS)
    stacked = torch.stack(images)
    stacked = stacked.unsqueeze(1) if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)
    return stacked.contiguous(), torch.tensor(labels, dtype=torch.long)


MAX_IMAGE_SIZE = 1024
"""The largest ``image_size`` accepted: beyond it a typo (20000) would spend minutes and gigabytes resizing."""


class ImageDataModule(CodesDataModule):
    """MNIST, CIFAR-10 or an ImageFolder tree (``root/train/<class>/*.png``, optional ``root/test``) as codes.

    Batches are ``(codes long [B, C, H, W], labels long [B])``. The validation set is the last ``val_size``
    training images (a fixed split, so validation bits/dim are comparable across runs). ``hflip`` mirrors each
    training image left to right with probability 1/2 (drawn from the run's seed and the epoch, so a resumed run
    sees the same images): twice the distinct images for natural photographs, wrong for digits or text.

    Args:
        dataset: ``mnist``, ``cifar10`` (torchvision's) or ``folder`` (an ImageFolder tree under ``root``).
        root: where the data lives (or is downloaded to).
        bits: grey or colour levels kept, 2 ** bits (1 to 8).
        binarize: ``threshold`` (at 128) or ``bernoulli`` (each pixel drawn once from its intensity, the papers'
            binarised MNIST), or None.
        batch_size: images per batch.
        val_size: the last training images held out for validation.
        num_workers: data-loader processes.
        download: fetch MNIST or CIFAR-10 when missing.
        channels: 1 or 3: a folder's images as grey or RGB.
        image_size: a folder's images resized to this square size (None: as they are).
        hflip: mirror each training image with probability 1/2 (natural photographs).
    """

    resume_settings = ("dataset", "bits", "binarize", "channels", "image_size")

    def __init__(self, dataset: Literal["mnist", "cifar10", "folder"] = "mnist", root: str = "./data",
                 bits: int = 8, binarize: Literal["threshold", "bernoulli"] | None = None, batch_size: int = 64,
                 val_size: int = 5000,
                 num_workers: int = 0, download: bool = True, channels: int = 3,
                 image_size: int | None = None, hflip: bool = False) -> None:
        super().__init__()
        if dataset not in ("mnist", "cifar10", "folder"):
            raise UsageError(f"dataset must be mnist, cifar10 or folder, got {dataset!r}", OPTIONS)
        if not 1 <= bits <= 8:
            raise UsageError(f"bits must be between 1 and 8, got {bits}", OPTIONS)
        if binarize not in (None, *BINARIZATIONS):
            raise UsageError(f"binarize must be threshold, bernoulli or None, got {binarize!r}", OPTIONS)
        if channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {channels}", OPTIONS)
        if image_size is not None and image_size > MAX_IMAGE_SIZE:
            raise UsageError(f"image_size {image_size} is larger than {MAX_IMAGE_SIZE}: an autoregressive model "
                             f"draws an image one code at a time ({3 * MAX_IMAGE_SIZE ** 2:,} codes at "
                             f"{MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE} in colour); choose a smaller image_size", OPTIONS)
        if batch_size < 1 or val_size < 1 or num_workers < 0 or (image_size is not None and image_size < 1):
            raise UsageError(f"batch_size, val_size and image_size must be >= 1 and num_workers >= 0, got "
                             f"{batch_size}, {val_size}, {image_size} and {num_workers}", OPTIONS)
        self.save_hyperparameters()
        self.dataset, self.root, self.bits, self.binarize = dataset, Path(root), bits, binarize
        self.batch_size, self.val_size, self.num_workers, self.download = batch_size, val_size, num_workers, download
        self.channels, self.image_size, self.hflip = channels, image_size, hflip
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def settings_from_checkpoint(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        settings = super().settings_from_checkpoint(hparams)
        if isinstance(settings.get("binarize"), bool):  # from when binarize was a flag (True: cut at 128)
            settings["binarize"] = "threshold" if settings["binarize"] else None
        return settings

    @property
    def levels(self) -> int:
        """How many values a code takes."""
        return 2 if self.binarize is not None else 2 ** self.bits

    @property
    def num_labels(self) -> int:
        return len(self._classes()) if self.dataset == "folder" else 10

    def _classes(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir():
            raise UsageError(f"a folder of images needs {train}/<class>/<images> (ImageFolder layout); "
                             f"set root to the folder that holds train/ (and test/)", options("data", "root"))
        return sorted(p.name for p in train.iterdir() if p.is_dir())

    def _raw(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [N, C, H, W] and labels of the official train or test split."""
        key = "train" if train else "test"
        if key not in self._splits:
            if self.dataset == "folder":
                folder = self.root / key
                if not folder.is_dir():
                    raise UsageError(f"{folder} does not exist: a folder of images needs train/ and test/ "
                                     f"under root", options("data", "root"))
                classes = self._classes()
                unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
                if unknown:
                    raise UsageError(f"{folder} has class folders that {self.root / 'train'} lacks ("
                                     f"{', '.join(unknown[:5])}): a model trained on train/ cannot score them; "
                                     f"give both splits the same classes", OPTIONS)
                self._splits[key] = _folder_split(folder, classes, self.channels, self.image_size)
            else:
                self._splits[key] = _torchvision_split(self.dataset, self.root, train, self.download)
        return self._splits[key]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        if self.dataset == "mnist":
            return (1, 28, 28)
        if self.dataset == "cifar10":
            return (3, 32, 32)
        return tuple(self._raw(train=True)[0].shape[1:])  # type: ignore[return-value]

    def prepare_data(self) -> None:
        if self.dataset != "folder":
            for train in (True, False):
                self._raw(train)

    def split(self, name: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (uint8) and labels of one split (binarisation noise is fixed per official split).

        Args:
            name: ``train``, ``val`` or ``test``.
        """
        if name == "test":
            images, labels = self._raw(train=False)
            return quantise(images, self.bits, self.binarize, seed=1), labels
        images, labels = self._raw(train=True)
        codes = quantise(images, self.bits, self.binarize, seed=0)
        val = min(self.val_size, len(images) // 5)
        part = slice(len(images) - val, None) if name == "val" else slice(0, len(images) - val)
        return codes[part], labels[part]

    def train_pixels(self) -> torch.Tensor:
        """The raw 8-bit training images [N, C, H, W] (e.g. to fit a colour palette)."""
        images, _ = self._raw(train=True)
        return images[: len(images) - min(self.val_size, len(images) // 5)]

    def _loader(self, name: Split) -> DataLoader:
        dataset: TensorDataset | Mirrored = TensorDataset(*self.split(name))
        train = name == "train"
        mirror = train and self.hflip
        sampler = EpochShuffle(len(dataset), mirror=mirror) if train else None
        if mirror:
            dataset = Mirrored(dataset)
        return ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                          drop_last=train and len(dataset) > self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
