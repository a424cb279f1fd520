"""Helpers shared by the benchmark scripts: timing, the machine's description, matmul FLOP/s, profiles."""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def machine() -> str:
    """One line naming the processor, core count, torch version and device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"


def best_time(fn: Callable[[], object], repeats: int = 3, device: str = "cpu") -> float:
    """Fastest of ``repeats`` wall-clock runs of ``fn`` in seconds (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def training_step_seconds(model: torch.nn.Module, codes: torch.Tensor, steps: int = 3, cond: object = None
                          ) -> float:
    """Seconds per teacher-forced training step (forward, backward, AdamW) on a batch of ``codes`` (conditioned on
    ``cond`` when the model needs it)."""
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            (-model.log_prob(codes, cond).mean()).backward()
            optimiser.step()

    return best_time(run, repeats=2) / steps


def matmul_flops(n: int = 1024, device: str = "cpu") -> float:
    """Measured FLOP/s of an n x n float32 matrix product: the arithmetic ceiling of this machine."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = best_time(lambda: a @ b, repeats=5, device=device)
    return 2 * n ** 3 / seconds


def top_ops(fn: Callable[[], object], rows: int = 8) -> str:
    """The operators that take the most self CPU time while ``fn`` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section ``## {title}`` of a Markdown file with ``body``."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body}\n"
    pattern = re.compile(rf"^## {re.escape(title.split(' (')[0])}.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def speech_like(pitch: float, seconds: float, rate: int = 8000) -> np.ndarray:
    """A voiced buzz (seven harmonics of ``pitch`` Hz) switched on and off three times a second: float32 audio for
    the tiny smoke runs of the vocoder benchmarks."""
    t = np.arange(round(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, 8)) * (np.sin(6 * np.pi * t) > 0)
    return (0.3 * voice).astype(np.float32)


def tiny_vocoder() -> torch.nn.Module:
    """An untrained predictive 2-layer WaveNet vocoder (8 kHz, 80 mels), in eval mode: the tiny runs' model."""
    from wavegen.wavenet import WaveNet

    return WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                   n_mels=80, hop_length=80, cond_channels=4, upsample="transposed", cond_layers=1, lpc_order=8,
                   preemphasis=0.85).eval()


def load_vocoders(paths: list[str]) -> dict[str, torch.nn.Module]:
    """Each weights file or checkpoint of ``paths`` loaded (``wavegen.load``), by its file name."""
    import wavegen

    return {Path(path).name: wavegen.load(path) for path in paths}
