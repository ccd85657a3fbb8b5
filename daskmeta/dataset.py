"""The in-memory Dataset: experiments, foci (MNI mm), metadata, labels and images."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from daskmeta._labels import evaluate_label_expression
from daskmeta.exceptions import DatasetError
from daskmeta.space import Space, normalize_space_name, tal2mni

__all__ = ["Dataset"]

_FORMAT = "daskmeta-dataset"
_LABEL_THRESHOLD = 0.001
_FORMAT_VERSION = 1


def _as_str_ids(values) -> np.ndarray:
    # Fast path (no Python loop per row) when the values are already all str (no missing).
    arr = np.asarray(values, dtype=object)
    if pd.api.types.infer_dtype(arr, skipna=False) == "string":
        return arr
    return np.asarray([str(v) for v in arr], dtype=object)


def _from_text(col: pd.Series, dtype: str) -> pd.Series:
    """A column read as text (missing cells NaN), in the dtype :meth:`Dataset.save` recorded.

    Parameters
    ----------
    col : pandas.Series
        The column as read with ``dtype=str``.
    dtype : str
        The recorded dtype, e.g. ``"int64"``, ``"bool"``, ``"object"``.

    Returns
    -------
    pandas.Series
        The column in ``dtype``; as read (text) when this pandas does not know ``dtype`` or
        the text does not convert to it.
    """
    if dtype == "str":  # pandas' default for text since 3.0: as read (object on pandas 2)
        return col
    try:
        target = pd.api.types.pandas_dtype(dtype)
        if pd.api.types.is_bool_dtype(target):
            values = col.map({"True": True, "False": False}).astype(object)
            if (values.isna() & col.notna()).any() or (
                    isinstance(target, np.dtype) and values.isna().any()):
                raise ValueError(f"not a {dtype} column")
            return values.astype(target)
        if isinstance(target, np.dtype) and target.kind in "iufc":
            # Python's int(), float() and complex() per cell: exact for save's "%.17g".
            return pd.Series(np.asarray(col, dtype=object).astype(target), index=col.index,
                             name=col.name)
        if pd.api.types.is_numeric_dtype(target):  # nullable Int64, Float64, ...
            return pd.to_numeric(col.astype(object), dtype_backend="numpy_nullable").astype(
                target)
        return col.astype(target)  # object, string, datetime64, category, ...
    except (TypeError, ValueError, OverflowError):
        return col


class Dataset:
    """Experiments and their foci, metadata, labels and images.

    Coordinates are held in MNI mm; foci reported in Talairach are converted on the way in
    (see :func:`Dataset.from_foci`), and each experiment keeps the space it reported.

    Parameters
    ----------
    experiments : pandas.DataFrame
        One row per experiment with columns ``id`` (unique), and optionally ``study_id``
        (defaults to ``id``), ``sample_size`` (float, NaN where unknown) and ``space``
        (the reported space: MNI, TAL or UNKNOWN; default MNI).
    foci : pandas.DataFrame
        Columns ``id``, ``x``, ``y``, ``z`` (MNI mm), one row per focus.
    labels : scipy.sparse matrix, optional
        Experiment x label weights, rows in ``experiments`` order.
    label_names : sequence of str, optional
        One name per label column.
    metadata : pandas.DataFrame, optional
        Extra per-experiment fields (title, authors, ...), with an ``id`` column.
    images : pandas.DataFrame, optional
        Per-experiment image paths (columns such as ``z``, ``beta``), with an ``id`` column.
    name : str, optional
        A short description, kept in provenance.

    Raises
    ------
    DatasetError
        On duplicate ids, foci of unknown experiments, NaN coordinates or an unknown space.
    """

    def __init__(
        self,
        experiments: pd.DataFrame,
        foci: pd.DataFrame,
        labels=None,
        label_names=None,
        metadata: pd.DataFrame | None = None,
        images: pd.DataFrame | None = None,
        name: str = "",
    ):
        exp = pd.DataFrame(experiments).copy()
        if "id" not in exp.columns:
            raise DatasetError("experiments need an 'id' column")
        exp["id"] = _as_str_ids(exp["id"])
        dup = exp["id"][exp["id"].duplicated()].unique().tolist()
        if dup:
            raise DatasetError(f"duplicate experiment ids: {', '.join(dup[:10])}")
        if "study_id" not in exp.columns:
            exp["study_id"] = exp["id"]
        exp["study_id"] = _as_str_ids(exp["study_id"])
        if "sample_size" not in exp.columns:
            exp["sample_size"] = np.nan
        exp["sample_size"] = pd.to_numeric(exp["sample_size"], errors="coerce").astype(float)
        if "space" not in exp.columns:
            exp["space"] = "MNI"
        exp["space"] = [
            normalize_space_name(s, where=f"experiment {i}") for i, s in zip(exp["id"], exp["space"])
        ]
        self.experiments = exp.reset_index(drop=True)[["id", "study_id", "sample_size", "space"]]

        foci = pd.DataFrame(foci)
        missing = {"id", "x", "y", "z"} - set(foci.columns)
        if missing:
            raise DatasetError(f"foci need columns id, x, y, z; missing {sorted(missing)}")
        foci = foci[["id", "x", "y", "z"]].copy()
        foci["id"] = _as_str_ids(foci["id"])
        for c in "xyz":
            foci[c] = pd.to_numeric(foci[c], errors="coerce").astype(float)
        bad = ~np.isfinite(foci[["x", "y", "z"]].to_numpy()).all(axis=1)
        if bad.any():
            ids = foci.loc[bad, "id"].unique().tolist()
            raise DatasetError(
                f"{int(bad.sum())} foci have NaN or non-numeric coordinates, in experiments "
                f"{', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
            )
        known = set(self.experiments["id"])
        unknown = sorted(set(foci["id"].unique()) - known)
        if unknown:
            raise DatasetError(
                f"foci refer to experiments not in the dataset: {', '.join(unknown[:10])}"
            )
        # Foci grouped by experiment, in experiment order, keeping their order within each.
        order = pd.Categorical(foci["id"], categories=self.experiments["id"], ordered=True)
        foci = foci.iloc[np.argsort(order.codes, kind="stable")].reset_index(drop=True)
        self.foci = foci

        n = len(self.experiments)
        if labels is None:
            labels = sparse.csr_matrix((n, 0), dtype=np.float32)
            label_names = []
        labels = sparse.csr_matrix(labels)
        label_names = [str(x) for x in (label_names or [])]
        if labels.shape != (n, len(label_names)):
            raise DatasetError(
                f"labels have shape {labels.shape}; expected ({n}, {len(label_names)}) "
                "(experiments x label names)"
            )
        if len(set(label_names)) != len(label_names):
            raise DatasetError("label names must be unique")
        self.labels = labels
        self.label_names = label_names

        self.metadata = self._align_frame(metadata, "metadata")
        self.images = self._align_frame(images, "images")
        self.name = name

    def _align_frame(self, frame, what):
        ids = self.experiments["id"]
        if frame is None:
            return pd.DataFrame({"id": ids.to_numpy()})
        frame = pd.DataFrame(frame).copy()
        if "id" not in frame.columns:
            raise DatasetError(f"{what} need an 'id' column")
        frame["id"] = _as_str_ids(frame["id"])
        frame = frame.drop_duplicates("id").set_index("id").reindex(ids.to_numpy())
        return frame.reset_index()

    # -- construction helpers --------------------------------------------------------------
    @classmethod
    def from_foci(cls, foci: pd.DataFrame, experiments: pd.DataFrame | None = None, **kwargs):
        """Build a Dataset from foci in their reported spaces.

        Parameters
        ----------
        foci : pandas.DataFrame
            Columns ``id``, ``x``, ``y``, ``z`` and optionally ``space`` (per focus) and
            ``sample_size``. Talairach foci are converted to MNI (:func:`daskmeta.tal2mni`);
            ``UNKNOWN`` foci are taken as MNI.
        experiments : pandas.DataFrame, optional
            Experiment table; by default one experiment per distinct focus id.
        **kwargs
            Passed to :class:`Dataset`.
        """
        foci = pd.DataFrame(foci).copy()
        if "id" not in foci.columns:
            raise DatasetError("foci need an 'id' column")
        foci["id"] = _as_str_ids(foci["id"])
        if experiments is None:
            cols = {"id": pd.unique(foci["id"])}
            exp = pd.DataFrame(cols)
            grouped = foci.groupby("id", sort=False)
            if "sample_size" in foci.columns:
                exp["sample_size"] = exp["id"].map(grouped["sample_size"].first())
            if "space" in foci.columns:
                exp["space"] = exp["id"].map(grouped["space"].first())
            experiments = exp
        for c in ("x", "y", "z"):
            if c in foci.columns:
                foci[c] = pd.to_numeric(foci[c], errors="coerce").astype(float)
        if "space" in foci.columns:
            # Normalize each distinct label once (no Python loop per focus).
            codes, uniques = pd.factorize(foci["space"], use_na_sentinel=False)
            first = [foci["id"].iloc[np.argmax(codes == k)] for k in range(len(uniques))]
            canon = np.asarray(
                [normalize_space_name(s, where=f"experiment {i}")
                 for i, s in zip(first, uniques, strict=True)],
                dtype=object,
            )
            is_tal = canon[codes] == "TAL" if len(codes) else np.zeros(0, dtype=bool)
            if is_tal.any():
                xyz = foci.loc[is_tal, ["x", "y", "z"]].to_numpy(dtype=float)
                foci.loc[is_tal, ["x", "y", "z"]] = tal2mni(xyz)
        return cls(experiments, foci, **kwargs)

    # -- basic properties ------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Experiment ids, in order."""
        return self.experiments["id"].tolist()

    @property
    def n_experiments(self) -> int:
        return len(self.experiments)

    @property
    def n_foci(self) -> int:
        return len(self.foci)

    def __len__(self) -> int:
        return self.n_experiments

    def __repr__(self) -> str:
        return (
            f"Dataset({self.n_experiments} experiments, {self.n_foci} foci, "
            f"{len(self.label_names)} labels{', ' + self.name if self.name else ''})"
        )

    def fingerprint(self) -> str:
        """sha256 over ids, sample sizes and coordinates: identifies the input in provenance."""
        import hashlib

        h = hashlib.sha256()
        h.update("\x1f".join(self.ids).encode())
        h.update(np.nan_to_num(self.experiments["sample_size"].to_numpy(float), nan=-1).tobytes())
        h.update("\x1f".join(self.foci["id"]).encode())
        h.update(np.ascontiguousarray(self.foci[["x", "y", "z"]].to_numpy(float)).tobytes())
        return h.hexdigest()

    # -- selection -------------------------------------------------------------------------
    def slice(self, ids) -> Dataset:
        """A new Dataset with the given experiments (in this Dataset's order).

        Raises
        ------
        DatasetError
            If an id is not in the Dataset.
        """
        ids = [str(i) for i in ids]
        known = set(self.ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DatasetError(f"unknown experiment ids: {', '.join(unknown[:10])}")
        keep = self.experiments["id"].isin(set(ids)).to_numpy()
        rows = np.flatnonzero(keep)
        sel = set(ids)
        return Dataset(
            self.experiments.iloc[rows],
            self.foci[self.foci["id"].isin(sel)],
            labels=self.labels[rows],
            label_names=self.label_names,
            metadata=self.metadata.iloc[rows],
            images=self.images.iloc[rows],
            name=self.name,
        )

    def merge(self, other: Dataset) -> Dataset:
        """A new Dataset with the experiments of both; labels are united by name.

        Raises
        ------
        DatasetError
            If the two share experiment ids.
        """
        common = sorted(set(self.ids) & set(other.ids))
        if common:
            raise DatasetError(f"cannot merge: both datasets hold ids {', '.join(common[:10])}")
        names = list(self.label_names) + [n for n in other.label_names if n not in self.label_names]
        pos = {n: i for i, n in enumerate(names)}

        def widen(ds):
            m = ds.labels.tocoo()
            cols = np.asarray([pos[ds.label_names[c]] for c in m.col], dtype=np.int64)
            return sparse.csr_matrix((m.data, (m.row, cols)), shape=(ds.n_experiments, len(names)))

        return Dataset(
            pd.concat([self.experiments, other.experiments], ignore_index=True),
            pd.concat([self.foci, other.foci], ignore_index=True),
            labels=sparse.vstack([widen(self), widen(other)]).tocsr(),
            label_names=names,
            metadata=pd.concat([self.metadata, other.metadata], ignore_index=True),
            images=pd.concat([self.images, other.images], ignore_index=True),
            name=" + ".join(n for n in (self.name, other.name) if n),
        )

    def label_mask(self, expr: str, label_threshold: float = _LABEL_THRESHOLD, *,
                   threshold: float | None = None) -> np.ndarray:
        """Boolean vector over experiments: which satisfy a label expression.

        See :meth:`get_studies_by_label` (``threshold`` is the deprecated name of
        ``label_threshold``).
        """
        label_threshold = _label_threshold(label_threshold, threshold, "label_mask")
        return evaluate_label_expression(expr, self.label_names, self._labels_by_column(),
                                         label_threshold)

    def _labels_by_column(self):
        """``labels`` in CSC form, converted once (label expressions read columns)."""
        cached = self.__dict__.get("_csc_labels")
        if cached is None or cached[0] is not self.labels:
            cached = (self.labels, self.labels.tocsc())
            self.__dict__["_csc_labels"] = cached
        return cached[1]

    def get_studies_by_label(self, expr: str, label_threshold: float = _LABEL_THRESHOLD, *,
                             threshold: float | None = None) -> list[str]:
        """Ids of experiments whose labels satisfy ``expr``.

        Parameters
        ----------
        expr : str
            A label name, or an expression of label names with ``&`` (and), ``|`` (or),
            ``~`` (not) and parentheses, e.g. ``"LDA50__32_pain_somatosensory_stimulation &
            ~LDA50__1_anxiety_trait_personality"``. A label holds for an experiment when its
            weight is ``>= label_threshold``.
        label_threshold : float
            Minimum weight (NiMARE's name and default, 0.001).
        threshold : float, optional
            Deprecated name of ``label_threshold`` (a DeprecationWarning).

        Raises
        ------
        DaskmetaError
            On an unknown label (with close matches) or a malformed expression.
        """
        label_threshold = _label_threshold(label_threshold, threshold, "get_studies_by_label")
        return self.experiments["id"][self.label_mask(expr, label_threshold)].tolist()

    def get_studies_by_mask(self, img, space: Space | None = None) -> list[str]:
        """Ids of experiments with at least one focus inside a mask image."""
        import nibabel as nib
        from nilearn.image import resample_to_img  # noqa: F401  (imported for a clear error)

        if not isinstance(img, nib.spatialimages.SpatialImage):
            img = nib.load(str(img))
        ref = Space(img) if space is None else space
        roi = ref.resample_mask(img) if space is not None else ref.mask[ref.mask]
        # In-mask voxels of the ROI -> full-volume boolean, then test each focus voxel.
        vol = np.zeros(ref.shape, dtype=bool)
        vol[ref.mask] = roi
        ijk = ref.mm_to_ijk(self.foci[["x", "y", "z"]].to_numpy())
        ok = ref.in_bounds(ijk)
        hit = np.zeros(len(ijk), dtype=bool)
        hit[ok] = vol[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
        found = set(self.foci["id"][hit])
        return [i for i in self.ids if i in found]

    def get_studies_by_coordinate(self, xyz, r: float = 20.0) -> list[str]:
        """Ids of experiments with a focus within ``r`` mm of any of the given coordinates."""
        from scipy.spatial import cKDTree

        xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
        tree = cKDTree(self.foci[["x", "y", "z"]].to_numpy())
        hits = set()
        for rows in tree.query_ball_point(xyz, r):
            hits.update(rows)
        found = set(self.foci["id"].to_numpy()[sorted(hits)])
        return [i for i in self.ids if i in found]

    # -- persistence (an open format: a zip of TSV, JSON and npz; no pickle) ---------------
    def save(self, path) -> Path:
        """Write the Dataset to one file (a zip of TSV tables, a JSON manifest and the
        label matrix as numpy arrays), readable without daskmeta.

        The manifest records each table column's dtype (``"dtypes"``), so :meth:`load` gives
        back text of digits as text (``"00123"``), integers as integers, and so on.
        """
        path = Path(path)
        labels = self.labels.tocsr()
        frames = {"experiments": self.experiments, "foci": self.foci,
                  "metadata": self.metadata, "images": self.images}
        dtypes = {key: {str(c): str(t) for c, t in frame.dtypes.items()}
                  for key, frame in frames.items()}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(
                "manifest.json",
                json.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "name": self.name,
                            "label_names": self.label_names, "dtypes": dtypes}, indent=1),
            )
            for key, frame in frames.items():
                # "\r\n" line ends make the writer quote any field holding "\r" or "\n".
                zf.writestr(f"{key}.tsv", frame.to_csv(sep="\t", index=False,
                                                       float_format="%.17g",
                                                       lineterminator="\r\n"))
            buf = io.BytesIO()
            np.savez(buf, data=labels.data, indices=labels.indices, indptr=labels.indptr,
                     shape=np.asarray(labels.shape))
            zf.writestr("labels.npz", buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> Dataset:
        """Read a Dataset written by :meth:`save`.

        Columns come back in the dtypes the manifest records; files written before daskmeta
        recorded them have their column types inferred from the text, as pandas does.
        """
        path = Path(path)
        try:
            zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{path}: not a daskmeta dataset file ({exc})") from exc
        with zf:
            try:
                manifest = json.loads(zf.read("manifest.json"))
            except (KeyError, ValueError) as exc:
                raise DatasetError(f"{path}: missing or invalid manifest.json") from exc
            if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
                raise DatasetError(f"{path}: not a daskmeta dataset file")
            if manifest.get("version", 0) > _FORMAT_VERSION:
                raise DatasetError(
                    f"{path}: written by a newer daskmeta (format {manifest['version']})"
                )

            dtypes = manifest.get("dtypes")  # absent from files of older daskmeta
            if dtypes is not None and not isinstance(dtypes, dict):
                raise DatasetError(f"{path}: damaged daskmeta dataset file (invalid dtypes)")

            def table(name):
                # Only empty cells are missing (save writes NaN as ""): ids such as "NA" or
                # "null", and such strings in metadata, are kept as written.
                raw = zf.read(f"{name}.tsv")
                cols = pd.read_csv(io.BytesIO(raw), sep="\t", nrows=0).columns
                na = {c: [""] for c in cols if c not in ("id", "study_id")}
                if dtypes is None:  # an older file: let pandas infer the column types
                    return pd.read_csv(io.BytesIO(raw), sep="\t",
                                       dtype={"id": str, "study_id": str},
                                       keep_default_na=False, na_values=na)
                recorded = dtypes[name]
                frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str,
                                    keep_default_na=False, na_values=na)
                for c in frame.columns:
                    if c in recorded:
                        frame[c] = _from_text(frame[c], recorded[c])
                return frame

            try:
                with zf.open("labels.npz") as fh:
                    arrs = np.load(io.BytesIO(fh.read()), allow_pickle=False)
                    labels = sparse.csr_matrix(
                        (arrs["data"], arrs["indices"], arrs["indptr"]),
                        shape=tuple(arrs["shape"]),
                    )
                tables = {k: table(k) for k in ("experiments", "foci", "metadata", "images")}
                label_names = manifest["label_names"]
            except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile,
                    zlib.error) as exc:
                raise DatasetError(f"{path}: damaged daskmeta dataset file ({exc})") from exc
            return cls(tables["experiments"], tables["foci"], labels=labels,
                       label_names=label_names, metadata=tables["metadata"],
                       images=tables["images"], name=manifest.get("name", ""))


def _label_threshold(label_threshold, threshold, method: str):
    """``label_threshold``, or the deprecated keyword ``threshold`` (with a warning)."""
    if threshold is None:
        return label_threshold
    if label_threshold != _LABEL_THRESHOLD:
        raise DatasetError(f"Dataset.{method}: give label_threshold only (threshold is its "
                           "deprecated name)")
    warnings.warn(f"Dataset.{method}(..., threshold=...) is deprecated; use label_threshold "
                  "(NiMARE's name)", DeprecationWarning, stacklevel=3)
    return threshold
