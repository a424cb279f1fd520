"""The one exception type for bad user input; the command-line tools print it as a single line.

A library error speaks of the Python arguments to change (``temperature must be > 0 (use greedy=True ...)``,
``bits must be between 1 and 8``). The same check reaches a command-line user with the tool's flags instead
(``--temperature``, ``--greedy``, ``--data.bits``): the error carries, in ``options``, how the command line spells
each argument its message names, and the tools print :meth:`UsageError.for_command_line`. So every check is
written once, wherever it runs (a constructor, a model's ``setup`` inside Lightning, the engine).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the command line's front, before torch loads (see arcore.cli.launch)
    import torch

GROUPS = {"": "--", "data": "--data.", "model": "--model.init_args."}
"""Where the command line puts a Python argument: a ``sample`` option, a data-module or a model setting."""


class UsageError(ValueError):
    """Something the user gave (a shape, a file, an option) is wrong; the message says what and how to fix it, in
    Python terms. ``options`` maps phrases of the message (argument names, ``name=``, ``greedy=True``) to their
    command-line wording (see :func:`options`).

    Args:
        message: what is wrong and how to fix it, in Python terms.
        options: phrases of the message to their command-line wording (:func:`options`).
    """

    def __init__(self, message: str, options: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.options = dict(options or {})

    def spelled(self, options: Mapping[str, str]) -> UsageError:
        """This error with ``options`` replacing the command-line wording of those phrases: for a command that spells
        a setting its own way (``sample`` sets the data's ``root`` with ``--data-root``, not ``--data.root``).

        Args:
            options: phrases to their wording in this command.
        """
        return UsageError(str(self), {**self.options, **options})

    def for_command_line(self) -> str:
        """The message with every phrase of :attr:`options` in its command-line wording (a name only where it
        stands as a word of its own, not inside a path)."""
        text = str(self)
        if not self.options:
            return text
        pattern = "|".join((r"(?<![\w./-])" if _wordy(p[:1]) else "") + re.escape(p)
                           + (r"(?![\w/])" if _wordy(p[-1:]) else "")
                           for p in sorted(self.options, key=len, reverse=True))  # the longest phrase first
        return re.sub(pattern, lambda m: self.options[m.group()], text)


def _wordy(character: str) -> bool:
    return character.isalnum() or character == "_"


def options(group: str, *names: str) -> dict[str, str]:
    """How the command line spells the Python arguments ``names`` of ``group`` (``""``: a ``sample`` option,
    ``"data"``: a data-module setting, ``"model"``: a model setting): ``top_k`` as ``--top-k``, ``bits`` as
    ``--data.bits``, and ``name=value`` as ``--flag value``."""
    spelled = {}
    for name in names:
        flag = GROUPS[group] + (name.replace("_", "-") if not group else name)
        spelled[name] = flag
        spelled[f"{name}="] = f"{flag} "
    return spelled


OOM_PHRASES = ("out of memory", "cannot allocate memory", "can't allocate memory", "failed to allocate")
"""How torch and the allocators say that memory ran out."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device or host ran out of memory (torch and the allocators word it differently).

    Args:
        exc: an exception caught while drawing or reading data.
    """
    torch = sys.modules.get("torch")  # loaded already wherever a torch error can arise
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(phrase in str(exc).lower() for phrase in OOM_PHRASES)


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
    import torch  # loaded already: the labels are a tensor

    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
