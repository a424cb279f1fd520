"""Image GPT sampling and training speed: KV-cached vs cache-free tokens/s, cost per token along the image, the
step's arithmetic and memory traffic against this machine's limits, and a profile of one step.

    .venv/bin/python -m benchmarks.bench_igpt [--threads N] [--tiny] [--results benchmarks/RESULTS.md]

Random weights (speed does not depend on them). The cache-free sampler reruns the whole network on all N tokens
for every token, so its cost per token is one full forward pass at any position: it is timed as exactly that.
``--tiny`` runs every part at toy sizes in a few seconds (a smoke run: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from arcore.sampling.engine import stepper
from benchmarks.common import best_time, machine, matmul_flops, table, top_ops, training_step_seconds, write_section
from pixelgen.igpt import ImageGPT, ImageGPTSampler
from pixelgen.igpt_step import MAX_BATCH, FusedStep

Config = tuple[str, tuple[int, int, int], int, int, int, int]  # name, image_shape, palette, width, layers, heads


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the models (the last one is the reference of the per-position table and the profile),
    the larger batch of the reference model, the repeats, and the sizes of the machine's measurements."""

    configs: tuple[Config, ...]
    reference_batch: int
    repeats: int
    window: int  # positions per stretch of the cost along the image
    profile_positions: tuple[int, int]  # the profiled steps: from, to
    matmul_n: int
    stream_floats: int


# the two shipped configs' models and the engine's reference transformer: 256 wide, 8 layers, 8 heads, 1,024 tokens,
# 512 colours
FULL = Sizes(configs=(("default, MNIST 28x28", (1, 28, 28), 16, 128, 4, 4),
                      ("default, CIFAR 32x32", (3, 32, 32), 512, 128, 4, 4),
                      ("reference 256w/8L/8H", (3, 32, 32), 512, 256, 8, 8)),
             reference_batch=8, repeats=2, window=32, profile_positions=(512, 576), matmul_n=1024,
             stream_floats=64 * 1024 * 1024)
TINY = Sizes(configs=(("tiny 4x4", (1, 4, 4), 4, 16, 1, 2), ("tiny reference 6x6", (3, 6, 6), 8, 16, 2, 2)),
             reference_batch=2, repeats=1, window=4, profile_positions=(16, 20), matmul_n=64, stream_floats=1 << 16)
HF_IMAGEGPT_REFERENCE = {1: 204, 8: 538}  # tokens/s of Hugging Face ImageGPT with its KV cache, measured once
# on the AMD EPYC, quiet, 2 threads (not installed here: printed beside the reference model's rows)
SECTION = "Image GPT (`python -m benchmarks.bench_igpt`)"


def build(image_shape: tuple[int, int, int], palette: int, width: int, layers: int, heads: int) -> ImageGPT:
    model = ImageGPT(image_shape=image_shape, palette_size=palette, width=width, layers=layers, heads=heads)
    return model.eval().requires_grad_(False)


def use_fused(fused: bool) -> None:
    os.environ["PIXELGEN_FUSED"] = "1" if fused else "0"


def matmul_params(model: ImageGPT) -> int:
    """Weights read by the matrix products of one step (the embedding lookups are single rows)."""
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 2
               and not name.startswith("token_embedding"))


def step_cost(model: ImageGPT, batch: int) -> tuple[float, float]:
    """(FLOPs, bytes read) per generated token, averaged over the image, for the step ``sample`` runs at this
    batch: 2 FLOPs per weight and batch row for the products; attention reads and multiplies the keys and values of
    the span it attends over (positions 0..t for the fused step; the span bucket holding t for the PyTorch step);
    the weights are read once per step for the whole batch."""
    sampler = ImageGPTSampler(model, batch, None, model.event_shape)
    n, width = model.num_codes, model.start.shape[0]
    if isinstance(sampler.step, FusedStep):
        spans = [t + 1 for t in range(n)]
    else:
        spans = [next(span for span in sampler.spans() if t < span) for t in range(n)]
    mean_span = sum(spans) / n
    layers = len(model.blocks)
    flops = 2 * matmul_params(model) + layers * 4 * mean_span * width
    weight_bytes = 4 * matmul_params(model)
    kv_bytes = batch * layers * 2 * mean_span * width * 4
    return flops, weight_bytes / batch + kv_bytes / batch


def read_bandwidth(floats: int) -> float:
    """Bytes/s of streaming a tensor of ``floats`` float32 values (at full size larger than every cache): the memory
    ceiling of a batch-1 step."""
    big = torch.randn(floats)
    return big.numel() * 4 / best_time(big.sum, repeats=5)


@torch.no_grad()
def sampling_rows(sizes: Sizes, flops_per_s: float, bandwidth: float) -> tuple[list[list[object]], list[list[object]]]:
    """The tokens/s table (every model, batch 1 and a larger batch, fused and PyTorch steps) and the floors table."""
    speed, limits = [], []
    for i, (name, shape, palette, width, layers, heads) in enumerate(sizes.configs):
        model = build(shape, palette, width, layers, heads)
        n = model.num_codes
        reference = i == len(sizes.configs) - 1
        big = sizes.reference_batch if reference else 16
        runs = [(b, step) for b in (1, big) for step in ("fused", "PyTorch") if step == "PyTorch" or b <= MAX_BATCH]
        for batch, step in runs:
            use_fused(step == "fused")
            generator = torch.Generator().manual_seed(0)
            cached = best_time(partial(model.sample, batch, generator=generator), repeats=sizes.repeats)
            codes = torch.zeros(batch, *model.event_shape, dtype=torch.long)
            naive = best_time(partial(model, codes), repeats=sizes.repeats)  # one cache-free step at any position
            cached_rate, naive_rate = batch * n / cached, batch / naive
            hf = HF_IMAGEGPT_REFERENCE.get(batch) if reference and sizes is FULL else None
            speed.append([name, n, palette, batch, step, f"{cached_rate:,.0f}", f"{naive_rate:,.1f}",
                          f"{cached_rate / naive_rate:,.0f}x", f"{hf:,}" if hf else "-"])
            if step == "PyTorch" and batch <= MAX_BATCH:
                continue  # the floors of the step that sample runs at this batch
            flops, bytes_read = step_cost(model, batch)
            step_us = 1e6 * cached / n  # per step of the whole batch
            limits.append([name, batch, f"{flops / 1e6:.1f}", f"{bytes_read * batch / 1e6:.1f}", f"{step_us:,.0f}",
                           f"{1e6 * flops * batch / flops_per_s:,.0f}", f"{1e6 * bytes_read * batch / bandwidth:,.0f}"])
    use_fused(True)
    return speed, limits


