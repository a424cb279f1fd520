"""Incremental sampling state and the step contract shared by every model.

A model samples through a :class:`Sampler` that it builds once per sampling run (``model.sampler(batch, cond,
event_shape)``). The sampler owns

- a :class:`StepCache`: every piece of per-sequence state as a tensor registered under a name, allocated once at
  full size and then only written in place (ring buffers of a causal convolution's past inputs, the rows a masked
  convolution still needs, the keys and values of attention). ``cache.position`` is the index of the code being
  generated, a 0-d tensor on the device. The cache hands each buffer back when it registers it, and the sampler
  keeps it in a typed field of its own (a dataclass of its buffers), never reading it back by name;
- its *pieces*: callables ``piece(seq) -> logits [B, num_classes] | None`` over the engine's code buffer ``seq
  [B, N]`` (the same storage for the whole run). A piece reads its position only from ``cache.position`` and earlier
  codes only through device-computed indices into ``seq``, so one piece, captured once (a CUDA graph,
  ``torch.compile(fullgraph=True, dynamic=False)``), replays correctly at every position;
- a host-side :meth:`Sampler.schedule`: which pieces run at position ``t`` (e.g. PixelCNN's once-per-row vertical
  stack before the step that starts a row). The last piece returns the logits; the engine then advances
  ``cache.position``;
- :meth:`Sampler.prefill`: a primed prefix consumed in one parallel pass, leaving the state that stepping through
  it would leave;
- optionally, :meth:`Sampler.drawer`: a native call that runs a whole position (the step, the choice of the code,
  its write into ``seq`` and the advance of ``cache.position``), which the engine's sampling loop then calls
  instead of the pieces and its own decoding;
- its prepared weights (masked, transposed, folded), made once per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from arcore.sampling.decoding import Decoding

Piece = Callable[[torch.Tensor], "torch.Tensor | None"]
Step = Callable[[torch.Tensor], torch.Tensor]
"""A piece that returns the logits ``[B, num_classes]`` of ``cache.position``: the last of a position's schedule."""
Drawer = Callable[[torch.Tensor, "torch.Tensor | None"], None]
"""``draw(seq, gumbel)``: one whole sampling position (:meth:`Sampler.drawer`); ``gumbel`` [B, num_classes] is the
position's Gumbel noise (None when the decoding takes the argmax)."""


