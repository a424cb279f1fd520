"""The ``sample`` command of both tools, written once: options, checks, device, loading, chunks, timing, Ctrl-C.

``pixelgen sample`` and ``wavegen sample`` each add only what differs (labels, image primes, beams and grids;
speakers, audio primes, mel files and WAVs)::

    parser = sample_parser("wavegen", "Generate audio ...", out_help=..., num_samples=1, batch_size=16, threads=1)
    parser.add_argument("--speaker", ...)                   # the tool's own options
    args = parse_sample_args(parser, argv)                  # the shared checks, one line each, before any work
    run = SampleRun("wavegen", args, WaveNet)               # device, threads, checkpoint, seeded generator
    chunks = run.draw(lambda first, count: run.model.sample(count, ..., **run.decoding()), n)
    ... write the files ...
    run.end(chunks, written)                                # Ctrl-C: say what was kept, exit 130
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from arcore.chunks import Chunks, Draw, draw_in_chunks, interrupted_exit
from arcore.cli import check_sampling_options, load_for_sampling, pick_device, seeded_generator
from arcore.errors import UsageError
from arcore.module import AutoregressiveModule


def sample_parser(tool: str, description: str, *, out_help: str, num_samples: int, batch_size: int,
                  threads: int | None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the options every ``sample`` command takes; the tool adds its own to it.
    ``threads`` is the ``--threads`` default (None: torch's, all cores)."""
    p = argparse.ArgumentParser(prog=f"{tool} sample", description=description)
    p.add_argument("--ckpt", required=True,
                   help=f"a checkpoint written by `{tool} fit` (e.g. runs/NAME/checkpoints/last.ckpt) or a "
                        f".safetensors weights file (`{tool} export`, or one of pretrained/)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--num-samples", type=int, default=num_samples)
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="drawn at once; more are drawn in chunks (halved on out-of-memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; below 1 sharpens, above 1 flattens")
    p.add_argument("--greedy", action="store_true", help="the most likely code at every step instead of a draw")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    p.add_argument("--no-cache", action="store_true", help="the cache-free reference sampler (slow)")
    p.add_argument("--compile", action="store_true",
                   help="capture the sampling step once and replay it (CUDA graphs on a GPU, torch.compile on "
                        "the CPU; same samples, faster on a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=threads,
                   help="CPU threads" + (" (default: all cores)" if threads is None else
                                         f" (default {threads}: a step's tiny products lose more to thread sync "
                                         f"than they gain)"))
    return p


def parse_sample_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` and refuse, in one line before any work, what every ``sample`` command refuses: counts,
    seed, decoding options, thread count."""
    args = parser.parse_args(list(argv))
    check_sampling_options(args)
    cores = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cores:
        raise UsageError(f"--threads must be >= 1 and at most {cores} (this machine's cores), got {args.threads}")
    return args


class SampleRun:
    """One ``sample`` command after its checks: the device (and CPU threads), the model of ``--ckpt`` (refused in
    one line unless it is a ``kind``), the generator seeded with ``--seed``, and the timing of the draws."""

    def __init__(self, tool: str, args: argparse.Namespace, kind: type[AutoregressiveModule] = AutoregressiveModule):
        self.tool, self.args = tool, args
        self.device = pick_device(args.device)
        if self.device.type == "cpu" and args.threads is not None:
            torch.set_num_threads(args.threads)
        self.model = load_for_sampling(args.ckpt, tool, self.device)
        if not isinstance(self.model, kind):
            raise UsageError(f"{args.ckpt} holds a {type(self.model).__name__}, not a {kind.__name__}")
        self.generator = seeded_generator(args.seed, self.device)
        self.seconds = 0.0

    def decoding(self) -> dict[str, Any]:
        """The keyword arguments of ``model.sample`` that the shared options set."""
        a = self.args
        return {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "greedy": a.greedy,
                "use_cache": not a.no_cache, "compile": a.compile, "generator": self.generator, "progress": True}

    def draw(self, draw: Draw, total: int) -> Chunks:
        """``draw(first, count)`` over ``total`` samples in chunks of ``--batch-size``
        (:func:`arcore.chunks.draw_in_chunks`: the generator carried across chunks, halved on out-of-memory,
        stopped by Ctrl-C with what was finished), timed into :attr:`seconds`."""
        start = time.perf_counter()
        chunks = draw_in_chunks(draw, total, self.args.batch_size, tool=self.tool, generator=self.generator)
        self.seconds += time.perf_counter() - start
        return chunks

    def end(self, chunks: Chunks, written: Sequence[Path]) -> None:
        """After the finished samples are written: an interrupted draw says what was kept where and exits 130."""
        if chunks.interrupted:
            raise interrupted_exit(self.tool, chunks, written)
