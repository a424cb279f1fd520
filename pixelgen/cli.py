"""``pixelgen``: the command line of the image models (a gated PixelCNN, a small image GPT).

``fit | validate | test | predict`` are LightningCLI's (:mod:`arcore.cli`, configs in ``lightning_configs/``),
``export`` is shared with ``wavegen``, and ``sample`` draws a PNG grid (:mod:`pixelgen.sample_cli`). This module
imports neither torch nor Lightning, so ``pixelgen --help`` and ``pixelgen sample --help`` print at once
(:mod:`arcore.cli.launch`)::

    pixelgen sample --ckpt pretrained/pixelcnn_mnist.safetensors --out samples.png
    pixelgen fit --config lightning_configs/pixelcnn_mnist.yaml --data.root ./data
    pixelgen test --config lightning_configs/pixelcnn_mnist.yaml
    pixelgen sample --ckpt runs/pixelcnn_mnist/checkpoints/last.ckpt --prime-rows 14 --out completions.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from arcore.cli.launch import Tool, sample_parser

ABOUT = ("Autoregressive image models: a gated PixelCNN and a small image GPT, trained on MNIST, CIFAR-10 or a folder "
         "of images.")
SAMPLE = "draw a PNG grid of samples, or completions of real images, from a checkpoint or a .safetensors file"
EXAMPLES = ("pixelgen sample --ckpt pretrained/pixelcnn_mnist.safetensors --out samples.png",
            "pixelgen sample --ckpt pretrained/igpt_mnist.safetensors --temperature 0.9 --out igpt.png")
"""The commands ``pixelgen --help`` suggests: each runs as written from the project's folder."""


def _parser() -> argparse.ArgumentParser:
    p = sample_parser("pixelgen", SAMPLE, out_help="the PNG file to write, a grid of the samples (a .txt file for a "
                      "model that renders text)", num_samples=64, batch_size=64, threads=None)
    p.add_argument("--class-label", type=int, default=None,
                   help="the label of every sample, for a class-conditional model (default: the labels in turn)")
    p.add_argument("--prime-rows", type=int, default=0,
                   help="keep the top R rows of real images and complete the rest (0: draw whole images)")
    p.add_argument("--prime-from", choices=("train", "val", "test"), default="test",
                   help="the split of the model's data whose images --prime-rows completes")
    p.add_argument("--data-root", default=None,
                   help="the folder of the model's data, for --prime-rows (default: the one recorded in the "
                        "checkpoint)")
    p.add_argument("--beams", type=int, default=0,
                   help="beam search: the most likely completion of each, found among this many (0: draw)")
    return p


TOOL = Tool("pixelgen", ABOUT, SAMPLE, EXAMPLES, _parser, sample_run="pixelgen.sample_cli:sample",
            data_module="pixelgen.data:ImageDataModule")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``pixelgen``; returns the exit status (2 with one error line for bad input)."""
    return TOOL.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