class Autoregressive(Protocol):
    """What the sampling engine (:mod:`arcore.sampling.engine`) needs of a model: p(x) = prod_t p(x_t | x_<t) over
    ``event_shape_for(length)`` codes in the order of ``to_order``, each with ``num_classes`` values. Any
    ``torch.nn.Module`` that keeps it samples, Lightning or not; :class:`arcore.contract.Model` adds what the tools
    need."""

    num_classes: int
    training: bool

    def event_shape_for(self, length: int | None) -> tuple[int, ...]: ...
    def to_order(self, x: torch.Tensor) -> torch.Tensor: ...
    def prime_to_order(self, prime: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor: ...
    def from_order(self, seq: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor: ...
    def __call__(self, codes: torch.Tensor, cond: Any = None) -> torch.Tensor: ...
    def sampler(self, batch_size: int, cond: Any, event_shape: tuple[int, ...]) -> Sampler: ...
    def parameters(self) -> Iterable[torch.nn.Parameter]: ...
    def train(self, mode: bool = True) -> Any: ...


class StepCache:
    """Preallocated tensors that carry a model's state from one sampling step to the next.

    Every buffer declares which of its dimensions is the batch, so beam search reorders all of them in place
    (:meth:`reorder_`) without knowing what they hold, and the tensors a sampler keeps stay the ones registered
    (a captured step keeps reading the same storage). ``scratch`` buffers are work space that a step overwrites
    before it reads them: not state, so neither reordered nor part of :meth:`state`. Names serve the accounting
    (:meth:`buffers`, :meth:`state`) and the errors; :attr:`position` is the one buffer read by attribute.

    Args:
        batch_size: the rows of every buffer with a batch dimension.
        device: where the buffers live.
        dtype: the float type of :meth:`alloc`'s buffers unless told (a ``torch.dtype`` or its name, as Lightning
            types a module's).
    """

    def __init__(self, batch_size: int, device: torch.device | str, dtype: torch.dtype | str) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype: torch.dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
        self._buffers: dict[str, torch.Tensor] = {}
        self._batch_dims: dict[str, int | None] = {}
        self._scratch: set[str] = set()
        self.position: torch.Tensor = self.register("position", torch.zeros((), dtype=torch.long, device=self.device),
                                                    None)

    def alloc(self, name: str, shape: tuple[int, ...], *, batch_dim: int | None = 0, dtype: torch.dtype | None = None,
              scratch: bool = False) -> torch.Tensor:
        """Allocate a zero buffer of ``shape`` once; ``batch_dim`` must have size ``batch_size`` (None: shared).

        Args:
            name: the buffer's name (accounting, errors).
            shape: its full shape, allocated once.
            batch_dim: its batch dimension (None: shared by every row, never reordered).
            dtype: its type (default: the cache's).
            scratch: work space a step overwrites before reading: neither state nor reordered.
        """
        tensor = torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)
        return self.register(name, tensor, batch_dim, scratch=scratch)

    def register(self, name: str, tensor: torch.Tensor, batch_dim: int | None = 0, *, scratch: bool = False
                 ) -> torch.Tensor:
        """Keep ``tensor`` (e.g. a conditioning bias computed once) as part of the state, or as ``scratch``.

        Args:
            name: the buffer's name.
            tensor: the tensor, kept as it is.
            batch_dim: its batch dimension (None: shared).
            scratch: work space, not state.
        """
        if name in self._batch_dims:
            raise KeyError(f"cache buffer {name!r} registered twice")
        if batch_dim is not None and tensor.shape[batch_dim] != self.batch_size:
            raise ValueError(f"cache buffer {name!r} has {tensor.shape[batch_dim]} rows on dim {batch_dim}, "
                             f"expected the batch size {self.batch_size}")
        self._batch_dims[name] = batch_dim
        self._buffers[name] = tensor
        if scratch:
            self._scratch.add(name)
        return tensor

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every registered buffer by name, scratch included (memory accounting)."""
        return dict(self._buffers)

    def state(self) -> dict[str, torch.Tensor]:
        """The buffers that carry information from one step to the next (what prefill must reproduce)."""
        return {name: tensor for name, tensor in self.buffers().items() if name not in self._scratch}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers().values())

    def reorder_(self, index: torch.Tensor) -> None:
        """Replace batch row ``i`` of every state buffer by row ``index[i]`` in place (beam search).

        Args:
            index: long ``[B]``: the row each row takes its state from.
        """
        for name, dim in self._batch_dims.items():
            if dim is not None and name not in self._scratch:
                buf = self._buffers[name]
                buf.copy_(buf.index_select(dim, index))


class Sampler:
    """One sampling run of a model: its cache, its pieces and their schedule (see the module docstring).

    Subclasses set ``self.step`` (the piece that returns logits) and override :meth:`schedule` when other pieces run
    at host-known boundaries, :meth:`prefill` with a parallel pass (the default steps through the prefix), and
    :meth:`capturable` for pieces that must run as they are.

    Args:
        cache: the run's :class:`StepCache`.
    """

    step: Piece

    def __init__(self, cache: StepCache) -> None:
        self.cache = cache

    def schedule(self, t: int) -> Sequence[Piece]:
        """The pieces to run, in order, for position ``t``; the last one returns the logits.

        Args:
            t: the position about to be drawn.
        """
        return (self.step,)

    def capturable(self, piece: Piece) -> bool:
        """Whether the engine may capture ``piece`` (False for a native fused step: already one call per step).

        Args:
            piece: one of this sampler's pieces.
        """
        return True

    def drawer(self, decoding: Decoding) -> Drawer | None:
        """A call that runs a whole position, choosing its code as ``decoding.pick`` would, or None (the default:
        the engine runs the schedule's pieces and decodes their logits itself).

        Args:
            decoding: how the codes are chosen.
        """
        return None

    def prefill(self, seq: torch.Tensor, length: int) -> None:
        """Consume the codes ``seq[:, :length]``; afterwards ``cache.position == length``.

        Args:
            seq: the engine's code buffer ``[B, N]``.
            length: the codes of the primed prefix.
        """
        for t in range(length):
            for piece in self.schedule(t):
                piece(seq)
            self.cache.position.add_(1)


class ForwardSampler(Sampler):
    """The cache-free step every model has: the teacher-forced pass over the whole code buffer, logits taken at
    ``cache.position``. It is the reference of every cached path, and the cached path of a model that writes only
    ``forward`` (static shapes, so it captures too). It needs only the engine's contract
    (:class:`Autoregressive`): any ``torch.nn.Module`` that keeps it samples, Lightning or
    not."""

    def __init__(self, model: Autoregressive, batch_size: int, cond: Any, event_shape: tuple[int, ...]) -> None:
        super().__init__(StepCache(batch_size, *device_and_dtype(model)))
        self.model, self.cond, self.event_shape = model, cond, event_shape
        self.step = self._logits

    def _logits(self, seq: torch.Tensor) -> torch.Tensor:
        logits = self.model.to_order(self.model(self.model.from_order(seq, self.event_shape), self.cond))
        return logits.index_select(1, self.cache.position.view(1)).squeeze(1)

    def prefill(self, seq: torch.Tensor, length: int) -> None:
        self.cache.position.fill_(length)


def device_and_dtype(model: Autoregressive) -> tuple[torch.device, torch.dtype]:
    """Where a model computes and in which float type: those of its first floating-point parameter."""
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if not floating:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters to sample with")
    return floating[0].device, floating[0].dtype


class Biased(Protocol):
    """A layer with an optional bias (torch's convolutions and linear layers)."""

    bias: torch.Tensor | None


def bias_of(layer: Biased) -> torch.Tensor:
    """The bias of a layer built with one, for a prepared step to read (torch types every layer's bias as optional).

    Args:
        layer: a convolution or linear layer.
    """
    if layer.bias is None:
        raise ValueError(f"{type(layer).__name__} was built without a bias")
    return layer.bias


def previous_code(seq: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """The codes ``[B]`` at ``position - 1`` (those at 0 where ``position`` is 0; mask them), by device index."""
    return seq.index_select(1, (position - 1).clamp(min=0).view(1)).squeeze(1)
