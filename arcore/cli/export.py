"""``<tool> export``: a checkpoint's model as a safetensors weights file for sharing (:mod:`arcore.files.weights`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from arcore.cli.sample import output_path
from arcore.contract import half_weights
from arcore.errors import UsageError
from arcore.files import weights
from arcore.files.atomic import output_lock, refuse_replacing_inputs, write_atomically
from arcore.files.registry import read_model


def export_main(tool: str, argv: Sequence[str]) -> None:
    """``<tool> export --ckpt run.ckpt --out model.safetensors``: the weights ``sample`` and ``test`` use (the EMA
    average when the run kept one) and the settings to rebuild the model, in a safetensors file for sharing
    (:mod:`arcore.files.weights`); no optimiser or training state. The output path is checked before any work and the
    file written atomically, under a lock that refuses a second export to it at the same moment."""
    parser = argparse.ArgumentParser(prog=f"{tool} export", description="Write a checkpoint's model as a "
                                     "safetensors weights file that sample, test and load accept.")
    parser.add_argument("--ckpt", required=True, help=f"checkpoint written by `{tool} fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--half-weights", action="store_true",
                        help="round the sampling step's weights to float16 values (WaveNet: its fused CPU step "
                             "then holds them as float16, about 2x faster; test the file to measure the change)")
    args = parser.parse_args(list(argv))
    out = output_path(args.out, weights.SUFFIX)
    refuse_replacing_inputs([out], [("--ckpt", args.ckpt)])
    with output_lock(out, f"{tool} export"):  # a second export to the same file at once is refused
        model, checkpoint = read_model(args.ckpt, tool, command="export", what="--ckpt")
        if checkpoint.get("weights_only"):
            raise UsageError(f"--ckpt {args.ckpt} is already a weights file; export reads a .ckpt written by "
                             f"`{tool} fit`")
        metadata = weights.metadata_of(checkpoint, model, args.ckpt, tool)
        if args.half_weights:
            if not model.capabilities.half_weights:
                raise UsageError(f"--half-weights: a {type(model).__name__} has no float16 sampling step (WaveNet "
                                 f"has)")
            change = half_weights(model).round_weights_to_half()
            print(f"weights rounded to float16 values (largest change {change:.2g})")
            metadata["weight_values"] = "float16"
        data = weights.encode(model.state_dict(), metadata)
        write_atomically(out, data)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {type(model).__name__}, {count:,} weights ({metadata['weights']}), "
          f"{len(data) / 2 ** 20:.2f} MiB")
