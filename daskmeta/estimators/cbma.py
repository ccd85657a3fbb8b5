"""Coordinate-based estimators: an :class:`~daskmeta.estimators.base.Estimator` with a kernel.

Every coordinate-based statistic is ``w @ f(MA)`` over a selection of experiments plus small
per-experiment summaries for its null (DESIGN: a reduction over the study axis). A subclass
states only what differs:

- :meth:`CBMAEstimator._block_values`: the elementwise ``f`` of MA values (``log1p(-MA)`` for
  ALE, the identity for (M)KDA); the fits and the Monte Carlo null both use it;
- :meth:`~CBMAEstimator._summaries_from_hist` (and :meth:`~CBMAEstimator._row_summaries` for
  stores without value histograms): each experiment's summary for the null;
- :meth:`~CBMAEstimator._null` and :meth:`~CBMAEstimator._stat`: the approximate null of a
  selection and the statistic from its sum;
- optionally :meth:`~CBMAEstimator._prepare` / :meth:`~CBMAEstimator._selection_weights`
  (per-experiment weights) and ``_montecarlo_stat`` (how the Monte Carlo null computes the
  statistic: ``"ale"`` or ``"identity"`` in compiled code, None for :meth:`_stat` in NumPy).

The passes themselves are :mod:`daskmeta._pass`'s: MA rows are combined from foci
(:class:`~daskmeta._pass.KernelRows`) or read from a Collection
(:class:`~daskmeta._pass.StoredRows`); :meth:`CBMAEstimator.fit` and
:meth:`CBMAEstimator.fit_many` share them, so one meta-analysis and a thousand give the same
numbers (to the last bit for (M)KDA counts, up to float64 rounding of the order of additions
for ALE and weighted sums).
"""

from __future__ import annotations

import copy

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._pass import (
    KernelRows,
    StoredRows,
    add_rows,
    describe_selection,
    has_foci,
    run_pass,
    selection_rows,
)
from daskmeta._stats import nullhist_maps
from daskmeta.estimators.base import Estimator, non_negative, positive_int
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import DEFAULT_MASK_MARGIN
from daskmeta.space import TAL2MNI_METHOD, resolve_space

__all__ = ["CBMAEstimator", "default_chunk_size"]


def default_chunk_size() -> int:
    """Rows per block of reads from a store: the dask config ``daskmeta.chunk-size`` (64)."""
    from daskmeta import config

    return config.get_positive_int("chunk-size")


