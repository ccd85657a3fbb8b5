"""Shared machinery of coordinate-based estimators.

Every estimator is a reduction over the study axis: for a selection of experiments with
weights ``w`` it needs ``w @ f(MA)`` (a voxel vector; ``f`` is ``log1p(-MA)`` for ALE, the
identity for (M)KDA) and a few small per-experiment summaries for its null (maxima, value
histograms, coverage). Subclasses define those three pieces:

- :meth:`_block_values`: ``f`` of a block of MA rows (float32, or a store's own dtype),
- :meth:`_row_summaries`: the per-experiment summaries of a block,
- :meth:`_null` and :meth:`_stat`: the null histogram of one selection from its summaries,
  and its statistic from its weighted sum (:meth:`_finalize` makes the maps of both).

:meth:`fit` (one selection) and :meth:`fit_many` (many, from a Collection, in one pass per
group of selections) share them, so one meta-analysis and a thousand give the same numbers:
to the last bit for (M)KDA counts, and up to float64 rounding of the order of additions for
ALE and weighted sums (``fit_many`` adds 1024 rows per task before its tasks are summed in a
tree, ``fit`` adds ``chunk_size`` rows per task; fewer partial sums make a pass over a whole
database several times faster).
"""

from __future__ import annotations

import copy
import operator
import os

import dask
import dask.array as da
import numpy as np
from scipy import sparse

from daskmeta._rows import add_rows_by_selection
from daskmeta._stats import nullhist_maps
from daskmeta._version import __version__
from daskmeta.cluster import compute, tree_sum
from daskmeta.collection import ROWS_PER_SUM_TASK, sum_stored_rows
from daskmeta.estimators._reductions import weighted_row_sum
from daskmeta.exceptions import DaskmetaError, DatasetError, NotFittedError
from daskmeta.kernels import DEFAULT_CHUNK_EXPERIMENTS, DEFAULT_MASK_MARGIN, plan_to_dask
from daskmeta.space import TAL2MNI_METHOD, resolve_space
from daskmeta.storage import read_rows, scratch_rows

__all__ = ["CBMAEstimator", "resolve_space"]

#: Selections whose maps one :meth:`CBMAEstimator.fit_many` task computes (and writes).
FIT_MANY_SELECTIONS_PER_TASK = 16
#: Default bytes the sums of one :meth:`CBMAEstimator.fit_many` pass may take (sets the group
#: size); set ``dask.config`` key ``daskmeta.fit-many.memory`` (e.g. ``"4GB"``) to change it.
FIT_MANY_MEMORY = 2_000_000_000
_MANY_DTYPES = {"stat": np.float64, "p": np.float64, "z": np.float64, "logp": np.float32}


