"""``pixelgen``: LightningCLI's fit / validate / test / predict for the image models, plus ``sample``.

    pixelgen fit --config lightning_configs/pixelcnn_mnist.yaml --data.root ./data
    pixelgen test --config lightning_configs/pixelcnn_mnist.yaml
    pixelgen sample --ckpt runs/pixelcnn_mnist/checkpoints/last.ckpt --num-samples 64 --out grid.png
    pixelgen sample --ckpt ... --prime-rows 14 --prime-from test --out completions.png
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import torch

from arcore.cli import load_for_sampling, output_path, pick_device, run, seeded_generator
from arcore.errors import UsageError
from arcore.media import save_image_grid
from arcore.module import AutoregressiveModule
from pixelgen.data import ImageDataModule


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgen sample",
                                     description="Draw a PNG grid of samples or completions from a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `pixelgen fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--class-label", type=int, default=None, help="label for every sample (conditional models)")
    parser.add_argument("--prime-rows", type=int, default=0, help="keep the top R rows of real images, complete the rest")
    parser.add_argument("--prime-from", choices=("train", "val", "test"), default="test")
    parser.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    parser.add_argument("--beams", type=int, default=0, help="beam search for the most likely completion instead")
    parser.add_argument("--no-cache", action="store_true", help="cache-free reference sampler (slow)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def real_images(ckpt: str, split: str, n: int, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (codes as the model was trained on them) and labels of a split of the run's data."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    hparams = {key: value for key, value in (checkpoint.get("datamodule_hyper_parameters") or {}).items()
               if not key.startswith("_")}  # drop LightningCLI's bookkeeping entries
    if not hparams:
        raise UsageError(f"{ckpt} records no data settings, so --prime-from cannot find real images")
    if data_root is not None:
        hparams["root"] = data_root
    codes, labels = ImageDataModule(**hparams).split(split)
    if len(codes) < n:
        raise UsageError(f"the {split} split holds {len(codes)} images, fewer than --num-samples {n}")
    return codes[:n].long(), labels[:n]


def image_prime(model: AutoregressiveModule, images: torch.Tensor, rows: int) -> torch.Tensor:
    """The model's codes for the top ``rows`` rows of ``images`` (models over palette tokens convert first)."""
    if hasattr(model, "prime_from_images"):
        return model.prime_from_images(images, rows)
    return images[:, :, :rows]


def sample_main(argv: Sequence[str]) -> None:
    args = sample_parser().parse_args(list(argv))
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    out = output_path(args.out, ".png")
    device = pick_device(args.device)
    model = load_for_sampling(args.ckpt, "pixelgen", device)
    n = args.num_samples
    cond = None
    if args.class_label is not None:
        if not 0 <= args.class_label < max(model.num_labels, 1) or not model.num_labels:
            raise UsageError(f"--class-label {args.class_label} is out of range: this model has "
                             f"{model.num_labels} classes" + (" (unconditional)" if not model.num_labels else ""))
        cond = torch.full((n,), args.class_label, dtype=torch.long, device=device)
    elif model.num_labels:
        cond = torch.arange(n, device=device) % model.num_labels
    prime = None
    if args.prime_rows:
        images, labels = real_images(args.ckpt, args.prime_from, n, args.data_root)
        height = images.shape[2]
        if not 0 < args.prime_rows < height:
            raise UsageError(f"--prime-rows must be between 1 and {height - 1}, got {args.prime_rows}")
        prime = image_prime(model, images, args.prime_rows).to(device)
        if model.num_labels and args.class_label is None:
            cond = labels.to(device)
        save_image_grid(model.render_samples(image_prime(model, images, height).to(device))["images"],
                        out.with_name(f"{out.stem}_real.png"))
    start = time.perf_counter()
    if args.beams:
        result = model.beam_search(n, beams=args.beams, cond=cond, prime=prime, use_cache=not args.no_cache)
        codes = result.codes[:, 0]
        bits = -result.log_prob[:, 0].mean().item() / codes[0].numel() / math.log(2)
        print(f"beam search ({args.beams} beams): the best completions average {bits:.4f} bits/dim")
    else:
        codes = model.sample(n, cond=cond, prime=prime, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, use_cache=not args.no_cache,
                             generator=seeded_generator(args.seed, device))
    seconds = time.perf_counter() - start
    save_image_grid(model.render_samples(codes)["images"], out)
    print(f"wrote {n} {'completions' if prime is not None else 'samples'} to {out} in {seconds:.1f} s "
          f"({codes[0].numel() * n / seconds:,.0f} codes/s on {device})")


def main(argv: Sequence[str] | None = None) -> int:
    return run("pixelgen", ImageDataModule, sample_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
