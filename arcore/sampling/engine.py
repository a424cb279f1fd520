"""The one sampling loop of the project: walks a model's generation order, one code at a time.

Every model is p(x) = prod_t p(x_t | x_<t) over a fixed order (raster row/column/channel for images, time for audio
and token sequences). The engine owns the loop, the decoding and the schedule of a run; the model only turns the
codes before ``t`` into logits for ``t``, through a :class:`arcore.sampling.cache.Sampler`: its own incremental one
(``model.sampler``), or the cache-free reference (:class:`arcore.sampling.cache.ForwardSampler`, the teacher-forced pass
at every position). Codes live in a preallocated ``[n, N]`` tensor in generation order; a primed prefix is consumed by
the sampler's parallel prefill; nothing in the loop reads a tensor back to the host. A sampler with a drawer
(:meth:`arcore.sampling.cache.Sampler.drawer`: a native call that runs a whole position, choice of the code included)
runs that instead of its pieces and the engine's decoding, on the same noise.

With ``compile=True`` every piece of the sampler is captured once and replayed at every position: as a CUDA graph
on a GPU (warmed up on a side stream with the state restored afterwards, so capture changes nothing), with
``torch.compile(fullgraph=True, dynamic=False)`` elsewhere. ``"cudagraph"``, ``"reduce-overhead"`` (torch.compile's
CUDA graphs) or a torch.compile backend name or callable may be passed instead of ``True``. A piece its sampler marks as not capturable (a native fused CPU step) runs as it is.

A model used here provides (:class:`arcore.sampling.cache.Autoregressive`; ``arcore.training.module.AutoregressiveModule``
provides it all but ``forward``):

- ``num_classes``; ``event_shape_for(length)``: the shape of one sample's codes;
- ``to_order(x)`` / ``from_order(seq, event_shape)``: between ``[B, *event_shape, ...]`` and ``[B, N, ...]``;
  ``prime_to_order(prime, event_shape)``: a partial sample (e.g. the top rows of an image) to a prefix ``[B, P]``;
- ``forward(codes, cond) -> logits [B, *event_shape, num_classes]``;
- ``sampler(batch_size, cond, event_shape) -> Sampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from arcore.errors import UsageError
from arcore.sampling.cache import Autoregressive, ForwardSampler, Piece, Sampler, Step, StepCache
from arcore.sampling.decoding import Capture, SampleOptions, gumbel


@dataclass
class BeamResult:
    """Beams sorted from most to least likely: codes ``[n, beams, *event_shape]``, log-likelihoods ``[n, beams]``.

    Args:
        codes: the beams ``[n, beams, *event_shape]``, most likely first.
        log_prob: their log-likelihoods in nats ``[n, beams]``.
    """

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


class Runner:
    """Runs a sampler's schedule at each position, every piece eager or captured once (see the module docstring),
    and advances ``cache.position`` after the logits. Captured pieces are kept per (piece, role)."""

    def __init__(self, sampler: Sampler, capture: Capture = False) -> None:
        self.sampler = sampler
        self.capture = capture
        self._units: dict[tuple[Piece, bool], Piece] = {}

    @property
    def graphs(self) -> int:
        """How many distinct pieces this run has built so far (each one graph when captured)."""
        return len(self._units)

    def prepare(self, seq: torch.Tensor, start: int = 0) -> None:
        """Build (capture) every piece that positions ``start ..`` will run, before the loop: capturing a CUDA graph
        synchronises once, and it changes no state, so after this the loop runs without a host sync."""
        for t in range(start, seq.shape[1]):
            pieces = self.sampler.schedule(t)
            for i, piece in enumerate(pieces):
                self._unit(piece, i == len(pieces) - 1, seq)

    @torch.no_grad()
    def __call__(self, t: int, seq: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of position ``t``."""
        pieces = self.sampler.schedule(t)
        for piece in pieces[:-1]:
            self._unit(piece, False, seq)(seq)
        logits = self._unit(pieces[-1], True, seq)(seq)
        assert logits is not None  # the last unit is _advancing's, which returns the logits
        return logits

    def _unit(self, piece: Piece, last: bool, seq: torch.Tensor) -> Piece:
        unit = self._units.get((piece, last))
        if unit is None:
            capture = self.capture if self.sampler.capturable(piece) else False
            graph = capture in (True, "cudagraph") and seq.device.type == "cuda"
            run = piece
            if capture == "reduce-overhead":  # torch.compile's own CUDA graphs (compared in benchmarks/)
                run = torch.compile(piece, mode="reduce-overhead", fullgraph=True, dynamic=False)
            elif capture is not False and not graph:
                backend = "inductor" if capture is True else capture
                run = torch.compile(piece, backend=backend, fullgraph=True, dynamic=False)
            unit = _advancing(run, self.sampler.cache.position) if last else run
            if graph:  # the piece and the position's advance in one graph
                unit = _cuda_graph(unit, seq, self.sampler.cache)
            self._units[piece, last] = unit
        return unit


