"""Shared machinery of coordinate-based estimators.

An estimator turns a Dataset (or, later, a selection of a Collection) into a lazy MA matrix
chunked by experiments, reduces every chunk in one pass to what the statistic and its null
need (a partial voxel map plus small per-experiment summaries), and combines the chunks.
"""

from __future__ import annotations

import dask
import numpy as np

from daskmeta import __version__
from daskmeta.cluster import compute
from daskmeta.exceptions import DaskmetaError, DatasetError, NotFittedError
from daskmeta.kernels import DEFAULT_CHUNK_EXPERIMENTS, DEFAULT_MASK_MARGIN, plan_to_dask
from daskmeta.space import TAL2MNI_METHOD, Space

__all__ = ["CBMAEstimator", "resolve_space"]

_DEFAULT_SPACE: Space | None = None


def resolve_space(mask) -> Space:
    """A :class:`Space` from a mask argument (None: the package default, loaded once)."""
    global _DEFAULT_SPACE
    if isinstance(mask, Space):
        return mask
    if mask is None:
        if _DEFAULT_SPACE is None:
            _DEFAULT_SPACE = Space()
        return _DEFAULT_SPACE
    return Space(mask)


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

    def _make_kernel(self):
        bad = [k for k in self.kernel_params if not k.startswith("kernel__")]
        if bad:
            raise DaskmetaError(
                f"{type(self).__name__} got unexpected parameters {bad}; kernel parameters are "
                "given as kernel__<name> (e.g. kernel__fwhm=10)"
            )
        kernel = self.kernel_transformer
        if kernel is None:
            kernel = self._kernel_cls()
        elif isinstance(kernel, type):
            kernel = kernel()
        else:
            import copy

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

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, dataset, select=None, threshold: float = 0.001):
        """Fit the estimator to a Dataset and return its result.

        Parameters
        ----------
        dataset : Dataset
            The experiments to analyse. Experiments without foci are left out, as NiMARE
            does.
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
        kernel = self._make_kernel()
        space = resolve_space(self.mask)
        dataset = self._select(dataset, select, threshold)
        plan = kernel.plan(dataset, space, self.mask_margin)
        self.kernel_ = kernel
        self.space_ = space
        self.dataset_ = dataset
        self.plan_ = plan
        self._prepare(dataset, plan)
        ma = plan_to_dask(plan, self.chunk_size)
        maps, nulls = self._fit_ma(ma)
        self.null_distributions_ = nulls
        return self._make_result(maps)

    def _select(self, dataset, select, threshold):
        from daskmeta.dataset import Dataset

        if not isinstance(dataset, Dataset):
            raise DaskmetaError(
                f"{type(self).__name__}.fit expects a daskmeta Dataset; got "
                f"{type(dataset).__name__} (read files with daskmeta.io.read)"
            )
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
        with_foci = dataset.experiments["id"].isin(set(dataset.foci["id"]))
        if not with_foci.any():
            raise DatasetError(
                f"empty selection: none of the {dataset.n_experiments} experiments has foci"
            )
        if not with_foci.all():
            dataset = dataset.slice(dataset.experiments["id"][with_foci])
        return dataset

    def _prepare(self, dataset, plan):
        """Per-fit state computed before the pass (weights, bins). Override as needed."""

    def _fit_ma(self, ma):
        """One pass over the MA matrix: per-block reductions, then combination."""
        blocks = ma.to_delayed().ravel()
        bounds = np.concatenate([[0], np.cumsum(ma.chunks[0])])
        reduce_block = dask.delayed(self._reduce_block, pure=True)
        partials = [reduce_block(b, slice(int(a), int(z)))
                    for b, a, z in zip(blocks, bounds[:-1], bounds[1:])]
        results = compute(*partials)
        return self._combine(list(results))

    def _reduce_block(self, block: np.ndarray, rows: slice):
        """Reduce one chunk (rows ``rows`` of the MA matrix) to small partial results."""
        raise NotImplementedError

    def _combine(self, partials):
        raise NotImplementedError

    # -- result ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """Parameters and provenance for result attributes."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k != "mask"}
        return {
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

    def _make_result(self, maps):
        from daskmeta.results import MetaResult

        return MetaResult(maps, self.space_, attrs=self.describe(), estimator=self,
                          null_distributions=self.null_distributions_)