def _config_bytes(key: str, default: int) -> int:
    """A byte count from ``dask.config`` (a number or a string such as ``"4GB"``)."""
    value = dask.config.get(key, default)
    try:
        return int(dask.utils.parse_bytes(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DaskmetaError(f"dask config {key}={value!r} is not a byte count (e.g. "
                            "'4GB')") from None


def _reduce_block(estimator, weights, block, a: int, b: int, with_summaries: bool):
    """``weights[:, a:b] @ f(block)`` and, if asked, the block's per-row summaries (one
    task)."""
    w = weights[:, a:b]
    if w.shape[0] == 1:
        w = w.toarray().ravel()
        if with_summaries:
            total, summaries = estimator._reduce_rows(block, w)
        else:
            total, summaries = estimator._row_sums(block, w), []
        return total[None], summaries
    w = sparse.csc_matrix(w)
    total = np.zeros((w.shape[0], block.shape[1]))
    add_rows_by_selection(estimator._block_values(block), w.indptr, w.indices,
                          w.data.astype(np.float64, copy=False), total)
    return total, estimator._row_summaries(block) if with_summaries else []


def _reduce_stored_block(estimator, weights, array_path: str, n_cols: int, stored_dtype,
                         rows, a: int, with_summaries: bool):
    """:func:`_reduce_block` of rows read from a store into the thread's scratch block (one
    task)."""
    block = read_rows(array_path, rows, out=scratch_rows(len(rows), n_cols, stored_dtype))
    return _reduce_block(estimator, weights, block, a, a + len(rows), with_summaries)


def _reduce_stored_rows(estimator, weights, array_path: str, n_cols: int, stored_dtype,
                        rows, a: int, chunk_size: int, dtype, with_summaries: bool):
    """:func:`~daskmeta.collection.sum_stored_rows` of ``f(MA)`` in ``dtype`` and, if asked,
    the rows' summaries (one task)."""
    return sum_stored_rows(array_path, n_cols, stored_dtype, rows, weights, a, chunk_size,
                           dtype, estimator._block_values,
                           estimator._row_summaries if with_summaries else None)


def _concat_lists(lists):
    return [item for part in lists for item in part]


def _finalize_selections(estimator, sums, summaries, jobs, n_voxels: int, target):
    """Maps of a few selections from their sums (one task): ``jobs`` holds, per selection,
    the positions of its rows among the pass's rows, its experiments and foci counts. With
    ``target = (store, first index)`` the maps are written there and not returned."""
    estimator = copy.copy(estimator)  # _prepare sets per-selection state
    maps_of = {k: [] for k in _MANY_DTYPES}
    for s, (positions, experiments, n_foci) in enumerate(jobs):
        estimator._prepare(experiments, n_foci)
        maps, _ = estimator._finalize(sums[s].astype(np.float64),
                                      [summaries[p] for p in positions], n_voxels)
        for k, dtype in _MANY_DTYPES.items():
            maps_of[k].append(np.asarray(maps[k], dtype=dtype))
    stacked = {k: np.vstack(v) for k, v in maps_of.items()}
    if target is None:
        return stacked
    import zarr

    store, start = target
    for k, values in stacked.items():
        zarr.open_array(store, path=k, mode="r+")[start:start + len(values)] = values
    return None


class CBMAEstimator:
    """Base class of coordinate-based estimators (scikit-learn conventions).

    ``__init__`` only stores parameters; :meth:`fit` validates them, computes, and returns a
    :class:`~daskmeta.MetaResult`. Fitted state ends in ``_``.
    """

    _kernel_cls: type = None  # set by subclasses
    _null_methods = ("approximate",)
    _needs_row_max = False  # whether _summaries_from_hist reads the rows' maxima
    _param_names = ("null_method", "mask", "mask_margin", "chunk_size")

    def __init__(self, kernel_transformer=None, null_method="approximate", mask=None,
                 mask_margin=DEFAULT_MASK_MARGIN, chunk_size=DEFAULT_CHUNK_EXPERIMENTS,
                 **kwargs):
        self.kernel_transformer = kernel_transformer
        self.null_method = null_method
        self.mask = mask
        self.mask_margin = mask_margin
        self.chunk_size = chunk_size
        self.kernel_params = kwargs

    # -- parameters ------------------------------------------------------------------------
    def get_params(self) -> dict:
        """Parameters, with the kernel's as ``kernel__*`` (NiMARE's convention)."""
        params = {k: getattr(self, k) for k in self._param_names}
        params.update({f"kernel__{k}": v for k, v in self._make_kernel().get_params().items()})
        return params

    def _make_kernel(self, default=None):
        bad = [k for k in self.kernel_params if not k.startswith("kernel__")]
        if bad:
            raise DaskmetaError(
                f"{type(self).__name__} got unexpected parameters {bad}; kernel parameters are "
                "given as kernel__<name> (e.g. kernel__fwhm=10)"
            )
        kernel = self.kernel_transformer
        if kernel is None:
            kernel = copy.deepcopy(default) if default is not None else self._kernel_cls()
        elif isinstance(kernel, type):
            kernel = kernel()
        else:
            kernel = copy.deepcopy(kernel)
        kernel.set_params(**{k[len("kernel__"):]: v for k, v in self.kernel_params.items()})
        return kernel

    def _validate_params(self):
        if self.null_method not in self._null_methods:
            raise DaskmetaError(
                f"{type(self).__name__}: null_method={self.null_method!r} is not supported; "
                f"allowed: {', '.join(self._null_methods)} (Monte Carlo FWE correction is "
                "daskmeta.correct.FWECorrector(method='montecarlo'))"
            )
        if not (isinstance(self.chunk_size, int | np.integer) and self.chunk_size > 0):
            raise DaskmetaError(f"chunk_size must be a positive integer; got {self.chunk_size!r}")
        if not self.mask_margin >= 0:
            raise DaskmetaError(f"mask_margin must be >= 0 mm; got {self.mask_margin!r}")

    def _check_fitted(self):
        if not hasattr(self, "plan_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(dataset) first"
            )

    # -- inputs: a Dataset, or a Collection ------------------------------------------------
    def _source(self, data):
        """(dataset, space, kernel, collection or None) of the input, checked for agreement."""
        from daskmeta.collection import Collection
        from daskmeta.dataset import Dataset

        if isinstance(data, Dataset):
            return data, resolve_space(self.mask), self._make_kernel(), None
        if isinstance(data, Collection):
            if self.kernel_transformer is None and type(data.kernel) is not self._kernel_cls:
                # Without this, the collection's kernel would stand in for the estimator's
                # own (MKDADensity on ALE maps, KDA on binary spheres) and give wrong maps.
                raise DaskmetaError(
                    f"the collection {data.path} holds MA maps of {data.kernel!r}; "
                    f"{type(self).__name__} needs {self._kernel_cls.__name__} maps (build a "
                    f"collection with {self._kernel_cls.__name__}, or pass kernel_transformer= "
                    "explicitly)"
                )
            kernel = self._make_kernel(default=data.kernel)
            if (type(kernel) is not type(data.kernel)
                    or kernel.get_params() != data.kernel.get_params()):
                raise DaskmetaError(
                    f"the collection {data.path} holds MA maps of {data.kernel!r}; this "
                    f"{type(self).__name__} asks for {kernel!r} (build another collection for "
                    "other kernel parameters)"
                )
            if self.mask is not None and resolve_space(self.mask) != data.space:
                raise DaskmetaError(
                    f"the collection {data.path} was built on another mask "
                    f"({data.attrs.get('mask_source')}); drop mask= or build a collection on "
                    "this mask"
                )
            if float(self.mask_margin) != data.mask_margin:
                raise DaskmetaError(
                    f"the collection {data.path} was built with mask_margin="
                    f"{data.mask_margin:g}; this estimator has {self.mask_margin:g}"
                )
            return data.dataset, data.space, kernel, data
        raise DaskmetaError(
            f"{type(self).__name__}.fit expects a daskmeta Dataset or Collection; got "
            f"{type(data).__name__} (read files with daskmeta.io.read)"
        )

    @staticmethod
    def _has_foci(dataset) -> np.ndarray:
        """Which experiments have foci (those without are left out, as NiMARE does)."""
        return dataset.experiments["id"].isin(dataset.foci["id"].unique()).to_numpy()

    @staticmethod
    def _selection_rows(dataset, select, threshold: float, has_foci) -> np.ndarray:
        """Rows (ascending) of the experiments of ``dataset`` a selection names (all if
        ``select`` is None), without those that have no foci (``has_foci``; None keeps
        them)."""
        if select is None:
            chosen = np.ones(dataset.n_experiments, dtype=bool)
        elif isinstance(select, str):
            chosen = dataset.label_mask(select, threshold)
            what = f"label expression {select!r} (threshold {threshold:g})"
        else:
            ids = [str(i) for i in select]
            chosen = dataset.experiments["id"].isin(set(ids)).to_numpy()
            if len(set(ids)) > int(chosen.sum()):
                present = set(dataset.experiments["id"][chosen])
                unknown = [i for i in ids if i not in present]
                raise DatasetError(f"unknown experiment ids: {', '.join(unknown[:10])}")
            what = "the given ids"
        if select is not None and not chosen.any():
            raise DatasetError(f"empty selection: no experiment matches {what}")
        rows = np.flatnonzero(chosen if has_foci is None else chosen & has_foci)
        if len(rows) == 0:
            raise DatasetError(
                f"empty selection: none of the {int(chosen.sum())} experiments has foci"
            )
        return rows

    @classmethod
    def _select(cls, dataset, select, threshold):
        """The Dataset of a selection's experiments that have foci."""
        def keep(data, rows):
            if len(rows) == data.n_experiments:
                return data
            return data.slice(data.experiments["id"].to_numpy()[rows])

        if select is not None:  # slice first: finding foci is cheaper in the selection
            dataset = keep(dataset, cls._selection_rows(dataset, select, threshold, None))
        return keep(dataset, cls._selection_rows(dataset, None, threshold,
                                                 cls._has_foci(dataset)))

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, data, select=None, label_threshold: float = 0.001):
        """Fit the estimator and return its result.

        Parameters
        ----------
        data : Dataset or Collection
            The experiments to analyse: a Dataset, or a Collection (the MA maps are then read
            from its store instead of computed; the result is the same). Experiments without
            foci are left out, as NiMARE does.
        select : str or sequence of str, optional
            Analyse only these experiments: a label expression (see
            :meth:`Dataset.get_studies_by_label`) or a list of experiment ids.
        label_threshold : float
            Label weight threshold for a ``select`` expression (NiMARE's name).

        Returns
        -------
        MetaResult
            Maps ``stat``, ``p``, ``z`` and ``logp`` (NiMARE's names).

        Raises
        ------
        DatasetError
            If the selection is empty or lacks what the kernel needs (e.g. sample sizes).
        """
        self._validate_params()
        dataset, space, kernel, collection = self._source(data)
        dataset = self._select(dataset, select, label_threshold)
        if collection is None:
            plan = kernel.plan(dataset, space, self.mask_margin)
        else:
            # The collection's build already warned about foci it dropped.
            plan = kernel.plan(dataset, space, collection.mask_margin, warn=False)
        self.kernel_, self.space_, self.dataset_, self.plan_ = kernel, space, dataset, plan
        self.collection_ = collection
        self._prepare(dataset.experiments, np.diff(plan.row_start))
        weights = sparse.csr_matrix(self._selection_weights(dataset.n_experiments)[None, :])
        if collection is None:
            (stat_sum,), summaries = self._reduce(plan_to_dask(plan, self.chunk_size), weights)
        else:
            rows = collection.row_indices(dataset.ids)
            stored = self._stored_summaries(collection, rows, kernel)
            (stat_sum,), summaries = self._reduce_stored(collection, rows, weights,
                                                         with_summaries=stored is None)
            summaries = summaries if stored is None else stored
        maps, nulls = self._finalize(stat_sum, summaries, plan.n_voxels)
        self.null_distributions_ = nulls
        return self._make_result(maps)

    def _prepare(self, experiments, n_foci):
        """Per-selection state computed before the pass (weights, bins), from the selection's
        experiments table and its number of foci per experiment. Override as needed."""

    def _selection_weights(self, n_experiments: int) -> np.ndarray:
        """Weights of the experiments of one selection in ``w @ f(MA)`` (default 1)."""
        return np.ones(n_experiments)

    def _stored_summaries(self, collection, rows, kernel):
        """The row summaries of a collection's rows from the value histograms it stores, or
        None if it has none on the grid this estimator needs (then they are computed from
        the rows)."""
        hist = collection.value_histograms(rows, self._hist_inv_step(kernel))
        if hist is None:
            return None
        row_max = collection.row_maxima(rows) if self._needs_row_max else None
        return self._summaries_from_hist(hist, row_max, collection.space.n_voxels)

    def _shared_inputs(self, token, weights):
        """The estimator (without fitted state) and the weights (CSC) as single graph nodes
        that the block tasks share; ``token`` names the data and weights, and the
        estimator's class and parameters are added to it."""
        token = dask.base.tokenize(token, type(self).__name__, str(self.get_params()))
        est_d = dask.delayed(self._light_copy(), name=f"estimator-{token}", traverse=False)
        w_d = dask.delayed(sparse.csc_matrix(weights), name=f"weights-{token}", traverse=False)
        return est_d, w_d

    def _reduce(self, ma, weights, with_summaries: bool = True):
        """One pass over MA rows (a dask array): ``weights @ f(MA)`` (dense, selections x
        voxels) and, if asked, the per-row summaries (a list over rows)."""
        blocks = ma.to_delayed().ravel()
        bounds = np.concatenate([[0], np.cumsum(ma.chunks[0])]).astype(int)
        token = dask.base.tokenize(ma.name, weights.data, weights.indices, weights.indptr)
        est_d, w_d = self._shared_inputs(token, weights)
        red = dask.delayed(_reduce_block, pure=True, nout=2)
        return self._sum_parts([red(est_d, w_d, blk, int(a), int(b), with_summaries)
                                for blk, a, b in zip(blocks, bounds[:-1], bounds[1:])])

    def _reduce_stored(self, collection, rows, weights, with_summaries: bool = True):
        """:meth:`_reduce` of rows of a collection, read and reduced ``chunk_size`` rows per
        task (each task reads into its thread's scratch block, not a new one)."""
        array_path = str(collection.path / "ma")
        token = dask.base.tokenize(collection.content_token(), rows, weights.data,
                                   weights.indices, weights.indptr)
        est_d, w_d = self._shared_inputs(token, weights)
        red = dask.delayed(_reduce_stored_block, pure=True, nout=2)
        n_vox, dtype = collection.space.n_voxels, np.dtype(collection.attrs["dtype"])
        step = self.chunk_size
        return self._sum_parts([red(est_d, w_d, array_path, n_vox, dtype, rows[a:a + step], a,
                                    with_summaries) for a in range(0, len(rows), step)])

    @staticmethod
    def _sum_parts(parts):
        total = tree_sum([p[0] for p in parts])
        total, summaries = compute(total, [p[1] for p in parts])
        return total, [s for block in summaries for s in block]

    def _light_copy(self):
        """This estimator without its fitted state (plan, dataset, space), to ship to tasks."""
        light = copy.copy(self)
        light.mask = None
        for name in ("plan_", "dataset_", "space_", "collection_", "null_distributions_"):
            light.__dict__.pop(name, None)
        return light

    def _block_values(self, block: np.ndarray) -> np.ndarray:
        """``f`` of a block of MA rows, float32 or a store's integer dtype (the values that are
        weighted and summed)."""
        return block

    def _row_sums(self, block: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``weights @ _block_values(block)`` in float64 with rows added in order (the same
        numbers as the sparse product of :meth:`fit_many`)."""
        return weighted_row_sum(self._block_values(block), weights)

    def _reduce_rows(self, block: np.ndarray, weights: np.ndarray):
        """:meth:`_row_sums` and :meth:`_row_summaries` of a block. Override to do both in
        fewer passes over the block."""
        return self._row_sums(block, weights), self._row_summaries(block)

    def _row_summaries(self, block: np.ndarray) -> list:
        """Per-row summaries of a block of MA rows (what :meth:`_finalize` needs of each
        experiment for its null)."""
        raise NotImplementedError

    def _hist_inv_step(self, kernel) -> float:
        """Grid of the stored value histograms :meth:`_summaries_from_hist` reads."""
        return kernel.hist_inv_step()

    @staticmethod
    def _occupied_bins(hist) -> list:
        """Per row of stored value histograms, its occupied bins and their counts (float64),
        the form the row summaries of ALE and KDA take."""
        out = []
        for row in hist:
            bins = np.flatnonzero(row)
            out.append((bins, row[bins].astype(np.float64)))
        return out

    def _summaries_from_hist(self, hist, row_max, n_voxels: int) -> list:
        """:meth:`_row_summaries` of rows from a collection's stored value histograms
        (non-zero values counted per bin of :meth:`_hist_inv_step`) and, if
        ``_needs_row_max``, row maxima (else None)."""
        raise NotImplementedError

    def _stat(self, stat_sum: np.ndarray) -> np.ndarray:
        """The statistic map from ``w @ f(MA)`` (float64). Default: the sum itself."""
        return stat_sum

    def _null(self, summaries, n_voxels: int):
        """``(bin centres, weights)`` of the approximate null histogram of one selection from
        its experiments' row summaries (in selection order)."""
        raise NotImplementedError

    def _finalize(self, stat_sum, summaries, n_voxels: int):
        """Maps (``stat``, ``p``, ``z``, ``logp``) and null distributions of one selection
        from ``w @ f(MA)`` and its row summaries."""
        bins, hist = self._null(summaries, n_voxels)
        maps = nullhist_maps(self._stat(stat_sum), hist, bins)
        return maps, {"histogram_bins": bins, "histweights_corr-none_method-approximate": hist}

    # -- many selections -------------------------------------------------------------------
    def fit_many(self, collection, selections, label_threshold: float = 0.001, store=None,
                 group_size: int | None = None, progress=None, overwrite: bool = False):
        """Fit one meta-analysis per selection of a Collection, reading the store once per
        group of selections.

        Each pass over the store sums the MA rows of a group of selections in tasks of
        :data:`~daskmeta.collection.ROWS_PER_SUM_TASK` rows (exact integer counts for
        unweighted (M)KDA, float64 otherwise), then computes the maps of the group's
        selections in tasks of :data:`FIT_MANY_SELECTIONS_PER_TASK`, which write them to
        ``store`` when one is given.

        Parameters
        ----------
        collection : Collection
        selections : dict of str to (str or list of str), or list of str
            Named label expressions or id lists; a list of label names means one selection
            per label (``label_threshold`` applies).
        label_threshold : float
            Label weight threshold (NiMARE's name).
        store : path-like, optional
            Write the maps to this Zarr store as they are computed (``selection`` x
            ``voxel``); the returned Dataset is then opened lazily from it.
        group_size : int, optional
            Selections per pass (default: as many as keep the pass's sums within the
            ``dask.config`` setting ``daskmeta.fit-many.memory``, 2 GB unless set; e.g.
            ``dask.config.set({"daskmeta.fit-many.memory": "8GB"})`` or the environment
            variable ``DASK_DASKMETA__FIT_MANY__MEMORY=8GB``).
        progress : callable, optional
            Called with ``(n_done, n_total)`` after each group.
        overwrite : bool
            Replace what is at ``store`` (by default an existing path is an error).

        Returns
        -------
        xarray.Dataset
            ``stat``, ``p``, ``z``, ``logp`` over (``selection``, ``voxel``), with the
            number of experiments of each selection and the provenance in attributes.

        Raises
        ------
        DatasetError
            If a selection is empty or names unknown experiments (the message names it).
        DaskmetaError
            If ``store`` exists and ``overwrite`` is false.
        """
        import xarray as xr

        from daskmeta.collection import Collection

        if not isinstance(collection, Collection):
            raise DaskmetaError(f"fit_many needs a Collection; got {type(collection).__name__}")
        self._validate_params()
        _, space, kernel, _ = self._source(collection)
        if isinstance(selections, list | tuple):
            selections = {name: name for name in selections}
        if not selections:
            raise DaskmetaError("fit_many needs at least one selection")
        if group_size is not None and not (isinstance(group_size, int | np.integer)
                                           and group_size > 0):
            raise DaskmetaError(f"group_size must be a positive integer; got {group_size!r}")
        if store is not None and os.path.exists(store) and not overwrite:
            raise DaskmetaError(f"{store} exists; pass overwrite=True to replace it, or "
                                "another store path")
        names = list(selections)
        dataset = collection.dataset
        has_foci = self._has_foci(dataset)
        rows_of = []
        for name in names:
            try:
                rows_of.append(self._selection_rows(dataset, selections[name], label_threshold,
                                                    has_foci))
            except DatasetError as exc:
                raise DatasetError(f"selection {name!r}: {exc}") from None
        self.kernel_, self.space_ = kernel, space
        # Foci per experiment that made it into the store (the build's margin rule).
        n_foci = np.diff(kernel.plan(dataset, space, collection.mask_margin,
                                     warn=False).row_start)
        weights_of = []
        for rows in rows_of:
            self._prepare(dataset.experiments.iloc[rows], n_foci[rows])
            weights_of.append(np.asarray(self._selection_weights(len(rows)), dtype=np.float64))
        store_dtype = np.dtype(collection.attrs["dtype"])
        exact_counts = store_dtype.kind in "ui" and all(np.all(w == 1.0) for w in weights_of)
        # The null summaries of every row any selection holds, read once if stored.
        all_rows = np.unique(np.concatenate(rows_of))
        known = self._stored_summaries(collection, all_rows, kernel)
        known = None if known is None else (all_rows, known)
        acc_dtype = (self._count_dtype(collection, rows_of) if exact_counts
                     else np.dtype(np.float64))
        n_vox = space.n_voxels
        if group_size is None:
            # Each thread's running sum, finished partial sums and their tree sum.
            memory = _config_bytes("daskmeta.fit-many.memory", FIT_MANY_MEMORY)
            group_size = max(1, int(memory // (n_vox * acc_dtype.itemsize * 6)))
        attrs = {"estimator": type(self).__name__, "daskmeta_version": __version__,
                 **kernel.describe(), **space.describe(), "collection": str(collection.path),
                 "label_threshold": float(label_threshold), "tal2mni": TAL2MNI_METHOD}
        n_exp = np.asarray([len(rows) for rows in rows_of])
        if store is not None:
            self._init_many_store(store, names, n_vox, n_exp)
            out = None
        else:
            out = {k: np.empty((len(names), n_vox), dtype=_MANY_DTYPES[k]) for k in _MANY_DTYPES}
        for g0 in range(0, len(names), group_size):
            g1 = min(g0 + group_size, len(names))
            results = self._fit_group(collection, rows_of[g0:g1], weights_of[g0:g1],
                                      n_foci, acc_dtype, known,
                                      None if store is None else (str(store), g0))
            if out is not None:
                for s0, maps in results:
                    for k in out:
                        out[k][g0 + s0:g0 + s0 + len(maps[k])] = maps[k]
            if progress is not None:
                progress(g1, len(names))
        if store is not None:
            import zarr

            zarr.open_group(store, mode="r+").attrs.update({**attrs, "complete": True})
            return xr.open_zarr(store, consolidated=False)
        data = {k: (("selection", "voxel"), v) for k, v in out.items()}
        return xr.Dataset(data, coords={"selection": names, "voxel": np.arange(n_vox),
                                        "n_experiments": ("selection", n_exp)},
                          attrs=attrs)

    @staticmethod
    def _count_dtype(collection, rows_of) -> np.dtype:
        """The integer dtype of exact unweighted sums: ``uint16`` when no selection's sum can
        pass 65,535 (the sum of its rows' stored maxima, e.g. its number of rows for MKDA's
        binary spheres) and halves the memory of a pass, else ``uint32``."""
        if "ma_max" in collection.data:
            row_max = collection.row_maxima(np.arange(collection.n_experiments))
            bound = max(float(row_max[rows].astype(np.float64).sum()) for rows in rows_of)
            if bound <= np.iinfo(np.uint16).max:
                return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    def _fit_group(self, collection, rows_of, weights_of, n_foci, acc_dtype, known, target):
        """One pass over the store for a group of selections: sums in row tasks, then maps in
        selection tasks (written to ``target = (store, first index)`` if given). ``known``:
        ``(rows, summaries)`` stored for a superset of the group's rows, or None (then the
        row tasks compute them)."""
        used = np.unique(np.concatenate(rows_of))
        w_rows = np.concatenate([np.full(len(r), s) for s, r in enumerate(rows_of)])
        w_cols = np.searchsorted(used, np.concatenate(rows_of))
        weights = sparse.csc_matrix((np.concatenate(weights_of), (w_rows, w_cols)),
                                    shape=(len(rows_of), len(used)))
        array_path = str(collection.path / "ma")
        token = dask.base.tokenize(collection.content_token(), used, weights.data,
                                   weights.indices, weights.indptr, acc_dtype.str)
        est_d, w_d = self._shared_inputs(token, weights)
        red = dask.delayed(_reduce_stored_rows, pure=True, nout=2)
        step = max(ROWS_PER_SUM_TASK, self.chunk_size)
        n_vox = collection.space.n_voxels
        store_dtype = np.dtype(collection.attrs["dtype"])
        stored = None if known is None else [known[1][i]
                                             for i in np.searchsorted(known[0], used)]
        parts = [red(est_d, w_d, array_path, n_vox, store_dtype, used[a:a + step], a,
                     self.chunk_size, acc_dtype, stored is None)
                 for a in range(0, len(used), step)]
        total = tree_sum([p[0] for p in parts])
        if stored is None:
            summaries = dask.delayed(_concat_lists, pure=True)([p[1] for p in parts])
        else:
            summaries = dask.delayed(stored, name=f"summaries-{token}", traverse=False)
        experiments = collection.dataset.experiments
        finalize = dask.delayed(_finalize_selections, pure=True)
        tasks = []
        for s0 in range(0, len(rows_of), FIT_MANY_SELECTIONS_PER_TASK):
            s1 = min(s0 + FIT_MANY_SELECTIONS_PER_TASK, len(rows_of))
            jobs = [(np.searchsorted(used, rows_of[s]), experiments.iloc[rows_of[s]],
                     n_foci[rows_of[s]]) for s in range(s0, s1)]
            sums = dask.delayed(operator.getitem, pure=True)(total, slice(s0, s1))
            where = None if target is None else (target[0], target[1] + s0)
            tasks.append(finalize(est_d, sums, summaries, jobs, n_vox, where))
        return [(s0, maps) for s0, maps in
                zip(range(0, len(rows_of), FIT_MANY_SELECTIONS_PER_TASK), compute(*tasks))]

    @staticmethod
    def _init_many_store(store, names, n_vox, n_exp):
        import xarray as xr

        n = len(names)
        lazy = {k: (("selection", "voxel"), da.zeros((n, n_vox), chunks=(1, n_vox),
                                                      dtype=dtype))
                for k, dtype in _MANY_DTYPES.items()}
        xr.Dataset(lazy, coords={"selection": np.asarray(names, dtype=object),
                                 "voxel": np.arange(n_vox),
                                 "n_experiments": ("selection", np.asarray(n_exp))},
                   attrs={"complete": False}).to_zarr(store, compute=False, consolidated=False,
                                                      mode="w")

    # -- result ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """Parameters and provenance for result attributes."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k != "mask"}
        out = {
            "estimator": type(self).__name__,
            "daskmeta_version": __version__,
            **{k: (v if isinstance(v, int | float | str | bool) else str(v))
               for k, v in params.items() if v is not None},
            **self.kernel_.describe(),
            **self.space_.describe(),
            "tal2mni": TAL2MNI_METHOD,
            "input_hash": self.dataset_.fingerprint(),
            "n_experiments": self.plan_.n_rows,
            "n_foci": int(len(self.plan_.focus_row)),
        }
        if getattr(self, "collection_", None) is not None:
            out["collection"] = str(self.collection_.path)
        return out

    def _make_result(self, maps):
        from daskmeta.results import MetaResult

        return MetaResult(maps, self.space_, attrs=self.describe(), estimator=self,
                          null_distributions=self.null_distributions_)
