"""PixelCNN benchmark: training images/s, cached vs cache-free sampling, cost per code as images grow.

    python -m benchmarks.bench_pixelcnn [--quick]

Random weights (speed does not depend on training). The cache-free sampler reruns the whole network for every
sub-pixel, so its cost per position does not depend on the position: it is timed over the first positions of an
image and reported per code. The cached sampler is timed over whole images.
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine()}\n")

    steps = 2 if args.quick else 5
    configs = [("MNIST binarised 1x28x28 (default)", MNIST, 64), ("CIFAR-10 8-bit 3x32x32 (default)", CIFAR, 32),
               ("CIFAR-10 8-bit, logistic mixture", {**CIFAR, **MIXTURE}, 32), ("MNIST 8-bit, softmax", MNIST8, 64),
               ("MNIST 8-bit, logistic mixture", {**MNIST8, **MIXTURE}, 64)]
    rows = [[name, batch, f"{training_images_per_second(config, batch, steps):,.0f}"]
            for name, config, batch in configs]
    print("Training throughput (forward + backward + AdamW step)\n")
    print(table(["config", "batch", "images/s"], rows) + "\n")

    model = PixelCNN(**CIFAR).eval()
    rows = []
    for batch in (1, 16):
        cached = cached_codes_per_second(model, batch)
        naive = naive_codes_per_second(model, batch, positions=6 if args.quick else 24)
        rows.append([batch, f"{cached:,.0f}", f"{naive:,.1f}", f"{cached / naive:,.0f}x",
                     f"{model.num_codes * batch / cached:.2f} s", f"{model.num_codes * batch / naive:,.0f} s"])
    print("Sampling a 3x32x32 CIFAR-10 image, default model (hidden 48, 8 layers)\n")
    print(table(["batch", "cached codes/s", "cache-free codes/s", "speed-up", "cached time / batch",
                 "cache-free time / batch"], rows) + "\n")

    mixture = PixelCNN(**CIFAR, **MIXTURE).eval()
    rows = [[batch, f"{cached_codes_per_second(mixture, batch):,.0f}"] for batch in (1, 16)]
    print("Cached sampling with the logistic mixture output (the stacks once per pixel, then each channel's mixture)\n")
    print(table(["batch", "cached codes/s"], rows) + "\n")

    rows = []
    for size in ((8, 16) if args.quick else (8, 16, 32)):
        m = PixelCNN(**{**CIFAR, "image_shape": (3, size, size)}).eval()
        cached = cached_codes_per_second(m, 16)
        naive = naive_codes_per_second(m, 16, positions=6)
        rows.append([f"3x{size}x{size}", m.num_codes, f"{1e6 / cached:.1f}", f"{1e6 / naive:.1f}"])
    print("Cost per code as the image grows (batch 16): flat with the cache, linear without\n")
    print(table(["image", "codes", "cached us/code", "cache-free us/code"], rows) + "\n")

    peak = matmul_flops()
    flops = cached_step_flops(model)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.sample(1, generator=generator)
    step_seconds = (time.perf_counter() - start) / model.num_codes
    print("Cached step against the arithmetic limit (batch 1)\n")
    print(table(["FLOPs / code", "matmul FLOP/s (1024^2 fp32)", "time at peak", "measured / step", "efficiency"],
                [[f"{flops / 1e6:.2f} M", f"{peak / 1e9:.1f} G", f"{flops / peak * 1e6:.2f} us",
                  f"{step_seconds * 1e6:.0f} us", f"{flops / peak / step_seconds:.1%}"]]) + "\n")
    print("Where a cached batch-1 image goes (torch.profiler, self CPU time):\n")
    small = PixelCNN(**{**CIFAR, "image_shape": (3, 8, 8)}).eval()
    print(top_ops(lambda: small.sample(1, generator=generator)))


if __name__ == "__main__":
    main()
