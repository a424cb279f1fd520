"""The fused CPU sampling step of :class:`pixelgen.igpt.ImageGPT` for small batches (``csrc/igpt_step.cpp``).

At small batches a step of the PyTorch path is a few dozen small operations per layer whose per-call overhead costs
as much as their arithmetic. The C++ step runs a whole step in one call: every weight streamed once, split over the
intra-op threads, no allocation. It is compiled on first use by :mod:`arcore.sampling.native` (about 20 s on 2 cores,
then cached); where that is impossible, sampling keeps the PyTorch step (one warning). ``PIXELGEN_FUSED=0`` (or
``ARCORE_FUSED=0``) turns it off.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from arcore.sampling import native

if TYPE_CHECKING:
    from pixelgen.igpt import ImageGPT

SOURCE = Path(__file__).parent / "csrc" / "igpt_step.cpp"
MAX_BATCH = 8  # above this the products are large enough for MKL's matrix kernels to win (benchmarks/RESULTS.md)


def kernel() -> ModuleType | None:
    """The compiled step, or None when it cannot be built on this machine."""
    return native.load("pixelgen_igpt_step", SOURCE, what="image GPT sampling")


def column_blocks(weight: torch.Tensor, most: int = 16) -> torch.Tensor:
    """A ``[fan_in, fan_out]`` weight as ``[blocks, fan_in, fan_out / blocks]``, contiguous: the most blocks (up to
    ``most``) that divide ``fan_out``, so the threads share the columns evenly and each streams its own block."""
    fan_in, fan_out = weight.shape
    blocks = next(b for b in range(min(most, fan_out), 0, -1) if fan_out % b == 0)
    return weight.detach().view(fan_in, blocks, -1).transpose(0, 1).contiguous()


class FusedStep:
    """The state one fused step needs beyond the K/V cache: the weights in column blocks, scratch space and the
    logits buffer, all allocated once per sampling run."""

    def __init__(self, model: ImageGPT, kv: torch.Tensor, first: torch.Tensor, position: torch.Tensor) -> None:
        module = kernel()
        if module is None:
            raise RuntimeError("the fused image GPT step is not built on this machine (FusedStep.applies is False)")
        self.module = module
        self.model = model
        self.kv = kv
        self.position = position
        self.first = first.contiguous()  # [batch, width]
        params: list[torch.Tensor] = []
        for block in model.blocks:
            for norm, (first_dense, second_dense) in ((block.ln1, (block.qkv, block.proj)),
                                                      (block.ln2, (block.fc, block.out))):
                params += [norm.weight.detach(), norm.bias.detach()]
                for dense in (first_dense, second_dense):
                    params += [column_blocks(dense.weight), dense.bias.detach()]
        params += [model.ln_f.weight.detach(), model.ln_f.bias.detach(), column_blocks(model.head.weight),
                   model.head.bias.detach()]
        self.params = params
        (rows, width), heads, capacity = self.first.shape, model.blocks[0].heads, kv.shape[4]
        hidden = model.blocks[0].fc.bias.numel()
        self.scratch = torch.empty(rows * (6 * width + hidden + heads * capacity))
        self.logits = torch.empty(rows, model.num_classes)

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, palette]`` at the cache's position (a buffer overwritten by the next step)."""
        model = self.model
        self.module.step(self.first, model.token_embedding.weight, model.position_embedding, seq, self.kv,
                         self.params, model.blocks[0].heads, model.blocks[0].ln1.eps, self.position, self.scratch,
                         self.logits)
        return self.logits

    @staticmethod
    def applies(model: ImageGPT, batch_size: int) -> bool:
        """Whether the fused step serves this run: float32 sampling of at most ``MAX_BATCH`` sequences on the CPU,
        not turned off (``PIXELGEN_FUSED=0`` or ``ARCORE_FUSED=0``), and the step compiled."""
        return batch_size <= MAX_BATCH and model.device.type == "cpu" and model.dtype == torch.float32 \
            and native.enabled("PIXELGEN_FUSED") and kernel() is not None
