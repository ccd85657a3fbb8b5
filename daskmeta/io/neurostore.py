"""NeuroStore parquet studysets: :func:`read_neurostore` and :func:`write_neurostore`.

A NeuroStore release (what NiMARE's ``fetch_neurostore`` downloads and
``nimare.nimads.Studyset(folder)`` reads) is a folder::

    studyset.json      {"format": "nimare-studyset-parquet", "version": 1,
                        "tables": {"studies": "studies.parquet", ...}, "annotations": [...]}
    studies.parquet    study_id, name, description, authors, publication
    analyses.parquet   id (f"{study_id}-{contrast_id}"), study_id, contrast_id, name
    coordinates.parquet  id, study_id, contrast_id, x, y, z, space, kind, z_stat, ...
    images.parquet     id, ..., <type>__source (one column per image type), space
    metadata.parquet   id, ..., sample_sizes, sample_size, any analysis metadata
    texts.parquet      id, ..., abstract, ...
    annotations.parquet  id, ..., one column per note key

The tables are read column by column with pyarrow and joined with vectorized pandas (no
Python loop per focus); pyarrow is the optional dependency ``daskmeta[neurostore]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._studyset import analysis_keys, coerce_sample_sizes, image_type, short
from daskmeta.space import normalize_space_name

__all__ = ["FORMAT", "read_neurostore", "write_neurostore", "is_neurostore_folder"]

#: The ``format`` and ``version`` of a ``studyset.json`` this reader reads.
FORMAT, VERSION = "nimare-studyset-parquet", 1
_REQUIRED = {"studies": ("study_id",), "analyses": ("id", "study_id"),
             "coordinates": ("id", "x", "y", "z", "space"), "images": ("id",),
             "metadata": ("id",), "texts": ("id",), "annotations": ("id",)}
_ID_COLS = ("id", "study_id", "contrast_id")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - environment dependent
        raise DaskmetaError("reading or writing NeuroStore parquet studysets needs pyarrow: "
                            "pip install 'daskmeta[neurostore]'") from exc
    return pa, pq


def is_neurostore_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a ``studyset.json``."""
    return Path(path).is_dir() and (Path(path) / "studyset.json").is_file()


def _manifest(folder: Path) -> dict:
    mpath = folder / "studyset.json"
    if not folder.is_dir():
        raise ParseError("not a folder; a NeuroStore studyset is a folder holding "
                         "studyset.json and its parquet tables", path=str(folder))
    if not mpath.is_file():
        raise ParseError("no studyset.json here; a NeuroStore studyset is a folder holding "
                         "studyset.json and its parquet tables", path=str(folder))
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"not a JSON file ({str(exc).splitlines()[0][:120]})",
                         path=str(mpath)) from None
    if not isinstance(manifest, dict):
        raise ParseError(f"expected a JSON object; got {type(manifest).__name__}",
                         path=str(mpath))
    if manifest.get("format") != FORMAT:
        raise ParseError(f"key 'format' is {short(manifest.get('format'))}; this reader reads "
                         f"{FORMAT!r}", path=str(mpath))
    if manifest.get("version") != VERSION or isinstance(manifest.get("version"), bool):
        raise ParseError(f"key 'version' is {short(manifest.get('version'))}; this reader "
                         f"reads version {VERSION} of {FORMAT}", path=str(mpath))
    tables = manifest.get("tables", {})
    if not isinstance(tables, dict):
        raise ParseError("key 'tables' must map table names to file names", path=str(mpath))
    for name, fname in tables.items():
        # A file name in this folder: never a path leading elsewhere.
        if not isinstance(fname, str) or not _SAFE_NAME.fullmatch(fname):
            raise ParseError(f"tables.{name} must be a file name in the studyset folder "
                             f"(letters, digits, '._-'); got {short(fname)}", path=str(mpath))
    return manifest


def _read_table(folder: Path, manifest: dict, name: str, required: bool):
    """The table as a pandas DataFrame (pyarrow's types), or None when absent and optional."""
    pa, pq = _pyarrow()
    fname = manifest.get("tables", {}).get(name, f"{name}.parquet")
    path = folder / fname
    if not path.is_file():
        if required:
            raise ParseError(f"the {name} table is missing (expected {fname})", path=str(folder))
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParseError(f"cannot read the {name} table ({str(exc).splitlines()[0][:160]})",
                         path=str(path)) from None
    missing = [c for c in _REQUIRED[name] if c not in table.schema.names]
    if missing:
        raise ParseError(f"the {name} table has no column {', '.join(map(repr, missing))} "
                         f"(columns: {short(table.schema.names, 160)})", path=str(path))
    try:
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ParseError(f"cannot convert the {name} table ({str(exc)[:160]})",
                         path=str(path)) from None
    frame.attrs["path"] = str(path)
    return frame


