"""WaveNet benchmark: the fused C++ step, the PyTorch step, cache-free sampling and r9y9/wavenet_vocoder, side by side.

    python -m benchmarks.bench_wavenet [--quick | --tiny] [--results benchmarks/RESULTS.md]

Models, random weights (speed does not depend on training): the reference WaveNet of the engine issue (20 layers in
2 cycles, kernel 2, 64 residual / 128 gate / 64 skip / 64 head channels, 256 mu-law classes), which is also the
model of ``lightning_configs/wavenet_speech.yaml``; ``wavenet_digits.yaml`` (the same with 6 speakers); and
``wavenet_vocoder.yaml`` (16 layers, 128 head channels, conditioned on 80-band log-mel frames every 80 samples
through a learned x4 x4 x5 upsampling). Each is sampled through ``model.sample`` (the shared engine: decoding,
noise and the code buffer included; the vocoder's conditioning network included) with the fused step and with the
PyTorch step (``WAVEGEN_FUSED=0``), at 1 and 2 threads, in one run. The cache-free sampler reruns the network over
the whole clip for every sample, so it is timed over a few positions of a 1 s clip.

r9y9/wavenet_vocoder 0.1.1 (``pip install -e '.[bench]'``) is built at the same sizes (speakers through its global
conditioning, the vocoder through its local conditioning with its upsampling network) and timed in the same run
with its ``incremental_forward``: at batch 1 its own sampling loop; at batch 16, which its sampler cannot draw,
the same loop fed the codes (``test_inputs``), which runs the same network per step without the draw.
``--results`` replaces the WaveNet section of a Markdown results file. ``--tiny`` runs every part with 2-layer
models and short clips in a few seconds (a smoke run: its figures mean nothing); r9y9's column is left out when
its package is not installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from arcore.sampling.decoding import Decoding
from arcore.sampling.engine import stepper
from benchmarks.common import (
    best_time,
    machine,
    matmul_flops,
    table,
    top_ops,
    training_step_seconds,
    write_section,
)
from wavegen.wavenet import AudioCond, WaveNet, upsample_factors
from wavegen.wavenet_step import FusedStep, weight_dtype

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
RATE = 8000
REFERENCE = "reference = wavenet_speech.yaml"
Cond = Callable[[int, int], "AudioCond | torch.Tensor | None"]


@dataclass(frozen=True)
class Sizes:
    """What a run measures: changes to the shipped configs' models, clip lengths, repeats and the machine's
    measurements (the roofline's buffers)."""

    changes: dict = field(default_factory=dict)  # applied to every shipped config's model
    clip: int = 2000  # samples of a timed clip at batch 1 (half at batch 16)
    naive_clip: int = RATE  # the cache-free sampler's clip
    naive_positions: int = 2
    repeats: int = 7
    r9y9_clips: tuple[int, int] = (240, 160)  # r9y9's clip at batch 1 and 16
    roofline_steps: int = 1000
    matmul_n: int = 1024
    memory_mib: int = 512
    cache_mib: tuple[int, int] = (1, 4)  # buffers within one core's L2 and beyond it
    growth: int = 16000  # samples of the cost along one clip
    train_crop: int = 2000  # trained samples per crop beyond the receptive field
    train_steps: int = 3


FULL = Sizes()
QUICK = Sizes(clip=1000, naive_positions=1, roofline_steps=500, growth=4000, train_steps=1)
TINY = Sizes(changes={"layers": 2, "cycles": 1, "residual_channels": 4, "gate_channels": 8, "skip_channels": 4,
                      "head_channels": 4, "cond_channels": 4},
             clip=64, naive_clip=64, naive_positions=1, repeats=1, r9y9_clips=(16, 16), roofline_steps=16,
             matmul_n=64, memory_mib=1, cache_mib=(1, 1), growth=64, train_crop=16, train_steps=1)
SECTION = "WaveNet (`python -m benchmarks.bench_wavenet`)"


def shipped(name: str, **changes: object) -> WaveNet:
    """The model of a shipped config, with ``changes``, random weights, in eval mode."""
    args = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    return WaveNet(**{**args, **changes}).eval()


def models(sizes: Sizes) -> dict[str, tuple[WaveNet, Cond]]:
    """Name -> (model, cond(batch, length))."""
    torch.manual_seed(0)
    speech, digits, vocoder = (shipped(f"wavenet_{name}.yaml", **sizes.changes)
                               for name in ("speech", "digits", "vocoder"))
    mels, hop = vocoder.hparams.n_mels, vocoder.hop_length
    return {
        REFERENCE: (speech, lambda b, n: None),
        "wavenet_digits.yaml (6 speakers)": (digits, lambda b, n: torch.arange(b) % 6),
        "wavenet_vocoder.yaml": (vocoder, lambda b, n: AudioCond(mel=torch.randn(b, mels, -(-n // hop)))),
    }


def halved(model: WaveNet) -> WaveNet:
    """A copy of ``model`` with its weights rounded to float16 values (the fused step then holds float16)."""
    rounded = deepcopy(model)
    rounded.round_weights_to_half()
    assert weight_dtype(rounded) == torch.float16
    return rounded


def with_step(fused: bool) -> None:
    os.environ["WAVEGEN_FUSED"] = "1" if fused else "0"


def cached_rate(model: WaveNet, cond: Cond, batch: int, length: int, fused: bool, repeats: int) -> float:
    """Samples/s of ``model.sample`` with the fused or the PyTorch step (best of ``repeats`` after a warm-up)."""
    with_step(fused)
    assert isinstance(model.sampler(batch, cond(batch, length), (length,)).step, FusedStep) == fused
    generator = torch.Generator().manual_seed(0)
    condition = cond(batch, length)
    seconds = best_time(lambda: model.sample(batch, cond=condition, length=length, generator=generator),
                        repeats=repeats)
    return batch * length / seconds


def naive_rate(model: WaveNet, cond: Cond, batch: int, length: int, positions: int) -> float:
    """Cache-free samples/s in a clip of ``length`` samples: the whole network once per generated sample (1 thread
    only: it is the reference, not a contender)."""
    seq = torch.zeros(batch, length, dtype=torch.long)
    condition = cond(batch, length)
    with torch.no_grad():
        def run() -> None:
            for t in range(positions):
                model(seq, condition)[:, t]
        return batch * positions / best_time(run, repeats=3)


def r9y9(model: WaveNet) -> torch.nn.Module:
    """r9y9/wavenet_vocoder's WaveNet at ``model``'s sizes and conditioning, random weights, ready to generate."""
    from wavenet_vocoder import WaveNet as R9y9WaveNet

    hp = model.hparams
    vocoder = {"cin_channels": hp.n_mels, "upsample_conditional_features": True,
               "upsample_scales": hp.upsample_scales or upsample_factors(hp.hop_length)} if hp.n_mels else {}
    speakers = {"gin_channels": 16, "n_speakers": hp.num_labels} if hp.num_labels else {}
    net = R9y9WaveNet(out_channels=hp.quantization, layers=len(model.dilations), stacks=hp.cycles,
                      residual_channels=hp.residual_channels, gate_channels=hp.gate_channels,
                      skip_out_channels=hp.skip_channels, kernel_size=hp.kernel_size, **vocoder, **speakers)
    net.eval()
    net.make_generation_fast_()
    return net


def r9y9_rate(model: WaveNet, batch: int, length: int, repeats: int = 5) -> float:
    """Samples/s of r9y9's ``incremental_forward`` at ``model``'s settings (see the module docstring)."""
    net, hp = r9y9(model), model.hparams
    c = torch.randn(batch, hp.n_mels, length // hp.hop_length) if hp.n_mels else None
    g = (torch.arange(batch) % hp.num_labels).view(batch, 1) if hp.num_labels else None
    inputs = None
    if batch > 1:
        codes = torch.randint(0, hp.quantization, (batch, length))
        inputs = torch.nn.functional.one_hot(codes, hp.quantization).float().transpose(1, 2)
    with torch.no_grad():
        seconds = best_time(lambda: net.incremental_forward(c=c, g=g, T=length, test_inputs=inputs,
                                                            quantize=batch == 1), repeats=repeats)
    return batch * length / seconds


def have_r9y9() -> bool:
    """Whether r9y9/wavenet_vocoder is installed (``pip install -e '.[bench]'``); without it its column is "-"."""
    try:
        import wavenet_vocoder  # noqa: F401
    except ImportError:
        return False
    return True


def sampling_rows(sizes: Sizes, threads_list: list[int]) -> list[list[object]]:
    """One row per (model, threads, batch)."""
    length, repeats = sizes.clip, sizes.repeats  # short clips, many repeats: the best run is the least disturbed
    compare = have_r9y9()
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for name, (model, cond) in models(sizes).items():
            half = halved(model)
            for i, batch in enumerate((1, 16)):
                fast = cached_rate(half, cond, batch, length // (1 if batch == 1 else 2), True, repeats)
                fused = cached_rate(model, cond, batch, length // (1 if batch == 1 else 2), True, repeats)
                plain = cached_rate(model, cond, batch, length // (4 if batch == 1 else 8), False, repeats)
                positions = sizes.naive_positions if batch == 1 else 1
                naive = naive_rate(model, cond, batch, sizes.naive_clip, positions) if threads == 1 else None
                other = r9y9_rate(model, batch, sizes.r9y9_clips[i], min(5, repeats)) if compare else None
                rows.append([name, threads, batch, f"**{fast:,.0f}**", f"{fused:,.0f}", f"{plain:,.0f}",
                             "-" if naive is None else f"{naive:,.1f}", "-" if other is None else f"{other:,.0f}",
                             f"{fast / plain:.1f}x", f"{fused / plain:.1f}x",
                             "-" if other is None else f"{fast / other:,.0f}x", f"{fast / RATE:.2f}x"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    with_step(True)
    torch.set_num_threads(1)
    return rows


def step_seconds(model: WaveNet, batch: int, steps: int, fused: bool, repeats: int) -> float:
    """Seconds per position of the step without noise, over ``steps`` positions: the fused step as the sampling
    loop calls it (one call per position, the argmax choice and the code write included), the PyTorch step
    through the engine's runner (logits only)."""
    with_step(fused)
    run, sampler = stepper(model, batch, None, (steps,))
    draw = sampler.drawer(Decoding(greedy=True))
    assert (draw is not None) == fused
    seq = torch.randint(0, model.num_classes, (batch, steps))

    def go() -> None:
        sampler.cache.position.zero_()
        for t in range(steps):
            if draw is None:
                run(t, seq)
            else:
                draw(seq, None)

    return best_time(go, repeats=repeats) / steps


def flops_per_sample(model: WaveNet) -> float:
    """2 x multiply-adds of one step: every layer's gate, residual and skip products, and the head."""
    hp = model.hparams
    half = hp.gate_channels // 2
    macs = 0
    for layer in model.layers:
        macs += model.kernel_size * hp.residual_channels * hp.gate_channels + half * hp.skip_channels
        macs += 0 if layer.residual is None else half * hp.residual_channels
    macs += hp.skip_channels * hp.head_channels + hp.head_channels * model.num_classes
    return 2.0 * macs


def weight_bytes(model: WaveNet) -> int:
    """Bytes of weights one step reads: every layer's gate, residual and skip weights and the head (float32)."""
    return 4 * sum(p.numel() for name, p in model.named_parameters()
                   if name.startswith(("layers.", "head")) and p.dim() > 1)


def read_bandwidth(megabytes: float) -> float:
    """Bytes/s of one thread summing a float32 buffer of ``megabytes`` (in cache when small, from memory when big)."""
    x = torch.ones(int(megabytes * 2 ** 20) // 4)
    return x.numel() * 4 / best_time(lambda: x.sum(), repeats=20 if megabytes < 64 else 3)


def roofline(sizes: Sizes) -> str:
    """One step of the reference model against the machine's arithmetic and memory floors, one thread."""
    torch.set_num_threads(1)
    model = models(sizes)[REFERENCE][0]
    flops, weights = flops_per_sample(model), weight_bytes(model)
    # the best of several tries: on a shared machine a single try may catch another process's burst
    peak, memory_bw = max(matmul_flops(sizes.matmul_n) for _ in range(4)), read_bandwidth(sizes.memory_mib)
    l2_bw, l3_bw = (read_bandwidth(mib) for mib in sizes.cache_mib)  # within one core's 2 MiB L2 here, and beyond
    rows = []
    steps = sizes.roofline_steps
    steps_of = {"fused, float16 weights": (halved(model), True, 2), "fused": (model, True, 4),
                "PyTorch": (model, False, 4)}  # (model, fused, bytes per weight)
    for batch in (1, 16):
        for name, (net, fused, size) in steps_of.items():
            step = step_seconds(net, batch, steps if fused else steps // 4, fused, sizes.repeats)
            read = weights * size // 4
            rows.append([batch, name, f"{step * 1e6:.1f}", f"{batch * flops / peak * 1e6:.1f}",
                         f"{read / 2 ** 20:.2f}", f"{read / l2_bw * 1e6:.1f}", f"{read / l3_bw * 1e6:.1f}",
                         f"{read / memory_bw * 1e6:.1f}",
                         f"{batch * flops / peak / step:.0%}", f"{batch / step:,.0f}"])
    with_step(True)
    head = (f"One step of the reference model against this CPU, one thread: {flops / 1e6:.2f} MFLOP per sample "
            f"(2 x multiply-adds) and {weights / 2 ** 20:.2f} MiB of float32 weights read per step (once for all "
            f"rows). Measured in this run: {peak / 1e9:.0f} GFLOP/s float32 matmul ({sizes.matmul_n}^3), "
            f"{l2_bw / 1e9:.0f} GB/s reading a {sizes.cache_mib[0]} MiB buffer (L2), {l3_bw / 1e9:.0f} GB/s reading "
            f"{sizes.cache_mib[1]} MiB (more than one core's L2) and {memory_bw / 1e9:.0f} GB/s reading "
            f"{sizes.memory_mib} MiB (memory); a floor is the weights read once at that rate. "
            f"The step alone, without noise (the fused step as the sampling loop calls it, one call per position "
            f"with the greedy choice; the PyTorch step's logits through the engine's runner):\n")
    columns = ["batch", "step", "us/step", "FLOP floor us", "weights MiB", "L2 floor us", "L3 floor us",
               "memory floor us", "of matmul peak", "samples/s (step alone)"]
    return head + "\n" + table(columns, rows) + "\n"


def cost_by_position(sizes: Sizes, batch: int, length: int, windows: int) -> list[float]:
    """Microseconds per sample of the fused step in ``windows`` equal stretches of one clip."""
    model = models(sizes)[REFERENCE][0]
    run, _ = stepper(model, batch, None, (length,))
    seq = torch.randint(0, model.num_classes, (batch, length))
    per_window, costs = length // windows, []
    for w in range(windows):
        start = time.perf_counter()
        for t in range(w * per_window, (w + 1) * per_window):
            run(t, seq)
        costs.append((time.perf_counter() - start) / (per_window * batch) * 1e6)
    return costs


def training_samples_per_second(model: WaveNet, batch: int, length: int, steps: int) -> float:
    codes = torch.randint(0, model.num_classes, (batch, length))
    return batch * length / training_step_seconds(model, codes, steps)


def report(sizes: Sizes, threads: list[int], sampling_only: bool) -> str:
    """Every table of the benchmark as Markdown."""
    load = os.getloadavg()
    started = time.perf_counter()
    cpu = machine().replace(f"{torch.get_num_threads()} threads, ", "")
    machine_line = (f"Machine: {cpu}. Random weights, float32 (and the same weights rounded to float16 values, "
                    f"where marked).\n")
    out = [machine_line]
    rows = sampling_rows(sizes, threads)
    out.append("Sampling (`model.sample`, fused and PyTorch steps as `wavegen sample` runs them; samples/s, the best "
               "of 7 short clips; the cache-free sampler in a 1 s clip; r9y9 the best of 5 clips of 240 samples at "
               "batch 1, 160 at 16). \"fp16 w\": the fused step of the model with its weights rounded to float16 "
               "values (`wavegen sample --half-weights`), held as float16:\n")
    out.append(table(["model", "threads", "batch", "fused step, fp16 w", "fused step", "PyTorch step", "cache-free",
                      "r9y9 incremental_forward", "fp16 w / PyTorch", "fused / PyTorch", "fp16 w / r9y9",
                      "fp16 w, real time at 8 kHz"], rows) + "\n")
    if not sampling_only:
        out += others(sizes)
    out.append(f"Load average (1, 5, 15 min) of this shared machine: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at "
               f"the start, {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end "
               f"({time.perf_counter() - started:.0f} s later).\n")
    return "\n".join(out)


def others(sizes: Sizes) -> list[str]:
    """The roofline, the cost along a clip, training throughput and the PyTorch step's profile."""
    out = [roofline(sizes)]

    windows, growth = 4, sizes.growth
    rows = [[f"{w * growth // windows}-{(w + 1) * growth // windows}", f"{cost:.1f}"]
            for w, cost in enumerate(cost_by_position(sizes, 16, growth, windows))]
    out.append("Cost per sample along one clip (fused step, batch 16): flat with the cache\n")
    out.append(table(["positions", "us/sample"], rows) + "\n")

    model = models(sizes)[REFERENCE][0]
    crop = model.receptive_field + sizes.train_crop
    train = training_samples_per_second(model, 8, crop, sizes.train_steps)
    out.append(f"Training (forward + backward + AdamW, batch 8 crops of {crop:,} samples = receptive field + "
               f"{sizes.train_crop:,}, 1 thread)\n")
    out.append(table(["samples/s", "seconds of 8 kHz audio per second"], [[f"{train:,.0f}", f"{train / RATE:.2f}"]])
               + "\n")

    with_step(False)
    generator = torch.Generator().manual_seed(0)
    out.append("Where the PyTorch step's time goes (batch 1, 200 samples, torch.profiler, self CPU time; the fused "
               "step is one call):\n")
    out.append("```\n" + top_ops(lambda: model.sample(1, length=200, generator=generator), rows=8) + "\n```\n")
    with_step(True)
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter clips and fewer repeats")
    parser.add_argument("--tiny", action="store_true", help="2-layer models, short clips: a smoke run in seconds")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the sampling table")
    parser.add_argument("--sampling-only", action="store_true", help="only the sampling table")
    parser.add_argument("--results", type=Path, default=None, help="Markdown file whose WaveNet section to rewrite")
    args = parser.parse_args(argv)
    body = report(TINY if args.tiny else QUICK if args.quick else FULL, args.threads, args.sampling_only)
    print(body)
    if args.results:
        write_section(args.results, SECTION, body)
    return body


if __name__ == "__main__":
    main()
