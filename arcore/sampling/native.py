"""Fused C++ sampling steps, compiled on first use: the one build helper every model's native step goes through.

A fused step is one C++ source (e.g. ``pixelgen/csrc/igpt_step.cpp``, ``wavegen/csrc/wavenet_step.cpp``) built by
``torch.utils.cpp_extension`` with the system's C++ compiler the first time a run needs it, with ``-march=native``,
and cached under ``$TORCH_EXTENSIONS_DIR/arcore`` (default ``~/.cache/torch_extensions/arcore``), one build per
source text, build flags, torch and Python version and kind of CPU (a cache shared by machines of different CPUs
keeps one build for each).

- Where it cannot be built (no compiler, no headers, no OpenMP), :func:`load` warns once and returns None, and the
  model keeps its PyTorch step.
- ``ARCORE_FUSED=0`` turns every fused step off; each step also has its own switch (``PIXELGEN_FUSED=0``,
  ``WAVEGEN_FUSED=0``).
- An interrupted build never blocks a later one. A build runs in a private folder that is renamed into place only
  once the module is complete, under an ``flock`` on ``<name>.lock``: the kernel drops the lock when its holder
  dies, however it dies (Ctrl-C, ``kill -9``, a timeout), so there is no stale lock to wait on, and the next build
  clears the dead one's folder. A load that finds another process building the same step waits for it, and says
  so with that process's id. (torch's own ``load`` guards its build folder with a lock file that a killed build
  leaves behind, and every later load then waits on it forever.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

try:
    import fcntl as _fcntl
except ImportError:  # Windows: builds are not serialised, but each still lands whole or not at all
    _fcntl = None  # type: ignore[assignment]
fcntl: ModuleType | None = _fcntl

CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)
_loaded: dict[str, ModuleType | None] = {}  # by build name: the module, or None when it could not be built


def enabled(switch: str) -> bool:
    """Whether fused steps are on (``ARCORE_FUSED``) and this one is (``switch``, e.g. ``WAVEGEN_FUSED``)."""
    return os.environ.get("ARCORE_FUSED", "1") != "0" and os.environ.get(switch, "1") != "0"


def load(name: str, source: Path, *, what: str) -> ModuleType | None:
    """The compiled module of ``source``, built on first use; None when it cannot be built here (with one warning:
    ``what`` uses the PyTorch step)."""
    build = build_name(name, source)
    if build not in _loaded:
        try:
            _loaded[build] = _load(build, source)
        except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, no headers: fall back, say so once
            warnings.warn(f"the fused CPU step could not be built ({type(exc).__name__}: {_reason(exc)}); {what} "
                          f"uses the PyTorch step", stacklevel=2)
            _loaded[build] = None
    return _loaded[build]


def _reason(exc: Exception) -> str:
    """One line from a build error: its first line without the compile command, and the compiler's error lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    errors = [line for line in lines[1:] if ("error" in line.lower() or "not found" in line)
              and not line.startswith(("ninja:", "FAILED:"))]
    return "; ".join([lines[0].split(": [", 1)[0], *errors[:3]])[:400]


def build_name(name: str, source: Path) -> str:
    """``name`` tagged with the kind of CPU and a digest of everything the build depends on."""
    key = "\0".join([source.read_text(), *CFLAGS, *LDFLAGS, torch.__version__, sys.version])
    return f"{name}_{cpu_tag()}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def build_root() -> Path:
    """Where builds are kept: ``$TORCH_EXTENSIONS_DIR/arcore`` (torch's default root when unset)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "arcore"


def cpu_tag() -> str:
    """A short hash of the CPU's architecture and instruction-set flags (builds use ``-march=native``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = platform.processor()
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), info)
    return hashlib.sha1(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def _load(build: str, source: Path) -> ModuleType:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # its CUDA_HOME note is noise here
    root = build_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / build  # only ever a complete build: it appears by one rename
    if not final.is_dir():
        with _build_lock(root / f"{build}.lock"):
            if not final.is_dir():  # nobody built it while this process waited
                return _build(build, source, root, final)
    from torch.utils.cpp_extension import LIB_EXT

    # torch names the module <build>_v<n> when this process had built <build> before, so import it by its file
    library = next(final.glob(f"{build}*{LIB_EXT}"))
    spec = importlib.util.spec_from_file_location(library.stem, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"{library} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released by the kernel if this process dies); if another process
    holds it, say so and wait."""
    with open(path, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                print(f"waiting for process {holder}, which is building this fused CPU step ({path.stem})",
                      file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _build(build: str, source: Path, root: Path, final: Path) -> ModuleType:
    """Compile in a private folder (clearing those of interrupted builds), then rename it into place."""
    from torch.utils.cpp_extension import load as torch_load

    for stale in root.glob(f"{build}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    private = Path(tempfile.mkdtemp(prefix=f"{build}.build-", dir=root))
    print(f"compiling the fused CPU sampling step {source.name} (once per kind of CPU and version; under a "
          f"minute)", file=sys.stderr, flush=True)
    try:
        module = torch_load(name=build, sources=[str(source)], build_directory=str(private),
                            extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False)
        if not final.exists():  # without fcntl another build may have landed first: keep that one
            os.replace(private, final)
    finally:
        shutil.rmtree(private, ignore_errors=True)  # gone already when the rename succeeded
    return module

