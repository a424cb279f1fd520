"""Files written so that nothing is lost: atomic replacement, output paths checked before any work, and a lock that
keeps two runs out of one folder.

Every file the tools write (images, WAVs, CSVs, configs, checkpoints) goes through :func:`atomic_write`: a
temporary file with a unique name in the target's own folder, flushed to disk, then renamed over the target, so a
kill, a full disk or a second writer never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
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


LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.partial")
"""The name :func:`unique_temporary` gives: ``.NAME.<pid>-<hex>.partial``."""


def remove_leftovers(folder: Path, quiet_for: float = 60.0) -> list[Path]:
    """Remove the temporary files in ``folder`` that writers killed mid-write left behind (``kill -9``, a power
    cut), and return them: those whose writer's process is gone and that nobody has written to for ``quiet_for``
    seconds (a writer on another machine sharing the folder keeps its file fresh). Every atomic write calls it, so
    a leftover lasts until the next write to its folder."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = LEFTOVER.fullmatch(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > quiet_for:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def special_file(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (links followed), in words (``a
    named pipe (FIFO)``, ``a character device``, ``a block device``, ``a socket``), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), None)


STREAMS = ("a named pipe (FIFO)", "a character device")
"""The special files an output may name: written to in place (a program reading the pipe, ``/dev/null``), never
replaced by a regular file as an atomic rename would."""


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; when the block ends it is flushed to disk and renamed over
    ``path``. If the block or the disk fails, ``path`` is left as it was, the temporary file is removed with any
    folder created for it, and the failure is one :class:`UsageError` line naming the file. A named pipe or a
    character device at ``path`` (:data:`STREAMS`) is written to directly instead: renaming over it would replace it
    and the reader at its other end would never get the output."""
    path = Path(path)
    if special_file(path) in STREAMS:
        try:
            with open(path, "wb") as stream:
                yield stream
        except OSError as exc:
            raise UsageError(f"could not write {path} ({exc.strerror or exc})") from None
        return
    created = make_parents(path)
    remove_leftovers(path.parent)
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
    """Refuse, before any work, an output file that could not be written: an existing folder, a block device or a
    socket, a path through a regular file, or a folder this process cannot create files in. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: name a file inside it")
    kind = special_file(path)
    if kind is not None and kind not in STREAMS:
        raise UsageError(f"{option} {path} is {kind}: name a file (a named pipe or a character device is written to)")
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


def refuse_replacing_inputs(outputs: Sequence[Path], inputs: Sequence[tuple[str, str | Path]],
                            option: str = "--out", folder: Path | None = None) -> None:
    """Refuse, before any work, outputs that would replace or mix with the command's inputs: an output file that is
    an input (by any path to it: links and ``..`` included) or lies in an input folder, or an output ``folder`` that
    is an input or holds one.
    ``inputs`` pairs each input with the option that names it (``("--mel-from", path)``)."""
    for out in outputs:
        for name, given in inputs:
            if _same_file(Path(out), Path(given)):
                raise UsageError(f"{option} {out} is the {name} input {given}: writing it would replace that input; "
                                 f"name another output")
            if Path(given).is_dir() and Path(given).resolve() in Path(out).resolve().parents:
                raise UsageError(f"{option} {out} lies in the {name} folder {given}: the output would join the "
                                 f"inputs; write it elsewhere")
    if folder is not None:
        root = folder.resolve()
        for name, given in inputs:
            where = Path(given).resolve()
            if where == root or root in where.parents:
                raise UsageError(f"{option} {folder} holds the {name} input {given}: the outputs would replace or mix "
                                 f"with the inputs; name another folder")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return a.resolve() == b.resolve()


@contextmanager
def folder_lock(folders: list[Path], holder: str) -> Iterator[None]:
    """Hold an exclusive lock on each folder for the duration of the block, or refuse in one line when another
    process holds one. The lock is an ``flock`` on ``.<name>.lock`` beside the folder: the kernel releases it when
    its holder exits in any way (``kill -9`` included), so it is never stale. Lock files and folders created here
    are removed again on the way out; ``holder`` (e.g. ``pixelgen fit``) names the other process in the error."""
    with ExitStack() as stack:
        for folder in sorted({f.resolve() for f in folders}):
            stack.enter_context(_locked(folder, f"{folder} is in use by another `{holder}`",
                                        "give this run its own folder (--trainer.default_root_dir and the checkpoint "
                                        "dirpath)", "run from a folder you can write to, or name one with "
                                                    "--trainer.default_root_dir"))
        yield


@contextmanager
def output_lock(path: Path, holder: str, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on the output file ``path`` (``option``) for the duration of the block, as
    :func:`folder_lock` holds a folder's: a second command writing the same file at the same moment is refused in
    one line, where both would report success and one file would silently win."""
    with _locked(Path(os.path.abspath(path)), f"{option} {path} is being written by another `{holder}`",
                 f"choose another {option}", f"choose an {option} in a folder you can write to"):
        yield


@contextmanager
def _locked(target: Path, busy: str, advice: str, fix: str) -> Iterator[None]:
    """The lock of ``target`` (a folder or a file) for the block; ``busy`` says who holds it, ``advice`` how to
    avoid the clash and ``fix`` what to do when no lock file can be made, in the one-line refusals."""
    lock = target.with_name(f".{target.name}.lock")
    try:
        created = make_parents(lock)
    except OSError as exc:
        raise UsageError(f"cannot create {lock.parent} ({exc.strerror or exc}): {fix}") from None
    try:
        fd = _acquire(lock, target, busy, advice, fix)
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


def _acquire(lock: Path, target: Path, busy: str, advice: str, fix: str) -> int:
    """An open descriptor of ``lock`` holding its ``flock``, or a one-line refusal naming the holder's pid."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(f"cannot lock {target} ({exc.strerror or exc}): {fix}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{busy} (pid {other}): wait for it to end, or {advice}") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed this file as we opened it: lock the one now at that path
