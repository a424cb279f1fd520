"""The fused CPU sampling step of :class:`wavegen.wavenet.WaveNet` (``csrc/wavenet_step.cpp``).

The PyTorch step is about 90 small tensor operations per sample, and at these sizes their per-call overhead costs
several times their arithmetic (``benchmarks/RESULTS.md``). The C++ step runs a whole step for the whole batch in
one call: every weight streamed once per tile of up to 8 rows, the gate nonlinearity on the product's registers,
the ring buffer written in place, nothing allocated. It keeps the PyTorch step's state exactly (the same ring rows,
gate biases and mel features, read from the sampler's cache), so the two agree step by step, beam search reorders
its state like the PyTorch step's, and a primed prefix filled by the sampler's prefill carries over.
It is built on first use by :mod:`arcore.native`; ``WAVEGEN_FUSED=0`` (or ``ARCORE_FUSED=0``) turns it off.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from arcore import native
from arcore.cache import StepCache

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


def padded(vector: torch.Tensor) -> torch.Tensor:
    """A bias zero-padded to whole panels."""
    return F.pad(vector.detach(), (0, -vector.numel() % PANEL)).contiguous()


class FusedStep:
    """The logits piece of a WaveNet sampler on the CPU: ``step(seq) -> logits [B, quantization]`` for position
    ``cache.position``, the previous code read from ``seq``; row ``position // cond_hop`` of the cache's
    conditioning table ``mel_frames`` conditions it. The packed weights are made once per sampling run; the logits
    buffer is overwritten by the next step."""

    def __init__(self, model: WaveNet, cache: StepCache, cond_hop: int) -> None:
        hp = model.hparams
        k, gate = model.kernel_size, hp.gate_channels
        half = gate // 2
        # the sigmoid half pre-scaled by 1/2, as in the cache's gate_bias: sigmoid(b) = (1 + tanh(b / 2)) / 2
        scale = torch.cat([torch.ones(half), torch.full((half,), 0.5)]).to(model.dtype)
        mel = getattr(cache, "mel_frames", torch.empty(0))
        gate_w, out_w, out_b = [], [], []
        for i, layer in enumerate(model.layers):
            # rows: tap j = 0..k-1 (reading x[t - (k-1-j) d]) times the residual channels, then the mel features
            w = (layer.conv.weight * scale[:, None, None]).permute(2, 1, 0).reshape(k * hp.residual_channels, gate)
            if mel.numel():
                w = torch.cat([w, (model.mel_proj.weight[i * gate:(i + 1) * gate, :, 0] * scale[:, None]).t()])
            a, b = panels(w[:, :half]), panels(w[:, half:])
            gate_w.append(torch.stack([a, b], dim=1).flatten(0, 1).contiguous())  # a_0, b_0, a_1, b_1, ...
            skip_w, skip_b = layer.skip.weight[:, :, 0].t(), layer.skip.bias
            if layer.residual is None:  # the last layer: its residual output is never read
                res_w = skip_w.new_zeros(half, hp.residual_channels)
                res_b = skip_b.new_zeros(hp.residual_channels)
            else:
                res_w, res_b = layer.residual.weight[:, :, 0].t(), layer.residual.bias
            out_w.append(torch.cat([panels(res_w), panels(skip_w)]))
            out_b.append(torch.cat([padded(res_b), padded(skip_b)]))
        self.plan = kernel().Plan(
            model.embed.weight.detach().contiguous(), list(model.dilations), k, cond_hop, gate_w, out_w, out_b,
            panels(model.head1.weight[:, :, 0].t()), padded(model.head1.bias),
            panels(model.head2.weight[:, :, 0].t()), padded(model.head2.bias), cache.batch_size,
            mel.shape[2] if mel.numel() else 0)
        self.state = (cache.position, cache.gate_bias, mel, cache.ring)
        self.logits = torch.empty(cache.batch_size, model.num_classes)

    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        self.plan.step(seq, *self.state, self.logits)
        return self.logits

    @staticmethod
    def applies(model: WaveNet) -> bool:
        """Whether the fused step serves a run: float32 sampling on the CPU (at any batch size: it is 3 to 6 times
        the PyTorch step from 1 to 256 sequences), not turned off (``WAVEGEN_FUSED=0`` or ``ARCORE_FUSED=0``), and
        the step compiled."""
        return model.device.type == "cpu" and model.dtype == torch.float32 and native.enabled("WAVEGEN_FUSED") \
            and kernel() is not None
