"""Where qualcl keeps what it builds once per machine: generated datasets, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

#: Environment variable naming qualcl's cache folder (default ``$XDG_CACHE_HOME/qualcl``, else
#: ``~/.cache/qualcl``).
CACHE_ENV = "QUALCL_CACHE"


def cache_dir() -> Path:
    """The cache folder of qualcl: ``$QUALCL_CACHE``, else ``$XDG_CACHE_HOME/qualcl``, else ``~/.cache/qualcl``.

    Examples:
        >>> import os
        >>> os.environ["QUALCL_CACHE"] = "/tmp/qc"; str(cache_dir())
        '/tmp/qc'
        >>> del os.environ["QUALCL_CACHE"]
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "qualcl"
