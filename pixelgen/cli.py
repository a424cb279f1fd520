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

from arcore.callbacks import image_prime
from arcore.chunks import draw_in_chunks, interrupted_exit, rows
from arcore.checkpoint import read_checkpoint
from arcore.cli import (
    check_fits_in_memory,
    check_sampling_options,
    load_for_sampling,
    output_path,
    pick_device,
    run,
    seeded_generator,
)
from arcore.errors import UsageError
from arcore.media import save_image_grid
from pixelgen.data import ImageDataModule


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgen sample",
                                     description="Draw a PNG grid of samples or completions from a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `pixelgen fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images drawn at once; more are drawn in chunks (halved on out-of-memory)")
    parser.add_argument("--temperature", type=float, default=1.0, help="> 0; below 1 sharpens, above 1 flattens")
    parser.add_argument("--greedy", action="store_true", help="the most likely code at every step instead of a draw")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    parser.add_argument("--class-label", type=int, default=None, help="label for every sample (conditional models)")
    parser.add_argument("--prime-rows", type=int, default=0, help="keep the top R rows of real images, complete the rest")
    parser.add_argument("--prime-from", choices=("train", "val", "test"), default="test")
    parser.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    parser.add_argument("--beams", type=int, default=0, help="beam search for the most likely completion instead")
    parser.add_argument("--no-cache", action="store_true", help="cache-free reference sampler (slow)")
    parser.add_argument("--compile", action="store_true",
                        help="capture the sampling step once and replay it (CUDA graphs on a GPU, torch.compile on "
                             "the CPU; same samples, faster on a GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def real_images(ckpt: str, split: str, n: int, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (codes as the model was trained on them) and labels of a split of the run's data."""
    checkpoint = read_checkpoint(ckpt, "--ckpt")
    hparams = ImageDataModule.settings_from_checkpoint(checkpoint.get("datamodule_hyper_parameters") or {})
    if not hparams:
        raise UsageError(f"{ckpt} records no data settings, so --prime-from cannot find real images")
    if data_root is not None:
        hparams["root"] = data_root
    codes, labels = ImageDataModule(**hparams).split(split)
    if len(codes) < n:
        raise UsageError(f"the {split} split holds {len(codes)} images, fewer than --num-samples {n}")
    return codes[:n].long(), labels[:n]


def sample_main(argv: Sequence[str]) -> None:
    """``pixelgen sample``: a PNG grid of samples, completions or beam-search completions from a checkpoint."""
    args = sample_parser().parse_args(list(argv))
    check_sampling_options(args)
    if args.beams < 0 or args.prime_rows < 0:
        raise UsageError(f"--beams and --prime-rows must be >= 0, got {args.beams} and {args.prime_rows}")
    out = output_path(args.out, ".png")
    if args.prime_rows:
        output_path(out.with_name(f"{out.stem}_real.png"), ".png")
    device = pick_device(args.device)
    model = load_for_sampling(args.ckpt, "pixelgen", device)
    n = args.num_samples
    check_fits_in_memory(n, model.num_codes)
    height = model.image_shape[1]
    if args.prime_rows and not args.prime_rows < height:
        raise UsageError(f"--prime-rows must be between 1 and {height - 1} (the images have {height} rows), "
                         f"got {args.prime_rows}")
    cond = None
    if args.class_label is not None:
        if not 0 <= args.class_label < max(model.num_labels, 1) or not model.num_labels:
            raise UsageError(f"--class-label {args.class_label} is out of range: this model has "
                             f"{model.num_labels} classes" + (" (unconditional)" if not model.num_labels else ""))
        cond = torch.full((n,), args.class_label, dtype=torch.long, device=device)
    elif model.num_labels:
        cond = torch.arange(n, device=device) % model.num_labels
    prime = images = None
    if args.prime_rows:
        images, labels = real_images(args.ckpt, args.prime_from, n, args.data_root)
        prime = image_prime(model, images, args.prime_rows).to(device)
        if model.num_labels and args.class_label is None:
            cond = labels.to(device)
    generator = seeded_generator(args.seed, device)
    best_log_probs: list[torch.Tensor] = []

    def draw(first: int, count: int) -> torch.Tensor:
        part_cond, part_prime = rows(cond, first, count), rows(prime, first, count)
        if args.beams:
            result = model.beam_search(count, beams=args.beams, cond=part_cond, prime=part_prime,
                                       use_cache=not args.no_cache, compile=args.compile)
            best_log_probs.append(result.log_prob[:, 0])
            return result.codes[:, 0]
        return model.sample(count, cond=part_cond, prime=part_prime, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, use_cache=not args.no_cache,
                            compile=args.compile, generator=generator, progress=True)

    start = time.perf_counter()
    chunks = draw_in_chunks(draw, n, args.batch_size, tool="pixelgen", generator=generator)
    seconds = time.perf_counter() - start
    if chunks.done:
        codes = chunks.samples
        save_image_grid(model.render_samples(codes)["images"], out)
        if images is not None:
            save_image_grid(model.render_samples(image_prime(model, images[: chunks.done], height).to(device))
                            ["images"], out.with_name(f"{out.stem}_real.png"))
        if args.beams:
            bits = -torch.cat(best_log_probs).mean().item() / codes[0].numel() / math.log(2)
            print(f"beam search ({args.beams} beams): the best completions average {bits:.4f} bits/dim")
    if chunks.interrupted:
        raise interrupted_exit("pixelgen", chunks, [out] if chunks.done else [])
    print(f"wrote {n} {'completions' if prime is not None else 'samples'} to {out} in {seconds:.1f} s "
          f"({codes[0].numel() * n / seconds:,.0f} codes/s on {device})")


def main(argv: Sequence[str] | None = None) -> int:
    return run("pixelgen", ImageDataModule, sample_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
