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
every other numba user. This module is imported first by ``daskmeta/__init__.py`` and runs
:func:`redirect` on import: numba picks a function's cache directory when the function is
decorated, so the directory must be set before any daskmeta module decorates one;
:func:`restore`, at the end of ``daskmeta/__init__.py``, then gives other packages' functions
numba's usual choice back.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from daskmeta._version import __version__

__all__ = ["cache_dir", "redirect", "restore"]

_PACKAGE = Path(__file__).resolve().parent
_state: dict = {"dir": None, "previous": None, "redirected": False}


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


def cache_dir() -> Path | None:
    """The directory daskmeta's compiled code is cached in, if not the package's own
    ``__pycache__`` directories (None then)."""
    return _state["dir"]


def redirect() -> None:
    """Point numba's cache at :func:`default_dir` if the package's ``__pycache__`` is not
    writable and ``$NUMBA_CACHE_DIR`` is not set."""
    import numba

    if numba.config.CACHE_DIR:
        _state["dir"] = Path(numba.config.CACHE_DIR)
        return
    if _writable(_PACKAGE / "__pycache__"):
        return
    directory = default_dir()
    _state["previous"] = numba.config.CACHE_DIR
    _state["dir"] = directory
    _state["redirected"] = True
    numba.config.CACHE_DIR = str(directory)


def restore() -> None:
    """Give numba's cache setting back, once daskmeta's functions are decorated."""
    if _state["redirected"]:
        import numba

        numba.config.CACHE_DIR = _state["previous"]
        _state["redirected"] = False


redirect()
