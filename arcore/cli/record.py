"""``test --record_metrics true``: the test metrics of a weights file written into its own metadata, refused before
any work unless the whole test set scores a ``.safetensors`` file that can be rewritten."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from arcore.errors import UsageError
from arcore.files import weights
from arcore.files.atomic import check_output, write_atomically
from arcore.files.checkpoint import read_checkpoint_bytes


def check_recording(subcommand: str, path: Any, limit: Any = None) -> None:
    """Refuse ``--record_metrics true``, before any work, unless ``test`` is to score a weights file it can
    rewrite, on the whole test set (``limit``: ``limit_test_batches``)."""
    if subcommand != "test":
        raise UsageError(f"--record_metrics applies to `test` only, not to `{subcommand}`")
    if limit not in (None, 1.0):
        raise UsageError(f"--record_metrics true records a score of the whole test set, but "
                         f"--trainer.limit_test_batches {limit} tests part of it: drop one of the two")
    if not (path and str(path).endswith(weights.SUFFIX)):
        raise UsageError(f"--record_metrics true writes the test metrics into the .safetensors weights file being "
                         f"tested: pass one as --ckpt_path (`export` writes one), got {path}")
    check_output(path, "--ckpt_path")


def record_test_metrics(path: str | Path, metrics: dict[str, Any], datamodule: Any) -> None:
    """Write the ``test/*`` values of ``metrics`` (a trainer's ``callback_metrics``) and the settings of the data
    they were measured on into the metadata of the weights file ``path``
    (:func:`arcore.files.weights.with_test_metrics`), atomically."""
    tested = {name: float(value) for name, value in metrics.items() if name.startswith("test/")}
    broken = sorted(name for name, value in tested.items() if not math.isfinite(value))
    if broken:
        raise UsageError(f"the test gave {', '.join(f'{k} {tested[k]}' for k in broken)}: nothing was recorded in "
                         f"{path} (its weights or the test data hold non-finite values)")
    data = read_checkpoint_bytes(path, "--ckpt_path")
    write_atomically(path, weights.with_test_metrics(data, path, tested, getattr(datamodule, "hparams", {}),
                                                     "--ckpt_path"))
    print(f"recorded {', '.join(f'{k} {v:.4f}' for k, v in sorted(tested.items()))} in {path}")
