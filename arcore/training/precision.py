"""The precision a run trains in: bf16 mixed precision where the hardware computes in bf16 natively, else float32.

On a CPU with bf16 instructions (AVX-512 BF16 or AMX) oneDNN runs convolutions and matrix products forward and
backward on native bf16 kernels, about twice float32's rate; a GPU with bf16 does likewise. Without them a bf16
convolution is emulated and many times slower than float32, so the choice depends on the machine, and the run says
which it made and why in its first lines. ``--trainer.precision`` still decides when given.

Only training runs in the chosen precision: validation, test, predict, sampling and every likelihood are computed in
float32 (:meth:`arcore.training.module.AutoregressiveModule.scoring`), so scores compare across machines and precisions.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

FORCE = "ARCORE_BF16"
"""Environment variable that overrides the hardware check: ``1`` as if the hardware had native bf16, ``0`` as if not
(tests, and a user who measured otherwise)."""


def native_bf16(device: str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` (``cpu`` or ``cuda``) computes in bf16 natively, and why, in words."""
    forced = os.environ.get(FORCE)
    if forced in ("0", "1"):
        return forced == "1", f"{FORCE}={forced}"
    if device == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, "the GPU has bf16 units" if ok else "the GPU has no bf16 units"
    if torch.cpu._is_amx_tile_supported():
        return True, "the CPU has AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return True, "the CPU has AVX-512 BF16"
    return False, f"the CPU has no bf16 instructions ({torch.backends.cpu.get_cpu_capability()})"


def choose_precision(requested: object, accelerator: object) -> tuple[str, str]:
    """The trainer precision of a ``fit`` and why: ``requested`` (``--trainer.precision``) when given, else
    ``bf16-mixed`` where the hardware ``accelerator`` will run on has native bf16, else ``32-true``."""
    if requested is not None:
        return str(requested), "--trainer.precision"
    device = "cuda" if accelerator in ("gpu", "cuda") or (accelerator in (None, "auto")
                                                         and torch.cuda.is_available()) else "cpu"
    native, why = native_bf16(device)
    if native:
        return "bf16-mixed", f"{why}; --trainer.precision 32-true to train in float32"
    return "32-true", f"{why}; bf16 would be emulated, many times slower"


def float32_output(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in float32 even under bf16 autocast: a model's last layer (its logits, or a mixture's
    parameters, whose log-scales and means bf16's 8 bits of mantissa would round), at a small share of a step."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float() if x.dtype == torch.bfloat16 else x)