def _ids(frame: pd.DataFrame, col: str, name: str) -> np.ndarray:
    """A column of ids as strings, refusing nulls and non-text, non-integer ids."""
    values = frame[col]
    path = frame.attrs.get("path")
    if values.isna().any():
        k = int(np.argmax(values.isna().to_numpy()))
        raise ParseError(f"the {name} table has an empty {col} (row {k + 1})", path=path)
    if pd.api.types.is_integer_dtype(values):
        return values.astype(str).to_numpy(dtype=object)
    arr = values.to_numpy(dtype=object)
    kind = pd.api.types.infer_dtype(arr, skipna=False)
    if kind == "empty":
        return arr
    if kind not in ("string", "integer"):
        raise ParseError(f"the {name} table's {col} must hold text ids; got {kind} values",
                         path=path)
    return arr if kind == "string" else np.asarray([str(v) for v in arr], dtype=object)


def _rows_of(frame, name, index: pd.Index) -> np.ndarray:
    """Row of each record in the analyses (by ``id``), -1 for unknown analyses."""
    if frame is None or not len(frame):
        return np.zeros(0, dtype=np.int64)
    return index.get_indexer(_ids(frame, "id", name))


def _aligned(frame, name, index: pd.Index, drop=_ID_COLS) -> pd.DataFrame:
    """The table's other columns, one row per analysis (first record of each id)."""
    n = len(index)
    if frame is None or not len(frame):
        return pd.DataFrame(index=range(n))
    rows = _rows_of(frame, name, index)
    keep = rows >= 0
    body = frame.loc[keep, [c for c in frame.columns if c not in drop]]
    body.index = rows[keep]
    body = body[~body.index.duplicated()]
    return body.reindex(range(n))


def _read_arrow(folder: Path, manifest: dict, name: str):
    """The needed columns of a large table as a pyarrow Table, ids and spaces
    dictionary-encoded (no Python string per row), or None when the file is absent."""
    pa, pq = _pyarrow()
    fname = manifest.get("tables", {}).get(name, f"{name}.parquet")
    path = folder / fname
    if not path.is_file():
        return None
    try:
        names = pq.read_schema(path).names
        missing = [c for c in _REQUIRED[name] if c not in names]
        if missing:
            raise ParseError(f"the {name} table has no column {', '.join(map(repr, missing))} "
                             f"(columns: {short(names, 160)})", path=str(path))
        table = pq.read_table(path, columns=list(_REQUIRED[name]),
                              read_dictionary=["id", "space"])
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, ParseError):
            raise
        raise ParseError(f"cannot read the {name} table ({str(exc).splitlines()[0][:160]})",
                         path=str(path)) from None
    return table.unify_dictionaries(), str(path)


def _codes(column, what: str, path: str):
    """``(codes, dictionary values)`` of a dictionary-encoded text column; code -1 is null."""
    pa, _ = _pyarrow()
    if not pa.types.is_dictionary(column.type) or not (
            pa.types.is_string(column.type.value_type)
            or pa.types.is_large_string(column.type.value_type)):
        if pa.types.is_dictionary(column.type) and pa.types.is_integer(column.type.value_type):
            column = column.cast(pa.dictionary(pa.int32(), pa.string()))
        elif column.null_count == len(column):
            return np.full(len(column), -1, dtype=np.int64), np.zeros(0, dtype=object)
        else:
            raise ParseError(f"the coordinates table's {what} must be text; got {column.type}",
                             path=path)
    chunks = column.chunks
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    codes = np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                            for c in chunks]).astype(np.int64)
    return codes, np.asarray(chunks[0].dictionary.to_pylist(), dtype=object)


