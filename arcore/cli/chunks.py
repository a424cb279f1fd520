"""Draw many samples in chunks: one generator across chunks, smaller chunks on out-of-memory, keep work on Ctrl-C.

Both ``pixelgen sample`` and ``wavegen sample`` draw ``--num-samples`` through :func:`draw_in_chunks`, so a large
request neither needs memory for all samples at once nor loses the finished ones to an interrupt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from arcore.errors import UsageError, is_out_of_memory

Draw = Callable[[int, int], torch.Tensor]

@dataclass
class Chunks:
    """What :func:`draw_in_chunks` finished: the samples ``[done, ...]`` (None if none) and whether it was cut short."""

    samples: torch.Tensor | None
    requested: int
    interrupted: bool

    @property
    def done(self) -> int:
        return 0 if self.samples is None else len(self.samples)


def draw_in_chunks(draw: Draw, total: int, batch_size: int, *, tool: str,
                   generator: torch.Generator | None = None) -> Chunks:
    """Call ``draw(start, count)`` for consecutive chunks of at most ``batch_size`` of ``total`` samples.

    ``draw`` returns the samples ``start .. start + count - 1`` and should draw its randomness from ``generator``,
    which continues from chunk to chunk (same seed and batch size: same samples). A chunk that runs out of memory
    is retried at half the size from the generator state it started with, with a one-line note on stderr. A
    KeyboardInterrupt stops the loop and returns the chunks finished so far, marked ``interrupted``.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    parts: list[torch.Tensor] = []
    done, size = 0, batch_size
    try:
        while done < total:
            count = min(size, total - done)
            state = generator.get_state() if generator is not None else None
            try:
                parts.append(draw(done, count))
            except Exception as exc:  # only running out of memory is handled here; the rest propagates
                if not is_out_of_memory(exc):
                    raise
                if count == 1:
                    raise UsageError(f"out of memory drawing even one sample ({type(exc).__name__}): use a smaller "
                                     f"model, a shorter sample or another --device") from None
                size = (count + 1) // 2
                print(f"{tool}: note: out of memory drawing {count} samples at once; retrying {size} at a time",
                      file=sys.stderr)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if generator is not None and state is not None:
                    generator.set_state(state)
                continue
            done += count
    except KeyboardInterrupt:
        return Chunks(torch.cat(parts) if parts else None, total, interrupted=True)
    return Chunks(torch.cat(parts), total, interrupted=False)


def rows(x: torch.Tensor | None, start: int, count: int) -> torch.Tensor | None:
    """Rows ``start .. start + count - 1`` of a per-sample tensor (a label, a prime), or None for None."""
    return None if x is None else x[start: start + count]


def interrupted_exit(tool: str, chunks: Chunks, written: Sequence[Path]) -> SystemExit:
    """Print one line saying how many of the requested samples were kept in which files ``written`` and return
    the ``SystemExit(130)`` (the shell's status after Ctrl-C) for the caller to raise."""
    if not written:
        where = "; nothing written"
    else:
        where = f", written to {written[0]}" + (f" .. {written[-1].name}" if len(written) > 1 else "")
    print(f"{tool}: interrupted: kept {chunks.done} of {chunks.requested} samples{where}", file=sys.stderr)
    return SystemExit(130)
