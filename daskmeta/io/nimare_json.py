"""NiMARE's dataset JSON: :func:`read_nimare_json`.

The layout (``nimare.dataset.Dataset(source)``)::

    {"<study>": {"contrasts": {"<contrast>": {
        "coords": {"space": "MNI", "x": [...], "y": [...], "z": [...]},
        "metadata": {"sample_sizes": [25], ...},
        "images": {"z": "path.nii.gz", ...},
        "labels": {"term": 0.1, ...}}}}}
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np
import pandas as pd
from scipy import sparse

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io._common import _check_file, _read_text
from daskmeta.space import normalize_space_name

__all__ = ["read_nimare_json"]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _to_float(v) -> float | None:
    """A finite float from a JSON number or numeric string; None if it is not one."""
    if _is_number(v):
        try:
            f = float(v)
        except OverflowError:  # an integer of hundreds of digits
            return None
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _json_space(value, where: str, path: str, unknown: str) -> str:
    if value is None:
        return "UNKNOWN"
    if not isinstance(value, str):
        raise ParseError(f"{where}: coords.space must be a string; got {_short(value)}",
                         path=path)
    # Word by word (normalize_space_name): "TAL_male" and "tal (from mni)" are Talairach,
    # "mni152_2mm" and "ale_2mm" MNI; a name that is neither is refused, or with
    # unknown="warn" warned about and kept as UNKNOWN (NiMARE warns and leaves such
    # coordinates untransformed).
    try:
        return normalize_space_name(value, where=where, unknown=unknown)
    except DaskmetaError as exc:
        raise ParseError(str(exc), path=path) from None


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 1000-digit number stays one short
    line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sample_size(meta: dict, where: str, path: str) -> float:
    for key in ("sample_sizes", "sample_size"):
        if key not in meta or meta[key] is None:
            continue
        raw = meta[key]
        values = raw if isinstance(raw, list) else [raw]  # a list under either key is fine
        if not values:
            continue
        nums = [_to_float(v) for v in values]
        if any(v is None for v in nums):
            raise ParseError(
                f"{where}: metadata.{key} must hold numbers; got {_short(raw)}", path=path
            )
        if any(v <= 0 for v in nums):
            raise ParseError(
                f"{where}: metadata.{key} must be positive; got {_short(raw)}", path=path
            )
        return float(np.mean(nums))
    return float("nan")


def read_nimare_json(path, unknown_space: str = "error") -> Dataset:
    """Read a NiMARE dataset JSON file.

    Parameters
    ----------
    path : str or path-like
        A JSON file in the layout ``nimare.dataset.Dataset`` reads: studies, each with
        ``contrasts``, each with optional ``coords``, ``metadata``, ``images`` and ``labels``.
    unknown_space : {"error", "warn"}
        What to do with a ``coords.space`` that is neither MNI nor Talairach (see
        :func:`daskmeta.space.parse_space_name`): refuse the file (default), or warn and
        read those coordinates as MNI, untransformed, as NiMARE does (the experiment's space
        is then ``UNKNOWN``).

    Returns
    -------
    daskmeta.Dataset
        One experiment per contrast, with id ``f"{study}-{contrast}"`` as in NiMARE, and
        ``study_id`` the study. ``sample_size`` is the mean of ``metadata.sample_sizes``
        (else ``metadata.sample_size``), NaN if neither is given. ``coords.space`` is read per
        contrast (``MNI``, ``TAL``/``Talairach`` and their variants such as ``TAL_male``,
        ``talairach_scaled`` or ``tal (from mni)``; NiMARE template names such as
        ``ale_2mm`` or ``mni152_2mm`` mean MNI; a missing space is taken as MNI, as NiMARE
        leaves such coordinates untransformed), and the name as written is kept in the
        metadata column ``reported_space``. Talairach foci are converted to MNI. Contrasts without
        ``coords`` are kept as experiments without foci. Image paths go to
        :attr:`Dataset.images` (one column per image type, paths as written in the file,
        not resolved), other metadata to :attr:`Dataset.metadata`, numeric ``labels`` to the
        sparse label matrix. Extra per-focus fields (``z_stat`` ...) are not kept.

    Raises
    ------
    ParseError
        Naming the file: with the line and column for JSON syntax errors, and with the study
        and contrast for wrong types, ``x``/``y``/``z`` of different lengths, non-numeric or
        non-finite coordinates, non-numeric or non-positive sample sizes, an unknown space,
        or two contrasts whose ids collide.
    """
    if unknown_space not in ("error", "warn"):
        raise DaskmetaError(f"unknown_space must be 'error' or 'warn'; got {unknown_space!r}")
    path = _check_file(path)
    spath = str(path)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", path=spath, line=exc.lineno
        ) from exc
    except RecursionError as exc:
        raise ParseError("invalid JSON: nested too deeply", path=spath) from exc
    except ValueError as exc:  # e.g. an integer longer than Python's 4,300-digit limit
        raise ParseError(f"invalid JSON: {str(exc).splitlines()[0][:160]}", path=spath) from None
    if not isinstance(data, dict):
        raise ParseError(
            f"expected a JSON object mapping study ids to studies; got {type(data).__name__}",
            path=spath,
        )

    ids, studies, contrasts, sizes, spaces = [], [], [], [], []
    foci_ids, foci_xyz, foci_space = [], [], []
    meta_rows, image_rows = [], []
    label_rows, label_cols, label_vals, label_names = [], [], [], {}
    where_of: dict[str, str] = {}
    for study, sdata in data.items():
        if not isinstance(sdata, dict) or not isinstance(sdata.get("contrasts"), dict):
            raise ParseError(
                f"study {study!r}: expected an object with a 'contrasts' object; got "
                f"{type(sdata).__name__ if not isinstance(sdata, dict) else 'no contrasts'}",
                path=spath,
            )
        for contrast, cdata in sdata["contrasts"].items():
            where = f"study {study!r}, contrast {contrast!r}"
            if not isinstance(cdata, dict):
                raise ParseError(
                    f"{where}: expected an object; got {type(cdata).__name__}", path=spath
                )
            exp_id = f"{study}-{contrast}"
            if exp_id in where_of:
                raise ParseError(
                    f"{where} and {where_of[exp_id]} both give the experiment id {exp_id!r}",
                    path=spath,
                )
            where_of[exp_id] = where
            row = len(ids)

            meta = cdata.get("metadata") or {}
            if not isinstance(meta, dict):
                raise ParseError(
                    f"{where}: metadata must be an object; got {type(meta).__name__}", path=spath
                )
            size = _sample_size(meta, where, spath)
            meta_rows.append(
                {k: v for k, v in meta.items() if k not in ("sample_sizes", "sample_size")}
                | {"id": exp_id, "contrast_id": contrast}
            )

            images = cdata.get("images") or {}
            if not isinstance(images, dict):
                raise ParseError(
                    f"{where}: images must be an object; got {type(images).__name__}", path=spath
                )
            for k, v in images.items():
                if v is not None and not isinstance(v, str):
                    raise ParseError(
                        f"{where}: images.{k} must be a path (string) or null; got {_short(v)}",
                        path=spath,
                    )
            image_rows.append(images | {"id": exp_id})

            labels = cdata.get("labels") or {}
            if not isinstance(labels, dict):
                raise ParseError(
                    f"{where}: labels must be an object; got {type(labels).__name__}", path=spath
                )
            for k, v in labels.items():
                if v is None:
                    continue
                value = float(v) if isinstance(v, bool) else _to_float(v)
                if value is None:
                    raise ParseError(
                        f"{where}: label {k!r} must be a number; got {_short(v)}", path=spath
                    )
                col = label_names.setdefault(str(k), len(label_names))
                if value != 0:
                    label_rows.append(row)
                    label_cols.append(col)
                    label_vals.append(value)

            space = "UNKNOWN"
            coords = cdata.get("coords")
            if coords is not None:
                if not isinstance(coords, dict):
                    raise ParseError(
                        f"{where}: coords must be an object; got {type(coords).__name__}",
                        path=spath,
                    )
                reported = coords.get("space")
                space = _json_space(reported, where, spath, unknown_space)
                if isinstance(reported, str):
                    meta_rows[-1]["reported_space"] = reported
                axes = []
                for axis in "xyz":
                    values = coords.get(axis, [])
                    if _is_number(values) or isinstance(values, str):
                        values = [values]
                    if not isinstance(values, list):
                        raise ParseError(
                            f"{where}: coords.{axis} must be a list of numbers; got "
                            f"{type(values).__name__}",
                            path=spath,
                        )
                    nums = [_to_float(v) for v in values]
                    bad = [values[i] for i, v in enumerate(nums) if v is None]
                    if bad:
                        raise ParseError(
                            f"{where}: coords.{axis} holds values that are not finite "
                            f"numbers: {', '.join(_short(b) for b in bad[:5])}",
                            path=spath,
                        )
                    axes.append(nums)
                lengths = [len(a) for a in axes]
                if len(set(lengths)) != 1:
                    raise ParseError(
                        f"{where}: coords x, y, z have different lengths "
                        f"({lengths[0]}, {lengths[1]}, {lengths[2]})",
                        path=spath,
                    )
                foci_ids += [exp_id] * lengths[0]
                foci_space += [space] * lengths[0]
                foci_xyz += list(zip(*axes, strict=True))

            ids.append(exp_id)
            studies.append(str(study))
            contrasts.append(str(contrast))
            sizes.append(size)
            spaces.append(space)

    xyz = np.asarray(foci_xyz, dtype=float).reshape(-1, 3)
    foci = pd.DataFrame(
        {"id": pd.Series(foci_ids, dtype=object), "x": xyz[:, 0], "y": xyz[:, 1],
         "z": xyz[:, 2], "space": pd.Series(foci_space, dtype=object)}
    )
    experiments = pd.DataFrame(
        {"id": ids, "study_id": studies, "sample_size": sizes, "space": spaces}
    )
    names = list(label_names)
    labels = sparse.csr_matrix(
        (np.asarray(label_vals, dtype=np.float64), (label_rows, label_cols)),
        shape=(len(ids), len(names)),
    )
    metadata = pd.DataFrame(meta_rows) if meta_rows else None
    images = pd.DataFrame(image_rows) if image_rows else None
    try:
        return Dataset.from_foci(
            foci, experiments=experiments, labels=labels, label_names=names,
            metadata=metadata, images=images, name=path.name,
        )
    except DaskmetaError as exc:
        raise ParseError(str(exc), path=spath) from exc
