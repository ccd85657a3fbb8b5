"""What the NIMADS, NeuroStore and NeuroVault readers share: NiMARE's image value types, its
sample-size rules, analysis ids, JSON helpers and atomic writes.

Private to :mod:`daskmeta.io` (io layer 0): the readers import it, never the reverse.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.exceptions import ParseError

__all__ = [
    "IMAGE_TYPES",
    "analysis_keys",
    "atomic_write_bytes",
    "coerce_sample_sizes",
    "image_type",
    "looks_like_image",
    "short",
]

#: NIMADS / NeuroVault map types and their Dataset image column (NiMARE 0.22.1's
#: ``DEFAULT_MAP_TYPE_CONVERSION``).
_MAP_TYPES = {
    "T map": "t",
    "variance": "varcope",
    "univariate-beta map": "beta",
    "multivariate-beta map": "beta",
    "Z map": "z",
    "p map": "p",
    "P map (given null hypothesis)": "p",
}

#: The image types NiMARE's estimators read (``nimare.io.SUPPORTED_IMAGE_TYPES``).
IMAGE_TYPES = frozenset({"beta", "varcope", "se", "sd", "samplevar_dataset", "t", "z", "p"})

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".mgz", ".mgh", ".gii", ".gii.gz")


def short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (one short line in an error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def image_type(value_type) -> str | None:
    """The Dataset image column of a NIMADS ``value_type`` (NiMARE's normalisation:
    ``"T map"`` -> ``t``, ``"variance"`` -> ``varcope``, ``"Z"`` -> ``z``), or None for a type
    NiMARE's estimators cannot use (``"F map"``, ``"other"``, ...), which the readers leave
    out as NiMARE does."""
    if value_type in _MAP_TYPES:
        return _MAP_TYPES[value_type]
    if not isinstance(value_type, str):
        return None
    kind = value_type.strip().lower()
    kind = kind.removesuffix(" map")
    if kind == "variance":
        kind = "varcope"
    return kind if kind in IMAGE_TYPES else None


def looks_like_image(ref) -> bool:
    """Whether a path or URL names an image file (by its suffix, query string ignored)."""
    if not isinstance(ref, str) or not ref:
        return False
    candidate = ref.split("?", 1)[0].split("#", 1)[0].rstrip("/").lower()
    return candidate.endswith(_IMAGE_SUFFIXES)


def image_ref(url, filename) -> str | None:
    """NiMARE's choice between a NIMADS image's ``url`` and ``filename``: the first that
    looks like an image file, else the first given."""
    candidates = [c for c in (url, filename) if isinstance(c, str) and c]
    for c in candidates:
        if looks_like_image(c):
            return c
    return candidates[0] if candidates else None


def _number(value) -> float | None:
    """A finite float of a number or numeric string; None for anything else (bools too)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real):
        try:
            f = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return False


def coerce_sample_sizes(candidates, where: str, path) -> float:
    """The sample size of an analysis: the mean of the first usable candidate.

    ``candidates`` is NiMARE's ordered list of ``(key, value)`` (``convert_nimads_to_dataset``:
    annotation ``sample_size``, annotation ``sample_sizes``, analysis metadata
    ``sample_sizes``, ``sample_size``, study metadata ``sample_sizes``, ``sample_size``). As in
    NiMARE, a missing, empty, zero or non-numeric candidate is passed over; a negative one is
    an error (never a silently wrong kernel). NaN if no candidate is usable.
    """
    for key, raw in candidates:
        if _missing(raw):
            continue
        if isinstance(raw, np.ndarray):
            raw = raw.tolist()
        if key == "sample_sizes":
            if not isinstance(raw, (list, tuple)) or not raw:
                continue
            nums = [_number(v) for v in raw]
            if any(v is None for v in nums):
                continue
        else:
            if isinstance(raw, (list, tuple, dict)):
                continue
            nums = [_number(raw)]
            if nums[0] is None or nums[0] == 0:
                continue
        if any(v <= 0 for v in nums):
            raise ParseError(f"{where}: {key} must be positive; got {short(raw)}",
                             path=None if path is None else str(path))
        return float(np.mean(nums))
    return float("nan")


def analysis_keys(dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(study ids, analysis ids)`` to write a Dataset's experiments as NIMADS analyses.

    An experiment id ``f"{study}-{analysis}"`` (what the NIMADS, NeuroStore, NiMARE-JSON and
    Sleuth readers make) gives back ``analysis``, so reading the written file gives the same
    ids; any other id is written whole as the analysis id.
    """
    ids = dataset.experiments["id"].to_numpy(dtype=object)
    studies = dataset.experiments["study_id"].to_numpy(dtype=object)
    prefix = pd.Series(studies, dtype=object) + "-"
    ids_s = pd.Series(ids, dtype=object)
    has = np.fromiter((i.startswith(p) and len(i) > len(p) for i, p in zip(ids, prefix)),
                      dtype=bool, count=len(ids))
    keys = ids_s.copy()
    keys[has] = [i[len(p):] for i, p in zip(ids[has], prefix[has])]
    return studies, keys.to_numpy(dtype=object)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
