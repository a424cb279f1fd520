"""A fourth model in one file: a tiny character-level causal convolution, written against the model contract.

Nothing in ``arcore``, ``pixelgen`` or ``wavegen`` knows this file. Installed as a distribution of its own
(``pip install docs/examples``: ``docs/examples/pyproject.toml`` declares it in the entry-point group
``pixelgen.models``), it is a ``pixelgen`` model: ``pixelgen fit``, ``test``, ``sample`` (beam search included) and
``export`` run it from its own config (``docs/examples/tiny_char.yaml``) and data module (:class:`TinyCharData`), and
``pixelgen.load`` reads its files; imported as a file, the same class trains, samples and scores from Python.
``tests/test_example_model.py`` does all of that. The contract, in the order this file meets it:

1. **The distribution.** A model is a subclass of :class:`arcore.training.module.AutoregressiveModule` that sets
   ``num_classes`` (how many values a code takes: here the characters of :data:`ALPHABET`) and ``event_shape`` (the
   shape of one sample's codes: here ``(length,)`` characters), and writes ``forward(codes, cond) -> logits
   [B, *event_shape, num_classes]``: the teacher-forced pass, where the logits at a position depend only on the codes
   before it. Here the input at position t is the code at t - 1 (a start symbol at 0), and every layer is a causal
   convolution of kernel 2 whose left padding is its dilation. The base class derives the rest from ``forward``:
   the exact ``log_prob``, bits per character, the training, validation and test steps, ``sample`` and
   ``beam_search`` through the shared engine (:mod:`arcore.sampling.engine`), and the checkpoint's identity.

2. **What the codes stand for.** ``render_samples(codes)`` returns a typed value of :mod:`arcore.files.media`: here
   :class:`arcore.files.media.Text`, one string per sample (``Images`` for pictures, ``Audio`` for clips), which the
   class declares as ``renders`` so that a command knows what it writes (``pixelgen sample --out lines.txt``). The
   sample logger (:class:`arcore.training.callbacks.SampleLogger`) writes and logs whatever kind it gets: text goes to
   ``samples/stepNNNNNNN.txt`` and to W&B or TensorBoard.

3. **What else it offers**, declared, never guessed from attribute names: ``capabilities``
   (:class:`arcore.contract.Capabilities`). Here ``completion=True``: a prime cut from a data batch
   (``prime_from_data``, by default the first ``length`` codes along ``prime_axis`` of the batch's codes, which is
   right for a model whose data are its codes) is a meaningful start of a sample, so the sample logger also logs
   validation lines completed from their first half beside the originals. A vocoder would declare ``resynthesis``,
   a model with a float16 sampling step ``half_weights``, an audio model its ``codes_per_second``.

4. **The cached path (optional).** Without ``sampler`` a model samples through the cache-free reference
   (:class:`arcore.sampling.cache.ForwardSampler`: the teacher-forced pass at every position). ``sampler(batch, cond,
   event_shape)`` returns a :class:`arcore.sampling.cache.Sampler` whose step costs the same at every position:
   :class:`TinyCharSampler` keeps, per layer, a ring buffer of the last ``dilation + 1`` inputs in a
   :class:`arcore.sampling.cache.StepCache`, reads the position from the device (``cache.position``) and the previous
   code by device index (:func:`arcore.sampling.cache.previous_code`), so the step can also be captured once and
   replayed (``sample(compile=True)``). The engine draws the same Gumbel noise at the same positions on every path, so
   the cached and cache-free paths give the same samples from the same seed.

5. **Data.** :class:`TinyCharData` is a :class:`arcore.training.data.CodesDataModule`: windows of a text file as
   batches ``(codes, labels)``; its config names it (``data: class_path: tiny_char_model.TinyCharData``), where a
   pixelgen config would use pixelgen's image data.

6. **Files.** The entry point ``pixelgen.models: tinychar = "tiny_char_model:TinyCharModel"`` adds the class to the
   registry of classes that pixelgen's checkpoints and weights files may name (:mod:`arcore.files.registry`, which
   checks the contract when it registers a class): installing the distribution is the consent, and loading a file
   builds only registered classes and imports nothing a file names. ``self.save_hyperparameters()`` records the
   settings, so a weights file rebuilds the model from them.

Use, installed::

    pip install docs/examples
    pixelgen fit --config docs/examples/tiny_char.yaml --data.path README.md
    pixelgen sample --ckpt runs/tiny_char/checkpoints/last.ckpt --num-samples 4 --out lines.txt
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from arcore.contract import Capabilities
from arcore.errors import UsageError, options
from arcore.files.media import Text
from arcore.sampling.cache import Sampler, StepCache, device_and_dtype, previous_code
from arcore.training.data import CodesDataModule, Split
from arcore.training.module import AutoregressiveModule

ALPHABET = "\n abcdefghijklmnopqrstuvwxyz.,'"
"""The characters a code stands for: code i is ``ALPHABET[i]``."""


def encode(text: str) -> torch.Tensor:
    """``text`` as codes ``[len(text)]``; one line naming the first character outside :data:`ALPHABET`."""
    unknown = next((c for c in text if c not in ALPHABET), None)
    if unknown is not None:
        raise UsageError(f"the character {unknown!r} is not in the model's alphabet {ALPHABET!r}")
    return torch.tensor([ALPHABET.index(c) for c in text], dtype=torch.long)


def decode(codes: torch.Tensor) -> str:
    """Codes ``[T]`` as the string they stand for."""
    return "".join(ALPHABET[i] for i in codes.tolist())


class TinyCharModel(AutoregressiveModule):
    """Lines of ``length`` characters: an embedding of the previous character, residual causal convolutions of
    kernel 2 with ``dilations``, and a linear read-out to :data:`ALPHABET`'s characters."""

    renders = Text
    capabilities = Capabilities(completion=True)

    def __init__(self, length: int = 32, channels: int = 32, dilations: Sequence[int] = (1, 2, 4, 8),
                 lr: float = 3e-3, warmup_steps: int = 10) -> None:
        super().__init__(lr=lr, warmup_steps=warmup_steps)
        if length < 1 or channels < 1 or not dilations or min(dilations) < 1:
            raise UsageError(f"length, channels and every dilation must be >= 1, got {length}, {channels} and "
                             f"{list(dilations)}")
        self.save_hyperparameters()
        self.num_classes = len(ALPHABET)
        self.event_shape = (length,)
        self.dilations = [int(d) for d in dilations]
        self.embed = nn.Embedding(self.num_classes + 1, channels)  # the extra row: the start symbol
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 2, dilation=d) for d in self.dilations)
        self.head = nn.Linear(channels, self.num_classes)

    def forward(self, codes: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Logits ``[B, length, characters]``; position t sees the codes before t only."""
        self.check_codes(codes)
        start = codes.new_full((codes.shape[0], 1), self.num_classes)
        x = self.embed(torch.cat([start, codes[:, :-1]], dim=1)).transpose(1, 2)  # [B, C, T]: input t is code t-1
        for conv, dilation in zip(self.convs, self.dilations):
            x = x + torch.tanh(conv(F.pad(x, (dilation, 0))))
        return self.head(x.transpose(1, 2))

    def render_samples(self, codes: torch.Tensor) -> Text:
        return Text(tuple(decode(row) for row in codes))

    def sampler(self, batch_size: int, cond: Any, event_shape: tuple[int, ...]) -> TinyCharSampler:
        return TinyCharSampler(self, batch_size)


class TinyCharSampler(Sampler):
    """The cached step: per layer i a ring ``ring{i} [dilation + 1, B, C]`` of its last inputs (input t in row
    ``t % (dilation + 1)``; rows not yet written are the zeros of the convolution's left padding)."""

    def __init__(self, model: TinyCharModel, batch_size: int) -> None:
        super().__init__(StepCache(batch_size, *device_and_dtype(model)))
        self.model = model
        channels = model.embed.weight.shape[1]
        self.rings = [self.cache.alloc(f"ring{i}", (d + 1, batch_size, channels), batch_dim=1)
                      for i, d in enumerate(model.dilations)]
        self.step = self._step

    def _step(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, characters]`` at ``cache.position``, from the rings and the previous code."""
        model, position = self.model, self.cache.position
        previous = torch.where(position > 0, previous_code(seq, position), model.num_classes)  # start symbol at 0
        x = model.embed(previous)  # [B, C]
        for ring, conv, dilation in zip(self.rings, model.convs, model.dilations):
            size = dilation + 1
            ring.index_copy_(0, position.remainder(size).view(1), x[None])
            past = ring.index_select(0, (position - dilation).remainder(size).view(1))[0]  # the input at t - dilation
            x = x + torch.tanh(F.linear(past, conv.weight[:, :, 0], conv.bias) + F.linear(x, conv.weight[:, :, 1]))
        return model.head(x)


class TinyCharData(CodesDataModule):
    """Windows of ``length`` characters of the text file ``path`` (lower-cased; characters outside
    :data:`ALPHABET` become spaces), ``stride`` characters apart: the first ``1 - val_fraction - test_fraction`` of
    the text trains, the next part validates, the last tests."""

    resume_settings = ("length", "stride")

    def __init__(self, path: str, length: int = 32, stride: int = 3, batch_size: int = 16,
                 val_fraction: float = 0.1, test_fraction: float = 0.1) -> None:
        super().__init__()
        if length < 1 or stride < 1 or batch_size < 1 or not 0 < val_fraction + test_fraction < 1:
            raise UsageError(f"length, stride and batch_size must be >= 1 and the val and test fractions leave some "
                             f"text to train on, got {length}, {stride}, {batch_size}, {val_fraction}, {test_fraction}")
        self.save_hyperparameters()
        self.path, self.length, self.stride, self.batch_size = Path(path), length, stride, batch_size
        self.fractions = (val_fraction, test_fraction)

    def split(self, split: Split) -> torch.Tensor:
        """The windows of one split as codes ``[N, length]``; one line when the file is missing or too short."""
        if not self.path.is_file():
            raise UsageError(f"path {self.path} is not a file: name a text file to train on", options("data", "path"))
        text = "".join(c if c in ALPHABET else " " for c in self.path.read_text(errors="replace").lower())
        val, test = (round(len(text) * f) for f in self.fractions)
        parts = {"train": text[: len(text) - val - test], "val": text[len(text) - val - test: len(text) - test],
                 "test": text[len(text) - test:]}
        if min(map(len, parts.values())) < self.length:
            raise UsageError(f"path {self.path}: each split needs at least {self.length} characters, the file "
                             f"gives {', '.join(f'{k} {len(v)}' for k, v in parts.items())}", options("data", "path"))
        return encode(parts[split]).unfold(0, self.length, self.stride).to(torch.uint8)

    def _loader(self, split: Split) -> DataLoader:
        codes = self.split(split)
        return DataLoader(TensorDataset(codes, torch.zeros(len(codes), dtype=torch.uint8)),
                          batch_size=self.batch_size, shuffle=split == "train")
