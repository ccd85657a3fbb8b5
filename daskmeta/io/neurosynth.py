"""Whole-database readers: :func:`read_neurosynth` and :func:`read_neuroquery`.

Both read the upstream release files from a directory, in the layout NiMARE's
``fetch_neurosynth`` / ``fetch_neuroquery`` download::

    data-<db>_version-<v>_coordinates.tsv.gz    id, x, y, z (+ table columns)
    data-<db>_version-<v>_metadata.tsv.gz       id (+ space, title, authors, ...)
    data-<db>_version-<v>_vocab-<vocab>_source-<source>_type-<type>_features.npz
    data-<db>_version-<v>_vocab-<vocab>_vocabulary.txt

and build the Dataset with vectorized pandas (no Python loop per focus or per study).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.space import normalize_space_name

__all__ = ["read_neurosynth", "read_neuroquery"]


def _missing_files_error(directory: Path, db: str, expected: list[str]) -> DaskmetaError:
    if directory.is_dir():
        present = sorted(p.name for p in directory.iterdir() if p.name.startswith(f"data-{db}"))
        found = (
            "it holds " + ", ".join(present)
            if present
            else f"it holds no data-{db}_* files"
        )
    else:
        found = "it does not exist or is not a directory"
    return DaskmetaError(
        f"cannot read the {db} database from {str(directory)!r}: expected "
        f"{', '.join(expected)}; {found}"
    )


def _read_tsv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise ParseError(f"cannot read the {what} table: {exc}", path=str(path)) from exc


def _to_numeric(values: pd.Series) -> pd.Series:
    """Floats of a column pandas did not read as numbers (NaN where a value is not one).
    Integers too long for a float (hundreds of digits) become +-inf, which the check for
    non-finite coordinates then reports with its line, instead of an OverflowError."""
    try:
        return pd.to_numeric(values, errors="coerce")
    except OverflowError:
        def one(v):
            try:
                return float(str(v))  # float("9" * 1000) is inf; float(int) would raise
            except ValueError:
                return np.nan
        return values.map(one).astype(float)


def _read_vocabulary(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    terms = [t.strip() for t in text.splitlines()]
    while terms and not terms[-1]:
        terms.pop()
    return terms


def _read_database(
    directory,
    db: str,
    version,
    vocab: str | None,
    source: str,
    default_space: str,
    label_prefix: str | None = None,
) -> Dataset:
    directory = Path(directory)
    prefix = f"data-{db}_version-{version}_"
    coords_path = directory / f"{prefix}coordinates.tsv.gz"
    meta_path = directory / f"{prefix}metadata.tsv.gz"
    expected = [coords_path.name, meta_path.name]
    features_path = vocab_path = None
    value_type = None
    if vocab is not None:
        pattern = f"{prefix}vocab-{vocab}_source-{source}_type-*_features.npz"
        expected += [pattern, f"{prefix}vocab-{vocab}_vocabulary.txt"]
        matches = sorted(directory.glob(pattern)) if directory.is_dir() else []
        if len(matches) > 1:
            raise DaskmetaError(
                f"several feature files match {pattern} in {str(directory)!r}: "
                f"{', '.join(p.name for p in matches)}"
            )
        if matches:
            features_path = matches[0]
            value_type = re.search(r"_type-([^_]+)_features\.npz$", features_path.name).group(1)
        vocab_path = directory / f"{prefix}vocab-{vocab}_vocabulary.txt"
    needed = [coords_path, meta_path] + ([features_path, vocab_path] if vocab else [])
    if any(p is None or not p.is_file() for p in needed):
        err = _missing_files_error(directory, db, expected)
        if vocab is not None and directory.is_dir():
            have = sorted(
                {m.group(1) + " (source " + m.group(2) + ")"
                 for p in directory.glob(f"{prefix}vocab-*_source-*_features.npz")
                 if (m := re.search(r"_vocab-([^_]+)_source-([^_]+)_", p.name))}
            )
            if have:
                err = DaskmetaError(f"{err}. Vocabularies with features here: {', '.join(have)}"
                                    " (pass vocab=None to read without labels)")
        raise err

    meta = _read_tsv(meta_path, "metadata", dtype={"id": str}, keep_default_na=False,
                     na_values=[""])
    if "id" not in meta.columns:
        raise ParseError(f"no 'id' column; found {list(meta.columns)}", path=str(meta_path))
    if meta["id"].isna().any():
        raise ParseError("empty study ids", path=str(meta_path))
    dup = meta["id"][meta["id"].duplicated()]
    if len(dup):
        raise ParseError(
            f"study ids repeat: {', '.join(dup.unique()[:10].tolist())}", path=str(meta_path)
        )

    coords = _read_tsv(coords_path, "coordinates", usecols=lambda c: c in ("id", "x", "y", "z"),
                       dtype={"id": str})
    missing = [c for c in ("id", "x", "y", "z") if c not in coords.columns]
    if missing:
        raise ParseError(f"missing columns {missing}", path=str(coords_path))
    for c in "xyz":
        if not pd.api.types.is_float_dtype(coords[c]) and not pd.api.types.is_integer_dtype(
            coords[c]
        ):
            num = _to_numeric(coords[c])
            bad = num.isna() & coords[c].notna()
            if bad.any():
                k = int(np.argmax(bad.to_numpy()))
                shown = repr(coords[c].iloc[k])
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                raise ParseError(
                    f"{c} = {shown} is not a number", path=str(coords_path), line=k + 2,
                )
            coords[c] = num
    xyz = coords[["x", "y", "z"]].to_numpy(dtype=float)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise ParseError("missing or non-finite coordinate", path=str(coords_path), line=k + 2)

    # Foci of studies absent from the metadata are dropped, as NiMARE drops them.
    known = coords["id"].isin(meta["id"]).to_numpy()
    if not known.all():
        coords = coords[known]
        xyz = xyz[known]

    if "space" in meta.columns:
        raw = meta["space"].fillna("UNKNOWN")
        canon = {}
        for value in pd.unique(raw):
            try:
                canon[value] = normalize_space_name(value)
            except DaskmetaError as exc:
                raise ParseError(str(exc), path=str(meta_path)) from exc
        study_space = raw.map(canon)
    else:
        study_space = pd.Series(default_space, index=meta.index)

    pmid = meta["id"].astype(object)
    exp_id = (pmid + "-1").to_numpy(dtype=object)
    id_of = pd.Series(exp_id, index=pmid.to_numpy())
    space_of = pd.Series(study_space.to_numpy(dtype=object), index=pmid.to_numpy())
    foci = pd.DataFrame(
        {
            "id": coords["id"].map(id_of).to_numpy(dtype=object),
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "space": coords["id"].map(space_of).to_numpy(dtype=object),
        }
    )
    experiments = pd.DataFrame(
        {
            "id": exp_id,
            "study_id": pmid.to_numpy(dtype=object),
            "sample_size": np.nan,
            "space": study_space.to_numpy(dtype=object),
        }
    )
    extra = [c for c in meta.columns if c not in ("id", "space")]
    metadata = meta[extra].copy()
    metadata.insert(0, "id", exp_id)

    labels = label_names = None
    if vocab is not None:
        try:
            labels = sparse.load_npz(features_path).tocsr()
        except (ValueError, OSError, KeyError) as exc:
            raise ParseError(f"not a scipy sparse .npz ({exc})", path=str(features_path)) from exc
        terms = _read_vocabulary(vocab_path)
        if labels.shape != (len(meta), len(terms)):
            raise ParseError(
                f"the feature matrix is {labels.shape[0]} x {labels.shape[1]}; expected "
                f"{len(meta)} studies (rows, in metadata order) x {len(terms)} terms "
                f"(columns, from {vocab_path.name})",
                path=str(features_path),
            )
        if label_prefix is None:
            group = f"{vocab}__"
        elif label_prefix == "nimare":  # NiMARE's names: f"{vocab}_{source}_{type}__{term}"
            group = f"{vocab}_{source}_{value_type}__"
        else:
            group = label_prefix
        label_names = [group + t for t in terms]
        labels.eliminate_zeros()

    return Dataset.from_foci(
        foci,
        experiments=experiments,
        labels=labels,
        label_names=label_names,
        metadata=metadata,
        name=f"{db} version {version}",
    )


def read_neurosynth(
    path,
    version=7,
    vocab: str | None = "LDA50",
    source: str = "abstract",
    label_prefix: str | None = None,
) -> Dataset:
    """Read the Neurosynth database from a directory of its release files.

    Parameters
    ----------
    path : str or path-like
        A directory holding ``data-neurosynth_version-<version>_coordinates.tsv.gz``,
        ``..._metadata.tsv.gz`` and, for the labels,
        ``..._vocab-<vocab>_source-<source>_type-<type>_features.npz`` with
        ``..._vocab-<vocab>_vocabulary.txt`` (as NiMARE's ``fetch_neurosynth`` downloads).
    version : int or str
        The release (7 for the July 2018 release of 14,371 studies).
    vocab : str or None
        The label set: ``"LDA50"`` (50 topic weights), ``"terms"`` (tf-idf, if its feature
        file is present), ... ``None`` reads no labels.
    source : str
        The text the features were computed from (``"abstract"``).
    label_prefix : str, optional
        Prefix of the label names: by default ``f"{vocab}__"`` (e.g.
        ``"LDA50__32_pain_somatosensory_stimulation"``); ``"nimare"`` gives NiMARE's
        ``f"{vocab}_{source}_{type}__"`` (``"LDA50_abstract_weight__..."``); any other string
        is used as it is.

    Returns
    -------
    daskmeta.Dataset
        One experiment per study, with NiMARE's ids (``f"{pmid}-1"``, ``study_id`` the
        PMID) and label names ``f"{vocab}__{term}"`` (e.g.
        ``"LDA50__32_pain_somatosensory_stimulation"``; see ``label_prefix``), labels as a sparse
        matrix with rows in experiment order; title, authors, year, journal and doi in
        :attr:`Dataset.metadata`. No sample sizes (NaN).

    Notes
    -----
    Each study's ``space`` column says how its coordinates were reported: ``TAL`` studies
    are converted to MNI (:func:`daskmeta.tal2mni`), ``MNI`` ones are kept, and ``UNKNOWN``
    ones are **taken as MNI** without conversion, as NiMARE does. The experiment table keeps
    the reported space (MNI, TAL or UNKNOWN). Foci of studies missing from the metadata are
    dropped (as in NiMARE).

    Raises
    ------
    DaskmetaError
        If files are missing; the message lists the files expected in that directory and
        the vocabularies present.
    ParseError
        If a file is malformed (duplicate ids, non-numeric coordinates, a feature matrix
        whose shape disagrees with the metadata and vocabulary).
    """
    return _read_database(path, "neurosynth", version, vocab, source, "UNKNOWN", label_prefix)


def read_neuroquery(
    path,
    vocab: str | None = "neuroquery7547",
    source: str = "abstract",
    version=1,
    label_prefix: str | None = None,
) -> Dataset:
    """Read the NeuroQuery corpus from a directory of its release files.

    Parameters
    ----------
    path : str or path-like
        A directory holding ``data-neuroquery_version-<version>_coordinates.tsv.gz``,
        ``..._metadata.tsv.gz``, ``..._vocab-<vocab>_source-<source>_type-count_features.npz``
        and ``..._vocab-<vocab>_vocabulary.txt`` (as NiMARE's ``fetch_neuroquery`` downloads).
    vocab : str or None
        The vocabulary (``"neuroquery7547"``); ``None`` reads no labels.
    source : {"abstract", "keywords", "title"}
        Which term counts to read as labels.
    version : int or str
        The release (1).
    label_prefix : str, optional
        Prefix of the label names: by default ``f"{vocab}__"``; ``"nimare"`` gives NiMARE's
        ``f"{vocab}_{source}_count__"``; any other string is used as it is.

    Returns
    -------
    daskmeta.Dataset
        One experiment per study with ids ``f"{pmid}-1"`` and label names
        ``f"{vocab}__{term}"`` (e.g. ``"neuroquery7547__pain"``; see ``label_prefix``); term
        counts as a sparse matrix;
        coordinates in MNI (NeuroQuery reports all of its coordinates in MNI); titles in
        :attr:`Dataset.metadata`.

    Raises
    ------
    DaskmetaError
        If files are missing; the message lists the files expected in that directory.
    ParseError
        If a file is malformed.
    """
    return _read_database(path, "neuroquery", version, vocab, source, "MNI", label_prefix)
