"""How a run samples: the choice of a code from logits (:class:`Decoding`: temperature, top-k, top-p, greedy) and
the run's other settings (:class:`SampleOptions`: cached or cache-free step, captured or eager, progress bar).

One :class:`SampleOptions` value carries every setting from the ``sample`` command line (each field with a ``help``
is an option there, :mod:`arcore.launch`) to the engine (:func:`arcore.engine.sample`); ``model.sample(...,
temperature=0.8)`` is sugar for it. A new setting is a field here and the code that reads it, nothing between.

Decoding is tensor arithmetic with no host synchronisation, so it can sit inside a captured sampling step.
Sampling uses the Gumbel-max trick with uniform noise the caller owns: the cached and cache-free paths of the
engine draw the same noise at the same position and therefore the same codes. This module does not import torch
itself (tensors bring their own methods), so the command line reads its options before torch loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from arcore.errors import UsageError, options

if TYPE_CHECKING:
    import torch

Capture = bool | str | Callable[..., Any]  # False: eager; True: the device's default; else a compile backend

OPTIONS = {**options("", "temperature", "top_k", "top_p"), "greedy=True": "--greedy"}
"""The ``sample`` commands' spelling of these settings, for errors (:class:`arcore.errors.UsageError`)."""
MIN_TEMPERATURE = 1e-3
"""The smallest temperature a draw accepts: logits divided by less can overflow to ties of inf (greedy is the limit
below it)."""


def option(default: Any, help: str, *, type: Callable[[str], Any] | None = None, flag: str | None = None) -> Any:
    """A settings field that is also an option of the ``sample`` commands: ``--name-with-dashes`` (or ``flag``)
    with ``help``; a bool is a switch that sets the opposite of its default, anything else takes a value of
    ``type``."""
    return field(default=default, metadata={"help": help, "type": type, "flag": flag})


@dataclass(frozen=True)
class Decoding:
    """How to pick a code from logits: a draw from the tempered, top-k / top-p filtered softmax, or the most
    likely code when ``greedy``."""

    temperature: float = option(1.0, ">= 0.001: below 1 sharpens each step's distribution, above 1 flattens it",
                                type=float)
    top_k: int | None = option(None, "draw from the K most likely codes only (default: all codes)", type=int)
    top_p: float | None = option(
        None, "nucleus: draw from the most likely codes that together hold at least P of the probability, P in "
              "(0, 1] (default: all codes); on a model with few levels (binarised images) that is often the most "
              "likely code alone, so a sample can come out empty (a --temperature below 1 sharpens without cutting any "
              "code off)", type=float)
    greedy: bool = option(False, "the most likely code at every step instead of a draw")

    def __post_init__(self) -> None:
        if not self.temperature > 0:  # also catches NaN
            raise UsageError(f"temperature must be > 0, got {self.temperature} (use greedy=True for the most likely "
                             f"code at each step)", OPTIONS)
        if not math.isfinite(self.temperature):
            raise UsageError(f"temperature must be finite, got {self.temperature}", OPTIONS)
        if self.temperature < MIN_TEMPERATURE:
            raise UsageError(f"temperature must be at least {MIN_TEMPERATURE:g}, got {self.temperature:g} (use "
                             f"greedy=True for the most likely code at each step)", OPTIONS)
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {self.top_k}", OPTIONS)
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}", OPTIONS)

    @property
    def argmax(self) -> bool:
        """Whether the choice is the most likely code (greedy, or top-k of 1), so no noise is needed."""
        return self.greedy or self.top_k == 1

    def truncates(self, num_classes: int) -> bool:
        """Whether a draw can leave out codes of ``num_classes``: a top-k below it or a top-p below 1 (greedy
        leaves out all but one on purpose)."""
        return not self.argmax and ((self.top_k is not None and self.top_k < num_classes)
                                    or (self.top_p is not None and self.top_p < 1.0))

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Scaled logits with every code outside the top-k / top-p set at -inf (classes last)."""
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        return logits

    def choose(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Codes [..] from logits [.., K] and uniform noise of the same shape (ignored for :attr:`argmax`)."""
        return self.pick(logits, None if self.argmax else gumbel(noise))

    def pick(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Codes [..] from logits [.., K] and Gumbel noise of the same shape (:func:`gumbel`; None for
        :attr:`argmax`): the argmax of the filtered logits plus the noise, a draw from their softmax."""
        if self.argmax:
            return logits.argmax(dim=-1)
        filtered = self.filter(logits)
        return (filtered + noise.to(filtered.dtype)).argmax(dim=-1)


@dataclass(frozen=True)
class SampleOptions:
    """Every setting of a sampling run, as one value: the :class:`Decoding` of each code, and how the engine runs
    the steps (see :func:`arcore.engine.sample`). :meth:`of` builds one from keyword arguments."""

    decoding: Decoding = Decoding()
    use_cache: bool = option(True, "the cache-free reference sampler: the whole forward pass at every step (slow; "
                                   "the same samples)", flag="--no-cache")
    compile: Capture = option(False, "capture the sampling step once and replay it (CUDA graphs on a GPU, "  # noqa: RUF009
                                     "torch.compile on the CPU; the same samples, faster on a GPU)")
    progress: bool = False  # a progress bar on a terminal

    @classmethod
    def of(cls, options: SampleOptions | None = None, **settings: Any) -> SampleOptions:
        """``options`` (default: all defaults) with ``settings`` replaced, each named as a field of this class or
        of :class:`Decoding` (``temperature=0.8, use_cache=False``); an unknown name is a ``TypeError``, as for a
        function."""
        options = options if options is not None else cls()
        if not settings:
            return options
        own = {f.name for f in fields(cls)} - {"decoding"}
        unknown = settings.keys() - own - {f.name for f in fields(Decoding)}
        if unknown:
            raise TypeError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
        decoding = replace(options.decoding, **{k: v for k, v in settings.items() if k not in own})
        return replace(options, decoding=decoding, **{k: v for k, v in settings.items() if k in own})


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise, elementwise (a block of positions at once gives each position the
    values it would get alone)."""
    return -(-uniform.clamp(min=1e-20, max=1.0 - 1e-7).log()).log()


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely codes whose probability mass reaches ``p``; the rest get -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.new_zeros(drop_sorted.shape).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
