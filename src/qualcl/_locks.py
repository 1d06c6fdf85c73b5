"""One file lock for every process that must not write the same thing at once (datasets, run folders)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_lock"]

#: ``flock`` errors that mean the file system keeps no locks (some network mounts): run unguarded.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[None]:
    """An exclusive POSIX ``flock`` on ``path`` (created if missing) for the block.

    Released when the block ends or the process dies (a killed holder leaves no stale lock). No lock
    where ``fcntl`` is missing (Windows) or the file system keeps none.

    Args:
        path: The file to lock.
        wait: Wait for another holder; ``False`` raises instead.

    Raises:
        BlockingIOError: ``wait=False`` and another process (or another open of ``path``) holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:  # BlockingIOError (held elsewhere, wait=False) is raised
            if error.errno not in _NO_LOCKS:
                raise
        yield  # closing the handle releases the lock