@fill_doc
class CBMAEstimator(Estimator):
    """Base class of coordinate-based estimators.

    Parameters
    ----------
    kernel_transformer : Kernel or Kernel class, optional
        The kernel (default: the estimator's own, e.g. ``ALEKernel()``).
    %(null_method)s
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
    """

    _kernel_cls: type = None  # set by subclasses
    _null_methods = ("approximate",)
    _needs_row_max = False  # whether _summaries_from_hist reads the rows' maxima
    #: How the Monte Carlo null computes the statistic from the weighted sum: "ale" or
    #: "identity" (compiled, fused with the summary), or None (this class's _stat, in NumPy).
    _montecarlo_stat: str | None = None
    _fitted_marker = "plan_"
    _parameter_constraints = {
        "mask_margin": (non_negative, "a number of mm >= 0"),
        "chunk_size": (lambda v: v is None or positive_int(v), "None or a positive integer"),
    }

    def __init__(self, kernel_transformer=None, null_method="approximate", mask=None,
                 mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None, **kwargs):
        self.kernel_transformer = kernel_transformer
        self.null_method = null_method
        self.mask = mask
        self.mask_margin = mask_margin
        self.chunk_size = chunk_size
        self.kernel_params = kwargs

    # -- parameters ------------------------------------------------------------------------
    def _extra_params(self) -> dict:
        return dict(self.kernel_params)

    def _set_extra_param(self, name, value) -> bool:
        if not name.startswith("kernel__"):
            return False
        self.kernel_params[name] = value
        return True

    def _deep_params(self) -> dict:
        return {f"kernel__{k}": v for k, v in self._make_kernel().get_params().items()}

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
        super()._validate_params()
        self._make_kernel()

    def _chunk_size(self) -> int:
        return default_chunk_size() if self.chunk_size is None else int(self.chunk_size)

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

    # -- fitting ---------------------------------------------------------------------------
    @fill_doc
    def fit(self, data, select=None, label_threshold: float = 0.001):
        """Fit the estimator and return its result.

        Parameters
        ----------
        data : Dataset or Collection
            The experiments to analyse: a Dataset, or a Collection (the MA maps are then read
            from its store instead of computed; the result is the same).
        %(select)s
        %(label_threshold)s

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
        return self._fit(data, select, label_threshold)

    def _select(self, data, select, label_threshold):
        """``(dataset of the selection's experiments with foci, space, kernel, collection,
        plan)``; also sets the fitted state common to every CBMA fit."""
        dataset, space, kernel, collection = self._source(data)
        rows = selection_rows(dataset, select, label_threshold, has_foci(dataset))
        if len(rows) != dataset.n_experiments:
            dataset = dataset.slice(dataset.experiments["id"].to_numpy()[rows])
        # A collection's build already warned about the foci it dropped.
        margin = self.mask_margin if collection is None else collection.mask_margin
        plan = kernel.plan(dataset, space, margin, warn=collection is None)
        self.kernel_, self.space_, self.dataset_, self.plan_ = kernel, space, dataset, plan
        self.collection_ = collection
        self.selection_ = describe_selection(select, label_threshold)
        self._prepare(dataset.experiments, np.diff(plan.row_start))
        return dataset, collection, plan

    def _fit(self, data, select, label_threshold):
        dataset, collection, plan = self._select(data, select, label_threshold)
        weights = np.asarray(self._selection_weights(dataset.n_experiments),
                             dtype=np.float64)[None, :]
        total, summaries = self._sums(collection, plan, dataset, weights)
        maps, nulls = self._finalize(total[0].astype(np.float64),
                                     self._in_null_order(summaries, dataset.ids), plan.n_voxels)
        self.null_distributions_ = nulls
        return self._make_result(maps, nulls)

    def _sums(self, collection, plan, dataset, weights):
        """``weights @ f(MA)`` of the fitted plan's rows and their summaries: one pass."""
        light = self._light_copy()
        if collection is None:
            source = KernelRows(plan, light._block_values, self._func_name(),
                                self._hist_inv_step(self.kernel_))
            return run_pass(source, np.arange(plan.n_rows), weights, light)
        rows = collection.row_indices(dataset.ids)
        stored = self._stored_summaries(collection, rows, self.kernel_)
        acc = (self._count_dtype(collection, [rows])
               if np.dtype(collection.attrs["dtype"]).kind in "ui" and np.all(weights == 1)
               else np.dtype(np.float64))
        chunk = self._chunk_size()
        total, summaries = run_pass(StoredRows(collection, chunk), rows, weights, light, acc,
                                    with_summaries=stored is None, rows_per_task=chunk)
        return total, (summaries if stored is None else stored)

    @staticmethod
    def _count_dtype(collection, rows_of) -> np.dtype:
        """The integer dtype of exact unweighted sums: ``uint16`` when no selection's sum can
        pass 65,535 (the sum of its rows' stored maxima, e.g. its number of rows for MKDA's
        binary spheres), else ``uint32``."""
        if "ma_max" in collection.data:
            row_max = collection.row_maxima(np.arange(collection.n_experiments))
            bound = max(float(row_max[rows].astype(np.float64).sum()) for rows in rows_of)
            if bound <= np.iinfo(np.uint16).max:
                return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    def _func_name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

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

    def _light_copy(self):
        """This estimator without its fitted state (plan, dataset, space), to ship to tasks."""
        light = copy.copy(self)
        light.mask = None
        for name in ("plan_", "dataset_", "space_", "collection_", "null_distributions_",
                     "selection_"):
            light.__dict__.pop(name, None)
        return light

    # -- what subclasses define ------------------------------------------------------------
    def _block_values(self, block: np.ndarray) -> np.ndarray:
        """The elementwise ``f`` of a block of MA rows (float32, or a store's integer dtype):
        the values that are weighted and summed. ``f(0)`` must be 0."""
        return block

    def _add_block(self, block, weights, total, with_summaries: bool) -> list:
        """Add ``weights @ f(block)`` into ``total`` (a pass over stored rows) and return the
        block's row summaries if asked. Override to do both in fewer passes over the block."""
        add_rows(self._block_values(block), weights, total)
        return self._row_summaries(block) if with_summaries else []

    def _row_summaries(self, block: np.ndarray) -> list:
        """Per-row summaries of a block of MA rows (what :meth:`_finalize` needs of each
        experiment for its null), for stores without value histograms."""
        raise NotImplementedError

    def _hist_inv_step(self, kernel) -> float:
        """Grid of the value histograms :meth:`_summaries_from_hist` reads."""
        return kernel.hist_inv_step()

    @staticmethod
    def _occupied_bins(hist) -> list:
        """Per row of value histograms, its occupied bins and their counts (float64), the
        form the row summaries of ALE and KDA take."""
        out = []
        for row in hist:
            bins = np.flatnonzero(row)
            out.append((bins, row[bins].astype(np.float64)))
        return out

    def _summaries_from_hist(self, hist, row_max, n_voxels: int) -> list:
        """:meth:`_row_summaries` of rows from their value histograms (non-zero values
        counted per bin of :meth:`_hist_inv_step`) and their maxima."""
        raise NotImplementedError

    def _stat(self, stat_sum: np.ndarray) -> np.ndarray:
        """The statistic map from ``w @ f(MA)`` (float64). Default: the sum itself."""
        return stat_sum

    def _null(self, summaries, n_voxels: int):
        """``(bin centres, weights)`` of the approximate null histogram of one selection from
        its experiments' row summaries (in selection order, or in :meth:`_null_order`)."""
        raise NotImplementedError

    def _null_order(self, ids):
        """The order (positions in selection order) in which :meth:`_null` must take the
        selection's experiments of ids ``ids``, or None for selection order (the default).
        Override when the null depends on the order, to follow NiMARE's."""
        return None

    def _in_null_order(self, summaries, ids) -> list:
        """A selection's row summaries (in selection order, experiment ids ``ids``) in the
        order of :meth:`_null_order`: what the fits hand to :meth:`_finalize`."""
        order = self._null_order(ids)
        if order is None:
            return summaries
        if len(order) != len(summaries):
            raise ValueError(f"{len(order)} experiment ids for {len(summaries)} summaries")
        return [summaries[i] for i in order]

    def _finalize(self, stat_sum, summaries, n_voxels: int):
        """Maps (``stat``, ``p``, ``z``, ``logp``) and null distributions of one selection
        from ``w @ f(MA)`` and its row summaries (in :meth:`_in_null_order`)."""
        bins, hist = self._null(summaries, n_voxels)
        maps = nullhist_maps(self._stat(stat_sum), hist, bins)
        return maps, {"histogram_bins": bins, "histweights_corr-none_method-approximate": hist}

    # -- Monte Carlo -----------------------------------------------------------------------
    def _null_model(self, sampler=None):
        """The Monte Carlo null of this fit: its foci relocated by ``sampler`` (uniformly in
        the mask by default), same kernels and weights."""
        from daskmeta.montecarlo import FociNull

        self._check_fitted()
        plan = self.plan_
        weights = np.asarray(self._selection_weights(plan.n_rows), dtype=np.float64)
        stat = self._montecarlo_stat
        if stat == "identity" and not (np.all(plan.k_values > 0) and np.all(weights > 0)):
            raise DaskmetaError(
                "Monte Carlo correction of (M)KDA needs a positive kernel value and positive "
                "experiment weights"
            )
        light = self._light_copy()
        return FociNull(plan, weights, light._block_values, self._func_name(),
                        stat=stat if stat is not None else light._stat, sampler=sampler,
                        params=repr(sorted(self.get_params(deep=True).items())))

    # -- many selections -------------------------------------------------------------------
    def fit_many(self, collection, selections, label_threshold: float = 0.001, store=None,
                 group_size: int | None = None, progress=None, overwrite: bool = False):
        """Fit one meta-analysis per selection of a Collection, reading the store once per
        group of selections (see :func:`daskmeta.estimators._many.fit_many`)."""
        from daskmeta.estimators._many import fit_many

        return fit_many(self, collection, selections, label_threshold, store, group_size,
                        progress, overwrite)

    # -- result ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """Parameters and provenance for result attributes."""
        out = super().describe()
        out.update({
            **self.kernel_.describe(),
            **self.space_.describe(),
            "tal2mni": TAL2MNI_METHOD,
            "input_hash": getattr(self, "input_hash_", None) or self.dataset_.fingerprint(),
            "n_experiments": self.plan_.n_rows,
            "n_foci": int(len(self.plan_.focus_row)),
            **self.selection_,
        })
        if getattr(self, "collection_", None) is not None:
            out["collection"] = str(self.collection_.path)
        return out