def _foci(coords, index: pd.Index, unknown_space: str):
    """Foci rows (analysis of each), coordinates and canonical spaces, sorted by analysis."""
    pa, _ = _pyarrow()
    table, path = coords
    codes, ids = _codes(table.column("id"), "id", path)
    if (codes < 0).any():
        raise ParseError(f"the coordinates table has an empty id (row "
                         f"{int(np.argmax(codes < 0)) + 1})", path=path)
    rows = index.get_indexer(ids)[codes] if len(ids) else np.zeros(0, dtype=np.int64)
    cols = []
    for c in "xyz":
        col = table.column(c)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise ParseError(f"the coordinates table's column {c!r} must be numeric; got "
                             f"{col.type}", path=path)
        values = col.to_numpy().astype(float) if len(col) else np.zeros(0)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ParseError(f"the coordinates table's {c} is missing or not finite in row "
                             f"{int(np.argmax(bad)) + 1}", path=path)
        cols.append(values)
    xyz = np.column_stack(cols) if cols[0].size else np.zeros((0, 3))
    s_codes, uniques = _codes(table.column("space"), "space", path)
    try:
        canon = np.asarray([normalize_space_name(u, where=f"{path}: space",
                                                 unknown=unknown_space)
                            if isinstance(u, str) and u.strip() else "UNKNOWN"
                            for u in uniques] + ["UNKNOWN"], dtype=object)
    except DaskmetaError as exc:
        raise ParseError(str(exc)) from None
    f_space = canon[s_codes]  # code -1 (null) -> the last entry, UNKNOWN
    keep = rows >= 0
    order = np.argsort(rows[keep], kind="stable")
    return rows[keep][order], xyz[keep][order], f_space[keep][order]


