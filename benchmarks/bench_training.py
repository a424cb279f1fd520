"""Training-step benchmark: every shipped config's step in float32 against the precision a run would choose.

    python -m benchmarks.bench_training [--quick | --tiny] [--configs NAME ...]

Each row times one config's training step as ``fit`` runs it (the data batch turned into codes and conditioning, the
teacher-forced pass, backward, AdamW) on a random batch of the config's size, in float32 and with bf16 autocast, on 1
and 2 threads, in one process. The arithmetic the step does (matrix products and convolutions, forward and
backward) is counted with torch's FLOP counter, and its rate is set against a large matrix product's in the same
precision on the same threads: the fraction of this machine's peak the step reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from arcore.training.precision import native_bf16
from benchmarks.common import best_time, machine, table, write_section

CONFIGS = {  # the README's shipped models: config file, and what the tools add to its model settings
    "pixelcnn_mnist": ("pixelcnn_mnist.yaml", {}),
    "pixelcnn_cifar10_mixture": ("pixelcnn_cifar10_mixture.yaml", {}),
    "igpt_mnist": ("igpt_mnist.yaml", {"resolution": 14}),
    "wavenet_speech": ("wavenet_speech.yaml", {}),
    "wavenet_vocoder": ("wavenet_vocoder.yaml", {}),
}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "lightning_configs"


def build(name: str, tiny: bool) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    """The model of a shipped config and one random data batch of the config's size (a tiny batch if ``tiny``)."""
    import importlib

    file, extra = CONFIGS[name]
    config = yaml.safe_load((CONFIG_DIR / file).read_text())
    module, cls = config["model"]["class_path"].rsplit(".", 1)
    settings = {**config["model"]["init_args"], **extra}
    model = getattr(importlib.import_module(module), cls)(**settings)
    data = config["data"]
    batch = 2 if tiny else data["batch_size"]
    if "image_shape" in settings:  # pixel models: codes in the model's levels
        shape = tuple(model.hparams.image_shape)
        if hasattr(model, "fit_palette"):  # image GPT: its batches are 8-bit images, tokens through its palette
            codes = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
            model.fit_palette(codes)
        else:
            codes = torch.randint(0, model.num_classes, (batch, *shape))
    else:  # audio: mu-law codes of a crop, like speech (a random walk, so the log-mel frames are not white)
        length = 400 if tiny else data["target_length"]
        walk = torch.randn(batch, length).cumsum(1)
        walk = 0.5 * walk / walk.abs().amax(1, keepdim=True)
        import torchaudio.functional as AF

        codes = AF.mu_law_encoding(walk, model.num_classes)
    return model, (codes, torch.zeros(batch, dtype=torch.long))


def step_fn(model: Any, batch: tuple[torch.Tensor, torch.Tensor], bf16: bool) -> Callable[[], None]:
    """One training step of ``model`` as ``fit`` runs it, under bf16 autocast if ``bf16``."""
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            codes, cond = model.unpack(batch)  # a vocoder's log-mel frames and excitation are part of its step
            loss = -model.log_prob(codes, cond).mean() / model.dims(codes)
        loss.backward()
        optimiser.step()

    return run


def step_flops(run: Callable[[], None]) -> int:
    """Floating-point operations of the matrix products and convolutions of one step (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def peak_flops(bf16: bool, n: int = 1024) -> float:
    """FLOP/s of an ``n x n`` matrix product in the step's precision: the ceiling the step is set against."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats=5)


def timed_once(run: Callable[[], None]) -> float:
    """Seconds of one run of ``run`` (no warm-up): for a step too slow to repeat."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def percent(rate: float | None) -> str:
    """A fraction of the peak as a percentage, or n/a where it was not measured."""
    return "n/a" if rate is None else f"{rate:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--tiny", action="store_true", help="tiny batches, one thread: a smoke run (no results file)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    repeats = 1 if args.tiny or args.quick else 3
    threads = [1] if args.tiny else args.threads
    native = native_bf16()[0]
    rows = []
    for name in args.configs:
        model, batch = build(name, args.tiny)
        examples = batch[0].shape[0]
        for n in threads:
            torch.set_num_threads(n)
            seconds, rates = {}, {}
            for bf16 in (False, True):
                run = step_fn(model, batch, bf16)
                if bf16 and not native:  # emulated: tens of times slower, one step says enough
                    seconds[bf16] = timed_once(run)
                    rates[bf16] = None
                    continue
                seconds[bf16] = best_time(run, repeats=repeats)
                rates[bf16] = step_flops(run) / seconds[bf16] / peak_flops(bf16)
            rows.append([name, n, f"{examples / seconds[False]:.1f}", f"{examples / seconds[True]:.2f}",
                         f"{seconds[False] / seconds[True]:.2f}x", percent(rates[False]), percent(rates[True])])
            print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["config", "threads", "float32 examples/s", "bf16 examples/s", "bf16 speed-up",
              "float32 % of peak", "bf16 % of peak"]
    body = (f"Machine: {machine()}; native bf16: {native} ({native_bf16()[1]}). Where bf16 is emulated its step "
            f"is timed once, without a warm-up, and its share of the peak is not measured.\n\n" + table(header, rows))
    print(body)
    if not args.tiny:
        write_section(args.out, "Training step: float32 and bf16 (bench_training.py)", body)


if __name__ == "__main__":
    main()
