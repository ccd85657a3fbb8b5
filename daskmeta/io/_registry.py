"""The format registry: :func:`read` guesses a file's format (or takes it by name) and calls
its reader; :func:`register_format` adds formats from outside the package.

The readers themselves live in :mod:`daskmeta.io.sleuth`, :mod:`daskmeta.io.nimare_json`,
:mod:`daskmeta.io.table` and :mod:`daskmeta.io.neurosynth`; this module imports them, never
the reverse (their shared helpers are in :mod:`daskmeta.io._common`).
"""

from __future__ import annotations

import contextvars
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._common import _read_text
from daskmeta.io.neurostore import read_neurostore
from daskmeta.io.neurosynth import read_neuroquery, read_neurosynth
from daskmeta.io.nimads import read_nimads
from daskmeta.io.nimare_json import read_nimare_json
from daskmeta.io.sleuth import read_sleuth
from daskmeta.io.table import read_table

__all__ = ["read", "register_format", "unregister_format", "FORMATS"]


@dataclass(frozen=True)
class _Format:
    name: str
    description: str
    guess: Callable[[Path], object] | None
    reader: Callable[..., Dataset]


_REGISTRY: dict[str, _Format] = {}  # in the order read() asks the guessers
_BUILTINS: dict[str, _Format] = {}
_DESCRIPTIONS: dict[str, str] = {}

#: The formats :func:`read` recognizes, and how it recognizes them: a read-only mapping of
#: name to description, in the order :func:`read` tries them, which :func:`register_format`
#: and :func:`unregister_format` keep up to date.
FORMATS = MappingProxyType(_DESCRIPTIONS)


# -- the built-in formats -------------------------------------------------------------------

# While read() guesses, the built-in classification of its path, computed once for all the
# built-in guessers (it may decode the whole file); outside read() each guesser computes it.
_CLASSIFIED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "_CLASSIFIED", default=None
)


def _classify(path: Path) -> str | None:
    """The built-in format of an existing ``path``, or None.

    Directories: by their release files. Files: ``.json`` is NiMARE JSON, then a zip is a
    Dataset.save file, then a text file is Sleuth if its first non-blank line starts with
    ``//``, or a table if that line is a header holding ``id``, ``x``, ``y`` and ``z``.
    """
    if path.is_dir():
        if (path / "studyset.json").is_file():
            return "neurostore"
        names = [p.name for p in path.iterdir()]
        if any(n.startswith("data-neurosynth_") for n in names):
            return "neurosynth"
        if any(n.startswith("data-neuroquery_") for n in names):
            return "neuroquery"
        return None
    if path.name.lower().endswith(".json.gz"):
        return "nimads"
    if path.suffix.lower() == ".json":
        return "nimads" if _looks_like_nimads(path) else "nimare-json"
    if zipfile.is_zipfile(path):
        return "daskmeta"
    try:
        text = _read_text(path)
    except ParseError:
        return None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        return None
    if first.startswith("//"):
        return "sleuth"
    header = {c.strip().strip("\"'").lower() for c in re.split(r"[,\t;]|\s+", first)}
    if {"id", "x", "y", "z"} <= header:
        return "table"
    return None


# A NIMADS studyset is an object with a "studies" list; NiMARE's dataset JSON maps study ids
# to objects holding "contrasts".
_NIMADS_STUDIES = re.compile(r'"studies"\s*:\s*\[')
_NIMARE_START = re.compile(r'\s*\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\{\s*"contrasts"\s*:')


def _looks_like_nimads(path: Path) -> bool:
    """A top-level "studies" list: parsed for files up to 32 MiB, else looked for in the
    first megabyte."""
    import json

    if path.stat().st_size <= 32 << 20:
        try:
            doc = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (ValueError, RecursionError):
            return False  # malformed: NiMARE JSON's reader reports where
        return isinstance(doc, dict) and isinstance(doc.get("studies"), list)
    with path.open("rb") as fh:
        head = fh.read(1 << 20).decode("utf-8", errors="replace").removeprefix("\ufeff")
    return bool(_NIMADS_STUDIES.search(head)) and not _NIMARE_START.match(head)


def _builtin_kind(path: Path) -> str | None:
    memo = _CLASSIFIED.get()
    if memo is None:
        return _classify(path)
    if path not in memo:
        try:
            memo[path] = _classify(path)
        except Exception as exc:
            memo[path] = exc
    kind = memo[path]
    if isinstance(kind, Exception):
        raise kind
    return kind


def _builtin_guess(name: str) -> Callable[[Path], bool]:
    def guess(path) -> bool:
        return _builtin_kind(Path(path)) == name

    guess.__name__ = guess.__qualname__ = f"guess_{name.replace('-', '_')}"
    guess.__doc__ = f"Whether ``path`` is in the built-in format {name!r}."
    return guess


