"""Image GPT sampling and training speed: KV-cached vs cache-free tokens/s, cost per token along the image, the
step's arithmetic and memory traffic against this machine's limits, and a profile of one step.

    .venv/bin/python -m benchmarks.bench_igpt [--threads N]

Random weights (speed does not depend on them). The cache-free sampler reruns the whole network on all N tokens
for every token, so its cost per token is one full forward pass at any position: it is timed as exactly that.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch

from benchmarks.common import best_time, machine, matmul_flops, table, top_ops, training_step_seconds
from pixelgen.fused import MAX_BATCH
from pixelgen.igpt import SPAN_BLOCK, ImageGPT

# name, image_shape, palette_size, width, layers, heads (the two shipped configs' models and the engine issue's
# reference transformer: 256 wide, 8 layers, 8 heads, 1,024 tokens, 512 colours + the start token = 513 inputs)
CONFIGS = [
    ("default, MNIST 28x28", (1, 28, 28), 16, 128, 4, 4),
    ("default, CIFAR 32x32", (3, 32, 32), 512, 128, 4, 4),
    ("reference 256w/8L/8H", (3, 32, 32), 512, 256, 8, 8),
]
HF_IMAGEGPT_REFERENCE = {1: 204, 8: 538}  # tokens/s of Hugging Face ImageGPT with its KV cache on this CPU (issue 3)


def build(image_shape: tuple[int, int, int], palette: int, width: int, layers: int, heads: int) -> ImageGPT:
    model = ImageGPT(image_shape=image_shape, palette_size=palette, width=width, layers=layers, heads=heads)
    return model.eval().requires_grad_(False)


def matmul_params(model: ImageGPT) -> int:
    """Weights read by the matrix products of one step (the embedding lookups are single rows)."""
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 2
               and not name.startswith("token_embedding"))


def step_cost(model: ImageGPT, batch: int) -> tuple[float, float]:
    """(FLOPs, bytes read) per generated token, averaged over the image: 2 FLOPs per weight and per batch row for the
    products; attention reads and multiplies keys and values over the span attended (the written positions rounded
    up to the span block); the weights are read once per step for the whole batch."""
    n, width = model.num_codes, model.start.shape[0]
    spans = [min(n, (t // SPAN_BLOCK + 1) * SPAN_BLOCK) for t in range(n)]
    mean_span = sum(spans) / n
    layers = len(model.blocks)
    flops = 2 * matmul_params(model) + layers * 4 * mean_span * width
    weight_bytes = 4 * matmul_params(model)
    kv_bytes = batch * layers * 2 * mean_span * width * 4
    return flops, weight_bytes / batch + kv_bytes / batch


def read_bandwidth() -> float:
    """Bytes/s of streaming a 256 MB tensor (larger than every cache): the memory ceiling of a batch-1 step."""
    big = torch.randn(64 * 1024 * 1024)
    return big.numel() * 4 / best_time(big.sum, repeats=5)


@torch.no_grad()
def sampling_rows(flops_per_s: float, bandwidth: float) -> tuple[list[list[object]], list[list[object]]]:
    speed, limits = [], []
    for name, shape, palette, width, layers, heads in CONFIGS:
        model = build(shape, palette, width, layers, heads)
        n = model.num_codes
        big = 8 if name.startswith("reference") else 16
        runs = [(b, step) for b in (1, big) for step in ("fused", "PyTorch") if step == "PyTorch" or b <= MAX_BATCH]
        for batch, step in runs:
            os.environ["PIXELGEN_FUSED"] = "1" if step == "fused" else "0"
            generator = torch.Generator().manual_seed(0)
            cached = best_time(partial(model.sample, batch, generator=generator), repeats=2)
            codes = torch.zeros(batch, *model.event_shape, dtype=torch.long)
            naive = best_time(partial(model, codes), repeats=2)  # one cache-free step at any position
            cached_rate, naive_rate = batch * n / cached, batch / naive
            hf = HF_IMAGEGPT_REFERENCE.get(batch) if name.startswith("reference") else None
            speed.append([name, n, palette, batch, step, f"{cached_rate:,.0f}", f"{naive_rate:,.1f}",
                          f"{cached_rate / naive_rate:,.0f}x", f"{hf:,}" if hf else "-"])
            if step == "PyTorch" and batch <= MAX_BATCH:
                continue  # the floors do not depend on how the step is run
            flops, bytes_read = step_cost(model, batch)
            step_us = 1e6 * cached / (n)  # per step of the whole batch
            limits.append([name, batch, f"{flops / 1e6:.1f}", f"{bytes_read * batch / 1e6:.1f}", f"{step_us:,.0f}",
                           f"{1e6 * flops * batch / flops_per_s:,.0f}", f"{1e6 * bytes_read * batch / bandwidth:,.0f}"])
    return speed, limits


@torch.no_grad()
def cost_along_the_image(model: ImageGPT, batch: int = 1, window: int = 32) -> list[list[object]]:
    """Microseconds per cached step at a few positions: flat but for the attention span growing with t."""
    n = model.num_codes
    cache = model.init_cache(batch, None, model.event_shape)
    seq = torch.zeros(batch, n, dtype=torch.long)
    marks = {0, n // 4, n // 2, 3 * n // 4, n - window}
    rows = []
    t = 0
    while t < n:
        if t in marks:
            start = time.perf_counter()
            for s in range(t, t + window):
                model.step(cache, s, seq)
                cache.position.add_(1)
            rows.append([f"{t}-{t + window - 1}", f"{1e6 * (time.perf_counter() - start) / window:,.0f}"])
            t += window
        else:
            model.step(cache, t, seq)
            cache.position.add_(1)
            t += 1
    return rows


def training_rows() -> list[list[object]]:
    rows = []
    for name, shape, palette, width, layers, heads in CONFIGS[:2]:
        model = build(shape, palette, width, layers, heads).requires_grad_(True)
        batch = 16
        codes = torch.randint(0, palette, (batch, *model.event_shape))
        seconds = training_step_seconds(model, codes, steps=1)
        rows.append([name, batch, f"{batch * model.num_codes / seconds:,.0f}", f"{batch / seconds:,.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flops_per_s, bandwidth = matmul_flops(), read_bandwidth()
    print(f"Machine: {machine()}")
    print(f"Measured: {flops_per_s / 1e9:,.0f} GFLOP/s float32 matmul (1024^3), "
          f"{bandwidth / 1e9:,.1f} GB/s streaming read\n")
    speed, limits = sampling_rows(flops_per_s, bandwidth)
    print("Sampling, tokens/s (a full image; cache-free = one full forward pass per token)\n")
    print(table(["model", "tokens", "palette", "batch", "cached step", "KV cache", "cache-free", "speed-up",
                 "HF ImageGPT (issue 3)"], speed))
    print("\nOne cached step against the machine (averaged over the image; the floors are arithmetic at the "
          "measured matmul rate and reading weights + KV once at the streaming rate)\n")
    print(table(["model", "batch", "MFLOP/token", "MB read/step", "us/step", "FLOP floor us", "memory floor us"],
                limits))
    reference = build(*CONFIGS[2][1:])
    print("\nCost per cached step along the image (reference model, batch 1, 32 steps each)\n")
    along = {}
    for step in ("fused", "PyTorch"):
        os.environ["PIXELGEN_FUSED"] = "1" if step == "fused" else "0"
        along[step] = cost_along_the_image(reference)
    rows = [[pos, fused, torch_us] for (pos, fused), (_, torch_us) in zip(along["fused"], along["PyTorch"])]
    print(table(["positions", "fused us/step", "PyTorch us/step"], rows))
    print("\nTraining (forward + backward + AdamW), batch 16\n")
    print(table(["model", "batch", "tokens/s", "images/s"], training_rows()))
    print("\nWhere a batch-1 PyTorch step of the reference model goes (torch.profiler, steps 512-575)\n")
    os.environ["PIXELGEN_FUSED"] = "0"
    cache = reference.init_cache(1, None, reference.event_shape)
    seq = torch.zeros(1, reference.num_codes, dtype=torch.long)

    def steps(positions: range) -> None:
        with torch.no_grad():
            for t in positions:
                reference.step(cache, t, seq)
                cache.position.add_(1)

    steps(range(512))
    print(top_ops(lambda: steps(range(512, 576)), rows=10))


if __name__ == "__main__":
    main()
