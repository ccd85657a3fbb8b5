"""Collections: a Dataset's modeled-activation matrix under one kernel, in a Zarr store.

A store holds the MA matrix as a chunked, compressed ``ma`` array (dims ``study``,
``voxel``), the mask, and its provenance in the attributes, so ``xarray.open_zarr(path,
consolidated=False)`` opens it lazily without daskmeta. The Dataset (``dataset.zip``, the open
format of :meth:`Dataset.save`) and the build's progress markers live in the sub-group
``daskmeta/``: a Zarr group, so that listing the store's root finds nothing but Zarr nodes
(zarr warns about any other file there on every open).

Building is chunk by chunk: every task fills its rows with the compiled kernel, writes its own
region, then leaves a marker file. An interrupted build (even ``kill -9``) resumes from the
markers; the ``complete`` attribute is set only once every chunk is written, and
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

from daskmeta._version import __version__
from daskmeta.cluster import active_client, compute, tree_sum
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import (
    DEFAULT_MASK_MARGIN,
    ALEKernel,
    KDAKernel,
    MKDAKernel,
)
from daskmeta.space import TAL2MNI_METHOD, Space

__all__ = ["Collection", "KERNELS"]

FORMAT = "daskmeta-collection"
FORMAT_VERSION = 1
#: Experiments per stored chunk: small, so a selection reads little it does not need.
DEFAULT_ROWS_PER_CHUNK = 8
KERNELS = {"ALEKernel": ALEKernel, "MKDAKernel": MKDAKernel, "KDAKernel": KDAKernel}
#: Sub-group of the store holding the Dataset file and the build's progress markers.
_META = "daskmeta"
_PROGRESS = f"{_META}/progress"
_DATASET_FILE = f"{_META}/dataset.zip"
# Provenance fields that must agree before a store is resumed or reused.
_IDENTITY = ("format", "kernel", "kernel_params", "mask_hash", "mask_margin",
             "dataset_fingerprint", "dtype", "rows_per_chunk", "n_experiments", "n_voxels")


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


def _write_chunk(store: str, plan, index: int, rows_per_chunk: int, dtype: str) -> int:
    """Fill and write stored chunk ``index``, then leave its marker (runs on a worker)."""
    import zarr

    start = index * rows_per_chunk
    stop = min(start + rows_per_chunk, plan.n_rows)
    block = plan.fill(start, stop).astype(dtype, copy=False)
    zarr.open_array(store, path="ma", mode="r+")[start:stop] = block
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
              rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK, sources=(), progress=False,
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
        rows_per_chunk : int
            Experiments per stored chunk.
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
        if not (isinstance(rows_per_chunk, int | np.integer) and rows_per_chunk > 0):
            raise DaskmetaError(f"rows_per_chunk must be a positive integer; got "
                                f"{rows_per_chunk!r}")
        if dataset.n_experiments == 0:
            raise DaskmetaError("cannot build a collection of an empty dataset")
        plan = kernel.plan(dataset, space, mask_margin)
        dtype = _storage_dtype(kernel, plan)
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kernel": type(kernel).__name__,
            "kernel_params": json.dumps(kernel.get_params(), sort_keys=True),
            "mask_margin": float(mask_margin),
            "dataset_fingerprint": dataset.fingerprint(),
            "dtype": dtype.name,
            "rows_per_chunk": int(rows_per_chunk),
            "n_experiments": dataset.n_experiments,
            "n_foci": int(len(plan.focus_row)),
            "n_voxels": space.n_voxels,
            "daskmeta_version": __version__,
            "tal2mni": TAL2MNI_METHOD,
            "dataset_name": dataset.name,
            "sources": json.dumps([{"file": Path(s).name, "sha256": _sha256(Path(s))}
                                   for s in sources]),
            **{k: v for k, v in space.describe().items()},
            "complete": False,
        }
        if overwrite and path.exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if path.exists() and not path.is_dir():
            raise DaskmetaError(f"{path} exists and is a file, not a daskmeta collection store")
        if (path / "zarr.json").exists():
            import zarr

            existing = dict(zarr.open_group(path, mode="r").attrs)
            if existing.get("format") != FORMAT:
                raise DaskmetaError(f"{path} is a Zarr store but not a daskmeta collection")
            diffs = [f"{k}: store has {existing.get(k)!r}, requested {attrs[k]!r}"
                     for k in _IDENTITY if not _same_identity(k, existing.get(k), attrs[k])]
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
        else:
            cls._create_atomically(path, dataset, space, attrs)
        cls._ensure_dataset_file(path, dataset)
        cls._fill(path, plan, dataset.n_experiments, int(rows_per_chunk), dtype.name, progress)
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
        rows = int(attrs["rows_per_chunk"])
        dtype = np.dtype(attrs["dtype"])
        ma = da.zeros((n, v), chunks=(rows, v), dtype=dtype)
        ds = xr.Dataset(
            {"ma": (("study", "voxel"), ma),
             "mask": (("i", "j", "k"), space.mask.astype(np.uint8))},
            coords={"study": np.asarray(dataset.ids, dtype=object), "voxel": np.arange(v)},
            attrs=attrs,
        )
        shuffle = "bitshuffle" if dtype.itemsize == 1 else "shuffle"
        encoding = {"ma": {"chunks": (rows, v), "compressors": (
            BloscCodec(cname="lz4", clevel=5, shuffle=shuffle),)}}
        # Metadata and coordinates only; chunks are written by the build's tasks.
        ds.to_zarr(path, compute=False, consolidated=False, mode="w-", encoding=encoding)
        zarr.open_group(path, mode="r+").create_group(_META, attributes={
            "description": "daskmeta's files: dataset.zip (Dataset.save) and, while a build "
                           "runs, progress/ (one marker per written chunk of ma)"})

    @staticmethod
    def _ensure_dataset_file(path: Path, dataset: Dataset) -> None:
        target = path / _DATASET_FILE
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name("dataset.zip.tmp")
            dataset.save(tmp)
            os.replace(tmp, target)

    @staticmethod
    def _fill(path: Path, plan, n_rows: int, rows_per_chunk: int, dtype: str,
              progress: bool) -> None:
        n_chunks = -(-n_rows // rows_per_chunk)
        marker_dir = path / _PROGRESS
        marker_dir.mkdir(parents=True, exist_ok=True)
        done = {int(p.stem) for p in marker_dir.glob("*.done")}
        todo = [c for c in range(n_chunks) if c not in done]
        if not todo:
            return
        plan_d = dask.delayed(plan, traverse=False)
        write = dask.delayed(_write_chunk, pure=True)
        # Keys unique per store path: two builds on one cluster must not share tasks.
        tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        tasks = [write(str(path), plan_d, c, rows_per_chunk, dtype,
                       dask_key_name=f"write-{path.name}-{tag}-{c}") for c in todo]
        client = active_client()
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

    def rows(self, ids, chunk_size: int = 64) -> da.Array:
        """The MA rows of the given experiments (float32), lazy, chunked by ``chunk_size``."""
        index = self.row_indices(ids)
        ma = self.ma.data
        with dask.config.set({"array.slicing.split_large_chunks": False}):
            sel = ma[index] if len(index) != ma.shape[0] or np.any(np.diff(index) != 1) else ma
        return sel.astype(np.float32).rechunk((chunk_size, ma.shape[1]))

    def selection_weights(self, selections: dict, threshold: float = 0.001):
        """A sparse (selection x experiment) 0/1 matrix from named label expressions or id
        lists, with the selection names."""
        names = list(selections)
        rows, cols = [], []
        for s, name in enumerate(names):
            sel = selections[name]
            if isinstance(sel, str):
                mask = self.dataset.label_mask(sel, threshold)
                idx = np.flatnonzero(mask)
            else:
                idx = self.row_indices(sel)
            rows.append(np.full(len(idx), s))
            cols.append(idx)
        rows = np.concatenate(rows) if rows else np.zeros(0, int)
        cols = np.concatenate(cols) if cols else np.zeros(0, int)
        w = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)),
                              shape=(len(names), self.n_experiments))
        return w, names

    def reduce(self, weights, func=None, chunk_size: int = 64) -> xr.DataArray:
        """``weights @ func(MA)`` for a (selection x experiment) weight matrix, in one pass.

        Parameters
        ----------
        weights : scipy.sparse matrix or ndarray
            Selection x experiment weights (rows of a selection, e.g. 0/1 membership).
        func : callable, optional
            Applied to each float32 block of MA rows before weighting (e.g.
            ``lambda b: np.log1p(-b)`` for ALE). Default: identity.
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
        used = np.flatnonzero(np.asarray((w != 0).sum(axis=0)).ravel())
        n_sel, n_vox = w.shape[0], self.space.n_voxels
        if len(used) == 0:
            return xr.DataArray(da.zeros((n_sel, n_vox)), dims=("selection", "voxel"))
        ma = self.rows(np.asarray(self.ids, dtype=object)[used], chunk_size)
        w_used = w[:, used].tocsc()
        bounds = np.concatenate([[0], np.cumsum(ma.chunks[0])])

        def block_product(block, a, b):
            values = block if func is None else func(block)
            return np.asarray(w_used[:, a:b] @ values.astype(np.float64, copy=False))

        product = dask.delayed(block_product, pure=True)
        parts = [product(blk, int(a), int(b)) for blk, a, b in
                 zip(ma.to_delayed().ravel(), bounds[:-1], bounds[1:])]
        total = da.from_delayed(tree_sum(parts), shape=(n_sel, n_vox), dtype=np.float64)
        return xr.DataArray(total, dims=("selection", "voxel"))
