"""Collections: a Dataset's modeled-activation matrix under one kernel, in a Zarr store.

A store holds the MA matrix as a compressed ``ma`` array (dims ``study``, ``voxel``) stored
as shards of many rows whose inner chunks are single rows, so a build writes one file per
shard and a selection reads exactly its rows (:mod:`daskmeta.storage`); each row's maximum
(``ma_max``) and the histogram of its non-zero values (``ma_hist``, dims ``study``,
``ma_bin``: bins of width ``1 / ma_hist_inv_step``, nearest centre, ties upward), which are
all an estimator's null needs of an experiment, so a fit reads no more than the weighted sum
needs; the mask; and the provenance in the attributes, so ``xarray.open_zarr(path,
consolidated=False)`` opens it lazily without daskmeta. The Dataset (``dataset.zip``, the open
format of :meth:`Dataset.save`) and the build's progress markers live in the sub-group
``daskmeta/``: a Zarr group, so that listing the store's root finds nothing but Zarr nodes
(zarr warns about any other file there on every open).

Building is shard by shard: every task fills its rows with the compiled kernel, writes its
own shard, then leaves a marker file. An interrupted build (even ``kill -9``) resumes from the
markers; the ``complete`` attribute is set only once every shard is written, and
:meth:`Collection.open` refuses an incomplete store. The store's metadata is created in a
temporary directory and renamed into place, so a store path never holds half its metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import sparse

from daskmeta._pass import ROWS_PER_SUM_TASK, BlockFunction, StoredRows, pass_graph, selection_rows
from daskmeta._rows import nearest_bin
from daskmeta._version import __version__
from daskmeta.cluster import compute, scheduler_client
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import (
    DEFAULT_MASK_MARGIN,
    ALEKernel,
    KDAKernel,
    MKDAKernel,
)
from daskmeta.space import TAL2MNI_METHOD, Space
from daskmeta.storage import read_rows, read_vector, write_shard

__all__ = ["Collection", "KERNELS"]

FORMAT = "daskmeta-collection"
#: 1: chunks of 8 rows (daskmeta 0.1.0); 2: shards of one-row chunks; 3: and each row's
#: maximum and value histogram (``ma_max``, ``ma_hist``). All still readable.
FORMAT_VERSION = 3
#: Experiments per shard (one file, written by one task); reads are per row whatever this is.
DEFAULT_ROWS_PER_SHARD = 64
KERNELS = {"ALEKernel": ALEKernel, "MKDAKernel": MKDAKernel, "KDAKernel": KDAKernel}
#: Sub-group of the store holding the Dataset file and the build's progress markers.
_META = "daskmeta"
_PROGRESS = f"{_META}/progress"
_DATASET_FILE = f"{_META}/dataset.zip"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_identity(key: str, stored, requested) -> bool:
    if key == "kernel_params" and isinstance(stored, str):
        # Compare values, not their spelling: r=10 and r=10.0 are the same kernel.
        try:
            return json.loads(stored) == json.loads(requested)
        except ValueError:
            return False
    return stored == requested


def _storage_dtype(kernel, plan) -> np.dtype:
    """The narrowest dtype that holds the kernel's MA values exactly."""
    if isinstance(kernel, ALEKernel):
        return np.dtype(np.float32)
    value = float(kernel.value)
    if value != int(value) or value <= 0:
        return np.dtype(np.float32)
    if isinstance(kernel, KDAKernel):
        max_count = int(np.diff(plan.row_start).max(initial=0)) * int(value)
        return np.dtype(np.uint16 if max_count <= np.iinfo(np.uint16).max else np.float32)
    return np.dtype(np.uint8 if value <= 255 else np.float32)


def _hist_width(max_value: float, inv_step: float) -> int:
    """Bins that hold values up to ``max_value`` (the grid of :func:`_rows.nearest_bin`)."""
    return int(nearest_bin(float(max_value), float(inv_step))) + 1


