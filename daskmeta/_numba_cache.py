"""Where numba keeps daskmeta's compiled code.

numba caches each ``cache=True`` function next to its source, in the package's
``__pycache__`` directories, when it can write there (a normal install). A package installed
read-only (a container image, a shared site-packages) cannot be written to: then daskmeta's
compiled code goes to a directory of its own, one per daskmeta version, so every run after
the first loads it instead of compiling again:

1. ``$DASKMETA_CACHE_DIR``, else
2. the dask config setting ``daskmeta.cache-dir`` (``DASK_DASKMETA__CACHE_DIR``), else
3. ``$XDG_CACHE_HOME/daskmeta/numba-<version>``, else
4. ``~/.cache/daskmeta/numba-<version>``.

``$NUMBA_CACHE_DIR`` (numba's own setting) takes precedence over all of this, for daskmeta and
every other numba user. Every compiled function of daskmeta is decorated by :func:`compiled`
(``numba.njit`` with ``cache=True``): numba picks a function's cache directory when the
function is decorated, so :func:`compiled` points numba's setting at daskmeta's directory for
that moment only; other packages' functions keep numba's usual choice.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from daskmeta._version import __version__

__all__ = ["cache_dir", "compiled", "default_dir"]

_PACKAGE = Path(__file__).resolve().parent
_state: dict = {"chosen": False, "dir": None, "redirect": False}
_lock = threading.RLock()


def _writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (created if missing), as numba tests it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def default_dir() -> Path:
    """The per-version cache directory used when the package cannot be written to."""
    chosen = os.environ.get("DASKMETA_CACHE_DIR")
    if not chosen:
        import dask.config  # the user's YAML files and DASK_* variables (not yet our defaults)

        chosen = dask.config.get("daskmeta.cache-dir", None)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "daskmeta" / f"numba-{__version__}"


def _choose() -> Path | None:
    """Decide once: :func:`default_dir` if the package's ``__pycache__`` is not writable and
    ``$NUMBA_CACHE_DIR`` is not set; numba's own setting if set; else None (the package)."""
    with _lock:
        if not _state["chosen"]:
            import numba

            if numba.config.CACHE_DIR:
                _state["dir"], _state["redirect"] = Path(numba.config.CACHE_DIR), False
            elif not _writable(_PACKAGE / "__pycache__"):
                _state["dir"], _state["redirect"] = default_dir(), True
            _state["chosen"] = True
    return _state["dir"]


def cache_dir() -> Path | None:
    """The directory daskmeta's compiled code is cached in, if not the package's own
    ``__pycache__`` directories (None then)."""
    return _choose()


def compiled(**options):
    """``numba.njit(cache=True, **options)``, its cache in :func:`cache_dir` (a decorator)."""

    def decorate(func):
        import numba

        _choose()
        if not _state["redirect"]:
            return numba.njit(cache=True, **options)(func)
        with _lock:
            previous = numba.config.CACHE_DIR
            numba.config.CACHE_DIR = str(_state["dir"])
            try:
                return numba.njit(cache=True, **options)(func)
            finally:
                numba.config.CACHE_DIR = previous

    return decorate
