"""Reading checkpoints without running their code, refusing damaged ones, in one line whatever is wrong.

A ``.ckpt`` is a zip archive around a pickle, and a pickle can call any function while it loads: a checkpoint from
someone else is a program. Every checkpoint this project reads (``sample``, ``test`` / ``validate`` / ``predict``,
``fit`` resumes, ``--prime-from``, Lightning's own load in the CLI) goes through :func:`read_checkpoint`: it checks
the archive's CRC-32 of every member (torch's reader does not, so flipped bytes in a weight tensor would load),
then unpickles with ``torch.load(weights_only=True)``, which builds only tensors and plain values (numbers,
strings, lists, tuples, dicts, sets), plus the short allow-list :data:`SAFE_GLOBALS`. A file that asks for
anything else is refused before any of it runs. Every checkpoint ``fit`` writes holds only these types. A
``.safetensors`` weights file written by ``export`` (:mod:`arcore.files.weights`) goes through the same functions,
checked against the SHA-256 it records and parsed as raw tensors and JSON, so it is accepted wherever a checkpoint is.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import pickletools
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from arcore.errors import UsageError, first_line
from arcore.files import weights

SAFE_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
"""Types beyond torch's weights-only defaults that a checkpoint of this project may hold: paths, which data settings
passed from Python (``root=Path(...)``) carry into ``datamodule_hyper_parameters``."""


@contextmanager
def allow_listed() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` inside the block build :data:`SAFE_GLOBALS` (e.g. Lightning's loads)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
"""The start of a remote address (``http://``, ``s3://``, ``gs://``): fsspec's way of naming files elsewhere."""


LAST_NAME = "last.ckpt"
"""The name of a run's last checkpoint (Lightning's ``ModelCheckpoint`` with ``save_last``)."""


def newest_last(folder: Path) -> Path | None:
    """The newest of ``last.ckpt`` and the ``last-vN.ckpt`` beside it in ``folder`` (Lightning versions the name when
    it takes the ``last.ckpt`` it finds for another run's), or None: the file ``ckpt_path: last`` resumes."""
    try:
        found = [entry for entry in folder.iterdir() if re.fullmatch(r"last(-v\d+)?\.ckpt", entry.name)
                 and entry.is_file()]
    except OSError:
        return None
    return max(found, key=lambda entry: entry.stat().st_mtime, default=None)


def read_checkpoint_bytes(path: str | Path, what: str = "checkpoint", hint: str = "") -> bytes:
    """The bytes of the checkpoint file ``path`` after checking that it is one and undamaged; ``what`` names it in
    errors (``--ckpt``, ``--ckpt_path``) and ``hint`` ends the missing-file error (how to get one). A remote address
    (``https://``, ``s3://``) is refused: the checks need the whole file here, and a download is the user's to make
    (a ``Path`` would also fold its ``//`` into one slash). A ``last.ckpt`` older than a ``last-vN.ckpt`` beside it
    (:func:`newest_last`) is refused too: it is not the run's last checkpoint."""
    if REMOTE.match(str(path)):
        raise UsageError(f"{what} {path} is a remote address: checkpoints are read from local files only; download it "
                         f"first (e.g. curl -fLo model.ckpt URL) and pass the file")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist{hint}")
    newer = newest_last(path.parent) if path.name == LAST_NAME else None
    if newer is not None and newer.name != LAST_NAME and newer.stat().st_mtime > path.stat().st_mtime:
        raise UsageError(f"{what} {path} is older than {newer.name} beside it, the run's later last checkpoint (saved "
                         f"under that name after the run folder was moved or copied): pass {newer}, or remove the "
                         f"older file")
    try:
        size, memory = path.stat().st_size, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if size > memory // 2:  # read whole, then unpacked into tensors: twice its size at least
            raise UsageError(f"{what} {path} is {size / 2 ** 30:,.1f} GiB, too large to load in this machine's "
                             f"{memory / 2 ** 30:,.0f} GiB of memory (it is read whole, then unpacked): is it the "
                             f"file you meant?")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if weights.is_weights_file(data, path):  # a .safetensors weights file (arcore.files.weights), checked likewise
        weights.split(data, path, what)
        return data
    try:
        damaged = _failed_crc(data)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError):
        wanted = _pickle_globals(data)
        if wanted:  # a bare pickle (torch.save has written zip archives since torch 1.6)
            raise _unsafe(what, path, wanted[0]) from None
        empty = " (the file is empty)" if not data else ""
        raise UsageError(f"{what} {path} is not a readable checkpoint{empty}: not a complete torch zip archive "
                         f"(cut short, or not written by `fit`)") from None
    if damaged is not None:
        raise UsageError(f"{what} {path} is damaged: {damaged} fails its CRC check (the file was altered or cut "
                         f"short); use an intact copy, or another checkpoint of the run")
    return data


