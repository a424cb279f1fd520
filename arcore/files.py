"""Files written so that nothing is lost: atomic replacement, output paths checked before any work, and a lock that
keeps two runs out of one folder.

Every file the tools write (images, WAVs, CSVs, configs, checkpoints) goes through :func:`atomic_write`: a
temporary file with a unique name in the target's own folder, flushed to disk, then renamed over the target, so a
kill, a full disk or a second writer never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from arcore.errors import UsageError


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path`` and return them, outermost first (to remove them again)."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for folder in missing:
        folder.mkdir(exist_ok=True)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as :func:`make_parents` returns them) that are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def nothing_left_on_failure(folder: Path) -> Iterator[None]:
    """If the block raises, remove what it created: ``folder`` and the folders above it that did not exist before,
    or else the entries of ``folder`` that are new. So a failed download leaves no empty or partial folder behind."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        yield
    except BaseException:
        for path in [missing[-1]] if missing else sorted(set(folder.iterdir()) - before):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def unique_temporary(path: Path) -> Path:
    """A name for a temporary file beside ``path`` that no other writer, process or thread, will pick."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; when the block ends it is flushed to disk and renamed over
    ``path``. If the block or the disk fails, ``path`` is left as it was, the temporary file is removed with any
    folder created for it, and the failure is one :class:`UsageError` line naming the file."""
    path = Path(path)
    created = make_parents(path)
    temporary = unique_temporary(path)
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        remove_if_empty(created)
        if isinstance(exc, OSError):
            raise UsageError(f"could not write {path} ({exc.strerror or exc}); "
                             f"{'the earlier file is unchanged' if path.exists() else 'nothing was written'}") from None
        raise


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(data)


def check_output(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that could not be written: an existing folder, a path through a
    regular file, or a folder this process cannot create files in. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: name a file inside it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    probe = unique_temporary(folder / path.name)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create files in {folder} ({exc.strerror or exc})") from None
    probe.unlink()
    return path


@contextmanager
def folder_lock(folders: list[Path], holder: str) -> Iterator[None]:
    """Hold an exclusive lock on each folder for the duration of the block, or refuse in one line when another
    process holds one. The lock is an ``flock`` on ``.<name>.lock`` beside the folder: the kernel releases it when
    its holder exits in any way (``kill -9`` included), so it is never stale. Lock files and folders created here
    are removed again on the way out; ``holder`` (e.g. ``pixelgen fit``) names the other process in the error."""
    with ExitStack() as stack:
        for folder in sorted({f.resolve() for f in folders}):
            stack.enter_context(_locked(folder, holder))
        yield


@contextmanager
def _locked(folder: Path, holder: str) -> Iterator[None]:
    lock = folder.with_name(f".{folder.name}.lock")
    created = make_parents(lock)
    try:
        fd = _acquire(lock, folder, holder)
    except BaseException:
        remove_if_empty(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: whoever opened this file meanwhile sees it gone and retries
        os.close(fd)
        remove_if_empty(created)


def _acquire(lock: Path, folder: Path, holder: str) -> int:
    """An open descriptor of ``lock`` holding its ``flock``, or a one-line refusal naming the holder's pid."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(f"cannot lock {folder} for this run ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{folder} is in use by another `{holder}` (pid {other}): wait for it to end, or give "
                             f"this run its own folder (--trainer.default_root_dir and the checkpoint dirpath)"
                             ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed this file as we opened it: lock the one now at that path
