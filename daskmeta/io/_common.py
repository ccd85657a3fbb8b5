"""Helpers the readers share: checking a path, decoding a text file.

The readers import these from here, and :mod:`daskmeta.io._registry` imports the readers, so
imports inside :mod:`daskmeta.io` only go one way (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

import os
from pathlib import Path

from daskmeta.exceptions import DaskmetaError, ParseError


def _check_file(path) -> Path:
    """Return ``path`` as a Path, raising ParseError if it is not an existing file."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        path = Path(path)
    except TypeError as exc:
        raise DaskmetaError(
            f"expected a path to a file (str or os.PathLike); got {type(path).__name__}"
        ) from exc
    if not path.exists():
        raise ParseError("no such file", path=str(path))
    if path.is_dir():
        raise ParseError("is a directory; expected a file", path=str(path))
    return path


def _read_text(path: Path) -> str:
    """Decode a text file: UTF-8 (with or without a byte-order mark), else Latin-1.

    GingerALE and spreadsheet programs write Latin-1 or Windows-1252 as often as UTF-8, and
    author names with accents are common in Sleuth files, so a file that is not valid UTF-8
    is read as Latin-1 rather than refused.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read the file ({exc.strerror or exc})", path=str(path)) from exc
    if b"\x00" in raw:
        raise ParseError("is a binary file, not text", path=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.removeprefix("\ufeff")