def _read_saved(path, **kwargs) -> Dataset:
    if kwargs:
        raise DaskmetaError(
            f"Dataset.load takes no options; got {', '.join(sorted(kwargs))}"
        )
    return Dataset.load(path)


# -- registering ----------------------------------------------------------------------------


def _names() -> str:
    return ", ".join(_REGISTRY)


def _accepted() -> str:
    return "; ".join(f"{k}: {v}" for k, v in FORMATS.items())


def register_format(name, *, description, guess, reader, overwrite=False) -> None:
    """Teach :func:`daskmeta.io.read` a new format.

    Formats are asked whether they recognize a path in the order they were registered; the
    built-in ones come first, so registering a format never changes how files the built-in
    formats recognize are read (name the format with ``read(path, format=name)`` for that).

    Parameters
    ----------
    name : str
        The format's name, for ``read(path, format=name)`` and in error messages.
    description : str
        One line saying what the format is and how it is recognized; :func:`read` lists it
        among the accepted formats when it cannot tell a file's format.
    guess : callable or None
        ``guess(path) -> bool``: whether the existing file or directory ``path``
        (a :class:`pathlib.Path`) is in this format. It should look only as far as it needs
        (a suffix, the first line) and return False for paths it does not recognize. An
        exception in ``guess`` counts as False (and is named in :func:`read`'s error if no
        format matches). None: the format is never guessed, only read by name.
    reader : callable
        ``reader(path, **kwargs) -> daskmeta.Dataset``: reads ``path`` (a
        :class:`pathlib.Path`), receiving the keyword arguments given to :func:`read`. Its
        errors reach the caller unchanged; raise :class:`~daskmeta.exceptions.ParseError` for
        malformed input.
    overwrite : bool, default False
        Replace a format already registered under ``name`` (it keeps its place in the order).
        A replaced built-in format comes back with :func:`unregister_format`.

    Raises
    ------
    DaskmetaError
        If ``name`` is already registered and ``overwrite`` is False, or an argument is not
        of the kind described above.

    See Also
    --------
    unregister_format, read

    Examples
    --------
    >>> import pandas as pd
    >>> import daskmeta
    >>> def read_xyz(path, **kwargs):
    ...     foci = pd.read_csv(path, sep=" ", names=["id", "x", "y", "z"])
    ...     return daskmeta.Dataset.from_foci(foci)
    >>> daskmeta.io.register_format(
    ...     "xyz", description="foci as 'id x y z' lines (a .xyz file)",
    ...     guess=lambda path: path.suffix == ".xyz", reader=read_xyz)
    >>> daskmeta.io.unregister_format("xyz")
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise DaskmetaError(
            f"a format's name must be a non-empty string without surrounding spaces; got {name!r}"
        )
    if not isinstance(description, str) or not description.strip():
        raise DaskmetaError(
            f"description of format {name!r} must be a non-empty string; got {description!r}"
        )
    if guess is not None and not callable(guess):
        raise DaskmetaError(
            f"guess of format {name!r} must be a callable guess(path) -> bool, or None for a "
            f"format read only by name; got {type(guess).__name__}"
        )
    if not callable(reader):
        raise DaskmetaError(
            f"reader of format {name!r} must be a callable reader(path, **kwargs) -> Dataset; "
            f"got {type(reader).__name__}"
        )
    if name in _REGISTRY and not overwrite:
        raise DaskmetaError(
            f"format {name!r} is already registered ({_REGISTRY[name].description}); pass "
            "overwrite=True to replace it"
        )
    _REGISTRY[name] = _Format(name, description, guess, reader)
    _DESCRIPTIONS[name] = description


def unregister_format(name) -> None:
    """Remove a format added with :func:`register_format`.

    Parameters
    ----------
    name : str
        The format's name. For a built-in format replaced with ``overwrite=True``, this
        brings back the built-in one.

    Raises
    ------
    DaskmetaError
        If no format is registered under ``name``, or it is a built-in format that was not
        replaced (built-in formats cannot be removed).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise DaskmetaError(
            f"no format is registered under the name {name!r}; registered formats: {_names()}"
        )
    if name in _BUILTINS:
        if _REGISTRY[name] is _BUILTINS[name]:
            raise DaskmetaError(f"{name!r} is a built-in format and cannot be unregistered")
        _REGISTRY[name] = _BUILTINS[name]
        _DESCRIPTIONS[name] = _BUILTINS[name].description
        return
    del _REGISTRY[name]
    del _DESCRIPTIONS[name]


