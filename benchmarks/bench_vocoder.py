"""Vocoders against their baselines, in one run, on the same held-out clips and the same frames.

    python -m benchmarks.bench_vocoder --data-root DIR --models pretrained/wavenet_vocoder.safetensors [more ...]
        [--temperatures 1.0 0.7] [--clips 16] [--seconds 3] [--tiny]

The held-out clips are those ``wavegen test`` scores: the test split of ``--data-root`` under the data settings of
the shipped vocoder config, the first ``--clips`` files cut to ``--seconds``. Every row is scored against the files'
own audio: the 8-bit mu-law round trip (the ceiling), Griffin-Lim from the frames (the classical baseline), and each
model at each temperature, with the seconds of CPU its resynthesis took per second of audio (conditioning, sampling
and, for a predictive vocoder, the synthesis filter). ``--tiny`` makes its own speech-like folder and an untrained
2-layer model: a smoke run whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import load_vocoders, machine, speech_like, tiny_vocoder


def rows(data_root: str, models: dict[str, Any], temperatures: list[float], clips: int, seconds: float
         ) -> list[tuple[str, float, float, float, float | None]]:
    """(what, PESQ, STOI, mel distance, CPU seconds per second of audio) of the baselines, then each model (by
    name) at each temperature."""
    from wavegen.data import AudioDataModule
    from wavegen.quality import baselines, held_out_clips, resynthesize_all, score
    from wavegen.wavenet import decode_mu_law

    first = next(iter(models.values()))
    data = AudioDataModule(data_root, sample_rate=first.sample_rate, val_fraction=0.05, test_fraction=0.05)
    codes, references, speakers = held_out_clips(data.splits()["test"], first, clips, seconds)
    audio_seconds = sum(len(c) for c in codes) / first.sample_rate
    base = baselines(first, codes, references, "test")
    out: list[tuple[str, float, float, float, float | None]] = [
        ("8-bit mu-law round trip (ceiling)", base["test/pesq_mulaw"], base["test/stoi_mulaw"],
         base["test/mel_distance_mulaw"], None),
        ("Griffin-Lim, 100 iterations (baseline)", base["test/pesq_griffin_lim"], base["test/stoi_griffin_lim"],
         base["test/mel_distance_griffin_lim"], None)]
    for name, model in models.items():
        for temperature in temperatures:
            start = time.process_time()
            made = resynthesize_all(model, codes, speakers, 8, torch.Generator().manual_seed(0), temperature)
            cost = (time.process_time() - start) / audio_seconds
            result = score(model, references, [decode_mu_law(c, model.num_classes) for c in made])
            out.append((f"`{name}`, temperature {temperature:g}", result.pesq, result.stoi,
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


def table(result: list[tuple[str, float, float, float, float | None]]) -> str:
    lines = ["| resynthesis from the same frames | PESQ | STOI | mel distance (dB) | CPU s per audio s |",
             "|---|---|---|---|---|"]
    for what, pesq, stoi, distance, cost in result:
        lines.append(f"| {what} | {pesq:.2f} | {stoi:.3f} | {distance:.2f} | "
                     f"{'' if cost is None else f'{cost:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", help="a folder of speech (WAV/FLAC); its test split is scored")
    parser.add_argument("--models", nargs="+", default=[], help="vocoder weights files or checkpoints")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a generated folder and an untrained model: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            root, models = tiny_setup(Path(tmp))
        else:
            root, models = args.data_root, load_vocoders(args.models)
        if not root or not models:
            parser.error("--data-root and --models are required (or --tiny)")
        clips, seconds = (2, 0.5) if args.tiny else (args.clips, args.seconds)
        body = table(rows(root, models, args.temperatures, clips, seconds))
    text = f"{machine()}\n\n{body}"
    print(text)
    return text


if __name__ == "__main__":
    main()
