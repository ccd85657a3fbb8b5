"""Sleuth / GingerALE text files: :func:`read_sleuth` and :func:`write_sleuth`.

A Sleuth file looks like::

    // Reference=MNI
    // Smith et al., 2010: pain > rest
    // Subjects=20
    -16   -58   -22
    26    -64   -50

    // Jones, 2012: heat
    // Subjects=15
    ...

The first non-blank line names the space (``MNI`` or ``Talairach``). Each experiment is a
run of ``//`` lines (its name lines, then ``// Subjects=N``) followed by one line per focus.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, DatasetError, ParseError
from daskmeta.io._common import _check_file, _read_text
from daskmeta.space import normalize_space_name

__all__ = ["read_sleuth", "write_sleuth"]

# The same line breaks NiMARE's convert_sleuth_to_dict splits on.
_LINE_BREAK = re.compile("\n\r|\r\n|\n|\r")
_REFERENCE = re.compile(r"^//\s*reference\s*=\s*(.*?)\s*$", re.IGNORECASE)
_SUBJECTS = re.compile(r"^//\s*subjects\s*=\s*(.*?)\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FIELD_SEP = re.compile(r"[\s,]+")
_YEAR = re.compile(r"(19|20)\d{2}")


def _split_study_info(study_info: str) -> tuple[str, str]:
    """Split an experiment's name into (study, contrast) exactly as NiMARE 0.22.1 does.

    The first ``;`` or ``:`` after a four-digit year splits the name; without a year, the
    first ``;``, else the first ``:``; without a separator the contrast is ``analysis_1``.
    """
    study_info = study_info.strip()
    if not study_info:
        return "", "analysis_1"
    year = _YEAR.search(study_info)
    if year is not None:
        found = [i for i in (study_info.find(s, year.end()) for s in ";:") if i != -1]
        if found:
            cut = min(found)
            left = study_info[:cut].strip()
            right = study_info[cut + 1 :].strip()
            return left or study_info, right or "analysis_1"
    for sep in ";:":
        if sep in study_info:
            left, _, right = study_info.partition(sep)
            left, right = left.strip(), right.strip()
            return left or study_info, right or "analysis_1"
    return study_info, "analysis_1"


def _name_from_lines(name_lines: list[str]) -> tuple[str, str]:
    """(study, contrast) of an experiment from its ``//`` name lines, as NiMARE joins them."""
    info = " ".join(line.replace("//", "").strip() for line in name_lines)
    return _split_study_info(info)


def _parse_space(value: str, path: str, line: int) -> str:
    key = value.replace(" ", "")
    try:
        space = normalize_space_name(key) if key else None
    except DaskmetaError:
        space = None
    if space not in ("MNI", "TAL"):
        raise ParseError(
            f"unknown reference space {value!r}; allowed: MNI, Talairach "
            "(e.g. '// Reference=MNI')",
            path=path,
            line=line,
        )
    return space


def _parse_subjects(value: str, path: str, line: int) -> int:
    text = value.replace(" ", "")
    if not _NUMBER.fullmatch(text):
        raise ParseError(
            f"the subject count {value!r} is not a number (expected '// Subjects=N', N > 0)",
            path=path,
            line=line,
        )
    n = float(text)
    if not np.isfinite(n) or n != int(n) or n <= 0:
        raise ParseError(
            f"the subject count must be a positive whole number; got {value!r}",
            path=path,
            line=line,
        )
    return int(n)


def _parse_focus(text: str, path: str, line: int) -> tuple[float, float, float]:
    body = text.split("//", 1)[0].strip()
    fields = [f for f in _FIELD_SEP.split(body) if f]
    if len(fields) != 3:
        raise ParseError(
            f"expected 3 coordinates (x y z, separated by tabs or spaces); found "
            f"{len(fields)} value{'s' if len(fields) != 1 else ''} in {text!r}",
            path=path,
            line=line,
        )
    out = []
    for f in fields:
        if not _NUMBER.fullmatch(f):
            raise ParseError(f"coordinate {f!r} is not a number", path=path, line=line)
        v = float(f)
        if not np.isfinite(v):
            raise ParseError(f"coordinate {f!r} is not finite", path=path, line=line)
        out.append(v)
    return out[0], out[1], out[2]


class _Block:
    __slots__ = ("study", "contrast", "n", "space", "line", "foci")

    def __init__(self, study, contrast, n, space, line):
        self.study, self.contrast, self.n, self.space, self.line = study, contrast, n, space, line
        self.foci: list[tuple[float, float, float]] = []


def _finish_header(header, space, path) -> _Block:
    subjects = [(ln, t) for ln, t in header if _SUBJECTS.match(t)]
    names = [t for ln, t in header if not _SUBJECTS.match(t)]
    if not subjects:
        shown = " / ".join(t for _, t in header)
        raise ParseError(
            f"experiment {shown!r} has no '// Subjects=N' line",
            path=path,
            line=header[-1][0],
        )
    ln, text = subjects[0]
    n = _parse_subjects(_SUBJECTS.match(text).group(1), path, ln)
    study, contrast = _name_from_lines(names)
    return _Block(study, contrast, n, space, header[0][0])


