"""Regenerate every picture and clip in ``docs/`` from the trained runs' ``runs/<run>/checkpoints/last.ckpt``.

    .venv/bin/python scripts/make_figures.py [--data-root ../shared/data] [--runs runs] [--out docs]

Everything is drawn through the package command lines (``pixelgen sample``, ``wavegen sample``) with seed 0, so a
figure changes only when its checkpoint does. Image runs give a grid of samples and completions of real test images
from their top half (with the originals in ``*_completions_real.png``); the WaveNet run gives a 2-second clip and its
spectrogram; the vocoder run resynthesises the first 3 seconds of the first held-out file of speech-en that long
(the data module's own test split) and gives the original, the resynthesis and their spectrograms, one above the other. A run
whose checkpoint is missing is skipped with a note. ``--data-root`` is where MNIST, the CIFAR-10 subset and the
speech are found (the completions and the resynthesis need the real test data).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile
import torch
from PIL import Image

from arcore.files.checkpoint import read_checkpoint
from arcore.files.media import save_wav, spectrogram_image
from pixelgen.cli import main as pixelgen
from wavegen.cli import main as wavegen

ROOT = Path(__file__).resolve().parents[1]
SEED = "0"
# image run: (its data folder under --data-root, enlargement: the image GPT run's 14x14 images are drawn twice as
# large, the size of the other MNIST pictures)
IMAGE_RUNS = {"pixelcnn_mnist": ("", 1), "pixelcnn_cifar10": ("cifar10-subset", 1), "igpt_mnist": ("", 2),
              "pixelcnn_cifar10_mixture": ("cifar10-subset", 1), "pixelcnn_cifar10_recipe": ("cifar10-subset", 1),
              "pixelcnn_mnist8": ("", 1),
              "pixelcnn_mnist8_mixture": ("", 1)}
AUDIO_RUNS = {"wavenet_speech": 2.0}  # audio run: seconds of the clip
VOCODER_RUNS = {"wavenet_vocoder": ("audio/speech-en", 3.0)}  # vocoder run: its data under --data-root, seconds


def command(tool: Callable[[Sequence[str]], int], name: str, args: list[str]) -> None:
    """Run ``<tool> sample ARGS`` in this process; a failure (already printed by the tool) stops the script."""
    if tool(["sample", *args]) != 0:
        raise SystemExit(f"make_figures: {name}: the sample command failed (see the error above)")


def enlarge(path: Path, factor: int) -> None:
    """Scale a picture up by a whole factor (nearest neighbour: every pixel stays a sharp square)."""
    with Image.open(path) as image:
        image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(path, optimize=True)


def image_figures(run: str, ckpt: Path, data_root: Path, out: Path) -> list[Path]:
    """64 samples and 32 completions of test images from their top half (plus the originals) of one image run."""
    folder, factor = IMAGE_RUNS[run]
    rows = read_checkpoint(ckpt)["hyper_parameters"]["image_shape"][1] // 2
    samples, completions = out / f"{run}_samples.png", out / f"{run}_completions.png"
    command(pixelgen, run, ["--ckpt", str(ckpt), "--num-samples", "64", "--seed", SEED, "--out", str(samples)])
    command(pixelgen, run, ["--ckpt", str(ckpt), "--num-samples", "32", "--seed", SEED, "--prime-rows", str(rows),
                            "--prime-from", "test", "--data-root", str(data_root / folder), "--out",
                            str(completions)])
    written = [samples, completions, out / f"{run}_completions_real.png"]
    if factor > 1:
        for path in written:
            enlarge(path, factor)
    return written


def audio_figures(run: str, ckpt: Path, out: Path) -> list[Path]:
    """A clip of the WaveNet run and its log-mel spectrogram."""
    clip = out / "wavenet_sample.wav"
    command(wavegen, run, ["--ckpt", str(ckpt), "--seconds", str(AUDIO_RUNS[run]), "--seed", SEED, "--out",
                           str(clip)])
    audio, rate = soundfile.read(str(clip), dtype="float32")
    return [clip, spectrogram_image(torch.from_numpy(audio), rate, out / "wavenet_sample_spectrogram.png")]


def vocoder_figures(run: str, ckpt: Path, data_root: Path, out: Path) -> list[Path]:
    """A held-out clip (as the model hears it: mu-law decoded), its resynthesis and both spectrograms."""
    from wavegen.data import AudioDataModule
    from wavegen.wavenet import decode_mu_law

    folder, seconds = VOCODER_RUNS[run]
    hparams = read_checkpoint(ckpt)["datamodule_hyper_parameters"]
    test = AudioDataModule(str(data_root / folder), sample_rate=hparams["sample_rate"],
                           val_fraction=hparams["val_fraction"], test_fraction=hparams["test_fraction"],
                           split_seed=hparams["split_seed"]).splits()["test"]
    rate = hparams["sample_rate"]
    held_out = next((clip for clip in test if len(clip.codes) >= seconds * rate), test[0])
    original, resynthesis = out / f"{run}_original.wav", out / f"{run}_resynthesis.wav"
    save_wav(decode_mu_law(held_out.codes[: round(seconds * rate)].long()), rate, original)
    command(wavegen, run, ["--ckpt", str(ckpt), "--mel-from", str(original), "--seed", SEED, "--out",
                           str(resynthesis)])
    pair = torch.stack([torch.from_numpy(soundfile.read(str(p), dtype="float32")[0]) for p in (original, resynthesis)])
    return [original, resynthesis, spectrogram_image(pair, rate, out / f"{run}_spectrograms.png")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding MNIST/, cifar10-subset/ and audio/ (default ../shared/data)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="folder of the trained runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the figures are written")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for run in [*IMAGE_RUNS, *AUDIO_RUNS, *VOCODER_RUNS]:
        ckpt = args.runs / run / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            print(f"make_figures: skipped {run}: no checkpoint at {ckpt}")
            continue
        if run in IMAGE_RUNS:
            written = image_figures(run, ckpt, args.data_root, args.out)
        elif run in VOCODER_RUNS:
            written = vocoder_figures(run, ckpt, args.data_root, args.out)
        else:
            written = audio_figures(run, ckpt, args.out)
        print(f"make_figures: {run}: wrote {', '.join(path.name for path in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