for _name, _description, _reader in [
    ("sleuth",
     "Sleuth / GingerALE text (a text file whose first line is '// Reference=...')",
     read_sleuth),
    ("nimare-json", "NiMARE dataset JSON (a .json file)", read_nimare_json),
    ("table", "a CSV or TSV table of foci (.csv, .tsv or .txt with columns id, x, y, z)",
     read_table),
    ("neurosynth", "a directory of Neurosynth release files (data-neurosynth_version-*_*)",
     read_neurosynth),
    ("neuroquery", "a directory of NeuroQuery release files (data-neuroquery_version-*_*)",
     read_neuroquery),
    ("daskmeta", "a file written by Dataset.save (a .zip with a manifest.json)", _read_saved),
    ("neurostore", "a NeuroStore parquet studyset (a directory holding studyset.json and "
     "its parquet tables)", read_neurostore),
    ("nimads", "a NIMADS studyset (a .json object with a 'studies' list, or a .json.gz)",
     read_nimads),
]:
    register_format(_name, description=_description, guess=_builtin_guess(_name),
                    reader=_reader)
    _BUILTINS[_name] = _REGISTRY[_name]
del _name, _description, _reader


# -- reading --------------------------------------------------------------------------------


def _guess_format(path: Path) -> _Format:
    failures: dict[str, list[str]] = {}  # error -> formats whose guesser raised it
    token = _CLASSIFIED.set({})
    try:
        for fmt in tuple(_REGISTRY.values()):
            if fmt.guess is None:
                continue
            try:
                if fmt.guess(path):
                    return fmt
            except Exception as exc:
                failures.setdefault(f"{type(exc).__name__}: {exc}", []).append(fmt.name)
    finally:
        _CLASSIFIED.reset(token)
    failed = "".join(
        f" The guesser of {', '.join(names)} raised {error} (taken as no match)."
        for error, names in failures.items()
    )
    if path.is_dir():
        raise DaskmetaError(
            f"cannot tell the format of directory {str(path)!r}: it holds no "
            "data-neurosynth_* or data-neuroquery_* files, and no studyset.json. Accepted "
            "formats: " + _accepted()
            + failed
        )
    suffix = path.suffix.lower()
    raise DaskmetaError(
        f"cannot tell the format of {str(path)!r} (suffix {suffix or 'none'!r}): it is not a "
        "Sleuth file, a NiMARE JSON, a table with columns id, x, y, z, or a Dataset.save zip. "
        "Accepted formats: " + _accepted() + failed
    )


def read(path, format=None, **kwargs):
    """Read a Dataset from a file or directory, guessing its format.

    Parameters
    ----------
    path : str or path-like
        One of: a Sleuth / GingerALE text file (first line ``// Reference=...``); a NiMARE
        dataset JSON (``.json``); a NIMADS studyset (``.json`` with a ``studies`` list, or
        ``.json.gz``); a NeuroStore parquet studyset (a directory with ``studyset.json``); a CSV or TSV of foci with a header holding ``id``, ``x``,
        ``y``, ``z``; a directory of Neurosynth (``data-neurosynth_*``) or NeuroQuery
        (``data-neuroquery_*``) release files; a ``.zip`` written by
        :meth:`daskmeta.Dataset.save`; or a file of a format added with
        :func:`register_format`.
    format : str, optional
        The name of the format (a key of :data:`FORMATS`), to skip guessing. By default the
        registered formats are asked in order (the built-in ones first) whether they
        recognize ``path``, and the first that does reads it.
    **kwargs
        Passed to the reader chosen (e.g. ``vocab=`` for Neurosynth).

    Returns
    -------
    daskmeta.Dataset

    Raises
    ------
    DaskmetaError
        If the path does not exist, its format cannot be told or ``format`` is not a
        registered format; the message says what was received and lists the formats
        accepted. Readers raise :class:`~daskmeta.exceptions.ParseError` for malformed files.

    See Also
    --------
    register_format : add a format.
    """
    if format is not None and (not isinstance(format, str) or format not in _REGISTRY):
        raise DaskmetaError(
            f"read() got format={format!r}, which is not a registered format; registered "
            f"formats: {_names()} (add one with daskmeta.io.register_format)"
        )
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise DaskmetaError(
            f"read() expects a path (str or os.PathLike); got {type(path).__name__}. "
            "Accepted formats: " + _accepted()
        )
    path = Path(path)
    if not path.exists():
        # The names only: a missing path needs no description of every format (and the
        # command prints errors on one line of at most 500 characters).
        raise DaskmetaError(f"{str(path)!r} does not exist. Accepted formats: "
                            f"{', '.join(FORMATS)} (daskmeta.io.FORMATS describes each)")
    fmt = _REGISTRY[format] if format is not None else _guess_format(path)
    dataset = fmt.reader(path, **kwargs)
    if not isinstance(dataset, Dataset):
        raise DaskmetaError(
            f"the reader of format {fmt.name!r} returned {type(dataset).__name__}; expected a "
            "daskmeta.Dataset"
        )
    return dataset
