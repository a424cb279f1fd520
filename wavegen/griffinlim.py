"""Audio from log-mel frames without a trained model: two classical inversions, side by side.

The frames are the project's (:meth:`wavegen.wavenet.WaveNet.log_mel`, :class:`MelFrames`): the power spectrogram
of a Hann-windowed STFT (``n_fft`` samples, 4 hops unless set), summed into ``n_mels`` HTK mel bands without
normalisation, clamped at 1e-5 and taken as log10.

- :func:`mel_griffin_lim` (``method="mel"``, the default of ``wavegen griffin-lim``): start from random phase
  (seeded) and a flat magnitude, then alternate ``iterations`` times: rescale every STFT bin so that each frame's
  band powers match the frames (each bin's power gain is the filter-weighted mean of its bands' target-to-current
  power ratios; a band at the 1e-5 floor only says its power is at most that, so it is never raised), then make
  the spectrogram consistent (``istft`` then ``stft``) with fast Griffin-Lim's momentum (Perraudin et al. 2013).
  Within-band detail, such as the harmonics of a voice, comes from the consistency step: a spectrogram of real
  audio with these band powers.
- :func:`least_squares_griffin_lim` (``method="least-squares"``): torchaudio alone, the least-squares linear
  spectrogram under the filterbank (``InverseMelScale``, minimum norm), then ``GriffinLim`` from a zero phase; the
  baseline that ``wavegen test`` has scored since its first vocoder.

Where the frames hold about one value per sample (80 bands at hop 80), the first comes near the 8-bit mu-law
ceiling on held-out speech; with fewer values per sample both lose what the frames do not hold, which is where a
trained vocoder has room to win (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from arcore.errors import UsageError

if TYPE_CHECKING:
    from wavegen.wavenet import WaveNet

FLOOR = 1e-5
"""The band power below which the frames hold 1e-5 (``log10`` gives -5): a band there is quiet, by how much unknown."""
METHODS = ("mel", "least-squares")
"""The inversions :meth:`MelFrames.resynthesize` and ``wavegen griffin-lim --method`` offer."""


@dataclass(frozen=True)
class MelFrames:
    """A layout of log-mel frames, computed as :meth:`wavegen.wavenet.WaveNet.log_mel` computes them.

    Args:
        sample_rate: the audio's rate (Hz); the bands span 0 to half of it.
        n_mels: mel bands per frame.
        hop_length: samples from one frame to the next.
        n_fft: the STFT's window (and FFT size) in samples; None: ``4 * hop_length``, the vocoder's.
    """

    sample_rate: int = 8000
    n_mels: int = 80
    hop_length: int = 80
    n_fft: int | None = None
    _filterbank: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict, init=False, repr=False,
                                                                    compare=False)  # by device and dtype

    def __post_init__(self) -> None:
        n_fft = 4 * self.hop_length if self.n_fft is None else self.n_fft
        if self.sample_rate < 1 or self.n_mels < 1 or self.hop_length < 1 or n_fft < 2 * self.hop_length:
            raise UsageError(f"mel frames need sample_rate >= 1, n_mels >= 1, hop_length >= 1 and n_fft >= "
                             f"2 * hop_length (the Hann windows must overlap to be inverted), got {self.sample_rate}, "
                             f"{self.n_mels}, {self.hop_length} and {n_fft}")
        object.__setattr__(self, "n_fft", n_fft)

    @classmethod
    def of(cls, model: WaveNet | MelFrames) -> MelFrames:
        """The layout of a vocoder's frames (its ``mel_transform``); a layout is returned as it is.

        Args:
            model: a vocoder (:class:`wavegen.wavenet.WaveNet` with mel conditioning) or a layout.
        """
        if isinstance(model, MelFrames):
            return model
        if not getattr(model, "n_mels", 0):
            raise UsageError("this model has no log-mel frames (it is not a vocoder)")
        transform = model.mel_transform
        return cls(transform.sample_rate, transform.n_mels, transform.hop_length, transform.n_fft)

    @property
    def fft_size(self) -> int:
        """The STFT's window (and FFT size) in samples: ``n_fft``, or ``4 * hop_length`` when it was not given."""
        return 4 * self.hop_length if self.n_fft is None else self.n_fft

    @property
    def min_length(self) -> int:
        """The fewest samples a frame can be computed from: the STFT pads each end by reflection, which needs more
        than half a window."""
        return self.fft_size // 2 + 1

    def frames(self, length: int) -> int:
        """How many frames ``length`` samples give.

        Args:
            length: samples of audio.
        """
        return length // self.hop_length + 1

    def filterbank(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The mel filterbank ``[n_fft // 2 + 1, n_mels]`` (torchaudio's ``melscale_fbanks``, HTK, no norm).

        Args:
            device: where the filterbank is wanted.
            dtype: its float type.
        """
        key = (str(device), dtype)
        if key not in self._filterbank:
            import torchaudio.functional as AF

            self._filterbank[key] = AF.melscale_fbanks(self.fft_size // 2 + 1, 0.0, float(self.sample_rate // 2),
                                                       self.n_mels, self.sample_rate).to(device, dtype)
        return self._filterbank[key]

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """The complex STFT ``[..., n_fft // 2 + 1, frames]`` of float audio ``[..., T]`` (Hann window, centred).

        Args:
            audio: float audio ``[..., T]``.
        """
        window = torch.hann_window(self.fft_size, device=audio.device, dtype=audio.dtype)
        flat = audio.reshape(-1, audio.shape[-1])
        spec = torch.stft(flat, self.fft_size, self.hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True)
        return spec.reshape(*audio.shape[:-1], *spec.shape[-2:])

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Float audio ``[..., length]`` of a complex STFT ``[..., n_fft // 2 + 1, frames]``: the least-squares
        inverse of :meth:`stft`.

        Args:
            spec: a complex STFT ``[..., n_fft // 2 + 1, frames]``.
            length: samples of the audio wanted.
        """
        window = torch.hann_window(self.fft_size, device=spec.device, dtype=spec.real.dtype)
        flat = spec.reshape(-1, *spec.shape[-2:])
        audio = torch.istft(flat, self.fft_size, self.hop_length, window=window, center=True, length=length)
        return audio.reshape(*spec.shape[:-2], length)

    def band_powers(self, power: torch.Tensor) -> torch.Tensor:
        """Mel band powers ``[..., n_mels, F]`` of a power spectrogram ``[..., n_fft // 2 + 1, F]``.

        Args:
            power: a power spectrogram ``[..., n_fft // 2 + 1, F]``.
        """
        return torch.matmul(power.transpose(-1, -2), self.filterbank(power.device, power.dtype)).transpose(-1, -2)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel frames ``[..., n_mels, T // hop_length + 1]`` of float audio ``[..., T]``.

        Args:
            audio: float audio ``[..., T]`` at :attr:`sample_rate`.
        """
        if audio.shape[-1] < self.min_length:
            raise UsageError(f"{audio.shape[-1]} samples are too few for a mel frame: it needs more than "
                             f"{self.fft_size // 2}")
        return self.band_powers(self.stft(audio).abs().pow(2)).clamp(min=FLOOR).log10()

    def resynthesize(self, audio: torch.Tensor, method: str = "mel", *, iterations: int = 100,
                     momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
        """Float audio as long as ``audio [T]`` (or ``[B, T]``), resynthesised from its own frames by a classical
        inversion: what a vocoder given those frames has to beat.

        Args:
            audio: float audio at :attr:`sample_rate`.
            method: ``mel`` (:func:`mel_griffin_lim`) or ``least-squares`` (:func:`least_squares_griffin_lim`).
            iterations, momentum, seed: as for :func:`mel_griffin_lim` (``least-squares`` starts from zero phase
                and takes no seed).
        """
        if method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        mel, length = self.log_mel(audio), audio.shape[-1]
        if method == "mel":
            return mel_griffin_lim(mel, self.sample_rate, self.hop_length, n_fft=self.fft_size, length=length,
                                   iterations=iterations, momentum=momentum, seed=seed)
        return least_squares_griffin_lim(mel, self.sample_rate, self.hop_length, n_fft=self.fft_size, length=length,
                                         iterations=iterations, momentum=momentum)

    def check(self, mel: torch.Tensor, length: int | None) -> int:
        """The audio length for frames ``mel [..., n_mels, F]`` of this layout (``length``, or
        ``hop_length * (F - 1)``), refused in one line when the frames do not fit it.

        Args:
            mel: frames ``[..., n_mels, F]``.
            length: the audio's length, or None for the frames' own.
        """
        frames = mel.shape[-1]
        length = self.hop_length * (frames - 1) if length is None else int(length)
        if length < self.min_length or self.frames(length) != frames:
            raise UsageError(f"{frames} frames at hop {self.hop_length} are the frames of "
                             f"{self.hop_length * (frames - 1)} to {self.hop_length * frames - 1} samples, "
                             f"at least {self.min_length}; got a length of {length}")
        return length


def _layout(mel: torch.Tensor, sample_rate: int, hop_length: int, n_fft: int | None, length: int | None,
            iterations: int, momentum: float) -> tuple[MelFrames, int]:
    """The layout of frames ``mel`` and the length of their audio, every setting checked in one line."""
    if mel.dim() not in (2, 3) or min(mel.shape) < 1:
        raise UsageError(f"mel frames must have shape [n_mels, F] or [B, n_mels, F], got {list(mel.shape)}")
    if not bool(torch.isfinite(mel).all()):
        raise UsageError("the mel frames hold values that are not finite")
    if iterations < 0 or not 0.0 <= momentum < 1.0:
        raise UsageError(f"iterations must be >= 0 and momentum in [0, 1), got {iterations} and {momentum}")
    layout = MelFrames(sample_rate, mel.shape[-2], hop_length, n_fft)
    return layout, layout.check(mel, length)


def mel_griffin_lim(mel: torch.Tensor, sample_rate: int = 8000, hop_length: int = 80, *, n_fft: int | None = None,
                    length: int | None = None, iterations: int = 100, momentum: float = 0.99,
                    seed: int = 0) -> torch.Tensor:
    """Mel-constrained Griffin-Lim: float audio in [-1, 1] from log-mel frames alone (see the module docstring).

    Args:
        mel: log10 mel band powers ``[n_mels, F]`` or a batch ``[B, n_mels, F]``, as :meth:`MelFrames.log_mel`
            (or a vocoder's ``log_mel``) computes them.
        sample_rate, hop_length, n_fft: the frames' layout (:class:`MelFrames`).
        length: samples of audio to make (default ``hop_length * (F - 1)``); the frames must be that many samples'.
        iterations: rescaling and consistency rounds.
        momentum: fast Griffin-Lim's extrapolation of the consistent spectrogram, in [0, 1) (0: plain
            Griffin-Lim).
        seed: the seed of the random starting phase, the same for every row of a batch: the same frames and seed
            give the same audio, alone or in a batch.

    Returns:
        audio ``[T]`` or ``[B, T]`` (float32, or float64 for float64 frames), on the frames' device.
    """
    layout, length = _layout(mel, sample_rate, hop_length, n_fft, length, iterations, momentum)
    dtype = torch.float64 if mel.dtype == torch.float64 else torch.float32
    target = torch.pow(10.0, mel.to(dtype))
    quiet = mel.to(dtype) <= math.log10(FLOOR) + 1e-6  # at the floor: at most this quiet, not exactly
    fb = layout.filterbank(mel.device, dtype)
    coverage = fb.sum(1, keepdim=True)  # bins in no band (0 Hz, half the rate) are left silent

    def rescaled(spec: torch.Tensor) -> torch.Tensor:
        ratio = target / layout.band_powers(spec.abs().pow(2)).clamp(min=1e-30)
        ratio = torch.where(quiet, ratio.clamp(max=1.0), ratio)
        gain = torch.matmul(fb, ratio) / coverage.clamp(min=1e-30)
        return spec * gain.sqrt()

    bins = (layout.fft_size // 2 + 1, mel.shape[-1])  # one starting phase for every row: a clip comes out as alone
    phase = 2 * math.pi * torch.rand(bins, generator=torch.Generator().manual_seed(seed)).to(dtype)  # any dtype
    spec = torch.polar(torch.ones(*mel.shape[:-2], *bins, dtype=dtype), phase.expand(*mel.shape[:-2], *bins))
    spec = spec.to(mel.device)
    previous = None
    for _ in range(iterations):
        consistent = layout.stft(layout.istft(rescaled(spec), length))
        spec = consistent if previous is None else consistent + momentum * (consistent - previous)
        previous = consistent
    return layout.istft(rescaled(spec), length).clamp(-1.0, 1.0)


def least_squares_griffin_lim(mel: torch.Tensor, sample_rate: int = 8000, hop_length: int = 80, *,
                              n_fft: int | None = None, length: int | None = None, iterations: int = 100,
                              momentum: float = 0.99) -> torch.Tensor:
    """torchaudio's inversion: the least-squares linear spectrogram of the frames under the filterbank
    (``InverseMelScale``, minimum norm), then ``GriffinLim`` from a zero phase (so it is the same at every run).

    Args:
        mel, sample_rate, hop_length, n_fft, length, iterations, momentum: as for :func:`mel_griffin_lim`.

    Returns:
        float32 audio ``[T]`` or ``[B, T]`` in [-1, 1], on the CPU.
    """
    import torchaudio.transforms as T

    layout, length = _layout(mel, sample_rate, hop_length, n_fft, length, iterations, momentum)
    inverse = T.InverseMelScale(layout.fft_size // 2 + 1, layout.n_mels, sample_rate,
                                driver="gelsd")  # some low bands are narrower than a bin: the filterbank lacks rank
    phase = T.GriffinLim(layout.fft_size, iterations, hop_length=hop_length, power=2.0, momentum=momentum,
                         rand_init=False, length=length)
    return phase(inverse(torch.pow(10.0, mel.detach().float().cpu()))).clamp(-1.0, 1.0)
