"""WaveNet benchmark: the fused C++ step, the PyTorch step, cache-free sampling and r9y9/wavenet_vocoder, side by side.

    python -m benchmarks.bench_wavenet [--quick] [--results benchmarks/RESULTS.md]

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
``--results`` replaces the WaveNet section of a Markdown results file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import torch
import yaml

from arcore.decoding import Decoding
from arcore.engine import stepper
from benchmarks.common import (
    best_time,
    machine,
    matmul_flops,
    table,
    top_ops,
    training_step_seconds,
    write_section,
)
from wavegen.fused import FusedStep, weight_dtype
from wavegen.wavenet import AudioCond, WaveNet, upsample_factors

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
RATE = 8000
REFERENCE = "reference = wavenet_speech.yaml"
Cond = Callable[[int, int], "AudioCond | torch.Tensor | None"]


def shipped(name: str, **changes: object) -> WaveNet:
    """The model of a shipped config, with ``changes``, random weights, in eval mode."""
    args = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]
    return WaveNet(**{**args, **changes}).eval()


def models() -> dict[str, tuple[WaveNet, Cond]]:
    """Name -> (model, cond(batch, length))."""
    torch.manual_seed(0)
    speech, digits, vocoder = (shipped(f"wavenet_{name}.yaml") for name in ("speech", "digits", "vocoder"))
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


def cached_rate(model: WaveNet, cond: Cond, batch: int, length: int, fused: bool) -> float:
    """Samples/s of ``model.sample`` with the fused or the PyTorch step (best of 3 after a warm-up)."""
    with_step(fused)
    assert isinstance(model.sampler(batch, cond(batch, length), (length,)).step, FusedStep) == fused
    generator = torch.Generator().manual_seed(0)
    condition = cond(batch, length)
    seconds = best_time(lambda: model.sample(batch, cond=condition, length=length, generator=generator), repeats=7)
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


def r9y9_rate(model: WaveNet, batch: int, length: int) -> float:
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
                                                            quantize=batch == 1), repeats=5)
    return batch * length / seconds


def sampling_rows(quick: bool, threads_list: list[int]) -> list[list[object]]:
    """One row per (model, threads, batch)."""
    try:
        import wavenet_vocoder  # noqa: F401
        have_r9y9 = True
    except ImportError:
        have_r9y9 = False
    length = 1000 if quick else 2000  # short clips, many repeats: the best run is the least disturbed one
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for name, (model, cond) in models().items():
            half = halved(model)
            for batch in (1, 16):
                fast = cached_rate(half, cond, batch, length // (1 if batch == 1 else 2), fused=True)
                fused = cached_rate(model, cond, batch, length // (1 if batch == 1 else 2), fused=True)
                plain = cached_rate(model, cond, batch, length // (4 if batch == 1 else 8), fused=False)
                naive = naive_rate(model, cond, batch, RATE, positions=1 if quick or batch > 1 else 2) \
                    if threads == 1 else None
                other = r9y9_rate(model, batch, 240 if batch == 1 else 160) if have_r9y9 else None
                rows.append([name, threads, batch, f"**{fast:,.0f}**", f"{fused:,.0f}", f"{plain:,.0f}",
                             "-" if naive is None else f"{naive:,.1f}", "-" if other is None else f"{other:,.0f}",
                             f"{fast / plain:.1f}x", f"{fused / plain:.1f}x",
                             "-" if other is None else f"{fast / other:,.0f}x", f"{fast / RATE:.2f}x"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    with_step(True)
    torch.set_num_threads(1)
    return rows


def step_seconds(model: WaveNet, batch: int, steps: int, fused: bool) -> float:
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

    return best_time(go, repeats=7) / steps


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


def read_bandwidth(megabytes: int) -> float:
    """Bytes/s of one thread summing a float32 buffer of ``megabytes`` (in cache when small, from memory when big)."""
    x = torch.ones(megabytes * 2 ** 20 // 4)
    return x.numel() * 4 / best_time(lambda: x.sum(), repeats=20 if megabytes < 64 else 3)


def roofline(quick: bool) -> str:
    torch.set_num_threads(1)
    model = models()[REFERENCE][0]
    flops, weights = flops_per_sample(model), weight_bytes(model)
    # the best of several tries: on a shared machine a single try may catch another process's burst
    peak, memory_bw = max(matmul_flops() for _ in range(4)), read_bandwidth(512)
    l2_bw, l3_bw = read_bandwidth(1), read_bandwidth(4)  # within one core's 2 MiB L2 here, and beyond it
    rows = []
    steps = 500 if quick else 1000
    steps_of = {"fused, float16 weights": (halved(model), True, 2), "fused": (model, True, 4),
                "PyTorch": (model, False, 4)}  # (model, fused, bytes per weight)
    for batch in (1, 16):
        for name, (net, fused, size) in steps_of.items():
            step = step_seconds(net, batch, steps if fused else steps // 4, fused)
            read = weights * size // 4
            rows.append([batch, name, f"{step * 1e6:.1f}", f"{batch * flops / peak * 1e6:.1f}",
                         f"{read / 2 ** 20:.2f}", f"{read / l2_bw * 1e6:.1f}", f"{read / l3_bw * 1e6:.1f}",
                         f"{read / memory_bw * 1e6:.1f}",
                         f"{batch * flops / peak / step:.0%}", f"{batch / step:,.0f}"])
    with_step(True)
    head = (f"One step of the reference model against this CPU, one thread: {flops / 1e6:.2f} MFLOP per sample "
            f"(2 x multiply-adds) and {weights / 2 ** 20:.2f} MiB of float32 weights read per step (once for all "
            f"rows). Measured in this run: {peak / 1e9:.0f} GFLOP/s float32 matmul (1024^3), {l2_bw / 1e9:.0f} "
            f"GB/s reading a 1 MiB buffer (L2), {l3_bw / 1e9:.0f} GB/s reading 4 MiB (more than one core's L2) and "
            f"{memory_bw / 1e9:.0f} GB/s reading 512 MiB (memory); a floor is the weights read once at that rate. "
            f"The step alone, without noise (the fused step as the sampling loop calls it, one call per position "
            f"with the greedy choice; the PyTorch step's logits through the engine's runner):\n")
    columns = ["batch", "step", "us/step", "FLOP floor us", "weights MiB", "L2 floor us", "L3 floor us",
               "memory floor us", "of matmul peak", "samples/s (step alone)"]
    return head + "\n" + table(columns, rows) + "\n"


def cost_by_position(batch: int, length: int, windows: int) -> list[float]:
    """Microseconds per sample of the fused step in ``windows`` equal stretches of one clip."""
    model = models()[REFERENCE][0]
    run, _ = stepper(model, batch, None, (length,))
    seq = torch.randint(0, model.num_classes, (batch, length))
    per_window, costs = length // windows, []
    for w in range(windows):
        start = time.perf_counter()
        for t in range(w * per_window, (w + 1) * per_window):
            run(t, seq)
        costs.append((time.perf_counter() - start) / (per_window * batch) * 1e6)
    return costs


def training_samples_per_second(batch: int, length: int, steps: int) -> float:
    codes = torch.randint(0, 256, (batch, length))
    return batch * length / training_step_seconds(models()[REFERENCE][0], codes, steps)


def report(quick: bool, threads: list[int], sampling_only: bool) -> str:
    load = os.getloadavg()
    started = time.perf_counter()
    cpu = machine().replace(f"{torch.get_num_threads()} threads, ", "")
    machine_line = (f"Machine: {cpu}. Random weights, float32 (and the same weights rounded to float16 values, "
                    f"where marked).\n")
    out = [machine_line]
    rows = sampling_rows(quick, threads)
    out.append("Sampling (`model.sample`, fused and PyTorch steps as `wavegen sample` runs them; samples/s, the best "
               "of 7 short clips; the cache-free sampler in a 1 s clip; r9y9 the best of 5 clips of 240 samples at "
               "batch 1, 160 at 16). \"fp16 w\": the fused step of the model with its weights rounded to float16 "
               "values (`wavegen sample --half-weights`), held as float16:\n")
    out.append(table(["model", "threads", "batch", "fused step, fp16 w", "fused step", "PyTorch step", "cache-free",
                      "r9y9 incremental_forward", "fp16 w / PyTorch", "fused / PyTorch", "fp16 w / r9y9",
                      "fp16 w, real time at 8 kHz"], rows) + "\n")
    if not sampling_only:
        out += others(quick)
    out.append(f"Load average (1, 5, 15 min) of this shared machine: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at "
               f"the start, {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end "
               f"({time.perf_counter() - started:.0f} s later).\n")
    return "\n".join(out)


def others(quick: bool) -> list[str]:
    """The roofline, the cost along a clip, training throughput and the PyTorch step's profile."""
    out = [roofline(quick)]

    windows, growth = 4, 4000 if quick else 16000
    rows = [[f"{w * growth // windows}-{(w + 1) * growth // windows}", f"{cost:.1f}"]
            for w, cost in enumerate(cost_by_position(16, growth, windows))]
    out.append("Cost per sample along one clip (fused step, batch 16): flat with the cache\n")
    out.append(table(["positions", "us/sample"], rows) + "\n")

    train = training_samples_per_second(8, 4047, 1 if quick else 3)
    out.append("Training (forward + backward + AdamW, batch 8 crops of 4,047 samples = receptive field + 2,000, "
               "1 thread)\n")
    out.append(table(["samples/s", "seconds of 8 kHz audio per second"], [[f"{train:,.0f}", f"{train / RATE:.2f}"]])
               + "\n")

    with_step(False)
    model = models()[REFERENCE][0]
    generator = torch.Generator().manual_seed(0)
    out.append("Where the PyTorch step's time goes (batch 1, 200 samples, torch.profiler, self CPU time; the fused "
               "step is one call):\n")
    out.append("```\n" + top_ops(lambda: model.sample(1, length=200, generator=generator), rows=8) + "\n```\n")
    with_step(True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter clips and fewer repeats (a smoke run)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the sampling table")
    parser.add_argument("--sampling-only", action="store_true", help="only the sampling table")
    parser.add_argument("--results", type=Path, default=None, help="Markdown file whose WaveNet section to rewrite")
    args = parser.parse_args()
    body = report(args.quick, args.threads, args.sampling_only)
    print(body)
    if args.results:
        write_section(args.results, "WaveNet (`python -m benchmarks.bench_wavenet`)", body)


if __name__ == "__main__":
    main()
