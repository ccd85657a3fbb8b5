"""Shared machinery of coordinate-based estimators.

Every estimator is a reduction over the study axis: for a selection of experiments with
weights ``w`` it needs ``w @ f(MA)`` (a voxel vector; ``f`` is ``log1p(-MA)`` for ALE, the
identity for (M)KDA) and a few small per-experiment summaries for its null (maxima, value
histograms, coverage). Subclasses define those three pieces:

- :meth:`_block_values`: ``f`` of a block of MA rows (float32, or a store's own dtype),
- :meth:`_row_summaries`: the per-experiment summaries of a block,
- :meth:`_finalize`: maps and nulls of one selection from its weighted sum and summaries.

:meth:`fit` (one selection) and :meth:`fit_many` (many, from a Collection, in one pass per
group of selections) share them, so one meta-analysis and a thousand give the same numbers:
to the last bit for (M)KDA counts, and up to float64 rounding of the order of additions for
ALE and weighted sums (``fit_many`` adds 1024 rows per task before its tasks are summed in a
tree, ``fit`` adds ``chunk_size`` rows per task; fewer partial sums make a pass over a whole
database several times faster).
"""

from __future__ import annotations

import copy

import dask
import dask.array as da
import numpy as np
from scipy import sparse

from daskmeta._version import __version__
from daskmeta.cluster import compute, tree_sum
from daskmeta.estimators._reductions import weighted_row_sum, weighted_rows_by_selection
from daskmeta.exceptions import DaskmetaError, DatasetError, NotFittedError
from daskmeta.kernels import DEFAULT_CHUNK_EXPERIMENTS, DEFAULT_MASK_MARGIN, plan_to_dask
from daskmeta.space import TAL2MNI_METHOD, resolve_space
from daskmeta.storage import read_rows

__all__ = ["CBMAEstimator", "resolve_space"]

#: Rows of a collection each :meth:`CBMAEstimator.fit_many` task reduces into one partial sum.
FIT_MANY_ROWS_PER_TASK = 1024


def _reduce_block(estimator, weights, block, a: int, b: int):
    """``weights[:, a:b] @ f(block)`` and the block's per-row summaries (one task)."""
    w = weights[:, a:b]
    if w.shape[0] == 1:
        total, summaries = estimator._reduce_rows(block, w.toarray().ravel())
        return total[None], summaries
    w = sparse.csc_matrix(w)
    total = weighted_rows_by_selection(estimator._block_values(block), w.indptr, w.indices,
                                       w.data.astype(np.float64, copy=False), w.shape[0])
    return total, estimator._row_summaries(block)


def _reduce_stored_rows(estimator, weights, array_path: str, rows, a: int, chunk_size: int):
    """``weights[:, a:a + len(rows)] @ f(MA rows)`` and the rows' summaries, reading the
    rows from a store ``chunk_size`` at a time into one partial sum (one task)."""
    total = None
    summaries = []
    for start in range(0, len(rows), chunk_size):
        block = read_rows(array_path, rows[start:start + chunk_size])
        part, block_summaries = _reduce_block(estimator, weights, block, a + start,
                                              a + start + len(block))
        total = part if total is None else np.add(total, part, out=total)
        summaries.extend(block_summaries)
    return total, summaries


