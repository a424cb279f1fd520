"""``pixelgen``: LightningCLI's fit / validate / test / predict for the image models, plus ``sample``.

    pixelgen fit --config lightning_configs/pixelcnn_mnist.yaml --data.root ./data
    pixelgen test --config lightning_configs/pixelcnn_mnist.yaml
    pixelgen sample --ckpt runs/pixelcnn_mnist/checkpoints/last.ckpt --num-samples 64 --out grid.png
    pixelgen sample --ckpt ... --prime-rows 14 --prime-from test --out completions.png
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch

from arcore.checkpoint import read_checkpoint
from arcore.chunks import rows
from arcore.cli import check_fits_in_memory, output_path, run
from arcore.errors import UsageError
from arcore.media import save_image_grid
from arcore.sample_cli import SampleRun, parse_sample_args, sample_parser
from pixelgen.data import ImageDataModule


def _parser() -> argparse.ArgumentParser:
    p = sample_parser("pixelgen", "Draw a PNG grid of samples or completions from a checkpoint.",
                      out_help="PNG file to write", num_samples=64, batch_size=64, threads=None)
    p.add_argument("--class-label", type=int, default=None, help="label for every sample (conditional models)")
    p.add_argument("--prime-rows", type=int, default=0, help="keep the top R rows of real images, complete the rest")
    p.add_argument("--prime-from", choices=("train", "val", "test"), default="test")
    p.add_argument("--data-root", default=None, help="override the data root stored in the checkpoint")
    p.add_argument("--beams", type=int, default=0, help="beam search for the most likely completion instead")
    return p


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
    args = parse_sample_args(_parser(), argv)
    if args.beams < 0 or args.prime_rows < 0:
        raise UsageError(f"--beams and --prime-rows must be >= 0, got {args.beams} and {args.prime_rows}")
    out = output_path(args.out, ".png")
    if args.prime_rows:
        output_path(out.with_name(f"{out.stem}_real.png"), ".png")
    sampling = SampleRun("pixelgen", args)
    model, device, n = sampling.model, sampling.device, args.num_samples
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
        prime = model.prime_from_data(images, args.prime_rows).to(device)
        if model.num_labels and args.class_label is None:
            cond = labels.to(device)
    best_log_probs: list[torch.Tensor] = []

    def draw(first: int, count: int) -> torch.Tensor:
        part_cond, part_prime = rows(cond, first, count), rows(prime, first, count)
        if args.beams:
            result = model.beam_search(count, beams=args.beams, cond=part_cond, prime=part_prime,
                                       use_cache=not args.no_cache, compile=args.compile)
            best_log_probs.append(result.log_prob[:, 0])
            return result.codes[:, 0]
        return model.sample(count, cond=part_cond, prime=part_prime, **sampling.decoding())

    chunks = sampling.draw(draw, n)
    if chunks.done:
        codes = chunks.samples
        save_image_grid(model.render_samples(codes).pixels, out)
        if images is not None:
            real = model.prime_from_data(images[: chunks.done], height).to(device)
            save_image_grid(model.render_samples(real).pixels, out.with_name(f"{out.stem}_real.png"))
        if args.beams:
            bits = -torch.cat(best_log_probs).mean().item() / codes[0].numel() / math.log(2)
            print(f"beam search ({args.beams} beams): the best completions average {bits:.4f} bits/dim")
    sampling.end(chunks, [out] if chunks.done else [])
    print(f"wrote {n} {'completions' if prime is not None else 'samples'} to {out} in {sampling.seconds:.1f} s "
          f"({codes[0].numel() * n / sampling.seconds:,.0f} codes/s on {device})")


def main(argv: Sequence[str] | None = None) -> int:
    return run("pixelgen", ImageDataModule, sample_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