def _advancing(piece: Piece, position: torch.Tensor) -> Step:
    def unit(seq: torch.Tensor) -> torch.Tensor:
        logits = piece(seq)
        if logits is None:
            raise TypeError("the last piece of a position's schedule must return its logits")
        position.add_(1)
        return logits

    return unit


def _cuda_graph(unit: Piece, seq: torch.Tensor, cache: StepCache) -> Piece:
    """Capture ``unit(seq)`` as a CUDA graph. The warm-up runs on a side stream (as capture requires) and would
    advance the state, so every cache buffer is restored before the capture, which records without running."""
    saved = {name: buf.clone() for name, buf in cache.buffers().items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            unit(seq)
    torch.cuda.current_stream().wait_stream(side)
    for name, buf in cache.buffers().items():
        buf.copy_(saved[name])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = unit(seq)

    def replay(_: torch.Tensor) -> torch.Tensor | None:
        graph.replay()
        return out

    return replay


NOISE_BLOCK = 1 << 18
"""Floats of uniform noise drawn per generator call on the CPU (1 MiB): a block of positions at once."""


class Noise:
    """The Gumbel noise ``[n, classes]`` of each position in turn, ``positions`` of them. On the CPU it is drawn in
    blocks of positions: the CPU generator fills a tensor one element after another, so one call over a block gives
    every position the uniform values a call per position would, and a block never reaches past the last position,
    so the generator ends where per-position draws leave it (a second run with the same generator continues its
    stream). Elsewhere it is drawn a position at a time."""

    def __init__(self, n: int, classes: int, positions: int, device: torch.device,
                 generator: torch.Generator | None) -> None:
        per_block = max(1, NOISE_BLOCK // (n * classes)) if device.type == "cpu" else 1
        self.uniform = torch.empty(max(1, min(per_block, positions)), n, classes, device=device)
        self.generator, self.left = generator, positions
        self.rows: tuple[torch.Tensor, ...] = ()
        self.index = 0

    def next(self) -> torch.Tensor:
        """The next position's noise."""
        if self.index == len(self.rows):
            block = self.uniform[: min(self.uniform.shape[0], self.left)].uniform_(generator=self.generator)
            self.left -= block.shape[0]
            self.rows, self.index = gumbel(block).unbind(0), 0
        self.index += 1
        return self.rows[self.index - 1]


def stepper(model: Autoregressive, n: int, cond: Any, event_shape: tuple[int, ...], use_cache: bool = True,
            capture: Capture = False) -> tuple[Runner, Sampler]:
    """The model's sampler for ``n`` sequences (or the cache-free one) and a runner ``(t, seq) -> logits``."""
    sampler = model.sampler(n, cond, event_shape) if use_cache else ForwardSampler(model, n, cond, event_shape)
    return Runner(sampler, capture), sampler


def _positions(start: int, total: int, progress: bool, desc: str) -> Iterable[int]:
    if not progress:
        return range(start, total)
    from tqdm.auto import tqdm

    return tqdm(range(start, total), desc=desc, unit="code", mininterval=0.5, disable=None)  # no bar without a tty


@torch.no_grad()
def sample(model: Autoregressive, n: int, *, cond: Any = None, prime: torch.Tensor | None = None,
           length: int | None = None, options: SampleOptions | None = None, generator: torch.Generator | None = None,
           **settings: Any) -> torch.Tensor:
    """Draw ``n`` samples ``[n, *event_shape]``; ``prime`` fixes a prefix of the order. ``options``
    (:class:`arcore.sampling.decoding.SampleOptions`) says how: its ``decoding`` picks each code (``greedy``: the most
    likely one instead of a draw), ``use_cache`` chooses the model's sampler or the cache-free one, ``compile`` captures
    the step (module docstring); ``settings`` replace any of them by name (``temperature=0.8``).

    Every path (cached or cache-free, eager or captured) draws the same noise at the same positions, so with the same
    ``generator`` seed they return the same codes (up to float rounding of the logits).

    Args:
        model: the model (:class:`arcore.sampling.cache.Autoregressive`).
        n: how many samples.
        cond: their conditioning, or None.
        prime: a prefix of each sample to continue, or None.
        length: the length of each sample, for a model of variable length.
        options: how to draw (:class:`arcore.sampling.decoding.SampleOptions`).
        generator: the random generator of the noise.
        settings: fields of ``options`` replaced by name.
    """
    if n < 1:
        raise UsageError(f"number of samples must be >= 1, got {n}")
    options = SampleOptions.of(options, **settings)
    decoding = options.decoding
    event_shape = model.event_shape_for(length)
    device = _device(model)
    was_training = model.training
    model.train(False)
    try:
        seq, start = _initial_sequence(model, n, event_shape, prime, device)
        run, sampler = stepper(model, n, cond, event_shape, options.use_cache, options.compile)
        if start:
            sampler.prefill(seq, start)
        run.prepare(seq, start)
        draw = sampler.drawer(decoding)
        noise = None if decoding.argmax else Noise(n, model.num_classes, seq.shape[1] - start, device, generator)
        for t in _positions(start, seq.shape[1], options.progress, "sampling"):
            gumbel_t = None if noise is None else noise.next()
            if draw is not None:
                draw(seq, gumbel_t)
            else:
                seq[:, t] = decoding.pick(run(t, seq), gumbel_t)
        return model.from_order(seq, event_shape)
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model: Autoregressive, n: int = 1, *, beams: int = 4, cond: Any = None,
                prime: torch.Tensor | None = None, length: int | None = None, options: SampleOptions | None = None,
                **settings: Any) -> BeamResult:
    """The ``beams`` most likely completions found by beam search, with their exact log-likelihoods (nats).
    ``options`` and ``settings`` as for :func:`sample`, whose ``decoding`` beam search does not use: it keeps the
    most likely sequences.

    The log-likelihood covers the whole sequence, primed prefix included (scored by one teacher-forced pass), so it
    equals ``model.log_prob(codes)``. Caches are reordered by beam in place at every step.

    Args:
        model: the model (:class:`arcore.sampling.cache.Autoregressive`).
        n: how many searches.
        beams: the beams kept at every step.
        cond: their conditioning, or None.
        prime: prefixes to complete, or None.
        length: the length of each sample, for a model of variable length.
        options: the run's settings (step, capture, progress).
        settings: fields of ``options`` replaced by name.
    """
    if beams < 1:
        raise UsageError(f"beams must be >= 1, got {beams}")
    options = SampleOptions.of(options, **settings)
    event_shape = model.event_shape_for(length)
    device = _device(model)
    rows = n * beams

    def expand(x: Any) -> Any:
        return None if x is None else x.repeat_interleave(beams, dim=0)

    was_training = model.training
    model.train(False)
    try:
        seq, start = _initial_sequence(model, rows, event_shape, expand(prime), device)
        run, sampler = stepper(model, rows, expand(cond), event_shape, options.use_cache, options.compile)
        scores = torch.zeros(n, beams, dtype=torch.float64, device=device)
        if start:
            scores += _prefix_log_prob(model, seq[::beams], cond, event_shape, start).unsqueeze(1)
        scores[:, 1:] = float("-inf")  # all beams start equal: let only the first one expand
        if start:
            sampler.prefill(seq, start)
        run.prepare(seq, start)
        base = torch.arange(n, device=device).mul_(beams).unsqueeze(1)
        for t in _positions(start, seq.shape[1], options.progress, "beam search"):
            logp = run(t, seq).double().log_softmax(dim=-1)
            candidates = (scores.unsqueeze(-1) + logp.view(n, beams, -1)).view(n, -1)
            scores, flat = candidates.topk(beams, dim=-1)
            rows_from = (base + flat // model.num_classes).view(-1)
            seq.copy_(seq.index_select(0, rows_from))
            sampler.cache.reorder_(rows_from)
            seq[:, t] = (flat % model.num_classes).view(-1)
        codes = model.from_order(seq, event_shape)
        return BeamResult(codes.view(n, beams, *event_shape), scores)
    finally:
        model.train(was_training)


def _prefix_log_prob(model: Autoregressive, seq: torch.Tensor, cond: Any, event_shape: tuple[int, ...],
                     start: int) -> torch.Tensor:
    """``sum_{t < start} log p(x_t | x_<t)`` of each row of ``seq``, from one teacher-forced pass (the codes after
    ``start`` are zeros, which the causal logits of the prefix never see)."""
    logits = model.to_order(model(model.from_order(seq, event_shape), cond))[:, :start].double()
    return logits.log_softmax(dim=-1).gather(2, seq[:, :start, None]).squeeze(2).sum(dim=1)
