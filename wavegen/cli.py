"""``wavegen``: LightningCLI's fit / validate / test / predict plus ``wavegen sample`` (WAV files from a checkpoint).

    wavegen fit --config lightning_configs/wavenet_speech.yaml --data.root DIR
    wavegen test --config lightning_configs/wavenet_speech.yaml --data.root DIR --ckpt_path last
    wavegen sample --ckpt runs/wavenet_speech/checkpoints/last.ckpt --seconds 2 --out clip.wav
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from arcore.chunks import draw_in_chunks, interrupted_exit, rows
from arcore.cli import (
    check_fits_in_memory,
    check_sampling_options,
    load_for_sampling,
    output_path,
    pick_device,
    run,
    seeded_generator,
)
from arcore.errors import UsageError
from arcore.media import save_wav
from wavegen.data import AudioDataModule, mu_law_encode, read_audio, why_unusable
from wavegen.wavenet import AudioCond, WaveNet


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wavegen sample", description="Generate audio from a trained WaveNet.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `wavegen fit`")
    p.add_argument("--out", required=True, help="output .wav (clip_0.wav, clip_1.wav, ... when --num-samples > 1)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each clip (default 2, or the length of --mel-from)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16,
                   help="clips drawn at once; more are drawn in chunks (halved on out-of-memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; below 1 sharpens, above 1 flattens")
    p.add_argument("--greedy", action="store_true", help="the most likely code at every step instead of a draw")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    p.add_argument("--prime", default=None, help="audio file whose start the clips continue")
    p.add_argument("--prime-seconds", type=float, default=0.5)
    p.add_argument("--speaker", type=int, default=None, help="speaker id of a speaker-conditioned model")
    p.add_argument("--mel-from", default=None, help="audio file whose log-mel frames condition a vocoder model")
    p.add_argument("--no-cache", action="store_true", help="the cache-free reference path (slow)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: a step's tiny products lose more to thread sync than they gain)")
    return p


def _codes_of(path: str, model: WaveNet, option: str) -> torch.Tensor:
    """An audio file as the model's mu-law codes ``[T]``, with a one-line error if it cannot be read."""
    if not Path(path).is_file():
        raise UsageError(f"{option} {path} does not exist")
    try:
        clip = read_audio(path, model.sample_rate)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for unreadable files
        raise UsageError(f"{option} {path}: {why_unusable(exc)}") from None
    if clip.numel() == 0 or not torch.isfinite(clip).all():
        raise UsageError(f"{option} {path} holds no samples, or samples that are not finite")
    return mu_law_encode(clip, model.num_classes).to(model.device)


def _clip_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def sample_main(argv: Sequence[str]) -> None:
    """``wavegen sample``: draw clips from a checkpoint with the cached engine and write 16-bit PCM WAVs."""
    args = _parser().parse_args(list(argv))
    check_sampling_options(args)
    for option, seconds in (("--seconds", args.seconds), ("--prime-seconds", args.prime_seconds)):
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise UsageError(f"{option} must be a finite number > 0, got {seconds}")
    if not 1 <= args.threads <= (os.cpu_count() or 1):
        raise UsageError(f"--threads must be >= 1 and at most {os.cpu_count() or 1} (this machine's cores), "
                         f"got {args.threads}")
    out = output_path(args.out, ".wav")
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = load_for_sampling(args.ckpt, "wavegen", device)
    if not isinstance(model, WaveNet):
        raise UsageError(f"{args.ckpt} holds a {type(model).__name__}, not a WaveNet")
    n, rate = args.num_samples, model.sample_rate
    length = round((args.seconds or 2.0) * rate)
    mel = None
    if args.mel_from is not None:
        codes = _codes_of(args.mel_from, model, "--mel-from")
        length = len(codes) if args.seconds is None else min(length, len(codes))
        if length <= 2 * model.hop_length:  # the mel transform's window needs more than half its width
            raise UsageError(f"--mel-from {args.mel_from} gives {length} samples at {rate} Hz, too few for a mel "
                             f"frame: it needs more than {2 * model.hop_length}")
        mel = model.log_mel(codes[None, :length]).expand(n, -1, -1)
    elif model.n_mels:
        raise UsageError("this model is a vocoder (conditioned on log-mel frames): pass --mel-from clip.wav")
    if length < 1:
        raise UsageError(f"--seconds {args.seconds} is shorter than one sample at {rate} Hz")
    check_fits_in_memory(n, length)
    folder = next((path for path in _clip_paths(out, n) if path.is_dir()), None)
    if folder is not None:
        raise UsageError(f"--out {out}: the clip file {folder} would replace a folder")
    speaker = None
    if args.speaker is not None:
        if not 0 <= args.speaker < model.num_labels:
            raise UsageError(f"--speaker {args.speaker} is out of range: " + (
                f"this model has {model.num_labels} speakers, pass K in [0, {model.num_labels})" if model.num_labels
                else "this model is not speaker-conditioned, drop --speaker"))
        speaker = torch.full((n,), args.speaker, dtype=torch.long, device=device)
    elif model.num_labels:
        raise UsageError(f"this model is speaker-conditioned: pass --speaker K with K in [0, {model.num_labels})")
    prime = None
    if args.prime is not None:
        prime_codes = _codes_of(args.prime, model, "--prime")[: round(args.prime_seconds * rate)]
        if len(prime_codes) >= length:
            raise UsageError(f"the prime ({len(prime_codes)} samples) must be shorter than the clip ({length}): "
                             f"lower --prime-seconds or raise --seconds")
        prime = prime_codes.expand(n, -1)
    generator = seeded_generator(args.seed, device)

    def draw(first: int, count: int) -> torch.Tensor:
        part_speaker = rows(speaker, first, count)
        cond = AudioCond(part_speaker, rows(mel, first, count)) if mel is not None else part_speaker
        return model.sample(count, cond=cond, prime=rows(prime, first, count), length=length,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                            use_cache=not args.no_cache, generator=generator, progress=True)

    start = time.perf_counter()
    chunks = draw_in_chunks(draw, n, args.batch_size, tool="wavegen", generator=generator)
    elapsed = time.perf_counter() - start
    paths = _clip_paths(out, n)[: chunks.done]
    if chunks.done:
        for clip, path in zip(model.render_samples(chunks.samples)["audio"], paths):
            save_wav(clip, rate, path)
            print(f"wrote {path}")
    if chunks.interrupted:
        raise interrupted_exit("wavegen", chunks, paths)
    print(f"{n * length / elapsed:,.0f} samples/s ({n * length / rate / elapsed:.2f}x real time at {rate} Hz)")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``wavegen``; returns the exit status (2 with one error line for bad input)."""
    return run("wavegen", AudioDataModule, sample_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
