"""Incremental sampling state shared by every model.

A :class:`StepCache` is a bag of named tensors, each allocated once per ``sample`` call at its full size and then
only written in place: ring buffers of a causal convolution's past inputs, the last rows of a masked convolution's
input, the keys and values of attention. Every buffer declares which of its dimensions is the batch, so the engine
can reorder all of them by beam without knowing what they hold. ``position`` is the index of the code being
generated, kept on the device so that a step can be captured (CUDA graphs, ``torch.compile``) without reading it
back to the host.
"""

from __future__ import annotations

import torch


class StepCache:
    """Named, preallocated tensors that carry a model's state from one sampling step to the next."""

    def __init__(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self._batch_dims: dict[str, int | None] = {}
        self.position = self.register("position", torch.zeros((), dtype=torch.long, device=self.device), None)

    def alloc(self, name: str, shape: tuple[int, ...], *, batch_dim: int | None = 0,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """Allocate a zero buffer of ``shape`` once; ``batch_dim`` must have size ``batch_size`` (None: shared)."""
        return self.register(name, torch.zeros(shape, dtype=dtype or self.dtype, device=self.device), batch_dim)

    def register(self, name: str, tensor: torch.Tensor, batch_dim: int | None = 0) -> torch.Tensor:
        """Keep ``tensor`` (e.g. a conditioning bias computed once) as part of the state."""
        if name in self._batch_dims:
            raise KeyError(f"cache buffer {name!r} registered twice")
        if batch_dim is not None and tensor.shape[batch_dim] != self.batch_size:
            raise ValueError(f"cache buffer {name!r} has {tensor.shape[batch_dim]} rows on dim {batch_dim}, "
                             f"expected the batch size {self.batch_size}")
        self._batch_dims[name] = batch_dim
        setattr(self, name, tensor)
        return tensor

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every registered buffer by name (for tests and memory accounting)."""
        return {name: getattr(self, name) for name in self._batch_dims}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers().values())

    def reorder_(self, index: torch.Tensor) -> None:
        """Replace batch row ``i`` of every buffer by row ``index[i]`` in place (beam search)."""
        for name, dim in self._batch_dims.items():
            if dim is not None:
                buf = getattr(self, name)
                buf.copy_(buf.index_select(dim, index))