def read_neurostore(path, *, unknown_space: str = "error", basepath=None) -> Dataset:
    """Read a NeuroStore parquet studyset (a release folder) as a Dataset.

    Parameters
    ----------
    path : str or path-like
        A folder holding ``studyset.json`` (format ``nimare-studyset-parquet``, version 1)
        and its tables (see the module documentation); NiMARE's
        ``resources/neurostore_parquet_studyset`` is one.
    unknown_space : {"error", "warn"}
        A coordinate space that is neither MNI nor Talairach: refuse the release (default),
        or warn and take those coordinates as MNI (NiMARE leaves them untransformed). An
        empty (null) space is taken as MNI and recorded as ``UNKNOWN``, as NiMARE does.
    basepath : str or path-like, optional
        Resolve relative image paths against this folder (default: kept as written).

    Returns
    -------
    daskmeta.Dataset
        One experiment per analysis, with NeuroStore's analysis ids (``f"{study}-{contrast}"``)
        and ``study_id``; foci in MNI (Talairach converted with Lancaster's transform); the
        experiment's space is its first focus's. Sample sizes in NiMARE's order (annotation
        ``sample_size``, ``sample_sizes``, metadata ``sample_sizes``, ``sample_size``; the mean
        of a list). Numeric and boolean annotation columns become labels (named as the
        columns; true = 1, zero and null absent); text columns of the annotations are left
        out, as NiMARE's label matrix leaves them. ``<type>__source`` image columns go to
        :attr:`Dataset.images` under NiMARE's type names (types its estimators cannot use are
        left out); study fields (``study_name``, ``study_description``, ``authors``,
        ``journal``), ``analysis_name``, ``contrast_id``, the metadata table and the texts
        table go to :attr:`Dataset.metadata`. Foci of analyses missing from the analyses
        table are dropped (as NiMARE drops them).

    Raises
    ------
    ParseError
        Naming the file and table: no ``studyset.json``, an unknown format or version, a
        table or required column missing (``coordinates`` needs ``id, x, y, z, space``),
        duplicate analysis ids, an analysis of an unknown study, non-numeric or missing
        coordinates, an unknown space, a negative sample size.
    """
    if unknown_space not in ("error", "warn"):
        raise DaskmetaError(f"unknown_space must be 'error' or 'warn'; got {unknown_space!r}")
    folder = Path(os.fsdecode(path)) if isinstance(path, bytes) else Path(path)
    manifest = _manifest(folder)
    studies = _read_table(folder, manifest, "studies", True)
    analyses = _read_table(folder, manifest, "analyses", True)
    coords = _read_arrow(folder, manifest, "coordinates")

    study_key = _ids(studies, "study_id", "studies")
    dup = pd.Index(study_key)[pd.Index(study_key).duplicated()]
    if len(dup):
        raise ParseError(f"duplicate study ids in the studies table: "
                         f"{', '.join(map(repr, dup.unique()[:5]))}",
                         path=studies.attrs["path"])
    a_ids = _ids(analyses, "id", "analyses")
    index = pd.Index(a_ids)
    if index.has_duplicates:
        raise ParseError(f"duplicate analysis ids in the analyses table: "
                         f"{', '.join(map(repr, index[index.duplicated()].unique()[:5]))}",
                         path=analyses.attrs["path"])
    a_study = _ids(analyses, "study_id", "analyses")
    s_row = pd.Index(study_key).get_indexer(a_study)
    if (s_row < 0).any():
        k = int(np.argmax(s_row < 0))
        raise ParseError(f"analysis {a_ids[k]!r} belongs to study {a_study[k]!r}, which is not "
                         "in the studies table", path=analyses.attrs["path"])
    n = len(a_ids)

    # foci, in analysis order
    if coords is not None:
        rows, xyz, f_space = _foci(coords, index, unknown_space)
    else:
        rows, xyz, f_space = (np.zeros(0, dtype=np.int64), np.zeros((0, 3)),
                              np.zeros(0, dtype=object))
    exp_space = np.full(n, "UNKNOWN", dtype=object)
    if len(rows):
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        exp_space[rows[first]] = f_space[first]

    # metadata: study fields, analysis name, the metadata and texts tables
    meta = pd.DataFrame({"id": a_ids})
    if "contrast_id" in analyses.columns:
        meta["contrast_id"] = analyses["contrast_id"].to_numpy(dtype=object)
    if "name" in analyses.columns:
        meta["analysis_name"] = analyses["name"].to_numpy(dtype=object)
    for col, out in (("name", "study_name"), ("description", "study_description"),
                     ("authors", "authors"), ("publication", "journal")):
        if col in studies.columns:
            meta[out] = studies[col].to_numpy(dtype=object)[s_row]
    table_meta = _aligned(_read_table(folder, manifest, "metadata", False), "metadata", index)
    texts = _aligned(_read_table(folder, manifest, "texts", False), "texts", index)
    ann = _aligned(_read_table(folder, manifest, "annotations", False), "annotations", index)
    sizes_cols = {k: (table_meta[k].to_numpy(dtype=object) if k in table_meta else None)
                  for k in ("sample_sizes", "sample_size")}
    note_cols = {k: (ann[k].to_numpy(dtype=object) if k in ann else None)
                 for k in ("sample_size", "sample_sizes")}
    extra = table_meta.drop(columns=[c for c in ("sample_sizes", "sample_size")
                                     if c in table_meta])
    extra = extra.drop(columns=[c for c in extra.columns if c in meta.columns])
    texts = texts.rename(columns={c: f"text_{c}" for c in texts.columns
                                  if c in meta.columns or c in extra.columns})
    meta = pd.concat([meta, extra.reset_index(drop=True), texts.reset_index(drop=True)],
                     axis=1)

    sizes = np.full(n, np.nan)
    cand_keys = [("sample_size", note_cols["sample_size"]),
                 ("sample_sizes", note_cols["sample_sizes"]),
                 ("sample_sizes", sizes_cols["sample_sizes"]),
                 ("sample_size", sizes_cols["sample_size"])]
    present = [c for c in cand_keys if c[1] is not None]
    if present:
        for r in range(n):  # per analysis, not per focus
            sizes[r] = coerce_sample_sizes([(k, v[r]) for k, v in present],
                                           f"analysis {a_ids[r]!r}", folder)

    # labels: numeric and boolean annotation columns
    label_names, blocks = [], []
    for col in ann.columns:
        if col in ("sample_size", "sample_sizes"):
            continue
        values = ann[col]
        if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "boolean":
            num = values.map(lambda v: 1.0 if v is True else 0.0 if v is False else np.nan)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            num = values.astype(float)
        else:
            continue
        arr = num.to_numpy(dtype=float, na_value=np.nan, copy=True)
        arr[~np.isfinite(arr)] = 0.0
        label_names.append(str(col))
        blocks.append(sparse.csc_matrix(arr.reshape(-1, 1)))
    labels = (sparse.hstack(blocks).tocsr() if blocks
              else sparse.csr_matrix((n, 0), dtype=np.float64))
    labels.eliminate_zeros()

    # images: the <type>__source columns
    imgs = _read_table(folder, manifest, "images", False)
    images = None
    if imgs is not None and len(imgs):
        wide = _aligned(imgs, "images", index)
        images = pd.DataFrame({"id": a_ids})
        for col in wide.columns:
            if not str(col).endswith("__source"):
                continue
            kind = image_type(str(col)[: -len("__source")])
            if kind is None or kind in images:
                continue
            refs = wide[col].to_numpy(dtype=object)
            if basepath is not None:
                refs = np.asarray([str(Path(basepath) / r) if isinstance(r, str) and r
                                   and "://" not in r and not Path(r).is_absolute() else r
                                   for r in refs], dtype=object)
            images[kind] = refs
        if "space" in wide.columns:
            meta["image_space"] = wide["space"].to_numpy(dtype=object)

    foci = pd.DataFrame({"id": pd.Series(a_ids[rows], dtype=object), "x": xyz[:, 0],
                         "y": xyz[:, 1], "z": xyz[:, 2],
                         "space": pd.Series(f_space, dtype=object)})
    experiments = pd.DataFrame({"id": pd.Series(a_ids, dtype=object),
                                "study_id": pd.Series(a_study, dtype=object),
                                "sample_size": sizes,
                                "space": pd.Series(exp_space, dtype=object)})
    try:
        return Dataset.from_foci(foci, experiments=experiments, labels=labels,
                                 label_names=label_names, metadata=meta, images=images,
                                 name=str(manifest.get("name") or folder.name))
    except DaskmetaError as exc:
        raise ParseError(str(exc), path=str(folder)) from exc