def _parse_sleuth_text(text: str, path: str) -> list[_Block]:
    lines = [(i, raw.strip()) for i, raw in enumerate(_LINE_BREAK.split(text), start=1)]
    lines = [(i, t) for i, t in lines if t]
    if not lines:
        raise ParseError("the file is empty; expected '// Reference=MNI' or "
                         "'// Reference=Talairach' first", path=path)
    first_line, first = lines[0]
    m = _REFERENCE.match(first)
    if m is None:
        raise ParseError(
            f"expected the reference space first ('// Reference=MNI' or "
            f"'// Reference=Talairach'); found {first[:80]!r}",
            path=path,
            line=first_line,
        )
    space = _parse_space(m.group(1), path, first_line)

    blocks: list[_Block] = []
    header: list[tuple[int, str]] | None = None
    block: _Block | None = None
    for lineno, text_line in lines[1:]:
        if text_line.startswith("//"):
            ref = _REFERENCE.match(text_line)
            if ref is not None:
                # A later Reference line (e.g. concatenated files) applies to what follows.
                if header is not None and _SUBJECTS.match(header[-1][1]):
                    blocks.append(_finish_header(header, space, path))
                    header = None
                if header is not None:
                    raise ParseError(
                        "a '// Reference=' line inside an experiment's header",
                        path=path,
                        line=lineno,
                    )
                space = _parse_space(ref.group(1), path, lineno)
                block = None
                continue
            if header is not None and _SUBJECTS.match(header[-1][1]):
                # A Subjects line ends a header: this one had no foci.
                blocks.append(_finish_header(header, space, path))
                header = None
            if header is None:
                header = []
                block = None
            header.append((lineno, text_line))
            continue
        if header is not None:
            block = _finish_header(header, space, path)
            blocks.append(block)
            header = None
        if block is None:
            raise ParseError(
                f"coordinates {text_line[:40]!r} before any experiment header "
                "('// name' and '// Subjects=N' lines)",
                path=path,
                line=lineno,
            )
        block.foci.append(_parse_focus(text_line, path, lineno))
    if header is not None:
        blocks.append(_finish_header(header, space, path))
    return blocks


def read_sleuth(path) -> Dataset:
    """Read a Sleuth / GingerALE text file.

    As tolerant as GingerALE: the reference line may be spelled ``//Reference=MNI``,
    ``// Reference = Talairach`` (any case or spacing); ``// Subjects=N`` with or without
    spaces; blank lines, Windows or old Mac line ends, a UTF-8 byte-order mark or Latin-1
    text; coordinates separated by tabs, spaces or commas, with an optional trailing
    ``// comment``. A later ``// Reference=`` line switches the space for the experiments
    after it (as in concatenated files).

    Experiment ids follow NiMARE 0.22.1 (``nimare.io.convert_sleuth_to_dict``): the name
    lines of an experiment are joined with spaces and split at the first ``;`` or ``:``
    after a year (else the first ``;``, else the first ``:``) into study and contrast, and
    the id is ``f"{study}-{contrast}"`` (contrast ``analysis_1`` without a separator). Where
    NiMARE silently keeps only the last of several experiments with the same name, every
    block is kept here, the repeats renamed ``"<contrast> (2)"``, ``"<contrast> (3)"``, ...
    A ``// Subjects=N`` line ends an experiment's header, so a header directly followed by
    another gives an experiment without foci (NiMARE would fold both into one name).

    Parameters
    ----------
    path : str or path-like
        The Sleuth file.

    Returns
    -------
    daskmeta.Dataset
        Foci in MNI mm (Talairach files converted with :func:`daskmeta.tal2mni`, the
        transform NiMARE and GingerALE use), the sample size of each experiment and its
        reported space.

    Raises
    ------
    ParseError
        Naming the file and the 1-based line, for an unknown reference space, a missing
        reference line, coordinates before any experiment header, a header without
        ``// Subjects=N``, a subject count that is not a positive whole number, a coordinate
        line without exactly three numbers, or a value that is not a finite number.
    """
    path = _check_file(path)
    spath = str(path)
    blocks = _parse_sleuth_text(_read_text(path), spath)

    ids, studies, contrasts, sizes, spaces = [], [], [], [], []
    seen: set[str] = set()
    for b in blocks:
        contrast = b.contrast
        exp_id = f"{b.study}-{contrast}"
        k = 1
        while exp_id in seen:
            k += 1
            contrast = f"{b.contrast} ({k})"
            exp_id = f"{b.study}-{contrast}"
        seen.add(exp_id)
        ids.append(exp_id)
        studies.append(b.study)
        contrasts.append(contrast)
        sizes.append(float(b.n))
        spaces.append(b.space)

    counts = [len(b.foci) for b in blocks]
    xyz = np.asarray([f for b in blocks for f in b.foci], dtype=float).reshape(-1, 3)
    foci = pd.DataFrame(
        {
            "id": np.repeat(np.asarray(ids, dtype=object), counts),
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "space": np.repeat(np.asarray(spaces, dtype=object), counts),
        }
    )
    experiments = pd.DataFrame(
        {"id": ids, "study_id": studies, "sample_size": sizes, "space": spaces}
    )
    metadata = pd.DataFrame({"id": ids, "contrast_id": contrasts})
    try:
        return Dataset.from_foci(
            foci, experiments=experiments, metadata=metadata, name=path.name
        )
    except DaskmetaError as exc:  # pragma: no cover - the parser checks everything first
        raise ParseError(str(exc), path=spath) from exc


