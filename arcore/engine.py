"""The one sampling loop of the project: walks a model's generation order, one code at a time.

Every model is p(x) = prod_t p(x_t | x_<t) over a fixed order (raster row/column/channel for images, time for audio
and token sequences). The engine owns the loop and the decoding; the model only turns the codes before ``t`` into
logits for ``t``, either from scratch (``model(codes)``, the cache-free reference) or incrementally
(``model.init_cache`` once, then ``model.step`` per position). Codes live in a preallocated ``[n, N]`` tensor in
generation order; the loop never synchronises with the host, so the same code runs on CPU and CUDA.

A model used here provides (see ``arcore.module.AutoregressiveModule``):

- ``num_classes``; ``event_shape_for(length)``: the shape of one sample's codes;
- ``to_order(x)`` / ``from_order(seq, event_shape)``: between ``[B, *event_shape, ...]`` and ``[B, N, ...]``;
  ``prime_to_order(prime, event_shape)``: a partial sample (e.g. the top rows of an image) to a prefix ``[B, P]``;
- ``forward(codes, cond) -> logits [B, *event_shape, num_classes]``;
- ``init_cache(batch_size, cond, event_shape) -> StepCache`` and ``step(cache, t, seq) -> logits [B, num_classes]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from arcore.cache import StepCache
from arcore.decoding import Decoding
from arcore.errors import UsageError


class Autoregressive(Protocol):
    num_classes: int
    training: bool

    def event_shape_for(self, length: int | None) -> tuple[int, ...]: ...
    def to_order(self, x: torch.Tensor) -> torch.Tensor: ...
    def prime_to_order(self, prime: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor: ...
    def from_order(self, seq: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor: ...
    def __call__(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...
    def init_cache(self, batch_size: int, cond: torch.Tensor | None, event_shape: tuple[int, ...]) -> StepCache: ...
    def step(self, cache: StepCache, t: int, seq: torch.Tensor) -> torch.Tensor: ...
    def parameters(self) -> Iterable[torch.nn.Parameter]: ...
    def train(self, mode: bool = True) -> object: ...


Stepper = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class BeamResult:
    """Beams sorted from most to least likely: codes ``[n, beams, *event_shape]``, log-likelihoods ``[n, beams]``."""

    codes: torch.Tensor
    log_prob: torch.Tensor


def _device(model: Autoregressive) -> torch.device:
    return next(iter(model.parameters())).device


def _initial_sequence(model: Autoregressive, n: int, event_shape: tuple[int, ...],
                      prime: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, int]:
    """The ``[n, N]`` code buffer with the primed prefix written in, and the first position left to generate."""
    seq = torch.zeros(n, math.prod(event_shape), dtype=torch.long, device=device)
    if prime is None:
        return seq, 0
    if prime.shape[0] != n:
        raise UsageError(f"prime holds {prime.shape[0]} samples, expected {n}")
    if prime.dtype.is_floating_point or prime.min() < 0 or prime.max() >= model.num_classes:
        raise UsageError(f"prime must hold integer codes in [0, {model.num_classes})")
    prefix = model.prime_to_order(prime.to(device=device, dtype=torch.long), event_shape)
    seq[:, : prefix.shape[1]] = prefix
    return seq, prefix.shape[1]


def _stepper(model: Autoregressive, n: int, cond: torch.Tensor | None, event_shape: tuple[int, ...],
             use_cache: bool) -> tuple[Stepper, StepCache | None]:
    """A function ``(t, seq) -> logits [n, K]`` for position t, cached or cache-free, and the cache if any."""
    if use_cache:
        cache = model.init_cache(n, cond, event_shape)

        def cached(t: int, seq: torch.Tensor) -> torch.Tensor:
            logits = model.step(cache, t, seq)
            cache.position.add_(1)
            return logits

        return cached, cache

    def naive(t: int, seq: torch.Tensor) -> torch.Tensor:
        return model.to_order(model(model.from_order(seq, event_shape), cond))[:, t]

    return naive, None


def _positions(total: int, progress: bool, desc: str) -> Iterable[int]:
    if not progress:
        return range(total)
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc, unit="code", mininterval=0.5, disable=None)  # no bar without a terminal


@torch.no_grad()
def sample(model: Autoregressive, n: int, *, cond: torch.Tensor | None = None, prime: torch.Tensor | None = None,
           length: int | None = None, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, greedy: bool = False, use_cache: bool = True,
           generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Draw ``n`` samples ``[n, *event_shape]``; ``prime`` fixes a prefix of the order, ``greedy`` takes the most
    likely code at every position instead of drawing one.

    The cached and cache-free paths draw the same noise at the same positions, so with the same ``generator`` seed
    they return the same codes (up to float rounding of the logits).
    """
    if n < 1:
        raise UsageError(f"number of samples must be >= 1, got {n}")
    decoding = Decoding(temperature, top_k, top_p, greedy)
    event_shape = model.event_shape_for(length)
    device = _device(model)
    was_training = model.training
    model.train(False)
    try:
        seq, start = _initial_sequence(model, n, event_shape, prime, device)
        step, _ = _stepper(model, n, cond, event_shape, use_cache)
        noise = torch.empty(n, model.num_classes, device=device)
        for t in _positions(seq.shape[1], progress, "sampling"):
            if t < start and not use_cache:
                continue
            logits = step(t, seq)
            if t >= start:
                if not decoding.argmax:
                    noise.uniform_(generator=generator)
                seq[:, t] = decoding.choose(logits, noise)
        return model.from_order(seq, event_shape)
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model: Autoregressive, n: int = 1, *, beams: int = 4, cond: torch.Tensor | None = None,
                prime: torch.Tensor | None = None, length: int | None = None, use_cache: bool = True,
                progress: bool = False) -> BeamResult:
    """The ``beams`` most likely completions found by beam search, with their exact log-likelihoods (nats).

    The log-likelihood covers the whole sequence, primed prefix included, so it equals ``model.log_prob(codes)``.
    Caches are reordered by beam in place at every step.
    """
    if beams < 1:
        raise UsageError(f"beams must be >= 1, got {beams}")
    event_shape = model.event_shape_for(length)
    device = _device(model)
    rows = n * beams
    expand = (lambda x: None if x is None else x.repeat_interleave(beams, dim=0))
    was_training = model.training
    model.train(False)
    try:
        seq, start = _initial_sequence(model, rows, event_shape, expand(prime), device)
        step, cache = _stepper(model, rows, expand(cond), event_shape, use_cache)
        scores = torch.zeros(n, beams, dtype=torch.float64, device=device)
        scores[:, 1:] = float("-inf")  # all beams start equal: let only the first one expand
        base = torch.arange(n, device=device).mul_(beams).unsqueeze(1)
        for t in _positions(seq.shape[1], progress, "beam search"):
            logp = step(t, seq).double().log_softmax(dim=-1)
            if t < start:
                scores += logp.gather(1, seq[:, t : t + 1]).view(n, beams)
                continue
            candidates = (scores.unsqueeze(-1) + logp.view(n, beams, -1)).view(n, -1)
            scores, flat = candidates.topk(beams, dim=-1)
            rows_from = (base + flat // model.num_classes).view(-1)
            seq.copy_(seq.index_select(0, rows_from))
            if cache is not None:
                cache.reorder_(rows_from)
            seq[:, t] = (flat % model.num_classes).view(-1)
        codes = model.from_order(seq, event_shape)
        return BeamResult(codes.view(n, beams, *event_shape), scores)
    finally:
        model.train(was_training)
