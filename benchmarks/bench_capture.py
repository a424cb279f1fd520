"""Eager vs captured sampling for the three models, and bf16 training throughput of the shipped configs.

    python -m benchmarks.bench_capture [--device cpu|cuda] [--batches 1 16] [--train] [--tiny] [--results RESULTS.md]

Random weights at the shipped configs' sizes. On the CPU "captured" is ``torch.compile(fullgraph=True)`` of every
step piece (inductor); on a GPU it is the engine's CUDA graphs (``compile=True``) and, for comparison,
``torch.compile(mode="reduce-overhead")``. Each figure is the best of a few runs after a warm-up run that pays the
compilation or capture; the first-run column says what that costs. The fused C++ CPU steps are turned off here so
that both columns run the same PyTorch step. ``--tiny`` shrinks every model and clip and captures with
torch.compile's ``eager`` backend (the graph capture without code generation): a smoke run in seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import yaml

from arcore.training.module import AutoregressiveModule
from benchmarks.common import machine, table, training_step_seconds, write_section
from pixelgen.igpt import ImageGPT
from wavegen.wavenet import AudioCond, WaveNet

CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs"
SAMPLED = {  # the config each model of the sampling table is built from; WaveNet draws clips of SAMPLES samples
    "PixelCNN": "pixelcnn_mnist.yaml",
    "image GPT": "igpt_mnist.yaml",
    "WaveNet": "wavenet_speech.yaml",
}
SAMPLES = 2000
TINY_SAMPLES = 32
TINY = {  # model settings of --tiny, by the config's model class
    "PixelCNN": {"image_shape": [1, 4, 4], "hidden": 4, "layers": 2, "head": 4},
    "ImageGPT": {"image_shape": [1, 4, 4], "width": 16, "layers": 1, "heads": 2},
    "WaveNet": {"layers": 2, "cycles": 1, "residual_channels": 4, "gate_channels": 8, "skip_channels": 4,
                "head_channels": 4},
}


def model_from_config(name: str, device: str, tiny: bool = False) -> AutoregressiveModule:
    """The model a shipped config builds, with random weights (an image GPT gets a stand-in palette); ``tiny``
    shrinks it to the settings of ``TINY``."""
    config = yaml.safe_load((CONFIGS / name).read_text())["model"]
    module_name, cls_name = config["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    model = cls(**{**config.get("init_args", {}), **(TINY[cls_name] if tiny else {})})
    if isinstance(model, ImageGPT):
        model.palette_fitted.fill_(True)
    return model.to(device).eval()


def codes_per_second(model: AutoregressiveModule, batch: int, capture: object, device: str, samples: int
                     ) -> tuple[float, float]:
    """(codes/s of the better of two runs, seconds of the first run, which compiles or captures); a WaveNet draws
    clips of ``samples``."""
    length = samples if model.capabilities.codes_per_second else None  # audio: clips of any length

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.sample(batch, length=length, compile=capture, generator=torch.Generator(device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = run()
    return batch * (length or model.num_codes) / min(run(), run()), first


def sampling_table(device: str, batches: list[int], models: list[str], tiny: bool = False) -> str:
    """Codes/s per model and batch, eager and captured; on a GPU also torch.compile's reduce-overhead mode at batch
    1 (where launch overhead matters most; it compiles each batch size anew, minutes per model)."""
    captures = [("eager", False), ("compiled", "eager" if tiny else True)] if device == "cpu" else \
        [("eager", False), ("CUDA graphs", True), ("reduce-overhead", "reduce-overhead")]
    samples = TINY_SAMPLES if tiny else SAMPLES
    rows = []
    for name in models:
        model = model_from_config(SAMPLED[name], device, tiny)
        for batch in batches:
            figures = [codes_per_second(model, batch, capture, device, samples) if i < 2 or batch == 1 else None
                       for i, (_, capture) in enumerate(captures)]
            rates = [f"{f[0]:,.0f}" if f else "-" for f in figures]
            ratios = [f"{f[0] / figures[0][0]:.2f}x" if f else "-" for f in figures[1:]]
            rows.append([name, batch, *rates, *ratios, f"{figures[1][1]:.1f} s"])
            print(" | ".join(map(str, rows[-1])), flush=True)  # progress: the table comes at the end
    header = ["model", "batch"] + [f"{n} codes/s" for n, _ in captures] \
        + [f"{n} / eager" for n, _ in captures[1:]] + [f"first {captures[1][0]} run"]
    return table(header, rows)


def random_cond(model: AutoregressiveModule, batch: int, length: int, device: str) -> object:
    """The conditioning a model needs for a batch of ``length`` codes: speaker or class labels, log-mel frames."""
    labels = torch.arange(batch, device=device) % model.num_labels if model.num_labels else None
    if not isinstance(model, WaveNet):
        return labels
    mels = model.hparams.n_mels
    mel = torch.randn(batch, mels, -(-length // model.hop_length), device=device) if mels else None
    return AudioCond(speaker=labels, mel=mel) if labels is not None or mel is not None else None


def training_table(device: str, tiny: bool = False) -> str:
    """Examples/s of a training step with ``bf16-mixed`` autocast, batch and crop as each shipped config (``tiny``:
    shrunk models, batch 2, short crops)."""
    rows = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name == "base.yaml":
            continue
        data = yaml.safe_load(path.read_text()).get("data", {})
        model = model_from_config(path.name, device, tiny).train()
        batch = 2 if tiny else data.get("batch_size", 16)
        if isinstance(model, WaveNet):
            crop = model.receptive_field + (TINY_SAMPLES if tiny else data.get("crop_samples", 2000))
            codes = torch.randint(0, model.num_classes, (batch, crop), device=device)
        else:
            codes = torch.randint(0, model.num_classes, (batch, *model.event_shape), device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            cond = random_cond(model, batch, codes.shape[-1], device)
            seconds = training_step_seconds(model, codes, steps=1 if tiny else 3, cond=cond)
        rows.append([path.name, batch, f"{batch / seconds:,.1f}", f"{codes.numel() / seconds:,.0f}"])
    return table(["config", "batch", "examples/s", "codes/s"], rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", choices=list(SAMPLED), default=list(SAMPLED))
    parser.add_argument("--train", action="store_true", help="also bf16 training throughput of every config")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="toy models and clips, eager-backend capture: a smoke run")
    parser.add_argument("--results", type=Path, default=None, help="Markdown file whose section to rewrite")
    args = parser.parse_args(argv)
    os.environ["ARCORE_FUSED"] = "0"  # the same PyTorch step in both columns
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ", ".join(f"{k}: `{v}`" for k, v in SAMPLED.items())
    head = f"Machine: {machine()}. Random weights, float32, sizes of the shipped configs ({sizes}); WaveNet clips of " \
           f"{TINY_SAMPLES if args.tiny else SAMPLES} samples{' (--tiny: shrunk models)' if args.tiny else ''}.\n"
    body = [head, sampling_table(args.device, args.batches, args.models, args.tiny) + "\n"]
    if args.train:
        body += ["Training step (forward, backward, AdamW) under `bf16-mixed` autocast:\n",
                 training_table(args.device, args.tiny) + "\n"]
    text = "\n".join(body)
    print(text)
    if args.results:
        write_section(args.results, f"Captured sampling, {args.device} (`python -m benchmarks.bench_capture`)", text)
    return text


if __name__ == "__main__":
    main()
