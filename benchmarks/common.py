"""Helpers shared by the benchmark scripts: timing, the machine's description, matmul FLOP/s, profiles."""

from __future__ import annotations

import argparse
import platform
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from arcore.errors import UsageError

if TYPE_CHECKING:
    from wavegen.griffinlim import MelFrames

CLASSICAL = {"mel": "mel-constrained Griffin-Lim, 100 iterations",
             "least-squares": "torchaudio least squares + Griffin-Lim, 100 iterations"}
"""The rows of the classical inversions (:data:`wavegen.quality.BASELINES`) in the vocoder benchmarks' tables."""


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


def add_frames_options(parser: argparse.ArgumentParser) -> None:
    """``--frames`` and ``--sample-rate``: the log-mel frame layouts a vocoder benchmark inverts (:func:`layouts`)."""
    parser.add_argument("--frames", nargs="+", default=[], metavar="BANDS/HOP[/WINDOW]",
                        help="log-mel frame layouts whose classical inversions are scored, e.g. 80/80 20/80 "
                             "80/256/1024 (the window defaults to 4 hops); each model is scored on its own frames, "
                             "whose layout is added when missing (default: the models' layouts, else 80/80)")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="the audio's rate when no --models are given (default 8000)")


def layouts(specs: list[str], models: Mapping[str, torch.nn.Module], sample_rate: int | None) -> list[MelFrames]:
    """The frame layouts of ``--frames`` (``BANDS/HOP`` or ``BANDS/HOP/WINDOW``), then each model's own where it is
    not among them; 80 bands every 80 samples when there are neither. All at one rate: the models', else
    ``sample_rate`` (8000 when None). Bad input is one :class:`arcore.UsageError` line."""
    from wavegen.griffinlim import MelFrames

    for name, model in models.items():
        if not getattr(model, "vocoder", False):
            raise UsageError(f"--models {name} is not a vocoder (it has no mel conditioning)")
    rates = sorted({model.sample_rate for model in models.values()})
    if len(rates) > 1 or (rates and sample_rate is not None and sample_rate != rates[0]):
        raise UsageError(f"--models are for {' and '.join(map(str, rates))} Hz audio"
                         + (f", --sample-rate {sample_rate}" if sample_rate is not None else "")
                         + ": compare vocoders of one rate")
    rate = rates[0] if rates else sample_rate or 8000
    out = []
    for spec in specs:
        parts = spec.split("/")
        if not 2 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
            raise UsageError(f"--frames {spec}: write BANDS/HOP or BANDS/HOP/WINDOW in samples, e.g. 80/80 or "
                             f"80/256/1024")
        try:
            out.append(MelFrames(rate, *map(int, parts)))
        except UsageError as exc:
            raise UsageError(f"--frames {spec}: {exc}") from None
    out += [frames for frames in dict.fromkeys(MelFrames.of(model) for model in models.values()) if frames not in out]
    return out or [MelFrames(rate)]


def frames_label(frames: MelFrames) -> str:
    """A layout in a table cell: bands, hop, window and mel values per sample."""
    return (f"{frames.n_mels} bands, hop {frames.hop_length}, window {frames.n_fft} "
            f"({frames.n_mels / frames.hop_length:.2f} per sample)")