def write_neurostore(dataset: Dataset, path, *, overwrite: bool = False) -> Path:
    """Write a Dataset as a NeuroStore parquet studyset folder (what
    :func:`read_neurostore` and ``nimare.nimads.Studyset(folder)`` read).

    Foci are written in MNI; sample sizes as ``sample_sizes`` lists in the metadata table;
    labels as the annotations table (one float column per label); images as
    ``<type>__source`` columns. The folder is written under a temporary name and renamed
    into place, so ``path`` never holds half a studyset.

    Raises
    ------
    DaskmetaError
        If ``path`` exists and ``overwrite`` is False.
    """
    pa, pq = _pyarrow()
    if not isinstance(dataset, Dataset):
        raise DaskmetaError(f"write_neurostore expects a daskmeta.Dataset; got "
                            f"{type(dataset).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise DaskmetaError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    studies, keys = analysis_keys(dataset)
    exp = dataset.experiments
    ids = exp["id"].to_numpy(dtype=object)
    id_cols = {"id": ids, "study_id": studies, "contrast_id": keys}
    meta = dataset.metadata
    names = meta["analysis_name"].to_numpy(dtype=object) if "analysis_name" in meta else keys
    uniq, first = np.unique(studies.astype(str), return_index=True)
    study_name = (meta["study_name"].to_numpy(dtype=object)[first] if "study_name" in meta
                  else uniq.astype(object))
    pos = pd.Index(ids).get_indexer(dataset.foci["id"].to_numpy(dtype=object))
    size = exp["sample_size"].to_numpy(float)
    tables = {
        "studies": pa.table({"study_id": uniq.astype(object),
                             "name": pd.Series(study_name, dtype=object).astype(str)}),
        "analyses": pa.table({**id_cols, "name": pd.Series(names, dtype=object).astype(str)}),
        "coordinates": pa.table({"id": ids[pos], "study_id": studies[pos],
                                 "contrast_id": keys[pos],
                                 **{c: dataset.foci[c].to_numpy(float) for c in "xyz"},
                                 "space": np.full(len(pos), "MNI", dtype=object)}),
    }
    sizes = pa.array([[float(s)] if np.isfinite(s) else None for s in size],
                     type=pa.list_(pa.float64()))
    mcols = {**id_cols, "sample_sizes": sizes}
    for col in meta.columns:
        if col in ("id", "contrast_id", "analysis_name"):
            continue
        values = meta[col]
        try:
            mcols[str(col)] = pa.array(values.to_numpy(dtype=object), from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            mcols[str(col)] = pa.array(values.astype(str).to_numpy(dtype=object))
    tables["metadata"] = pa.table(mcols)
    img_cols = {f"{c}__source": dataset.images[c].to_numpy(dtype=object)
                for c in dataset.images.columns if c != "id"}
    tables["images"] = pa.table({**id_cols, **{k: pa.array(v, type=pa.string(),
                                                            from_pandas=True)
                                               for k, v in img_cols.items()}})
    annotations = []
    if dataset.label_names:
        lab = dataset.labels.tocsc()
        cols = {name: np.asarray(lab[:, j].todense()).ravel().astype(np.float64)
                for j, name in enumerate(dataset.label_names)}
        for v in cols.values():
            v[v == 0] = np.nan
        tables["annotations"] = pa.table({**id_cols, **cols})
        annotations = [{"id": "daskmeta-labels"}]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        manifest = {"format": FORMAT, "version": VERSION, "id": dataset.name or "daskmeta",
                    "name": dataset.name or "",
                    "tables": {k: f"{k}.parquet" for k in tables},
                    "annotations": annotations}
        (tmp / "studyset.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
