"""The index folder during a build: its lock, its checkpoint folder, what may be in it.

Rank 0 of a build holds an exclusive ``flock`` on ``out/.lock``; a failed start leaves
nothing behind (:func:`build_folder`), and a folder that holds other files than an
index's is refused (:func:`check_out`). The class-graph pass uses the same folder
machinery; ``what`` names the thing being built in the error messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Collection
from pathlib import Path

from ..errors import CnnscopeError
from .bundle import MANIFEST

CHECKPOINT_DIR = ".building"
LOCK_FILE = ".lock"
GRID_DIR = "grids"


@contextlib.contextmanager
def locked(out: Path, wait: bool, what: str = "index"):
    """Hold an exclusive lock on ``out/.lock``, and remove the file when done.

    ``flock`` dies with its process: a killed build leaves at most an unlocked file. A
    waiter may get the lock of a file its holder has just removed; it then locks anew.
    Without ``wait``, a held lock is a :class:`CnnscopeError` that names ``what`` (the
    thing being built) and ``out``.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> with locked(out, False, "class graph"):
    ...     with locked(out, False, "class graph"):
    ...         pass
    Traceback (most recent call last):
    ...
    cnnscope.errors.CnnscopeError: another process is building the class graph ...
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = out / LOCK_FILE
    while True:
        out.mkdir(parents=True, exist_ok=True)  # the holder may have removed it
        fh = open(path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CnnscopeError(f"another process is building the {what} {out}") from None
            raise
        if _same_file(fh, path):
            break
        fh.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fh.close()


def _same_file(fh, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def build_folder(out: Path, wait: bool, rank: int, what: str = "index"):
    """Create ``out`` and its checkpoint folder and, on rank 0, hold the build lock.

    However the build ends, rank 0 removes the lock file, the checkpoint folder if it is
    empty, and ``out`` if this run created it and it is empty: a failed start leaves
    nothing behind. Writing errors become one line that names ``what`` is built.
    """
    created = not out.exists()
    try:
        with locked(out, wait, what) if rank == 0 else contextlib.nullcontext():
            (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            try:
                yield
            finally:
                if rank == 0:
                    remove_if_empty(out / CHECKPOINT_DIR)
    except OSError as exc:
        raise CnnscopeError(f"cannot write the {what} {out}: {exc}") from None
    finally:
        if created and rank == 0:
            remove_if_empty(out)


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def check_out(
    out: Path,
    what: str = "index",
    manifest: str = MANIFEST,
    known: Collection[str] = (GRID_DIR,),
    prefix: str = "topk-",
) -> None:
    """Refuse an ``--out`` that is a file, or a folder of other files than a ``what``'s.

    A folder is taken when it is new or empty, holds ``manifest`` (a finished build), or
    holds only ``known`` names, the checkpoint folder, the lock, hidden files and files
    starting with ``prefix`` (an interrupted build).

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = (out / "notes.txt").write_text("mine")
    >>> check_out(out, "class graph")
    Traceback (most recent call last):
    ...
    cnnscope.errors.CnnscopeError: --out ... is a folder that is not a cnnscope class graph: ...
    """
    if out.exists() and not out.is_dir():
        raise CnnscopeError(f"--out {out} is a file: give a folder for the {what}")
    if out.is_dir():
        allowed = {manifest, CHECKPOINT_DIR, LOCK_FILE, *known}
        names = {p.name for p in out.iterdir()}
        others = {n for n in names if n not in allowed and not n.startswith((prefix, "."))}
        if others and manifest not in names:
            raise CnnscopeError(
                f"--out {out} is a folder that is not a cnnscope {what}: give a new or empty folder"
            )
