"""Whether a vocoder's speech is understood: a speech recogniser's spoken digits from the originals, the baselines
and each vocoder, on the same held-out files and the same frames.

    python -m benchmarks.bench_digits --data-root DIR --models pretrained/wavenet_vocoder.safetensors [more ...]
        [--temperatures 0.6] [--takes 0] [--frames 20/80] [--tiny]
    python -m benchmarks.bench_digits --data-root DIR --frames 20/80 80/80

``--data-root`` is a Free Spoken Digit Dataset folder: files ``DIGIT_SPEAKER_TAKE.wav`` (``7_george_12.wav``). The
held-out files are the ``--takes`` of every speaker and digit (one take of 6 speakers: 60 files); a vocoder trained
on spoken digits must have been trained without these takes, or the benchmark measures memory. Each file is
recognised as

- the original: the file's audio as ``wavegen`` reads it (at the model's rate, DC offset removed, peak 0.95);
- the 8-bit mu-law round trip, the audio the vocoder is trained to reproduce;
- for each frame layout (``--frames BANDS/HOP[/WINDOW]`` and every model's own; no model is needed for these rows),
  mel-constrained Griffin-Lim and torchaudio's least squares + Griffin-Lim from the log-mel frames of the round
  trip, the frames a vocoder is given (the classical inversions, :data:`wavegen.quality.BASELINES`);
- each model at each temperature, resynthesising from its own frames (8 files a batch, noise seeded with 0).

The recogniser is PocketSphinx (its US English acoustic model and dictionary) restricted to a grammar of the ten
words ``zero`` to ``nine``, so every answer is a digit or nothing. Its acoustic model is for 16 kHz audio: each clip
is resampled to 16 kHz, with a quarter second of silence added at either end (the files are cut close to the word,
and without silence around it the decoder often finds no word). A row counts the files whose recognised word is the
file's digit (the first field of its name) and gives that count's ratio to the originals' count; the target for a
vocoder is 0.9. PESQ and STOI are scored against the originals as :func:`wavegen.quality.score` scores them (PESQ the
mean over the clips P.862 can score, STOI of all clips joined). ``--tiny`` makes its own folder of buzzes named like
digits and an untrained 2-layer model: a smoke run whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from collections.abc import Sequence
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

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<take>\d+)$")  # DIGIT_SPEAKER_TAKE
RECOGNISER_RATE = 16000  # the rate of PocketSphinx's US English acoustic model
PADDING_SECONDS = 0.25
Row = tuple[str, str, int, int, float | None, float | None]
"""(what, frames, files understood, files, PESQ, STOI); the originals have no scores, and neither they nor the round
trip a frame layout (``-``)."""


class Recogniser:
    """PocketSphinx restricted to the ten digit words (a JSGF grammar): ``recogniser(audio, rate)`` is the word it
    hears in float audio ``[T]`` at ``rate``, or None when it settles on none."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(lm=None, samprate=RECOGNISER_RATE, loglevel="FATAL")
        grammar = f"#JSGF V1.0;\ngrammar digits;\npublic <digit> = {' | '.join(DIGITS)};\n"
        self.decoder.add_jsgf_string("digits", grammar)
        self.decoder.activate_search("digits")

    def __call__(self, audio: torch.Tensor, rate: int) -> str | None:
        import torchaudio.functional as AF

        clip = audio.detach().cpu().float()
        if rate != RECOGNISER_RATE:
            clip = AF.resample(clip, rate, RECOGNISER_RATE)
        silence = torch.zeros(round(PADDING_SECONDS * RECOGNISER_RATE))
        pcm = (torch.cat([silence, clip, silence]).clamp(-1.0, 1.0) * 32767).round().to(torch.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.numpy().tobytes(), full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None and hypothesis.hypstr else None


def held_out(root: str, takes: Sequence[int], sample_rate: int) -> tuple[list[int], list[int], list[torch.Tensor]]:
    """Digit, speaker index (the speakers of the whole folder in sorted order, as ``wavegen``'s data module numbers
    them) and audio at ``sample_rate`` of each file of ``root`` whose take is one of ``takes``, in name order."""
    from wavegen.data import AUDIO_SUFFIXES, read_audio, why_unusable

    folder = Path(root)
    if not folder.is_dir():
        raise UsageError(f"--data-root {root} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UsageError(f"--data-root {root} holds no audio files (.wav or .flac)")
    names = {p: NAME.match(p.stem) for p in files}
    wrong = [p.name for p, match in names.items() if match is None]
    if wrong:
        raise UsageError(f"--data-root {root}: {len(wrong)} audio file(s) not named DIGIT_SPEAKER_TAKE like "
                         f"7_george_12.wav, e.g. {wrong[0]}")
    speakers = sorted({match["speaker"] for match in names.values() if match})
    chosen = [(p, match) for p, match in names.items() if match and int(match["take"]) in set(takes)]
    if not chosen:
        raise UsageError(f"--takes {' '.join(map(str, takes))}: no file of --data-root {root} has one of these takes")
    digits, who, audio = [], [], []
    for path, match in chosen:
        try:
            audio.append(read_audio(path, sample_rate))
        except Exception as exc:  # noqa: BLE001 - soundfile's errors, worded for the user
            raise UsageError(f"--data-root {root}: {path.name}: {why_unusable(exc)}") from None
        digits.append(int(match["digit"]))
        who.append(speakers.index(match["speaker"]))
    return digits, who, audio


def rows(root: str, models: dict[str, Any], frames: list[Any], temperatures: list[float], takes: Sequence[int]
         ) -> list[Row]:
    """The :data:`Row` of the originals and the mu-law round trip, then for each frame layout of ``frames``
    (:class:`wavegen.griffinlim.MelFrames`) the classical inversions and each model (by name) of that layout at each
    temperature."""
    from wavegen.data import mu_law_encode
    from wavegen.griffinlim import MelFrames
    from wavegen.quality import BASELINES, decoded_clips, resynthesize_all, score
    from wavegen.wavenet import decode_mu_law

    if not all(t > 0 for t in temperatures):
        raise UsageError(f"--temperatures must be > 0, got {' '.join(f'{t:g}' for t in temperatures)}")
    rate, quantization = frames[0].sample_rate, next((m.num_classes for m in models.values()), 256)
    digits, speakers, references = held_out(root, takes, rate)
    shortest = max(layout.min_length for layout in frames)
    for clip in references:
        if len(clip) < shortest:
            raise UsageError(f"--data-root {root}: a held-out file has {len(clip)} samples, too few for a mel frame")
    codes = [mu_law_encode(clip, quantization) for clip in references]
    decoded = [decode_mu_law(c, quantization) for c in codes]
    recognise = Recogniser()

    def row(what: str, layout: Any, made: list[torch.Tensor] | None) -> Row:
        """``made`` from the frames of ``layout`` (None: not made from frames)."""
        heard = [recognise(clip, rate) for clip in (references if made is None else made)]
        right = sum(word == DIGITS[digit] for word, digit in zip(heard, digits))
        if made is None:
            return what, "-", right, len(digits), None, None
        result = score(frames[0] if layout is None else layout, references, made)
        return what, "-" if layout is None else frames_label(layout), right, len(digits), result.pesq, result.stoi

    out = [row("original", None, None), row("8-bit mu-law round trip (ceiling)", None, decoded)]
    for layout in frames:
        for method in BASELINES.values():
            out.append(row(CLASSICAL[method], layout, [layout.resynthesize(clip, method) for clip in decoded]))
        for name, model in models.items():
            if MelFrames.of(model) != layout:
                continue
            for temperature in temperatures:
                made = resynthesize_all(model, codes, speakers, 8, torch.Generator().manual_seed(0), temperature)
                out.append(row(f"`{name}`, temperature {temperature:g}", layout, decoded_clips(model, made)))
    return out


def tiny_setup(folder: Path) -> tuple[str, dict[str, Any]]:
    """A folder of half-second buzzes named like two speakers' two takes of the ten digits (one take held out),
    and an untrained predictive 2-layer vocoder."""
    import soundfile

    audio = folder / "digits"
    audio.mkdir()
    for digit in range(10):
        for s, speaker in enumerate(("ann", "bob")):
            for take in range(2):
                soundfile.write(audio / f"{digit}_{speaker}_{take}.wav",
                                speech_like(100 + 10 * digit + 40 * s + 5 * take, 0.5), 8000)
    return str(audio), {"untrained": tiny_vocoder()}


def table(result: list[Row]) -> str:
    originals = result[0][2]
    lines = ["| recognised | frames (mel values per sample) | digits understood | of the originals | PESQ | STOI |",
             "|---|---|---|---|---|---|"]
    for what, frames, right, files, pesq, stoi in result:
        ratio = f"{right / originals:.3f}" if originals else "-"
        scores = ("-", "-") if pesq is None or stoi is None else \
            tuple("-" if math.isnan(v) else f"{v:{f}}" for v, f in ((pesq, ".2f"), (stoi, ".3f")))
        lines.append(f"| {what} | {frames} | {right}/{files} | {ratio} | {scores[0]} | {scores[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="bench_digits", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", help="a Free Spoken Digit Dataset folder (DIGIT_SPEAKER_TAKE.wav)")
    parser.add_argument("--models", nargs="+", default=[], help="vocoder weights files or checkpoints")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.6])
    parser.add_argument("--takes", nargs="+", type=int, default=[0],
                        help="the takes held out (a vocoder trained on digits must not have seen them)")
    add_frames_options(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a generated folder and an untrained model: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.tiny:
                root, models = tiny_setup(Path(tmp))
            else:
                if not args.data_root or not (args.models or args.frames):
                    raise UsageError("--data-root and --models or --frames are required (or --tiny)")
                try:
                    root, models = args.data_root, load_vocoders(args.models)
                except UsageError as exc:
                    raise UsageError(f"--models: {exc}") from None
            frames = layouts(args.frames, models, args.sample_rate)
            body = table(rows(root, models, frames, args.temperatures, args.takes))
    except UsageError as exc:
        parser.exit(2, f"{parser.prog}: error: {str(exc).strip().splitlines()[0]}\n")
    text = f"{machine()}\n\n{body}"
    print(text)
    return text


if __name__ == "__main__":
    main()