class CBMAEstimator:
    """Base class of coordinate-based estimators (scikit-learn conventions).

    ``__init__`` only stores parameters; :meth:`fit` validates them, computes, and returns a
    :class:`~daskmeta.MetaResult`. Fitted state ends in ``_``.
    """

    _kernel_cls: type = None  # set by subclasses
    _null_methods = ("approximate",)
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
    def _drop_empty(dataset):
        with_foci = dataset.experiments["id"].isin(set(dataset.foci["id"]))
        if not with_foci.any():
            raise DatasetError(
                f"empty selection: none of the {dataset.n_experiments} experiments has foci"
            )
        if not with_foci.all():
            dataset = dataset.slice(dataset.experiments["id"][with_foci])
        return dataset

    @classmethod
    def _select(cls, dataset, select, threshold):
        if select is not None:
            if isinstance(select, str):
                ids = dataset.get_studies_by_label(select, threshold=threshold)
                what = f"label expression {select!r} (threshold {threshold:g})"
            else:
                ids = [str(i) for i in select]
                what = "the given ids"
            if not ids:
                raise DatasetError(f"empty selection: no experiment matches {what}")
            dataset = dataset.slice(ids)
        return cls._drop_empty(dataset)

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, data, select=None, threshold: float = 0.001):
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
        threshold : float
            Label weight threshold for a ``select`` expression.

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
        dataset = self._select(dataset, select, threshold)
        if collection is None:
            plan = kernel.plan(dataset, space, self.mask_margin)
            ma = plan_to_dask(plan, self.chunk_size)
        else:
            # The collection's build already warned about foci it dropped.
            plan = kernel.plan(dataset, space, collection.mask_margin, warn=False)
            ma = collection.rows(dataset.ids, self.chunk_size, dtype=None)
        self.kernel_, self.space_, self.dataset_, self.plan_ = kernel, space, dataset, plan
        self.collection_ = collection
        self._prepare(dataset, plan)
        weights = sparse.csr_matrix(self._selection_weights(dataset)[None, :])
        (stat_sum,), summaries = self._reduce(ma, weights)
        maps, nulls = self._finalize(stat_sum, summaries, dataset, plan)
        self.null_distributions_ = nulls
        return self._make_result(maps)

    def _prepare(self, dataset, plan):
        """Per-fit state computed before the pass (weights, bins). Override as needed."""

    def _selection_weights(self, dataset) -> np.ndarray:
        """Weights of the experiments of one selection in ``w @ f(MA)`` (default 1)."""
        return np.ones(dataset.n_experiments)

    def _reduce(self, ma, weights):
        """One pass over MA rows: ``weights @ f(MA)`` (dense, selections x voxels) and the
        per-row summaries (a list over rows)."""
        blocks = ma.to_delayed().ravel()
        bounds = np.concatenate([[0], np.cumsum(ma.chunks[0])]).astype(int)
        # The estimator and the weights are single graph nodes the block tasks share.
        light = self._light_copy()
        token = dask.base.tokenize(ma.name, weights.data, weights.indices, weights.indptr)
        est_d = dask.delayed(light, name=f"estimator-{token}", traverse=False)
        w_d = dask.delayed(sparse.csc_matrix(weights), name=f"weights-{token}", traverse=False)
        red = dask.delayed(_reduce_block, pure=True, nout=2)
        parts = [red(est_d, w_d, blk, int(a), int(b))
                 for blk, a, b in zip(blocks, bounds[:-1], bounds[1:])]
        total = tree_sum([p[0] for p in parts])
        total, summaries = compute(total, [p[1] for p in parts])
        return total, [s for block in summaries for s in block]

    def _reduce_stored(self, collection, ids, weights):
        """:meth:`_reduce` over a collection's rows for many selections: each task reads
        :data:`FIT_MANY_ROWS_PER_TASK` rows, ``chunk_size`` at a time, into one partial sum,
        so a pass makes few (selections x voxels) partials to add up."""
        index = collection.row_indices(ids)
        array_path = str(collection.path / "ma")
        light = self._light_copy()
        token = dask.base.tokenize(collection.content_token(), index, weights.data,
                                   weights.indices, weights.indptr)
        est_d = dask.delayed(light, name=f"estimator-{token}", traverse=False)
        w_d = dask.delayed(sparse.csc_matrix(weights), name=f"weights-{token}", traverse=False)
        red = dask.delayed(_reduce_stored_rows, pure=True, nout=2)
        step = max(FIT_MANY_ROWS_PER_TASK, self.chunk_size)
        parts = [red(est_d, w_d, array_path, index[a:a + step], a, self.chunk_size)
                 for a in range(0, len(index), step)]
        total, summaries = compute(tree_sum([p[0] for p in parts]), [p[1] for p in parts])
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

    def _reduce_rows(self, block: np.ndarray, weights: np.ndarray):
        """``weights @ _block_values(block)`` in float64 with rows added in order (the same
        numbers as the sparse product of :meth:`fit_many`), and the row summaries. Override
        to do both in fewer passes over the block."""
        return weighted_row_sum(self._block_values(block), weights), self._row_summaries(block)

    def _row_summaries(self, block: np.ndarray) -> list:
        raise NotImplementedError

    def _finalize(self, stat_sum, summaries, dataset, plan):
        raise NotImplementedError

    # -- many selections -------------------------------------------------------------------
    def fit_many(self, collection, selections, threshold: float = 0.001, store=None,
                 group_size: int | None = None, progress=None):
        """Fit one meta-analysis per selection of a Collection, reading the store once per
        group of selections.

        Parameters
        ----------
        collection : Collection
        selections : dict of str to (str or list of str), or list of str
            Named label expressions or id lists; a list of label names means one selection
            per label (``threshold`` applies).
        threshold : float
            Label weight threshold.
        store : path-like, optional
            Write the maps to this Zarr store as they are computed (``selection`` x
            ``voxel``); the returned Dataset is then opened lazily from it.
        group_size : int, optional
            Selections per pass (default: as many as fit in ~512 MB of voxel sums).
        progress : callable, optional
            Called with ``(n_done, n_total)`` after each group.

        Returns
        -------
        xarray.Dataset
            ``stat``, ``p``, ``z``, ``logp`` over (``selection``, ``voxel``), with the
            number of experiments of each selection and the provenance in attributes.
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
        names = list(selections)
        subsets = []
        for name in names:
            try:
                subsets.append(self._select(collection.dataset, selections[name], threshold))
            except DatasetError as exc:
                raise DatasetError(f"selection {name!r}: {exc}") from None
        n_vox = space.n_voxels
        if group_size is None:
            # ~1 GB: the group's float64 sums, partial sums in flight and its four maps.
            group_size = max(1, int(1e9 // (n_vox * 8 * 8)))
        self.kernel_, self.space_ = kernel, space
        out_vars = {"stat": [], "p": [], "z": [], "logp": []}
        n_exp = []
        if store is not None:
            self._init_many_store(store, names, n_vox, collection)
        for g0 in range(0, len(names), group_size):
            group = subsets[g0:g0 + group_size]
            used = sorted(set().union(*(set(s.ids) for s in group)),
                          key=collection._row_of.get)
            pos = {i: k for k, i in enumerate(used)}
            rows, cols, vals = [], [], []
            plans = []
            for s, subset in enumerate(group):
                plan = kernel.plan(subset, space, collection.mask_margin, warn=False)
                self._prepare(subset, plan)
                w = self._selection_weights(subset)
                rows.append(np.full(len(w), s))
                cols.append([pos[i] for i in subset.ids])
                vals.append(w)
                plans.append(plan)
            weights = sparse.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(len(group), len(used)))
            totals, summaries = self._reduce_stored(collection, used, weights)
            group_maps = {k: [] for k in out_vars}
            for s, subset in enumerate(group):
                self._prepare(subset, plans[s])
                rows_s = [summaries[pos[i]] for i in subset.ids]
                maps, _ = self._finalize(totals[s], rows_s, subset, plans[s])
                for k in out_vars:
                    group_maps[k].append(np.asarray(maps[k]))
                n_exp.append(subset.n_experiments)
            if store is not None:
                self._write_many_group(store, g0, group_maps)
            else:
                for k in out_vars:
                    out_vars[k].extend(group_maps[k])
            if progress is not None:
                progress(min(g0 + group_size, len(names)), len(names))
        attrs = {"estimator": type(self).__name__, "daskmeta_version": __version__,
                 **kernel.describe(), **space.describe(), "collection": str(collection.path),
                 "threshold": float(threshold), "tal2mni": TAL2MNI_METHOD}
        if store is not None:
            import zarr

            group = zarr.open_group(store, mode="r+")
            group.attrs.update({**attrs, "complete": True})
            group["n_experiments"][:] = np.asarray(n_exp)
            return xr.open_zarr(store, consolidated=False)
        data = {k: (("selection", "voxel"), np.vstack(v)) for k, v in out_vars.items()}
        return xr.Dataset(data, coords={"selection": names, "voxel": np.arange(n_vox),
                                        "n_experiments": ("selection", np.asarray(n_exp))},
                          attrs=attrs)

    @staticmethod
    def _init_many_store(store, names, n_vox, collection):
        import xarray as xr

        n = len(names)
        lazy = {k: (("selection", "voxel"), da.zeros((n, n_vox), chunks=(1, n_vox),
                                                      dtype=np.float32 if k == "logp"
                                                      else np.float64))
                for k in ("stat", "p", "z", "logp")}
        lazy["n_experiments"] = (("selection",), np.zeros(n, dtype=np.int64))
        xr.Dataset(lazy, coords={"selection": np.asarray(names, dtype=object),
                                 "voxel": np.arange(n_vox)},
                   attrs={"complete": False}).to_zarr(store, compute=False, consolidated=False,
                                                      mode="w")

    @staticmethod
    def _write_many_group(store, start, group_maps):
        import zarr

        for k, values in group_maps.items():
            arr = zarr.open_array(store, path=k, mode="r+")
            arr[start:start + len(values)] = np.vstack(values).astype(arr.dtype)

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
