"""Turn one step's logits into codes: temperature, top-k, top-p (nucleus), greedy.

Everything here is tensor arithmetic with no host synchronisation, so it can sit inside a captured sampling step.
Sampling uses the Gumbel-max trick with uniform noise the caller owns: the cached and cache-free paths of the
engine draw the same noise at the same position and therefore the same codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from arcore.errors import UsageError, options

OPTIONS = {**options("", "temperature", "top_k", "top_p"), "greedy=True": "--greedy"}
"""The ``sample`` commands' spelling of these settings, for errors (:class:`arcore.errors.UsageError`)."""


@dataclass(frozen=True)
class Decoding:
    """How to pick a code from logits: a draw from the tempered, top-k / top-p filtered softmax, or the most
    likely code when ``greedy``."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:  # also catches NaN
            raise UsageError(f"temperature must be > 0, got {self.temperature} (use greedy=True for the most likely "
                             f"code at each step)", OPTIONS)
        if not math.isfinite(self.temperature):
            raise UsageError(f"temperature must be finite, got {self.temperature}", OPTIONS)
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {self.top_k}", OPTIONS)
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}", OPTIONS)

    @property
    def argmax(self) -> bool:
        """Whether the choice is the most likely code (greedy, or top-k of 1), so no noise is needed."""
        return self.greedy or self.top_k == 1

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Scaled logits with every code outside the top-k / top-p set at -inf (classes last)."""
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
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


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise, elementwise (a block of positions at once gives each position the
    values it would get alone)."""
    return -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely codes whose probability mass reaches ``p``; the rest get -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
