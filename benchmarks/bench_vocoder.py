"""Vocoders against their baselines, in one run, on the same held-out clips and the same frames.

    python -m benchmarks.bench_vocoder --data-root DIR --models pretrained/wavenet_vocoder.safetensors [more ...]
        [--temperatures 1.0 0.7] [--clips 16] [--seconds 3] [--tiny]
    python -m benchmarks.bench_vocoder --data-root DIR --frames 80/80 40/80 80/160 80/256/1024 20/80

The held-out clips are those ``wavegen test`` scores: the test split of ``--data-root`` under the data settings of
the shipped vocoder config, the first ``--clips`` files cut to ``--seconds``. For each frame layout (``--frames``
``BANDS/HOP[/WINDOW]`` and every model's own; no model is needed for the classical rows) every row is made from the
log-mel frames of the mu-law-decoded clips and scored against the files' own audio: the 8-bit mu-law round trip (the
ceiling), mel-constrained Griffin-Lim and torchaudio's least squares + Griffin-Lim (the classical inversions,
:data:`wavegen.quality.BASELINES`), and each model of that layout at each temperature, with the seconds of CPU each
resynthesis took per second of audio (a model's: conditioning, sampling and, for a predictive vocoder, the
synthesis filter). The mel distance is measured in the row's own frames. ``--tiny`` makes its own speech-like folder
and an untrained 2-layer model: a smoke run whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from arcore.errors import UsageError
from benchmarks.common import (
    CLASSICAL,
    add_frames_options,
    frames_label,
    layouts,
    load_vocoders,
    machine,
    speech_like,
    tiny_vocoder,
)

Row = tuple[str, str, float, float, float, float | None]
"""(what, frames, PESQ, STOI, mel distance, CPU seconds per second of audio)."""


def rows(data_root: str, models: dict[str, Any], frames: list[Any], temperatures: list[float], clips: int,
         seconds: float) -> list[Row]:
    """The :data:`Row` of the mu-law round trip, each classical inversion and each model (by name) at each
    temperature, for each frame layout of ``frames`` (:class:`wavegen.griffinlim.MelFrames`) in turn."""
    from wavegen.data import AudioDataModule
    from wavegen.griffinlim import MelFrames
    from wavegen.quality import BASELINES, decoded_clips, held_out_clips, resynthesize_all, score
    from wavegen.wavenet import decode_mu_law

    rate = frames[0].sample_rate
    data = AudioDataModule(data_root, sample_rate=rate, val_fraction=0.05, test_fraction=0.05)
    widest = max(frames, key=lambda layout: layout.min_length)  # every layout scores the same clips
    codes, references, speakers = held_out_clips(data.splits()["test"], widest, clips, seconds)
    if not codes:
        raise UsageError(f"--data-root {data_root}: no held-out file is long enough for a mel frame")
    decoded = [decode_mu_law(c) for c in codes]
    audio_seconds = sum(len(c) for c in codes) / rate
    out: list[Row] = []
    for layout in frames:
        label = frames_label(layout)
        ceiling = score(layout, references, decoded)
        out.append(("8-bit mu-law round trip (ceiling)", label, ceiling.pesq, ceiling.stoi, ceiling.mel_distance,
                    None))
        for method in BASELINES.values():
            start = time.process_time()
            made = [layout.resynthesize(clip, method) for clip in decoded]
            cost = (time.process_time() - start) / audio_seconds
            result = score(layout, references, made)
            out.append((CLASSICAL[method], label, result.pesq, result.stoi, result.mel_distance, cost))
        for name, model in models.items():
            if MelFrames.of(model) != layout:
                continue
            for temperature in temperatures:
                start = time.process_time()
                made = resynthesize_all(model, codes, speakers, 8, torch.Generator().manual_seed(0), temperature)
                cost = (time.process_time() - start) / audio_seconds
                result = score(model, references, decoded_clips(model, made))
                out.append((f"`{name}`, temperature {temperature:g}", label, result.pesq, result.stoi,
                            result.mel_distance, cost))
    return out


def tiny_setup(folder: Path) -> tuple[str, dict[str, Any]]:
    """A speech-like folder in ``folder`` and an untrained predictive 2-layer vocoder."""
    import soundfile

    audio = folder / "audio"
    audio.mkdir()
    for i in range(40):
        soundfile.write(audio / f"clip{i}.wav", speech_like(120 + 5 * i, 1.0), 8000)
    return str(audio), {"untrained": tiny_vocoder()}


def table(result: list[Row]) -> str:
    lines = ["| resynthesis from the same frames | frames (mel values per sample) | PESQ | STOI | mel distance (dB) "
             "| CPU s per audio s |", "|---|---|---|---|---|---|"]
    for what, frames, pesq, stoi, distance, cost in result:
        lines.append(f"| {what} | {frames} | {pesq:.2f} | {stoi:.3f} | {distance:.2f} | "
                     f"{'' if cost is None else f'{cost:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="bench_vocoder", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", help="a folder of speech (WAV/FLAC); its test split is scored")
    parser.add_argument("--models", nargs="+", default=[], help="vocoder weights files or checkpoints")
    add_frames_options(parser)
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a generated folder and an untrained model: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.tiny:
                root, models = tiny_setup(Path(tmp))
            else:
                if not args.data_root:
                    raise UsageError("--data-root is required (or --tiny)")
                root, models = args.data_root, load_vocoders(args.models)
            clips, seconds = (2, 0.5) if args.tiny else (args.clips, args.seconds)
            frames = layouts(args.frames, models, args.sample_rate)
            body = table(rows(root, models, frames, args.temperatures, clips, seconds))
    except UsageError as exc:
        parser.exit(2, f"{parser.prog}: error: {str(exc).strip().splitlines()[0]}\n")
    text = f"{machine()}\n\n{body}"
    print(text)
    return text


if __name__ == "__main__":
    main()
