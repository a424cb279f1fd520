"""The shipped weights, described once: each file of ``pretrained/`` with its model, data, recipe, size and test
metrics, as an enum of :class:`ShippedWeights` (as torchvision describes its weights).

This is the one place to edit when a file is replaced: ``scripts/pretrained.sh`` trains, exports and measures a file
(``test --record_metrics true`` records its metrics in its metadata), its entry here gets the new figures, and::

    .venv/bin/python pretrained/catalogue.py

rewrites the README's table of shipped models from the catalogue (``--check`` only says whether it is current).
``tests/test_pretrained.py`` checks every entry against its file (model class, steps, training time, size, every
metric) and the README's table against :func:`table`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- --8<-- [start:shipped] -->", "<!-- --8<-- [end:shipped] -->"
"""The markers around the README's table (the documentation site includes the table by them)."""


@dataclass(frozen=True)
class ShippedWeights:
    """One file of ``pretrained/``.

    Args:
        file: its name in ``pretrained/``.
        tool: the command line that samples and tests it (``pixelgen``, ``wavegen``).
        model: the model class the file records (``module.QualName``).
        title: the model, in words.
        data: what it was trained on, in words.
        config: the shipped config it was trained with (in ``lightning_configs/``).
        recipe: what the training added to the config, in Markdown (options, a resumed run).
        steps: training steps (the file records them).
        minutes: wall time of the training in minutes, in words where a resumed run adds up (the file records the
            seconds of a run that was not resumed).
        size_mb: the file's size in MB (10^6 bytes), one decimal.
        metrics: the test metrics the file records (``test --record_metrics true``), as recorded.
        shown: how the README shows them: a format string over ``metrics`` (``{test/bpd:.2f}``).
        test_data: the data options of its test run, ``{data}`` standing for the data folder (``../shared/data``).
    """

    file: str
    tool: str
    model: str
    title: str
    data: str
    config: str
    recipe: str
    steps: int
    minutes: str
    size_mb: float
    metrics: dict[str, float]
    shown: str
    test_data: str

    @property
    def path(self) -> Path:
        """The file."""
        return HERE / self.file

    def row(self) -> str:
        """The README table's row of this file."""
        recipe = f"`{self.config}`" + (f" {self.recipe}" if self.recipe else "")
        return (f"| `pretrained/{self.file}` ({self.size_mb:.1f} MB) | {self.title}, {self.data} | {recipe}, "
                f"{self.steps:,} steps, {self.minutes} min | {self.shown.format_map(self.metrics)} |")


class Shipped(Enum):
    """Every file of ``pretrained/``, in the README's order."""

    PIXELCNN_MNIST = ShippedWeights(
        file="pixelcnn_mnist.safetensors", tool="pixelgen", model="pixelgen.pixelcnn.PixelCNN",
        title="Gated PixelCNN", data="binarised MNIST", config="pixelcnn_mnist.yaml",
        recipe="`--trainer.max_steps 4000 --data.batch_size 64`", steps=4000, minutes="106", size_mb=1.2,
        metrics={"test/nll": 83.254944, "test/bpd": 0.153203},
        shown="**{test/nll:.1f} nats/image** ({test/bpd:.3f} bits/dim)", test_data="--data.root {data}")
    PIXELCNN_CIFAR10 = ShippedWeights(
        file="pixelcnn_cifar10.safetensors", tool="pixelgen", model="pixelgen.pixelcnn.PixelCNN",
        title="Gated PixelCNN, logistic mixture", data="CIFAR-10 8-bit RGB, local subset (3,200 train images)",
        config="pixelcnn_cifar10_recipe.yaml", recipe="`--data.dataset folder` on 2 threads", steps=1900,
        minutes="99", size_mb=2.8, metrics={"test/bpd": 4.298688, "test/loss": 2.979624, "test/nll": 9153.405273},
        shown="**{test/bpd:.2f} bits/dim** (1,000 test images; the file it replaced: 4.89)",
        test_data="--data.dataset folder --data.root {data}/cifar10-subset")
    IGPT_MNIST = ShippedWeights(
        file="igpt_mnist.safetensors", tool="pixelgen", model="pixelgen.igpt.ImageGPT",
        title="image GPT", data="MNIST at 14×14, 16-colour palette", config="igpt_mnist.yaml",
        recipe="`--model.init_args.resolution 14`", steps=980, minutes="19", size_mb=3.3,
        metrics={"test/bpd": 0.890707}, shown="**{test/bpd:.3f} bits/token**",
        test_data="--data.root {data} --model.init_args.resolution 14")
    WAVENET_SPEECH = ShippedWeights(
        file="wavenet_speech.safetensors", tool="wavegen", model="wavegen.wavenet.WaveNet",
        title="WaveNet", data="8 kHz speech (speech-en)", config="wavenet_speech.yaml", recipe="", steps=867,
        minutes="28", size_mb=2.1, metrics={"test/bpd": 4.42065},
        shown="**{test/bpd:.2f} bits/sample** (8 = uniform; 4.41 before the audio pipeline removed DC offsets)",
        test_data="--data.root {data}/audio/speech-en")
    WAVENET_VOCODER = ShippedWeights(
        file="wavenet_vocoder.safetensors", tool="wavegen", model="wavegen.wavenet.WaveNet",
        title="predictive WaveNet vocoder", data="20-band log-mel (hop 80), speech-en", config="wavenet_vocoder.yaml",
        recipe="", steps=3000, minutes="about 85", size_mb=3.0,
        metrics={"test/pesq": 2.506315, "test/stoi": 0.949095, "test/mel_distance": 4.418333,
                 "test/pesq_mel_griffin_lim": 1.738944, "test/stoi_mel_griffin_lim": 0.956761,
                 "test/pesq_griffin_lim": 1.35386, "test/stoi_griffin_lim": 0.857525, "test/pesq_mulaw": 4.200687,
                 "test/stoi_mulaw": 0.998443},
        shown="**PESQ {test/pesq:.2f}, STOI {test/stoi:.3f}**, mel distance {test/mel_distance:.1f} dB (same frames: "
              "mel-constrained Griffin-Lim {test/pesq_mel_griffin_lim:.2f}, {test/stoi_mel_griffin_lim:.3f}; "
              "torchaudio's Griffin-Lim {test/pesq_griffin_lim:.2f}, {test/stoi_griffin_lim:.3f}; μ-law ceiling "
              "{test/pesq_mulaw:.2f}, {test/stoi_mulaw:.3f})",
        test_data="--data.root {data}/audio/speech-en")


def table() -> str:
    """The README's table of the shipped models, rendered from :class:`Shipped`."""
    header = ["| file | model, data | config, training | test metric |", "|---|---|---|---|"]
    return "\n".join(header + [entry.value.row() for entry in Shipped])


def readme_with_table(text: str) -> str:
    """The README's ``text`` with the table between the markers rendered anew.

    Args:
        text: the README as it is.
    """
    before, rest = text.split(START + "\n", 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table()}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's table (``--check``: exit 1, naming the file, when it is not current)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the README's table is current")
    args = parser.parse_args(argv)
    text = README.read_text()
    current = readme_with_table(text)
    if current == text:
        print(f"{README}: the shipped models' table is current")
        return 0
    if args.check:
        print(f"{README}: the shipped models' table differs from the catalogue: run python pretrained/catalogue.py",
              file=sys.stderr)
        return 1
    README.write_text(current)
    print(f"{README}: the shipped models' table rewritten from the catalogue")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