@torch.no_grad()
def cost_along_the_image(model: ImageGPT, window: int, batch: int = 1) -> list[list[object]]:
    """Microseconds per cached step in a few stretches of ``window`` positions: flat but for the attention span
    growing with the position. The steps run through the engine's runner, which advances the cache's position."""
    n = model.num_codes
    run, _ = stepper(model, batch, None, model.event_shape)
    seq = torch.zeros(batch, n, dtype=torch.long)
    marks = sorted({0, n // 4, n // 2, 3 * n // 4, n - window})
    rows = []
    t = 0
    for mark in marks:
        while t < mark:
            run(t, seq)
            t += 1
        start = time.perf_counter()
        for s in range(t, t + window):
            run(s, seq)
        rows.append([f"{t}-{t + window - 1}", f"{1e6 * (time.perf_counter() - start) / window:,.0f}"])
        t += window
    return rows


def training_rows(sizes: Sizes) -> list[list[object]]:
    """Tokens/s and images/s of a training step (forward, backward, AdamW) at batch 16 for every model but the
    reference."""
    rows = []
    for name, shape, palette, width, layers, heads in sizes.configs[:-1]:
        model = build(shape, palette, width, layers, heads).requires_grad_(True)
        batch = 16
        codes = torch.randint(0, palette, (batch, *model.event_shape))
        seconds = training_step_seconds(model, codes, steps=1)
        rows.append([name, batch, f"{batch * model.num_codes / seconds:,.0f}", f"{batch / seconds:,.1f}"])
    return rows


def profile(model: ImageGPT, positions: tuple[int, int]) -> str:
    """The operators of a batch-1 PyTorch step over ``positions`` (after stepping up to the first)."""
    use_fused(False)
    run, _ = stepper(model, 1, None, model.event_shape)
    seq = torch.zeros(1, model.num_codes, dtype=torch.long)

    def steps(span: range) -> None:
        for t in span:
            run(t, seq)

    steps(range(positions[0]))
    ops = top_ops(lambda: steps(range(*positions)), rows=10)
    use_fused(True)
    return ops


def report(sizes: Sizes) -> str:
    """Every table of the benchmark as Markdown."""
    load = os.getloadavg()
    flops_per_s, bandwidth = matmul_flops(sizes.matmul_n), read_bandwidth(sizes.stream_floats)
    machine_line = (f"Machine: {machine()}. Measured {flops_per_s / 1e9:,.0f} GFLOP/s float32 matmul "
                    f"({sizes.matmul_n}^3) and {bandwidth / 1e9:,.1f} GB/s streaming read in this run; load average "
                    f"{load[0]:.1f} at the start.\n")
    out = [machine_line]
    speed, limits = sampling_rows(sizes, flops_per_s, bandwidth)
    out.append("Sampling, tokens/s (a full image; cache-free = one full forward pass per token):\n")
    out.append(table(["model", "tokens", "palette", "batch", "cached step", "KV cache", "cache-free", "speed-up",
                      "HF ImageGPT (quiet, 2 threads)"], speed) + "\n")
    out.append("One cached step against the machine (averaged over the image; the floors are arithmetic at the "
               "measured matmul rate and reading weights + KV once at the streaming rate):\n")
    out.append(table(["model", "batch", "MFLOP/token", "MB read/step", "us/step", "FLOP floor us",
                      "memory floor us"], limits) + "\n")
    name, *config = sizes.configs[-1]
    reference = build(*config)
    along = {}
    for step in ("fused", "PyTorch"):
        use_fused(step == "fused")
        along[step] = cost_along_the_image(reference, sizes.window)
    use_fused(True)
    rows = [[pos, fused, torch_us] for (pos, fused), (_, torch_us) in zip(along["fused"], along["PyTorch"])]
    out.append(f"Cost per cached step along the image ({name}, batch 1, {sizes.window} steps each):\n")
    out.append(table(["positions", "fused us/step", "PyTorch us/step"], rows) + "\n")
    out.append("Training (forward + backward + AdamW), batch 16:\n")
    out.append(table(["model", "batch", "tokens/s", "images/s"], training_rows(sizes)) + "\n")
    first, last = sizes.profile_positions
    out.append(f"Where a batch-1 PyTorch step of {name} goes (torch.profiler, steps {first}-{last - 1}):\n")
    out.append("```\n" + profile(reference, sizes.profile_positions) + "\n```\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, one repeat: a smoke run in seconds")
    parser.add_argument("--results", type=Path, default=None, help="Markdown file whose image GPT section to rewrite")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    body = report(TINY if args.tiny else FULL)
    print(body)
    if args.results:
        write_section(args.results, SECTION, body)
    return body


if __name__ == "__main__":
    main()
