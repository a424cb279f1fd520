"""WaveNet benchmark: cached vs cache-free sampling, cost per sample as the clip grows, training samples/s.

    python -m benchmarks.bench_wavenet [--quick] [--results benchmarks/RESULTS.md]

The reference configuration of the engine issue: 20 layers in 2 cycles, kernel 2, 64 residual / 128 gate /
64 skip channels, 256 mu-law classes, random weights (speed does not depend on training). Sampling goes through
``model.sample`` (the shared engine: decoding, noise and the code buffer included). The cache-free sampler reruns
the network over the whole clip buffer for every sample, so its cost per sample is set by the clip length: it is
timed over a few positions. ``--results`` replaces the WaveNet section of a Markdown results file.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from benchmarks.common import best_time, machine, matmul_flops, table, top_ops, training_step_seconds
from wavegen.wavenet import WaveNet

REFERENCE = {"layers": 20, "cycles": 2, "kernel_size": 2, "residual_channels": 64, "gate_channels": 128,
             "skip_channels": 64, "head_channels": 64}


def cached_samples_per_second(model: WaveNet, batch: int, length: int) -> float:
    generator = torch.Generator().manual_seed(0)
    seconds = best_time(lambda: model.sample(batch, length=length, generator=generator), repeats=2)
    return batch * length / seconds


def naive_samples_per_second(model: WaveNet, batch: int, length: int, positions: int) -> float:
    """Cache-free samples/s for a clip of ``length`` samples, from its first ``positions`` steps."""
    seq = torch.zeros(batch, length, dtype=torch.long)
    with torch.no_grad():
        def run() -> None:
            for t in range(positions):
                model(seq)[:, t]
        return batch * positions / best_time(run, repeats=2)


def cached_cost_by_position(model: WaveNet, batch: int, length: int, windows: int) -> list[float]:
    """Microseconds per sample of the cached step in ``windows`` equal stretches of one clip (after a warm-up)."""
    model.sample(batch, length=500)
    cache = model.init_cache(batch, None, (length,))
    seq = torch.randint(0, model.num_classes, (batch, length))
    per_window = length // windows
    costs = []
    with torch.no_grad():
        for w in range(windows):
            start = time.perf_counter()
            for t in range(w * per_window, (w + 1) * per_window):
                model.step(cache, t, seq)
                cache.position.add_(1)
            costs.append((time.perf_counter() - start) / (per_window * batch) * 1e6)
    return costs


def training_samples_per_second(batch: int, length: int, steps: int) -> float:
    codes = torch.randint(0, 256, (batch, length))
    return batch * length / training_step_seconds(WaveNet(**REFERENCE), codes, steps)


def flops_per_sample(model: WaveNet) -> float:
    """2 x multiply-adds of one cached step: every layer's gate, residual and skip products, and the head."""
    hp = model.hparams
    half = hp.gate_channels // 2
    macs = 0
    for layer in model.layers:
        macs += model.kernel_size * hp.residual_channels * hp.gate_channels + half * hp.skip_channels
        macs += 0 if layer.residual is None else half * hp.residual_channels
    macs += hp.skip_channels * hp.head_channels + hp.head_channels * model.num_classes
    return 2.0 * macs


def report(quick: bool) -> str:
    torch.manual_seed(0)
    model = WaveNet(**REFERENCE).eval()
    out = [(f"Machine: {machine()}. Reference WaveNet: 20 layers in 2 cycles, kernel 2, 64 residual / 128 gate / "
            f"64 skip channels, receptive field {model.receptive_field} samples, random weights.\n")]

    length = 2000 if quick else 8000
    rows = []
    for batch in (1, 16):
        cached = cached_samples_per_second(model, batch, length if batch == 1 else length // 4)
        naive = naive_samples_per_second(model, batch, length, positions=3 if quick else 10)
        rows.append([batch, f"{cached:,.0f}", f"{naive:,.1f}", f"{cached / naive:,.0f}x",
                     f"{cached / model.sample_rate:.2f}x"])
    out.append(f"Sampling (`model.sample`, {length} samples = {length / 8000:g} s at 8 kHz for the cache-free "
               f"path)\n")
    out.append(table(["batch", "cached samples/s", "cache-free samples/s", "speed-up",
                      "cached real-time factor at 8 kHz"], rows) + "\n")

    windows = 4
    growth = 4000 if quick else 16000
    cached_costs = cached_cost_by_position(model, 16, growth, windows)
    rows = []
    for w, cost in enumerate(cached_costs):
        clip = (w + 1) * growth // windows
        naive = naive_samples_per_second(model, 16, clip, positions=2)
        rows.append([f"{w * growth // windows}-{clip}", f"{cost:.1f}", clip, f"{1e6 / naive:,.0f}"])
    out.append("Cost per sample as the clip grows (batch 16): flat with the cache, linear in the clip length "
               "without\n")
    out.append(table(["cached: positions", "cached us/sample", "cache-free: clip length",
                      "cache-free us/sample"], rows) + "\n")

    train = training_samples_per_second(8, 4047, 1 if quick else 3)
    out.append("Training (forward + backward + AdamW, batch 8 crops of 4,047 samples = receptive field + 2,000)\n")
    out.append(table(["samples/s", "seconds of 8 kHz audio per second"], [[f"{train:,.0f}", f"{train / 8000:.2f}"]])
               + "\n")

    peak = matmul_flops()
    flops = flops_per_sample(model)
    rows = []
    for batch in (1, 16):
        step = batch / cached_samples_per_second(model, batch, 1000 if quick else 4000)
        rows.append([batch, f"{flops / 1e6:.2f} M", f"{peak / 1e9:.1f} G", f"{batch * flops / peak * 1e6:.1f} us",
                     f"{step * 1e6:.0f} us", f"{batch * flops / peak / step:.1%}"])
    out.append("Cached step against the arithmetic limit\n")
    out.append(table(["batch", "FLOPs / sample", "matmul FLOP/s (1024^2 fp32)", "step time at peak",
                      "measured step", "efficiency"], rows) + "\n")
    generator = torch.Generator().manual_seed(0)
    out.append("Where a batch-1 cached clip of 1,000 samples goes (torch.profiler, self CPU time):\n")
    out.append("```\n" + top_ops(lambda: model.sample(1, length=1000, generator=generator), rows=10) + "\n```\n")
    return "\n".join(out)


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the ``## WaveNet`` section of a Markdown file."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## WaveNet (`python -m benchmarks.bench_wavenet`)\n\n{body}\n"
    pattern = re.compile(r"^## WaveNet.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter clips and fewer repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--results", type=Path, default=None, help="Markdown file whose WaveNet section to rewrite")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    body = report(args.quick)
    print(body)
    if args.results:
        write_section(args.results, body)


if __name__ == "__main__":
    main()
