"""The ``sample`` command of both tools, written once: checks, device, loading, chunks, timing, Ctrl-C.

``pixelgen sample`` and ``wavegen sample`` each add only what differs (labels, image primes, beams and grids;
speakers, audio primes, mel files and WAVs). Their options are parsed first, without torch
(:func:`arcore.cli.launch.sample_parser`), then::

    check_sample_args(args)                                  # the shared checks, one line each, before any work
    run = SampleRun("wavegen", args, WaveNet)                # device, threads, checkpoint, options, seeded generator
    chunks = run.draw(lambda first, count: run.model.sample(count, ..., options=run.options,
                                                            generator=run.generator), n)
    ... write the files ...
    run.end(chunks, written)                                 # Ctrl-C: say what was kept, exit 130
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, TypeVar

import torch

from arcore.cli.chunks import Chunks, Draw, draw_in_chunks, interrupted_exit
from arcore.cli.launch import sample_options
from arcore.contract import Model
from arcore.errors import UsageError
from arcore.files.atomic import check_output
from arcore.files.registry import load_checkpoint
from arcore.sampling.decoding import SampleOptions
from arcore.training.module import AutoregressiveModule


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return device


def output_path(path: str | Path, suffix: str) -> Path:
    """Check an output file name before any work (:func:`arcore.files.atomic.check_output`); creates nothing."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UsageError(f"--out must name a {suffix} file, got {path}")
    return check_output(out)


def check_fits_in_memory(num_samples: int, codes_per_sample: int, bytes_per_code: int = 8) -> None:
    """Refuse a request that could not fit in this machine's memory: its codes (int64, all kept until written) and
    whatever else the draw holds per code (``bytes_per_code``: a vocoder's conditioning, one row per sample)."""
    need = num_samples * codes_per_sample * bytes_per_code
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise UsageError(f"{num_samples:,} samples of {codes_per_sample:,} codes need {need / 2 ** 30:,.1f} GiB, more "
                         f"than this machine's {have / 2 ** 30:,.0f} GiB of memory: ask for fewer or shorter samples")


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: the same seed, the same samples."""
    return torch.Generator(device=device).manual_seed(seed)


def load_for_sampling(ckpt: str, package: str, device: torch.device) -> Model:
    """The model of ``ckpt`` (a file of the tool ``package``) on ``device``, in eval mode."""
    model = load_checkpoint(ckpt, package, map_location=device)
    model.to(device).eval()
    return model


def check_sample_args(args: argparse.Namespace) -> None:
    """Refuse, in one line before any work, what every ``sample`` command refuses: counts, seed, the sampling
    options (:class:`arcore.sampling.decoding.SampleOptions`) and flags that contradict each other (``--greedy`` with a
    setting it would override), the thread count."""
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.seed < 2 ** 63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    decoding = sample_options(args).decoding
    overridden = [f"{flag} {value}" for flag, value, default in (
        ("--temperature", decoding.temperature, 1.0), ("--top-k", decoding.top_k, None),
        ("--top-p", decoding.top_p, None)) if value != default]
    if decoding.greedy and overridden:
        raise UsageError(f"--greedy takes the most likely code at each step, so {' and '.join(overridden)} would have "
                         f"no effect: drop one or the other")
    cores = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cores:
        raise UsageError(f"--threads must be >= 1 and at most {cores} (this machine's cores), got {args.threads}")


M = TypeVar("M", bound=AutoregressiveModule)


class SampleRun(Generic[M]):
    """One ``sample`` command after its checks: the device (and CPU threads), the model of ``--ckpt`` (refused in
    one line unless it is a ``kind``), the :attr:`options` the command line sets, the generator seeded with
    ``--seed``, and the timing of the draws.

    Args:
        tool: the command line tool, e.g. ``pixelgen``.
        args: the parsed options of its ``sample`` command.
        kind: the model class the command draws from (``AutoregressiveModule``: any of the tool's models).
    """

    def __init__(self, tool: str, args: argparse.Namespace, kind: type[M]) -> None:
        self.tool, self.args = tool, args
        self.options: SampleOptions = sample_options(args, progress=True)
        self.device = pick_device(args.device)
        if self.device.type == "cpu" and args.threads is not None:
            torch.set_num_threads(args.threads)
        model = load_for_sampling(args.ckpt, tool, self.device)
        if not isinstance(model, kind):
            raise UsageError(f"{args.ckpt} holds a {type(model).__name__}, not a {kind.__name__}")
        self.model: M = model
        self.generator = seeded_generator(args.seed, self.device)
        self.seconds = 0.0

    def draw(self, draw: Draw, total: int) -> Chunks:
        """``draw(first, count)`` over ``total`` samples in chunks of ``--batch-size``
        (:func:`arcore.cli.chunks.draw_in_chunks`: the generator carried across chunks, halved on out-of-memory,
        stopped by Ctrl-C with what was finished), timed into :attr:`seconds`; a warning line when the decoding
        left the samples empty (:meth:`warn_if_empty`)."""
        start = time.perf_counter()
        chunks = draw_in_chunks(draw, total, self.args.batch_size, tool=self.tool, generator=self.generator)
        self.seconds += time.perf_counter() - start
        if chunks.samples is not None:
            self.warn_if_empty(chunks.samples)
        return chunks

    def warn_if_empty(self, samples: torch.Tensor) -> None:
        """Say, in one line on stderr, when ``--top-k`` / ``--top-p`` cut codes off and every one of ``samples``
        came out empty, one code throughout (a black image, silence): on a model with few levels a nucleus keeps
        only the most likely code wherever that code holds the given mass, which can be every step."""
        decoding, classes = self.options.decoding, self.model.num_classes
        if not samples[0].numel() or not decoding.truncates(classes):
            return
        flat = samples.flatten(1)
        if bool((flat == flat[:, :1]).all()):
            cut = f"--top-p {decoding.top_p}" if decoding.top_p is not None else f"--top-k {decoding.top_k}"
            print(f"{self.tool}: warning: all {len(samples)} samples hold a single code throughout: {cut} keeps only "
                  f"the most likely of this model's {classes} codes wherever it is likely enough; drop or raise it "
                  f"(a --temperature below 1 sharpens without cutting codes off)", file=sys.stderr)

    def end(self, chunks: Chunks, written: Sequence[Path]) -> None:
        """After the finished samples are written: an interrupted draw says what was kept where and exits 130."""
        if chunks.interrupted:
            raise interrupted_exit(self.tool, chunks, written)
