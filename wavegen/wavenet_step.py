"""The fused CPU sampling step of :class:`wavegen.wavenet.WaveNet` (``csrc/wavenet_step.cpp``).

The PyTorch step is about 90 small tensor operations per sample, and at these sizes their per-call overhead costs
several times their arithmetic (``benchmarks/RESULTS.md``). The C++ step runs a whole step for the whole batch in
one call: every weight streamed once per tile of up to 8 rows, the gate nonlinearity on the product's registers,
the ring buffer written in place, nothing allocated. It keeps the PyTorch step's state exactly (the same ring rows,
gate biases and mel features, read from the sampler's cache), so the two agree step by step, beam search reorders
its state like the PyTorch step's, and a primed prefix filled by the sampler's prefill carries over.

Two things take it past the per-call and cache limits of a CPU core:

- :meth:`FusedStep.drawer`: a whole sampling position in one call (the step, the Gumbel-max choice from the noise
  the engine drew for the position, the code written into ``seq``, the position advanced), so the engine's loop
  runs no tensor operation between steps;
- float16 weights: when every packed weight is exactly a float16 value (:meth:`WaveNet.round_weights_to_half`,
  ``wavegen sample --half-weights``), the step holds them as float16, unchanged, and converts them to float32 in
  registers: the reference model's 1.94 MiB become 0.97 MiB, which stay in a 2 MiB L2 cache from one step to the
  next instead of streaming from the L3.

It is built on first use by :mod:`arcore.sampling.native`; ``WAVEGEN_FUSED=0`` (or ``ARCORE_FUSED=0``) turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from arcore.sampling import native
from arcore.sampling.cache import Drawer, StepCache, bias_of
from arcore.sampling.decoding import Decoding

if TYPE_CHECKING:
    from wavegen.wavenet import WaveNet

SOURCE = Path(__file__).parent / "csrc" / "wavenet_step.cpp"
PANEL = 16  # output columns per weight panel: one vector of the C++ products


def kernel() -> ModuleType | None:
    """The compiled step, or None when it cannot be built on this machine."""
    return native.load("wavegen_wavenet_step", SOURCE, what="WaveNet sampling")


def panels(weight: torch.Tensor) -> torch.Tensor:
    """A ``[fan_in, fan_out]`` weight as ``[ceil(fan_out / 16), fan_in, 16]`` panels, zero-padded, contiguous."""
    fan_in, fan_out = weight.shape
    padded = F.pad(weight.detach(), (0, -fan_out % PANEL))
    return padded.view(fan_in, -1, PANEL).transpose(0, 1).contiguous()


def gate_folded(weight: torch.Tensor, gate: int, dim: int = 0, *, undo: bool = False) -> torch.Tensor:
    """``weight`` with what feeds the sigmoid half of every gate scaled by 1/2 (by 2 with ``undo``), as every
    WaveNet sampling step reads it: ``sigmoid(b) = (1 + tanh(b / 2)) / 2``, so one ``tanh`` over the pre-activation
    serves both halves of the gate. Along ``dim`` the channels come in blocks of ``gate`` (one block per layer, or
    one layer's), each its ``tanh`` half then its sigmoid half. Scaling by a power of 2 is exact, so ``undo``
    restores the weight bit for bit."""
    scale = torch.full((gate,), 2.0 if undo else 0.5, dtype=weight.dtype, device=weight.device)
    scale[: gate // 2] = 1.0
    shape = [1] * (weight.dim() + 1)
    shape[dim + 1] = gate
    return (weight.unflatten(dim, (-1, gate)) * scale.view(shape)).flatten(dim, dim + 1)


def half_exact(weight: torch.Tensor) -> bool:
    """Whether every value of a float32 tensor is exactly a float16 value (so half the bytes hold it unchanged)."""
    return bool(torch.equal(weight.to(torch.float16).to(weight.dtype), weight))


def padded(vector: torch.Tensor) -> torch.Tensor:
    """A bias zero-padded to whole panels."""
    return F.pad(vector.detach(), (0, -vector.numel() % PANEL)).contiguous()


class Packed(NamedTuple):
    """A WaveNet's sampling weights as the C++ step reads them (:func:`packed`)."""

    gate: list[torch.Tensor]
    out: list[torch.Tensor]
    out_bias: list[torch.Tensor]
    head1: torch.Tensor
    head1_bias: torch.Tensor
    head2: torch.Tensor
    head2_bias: torch.Tensor


def packed(model: WaveNet, with_mel: bool) -> Packed:
    """The step's weights in panels (biases float32): float16 when every packed weight is exactly a float16 value
    (:meth:`wavegen.wavenet.WaveNet.round_weights_to_half` makes them so), else float32."""
    hp = model.hparams
    k, gate = model.kernel_size, hp.gate_channels
    half = gate // 2
    gate_w, out_w, out_b = [], [], []
    for i, layer in enumerate(model.layers):
        # rows: tap j = 0..k-1 (reading x[t - (k-1-j) d]) times the residual channels, then the mel features
        w = gate_folded(layer.conv.weight, gate).permute(2, 1, 0).reshape(k * hp.residual_channels, gate)
        if with_mel:
            w = torch.cat([w, gate_folded(model.mel_proj.weight[i * gate:(i + 1) * gate, :, 0], gate).t()])
        a, b = panels(w[:, :half]), panels(w[:, half:])
        gate_w.append(torch.stack([a, b], dim=1).flatten(0, 1).contiguous())  # a_0, b_0, a_1, b_1, ...
        skip_w, skip_b = layer.skip.weight[:, :, 0].t(), bias_of(layer.skip)
        if layer.residual is None:  # the last layer: its residual output is never read
            res_w = skip_w.new_zeros(half, hp.residual_channels)
            res_b = skip_b.new_zeros(hp.residual_channels)
        else:
            res_w, res_b = layer.residual.weight[:, :, 0].t(), bias_of(layer.residual)
        out_w.append(torch.cat([panels(res_w), panels(skip_w)]))
        out_b.append(torch.cat([padded(res_b), padded(skip_b)]))
    head1_w, head2_w = panels(model.head1.weight[:, :, 0].t()), panels(model.head2.weight[:, :, 0].t())
    dtype = torch.float16 if all(map(half_exact, [*gate_w, *out_w, head1_w, head2_w])) else torch.float32
    return Packed([w.to(dtype) for w in gate_w], [w.to(dtype) for w in out_w], out_b, head1_w.to(dtype),
                  padded(bias_of(model.head1)), head2_w.to(dtype), padded(bias_of(model.head2)))


def weight_dtype(model: WaveNet) -> torch.dtype:
    """The dtype in which the fused step holds this model's weights (float16 when that changes none of them)."""
    return packed(model, with_mel=model.n_mels > 0).gate[0].dtype


@dataclass
class WaveNetBuffers:
    """The per-run state of a WaveNet sampler (``wavegen.wavenet.WaveNetSampler``), each tensor registered in its
    ``StepCache`` (so beam search reorders it in place) and read through these fields, by the PyTorch step and by
    :class:`FusedStep` alike."""

    ring: torch.Tensor  # [sum_l ((k-1) d_l + 1), B, R]: every layer's recent inputs
    gate_bias: torch.Tensor  # [B, L gate]: the gates' biases, the speaker's included
    mel_frames: torch.Tensor | None  # [rows, B, cond_channels]: the conditioning table (None: no mel conditioning)


class FusedStep:
    """The logits piece of a WaveNet sampler on the CPU: ``step(seq) -> logits [B, quantization]`` for position
    ``cache.position``, the previous code read from ``seq``; row ``position // cond_hop`` of the cache's
    conditioning table ``mel_frames`` conditions it. The packed weights are made once per sampling run; the logits
    buffer is overwritten by the next step."""

    def __init__(self, model: WaveNet, cache: StepCache, buffers: WaveNetBuffers, cond_hop: int) -> None:
        mel = buffers.mel_frames if buffers.mel_frames is not None else torch.empty(0)
        w = packed(model, with_mel=mel.numel() > 0)
        self.weight_dtype = w.gate[0].dtype
        module = kernel()
        if module is None:
            raise RuntimeError("the fused WaveNet step is not built on this machine (FusedStep.applies is False)")
        self.plan = module.Plan(
            model.embed.weight.detach().contiguous(), list(model.dilations), model.kernel_size, cond_hop, w.gate,
            w.out, w.out_bias, w.head1, w.head1_bias, w.head2, w.head2_bias, cache.batch_size,
            mel.shape[2] if mel.numel() else 0)
        self.state = (cache.position, buffers.gate_bias, mel, buffers.ring)
        self.logits = torch.empty(cache.batch_size, model.num_classes)
        self._no_noise = torch.empty(0)

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        self.plan.step(seq, *self.state, self.logits)
        return self.logits

    def drawer(self, decoding: Decoding) -> Drawer | None:
        """A whole position in one call, ``draw(seq, gumbel)``: the step, the code chosen from the logits as
        ``decoding.pick`` would choose it (the Gumbel-max argmax, or the plain argmax when greedy), written into
        ``seq`` at the cache position, and the position advanced. None for top-k / top-p filtering (the engine's
        own ``pick`` then runs on the logits)."""
        if decoding.top_p is not None or (decoding.top_k is not None and not decoding.argmax):
            return None
        plan, state, logits, greedy = self.plan, self.state, self.logits, decoding.argmax
        temperature, no_noise = decoding.temperature, self._no_noise

        def draw(seq: torch.Tensor, gumbel: torch.Tensor | None) -> None:
            plan.draw(seq, *state, logits, no_noise if gumbel is None else gumbel, temperature, greedy)

        return draw

    @staticmethod
    def applies(model: WaveNet) -> bool:
        """Whether the fused step serves a run: float32 sampling on the CPU (at any batch size: it is 3 to 6 times
        the PyTorch step from 1 to 256 sequences), not turned off (``WAVEGEN_FUSED=0`` or ``ARCORE_FUSED=0``), and
        the step compiled."""
        return model.device.type == "cpu" and model.dtype == torch.float32 and native.enabled("WAVEGEN_FUSED") \
            and kernel() is not None
