"""PixelCNN benchmark: training images/s, cached vs cache-free sampling, cost per code as images grow.

    python -m benchmarks.bench_pixelcnn [--quick | --tiny]

Random weights (speed does not depend on training). The cache-free sampler reruns the whole network for every
sub-pixel, so its cost per position does not depend on the position: it is timed over the first positions of an
image and reported per code. The cached sampler is timed over whole images.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from benchmarks.common import best_time, machine, matmul_flops, table, top_ops, training_step_seconds
from pixelgen.pixelcnn import PixelCNN

MNIST = {"image_shape": (1, 28, 28), "levels": 2, "hidden": 32, "layers": 8, "kernel_size": 5, "head": 64}
CIFAR = {"image_shape": (3, 32, 32), "levels": 256, "hidden": 48, "layers": 8, "kernel_size": 5, "head": 96}
MIXTURE = {"output": "logistic_mixture", "mixtures": 10}
MNIST8 = {**MNIST, "levels": 256}


def training_images_per_second(config: dict, batch: int, steps: int) -> float:
    codes = torch.randint(0, config["levels"], (batch, *config["image_shape"]))
    return batch / training_step_seconds(PixelCNN(**config), codes, steps)


def cached_codes_per_second(model: PixelCNN, batch: int) -> float:
    generator = torch.Generator().manual_seed(0)
    seconds = best_time(lambda: model.sample(batch, generator=generator), repeats=2)
    return batch * model.num_codes / seconds


def naive_codes_per_second(model: PixelCNN, batch: int, positions: int) -> float:
    """Cache-free cost per code, from the first ``positions`` steps (each step is one full forward pass)."""
    seq = torch.zeros(batch, model.num_codes, dtype=torch.long)
    with torch.no_grad():
        def run() -> None:
            for t in range(positions):
                model.to_order(model(model.from_order(seq, model.image_shape)))[:, t]
        return batch * positions / best_time(run, repeats=2)


def cached_step_flops(model: PixelCNN) -> float:
    """Multiply-adds x 2 of one cached sub-pixel step, with the vertical stack's per-row work amortised."""
    colours, _, width = model.image_shape
    f, k = model.hidden, model.kernel_size
    per_step = 0
    per_row = 0
    for layer in model.layers:
        c_in = layer.vertical.in_channels
        per_step += (k // 2 + 1) * c_in * 2 * f + f * f  # horizontal column + residual
        per_row += width * ((k // 2 + 1) * k * c_in * 2 * f + 2 * f * 2 * f)  # vertical row + link
    head = model.head1.out_channels
    per_step += f * head + head * model.num_classes
    return 2 * (per_step + per_row / (width * colours))


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the MNIST-like and CIFAR-like models, training steps, cache-free positions timed, the
    image sides of the growth table, the side of the profiled image and the matmul size of the arithmetic limit."""

    mnist: dict
    cifar: dict
    steps: int
    positions: int
    sides: tuple[int, ...]
    profile_side: int
    matmul_n: int


FULL = Sizes(MNIST, CIFAR, steps=5, positions=24, sides=(8, 16, 32), profile_side=8, matmul_n=1024)
QUICK = Sizes(MNIST, CIFAR, steps=2, positions=6, sides=(8, 16), profile_side=8, matmul_n=1024)
TINY = Sizes({**MNIST, "image_shape": (1, 4, 4), "hidden": 4, "layers": 2, "head": 4},
             {**CIFAR, "image_shape": (3, 4, 4), "hidden": 6, "layers": 2, "head": 6},
             steps=1, positions=2, sides=(2, 4), profile_side=2, matmul_n=64)


def report(sizes: Sizes) -> str:
    """Every table of the benchmark as Markdown."""
    torch.manual_seed(0)
    out = [f"machine: {machine()}\n"]
    mnist8 = {**sizes.mnist, "levels": 256}
    cifar = sizes.cifar
    configs = [("MNIST binarised (default)", sizes.mnist, 64), ("CIFAR-10 8-bit (default)", cifar, 32),
               ("CIFAR-10 8-bit, logistic mixture", {**cifar, **MIXTURE}, 32), ("MNIST 8-bit, softmax", mnist8, 64),
               ("MNIST 8-bit, logistic mixture", {**mnist8, **MIXTURE}, 64)]
    rows = [[name, batch, f"{training_images_per_second(config, batch, sizes.steps):,.0f}"]
            for name, config, batch in configs]
    out.append("Training throughput (forward + backward + AdamW step)\n")
    out.append(table(["config", "batch", "images/s"], rows) + "\n")

    model = PixelCNN(**cifar).eval()
    shape = "x".join(map(str, cifar["image_shape"]))
    rows = []
    for batch in (1, 16):
        cached = cached_codes_per_second(model, batch)
        naive = naive_codes_per_second(model, batch, positions=sizes.positions)
        rows.append([batch, f"{cached:,.0f}", f"{naive:,.1f}", f"{cached / naive:,.0f}x",
                     f"{model.num_codes * batch / cached:.2f} s", f"{model.num_codes * batch / naive:,.0f} s"])
    out.append(f"Sampling a {shape} CIFAR-10 image, default model (hidden {cifar['hidden']}, {cifar['layers']} "
               f"layers)\n")
    out.append(table(["batch", "cached codes/s", "cache-free codes/s", "speed-up", "cached time / batch",
                      "cache-free time / batch"], rows) + "\n")

    mixture = PixelCNN(**cifar, **MIXTURE).eval()
    rows = [[batch, f"{cached_codes_per_second(mixture, batch):,.0f}"] for batch in (1, 16)]
    out.append("Cached sampling with the logistic mixture output (the stacks once per pixel, then each channel's "
               "mixture)\n")
    out.append(table(["batch", "cached codes/s"], rows) + "\n")

    rows = []
    for side in sizes.sides:
        m = PixelCNN(**{**cifar, "image_shape": (3, side, side)}).eval()
        cached = cached_codes_per_second(m, 16)
        naive = naive_codes_per_second(m, 16, positions=min(6, sizes.positions))
        rows.append([f"3x{side}x{side}", m.num_codes, f"{1e6 / cached:.1f}", f"{1e6 / naive:.1f}"])
    out.append("Cost per code as the image grows (batch 16): flat with the cache, linear without\n")
    out.append(table(["image", "codes", "cached us/code", "cache-free us/code"], rows) + "\n")

    peak = matmul_flops(sizes.matmul_n)
    flops = cached_step_flops(model)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.sample(1, generator=generator)
    step_seconds = (time.perf_counter() - start) / model.num_codes
    out.append("Cached step against the arithmetic limit (batch 1)\n")
    out.append(table(["FLOPs / code", f"matmul FLOP/s ({sizes.matmul_n}^2 fp32)", "time at peak", "measured / step",
                      "efficiency"],
                     [[f"{flops / 1e6:.2f} M", f"{peak / 1e9:.1f} G", f"{flops / peak * 1e6:.2f} us",
                       f"{step_seconds * 1e6:.0f} us", f"{flops / peak / step_seconds:.1%}"]]) + "\n")
    out.append("Where a cached batch-1 image goes (torch.profiler, self CPU time):\n")
    small = PixelCNN(**{**cifar, "image_shape": (3, sizes.profile_side, sizes.profile_side)}).eval()
    out.append(top_ops(lambda: small.sample(1, generator=generator)))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a smoke run in seconds (figures mean nothing)")
    args = parser.parse_args(argv)
    body = report(TINY if args.tiny else QUICK if args.quick else FULL)
    print(body)
    return body


if __name__ == "__main__":
    main()
