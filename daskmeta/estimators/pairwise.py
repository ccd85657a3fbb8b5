"""Coordinate-based estimators of two selections (contrasts): one pass, two weight rows.

A pairwise estimator (MKDA chi-square, ALE subtraction, ...) reduces two selections of
experiments: ``fit(dataset1, dataset2)`` as in NiMARE, or, from a Collection,
``fit(collection, select=EXPR)`` (the selection against the rest of the collection) and
``fit(collection, select=EXPR, select2=EXPR2)``. Both groups are rows of one sparse weight
matrix, so a contrast over a whole database is one pass over its store. Subclasses define
:meth:`PairwiseCBMAEstimator._finalize_pair`: the maps of the contrast from the two sums and
the two groups' row summaries (with the per-group hooks of
:class:`~daskmeta.estimators.cbma.CBMAEstimator`: ``_block_values``, ``_summaries_from_hist``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import dask
import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._pass import (
    KernelRows,
    StoredRows,
    describe_selection,
    has_foci,
    run_pass,
    selection_rows,
)
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.exceptions import DaskmetaError, DatasetError

__all__ = ["PairwiseCBMAEstimator"]


_PLANS: OrderedDict = OrderedDict()
_PLANS_LOCK = threading.Lock()
_MAX_PLANS = 4


def _collection_plan(collection, kernel, rows, whole: bool):
    """The pooled experiments' dataset and kernel plan of a contrast from a Collection,
    kept in memory per store build and rows (a contrast against the rest of a database
    pools every experiment: slicing and planning 500,000 foci again for each contrast would
    cost more than its pass)."""
    key = (collection.content_token(), dask.base.tokenize(rows))
    with _PLANS_LOCK:
        found = _PLANS.get(key)
        if found is not None:
            _PLANS.move_to_end(key)
            return found
    dataset = collection.dataset
    sub = dataset if whole else dataset.slice(dataset.experiments["id"].to_numpy()[rows])
    # The build already warned about the foci it dropped.
    plan = kernel.plan(sub, collection.space, collection.mask_margin, warn=False)
    with _PLANS_LOCK:
        _PLANS[key] = (sub, plan)
        while len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    return sub, plan


@fill_doc
class PairwiseCBMAEstimator(CBMAEstimator):
    """Base class of coordinate-based estimators comparing two groups of experiments.

    Parameters
    ----------
    kernel_transformer : Kernel or Kernel class, optional
    %(null_method)s
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
    """

    _fitted_marker = "plan_"
    #: Whether ``fit`` takes NiMARE's directional ``inference_map1`` / ``inference_map2``.
    _takes_inference_maps = False

    @fill_doc
    def fit(self, data, data2=None, select=None, select2=None,
            label_threshold: float = 0.001, inference_map1=None, inference_map2=None):
        """Fit the contrast of two groups of experiments.

        Parameters
        ----------
        data : Dataset or Collection
            The first group (a Dataset), or a Collection holding both groups.
        data2 : Dataset, optional
            The second group, when ``data`` is a Dataset.
        select : str or sequence of str, optional
            With a Collection: the first group (a label expression or ids).
        select2 : str or sequence of str, optional
            With a Collection: the second group; default, every other experiment of the
            collection that has foci.
        %(label_threshold)s
        inference_map1, inference_map2 : array or image, optional
            NiMARE's directional inference maps (estimators that take them): an in-mask
            vector or an image on the mask's grid; group 1 > group 2 effects are tested
            only where ``inference_map1 > 0``, group 2 > group 1 effects only where
            ``inference_map2 > 0``.

        Returns
        -------
        MetaResult
        """
        self._validate_params()
        from daskmeta.collection import Collection
        from daskmeta.dataset import Dataset

        given = inference_map1 is not None or inference_map2 is not None
        if given and not self._takes_inference_maps:
            raise DaskmetaError(f"{type(self).__name__}.fit takes no inference_map1/"
                                "inference_map2 (daskmeta implements them for MKDAChi2)")
        self._inference_inputs = (inference_map1, inference_map2)

        if isinstance(data, Dataset):
            if not isinstance(data2, Dataset):
                raise DaskmetaError(f"{type(self).__name__}.fit(dataset1, dataset2) needs two "
                                    f"Datasets; got {type(data2).__name__} as the second")
            if select is not None or select2 is not None:
                raise DaskmetaError("select/select2 apply to a Collection; slice the Datasets "
                                    "instead (Dataset.slice)")
            overlap = set(data.ids) & set(data2.ids)
            if overlap:
                raise DatasetError(
                    f"the two groups share {len(overlap)} experiment ids (e.g. "
                    f"{sorted(overlap)[0]!r}); give each experiment to one group")
            merged = data.merge(data2)
            return self._fit_pair(merged, list(data.ids), list(data2.ids), None, None,
                                  label_threshold)
        if isinstance(data, Collection):
            if data2 is not None:
                raise DaskmetaError("with a Collection, name the groups with select= and "
                                    "select2=, not a second data argument")
            if select is None:
                raise DaskmetaError(f"{type(self).__name__}.fit(collection) needs select= "
                                    "(the first group)")
            return self._fit_pair(data, select, select2, select, select2, label_threshold)
        raise DaskmetaError(
            f"{type(self).__name__}.fit expects two Datasets or a Collection; got "
            f"{type(data).__name__}"
        )

    def _pair_groups(self, data, select1, select2, label_threshold):
        """``(dataset, space, kernel, collection, rows1, rows2)``: the two groups' rows of
        the source's dataset (experiments with foci; group 2 defaults to the rest)."""
        dataset, space, kernel, collection = self._source(data)
        foci = has_foci(dataset)
        rows1 = selection_rows(dataset, select1, label_threshold, foci)
        if select2 is None:
            rest = foci.copy()
            rest[rows1] = False
            rows2 = np.flatnonzero(rest)
            if len(rows2) == 0:
                raise DatasetError("empty second group: no other experiment has foci")
        else:
            rows2 = selection_rows(dataset, select2, label_threshold, foci)
        if np.intersect1d(rows1, rows2).size:
            raise DatasetError("the two groups share experiments; give each experiment to "
                               "one group")
        return dataset, space, kernel, collection, rows1, rows2

    def _set_pair_state(self, dataset, space, kernel, collection, rows1, rows2, shown1,
                        shown2, label_threshold):
        """Fitted state of a contrast (pooled dataset in dataset order, its plan, group
        labels, selection provenance); returns ``(sub, plan, rows, in_first)``."""
        # Inference maps are read before any work: a map on another grid fails at once.
        self.inference_masks_ = self._inference_masks(space)
        rows = np.concatenate([rows1, rows2])
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        whole = len(rows) == dataset.n_experiments  # rows are then 0..n-1
        margin = self.mask_margin if collection is None else collection.mask_margin
        if collection is not None:
            sub, plan = _collection_plan(collection, kernel, rows, whole)
        else:
            sub = dataset if whole else dataset.slice(dataset.experiments["id"].to_numpy()[rows])
            plan = kernel.plan(sub, space, margin, warn=True)
        self.input_hash_ = (collection.attrs.get("dataset_fingerprint")
                            if collection is not None and whole else None)
        in_first = np.zeros(len(rows), dtype=bool)
        in_first[np.flatnonzero(order < len(rows1))] = True
        self.kernel_, self.space_, self.dataset_, self.plan_ = kernel, space, sub, plan
        self.collection_ = collection
        self.groups_ = (in_first, ~in_first)
        self.selection_ = {
            **{f"{k}1": v for k, v in describe_selection(shown1, label_threshold).items()},
            **{f"{k}2": v for k, v in describe_selection(shown2, label_threshold).items()},
        }
        return sub, plan, rows, in_first

    def _inference_masks(self, space) -> tuple:
        """``(group1, group2)``: boolean in-mask vectors where ``inference_map1`` /
        ``inference_map2`` (given to ``fit``) are > 0, or None for a map not given
        (NiMARE's ``_coerce_inference_map``: a 1-D vector of the mask's voxels, or an image
        on the mask's grid)."""
        out = []
        for label, value in zip(("inference_map1", "inference_map2"),
                                getattr(self, "_inference_inputs", (None, None)), strict=True):
            if value is None:
                out.append(None)
                continue
            if isinstance(value, str | os.PathLike) or hasattr(value, "affine"):
                values = space.from_img(value, name=label)
            else:
                try:
                    values = np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise DaskmetaError(f"{label} must be an in-mask vector or an image on "
                                        f"the mask's grid; got {type(value).__name__}") from exc
                if values.shape != (space.n_voxels,):
                    raise DaskmetaError(f"{label} has shape {values.shape}; the estimator's "
                                        f"mask has {space.n_voxels} voxels (give a 1-D "
                                        "in-mask vector or an image on the mask's grid)")
            out.append(np.asarray(values, dtype=np.float32) > 0)
        return tuple(out)

    def _fit_pair(self, data, select1, select2, shown1, shown2, label_threshold):
        dataset, space, kernel, collection, rows1, rows2 = self._pair_groups(
            data, select1, select2, label_threshold)
        sub, plan, rows, in_first = self._set_pair_state(
            dataset, space, kernel, collection, rows1, rows2, shown1, shown2, label_threshold)
        n_foci = np.diff(plan.row_start)
        self._prepare(sub.experiments, n_foci)
        weights = np.zeros((2, len(rows)))
        weights[0, in_first] = 1.0
        weights[1, ~in_first] = 1.0
        light = self._light_copy()
        if collection is None:
            source = KernelRows(plan, light._block_values, self._func_name(),
                                self._hist_inv_step(kernel))
            total, summaries = run_pass(source, np.arange(plan.n_rows), weights, light)
        else:
            store_rows = collection.row_indices(sub.ids)
            stored = self._stored_summaries(collection, store_rows, kernel)
            chunk = self._chunk_size()
            total, summaries = run_pass(StoredRows(collection, chunk), store_rows, weights,
                                        light, np.float64, with_summaries=stored is None,
                                        rows_per_task=chunk)
            summaries = summaries if stored is None else stored
        summaries1 = [s for s, g in zip(summaries, in_first) if g]
        summaries2 = [s for s, g in zip(summaries, in_first) if not g]
        maps, nulls = self._finalize_pair(total[0].astype(np.float64),
                                          total[1].astype(np.float64), summaries1, summaries2,
                                          plan.n_voxels)
        self.null_distributions_ = nulls
        return self._make_result(maps, nulls)

    def _finalize_pair(self, sum1, sum2, summaries1, summaries2, n_voxels: int):
        """Maps and null distributions of the contrast from the two groups' weighted sums
        (float64 over voxels) and row summaries (in group order)."""
        raise NotImplementedError

    def _null_model(self, sampler=None):
        raise DaskmetaError(
            f"Monte Carlo correction of {type(self).__name__} needs a label-permutation null, "
            "which this estimator does not define"
        )

    def describe(self) -> dict:
        out = super().describe()
        in_first = self.groups_[0]
        out.update({"n_experiments1": int(in_first.sum()),
                    "n_experiments2": int((~in_first).sum())})
        for group, found in zip((1, 2), getattr(self, "inference_masks_", (None, None)),
                                strict=True):
            if found is not None:
                out[f"inference_map{group}_voxels"] = int(found.sum())
        return out
