"""WaveNet (van den Oord et al. 2016) over 8-bit mu-law audio, with a fast cached sampler.

The model predicts code t from codes < t: the codes are embedded and shifted one step right (position 0 hears
silence, i.e. zeros), then go through gated dilated causal convolutions, ``tanh(a) * sigmoid(b)``, with a residual
1x1 back into the stack and a skip 1x1 out of every layer; the summed skips go through ReLU-1x1-ReLU-1x1 to 256
logits. Dilations double inside a cycle (1, 2, ..., 2^(n-1)) and the cycle repeats.

Conditioning (see :class:`AudioCond`): a speaker id adds a learned bias to every gate (global conditioning); log-mel
frames, put through a small frame-rate convolution and brought to the sample rate, add a per-sample bias to every
gate (local conditioning, vocoder mode). ``upsample`` says how frames become samples: ``repeat`` (each frame's
features held for ``hop_length`` samples), or a learned stack, one layer per factor of ``hop_length``:
``transposed`` (transposed convolutions, as in r9y9/wavenet_vocoder) or ``nearest`` (nearest-neighbour repetition,
then a convolution). The conditioning features are a table of rows, each covering ``cond_hop`` samples
(``hop_length`` for ``repeat``, 1 for a learned stack); the sampler computes the table once per run.

Cached sampling (fast-wavenet, Paine et al. 2016): one flat ring buffer holds, per layer, the last
``(kernel_size - 1) * dilation + 1`` inputs of that layer. A step costs O(layers * channels^2) whatever the length:

1. the slots of every layer's past taps are computed on the device from ``cache.position`` (3 tiny ops);
2. all layers' past taps are read with one ``index_select`` and multiplied by their weights with one ``baddbmm``
   (the past does not depend on the current step, so this is off the sequential path);
3. per layer, in order: add the current input's tap (``addmm``), ``tanh``, the gate as one ``addcmul`` and the
   residual as one ``addmm`` (4 ops); ``sigmoid(b) = (1 + tanh(b / 2)) / 2``, so one ``tanh`` over the
   pre-activation with the sigmoid half scaled by 1/2 serves both halves, and the gate's factor 1/2 is folded into
   the residual and skip weights;
4. every layer's new input goes into the ring with one ``index_copy_``; all skips are one matrix product.

The step is one piece (:mod:`arcore.sampling.cache`): it reads its position from ``cache.position`` and the previous
code from the engine's buffer by device index, writes only the ring, and never reads a tensor back to the host, so it
can be captured once and replayed at every position. A primed prefix fills the rings from one
teacher-forced pass (:meth:`WaveNetSampler.prefill`). On the CPU in float32 the step is the fused C++ one
(:mod:`wavegen.wavenet_step`, one call per sample for the whole batch), which keeps the same state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arcore.contract import Capabilities
from arcore.errors import UsageError, check_labels, options
from arcore.files.media import Audio
from arcore.sampling.cache import Drawer, Piece, Sampler, StepCache, bias_of, previous_code
from arcore.sampling.decoding import Decoding, SampleOptions
from arcore.training.lightning_private import attached_datamodule
from arcore.training.module import AutoregressiveModule, Layers
from arcore.training.precision import float32_output
from wavegen import lpc
from wavegen.wavenet_step import FusedStep, WaveNetBuffers, gate_folded


@dataclass
class AudioCond:
    """Conditioning for a batch of clips; either field may be None.

    ``speaker``: long ``[B]`` speaker (or class) ids for global conditioning.
    ``mel``: float ``[B, n_mels, F]`` log-mel frames (see :meth:`WaveNet.log_mel`) for local conditioning; frame
    ``f`` conditions samples ``f * hop_length ... (f + 1) * hop_length - 1``, so ``F * hop_length`` must cover the
    clip. A plain long tensor may be passed instead of an ``AudioCond`` for speaker ids only.
    ``mel_lengths``: long ``[B]``, how many of each row's frames are its own (the rest is padding of a batch of
    clips of different lengths): the conditioning network then sees each row's own frames only, so a clip drawn in
    a batch is conditioned exactly as when drawn alone.

    Args:
        speaker: long ``[B]`` speaker ids, or None.
        mel: float ``[B, n_mels, F]`` log-mel frames, or None.
        mel_lengths: long ``[B]``: each row's own frames, or None when all are.
    """

    speaker: torch.Tensor | None = None
    mel: torch.Tensor | None = None
    mel_lengths: torch.Tensor | None = None

    def repeat_interleave(self, repeats: int, dim: int = 0) -> AudioCond:
        """Repeat every sample's conditioning ``repeats`` times along the batch (what beam search does).

        Args:
            repeats: copies of each sample.
            dim: the batch dimension.
        """
        rep = (lambda x: None if x is None else x.repeat_interleave(repeats, dim=dim))
        return AudioCond(rep(self.speaker), rep(self.mel), rep(self.mel_lengths))

    def to(self, device: torch.device | str) -> AudioCond:
        """This conditioning on ``device``.

        Args:
            device: where the tensors go.
        """
        move = (lambda x: None if x is None else x.to(device))
        return AudioCond(move(self.speaker), move(self.mel), move(self.mel_lengths))


def dilation_schedule(layers: int, cycles: int) -> list[int]:
    """``layers`` dilations doubling from 1 within each of ``cycles`` equal cycles."""
    if layers < 1 or cycles < 1 or layers % cycles:
        raise UsageError(f"layers ({layers}) must be a positive multiple of cycles ({cycles})")
    per_cycle = layers // cycles
    return [2 ** (i % per_cycle) for i in range(layers)]


UPSAMPLING = ("repeat", "transposed", "nearest")


def upsample_factors(hop_length: int) -> list[int]:
    """``hop_length`` as a product of small factors, one per upsampling layer: its prime factors, the two smallest
    merged while their product is at most 4 (80 -> [4, 4, 5], 256 -> [4, 4, 4, 4])."""
    primes, rest, p = [], hop_length, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    while len(primes) > 1 and primes[0] * primes[1] <= 4:
        primes = sorted([primes[0] * primes[1], *primes[2:]])
    return primes or [1]


class Upsampler(nn.Module):
    """Learned upsampling of frame-rate features ``[B, C, F]`` to ``[B, C, F * prod(scales)]``, one layer per
    scale ``s``: ``transposed``, a transposed convolution (kernel ``2 s``, stride ``s``, cropped to ``F s`` samples
    centred on the frames), or ``nearest``, each frame repeated ``s`` times, then a convolution (kernel ``2 s + 1``).
    Each layer mixes the channels and starts as a smooth interpolation between frames (identity across channels:
    linear interpolation for ``transposed``, a triangle filter over the repeated frames for ``nearest``), so
    training starts from a smooth version of ``repeat``."""

    def __init__(self, channels: int, scales: list[int], mode: str) -> None:
        super().__init__()
        self.scales, self.mode = list(scales), mode
        convs: list[nn.Module] = []
        for s in self.scales:
            conv: nn.ConvTranspose1d | nn.Conv1d
            if mode == "transposed":
                conv = nn.ConvTranspose1d(channels, channels, 2 * s, stride=s)  # weight [C_in, C_out, 2s]
                ramp = 1 - (torch.arange(2 * s) + 0.5 - s).abs() / s  # two frames' shares at every sample sum to 1
            else:
                conv = nn.Conv1d(channels, channels, 2 * s + 1, padding=s)  # weight [C_out, C_in, 2s + 1]
                ramp = (s + 1 - (torch.arange(2 * s + 1) - s).abs()) / (s + 1) ** 2  # a triangle of area 1
            with torch.no_grad():
                conv.weight.copy_(torch.eye(channels)[:, :, None] * ramp)
                bias_of(conv).zero_()
            convs.append(conv)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s, conv in zip(self.scales, self.convs):
            frames = x.shape[2]
            x = conv(x)[..., s // 2: s // 2 + frames * s] if self.mode == "transposed" \
                else conv(x.repeat_interleave(s, dim=2))
        return x


def delayed(x: torch.Tensor, lag: int) -> torch.Tensor:
    """Rows ``[B, T, C]`` delayed by ``lag`` steps along time, zeros before the start (contiguous)."""
    if lag == 0:
        return x
    return F.pad(x[:, : max(0, x.shape[1] - lag)], (0, 0, min(lag, x.shape[1]), 0))


class ResidualLayer(nn.Module):
    """One gated dilated causal convolution with its skip 1x1 and (unless last) residual 1x1.

    The weights are held as convolutions (``conv [G, R, k]``, ``skip``, ``residual``: the layout of the weights
    files), but the teacher-forced pass computes on time-major rows ``[B, T, C]``: every tap's delayed input, and the
    conditioning features, side by side in one ``[B T, k R + C]`` matrix times one weight matrix, so each layer is a
    few large matrix products (oneDNN's fast path at any batch size), with no ``[B, L gate, T]`` projection of the
    conditioning built for all layers at once."""

    def __init__(self, residual: int, gate: int, skip: int, kernel_size: int, dilation: int, last: bool) -> None:
        super().__init__()
        self.dilation = dilation
        self.lags = [(kernel_size - 1 - j) * dilation for j in range(kernel_size)]  # tap j reads x[t - lag_j]
        self.conv = nn.Conv1d(residual, gate, kernel_size, dilation=dilation)
        self.skip = nn.Conv1d(gate // 2, skip, 1)
        self.residual = None if last else nn.Conv1d(gate // 2, residual, 1)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None, feature_weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``x [B, T, R]`` to (next input ``[B, T, R]``, gate output ``z [B, T, gate / 2]``): the gate's
        pre-activation adds ``features [B, T, C] @ feature_weight [gate, C]^T`` (local conditioning) and ``bias
        [B, gate]`` (global)."""
        inputs = [delayed(x, lag) for lag in self.lags]
        weights = list(self.conv.weight.unbind(2))
        if features is not None and feature_weight is not None:
            inputs.append(features)
            weights.append(feature_weight)
        pre = F.linear(torch.cat(inputs, 2), torch.cat(weights, 1), self.conv.bias)
        if bias is not None:
            pre = pre + bias[:, None, :]
        a, b = pre.chunk(2, dim=2)
        z = torch.tanh(a) * torch.sigmoid(b)
        if self.residual is None:
            return x, z
        return torch.addmm(bias_of(self.residual), z.flatten(0, 1), self.residual.weight[:, :, 0].t(),
                           ).view_as(x) + x, z


class WaveNet(AutoregressiveModule):
    """WaveNet over ``quantization``-level mu-law codes at ``sample_rate``.

    Args:
        sample_rate: rate of the audio the model is trained on and generates (Hz).
        layers, cycles: ``layers`` gated layers whose dilations double from 1 in each of ``cycles`` cycles.
        dilations: an explicit dilation per layer instead of ``layers``/``cycles``.
        kernel_size: taps of every causal convolution.
        residual_channels, gate_channels, skip_channels: widths; the gate convolution has ``gate_channels``
            outputs, halved by the tanh * sigmoid unit.
        head_channels: width of the ReLU-1x1-ReLU-1x1 output head.
        quantization: mu-law levels (the softmax size).
        num_labels: speakers for global conditioning (0: none).
        n_mels, hop_length, cond_channels: log-mel bands for local conditioning (0: none); ``hop_length`` samples
            per frame; ``cond_channels`` features of the frame-rate conditioning network.
        upsample, upsample_scales: how frame features reach the sample rate: ``repeat``, ``transposed`` or
            ``nearest`` (see the module docstring); ``upsample_scales``: the learned stack's factors, whose product is
            ``hop_length`` (default :func:`upsample_factors`).
        cond_layers: residual layers (``x + tanh(conv_5(x))``) at frame rate after the first frame convolution
            (kernel 3), before upsampling: a non-linear conditioning network that sees 2 frames more on each side
            per layer, ``4 * cond_layers + 3`` frames in all (15 for 3). A learned upsampling stack adds the next
            frame on the side a sample is nearer (both sides in a frame's middle; ×4 ×4 ×5 ``transposed``).
        lpc_order, preemphasis: a vocoder with ``lpc_order > 0`` models the excitation of a linear predictor
            computed from its frames (:mod:`wavegen.lpc`), of the audio pre-emphasised by ``preemphasis``; its
            codes are then excitation codes and :meth:`resynthesize` turns them into audio.
        default_seconds: clip length when ``sample`` is given no length.
    """

    def __init__(self, sample_rate: int = 8000, layers: int = 20, cycles: int = 2, dilations: list[int] | None = None,
                 kernel_size: int = 2, residual_channels: int = 64, gate_channels: int = 128,
                 skip_channels: int = 64, head_channels: int = 64, quantization: int = 256, num_labels: int = 0,
                 n_mels: int = 0, hop_length: int = 80, cond_channels: int = 32, upsample: str = "repeat",
                 upsample_scales: list[int] | None = None, cond_layers: int = 0, lpc_order: int = 0,
                 preemphasis: float = 0.0, default_seconds: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 100, lr_schedule: str = "cosine") -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, lr_schedule=lr_schedule)
        dilations = list(dilations) if dilations is not None else dilation_schedule(layers, cycles)
        if not dilations or min(dilations) < 1:
            raise UsageError(f"dilations must be positive integers, got {dilations}")
        if kernel_size < 2:
            raise UsageError(f"kernel_size must be >= 2, got {kernel_size}")
        if min(residual_channels, skip_channels, head_channels, cond_channels) < 1:
            raise UsageError(f"residual, skip, head and cond channels must be >= 1, got {residual_channels}, "
                             f"{skip_channels}, {head_channels} and {cond_channels}")
        if gate_channels < 2 or gate_channels % 2:
            raise UsageError(f"gate_channels must be even (tanh half, sigmoid half), got {gate_channels}")
        if quantization < 2 or sample_rate < 1 or n_mels < 0 or num_labels < 0 or hop_length < 1:
            raise UsageError("quantization >= 2, sample_rate >= 1, hop_length >= 1, n_mels >= 0 and "
                             "num_labels >= 0 are required")
        if cond_layers < 0 or not 0 <= lpc_order <= 32 or not 0.0 <= preemphasis < 1.0:
            raise UsageError(f"cond_layers >= 0, lpc_order in [0, 32] and preemphasis in [0, 1) are required, got "
                             f"{cond_layers}, {lpc_order} and {preemphasis}")
        if (lpc_order or preemphasis or cond_layers) and not n_mels:
            raise UsageError("cond_layers, lpc_order and preemphasis shape a vocoder's conditioning: set n_mels too",
                             options("model", "n_mels"))
        if upsample not in UPSAMPLING:
            raise UsageError(f"upsample must be one of {', '.join(UPSAMPLING)}, got {upsample!r}")
        scales = list(upsample_scales) if upsample_scales is not None else upsample_factors(hop_length)
        if upsample != "repeat" and (min(scales, default=0) < 1 or math.prod(scales) != hop_length):
            raise UsageError(f"upsample_scales must be positive and multiply to hop_length ({hop_length}), "
                             f"got {scales}")
        self.save_hyperparameters()
        self.sample_rate = sample_rate
        self.dilations = dilations
        self.kernel_size = kernel_size
        self.num_classes = quantization
        self.num_labels = num_labels
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.event_shape = (max(1, round(default_seconds * sample_rate)),)
        self.embed = nn.Embedding(quantization, residual_channels)
        self.layers = Layers(
            ResidualLayer(residual_channels, gate_channels, skip_channels, kernel_size, d, i == len(dilations) - 1)
            for i, d in enumerate(dilations))
        self.head1 = nn.Conv1d(skip_channels, head_channels, 1)
        self.head2 = nn.Conv1d(head_channels, quantization, 1)
        self.speaker_embed = nn.Embedding(num_labels, len(dilations) * gate_channels) if num_labels else None
        self.upsampler: Upsampler | None = None
        if n_mels:
            import torchaudio

            self.mel_net = nn.Conv1d(n_mels, cond_channels, 3, padding=1)
            self.cond_stack = nn.ModuleList(nn.Conv1d(cond_channels, cond_channels, 5, padding=2)
                                            for _ in range(cond_layers))
            self.upsampler = None if upsample == "repeat" else Upsampler(cond_channels, scales, upsample)
            self.mel_proj = nn.Conv1d(cond_channels, len(dilations) * gate_channels, 1, bias=False)
            self.mel_transform = torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=4 * hop_length, hop_length=hop_length, n_mels=n_mels)

    @torch.no_grad()
    def round_weights_to_half(self) -> float:
        """Round the weights of the sampling step to float16 values, in place (they stay float32 tensors), and
        return the largest change. The fused CPU step then holds them as float16, unchanged, in half the bytes
        (``wavegen/wavenet_step.py``; the reference model's 1.94 MiB fit a 2 MiB L2 cache), and every path, PyTorch step
        and cache-free sampler included, computes with the same numbers. The gate's sigmoid half is rounded so
        that its half (which the step stores) is a float16 value. Biases, embeddings and the conditioning network
        stay as they are. The shipped models' test bits/sample moved in the sixth decimal (README).
        """
        def rounded(weight: torch.Tensor) -> torch.Tensor:
            return weight.to(torch.float16).to(weight.dtype)

        gate = self.hparams.gate_channels
        gates = [layer.conv.weight for layer in self.layers] + ([self.mel_proj.weight] if self.n_mels else [])
        others = [layer.skip.weight for layer in self.layers] + [self.head1.weight, self.head2.weight]
        others += [layer.residual.weight for layer in self.layers if layer.residual is not None]
        targets = [(w, gate_folded(rounded(gate_folded(w, gate)), gate, undo=True)) for w in gates]
        targets += [(w, rounded(w)) for w in others]
        if not all(torch.isfinite(value).all() for _, value in targets):  # checked before any weight changes
            raise UsageError("a weight is beyond float16's range (65504): this model cannot hold float16 weights; "
                             "leave out --half-weights")
        change = max((value - weight).abs().max().item() for weight, value in targets)
        for weight, value in targets:
            weight.copy_(value)
        return change

    @property
    def receptive_field(self) -> int:
        """How many past codes a prediction can see."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    def event_shape_for(self, length: int | None) -> tuple[int, ...]:
        """``(length,)``; ``default_seconds`` of audio when no length is given."""
        if length is None:
            return self.event_shape
        if int(length) < 1:
            raise UsageError(f"length must be >= 1 sample, got {length}")
        return (int(length),)

    # ----- conditioning -----------------------------------------------------------------------------------------
    def log_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """Log-mel frames ``[B, n_mels, T // hop_length + 1]`` of the audio that mu-law codes ``[B, T]`` decode to.

        Args:
            codes: mu-law codes ``[B, T]``.
        """
        if not self.n_mels:
            raise UsageError("this model has no local conditioning (train with n_mels > 0)", options("model", "n_mels"))
        window = self.mel_transform.n_fft
        if codes.shape[-1] <= window // 2:  # the transform pads each end by half a window, reflecting the clip
            raise UsageError(f"{codes.shape[-1]} samples are too few for a mel frame: it needs more than "
                             f"{window // 2} (for training crops, raise the data's target_length)",
                             {"the data's target_length": "--data.target_length"})
        return self.mel_transform(decode_mu_law(codes, self.num_classes).to(self.dtype)).clamp(min=1e-5).log10()

    @property
    def predictive(self) -> bool:
        """Whether the codes are the excitation of a linear predictor computed from the frames (``lpc_order > 0``),
        rather than the audio itself."""
        return bool(self.hparams.get("lpc_order", 0))

    def lpc_filters(self, mel: torch.Tensor) -> torch.Tensor:
        """The prediction filters ``[B, F, lpc_order + 1]`` (float64) of log-mel frames ``[B, n_mels, F]``.

        Args:
            mel: log-mel frames ``[B, n_mels, F]``.
        """
        return lpc.lpc_from_mel(mel, self.mel_transform.mel_scale.fb, self.hparams.lpc_order,
                                self.hparams.preemphasis, self.sample_rate)

    def excitation_codes(self, codes: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """The codes a predictive vocoder models for audio codes ``[B, T]`` with frames ``mel`` (their own log-mel):
        the mu-law codes of the excitation of the pre-emphasised audio.

        Args:
            codes: mu-law audio codes ``[B, T]``.
            mel: their own log-mel frames.
        """
        import torchaudio.functional as AF

        audio = lpc.preemphasize(decode_mu_law(codes, self.num_classes).float(), self.hparams.preemphasis)
        excitation = lpc.analysis(audio, self.lpc_filters(mel), self.hop_length)
        return AF.mu_law_encoding(excitation.clamp(-1.0, 1.0), self.num_classes)

    def excitation_to_audio(self, codes: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Float audio ``[B, T]`` in [-1, 1] of a predictive vocoder's excitation codes ``[B, T]`` under frames
        ``mel``: the synthesis filter, then the de-emphasis (the inverse of :meth:`excitation_codes` up to the
        mu-law steps).

        Args:
            codes: excitation codes ``[B, T]``.
            mel: the frames they were drawn under.
        """
        audio = lpc.synthesis(decode_mu_law(codes, self.num_classes), self.lpc_filters(mel), self.hop_length,
                              self.hparams.preemphasis)
        return audio.clamp(-1.0, 1.0).to(codes.device)

    @property
    def vocoder(self) -> bool:
        """Whether the model is conditioned on log-mel frames (it then resynthesises audio rather than sampling it
        unconditionally)."""
        return bool(self.n_mels)

    @property
    def cond_hop(self) -> int:
        """Samples covered by one row of the conditioning table (:meth:`cond_features`)."""
        return self.hop_length if self.upsampler is None else 1

    def _split_cond(self, cond: AudioCond | torch.Tensor | None, batch: int, length: int
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Checked (speaker ids, mel frames, frames per row) from what the caller passed."""
        if not isinstance(cond, AudioCond):
            cond = AudioCond(speaker=cond)
        speaker = check_labels(cond.speaker, self.num_labels, batch)
        mel = cond.mel
        if not self.n_mels:
            if mel is not None:
                raise UsageError("this model was trained without mel conditioning: do not pass mel frames")
            return speaker, None, None
        if mel is None:
            raise UsageError(f"this model is a vocoder: pass log-mel frames [B, {self.n_mels}, F] as "
                             f"cond=AudioCond(mel=model.log_mel(codes))",
                             {f"log-mel frames [B, {self.n_mels}, F] as cond=AudioCond(mel=model.log_mel(codes))":
                              "its log-mel frames with --mel-from clip.wav"})
        frames = -(-length // self.hop_length)
        if mel.dim() != 3 or mel.shape[0] != batch or mel.shape[1] != self.n_mels or mel.shape[2] < frames:
            raise UsageError(f"mel frames must have shape [{batch}, {self.n_mels}, >= {frames}] for {length} "
                             f"samples at hop {self.hop_length}, got {list(mel.shape)}")
        lengths = cond.mel_lengths
        if lengths is not None and (lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > mel.shape[2]):
            raise UsageError(f"mel_lengths must hold {batch} frame counts in [1, {mel.shape[2]}]")
        return speaker, mel.to(self.dtype), lengths

    def cond_features(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning table ``[B, cond_channels, rows]`` of mel frames ``[B, n_mels, F]``, one row per
        :attr:`cond_hop` samples. With ``lengths`` each row of the batch is computed from its own frames alone and
        zero beyond them.

        Args:
            mel: log-mel frames ``[B, n_mels, F]``.
            lengths: long ``[B]``: each row's own frames, or None.
        """
        def table(frames: torch.Tensor) -> torch.Tensor:
            x = torch.tanh(self.mel_net(frames))
            for conv in self.cond_stack:
                x = x + torch.tanh(conv(x))
            return x if self.upsampler is None else self.upsampler(x)

        if lengths is None:
            return table(mel)
        rows = mel.shape[2] * self.hop_length // self.cond_hop
        out = mel.new_zeros(mel.shape[0], self.hparams.cond_channels, rows)
        for i, n in enumerate(lengths.tolist()):  # once per run, before any step
            own = table(mel[i: i + 1, :, :n])
            out[i, :, : own.shape[2]] = own[0]
        return out

    # ----- teacher-forced pass ----------------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, cond: AudioCond | torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, quantization]``; position t depends only on codes < t (and on ``cond``)."""
        return self._teacher_forced(codes, cond)

    def _teacher_forced(self, codes: torch.Tensor, cond: AudioCond | torch.Tensor | None,
                        inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The teacher-forced pass; appends every layer's input ``[B, R, T]`` to ``inputs`` when given (prefill)."""
        self.check_codes(codes)
        batch, length = codes.shape
        speaker, mel, mel_lengths = self._split_cond(cond, batch, length)
        n_layers, gate = len(self.layers), self.hparams.gate_channels
        x = delayed(self.embed(codes), 1)  # [B, T, R]: the input at t is code t - 1
        # per-layer pieces as views of one tensor each (unbind: the backward pass stacks the layers' gradients
        # once, where indexing a layer would add its gradient into a zero tensor the size of all of them)
        global_bias = None if speaker is None or self.speaker_embed is None else \
            self.speaker_embed(speaker).view(batch, n_layers, gate).unbind(1)
        features: torch.Tensor | None = None
        feature_weights: Sequence[torch.Tensor | None] = [None] * n_layers
        if mel is not None:  # each sample's row of the conditioning table; every layer projects it itself
            table = self.cond_features(mel, mel_lengths).transpose(1, 2)  # [B, rows, C]
            frames = torch.arange(length, device=codes.device) // self.cond_hop
            features = table[:, :length] if self.cond_hop == 1 else table.index_select(1, frames)
            feature_weights = self.mel_proj.weight[:, :, 0].view(n_layers, gate, -1).unbind(0)
        skip = torch.stack([bias_of(layer.skip) for layer in self.layers]).sum(0)  # every skip's bias, added once
        for i, layer in enumerate(self.layers):
            if inputs is not None:
                inputs.append(x.transpose(1, 2))
            x, z = layer(x, features, feature_weights[i], None if global_bias is None else global_bias[i])
            skip = torch.addmm(skip, z.flatten(0, 1), layer.skip.weight[:, :, 0].t())  # [B T, S]
        hidden = F.relu(F.linear(F.relu(skip), self.head1.weight[:, :, 0], self.head1.bias))
        logits = float32_output(lambda h: F.linear(h, self.head2.weight[:, :, 0], self.head2.bias), hidden)
        return logits.view(batch, length, -1)

    def unpack(self, batch: Any) -> tuple[torch.Tensor, AudioCond | torch.Tensor | None]:
        """``(codes, speakers)`` from the data module to codes and this model's conditioning."""
        codes, speakers = batch
        speaker = speakers if self.num_labels else None
        if self.n_mels:
            mel = self.log_mel(codes)
            return (self.excitation_codes(codes, mel) if self.predictive else codes), AudioCond(speaker, mel)
        return codes, speaker

    def render_samples(self, codes: torch.Tensor) -> Audio:
        return Audio(decode_mu_law(codes, self.num_classes), self.sample_rate)

    renders = Audio

    @property
    def capabilities(self) -> Capabilities:
        """A vocoder resynthesises; every WaveNet's weights may be rounded to float16 values."""
        return Capabilities(resynthesis=self.vocoder, half_weights=True, codes_per_second=self.sample_rate)

    def setup(self, stage: str) -> None:
        datamodule = attached_datamodule(self)
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and rate != self.sample_rate:
            raise UsageError(f"the data is resampled to {rate} Hz but the model is built for {self.sample_rate} Hz: "
                             f"set the data's sample_rate={self.sample_rate} or the model's sample_rate={rate}",
                             {"the data's sample_rate=": "--data.sample_rate ",
                              "the model's sample_rate=": "--model.init_args.sample_rate "})
        if not hasattr(datamodule, "num_speakers"):
            return
        speakers = datamodule.num_speakers
        if self.num_labels and self.num_labels < speakers:
            raise UsageError(f"the data has {speakers} speakers but the model only {self.num_labels}: "
                             f"set num_labels={speakers}", options("model", "num_labels"))
        if self.num_labels and not speakers:
            raise UsageError("the model is speaker-conditioned but the data has no speaker labels: "
                             "set the data's speaker_pattern", {"the data's speaker_pattern": "--data.speaker_pattern"})

    # ----- cached sampling --------------------------------------------------------------------------------------
    def sampler(self, batch_size: int, cond: AudioCond | torch.Tensor | None, event_shape: tuple[int, ...]
                ) -> WaveNetSampler:
        """The fast-wavenet sampler: ring buffers of every layer's past inputs, one step piece."""
        return WaveNetSampler(self, batch_size, cond, event_shape)

    @torch.no_grad()
    def resynthesize(self, clips: Sequence[torch.Tensor], speakers: torch.Tensor | None = None, *,
                     options: SampleOptions | None = None, generator: torch.Generator | None = None,
                     **settings: Any) -> list[torch.Tensor]:
        """Draw one batch: a waveform (mu-law audio codes) for each clip of codes ``[T_i]`` from the clip's own log-mel
        frames (and ``speakers [B]`` for a speaker-conditioned model), each as long as its clip. Clips of different
        lengths are drawn together: their frames are padded to the longest, and each row is conditioned on its own
        frames only (``AudioCond.mel_lengths``), so a clip comes out as it would alone from the same noise.
        ``options`` and ``settings`` as for :meth:`sample`.

        Args:
            clips: mu-law codes ``[T_i]`` of each clip.
            speakers: long ``[B]`` speaker ids, for a speaker-conditioned model.
            options: how to draw (:class:`arcore.sampling.decoding.SampleOptions`).
            generator: the random generator of the draws.
            settings: fields of ``options`` replaced by name.
        """
        if not self.vocoder:
            raise UsageError("this model has no local conditioning: it cannot resynthesise audio from mel frames")
        mels = [self.log_mel(clip.to(self.device)[None]) for clip in clips]
        frames = max(mel.shape[2] for mel in mels)
        lengths = torch.tensor([mel.shape[2] for mel in mels], device=self.device)
        padded = torch.cat([F.pad(mel, (0, frames - mel.shape[2])) for mel in mels])
        cond = AudioCond(speakers, padded, None if bool((lengths == frames).all()) else lengths)
        codes = self.sample(len(clips), cond=cond, length=max(len(clip) for clip in clips), options=options,
                            generator=generator, **settings)
        if self.predictive:  # excitation codes to audio, and the audio to mu-law codes like the clips given
            import torchaudio.functional as AF

            codes = AF.mu_law_encoding(self.excitation_to_audio(codes, padded), self.num_classes)
        return [row[: len(clip)] for row, clip in zip(codes, clips)]


class WaveNetSampler(Sampler):
    """Ring buffers and the weights folded for one step (see the module docstring), built once per run.

    State (:class:`wavegen.wavenet_step.WaveNetBuffers`, B = batch): ``ring [sum_l ((k-1) d_l + 1), B, R]`` (layer
    l's input at time t in row ``offset_l + t % size_l``), ``gate_bias [B, L gate]`` and, with mel conditioning,
    ``mel_frames [rows, B, cond_channels]``, the conditioning table computed once here (row = t //
    ``model.cond_hop``: frames for ``repeat``, samples for a learned upsampling). Nothing else: a step's
    intermediate values are its own temporaries.
    """

    @torch.no_grad()
    def __init__(self, model: WaveNet, batch_size: int, cond: AudioCond | torch.Tensor | None,
                 event_shape: tuple[int, ...]) -> None:
        (length,) = event_shape
        speaker, mel, mel_lengths = model._split_cond(cond, batch_size, length)
        super().__init__(StepCache(batch_size, model.device, model.dtype))
        self.model, self.cond = model, cond
        cache, hp = self.cache, model.hparams
        n_layers, k, res, gate = len(model.layers), model.kernel_size, hp.residual_channels, hp.gate_channels
        device = model.device

        # ring slots: layer l owns [offset_l, offset_l + size_l); past tap m of layer l lags m * d_l samples
        self.sizes = [(k - 1) * d + 1 for d in model.dilations]
        self.offsets = [sum(self.sizes[:i]) for i in range(n_layers)]
        lags, slot_sizes, slot_offsets = [], [], []
        for lag_of_tap in ([m * d for m in range(1, k)] for d in model.dilations):
            lags += lag_of_tap
        for i in range(n_layers):
            slot_sizes += [self.sizes[i]] * (k - 1)
            slot_offsets += [self.offsets[i]] * (k - 1)
        lags += [0] * n_layers  # then where each layer's current input is written
        slot_sizes += self.sizes
        slot_offsets += self.offsets
        as_long = (lambda v: torch.tensor(v, dtype=torch.long, device=device))
        self.lags, self.slot_sizes, self.slot_offsets = as_long(lags), as_long(slot_sizes), as_long(slot_offsets)
        self.n_past = n_layers * (k - 1)
        ring = cache.alloc("ring", (sum(self.sizes), batch_size, res), batch_dim=1)

        # sigmoid(b) = (1 + tanh(b/2)) / 2: every contribution to the sigmoid half is scaled by 1/2 (gate_folded)
        weights = gate_folded(torch.stack([layer.conv.weight for layer in model.layers]), gate, dim=1)  # [L, G, R, k]
        # tap j of the kernel reads x[t - (k - 1 - j) d]: past taps m = 1..k-1 are j = k-1-m
        self.w_past = weights.flip(3)[..., 1:].permute(0, 3, 2, 1).reshape(n_layers, (k - 1) * res, gate) \
            .contiguous()  # [L, (k-1) R, G]: a strided view for k = 2, which bmm would copy at every step
        self.w_cur = weights[..., k - 1].transpose(1, 2).contiguous()  # [L, R, G]
        gate_bias = gate_folded(torch.cat([bias_of(layer.conv) for layer in model.layers]), gate)
        gate_bias = gate_bias.expand(batch_size, -1).clone()
        if speaker is not None and model.speaker_embed is not None:
            gate_bias += gate_folded(model.speaker_embed(speaker), gate, dim=1)
        mel_frames = None
        if mel is not None:
            features = model.cond_features(mel, mel_lengths).permute(2, 0, 1).contiguous()  # [rows, B, C]
            mel_frames = cache.register("mel_frames", features, batch_dim=1)
            self.w_mel = gate_folded(model.mel_proj.weight[:, :, 0], gate).t()
        self.buffers = WaveNetBuffers(ring, cache.register("gate_bias", gate_bias), mel_frames)
        # the gate gives z = 2 tanh(a) sigmoid(b): the residual and skip 1x1s take half of it
        residuals = [layer.residual for layer in model.layers if layer.residual is not None]  # the last layer has none
        self.w_res = [0.5 * residual.weight[:, :, 0].t() for residual in residuals]
        self.b_res = [bias_of(residual) for residual in residuals]
        self.w_skip = torch.cat([0.5 * layer.skip.weight[:, :, 0].t() for layer in model.layers])  # [L half, S]
        self.b_skip = torch.stack([bias_of(layer.skip) for layer in model.layers]).sum(0)
        self.w_head1, self.b_head1 = model.head1.weight[:, :, 0].t(), bias_of(model.head1)
        self.w_head2, self.b_head2 = model.head2.weight[:, :, 0].t(), bias_of(model.head2)
        self.embed = model.embed.weight
        self.step = FusedStep(model, cache, self.buffers, model.cond_hop) if FusedStep.applies(model) else self._step

    def capturable(self, piece: Piece) -> bool:
        return not isinstance(piece, FusedStep)  # already one call per step

    def drawer(self, decoding: Decoding) -> Drawer | None:
        return self.step.drawer(decoding) if isinstance(self.step, FusedStep) else None

    def _step(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, quantization]`` at ``cache.position`` from the ring buffers and the previous code.

        Written without ``out=`` or writes into views: the only write is the ring's, so a compiled step
        (torch.compile functionalises every in-place op on a view into copies of its base) stays as lean as the
        eager one, and a CUDA graph replays the eager kernels."""
        c, buffers, half = self.cache, self.buffers, self.w_cur.shape[2] // 2
        batch, n_layers = c.batch_size, self.w_cur.shape[0]
        slots = (c.position - self.lags).remainder(self.slot_sizes) + self.slot_offsets
        x = F.embedding(previous_code(seq, c.position), self.embed) * c.position.gt(0)  # silence at position 0
        taps = buffers.ring.index_select(0, slots[: self.n_past])  # [L (k-1), B, R]
        bias = buffers.gate_bias
        if buffers.mel_frames is not None:
            row = torch.div(c.position, self.model.cond_hop, rounding_mode="floor").view(1)
            bias = torch.addmm(bias, buffers.mel_frames.index_select(0, row)[0], self.w_mel)
        taps = taps.view(n_layers, -1, batch, taps.shape[2]).transpose(1, 2).flatten(2)  # [L, B, (k-1) R]
        pre = torch.bmm(taps, self.w_past) + bias.view(batch, n_layers, -1).transpose(0, 1)  # [L, B, G]
        inputs, gates = [], []
        for i in range(n_layers):
            inputs.append(x)
            act = torch.addmm(pre[i], x, self.w_cur[i]).tanh_()
            gates.append(torch.addcmul(act[:, :half], act[:, :half], act[:, half:]))  # 2 tanh(a) sigmoid(b)
            if i + 1 < n_layers:
                x = torch.addmm(x + self.b_res[i], gates[-1], self.w_res[i])
        buffers.ring.index_copy_(0, slots[self.n_past:], torch.stack(inputs))
        skip = torch.addmm(self.b_skip, torch.cat(gates, 1), self.w_skip).relu_()
        hidden = torch.addmm(self.b_head1, skip, self.w_head1).relu_()
        return torch.addmm(self.b_head2, hidden, self.w_head2)

    @torch.no_grad()
    def prefill(self, seq: torch.Tensor, length: int) -> None:
        """Every layer's inputs over the prefix from one teacher-forced pass, the last ``size_l`` of them written
        into layer l's ring rows as stepping would have left them."""
        inputs: list[torch.Tensor] = []
        self.model._teacher_forced(seq[:, :length], self.cond, inputs)
        for x, size, offset in zip(inputs, self.sizes, self.offsets):
            times = torch.arange(max(0, length - size), length, device=seq.device)
            self.buffers.ring.index_copy_(0, offset + times % size, x.index_select(2, times).permute(2, 0, 1))
        self.cache.position.fill_(length)


def decode_mu_law(codes: torch.Tensor, quantization: int = 256) -> torch.Tensor:
    """Mu-law codes to float audio in [-1, 1]."""
    import torchaudio.functional as AF

    return AF.mu_law_decoding(codes, quantization)