def _write_shard(store: str, plan, index: int, rows_per_shard: int, dtype: str,
                 hist_grid) -> int:
    """Fill and write shard ``index`` of ``ma`` (and, with ``hist_grid = (inv_step,
    width)``, its rows' maxima and value histograms), then leave its marker (runs on a
    worker)."""
    import zarr

    start = index * rows_per_shard
    stop = min(start + rows_per_shard, plan.n_rows)
    block = plan.fill(start, stop)
    if hist_grid is not None:
        row_max, hist, overflow = plan.value_histograms(block, *hist_grid)
        if overflow:
            raise DaskmetaError(f"{store}: MA values of shard {index} exceed the value "
                                "histogram's range (a kernel bound is wrong)")
        write_shard(Path(store) / "ma_hist", index, hist)
        zarr.open_array(store, path="ma_max", mode="r+")[start:stop] = row_max
    write_shard(Path(store) / "ma", index, block.astype(dtype, copy=False))
    marker = Path(store) / _PROGRESS / f"{index:08d}.done"
    fd = os.open(marker, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    return index


class Collection:
    """The MA matrix of a Dataset under one kernel, over a Zarr store.

    Use :meth:`build` to make one and :meth:`open` to read one; do not call the constructor.

    Attributes
    ----------
    path : pathlib.Path
    data : xarray.Dataset
        The store opened lazily (``ma`` over ``study`` x ``voxel``, ``mask``).
    dataset : Dataset
        Experiments, foci, labels and metadata, rows in ``ma`` order.
    space : Space
    kernel : Kernel
    mask_margin : float
    """

    def __init__(self, path: Path, data: xr.Dataset, dataset: Dataset, space: Space, kernel):
        self.path = path
        self.data = data
        self.dataset = dataset
        self.space = space
        self.kernel = kernel
        self.mask_margin = float(data.attrs["mask_margin"])
        self._row_of = {i: r for r, i in enumerate(dataset.ids)}

    # -- building --------------------------------------------------------------------------
    @classmethod
    def build(cls, dataset: Dataset, kernel, store, mask=None,
              mask_margin: float = DEFAULT_MASK_MARGIN,
              rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, sources=(), progress=False,
              overwrite: bool = False) -> Collection:
        """Build (or resume building) a collection store.

        Parameters
        ----------
        dataset : Dataset
        kernel : Kernel
            e.g. ``MKDAKernel(r=10)`` or ``ALEKernel(sample_size=20)``.
        store : path-like
            A directory (created), e.g. ``neurosynth-mkda.zarr``.
        mask : str, image or Space, optional
            Analysis mask (default: the package's MNI152 2 mm brain mask).
        mask_margin : float
            See :meth:`daskmeta.kernels.Kernel.plan`.
        rows_per_shard : int
            Experiments per shard: one file, written by one task (memory per task is about
            this many MA rows). Reads fetch single rows whatever its value. A resumed build
            keeps the store's own value.
        sources : sequence of path-like
            Input files; their names and sha256 are recorded in the provenance.
        progress : bool
            Show progress (``distributed.progress`` under a Client).
        overwrite : bool
            Delete an existing store at ``store`` first.

        Returns
        -------
        Collection

        Raises
        ------
        DaskmetaError
            If ``store`` holds a collection of another kernel, mask, margin or dataset
            (nothing is changed), or something that is not a collection.
        """
        from daskmeta.space import resolve_space

        path = Path(store)
        space = resolve_space(mask)
        if not (isinstance(rows_per_shard, int | np.integer) and rows_per_shard > 0):
            raise DaskmetaError(f"rows_per_shard must be a positive integer; got "
                                f"{rows_per_shard!r}")
        if dataset.n_experiments == 0:
            raise DaskmetaError("cannot build a collection of an empty dataset")
        identity = {
            "format": FORMAT,
            "kernel": type(kernel).__name__,
            "kernel_params": json.dumps(kernel.get_params(), sort_keys=True),
            "mask_hash": space.mask_hash,
            "mask_margin": float(mask_margin),
            "dataset_fingerprint": dataset.fingerprint(),
            "n_experiments": dataset.n_experiments,
            "n_voxels": space.n_voxels,
        }
        if overwrite and path.exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if path.exists() and not path.is_dir():
            raise DaskmetaError(f"{path} exists and is a file, not a daskmeta collection store")
        existing = None
        if (path / "zarr.json").exists():
            import zarr

            existing = dict(zarr.open_group(path, mode="r").attrs)
            if existing.get("format") != FORMAT:
                raise DaskmetaError(f"{path} is a Zarr store but not a daskmeta collection")
            diffs = [f"{k}: store has {existing.get(k)!r}, requested {v!r}"
                     for k, v in identity.items() if not _same_identity(k, existing.get(k), v)]
            if diffs:
                raise DaskmetaError(
                    f"refusing to add to {path}: it was built differently ("
                    + "; ".join(diffs) + "). Use another store path, or overwrite=True "
                    "(CLI --overwrite) to rebuild it"
                )
            if existing.get("complete"):
                return cls.open(path)
        elif path.exists() and any(path.iterdir()):
            raise DaskmetaError(f"{path} exists and is not a daskmeta collection store "
                                "(a non-empty directory without zarr.json)")
        # Planning warns about dropped foci: only once the store is known to need building.
        plan = kernel.plan(dataset, space, mask_margin)
        if existing is None:
            attrs = {
                **identity,
                "format_version": FORMAT_VERSION,
                "dtype": _storage_dtype(kernel, plan).name,
                "rows_per_shard": int(rows_per_shard),
                "ma_hist_inv_step": kernel.hist_inv_step(),
                "ma_hist_width": _hist_width(plan.max_value(), kernel.hist_inv_step()),
                "n_foci": int(len(plan.focus_row)),
                "daskmeta_version": __version__,
                "tal2mni": TAL2MNI_METHOD,
                "dataset_name": dataset.name,
                "sources": json.dumps([{"file": Path(s).name, "sha256": _sha256(Path(s))}
                                       for s in sources]),
                **{k: v for k, v in space.describe().items()},
                "complete": False,
            }
            cls._create_atomically(path, dataset, space, attrs)
        else:
            attrs = existing  # resuming: the store keeps its own layout
        cls._ensure_dataset_file(path, dataset)
        # Format 1 stores (daskmeta 0.1.0) were written in chunks of rows_per_chunk rows.
        unit = int(attrs.get("rows_per_shard") or attrs["rows_per_chunk"])
        hist_grid = ((float(attrs["ma_hist_inv_step"]), int(attrs["ma_hist_width"]))
                     if "ma_hist_width" in attrs else None)  # format 3
        cls._fill(path, plan, dataset.n_experiments, unit, attrs["dtype"], hist_grid, progress)
        import zarr

        group = zarr.open_group(path, mode="r+")
        group.attrs["complete"] = True
        shutil.rmtree(path / _PROGRESS, ignore_errors=True)
        return cls.open(path)

    @classmethod
    def _create_atomically(cls, path: Path, dataset: Dataset, space: Space,
                           attrs: dict) -> None:
        """Write the store's metadata, coordinates, mask and Dataset file next to ``path``,
        then rename the directory into place: a killed build never leaves half a store."""
        tmp = path.with_name(f".{path.name}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        cls._create(tmp, dataset, space, attrs)
        cls._ensure_dataset_file(tmp, dataset)
        if path.exists():
            path.rmdir()  # an empty directory (checked by the caller)
        os.rename(tmp, path)

    @staticmethod
    def _create(path: Path, dataset: Dataset, space: Space, attrs: dict) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        n, v = dataset.n_experiments, space.n_voxels
        rows = int(attrs["rows_per_shard"])
        dtype = np.dtype(attrs["dtype"])
        ma = da.zeros((n, v), chunks=(rows, v), dtype=dtype)
        width = int(attrs["ma_hist_width"])
        ds = xr.Dataset(
            {"ma": (("study", "voxel"), ma),
             "ma_max": (("study",), da.zeros(n, chunks=rows, dtype=np.float32)),
             "ma_hist": (("study", "ma_bin"), da.zeros((n, width), chunks=(rows, width),
                                                       dtype=np.int32)),
             "mask": (("i", "j", "k"), space.mask.astype(np.uint8))},
            coords={"study": np.asarray(dataset.ids, dtype=object), "voxel": np.arange(v)},
            attrs=attrs,
        )
        shuffle = "bitshuffle" if dtype.itemsize == 1 else "shuffle"
        encoding = {"ma": {"chunks": (1, v), "shards": (rows, v), "compressors": (
            BloscCodec(cname="lz4", clevel=5, shuffle=shuffle),)},
            "ma_hist": {"chunks": (1, width), "shards": (rows, width), "compressors": (
                BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)},
            "ma_max": {"chunks": (rows,)}}
        # Metadata and coordinates only; shards are written by the build's tasks.
        ds.to_zarr(path, compute=False, consolidated=False, mode="w-", encoding=encoding)
        zarr.open_group(path, mode="r+").create_group(_META, attributes={
            "description": "daskmeta's files: dataset.zip (Dataset.save) and, while a build "
                           "runs, progress/ (one marker per written shard of ma)"})

    @staticmethod
    def _ensure_dataset_file(path: Path, dataset: Dataset) -> None:
        target = path / _DATASET_FILE
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name("dataset.zip.tmp")
            dataset.save(tmp)
            os.replace(tmp, target)

    @staticmethod
    def _fill(path: Path, plan, n_rows: int, rows_per_unit: int, dtype: str, hist_grid,
              progress: bool) -> None:
        n_chunks = -(-n_rows // rows_per_unit)
        marker_dir = path / _PROGRESS
        marker_dir.mkdir(parents=True, exist_ok=True)
        done = {int(p.stem) for p in marker_dir.glob("*.done")}
        todo = [c for c in range(n_chunks) if c not in done]
        # Shards half-written by a killed build (never renamed into place).
        for array in ("ma", "ma_hist"):
            for tmp in (path / array).rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if not todo:
            return
        plan_d = dask.delayed(plan, traverse=False)
        write = dask.delayed(_write_shard, pure=True)
        # Keys unique per store path: two builds on one cluster must not share tasks.
        tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        tasks = [write(str(path), plan_d, c, rows_per_unit, dtype, hist_grid,
                       dask_key_name=f"write-{path.name}-{tag}-{c}") for c in todo]
        client = scheduler_client()
        if client is not None and progress:
            from distributed import progress as show_progress

            futures = client.compute(tasks)
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for results
                show_progress(futures)
            client.gather(futures)
        elif client is None and progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0, dt=0.5, out=sys.stderr):
                compute(*tasks)
        else:
            compute(*tasks)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, store, allow_incomplete: bool = False) -> Collection:
        """Open a collection store lazily.

        Raises
        ------
        DaskmetaError
            If the path is not a daskmeta collection, or the store is incomplete (an
            interrupted build: run the same build again to finish it).
        """
        path = Path(store)
        if not (path / "zarr.json").exists():
            raise DaskmetaError(f"{path} is not a daskmeta collection store (no zarr.json)")
        data = xr.open_zarr(path, consolidated=False)
        attrs = data.attrs
        if "ma" in data and "rows_per_shard" in attrs:
            # One dask chunk per shard, not per one-row inner chunk.
            data = data.chunk({"study": int(attrs["rows_per_shard"])})
        if attrs.get("format") != FORMAT:
            raise DaskmetaError(f"{path} is a Zarr store but not a daskmeta collection")
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise DaskmetaError(f"{path} was written by a newer daskmeta")
        if not attrs.get("complete") and not allow_incomplete:
            raise DaskmetaError(
                f"{path} is an incomplete collection (its build was interrupted); run the "
                "same build again (Collection.build or `daskmeta ingest`) to finish it"
            )
        dataset_file = path / _DATASET_FILE
        if not dataset_file.exists() and (path / "dataset.zip").exists():
            dataset_file = path / "dataset.zip"  # stores of daskmeta 0.1.0 before the sub-group
        dataset = Dataset.load(dataset_file)
        import nibabel as nib

        mask = np.asarray(data["mask"].values, dtype=np.uint8)
        space = Space(nib.Nifti1Image(mask, np.asarray(attrs["affine"], dtype=float)))
        space.source = attrs.get("mask_source", "collection")
        if space.mask_hash != attrs["mask_hash"]:
            raise DaskmetaError(f"{path}: the stored mask does not match its recorded hash")
        kernel = KERNELS[attrs["kernel"]](**json.loads(attrs["kernel_params"]))
        return cls(path, data, dataset, space, kernel)

    # -- access ----------------------------------------------------------------------------
    @property
    def ma(self) -> xr.DataArray:
        """The MA matrix (``study`` x ``voxel``), lazy, in its stored dtype."""
        return self.data["ma"]

    @property
    def attrs(self) -> dict:
        """Provenance: kernel and parameters, mask hash, sources, package version, ..."""
        return dict(self.data.attrs)

    @property
    def ids(self) -> list[str]:
        return self.dataset.ids

    @property
    def n_experiments(self) -> int:
        return self.dataset.n_experiments

    def __repr__(self) -> str:
        return (f"Collection({self.path}, {self.n_experiments} experiments x "
                f"{self.space.n_voxels} voxels, {self.kernel!r})")

    def row_indices(self, ids) -> np.ndarray:
        """Row positions of experiment ids in the store."""
        try:
            return np.fromiter((self._row_of[str(i)] for i in ids), dtype=np.int64)
        except KeyError as exc:
            raise DaskmetaError(f"experiment {exc} is not in the collection {self.path}") from None

    def content_token(self) -> str:
        """A token naming the store's contents (kernel, dataset, build time), not only its
        path, for the keys of tasks that read it."""
        attrs = self.attrs
        return dask.base.tokenize(str(self.path), attrs["kernel"], attrs["kernel_params"],
                                  attrs["mask_hash"], attrs["dataset_fingerprint"],
                                  (self.path / "ma" / "zarr.json").stat().st_mtime_ns)

    def rows(self, ids, chunk_size: int = 64, dtype=np.float32) -> da.Array:
        """The MA rows of the given experiments, lazy, in blocks of ``chunk_size`` rows.

        Each block is one task that reads exactly its rows from the store.

        Parameters
        ----------
        ids : sequence of str
            Experiment ids, in the order wanted.
        chunk_size : int
            Rows per block.
        dtype : dtype or None
            Dtype of the blocks (default float32); ``None`` keeps the stored one (``uint8``
            for MKDA, for instance), which saves memory and time in reductions.
        """
        index = self.row_indices(ids)
        n_vox = self.space.n_voxels
        stored = np.dtype(self.attrs["dtype"])
        array_path = str(self.path / "ma")
        stamp = self.content_token()
        read = dask.delayed(read_rows, pure=True)
        blocks = []
        for a in range(0, len(index), chunk_size):
            part = index[a:a + chunk_size]
            key = f"read-rows-{dask.base.tokenize(array_path, stamp, part)}"
            blocks.append(da.from_delayed(read(array_path, part, dask_key_name=key),
                                          shape=(len(part), n_vox), dtype=stored))
        if not blocks:
            out = da.zeros((0, n_vox), dtype=stored)
        else:
            out = blocks[0] if len(blocks) == 1 else da.concatenate(blocks, axis=0)
        return out if dtype is None else out.astype(dtype)

    def value_histograms(self, rows, inv_step: float):
        """Stored value histograms of rows (format 3 stores), or None.

        Parameters
        ----------
        rows : sequence of int
            Row positions (:meth:`row_indices`).
        inv_step : float
            The grid wanted; None is returned if the store's differs (or it has none).

        Returns
        -------
        (n, n_bins) int32 ndarray or None
            ``hist[r, b]`` counts the non-zero MA values of row ``r`` whose nearest bin
            centre (ties upward) is ``b / inv_step``.
        """
        if "ma_hist" not in self.data or self.attrs.get("ma_hist_inv_step") != inv_step:
            return None
        return read_rows(self.path / "ma_hist", np.asarray(rows, dtype=np.int64))

    def row_maxima(self, rows) -> np.ndarray:
        """Stored maximum MA value of rows (format 3 stores; read once, then cached)."""
        if "ma_max" not in self.data:
            raise DaskmetaError(f"{self.path} stores no row maxima (a store of an earlier "
                                "format)")
        if "_row_max" not in self.__dict__:
            self._row_max = read_vector(self.path / "ma_max")
        return self._row_max[np.asarray(rows, dtype=np.int64)]

    def selection_weights(self, selections: dict, label_threshold: float = 0.001):
        """A sparse (selection x experiment) 0/1 matrix from named label expressions or id
        lists, with the selection names.

        The estimators' selection rule (:func:`daskmeta._pass.selection_rows`): experiments
        without foci are left out, and a selection that matches nothing is an error naming
        it.
        """
        from daskmeta._pass import has_foci
        from daskmeta.exceptions import DatasetError

        names = list(selections)
        foci = has_foci(self.dataset)
        rows, cols = [], []
        for s, name in enumerate(names):
            try:
                idx = selection_rows(self.dataset, selections[name], label_threshold, foci)
            except DatasetError as exc:
                raise DatasetError(f"selection {name!r}: {exc}") from None
            rows.append(np.full(len(idx), s))
            cols.append(idx)
        rows = np.concatenate(rows) if rows else np.zeros(0, int)
        cols = np.concatenate(cols) if cols else np.zeros(0, int)
        w = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)),
                              shape=(len(names), self.n_experiments))
        return w, names

    def reduce(self, weights, func=None, chunk_size: int = 64) -> xr.DataArray:
        """``weights @ func(MA)`` for a (selection x experiment) weight matrix, in one pass.

        Tasks of :data:`ROWS_PER_SUM_TASK` rows read ``chunk_size`` rows at a time and add
        them, in place, into one float64 sum per task; only the rows some selection weights
        are read.

        Parameters
        ----------
        weights : scipy.sparse matrix or ndarray
            Selection x experiment weights (rows of a selection, e.g. 0/1 membership).
        func : callable, optional
            Applied to each float32 block of MA rows before weighting (e.g.
            ``lambda b: np.log1p(-b)`` for ALE). Default: identity (integer stores are then
            summed without conversion).
        chunk_size : int
            Experiments per block.

        Returns
        -------
        xarray.DataArray
            Lazy ``(selection, voxel)`` float64 array.
        """
        w = sparse.csr_matrix(weights, dtype=np.float64)
        if w.shape[1] != self.n_experiments:
            raise DaskmetaError(f"weights have {w.shape[1]} columns; the collection has "
                                f"{self.n_experiments} experiments")
        if not (isinstance(chunk_size, int | np.integer) and chunk_size > 0):
            raise DaskmetaError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        used = np.flatnonzero(np.asarray((w != 0).sum(axis=0)).ravel())
        n_sel, n_vox = w.shape[0], self.space.n_voxels
        if len(used) == 0:
            return xr.DataArray(da.zeros((n_sel, n_vox)), dims=("selection", "voxel"))
        total, _ = pass_graph(StoredRows(self, chunk_size), used, w[:, used],
                              BlockFunction(func), np.float64, with_summaries=False,
                              rows_per_task=max(ROWS_PER_SUM_TASK, chunk_size),
                              name="reduce")
        total = da.from_delayed(total, shape=(n_sel, n_vox), dtype=np.float64)
        return xr.DataArray(total, dims=("selection", "voxel"))
