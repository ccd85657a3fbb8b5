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

A store proves its integrity (:mod:`daskmeta._integrity`): the build records what it wrote
in a manifest (every file's size and checksum, every stored row's checksum, the attributes,
a random ``generation`` token), which opening checks cheaply (attributes, that every file is
there with its size, the metadata and Dataset files' checksums) and reading checks row by
row; :func:`verify` checks everything. A build holds a lock next to the store, so a second
build of the same path fails at once, and a reader whose store was rebuilt under it gets
"the store changed since it was opened" instead of rows of the new build. Stores of formats
1-3 (no manifest) open and fit with a :class:`DaskmetaWarning` that they cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import sparse

from daskmeta import _fs, _integrity
from daskmeta._build import (
    CREATING,
    create_atomically,
    ensure_dataset_file,
    fill,
    hist_width,
    storage_dtype,
    write_manifest,
)
from daskmeta._pass import ROWS_PER_SUM_TASK, BlockFunction, StoredRows, pass_graph, selection_rows
from daskmeta._verify import (
    DATASET_FILE,
    FORMAT,
    META,
    PROGRESS,
    load_dataset,
    open_manifest,
    open_zarr,
    read_root,
    verifiable,
    verify,
)
from daskmeta._version import __version__
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import (
    DEFAULT_MASK_MARGIN,
    ALEKernel,
    KDAKernel,
    MKDAKernel,
)
from daskmeta.space import TAL2MNI_METHOD, Space
from daskmeta.storage import read_rows, read_vector

__all__ = ["Collection", "KERNELS", "verify"]

#: 1: chunks of 8 rows (daskmeta 0.1.0); 2: shards of one-row chunks; 3: and each row's
#: maximum and value histogram (``ma_max``, ``ma_hist``); 4: and a manifest and generation
#: token (:mod:`daskmeta._integrity`). All still readable; 1-3 cannot be verified.
FORMAT_VERSION = 4
#: Experiments per shard (one file, written by one task); reads are per row whatever this is.
DEFAULT_ROWS_PER_SHARD = 64
KERNELS = {"ALEKernel": ALEKernel, "MKDAKernel": MKDAKernel, "KDAKernel": KDAKernel}
_META, _PROGRESS, _DATASET_FILE = META, PROGRESS, DATASET_FILE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _root_identity(path):
    """Which ``zarr.json`` file the store's root is (its inode, or its object's ETag)."""
    stamp = _fs.stamp(path / "zarr.json")
    return None if stamp is None else stamp[0]


def _same_identity(key: str, stored, requested) -> bool:
    if key == "kernel_params" and isinstance(stored, str):
        # Compare values, not their spelling: r=10 and r=10.0 are the same kernel.
        try:
            return json.loads(stored) == json.loads(requested)
        except ValueError:
            return False
    return stored == requested


def _complete_as_requested(path: Path, identity: dict) -> bool:
    """Whether ``path`` holds a complete collection of the requested identity."""
    try:
        existing = read_root(path) if (path / "zarr.json").is_file() else None
    except DaskmetaError:
        return False  # the locked build says what is wrong
    return bool(existing and existing.get("format") == FORMAT and existing.get("complete")
                and all(_same_identity(k, existing.get(k), v) for k, v in identity.items()))


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
        self.generation = data.attrs.get("generation")
        self._root_ino = _root_identity(path)
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
        store : path-like or str
            A directory (created), e.g. ``neurosynth-mkda.zarr``, or an fsspec URL such as
            ``s3://bucket/neurosynth-mkda.zarr`` (the ``s3`` extra; the ``daskmeta.s3``
            settings give its endpoint and credentials).
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
            (nothing is changed), or something that is not a collection; or if another
            build of ``store`` is running (it holds the build lock, ``.NAME.lock`` next to
            the store: see :mod:`daskmeta._integrity`).
        """
        from daskmeta.space import resolve_space

        path = _fs.as_location(store)
        if isinstance(path, _fs.RemotePath) and "/" not in path.path:
            raise DaskmetaError(f"{path}: a store needs a name inside the bucket, e.g. "
                                f"{path}/neurosynth-mkda.zarr")
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
        if not overwrite and _complete_as_requested(path, identity):
            return cls.open(path)  # nothing to write: no lock (the store may be read-only)
        with _integrity.build_lock(path) as still_held:
            return cls._build_locked(path, dataset, kernel, space, identity, rows_per_shard,
                                     sources, progress, overwrite, still_held)

    @classmethod
    def _build_locked(cls, path: Path, dataset: Dataset, kernel, space: Space, identity: dict,
                      rows_per_shard: int, sources, progress: bool,
                      overwrite: bool, still_held=lambda: None) -> Collection:
        """:meth:`build`, holding the store's build lock."""
        remote = _fs.is_remote(path)
        if remote and not (path / "zarr.json").exists() and (path / CREATING).exists():
            _fs.rmtree(path)  # a creation that was killed before its zarr.json
        if overwrite and remote:
            _fs.rmtree(path)
        elif overwrite and path.exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if path.exists() and not path.is_dir() and not remote:
            raise DaskmetaError(f"{path} exists and is a file, not a daskmeta collection store")
        if remote and path.is_file():
            raise DaskmetaError(f"{path} is an object, not a daskmeta collection store")
        existing = read_root(path) if (path / "zarr.json").exists() else None
        if existing is not None:
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
        plan = kernel.plan(dataset, space, identity["mask_margin"])
        if existing is None:
            attrs = {
                **identity,
                "format_version": FORMAT_VERSION,
                "generation": secrets.token_hex(8),
                "dtype": storage_dtype(kernel, plan).name,
                "rows_per_shard": int(rows_per_shard),
                "ma_hist_inv_step": kernel.hist_inv_step(),
                "ma_hist_width": hist_width(plan.max_value(), kernel.hist_inv_step()),
                "n_foci": int(len(plan.focus_row)),
                "daskmeta_version": __version__,
                "tal2mni": TAL2MNI_METHOD,
                "dataset_name": dataset.name,
                "sources": json.dumps([{"file": Path(s).name, "sha256": _sha256(Path(s))}
                                       for s in sources]),
                **{k: v for k, v in space.describe().items()},
                "complete": False,
            }
            create_atomically(path, dataset, space, attrs)
        else:
            attrs = existing  # resuming: the store keeps its own layout
            # Written again from the Dataset in hand (its fingerprint is the store's).
            ensure_dataset_file(path, dataset, replace=True)
        # Format 1 stores (daskmeta 0.1.0) were written in chunks of rows_per_chunk rows.
        unit = int(attrs.get("rows_per_shard") or attrs["rows_per_chunk"])
        hist_grid = ((float(attrs["ma_hist_inv_step"]), int(attrs["ma_hist_width"]))
                     if "ma_hist_width" in attrs else None)  # format 3
        generation = attrs.get("generation")
        fill(path, plan, dataset.n_experiments, unit, attrs["dtype"], hist_grid, progress,
             generation)
        still_held()  # a lost lease: another build finishes the store
        if verifiable(attrs):
            write_manifest(path, dataset.n_experiments, unit, generation)
        import zarr

        still_held()
        group = zarr.open_group(_fs.zarr_store(path), mode="r+")
        group.attrs["complete"] = True
        _fs.rmtree(path / _PROGRESS)
        return cls.open(path)


    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, store, allow_incomplete: bool = False) -> Collection:
        """Open a collection store lazily, checking that it is what its build wrote.

        The checks are cheap (no shard is read): the attributes, generation and every file's
        presence and size against the manifest, the metadata and Dataset files' checksums,
        the mask's hash. Each row read later (fits, :meth:`rows`) is checked against its
        checksum; :meth:`verify` checks everything.

        Raises
        ------
        DaskmetaError
            If the path is not a daskmeta collection, the store is incomplete (an
            interrupted build: run the same build again to finish it), or it is not what its
            build wrote (a file missing, truncated or replaced, an attribute edited, ...).

        Warns
        -----
        DaskmetaWarning
            For a store of format 1-3, which has no manifest: it cannot be verified.
        """
        path = _fs.as_location(store)
        attrs = read_root(path)
        if attrs.get("format") != FORMAT:
            raise DaskmetaError(f"{path} is a Zarr store but not a daskmeta collection")
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise DaskmetaError(f"{path} was written by a newer daskmeta")
        complete = bool(attrs.get("complete"))
        if not complete and not allow_incomplete:
            raise DaskmetaError(
                f"{path} is an incomplete collection (its build was interrupted, or is still "
                "running); run the same build again (Collection.build or `daskmeta ingest`) "
                "to finish it"
            )
        manifest = None
        if complete and verifiable(attrs):
            manifest = open_manifest(path, attrs)
        elif complete:
            warnings.warn(f"{path}: a collection of format {attrs.get('format_version', 1)} "
                          "has no manifest, so its shards, Dataset file and attributes cannot "
                          "be verified; rebuild it (`daskmeta ingest --overwrite`) to make it "
                          "verifiable", DaskmetaWarning, stacklevel=2)
        data = open_zarr(path)
        if dict(data.attrs) != attrs:  # rewritten since read_root: what was checked is gone
            raise _integrity.store_changed(path)
        if "ma" in data and "rows_per_shard" in attrs:
            # One dask chunk per shard, not per one-row inner chunk.
            data = data.chunk({"study": int(attrs["rows_per_shard"])})
        dataset = load_dataset(path, attrs, check=manifest is None and complete)
        import nibabel as nib

        try:
            mask = np.asarray(data["mask"].values, dtype=np.uint8)
        except Exception as exc:  # zarr's errors reading the mask's chunk
            raise DaskmetaError(f"{path / 'mask'}: cannot read the stored mask "
                                f"({type(exc).__name__}: {exc})") from None
        space = Space(nib.Nifti1Image(mask, np.asarray(attrs["affine"], dtype=float)))
        space.source = attrs.get("mask_source", "collection")
        if space.mask_hash != attrs["mask_hash"]:
            raise DaskmetaError(f"{path}: the stored mask does not match its recorded hash")
        kernel = KERNELS[attrs["kernel"]](**json.loads(attrs["kernel_params"]))
        collection = cls(path, data, dataset, space, kernel)
        collection.generation = None if manifest is None else manifest.generation
        if manifest is not None:
            _integrity.pin(path, manifest.generation)
        return collection

    def _check_current(self) -> None:
        """Raise if the store is no longer the build this Collection opened: another
        manifest, or (without one) another ``zarr.json`` file."""
        if self.generation is not None:
            manifest = _integrity.current(self.path)
            if manifest is None or manifest.generation != self.generation:
                raise _integrity.store_changed(self.path)
            return
        try:
            same = _root_identity(self.path) == self._root_ino
        except OSError:
            same = False
        if not same:
            raise _integrity.store_changed(self.path)

    def verify(self) -> list[str]:
        """Check the whole store (:func:`verify`), and that it is still the build opened.

        Returns
        -------
        list of str
            One line per problem; empty if the store is sound.
        """
        try:
            self._check_current()
        except DaskmetaError as exc:
            return [str(exc)]
        return verify(self.path)

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
        """A token naming the store's contents (kernel, dataset, build), not only its path,
        for the keys of tasks that read it.

        Raises
        ------
        DaskmetaError
            If the store changed since it was opened (every fit from a store asks for this
            token first).
        """
        self._check_current()
        attrs = self.attrs
        try:
            stamp = _fs.stamp(self.path / "ma" / "zarr.json")
        except OSError:
            stamp = None
        if stamp is None:
            raise _integrity.store_changed(self.path) from None
        return dask.base.tokenize(str(self.path), attrs["kernel"], attrs["kernel_params"],
                                  attrs["mask_hash"], attrs["dataset_fingerprint"],
                                  self.generation, stamp)

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
        array_path = _fs.portable(self.path / "ma")
        stamp = self.content_token()
        read = dask.delayed(read_rows, pure=True)
        blocks = []
        for a in range(0, len(index), chunk_size):
            part = index[a:a + chunk_size]
            key = f"read-rows-{dask.base.tokenize(array_path, stamp, part)}"
            blocks.append(da.from_delayed(read(array_path, part, generation=self.generation,
                                               dask_key_name=key),
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
        self._check_current()
        return read_rows(self.path / "ma_hist", np.asarray(rows, dtype=np.int64),
                         generation=self.generation)

    def row_maxima(self, rows) -> np.ndarray:
        """Stored maximum MA value of rows (format 3 stores; read once, then cached)."""
        if "ma_max" not in self.data:
            raise DaskmetaError(f"{self.path} stores no row maxima (a store of an earlier "
                                "format)")
        self._check_current()
        if "_row_max" not in self.__dict__:
            self._row_max = read_vector(self.path / "ma_max", generation=self.generation)
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