def _format_number(v: float) -> str:
    """Shortest positional text that reads back to exactly the same float."""
    return np.format_float_positional(float(v), unique=True, trim="-")


def _name_round_trips(name: str, exp_id: str) -> bool:
    line = f"// {name}" if name else None
    if line is not None:
        stripped = line.strip()
        if (
            "\n" in name
            or "\r" in name
            or _SUBJECTS.match(stripped)
            or _REFERENCE.match(stripped)
            or stripped != line
        ):
            return False
    study, contrast = _name_from_lines([line] if line else [])
    return f"{study}-{contrast}" == exp_id


def _name_line(study: str, exp_id: str) -> str | None:
    """A name (the text after ``// ``) that reads back as ``exp_id``; None if there is none.

    An empty string means "no name line" (NiMARE reads that as ``-analysis_1``).
    """
    candidates = []
    if exp_id.startswith(study + "-"):
        contrast = exp_id[len(study) + 1 :]
        candidates += [f"{study}: {contrast}", f"{study}; {contrast}"]
    cuts = [m.start() for m in re.finditer("-", exp_id)]
    for cut in cuts:
        left, right = exp_id[:cut], exp_id[cut + 1 :]
        candidates += [f"{left}: {right}", f"{left}; {right}", f"{left}:{right}",
                       f"{left};{right}"]
        if right == "analysis_1":
            candidates.append(left)
    for name in candidates:
        if _name_round_trips(name, exp_id):
            return name
    return None


def write_sleuth(dataset: Dataset, path) -> Path:
    """Write a Dataset as a Sleuth / GingerALE text file, in MNI.

    One block per experiment: ``// study: contrast`` (chosen so that :func:`read_sleuth`
    gives back the experiment's id), ``// Subjects=N`` and one ``x<TAB>y<TAB>z`` line per
    focus, written with the shortest decimal text that reads back to the same float.
    Experiments without foci are written as a header without coordinates (GingerALE ignores
    them; :func:`read_sleuth` keeps them). Sample sizes that are not whole numbers are
    rounded, since the format holds only integers.

    Parameters
    ----------
    dataset : daskmeta.Dataset
        The experiments to write.
    path : str or path-like
        The output file (overwritten).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    DatasetError
        If experiments lack a positive sample size (Sleuth requires one); the message names
        them.

    Notes
    -----
    An id that no Sleuth name line can reproduce (one holding ``//`` or a line break, or one
    that NiMARE's study/contrast split cannot give back) is written as ``// <id>`` and reads
    back as ``"<id>-analysis_1"`` or similar.
    """
    if not isinstance(dataset, Dataset):
        raise DatasetError(
            f"write_sleuth expects a daskmeta.Dataset; got {type(dataset).__name__}"
        )
    exp = dataset.experiments
    n = exp["sample_size"].to_numpy(dtype=float)
    bad = ~(np.isfinite(n) & (np.round(n) >= 1))
    if bad.any():
        names = exp["id"][bad].tolist()
        raise DatasetError(
            f"Sleuth files need a positive sample size for every experiment; "
            f"{len(names)} experiment{'s' if len(names) != 1 else ''} lack one: "
            f"{', '.join(map(repr, names[:10]))}{' ...' if len(names) > 10 else ''}"
        )
    foci = dataset.foci
    groups = {k: v for k, v in foci.groupby("id", sort=False)[["x", "y", "z"]]}
    out = ["// Reference=MNI"]
    for exp_id, study, size in zip(exp["id"], exp["study_id"], n, strict=True):
        name = _name_line(str(study), str(exp_id))
        if name is None:
            name = " ".join(str(exp_id).split())
            if _SUBJECTS.match(f"// {name}") or _REFERENCE.match(f"// {name}"):
                name = f"experiment {name}"
        out.append("")
        if name:
            out.append(f"// {name}")
        out.append(f"// Subjects={int(np.round(size))}")
        if exp_id in groups:
            for x, y, z in groups[exp_id].to_numpy(dtype=float):
                out.append(f"{_format_number(x)}\t{_format_number(y)}\t{_format_number(z)}")
    path = Path(path)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
