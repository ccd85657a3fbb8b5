"""Atlas labels for cluster tables: an atlas image (integer regions) and its label table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.exceptions import DaskmetaError

__all__ = ["Atlas", "read_labels"]

_LABEL_FORMS = ("a dict {value: name}, a list of names (position = value), a DataFrame with "
                "'index' and 'name' columns, or a file: .tsv/.csv with those columns, .txt "
                "(one name per line, or 'value name' per line), or an FSL atlas .xml")


def _from_frame(frame: pd.DataFrame, where: str) -> dict:
    cols = {c.lower(): c for c in frame.columns.astype(str)}
    index = next((cols[c] for c in ("index", "value", "id", "label_id") if c in cols), None)
    name = next((cols[c] for c in ("name", "label", "region", "labels") if c in cols), None)
    if index is None or name is None:
        raise DaskmetaError(f"atlas labels {where}: need an 'index' and a 'name' column; "
                            f"got columns {list(frame.columns)}")
    try:
        values = frame[index].astype(int)
    except (TypeError, ValueError):
        raise DaskmetaError(f"atlas labels {where}: the {index!r} column must hold integers"
                            ) from None
    return dict(zip(values.tolist(), frame[name].astype(str).tolist()))


def _from_xml(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DaskmetaError(f"atlas labels {path}: not readable XML ({exc})") from None
    out = {}
    for label in root.iter("label"):
        try:
            # FSL atlases number labels from 0; the image holds index + 1 (0 is background).
            out[int(label.get("index")) + 1] = (label.text or "").strip()
        except (TypeError, ValueError):
            raise DaskmetaError(f"atlas labels {path}: a <label> without an integer 'index'"
                                ) from None
    if not out:
        raise DaskmetaError(f"atlas labels {path}: no <label index=...> element")
    return out


def _from_text(path: Path) -> dict:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = [ln.split(None, 1) for ln in lines]
    if pairs and all(len(p) == 2 and p[0].lstrip("-").isdigit() for p in pairs):
        return {int(p[0]): p[1].strip() for p in pairs}
    return dict(enumerate(lines))


def read_labels(labels) -> dict:
    """``{image value: region name}`` from any of the accepted forms (see :class:`Atlas`)."""
    if isinstance(labels, dict):
        try:
            return {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            raise DaskmetaError("atlas labels: a dict's keys must be integer image values"
                                ) from None
    if isinstance(labels, pd.DataFrame):
        return _from_frame(labels, "(DataFrame)")
    if isinstance(labels, str | Path):
        path = Path(labels)
        if not path.is_file():
            raise DaskmetaError(f"atlas labels {path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".xml":
            return _from_xml(path)
        if suffix in (".tsv", ".csv"):
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
            return _from_frame(frame, str(path))
        if suffix == ".txt":
            return _from_text(path)
        raise DaskmetaError(f"atlas labels {path}: unknown file type {suffix!r}; give "
                            + _LABEL_FORMS)
    if isinstance(labels, list | tuple) and all(isinstance(v, str) for v in labels):
        return dict(enumerate(labels))
    raise DaskmetaError(f"atlas labels must be {_LABEL_FORMS}; got {type(labels).__name__}")


class Atlas:
    """An atlas on a result's grid: each in-mask voxel's region value, and region names.

    Parameters
    ----------
    image : path-like or nibabel image
        Integer regions (0: none); resampled to the result's grid by nearest neighbour.
    labels : dict, list, DataFrame or path-like
        Region names by image value: a dict ``{value: name}``; a list of names (the name of
        value ``i`` at position ``i``); a DataFrame with ``index`` and ``name`` columns; a
        ``.tsv`` / ``.csv`` file with those columns; a ``.txt`` file of one name per line
        (line ``i`` names value ``i``) or of ``value name`` lines; or an FSL atlas ``.xml``
        (``<label index="i">`` names value ``i + 1``).
    space : Space
        The result's space.
    """

    def __init__(self, image, labels, space):
        import nibabel as nib
        from nilearn.image import resample_img

        try:
            img = nib.load(str(image)) if isinstance(image, str | Path) else image
            data = np.asarray(img.dataobj)
        except (OSError, nib.filebasedimages.ImageFileError, AttributeError) as exc:
            raise DaskmetaError(f"atlas image {image}: not a readable NIfTI image ({exc})"
                                ) from None
        if data.ndim != 3 or not np.allclose(data, np.round(data)):
            raise DaskmetaError(f"atlas image {image}: must be a 3-D image of integer region "
                                f"values; got shape {data.shape}")
        self.names = read_labels(labels)
        self.source = str(image) if isinstance(image, str | Path) else "image"
        img = nib.Nifti1Image(np.round(data).astype(np.int32), img.affine)
        same = img.shape == space.shape and np.allclose(img.affine, space.affine)
        if not same:
            img = resample_img(img, target_affine=space.affine, target_shape=space.shape,
                               interpolation="nearest", force_resample=True, copy_header=True)
        self.volume = np.asarray(img.dataobj).astype(np.int64)
        self.values = self.volume[space.mask]
        self.space = space
        unknown = sorted(set(np.unique(self.values).tolist()) - set(self.names) - {0})
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise DaskmetaError(f"atlas labels name no region for image values {shown} of "
                                f"{image}: the label table does not fit the image")

    def name(self, value: int) -> str:
        return "" if value == 0 else self.names.get(int(value), str(value))

    def label_table(self, table: pd.DataFrame, cluster_ids: np.ndarray) -> pd.DataFrame:
        """``table`` (a cluster table) with ``peak_region`` (the region at each peak) and
        ``regions`` (the regions covering each cluster, with the share of its voxels, largest
        first, at most three).

        ``cluster_ids`` is the in-mask vector of cluster ids of the table
        (``get_table(..., return_labels=True)``).
        """
        table = table.copy()
        if table.empty:
            table["peak_region"] = pd.Series(dtype=str)
            table["regions"] = pd.Series(dtype=str)
            return table
        ijk = self.space.mm_to_ijk(table[["peak_x", "peak_y", "peak_z"]].to_numpy(float))
        peaks = self.volume[tuple(np.round(ijk).astype(int).T)]
        table["peak_region"] = [self.name(v) for v in peaks]
        # Voxels per (cluster, region) in one pass, over the regions present (compact codes:
        # image values may be large or negative).
        inside = cluster_ids > 0
        present, codes = np.unique(self.values[inside], return_inverse=True)
        n_codes = len(present)
        counts = np.bincount(cluster_ids[inside] * n_codes + codes,
                             minlength=(int(cluster_ids.max(initial=0)) + 1) * n_codes)
        counts = counts.reshape(-1, max(n_codes, 1))
        regions = []
        for cid, size in zip(table["cluster_id"], table["n_voxels"]):
            row = counts[int(cid)] if n_codes else np.zeros(0, dtype=int)
            order = [c for c in np.argsort(row, kind="stable")[::-1]
                     if row[c] > 0 and present[c] != 0][:3]
            regions.append("; ".join(f"{self.name(present[c])} ({100 * row[c] / size:.0f}%)"
                                     for c in order))
        table["regions"] = regions
        return table
