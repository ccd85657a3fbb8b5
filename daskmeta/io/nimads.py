"""NIMADS Studyset and Annotation JSON: :func:`read_nimads` and :func:`write_nimads`.

NIMADS is the JSON standard NeuroStore, NiMARE and Neurosynth Compose share::

    {"id": ..., "name": ..., "studies": [
        {"id": "S", "name": ..., "authors": ..., "publication": ..., "metadata": {...},
         "analyses": [
            {"id": "A", "name": ..., "metadata": {"sample_sizes": [25]},
             "conditions": [...], "weights": [...],
             "points": [{"coordinates": [x, y, z], "space": "MNI",
                         "values": [{"kind": "Z", "value": 4.2}]}],
             "images": [{"url": ..., "filename": ..., "value_type": "T map"}]}]}],
     "annotations": [...]}

and an Annotation::

    {"id": ..., "note_keys": {"include": "boolean"},
     "notes": [{"study": "S", "analysis": "A", "note": {"include": true}}]}
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._common import _check_file
from daskmeta.io._studyset import (
    _number,
    analysis_keys,
    atomic_write_bytes,
    coerce_sample_sizes,
    image_ref,
    image_type,
    short,
)
from daskmeta.space import normalize_space_name

__all__ = ["read_nimads", "to_nimads_dict", "write_nimads"]

_STUDY_FIELDS = {"name": "study_name", "authors": "authors", "publication": "journal",
                 "doi": "doi", "pmid": "pmid", "year": "year"}
_SIZE_KEYS = ("sample_sizes", "sample_size")


def _load(source, what: str):
    """A JSON document from a dict, or from a path (``.gz`` files are gunzipped)."""
    if isinstance(source, dict):
        return source, None
    if isinstance(source, (list, tuple)) and what == "annotation":
        return list(source), None
    path = _check_file(source)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ParseError(f"cannot read the {what} ({exc})", path=str(path)) from exc
    try:
        return json.loads(raw.decode("utf-8-sig")), path
    except UnicodeDecodeError as exc:
        raise ParseError(f"the {what} is not UTF-8 JSON ({exc.reason})", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=str(path),
                         line=exc.lineno) from None
    except (RecursionError, ValueError) as exc:
        raise ParseError(f"invalid JSON: {str(exc).splitlines()[0][:160]}",
                         path=str(path)) from None


def _need(cond, message, path):
    if not cond:
        raise ParseError(message, path=None if path is None else str(path))


def _dict_or_none(value, where, key, path) -> dict:
    if value is None:
        return {}
    _need(isinstance(value, dict), f"{where}: {key} must be an object or null; got "
                                   f"{type(value).__name__}", path)
    return value


def _list_or_none(value, where, key, path) -> list:
    if value is None:
        return []
    _need(isinstance(value, list), f"{where}: {key} must be a list or null; got "
                                   f"{type(value).__name__}", path)
    return value


def _id(value, where, path, default) -> str:
    if value is None:
        return default
    _need(isinstance(value, (str, int)) and not isinstance(value, bool),
          f"{where}: id must be a string or an integer; got {short(value)}", path)
    return str(value)


def _label_value(value, kind):
    """A note value as a label weight (float), or None when it is not a number or boolean
    (strings are kept out of the labels, as NiMARE's label block keeps them out)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return _number(value)
    if kind == "boolean" and isinstance(value, str) and value.strip().lower() in ("true",
                                                                               "false"):
        return 1.0 if value.strip().lower() == "true" else 0.0
    return None


def _note_key_types(payload, where, path) -> dict:
    keys = _dict_or_none(payload.get("note_keys"), where, "note_keys", path)
    out = {}
    for key, value in keys.items():
        # A type string ("boolean") or an object ({"type": "boolean", "order": 0}).
        out[str(key)] = value.get("type") if isinstance(value, dict) else value
    return out


def _point_space(point, where, path, unknown):
    raw = point.get("space")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "UNKNOWN"
    _need(isinstance(raw, str), f"{where}: space must be a string or null; got {short(raw)}",
          path)
    try:
        return normalize_space_name(raw, where=where, unknown=unknown)
    except DaskmetaError as exc:
        raise ParseError(str(exc), path=None if path is None else str(path)) from None


def _check_values(point, where, path):
    # Per-focus statistics, under "values" (NeuroStore) or "value" (older exports): checked
    # for shape, not kept (Dataset foci hold coordinates only, as the NiMARE-JSON reader).
    for key in ("values", "value"):
        values = point.get(key)
        if values is None or isinstance(values, (int, float, str)):
            continue
        _need(isinstance(values, list), f"{where}: {key} must be a list; got "
                                        f"{type(values).__name__}", path)
        for v in values:
            _need(isinstance(v, (dict, int, float, str)) or v is None,
                  f"{where}: {key} holds {short(v)}; expected objects with kind and value",
                  path)


def read_nimads(studyset, annotation=None, *, unknown_space="error", basepath=None) -> Dataset:
    """Read a NIMADS Studyset (and Annotations) as a Dataset.

    Parameters
    ----------
    studyset : str, path-like or dict
        A NIMADS Studyset JSON file (``.json``, or gzipped: any name, recognised by its
        bytes), or the document as a dict.
    annotation : str, path-like, dict or list, optional
        NIMADS Annotation(s) to attach, besides any the document carries in
        ``"annotations"`` or inline in an analysis' ``"annotations"``.
    unknown_space : {"error", "warn"}
        A point space that is neither MNI nor Talairach: refuse the document (default), or
        warn and take its coordinates as MNI (NiMARE leaves them untransformed). A missing
        (null) space is taken as MNI and recorded as ``UNKNOWN``, as NiMARE does.
    basepath : str or path-like, optional
        Resolve relative image paths against this folder (default: kept as written).

    Returns
    -------
    daskmeta.Dataset
        One experiment per analysis, id ``f"{study}-{analysis}"`` (NiMARE's), ``study_id`` the
        study; foci in MNI (Talairach points converted); the experiment's space is its first
        point's. Sample sizes in NiMARE's order: annotation ``sample_size``,
        ``sample_sizes``, analysis metadata ``sample_sizes``, ``sample_size``, study
        metadata ``sample_sizes``, ``sample_size`` (the mean of a list). Numeric and boolean
        notes become labels (true = 1); images go to :attr:`Dataset.images`, one column per
        type (``t``, ``z``, ``beta``, ``varcope``, ``se``, ``p``, ...; NiMARE's names; the
        first image of a type per analysis; types NiMARE's estimators cannot use, such as
        ``F map``, are left out); study fields (``study_name``, ``authors``, ``journal``,
        ``doi``, ``pmid``, ``year``), study then analysis metadata, ``analysis_name``,
        ``contrast_id``, conditions and weights (1 where missing) and texts go to
        :attr:`Dataset.metadata`. Per-focus values (``Z``, ``T``) are checked, not kept.

    Raises
    ------
    ParseError
        For a document of the wrong shape, naming the key, study, analysis and point:
        no ``studies`` list, a study or analysis that is not an object, coordinates that
        are not three finite numbers, duplicate analyses, an unknown space, a negative
        sample size.
    """
    if unknown_space not in ("error", "warn"):
        raise DaskmetaError(f"unknown_space must be 'error' or 'warn'; got {unknown_space!r}")
    doc, path = _load(studyset, "studyset")
    _need(isinstance(doc, dict), f"a NIMADS studyset is a JSON object with a 'studies' list; "
                                 f"got {type(doc).__name__}", path)
    _need("studies" in doc, "a NIMADS studyset needs a 'studies' key (a list of studies); "
                            f"found keys {short(sorted(map(str, doc))[:8], 120)}", path)
    studies = _list_or_none(doc["studies"], "studyset", "studies", path)

    ids, study_ids, keys, sizes_meta, spaces = [], [], [], [], []
    foci_exp, foci_xyz, foci_space = [], [], []
    meta_rows, image_rows = [], []
    analysis_rows: dict[tuple[str, str], int] = {}
    full_rows: dict[str, int] = {}
    short_rows: dict[str, int | None] = {}
    inline_notes: list[tuple[int, dict, str]] = []
    for s_pos, study in enumerate(studies):
        _need(isinstance(study, dict), f"studies[{s_pos}] must be an object; got "
                                       f"{type(study).__name__}", path)
        sid = _id(study.get("id"), f"studies[{s_pos}]", path, f"study-{s_pos}")
        swhere = f"study {sid!r}"
        smeta = _dict_or_none(study.get("metadata"), swhere, "metadata", path)
        base = {col: study.get(key) for key, col in _STUDY_FIELDS.items()
                if study.get(key) not in (None, "None")}
        base |= {k: v for k, v in smeta.items() if k not in _SIZE_KEYS}
        for a_pos, analysis in enumerate(_list_or_none(study.get("analyses"), swhere,
                                                       "analyses", path)):
            _need(isinstance(analysis, dict), f"{swhere}, analyses[{a_pos}] must be an object; "
                                              f"got {type(analysis).__name__}", path)
            aid = _id(analysis.get("id"), f"{swhere}, analyses[{a_pos}]", path,
                      f"analysis-{len(ids)}")
            where = f"study {sid!r}, analysis {aid!r}"
            exp_id = f"{sid}-{aid}"
            _need((sid, aid) not in analysis_rows and exp_id not in full_rows,
                  f"{where}: duplicate analysis (experiment id {exp_id!r} appears twice)", path)
            row = len(ids)
            analysis_rows[(sid, aid)] = row
            full_rows[exp_id] = row
            short_rows[aid] = None if aid in short_rows else row
            ameta = _dict_or_none(analysis.get("metadata"), where, "metadata", path)

            # foci
            space = None
            for p_pos, point in enumerate(_list_or_none(analysis.get("points"), where, "points",
                                                        path)):
                pwhere = f"{where}, points[{p_pos}]"
                _need(isinstance(point, dict), f"{pwhere} must be an object; got "
                                               f"{type(point).__name__}", path)
                xyz = point.get("coordinates")
                if xyz is None and all(k in point for k in "xyz"):
                    xyz = [point["x"], point["y"], point["z"]]
                ok = (isinstance(xyz, list) and len(xyz) == 3
                      and all(isinstance(v, (int, float)) and _number(v) is not None
                              for v in xyz))
                _need(ok, f"{pwhere}: coordinates must be three finite numbers; got "
                          f"{short(xyz)}", path)
                p_space = _point_space(point, pwhere, path, unknown_space)
                _check_values(point, pwhere, path)
                space = space or p_space
                foci_exp.append(exp_id)
                foci_xyz.append(xyz)
                foci_space.append(p_space)

            # images: NiMARE's types, the first of each type
            images = {"id": exp_id}
            image_space = None
            for i_pos, image in enumerate(_list_or_none(analysis.get("images"), where, "images",
                                                        path)):
                iwhere = f"{where}, images[{i_pos}]"
                _need(isinstance(image, dict), f"{iwhere} must be an object; got "
                                               f"{type(image).__name__}", path)
                kind = image_type(image.get("value_type"))
                ref = image_ref(image.get("url"), image.get("filename"))
                if kind is None or ref is None or kind in images:
                    continue
                if basepath is not None and "://" not in ref and not Path(ref).is_absolute():
                    ref = str(Path(basepath) / ref)
                images[kind] = ref
                image_space = image_space or image.get("space")
            image_rows.append(images)

            # conditions and weights (a missing weight is 1, as in NiMARE)
            conditions = _list_or_none(analysis.get("conditions"), where, "conditions", path)
            weights = _list_or_none(analysis.get("weights"), where, "weights", path)
            names = [c.get("name") if isinstance(c, dict) else c for c in conditions]
            w = [_number(weights[i]) if i < len(weights) and isinstance(weights[i], (int, float))
                 and _number(weights[i]) is not None else 1.0 for i in range(len(names))]

            meta = dict(base)
            meta |= {k: v for k, v in ameta.items() if k not in _SIZE_KEYS}
            meta |= {"id": exp_id, "contrast_id": aid, "analysis_name": analysis.get("name")}
            if analysis.get("description"):
                meta["description"] = analysis["description"]
            if names:
                meta["conditions"] = names
                meta["weights"] = w
            if image_space is not None:
                meta["image_space"] = image_space
            texts = _dict_or_none(analysis.get("texts"), where, "texts", path)
            for k, v in texts.items():
                meta[k if k not in meta else f"text_{k}"] = v
            meta_rows.append(meta)

            inline = _dict_or_none(analysis.get("annotations"), where, "annotations", path)
            for ann_id, note in inline.items():
                if isinstance(note, dict):
                    inline_notes.append((row, note, str(ann_id)))
                else:
                    inline_notes.append((row, {str(ann_id): note}, "_inline"))

            ids.append(exp_id)
            study_ids.append(sid)
            keys.append(aid)
            spaces.append(space or "UNKNOWN")
            sizes_meta.append([("sample_sizes", ameta.get("sample_sizes")),
                               ("sample_size", ameta.get("sample_size")),
                               ("sample_sizes", smeta.get("sample_sizes")),
                               ("sample_size", smeta.get("sample_size"))])

    # annotations: the document's, then the ones given
    payloads = []
    for src in ([doc.get("annotations")] if doc.get("annotations") is not None else []) + (
            [annotation] if annotation is not None else []):
        loaded, apath = _load(src, "annotation")
        for item in (loaded if isinstance(loaded, list) else [loaded]):
            payloads.append((item, apath if apath is not None else path))

    def resolve(study, analysis):
        analysis = str(analysis)
        if study is not None and (str(study), analysis) in analysis_rows:
            return analysis_rows[(str(study), analysis)]
        if analysis in full_rows:
            return full_rows[analysis]
        return short_rows.get(analysis)

    notes = list(inline_notes)
    for payload, apath in payloads:
        _need(isinstance(payload, dict), "a NIMADS annotation is a JSON object with 'notes'; "
                                         f"got {type(payload).__name__}", apath)
        ann_id = str(payload.get("id") or "annotation")
        awhere = f"annotation {ann_id!r}"
        types = _note_key_types(payload, awhere, apath)
        for n_pos, note in enumerate(_list_or_none(payload.get("notes"), awhere, "notes",
                                                   apath)):
            _need(isinstance(note, dict), f"{awhere}, notes[{n_pos}] must be an object", apath)
            body = _dict_or_none(note.get("note"), f"{awhere}, notes[{n_pos}]", "note", apath)
            if note.get("analysis") is None:
                continue
            row = resolve(note.get("study"), note.get("analysis"))
            if row is not None:
                notes.append((row, body, ann_id, types))

    label_col: dict[str, int] = {}
    lrows, lcols, lvals = [], [], []
    note_sizes: dict[int, list] = {}
    for entry in notes:
        row, body, _ann = entry[:3]
        types = entry[3] if len(entry) > 3 else {}
        for key, value in body.items():
            key = str(key)
            if key in _SIZE_KEYS:
                note_sizes.setdefault(row, [None, None])[_SIZE_KEYS.index(key) ^ 1] = value
            weight = _label_value(value, types.get(key))
            if weight is None:
                continue
            col = label_col.setdefault(key, len(label_col))
            if weight != 0:
                lrows.append(row)
                lcols.append(col)
                lvals.append(weight)

    sizes = []
    for row, cands in enumerate(sizes_meta):
        ns = note_sizes.get(row, [None, None])
        sizes.append(coerce_sample_sizes(
            [("sample_size", ns[0]), ("sample_sizes", ns[1]), *cands],
            f"study {study_ids[row]!r}, analysis {keys[row]!r}", path))

    xyz = np.asarray(foci_xyz, dtype=float).reshape(-1, 3)
    foci = pd.DataFrame({"id": pd.Series(foci_exp, dtype=object), "x": xyz[:, 0],
                         "y": xyz[:, 1], "z": xyz[:, 2],
                         "space": pd.Series(foci_space, dtype=object)})
    experiments = pd.DataFrame({"id": pd.Series(ids, dtype=object),
                                "study_id": pd.Series(study_ids, dtype=object),
                                "sample_size": np.asarray(sizes, dtype=float),
                                "space": pd.Series(spaces, dtype=object)})
    labels = sparse.csr_matrix((np.asarray(lvals, dtype=np.float64), (lrows, lcols)),
                               shape=(len(ids), len(label_col)))
    lengths = {len(r) for r in image_rows}
    images = pd.DataFrame(image_rows) if image_rows and lengths != {1} else None
    try:
        return Dataset.from_foci(foci, experiments=experiments, labels=labels,
                                 label_names=list(label_col),
                                 metadata=pd.DataFrame(meta_rows) if meta_rows else None,
                                 images=images,
                                 name=str(doc.get("name") or (path.name if path else "")))
    except DaskmetaError as exc:
        raise ParseError(str(exc), path=None if path is None else str(path)) from exc


# -- writing --------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_nimads_dict(dataset: Dataset, annotation_id: str = "daskmeta-labels") -> dict:
    """The NIMADS document of a Dataset (see :func:`write_nimads`)."""
    if not isinstance(dataset, Dataset):
        raise DaskmetaError(f"write_nimads expects a daskmeta.Dataset; got "
                            f"{type(dataset).__name__}")
    studies, keys = analysis_keys(dataset)
    exp = dataset.experiments
    n = len(exp)
    foci = dataset.foci
    bounds = np.searchsorted(pd.Categorical(foci["id"], categories=exp["id"]).codes,
                             np.arange(n + 1))
    xyz = foci[["x", "y", "z"]].to_numpy(float).tolist()
    meta_cols = [c for c in dataset.metadata.columns if c not in ("id", "contrast_id")]
    meta = dataset.metadata[meta_cols].to_dict("records") if meta_cols else [{}] * n
    img_cols = [c for c in dataset.images.columns if c != "id"]
    imgs = dataset.images[img_cols].to_numpy(dtype=object) if img_cols else None
    size = exp["sample_size"].to_numpy(float)
    by_study: dict[str, dict] = {}
    for row in range(n):
        sid = str(studies[row])
        study = by_study.setdefault(sid, {"id": sid, "name": sid, "analyses": []})
        m = {k: _jsonable(v) for k, v in meta[row].items()}
        m = {k: v for k, v in m.items() if v is not None}
        name = m.pop("analysis_name", None)
        if np.isfinite(size[row]):
            m["sample_sizes"] = [float(size[row])]
        images = []
        for j, col in enumerate(img_cols):
            ref = imgs[row, j]
            if isinstance(ref, str) and ref:
                images.append({"url": ref, "filename": Path(ref).name, "value_type": col,
                               "space": "MNI"})
        lo, hi = bounds[row], bounds[row + 1]
        study["analyses"].append({
            "id": str(keys[row]), "name": name if name is not None else str(keys[row]),
            "metadata": m or None,
            "points": [{"coordinates": xyz[i], "space": "MNI"} for i in range(lo, hi)],
            "images": images,
        })
    notes = []
    labels = dataset.labels.tocsr()
    names = dataset.label_names
    for row in range(n):
        a, b = labels.indptr[row], labels.indptr[row + 1]
        if a == b:
            continue
        notes.append({"study": str(studies[row]), "analysis": str(keys[row]),
                      "note": {names[c]: float(v) for c, v in zip(labels.indices[a:b],
                                                                  labels.data[a:b])}})
    doc = {"id": dataset.name or "daskmeta", "name": dataset.name or "",
           "studies": list(by_study.values())}
    if names:
        doc["annotations"] = [{"id": annotation_id, "name": annotation_id,
                               "note_keys": {k: "number" for k in names}, "notes": notes}]
    return doc


def write_nimads(dataset: Dataset, path, *, annotation_id: str = "daskmeta-labels") -> Path:
    """Write a Dataset as a NIMADS Studyset JSON file (gzipped if ``path`` ends in ``.gz``).

    Experiments are grouped into studies by ``study_id``; an experiment id
    ``f"{study}-{analysis}"`` is written as analysis ``analysis`` of study ``study`` (so
    :func:`read_nimads` gives the same ids back; other ids are written whole). Foci are
    written in MNI (Talairach input was converted on reading), the sample size as analysis
    metadata ``sample_sizes``, images as ``{"url": path, "value_type": type}``, the other
    metadata columns as analysis metadata, and the labels as one embedded Annotation
    (``annotation_id``) whose notes hold each experiment's non-zero weights. Written
    atomically.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    data = json.dumps(to_nimads_dict(dataset, annotation_id), allow_nan=False).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)
