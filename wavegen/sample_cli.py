"""What ``wavegen sample`` does once its options are parsed (:mod:`wavegen.cli`): WAV clips drawn from a WaveNet,
continued from a prime, or resynthesised by a vocoder from the log-mel frames of ``--mel-from`` inputs, through
:class:`arcore.cli.sample.SampleRun`; and ``wavegen griffin-lim``, the same inputs resynthesised from their frames by
a classical inversion that needs no model (:mod:`wavegen.griffinlim`).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from arcore.cli.chunks import draw_in_chunks, interrupted_exit, rows
from arcore.cli.sample import SampleRun, check_fits_in_memory, check_sample_args, output_path
from arcore.errors import UsageError, options
from arcore.files.atomic import check_output, output_lock, refuse_replacing_inputs
from arcore.files.media import save_wav
from arcore.sampling.decoding import SampleOptions
from wavegen.data import AUDIO_SUFFIXES, mu_law_encode, read_audio, why_unusable
from wavegen.griffinlim import MelFrames
from wavegen.wavenet import WaveNet
from wavegen.wavenet_step import FusedStep, weight_dtype


def _audio_of(path: str | Path, sample_rate: int, option: str) -> torch.Tensor:
    """An audio file as float audio ``[T]`` at ``sample_rate``, with a one-line error if it cannot be read."""
    if not Path(path).is_file():
        raise UsageError(f"{option} {path} does not exist")
    try:
        clip = read_audio(path, sample_rate)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for unreadable files
        raise UsageError(f"{option} {path}: {why_unusable(exc)}") from None
    if clip.numel() == 0 or not torch.isfinite(clip).all():
        raise UsageError(f"{option} {path} holds no samples, or samples that are not finite")
    return clip


def _codes_of(path: str, model: WaveNet, option: str) -> torch.Tensor:
    """An audio file as the model's mu-law codes ``[T]``, with a one-line error if it cannot be read."""
    return mu_law_encode(_audio_of(path, model.sample_rate, option), model.num_classes).to(model.device)


