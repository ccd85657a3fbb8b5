"""Guess a file's format and read it: :func:`read`.

The readers themselves live in :mod:`daskmeta.io.sleuth`, :mod:`daskmeta.io.nimare_json`,
:mod:`daskmeta.io.table` and :mod:`daskmeta.io.neurosynth`; this module imports them, never
the reverse (their shared helpers are in :mod:`daskmeta.io._common`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._common import _read_text

__all__ = ["read", "FORMATS"]

#: The formats :func:`read` recognizes, and how it recognizes them.
FORMATS = {
    "sleuth": "Sleuth / GingerALE text (a text file whose first line is '// Reference=...')",
    "nimare-json": "NiMARE dataset JSON (a .json file)",
    "table": "a CSV or TSV table of foci (.csv, .tsv or .txt with columns id, x, y, z)",
    "neurosynth": "a directory of Neurosynth release files (data-neurosynth_version-*_*)",
    "neuroquery": "a directory of NeuroQuery release files (data-neuroquery_version-*_*)",
    "daskmeta": "a file written by Dataset.save (a .zip with a manifest.json)",
}


def _accepted() -> str:
    return "; ".join(f"{k}: {v}" for k, v in FORMATS.items())


def _guess_format(path: Path) -> str:
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any(n.startswith("data-neurosynth_") for n in names):
            return "neurosynth"
        if any(n.startswith("data-neuroquery_") for n in names):
            return "neuroquery"
        raise DaskmetaError(
            f"cannot tell the format of directory {str(path)!r}: it holds no "
            "data-neurosynth_* or data-neuroquery_* files. Accepted formats: " + _accepted()
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "nimare-json"
    if zipfile.is_zipfile(path):
        return "daskmeta"
    try:
        text = _read_text(path)
    except ParseError:
        text = None
    if text is not None:
        first = [ln.strip() for ln in text.splitlines() if ln.strip()][:5]
        if first and first[0].startswith("//"):
            return "sleuth"
        if first:
            import re

            header = {c.strip().strip("\"'").lower() for c in re.split(r"[,\t;]|\s+", first[0])}
            if {"id", "x", "y", "z"} <= header:
                return "table"
    raise DaskmetaError(
        f"cannot tell the format of {str(path)!r} (suffix {suffix or 'none'!r}): it is not a "
        "Sleuth file, a NiMARE JSON, a table with columns id, x, y, z, or a Dataset.save zip. "
        "Accepted formats: " + _accepted()
    )


def read(path, **kwargs):
    """Read a Dataset from a file or directory, guessing its format.

    Parameters
    ----------
    path : str or path-like
        One of: a Sleuth / GingerALE text file (first line ``// Reference=...``); a NiMARE
        dataset JSON (``.json``); a CSV or TSV of foci with a header holding ``id``, ``x``,
        ``y``, ``z``; a directory of Neurosynth (``data-neurosynth_*``) or NeuroQuery
        (``data-neuroquery_*``) release files; a ``.zip`` written by
        :meth:`daskmeta.Dataset.save`.
    **kwargs
        Passed to the reader chosen (e.g. ``vocab=`` for Neurosynth).

    Returns
    -------
    daskmeta.Dataset

    Raises
    ------
    DaskmetaError
        If the path does not exist or its format cannot be told; the message says what was
        received and lists the formats accepted. Readers raise
        :class:`~daskmeta.exceptions.ParseError` for malformed files.
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise DaskmetaError(
            f"read() expects a path (str or os.PathLike); got {type(path).__name__}. "
            "Accepted formats: " + _accepted()
        )
    path = Path(path)
    if not path.exists():
        raise DaskmetaError(f"{str(path)!r} does not exist. Accepted formats: " + _accepted())
    fmt = _guess_format(path)
    if fmt == "sleuth":
        from daskmeta.io.sleuth import read_sleuth

        return read_sleuth(path, **kwargs)
    if fmt == "nimare-json":
        from daskmeta.io.nimare_json import read_nimare_json

        return read_nimare_json(path, **kwargs)
    if fmt == "table":
        from daskmeta.io.table import read_table

        return read_table(path, **kwargs)
    if fmt == "neurosynth":
        from daskmeta.io.neurosynth import read_neurosynth

        return read_neurosynth(path, **kwargs)
    if fmt == "neuroquery":
        from daskmeta.io.neurosynth import read_neuroquery

        return read_neuroquery(path, **kwargs)
    from daskmeta.dataset import Dataset

    if kwargs:
        raise DaskmetaError(
            f"Dataset.load takes no options; got {', '.join(sorted(kwargs))}"
        )
    return Dataset.load(path)
