"""Tables of foci (CSV or TSV): :func:`read_table`."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._common import _check_file, _read_text
from daskmeta.space import normalize_space_name

__all__ = ["read_table"]

_REQUIRED = ("id", "x", "y", "z")
_OPTIONAL = ("sample_size", "space", "study_id")
_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def _guess_delimiter(header: str, suffix: str) -> str | None:
    """The delimiter of a table: the suffix's if the header holds it, else the header's."""
    hinted = _BY_SUFFIX.get(suffix)
    if hinted is not None and hinted in header:
        return hinted
    for cand in ("\t", ",", ";", "|"):
        if cand in header:
            return cand
    return None  # runs of whitespace


def _rows(text: str, delimiter: str | None, path: str):
    """Yield (1-based line, fields) for each non-blank, non-comment record."""
    if delimiter is None:
        for i, line in enumerate(text.splitlines(), start=1):
            s = line.strip()
            if s and not s.startswith("#"):
                yield i, s.split()
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for fields in reader:
            line = start
            start = reader.line_num + 1
            if not fields or all(not f.strip() for f in fields):
                continue
            if fields[0].lstrip().startswith("#"):
                continue
            yield line, [f.strip() for f in fields]
    except csv.Error as exc:
        raise ParseError(f"malformed row ({exc})", path=path, line=reader.line_num) from exc


def read_table(path, sep: str | None = None) -> Dataset:
    """Read a CSV or TSV table of foci, one row per focus.

    Parameters
    ----------
    path : str or path-like
        A delimited text file with a header row holding ``id``, ``x``, ``y``, ``z``
        (case-insensitive) and optionally ``sample_size``, ``space`` (``MNI``, ``TAL`` /
        ``Talairach``, ``UNKNOWN``; empty or absent means MNI) and ``study_id``. Other
        columns are ignored. Blank lines and lines starting with ``#`` are skipped. A row
        with an id and empty ``x``, ``y`` and ``z`` declares an experiment without foci.
    sep : str, optional
        The delimiter. By default it is guessed: the one the suffix implies (``.csv``
        comma, ``.tsv`` tab) when the header holds it, else the first of tab, comma,
        semicolon or ``|`` found in the header, else runs of whitespace.

    Returns
    -------
    daskmeta.Dataset
        Experiments in order of first appearance; Talairach foci converted to MNI.

    Raises
    ------
    ParseError
        Naming the file: for missing required columns (listing those found), and with the
        1-based line for a row with the wrong number of fields, an empty id, a coordinate
        that is not a finite number, a sample size that is not a positive number, an
        unknown space, or an experiment whose rows disagree on sample size or space.
    """
    path = _check_file(path)
    spath = str(path)
    text = _read_text(path)
    first = next((ln for ln in text.splitlines() if ln.strip() and
                  not ln.lstrip().startswith("#")), None)
    if first is None:
        raise ParseError("the table is empty; expected a header with id, x, y, z", path=spath)
    delimiter = sep if sep is not None else _guess_delimiter(first, path.suffix.lower())

    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise DaskmetaError(f"sep must be one character (not a quote or newline); got {sep!r}")
    records = list(_rows(text, delimiter, spath))
    if not records:
        raise ParseError("the table has no header; expected id, x, y, z", path=spath)
    header_line, header = records[0]
    columns = [h.strip().strip("\"'").lower() for h in header]
    dup = sorted({c for c in columns if columns.count(c) > 1 and c})
    if dup:
        raise ParseError(f"duplicate columns {dup}", path=spath, line=header_line)
    missing = [c for c in _REQUIRED if c not in columns]
    guessed = "" if sep is not None else f" (delimiter guessed as {delimiter or 'whitespace'!r})"
    if missing:
        raise ParseError(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"a foci table needs id, x, y, z (optional: {', '.join(_OPTIONAL)}); found "
            f"columns {columns}"
            + guessed,
            path=spath,
            line=header_line,
        )
    wanted = [c for c in _REQUIRED + _OPTIONAL if c in columns]
    pos = {c: columns.index(c) for c in wanted}
    ncol = len(columns)
    lines = np.empty(len(records) - 1, dtype=np.int64)
    values = {c: [] for c in wanted}
    for k, (line, fields) in enumerate(records[1:]):
        if len(fields) != ncol:
            extra = fields[ncol:]
            if len(fields) < ncol or any(extra):
                raise ParseError(
                    f"expected {ncol} fields (as in the header); found {len(fields)}",
                    path=spath,
                    line=line,
                )
        lines[k] = line
        for c in wanted:
            values[c].append(fields[pos[c]])

    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in values.items()})
    empty_id = (frame["id"] == "").to_numpy()
    if empty_id.any():
        raise ParseError("empty id", path=spath, line=int(lines[np.argmax(empty_id)]))

    blank = np.ones(len(frame), dtype=bool)
    for c in "xyz":
        blank &= (frame[c] == "").to_numpy()
    xyz = {}
    for c in "xyz":
        num = pd.to_numeric(frame[c].where(frame[c] != ""), errors="coerce").to_numpy(float)
        bad = ~np.isfinite(num) & ~blank
        if bad.any():
            k = int(np.argmax(bad))
            raise ParseError(
                f"{c} = {frame[c].iloc[k]!r} is not a finite number", path=spath,
                line=int(lines[k]),
            )
        xyz[c] = num

    ids = frame["id"].to_numpy(dtype=object)
    first_row = ~pd.Series(ids).duplicated().to_numpy()
    exp_ids = ids[first_row]

    def per_experiment(col, parsed, what):
        # Rows of one experiment must agree; blanks (NaN) take the experiment's value.
        s = pd.Series(parsed)
        known = s.notna().to_numpy()
        firsts = s[known].groupby(ids[known], sort=False).first()
        expected = pd.Series(ids).map(firsts)
        clash = known & (s != expected).to_numpy()
        if clash.any():
            k = int(np.argmax(clash))
            j = int(np.flatnonzero(known & (ids == ids[k]))[0])
            raise ParseError(
                f"experiment {ids[k]!r} has {what} {frame[col].iloc[k]!r} here but "
                f"{frame[col].iloc[j]!r} on line {int(lines[j])}",
                path=spath,
                line=int(lines[k]),
            )
        return pd.Series(exp_ids).map(firsts).to_numpy()

    experiments = pd.DataFrame({"id": exp_ids})
    if "sample_size" in frame:
        raw = frame["sample_size"]
        n = pd.to_numeric(raw.where(raw != ""), errors="coerce").to_numpy(float)
        bad = (raw != "").to_numpy() & ~(np.isfinite(n) & (n > 0))
        if bad.any():
            k = int(np.argmax(bad))
            raise ParseError(
                f"sample_size {raw.iloc[k]!r} is not a positive number", path=spath,
                line=int(lines[k]),
            )
        experiments["sample_size"] = per_experiment("sample_size", n, "sample_size")
    if "study_id" in frame:
        sid = frame["study_id"].where(frame["study_id"] != "")
        experiments["study_id"] = per_experiment("study_id", sid.to_numpy(object), "study_id")
        missing_sid = experiments["study_id"].isna()
        experiments.loc[missing_sid, "study_id"] = experiments.loc[missing_sid, "id"]
    if "space" in frame:
        raw = frame["space"]
        canon = {}
        for value in pd.unique(raw[raw != ""]):
            try:
                canon[value] = normalize_space_name(value)
            except DaskmetaError as exc:
                k = int(np.argmax((raw == value).to_numpy()))
                raise ParseError(str(exc), path=spath, line=int(lines[k])) from exc
        space = raw.map(canon).to_numpy(object)
        exp_space = per_experiment("space", space, "space")
        exp_space = np.where(pd.isna(exp_space), "MNI", exp_space)
        experiments["space"] = exp_space
        row_space = pd.Series(ids).map(dict(zip(exp_ids, exp_space, strict=True))).to_numpy(object)
    else:
        row_space = np.full(len(frame), "MNI", dtype=object)

    keep = ~blank
    foci = pd.DataFrame(
        {"id": ids[keep], "x": xyz["x"][keep], "y": xyz["y"][keep], "z": xyz["z"][keep],
         "space": row_space[keep]}
    )
    try:
        return Dataset.from_foci(foci, experiments=experiments, name=path.name)
    except DaskmetaError as exc:  # pragma: no cover - checked above
        raise ParseError(str(exc), path=spath) from exc