def _mel_inputs(paths: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """The audio files that ``--mel-from`` names (folders searched recursively), and each one's output name relative
    to the output folder (a folder's files keep their place under it)."""
    files, names = [], []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise UsageError(f"--mel-from {given} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            files += found
            names += [p.relative_to(given).with_suffix(".wav") for p in found]
        elif not given.exists():
            raise UsageError(f"--mel-from {given} does not exist")
        else:
            files.append(given)
            names.append(Path(given.name).with_suffix(".wav"))
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise UsageError(f"--mel-from: two inputs would both be written as {twice}: resynthesise them separately")
    return files, names


def _mel_audio(path: Path, sample_rate: int, min_length: int, seconds: float | None) -> torch.Tensor:
    """One ``--mel-from`` input as float audio at ``sample_rate`` (its first ``seconds``), refused in one line when
    its frames could not be resynthesised: not audio, silent, or shorter than ``min_length``, one mel frame."""
    clip = _audio_of(path, sample_rate, "--mel-from")
    if seconds is not None:
        clip = clip[: max(1, round(seconds * sample_rate))]
    if len(clip) < min_length:  # the mel transform's window needs more than half its width
        raise UsageError(f"--mel-from {path} gives {len(clip)} samples at {sample_rate} Hz, too few for a mel "
                         f"frame: it needs more than {min_length - 1}")
    if bool((clip == clip[0]).all()):
        raise UsageError(f"--mel-from {path} is silent: there is nothing to resynthesise")
    return clip


def _mel_codes(path: Path, model: WaveNet, seconds: float | None) -> torch.Tensor:
    """One ``--mel-from`` input as the model's codes (:func:`_mel_audio`; a frame's window is 4 hops)."""
    clip = _mel_audio(path, model.sample_rate, 2 * model.hop_length + 1, seconds)
    return mu_law_encode(clip, model.num_classes).to(model.device)


def _clip_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def sample(args: argparse.Namespace) -> None:
    """``wavegen sample`` once its options are parsed (:mod:`wavegen.cli`): draw clips from a checkpoint
    with the cached engine and write 16-bit PCM WAVs, or resynthesise ``--mel-from`` inputs with a vocoder."""
    check_sample_args(args)
    for option, seconds in (("--seconds", args.seconds), ("--prime-seconds", args.prime_seconds)):
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise UsageError(f"{option} must be a finite number > 0, got {seconds}")
    several = args.mel_from is not None and (len(args.mel_from) > 1 or Path(args.mel_from[0]).is_dir())
    inputs = _mel_inputs(args.mel_from) if args.mel_from is not None else None
    files, names = inputs if inputs is not None else ([], [])
    out = _output_folder(args.out, names) if several else output_path(args.out, ".wav")
    given = [("--ckpt", args.ckpt), *([("--prime", args.prime)] if args.prime else []),
             *(("--mel-from", path) for path in files)]
    refuse_replacing_inputs([out / name for name in names] if several else _clip_paths(out, args.num_samples),
                            given, folder=out if several else None)
    with output_lock(out, "wavegen sample"):  # a second sample to the same file or folder at once is refused
        _draw(args, out, inputs, several)


def _draw(args: argparse.Namespace, out: Path, inputs: tuple[list[Path], list[Path]] | None, several: bool) -> None:
    """``wavegen sample`` once its options and ``--out`` are checked: the clips drawn or resynthesised, and
    written."""
    sampling = SampleRun("wavegen", args, WaveNet)
    model = sampling.model
    if args.half_weights:
        print(f"weights rounded to float16 values (largest change {model.round_weights_to_half():.2g})")
    if inputs is not None:
        _resynthesize(sampling, *inputs, out, several)
        return
    if model.n_mels:
        raise UsageError("this model is a vocoder (conditioned on log-mel frames): pass --mel-from clip.wav")
    n, rate = args.num_samples, model.sample_rate
    length = round((args.seconds or 2.0) * rate)
    if length < 1:
        raise UsageError(f"--seconds {args.seconds} is shorter than one sample at {rate} Hz")
    check_fits_in_memory(n, length)
    _refuse_folders(out, _clip_paths(out, n))
    speaker = _speakers(args, model, n)
    prime = None
    if args.prime is not None:
        prime_codes = _codes_of(args.prime, model, "--prime")[: round(args.prime_seconds * rate)]
        if len(prime_codes) >= length:
            raise UsageError(f"the prime ({len(prime_codes)} samples) must be shorter than the clip ({length}): "
                             f"lower --prime-seconds or raise --seconds")
        prime = prime_codes.expand(n, -1)

    def draw(first: int, count: int) -> torch.Tensor:
        return model.sample(count, cond=rows(speaker, first, count), prime=rows(prime, first, count), length=length,
                            options=sampling.options, generator=sampling.generator)

    chunks = sampling.draw(draw, n)
    paths = _clip_paths(out, n)[: chunks.done]
    if chunks.samples is not None:
        for clip, path in zip(model.render_samples(chunks.samples).clips, paths):
            save_wav(clip, rate, path)
            print(f"wrote {path}")
    sampling.end(chunks, paths)
    print(f"{n * length / sampling.seconds:,.0f} samples/s ({n * length / rate / sampling.seconds:.2f}x real time at "
          f"{rate} Hz, {_step_name(sampling.options, model)})")


def _step_name(options: SampleOptions, model: WaveNet) -> str:
    """Which sampling step ran, for the samples/s line."""
    if not options.use_cache:
        return "cache-free step"
    if FusedStep.applies(model):
        return "fused CPU step" + (", float16 weights" if weight_dtype(model) == torch.float16 else "")
    return "PyTorch step, captured" if options.compile else "PyTorch step"


def _speakers(args: argparse.Namespace, model: WaveNet, n: int) -> torch.Tensor | None:
    """``--speaker`` as ids ``[n]`` on the model's device, checked against the model (None: not conditioned)."""
    if args.speaker is not None:
        if not 0 <= args.speaker < model.num_labels:
            raise UsageError(f"--speaker {args.speaker} is out of range: " + (
                f"this model has {model.num_labels} speakers, pass K in [0, {model.num_labels})" if model.num_labels
                else "this model is not speaker-conditioned, drop --speaker"))
        return torch.full((n,), args.speaker, dtype=torch.long, device=model.device)
    if model.num_labels:
        raise UsageError(f"this model is speaker-conditioned: pass --speaker K with K in [0, {model.num_labels})")
    return None


def _output_folder(path: str, names: list[Path]) -> Path:
    """``--out`` as the folder of several resynthesised clips, checked before any work; creates nothing."""
    out = Path(path)
    if out.suffix.lower() == ".wav" or out.is_file():
        raise UsageError(f"--out {path}: name a folder (one WAV per input) when --mel-from names several files or "
                         f"a folder")
    check_output(out / names[0])
    return out


def _refuse_folders(out: Path, paths: Sequence[Path]) -> None:
    folder = next((path for path in paths if path.is_dir()), None)
    if folder is not None:
        raise UsageError(f"--out {out}: the clip file {folder} would replace a folder")


def _resynthesize(sampling: SampleRun, files: list[Path], names: list[Path], out: Path, several: bool) -> None:
    """``wavegen sample --mel-from``: every input resynthesised from its own log-mel frames (``--num-samples``
    times for one file), drawn ``--batch-size`` at a time, longest first so that a batch's clips are of similar
    lengths; each WAV is as long as its input and written as soon as its batch is done."""
    args, model = sampling.args, sampling.model
    if args.prime is not None:
        raise UsageError("--prime does not combine with --mel-from: a vocoder draws the whole clip from the frames")
    if several and args.num_samples > 1:
        raise UsageError("--num-samples applies to one --mel-from file; several inputs are resynthesised once each")
    clips = [_mel_codes(path, model, args.seconds) for path in files]  # every input checked before any work
    if not model.n_mels:
        raise UsageError("this model has no mel conditioning (not a vocoder): drop --mel-from")
    if several:
        paths = [out / name for name in names]
    else:
        paths, clips = _clip_paths(out, args.num_samples), clips * args.num_samples
    _refuse_folders(out, paths)
    # the codes and, per sample, the conditioning table (cond_channels floats) and the waveform's float copies
    check_fits_in_memory(min(len(clips), args.batch_size), max(map(len, clips)),
                         8 + 4 * (int(model.hparams.get("cond_channels", 0)) + 4))
    speakers = _speakers(args, model, len(clips))
    order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
    written: list[Path] = []

    def draw(first: int, count: int) -> torch.Tensor:
        batch = order[first: first + count]
        made = model.resynthesize([clips[i] for i in batch], None if speakers is None else speakers[batch],
                                  options=sampling.options, generator=sampling.generator)
        for i, codes in zip(batch, made):
            save_wav(model.render_samples(codes[None]).clips[0], model.sample_rate, paths[i])
            written.append(paths[i])
            print(f"wrote {paths[i]}")
        return torch.zeros(count, 0)  # the clips are written as their batch finishes

    chunks = sampling.draw(draw, len(clips))
    sampling.end(chunks, written)
    total, rate = sum(map(len, clips)), model.sample_rate
    print(f"{len(clips)} clips, {total:,} samples: {total / sampling.seconds:,.0f} samples/s "
          f"({total / rate / sampling.seconds:.2f}x real time at {rate} Hz, {_step_name(sampling.options, model)})")


def griffin_lim(args: argparse.Namespace) -> None:
    """``wavegen griffin-lim`` once its options are parsed (:mod:`wavegen.cli`): every ``--mel-from`` input
    resynthesised from its own log-mel frames (``--n-mels`` bands every ``--hop-length`` samples at
    ``--sample-rate``) by a classical inversion, no model needed, one WAV per input, as long as it, each written as
    soon as it is made."""
    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:
        raise UsageError(f"--threads must be >= 1 and at most {cores} (this machine's cores), got {args.threads}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a finite number > 0, got {args.seconds}")
    if not 0 <= args.seed < 2 ** 63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.iterations < 0 or not 0.0 <= args.momentum < 1.0:
        raise UsageError(f"--iterations must be >= 0 and --momentum in [0, 1), got {args.iterations} and "
                         f"{args.momentum}")
    try:
        frames = MelFrames(args.sample_rate, args.n_mels, args.hop_length, args.n_fft)
    except UsageError as exc:
        raise exc.spelled(options("", "sample_rate", "n_mels", "hop_length", "n_fft")) from None
    several = len(args.mel_from) > 1 or Path(args.mel_from[0]).is_dir()
    files, names = _mel_inputs(args.mel_from)
    out = _output_folder(args.out, names) if several else output_path(args.out, ".wav")
    paths = [out / name for name in names] if several else [out]
    refuse_replacing_inputs(paths, [("--mel-from", path) for path in files], folder=out if several else None)
    _refuse_folders(out, paths)
    clips = [_mel_audio(path, frames.sample_rate, frames.min_length, args.seconds) for path in files]
    torch.set_num_threads(args.threads)
    written: list[Path] = []

    def invert(first: int, count: int) -> torch.Tensor:
        for i in range(first, first + count):
            made = frames.resynthesize(clips[i], args.method, iterations=args.iterations, momentum=args.momentum,
                                       seed=args.seed)
            written.append(save_wav(made, frames.sample_rate, paths[i]))
            print(f"wrote {paths[i]}")
        return torch.zeros(count, 0)  # the clips are written as they are made

    start = time.perf_counter()
    chunks = draw_in_chunks(invert, len(clips), 1, tool="wavegen")
    if chunks.interrupted:
        raise interrupted_exit("wavegen", chunks, written)
    total, rate = sum(map(len, clips)), frames.sample_rate
    print(f"{len(clips)} clips, {total:,} samples: {total / rate / (time.perf_counter() - start):.1f}x real time "
          f"({args.method} Griffin-Lim, {args.iterations} iterations, {frames.n_mels} bands every "
          f"{frames.hop_length} samples at {rate} Hz)")