def load_checkpoint_bytes(data: bytes, path: str | Path, what: str = "checkpoint",
                          map_location: Any = "cpu") -> dict[str, Any]:
    """Unpickle checked checkpoint bytes with ``weights_only=True`` and :data:`SAFE_GLOBALS`; anything else is
    refused in one line, before it runs. A weights file gives its contents in the shape of a checkpoint
    (:func:`arcore.files.weights.checkpoint_from_weights`)."""
    if weights.is_weights_file(data, path):
        return weights.checkpoint_from_weights(data, path, what)
    try:
        with allow_listed():
            checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if wanted:
            raise _unsafe(what, path, wanted[0]) from None
        raise UsageError(f"{what} {path} is not a readable checkpoint ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch's reader raises many types for a malformed archive
        raise UsageError(f"{what} {path} is not a readable checkpoint ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{what} {path} is not a checkpoint written by `fit` (it holds a {type(checkpoint).__name__})")
    return checkpoint


def read_checkpoint(path: str | Path, what: str = "checkpoint", hint: str = "") -> dict[str, Any]:
    """A checkpoint file, checked (:func:`read_checkpoint_bytes`) and loaded safely (:func:`load_checkpoint_bytes`),
    on the CPU."""
    return load_checkpoint_bytes(read_checkpoint_bytes(path, what, hint), path, what)


def _failed_crc(data: bytes) -> str | None:
    """The first member of the zip archive ``data`` whose CRC-32 does not match its bytes, or None. Members stored
    uncompressed (all of torch's) are checked in place, without a copy; others are read through ``zipfile``."""
    view = memoryview(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            if member.compress_type != zipfile.ZIP_STORED:
                with archive.open(member) as f:  # zipfile checks the CRC as the member is read to its end
                    try:
                        while f.read(1 << 20):
                            pass
                    except (zipfile.BadZipFile, zlib.error):
                        return member.filename
                continue
            header = view[member.header_offset: member.header_offset + 30]
            if len(header) < 30 or bytes(header[:4]) != b"PK\x03\x04":
                return member.filename
            start = member.header_offset + 30 + int.from_bytes(header[26:28], "little") \
                + int.from_bytes(header[28:30], "little")
            if start + member.file_size > len(data) or zlib.crc32(view[start: start + member.file_size]) != member.CRC:
                return member.filename
    return None


def _unsafe(what: str, path: str | Path, wanted: str) -> UsageError:
    return UsageError(f"{what} {path} is not a checkpoint this project can load safely: it asks for {wanted}, and "
                      f"only tensors, numbers, strings, lists, dicts and paths are loaded (nothing in it was run); if "
                      f"you made this file yourself, save it again holding only those")


def _pickle_globals(data: bytes) -> list[str]:
    """The functions and classes a bare pickle names, read with :mod:`pickletools` (which parses, never runs);
    empty when ``data`` is not a pickle or names none."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) > 1 else "a global")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001, S110 - not a pickle, or cut short: what was named so far
        pass
    return names
