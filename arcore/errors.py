"""The one exception type for bad user input; the command-line tools print it as a single line."""

from __future__ import annotations

import torch


class UsageError(ValueError):
    """Something the user gave (a shape, a file, an option) is wrong; the message says what and how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (at most 200 characters), or its type's name."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def check_labels(cond: torch.Tensor | None, num_labels: int, batch_size: int) -> torch.Tensor | None:
    """Validate class/speaker labels ``[B]`` for a model with ``num_labels`` classes (0: unconditional)."""
    if num_labels == 0:
        if cond is not None:
            raise UsageError("this model was trained without class labels: do not pass a label "
                             "(train with model.num_labels > 0 for a class-conditional model)")
        return None
    if cond is None:
        raise UsageError(f"this model is class-conditional: pass one label in [0, {num_labels}) per sample")
    if cond.dim() != 1 or cond.shape[0] != batch_size or cond.dtype.is_floating_point:
        raise UsageError(f"labels must be an integer tensor of shape [{batch_size}], got "
                         f"{cond.dtype} {list(cond.shape)}")
    if batch_size and not _tracing() and (int(cond.min()) < 0 or int(cond.max()) >= num_labels):
        raise UsageError(f"labels must lie in [0, {num_labels}), got values from {int(cond.min())} "
                         f"to {int(cond.max())}")
    return cond


def _tracing() -> bool:
    """Whether this runs inside torch.compile or a CUDA graph capture, where values cannot be read back to the host.
    The samplers check their labels eagerly when they build their state; inside a trace the range check is skipped
    (a label out of range then fails in the embedding lookup instead)."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
