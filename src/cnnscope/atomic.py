"""Files that a killed writer never leaves half-written.

:func:`atomic_write` writes to a temporary file in the same folder, flushes and
``fsync``'s it, renames it over the target with :func:`os.replace` and ``fsync``'s the
folder, so a reader sees the complete old file or the complete new one, whatever moment
the writer is killed at. :func:`remove_stale_temps` deletes the temporary files of
writers that died; :func:`crash_point` is the fault-injection hook that the resume tests
use to kill a writer at one exact point. The index and the class graphs write their
bundles (:mod:`cnnscope.index.bundle`), grids and exports through these.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from pathlib import Path

__all__ = ["KILL_ENV", "atomic_write", "crash_point", "remove_stale_temps"]

log = logging.getLogger(__name__)

#: Environment variable naming a point where the writer kills itself (tests only).
KILL_ENV = "CNNSCOPE_INDEX_KILL_AT"


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``$CNNSCOPE_INDEX_KILL_AT`` equals ``name``.

    A fault-injection hook for the resume tests: it makes "killed at that exact point"
    reproducible. It does nothing unless the variable is set.

    Examples
    --------
    >>> crash_point("nowhere")  # no-op unless CNNSCOPE_INDEX_KILL_AT=nowhere
    """
    if os.environ.get(KILL_ENV) == name:
        log.warning("%s=%s: killing this process", KILL_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, *, kill_point: str | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Parameters
    ----------
    path
        Target file; its folder must exist.
    data
        The complete new contents.
    kill_point
        Name passed to :func:`crash_point` after the temporary file is complete but
        before it replaces ``path`` (tests only).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write(p, b"hello"); p.read_bytes()
    b'hello'
    """
    path = Path(path)
    # unique per process and call (two threads may write the same target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if kill_point:
            crash_point(kill_point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder: str | os.PathLike, prefix: str = "") -> None:
    """Delete temporary files of dead writers (``.<name>.<pid>.<random>.tmp``).

    Only names starting with ``prefix`` are considered; files of live processes of this
    machine are kept.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> mine = d / f".x.{os.getpid()}.ab12.tmp"
    >>> dead = d / ".x.999999999.ab12.tmp"  # no process has this id
    >>> _ = mine.write_bytes(b""), dead.write_bytes(b"")
    >>> remove_stale_temps(d); sorted(p.name == mine.name for p in d.iterdir())
    [True]
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.glob(f".{prefix}*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 3)[-3])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _alive(pid):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
