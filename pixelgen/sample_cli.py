"""What ``pixelgen sample`` does once its options are parsed (:mod:`pixelgen.cli`): a PNG grid of samples,
completions of real images' top rows, or beam-search completions, drawn through :class:`arcore.cli.sample.SampleRun`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from arcore.cli.chunks import rows
from arcore.cli.sample import SampleRun, check_fits_in_memory, check_sample_args, output_path
from arcore.errors import UsageError
from arcore.files.atomic import output_lock, refuse_replacing_inputs
from arcore.files.checkpoint import read_checkpoint
from arcore.files.media import SUFFIXES, Images, Text, save_media
from arcore.training.data import Split
from arcore.training.module import AutoregressiveModule
from pixelgen.data import OPTIONS, ImageDataModule

DATA_OPTIONS = {**{phrase: flag.replace("--data.", "data.") for phrase, flag in OPTIONS.items()},
                "root": "--data-root", "root=": "--data-root "}
"""How ``sample`` spells the data settings in an error: ``--data-root`` for the folder, the others as recorded in
the checkpoint (``data.bits``), which ``sample`` does not change."""


def real_images(ckpt: str, split: Split, n: int, data_root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (codes as the model was trained on them) and labels of a split of the run's data."""
    checkpoint = read_checkpoint(ckpt, "--ckpt")
    hparams = ImageDataModule.settings_from_checkpoint(checkpoint.get("datamodule_hyper_parameters") or {})
    if not hparams:
        raise UsageError(f"{ckpt} records no data settings, so --prime-from cannot find real images")
    if data_root is not None:
        hparams["root"] = data_root
    try:
        codes, labels = ImageDataModule(**hparams).split(split)
    except UsageError as exc:  # the data settings as this command spells them
        raise exc.spelled(DATA_OPTIONS) from None
    if len(codes) < n:
        raise UsageError(f"the {split} split holds {len(codes)} images, fewer than --num-samples {n}")
    return codes[:n].long(), labels[:n]


def sample(args: argparse.Namespace) -> None:
    """``pixelgen sample`` once its options are parsed (:mod:`pixelgen.cli`): a PNG grid of samples,
    completions or beam-search completions from a checkpoint (a text file of them for a model that renders text, a
    model of another distribution in ``pixelgen.models``)."""
    check_sample_args(args)
    if args.beams < 0 or args.prime_rows < 0:
        raise UsageError(f"--beams and --prime-rows must be >= 0, got {args.beams} and {args.prime_rows}")
    out = output_path(args.out, ".txt" if Path(args.out).suffix.lower() == ".txt" else ".png")
    if args.prime_rows:
        output_path(out.with_name(f"{out.stem}_real.png"), ".png")
    refuse_replacing_inputs([out, out.with_name(f"{out.stem}_real.png")][: 2 if args.prime_rows else 1],
                            [("--ckpt", args.ckpt), *([("--data-root", args.data_root)] if args.data_root else [])])
    with output_lock(out, "pixelgen sample"):  # a second sample to the same file at once is refused
        _draw(args, out)


def _draw(args: argparse.Namespace, out: Path) -> None:
    """``pixelgen sample`` once its options and ``--out`` are checked: the draw, and the PNG grid(s) written."""
    sampling = SampleRun("pixelgen", args, AutoregressiveModule)
    model, device, n = sampling.model, sampling.device, args.num_samples
    if model.renders not in (Images, Text) or out.suffix.lower() != SUFFIXES[model.renders]:
        raise UsageError(f"--out {out}: this {type(model).__name__} renders {model.renders.__name__.lower()}, "
                         f"written as a {SUFFIXES[model.renders]} file" + (
                             "" if model.renders in (Images, Text) else " by another tool (wavegen for audio)"))
    if args.prime_rows and model.renders is not Images:
        raise UsageError(f"--prime-rows completes real images, and this {type(model).__name__} renders "
                         f"{model.renders.__name__.lower()}: drop it")
    check_fits_in_memory(n, model.num_codes)
    height = model.prime_extent
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
                                       options=sampling.options)
            best_log_probs.append(result.log_prob[:, 0])
            return result.codes[:, 0]
        return model.sample(count, cond=part_cond, prime=part_prime, options=sampling.options,
                            generator=sampling.generator)

    chunks = sampling.draw(draw, n)
    codes = chunks.samples
    if codes is not None:
        save_media(model.render_samples(codes), out)
        if images is not None:
            real = model.prime_from_data(images[: chunks.done], height).to(device)
            save_media(model.render_samples(real), out.with_name(f"{out.stem}_real.png"))
        if args.beams:
            bits = -torch.cat(best_log_probs).mean().item() / codes[0].numel() / math.log(2)
            print(f"beam search ({args.beams} beams): the best completions average {bits:.4f} bits/dim")
    sampling.end(chunks, [out] if chunks.done else [])
    assert codes is not None  # end() has left unless every sample was drawn
    print(f"wrote {n} {'completions' if prime is not None else 'samples'} to {out} in {sampling.seconds:.1f} s "
          f"({codes[0].numel() * n / sampling.seconds:,.0f} codes/s on {device})")
