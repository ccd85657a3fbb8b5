"""ALESubtraction's directional inference maps (NiMARE 0.22.1's ``fit(...,
inference_map1=, inference_map2=)`` and ``restrict_to_inference_mask``).

With inference maps the difference is tested one-sided: group 1 > group 2 only where
``inference_map1 > 0`` and the difference is positive (p = the fraction of permutations
whose difference is >= the observed, at least ``1 / n_iters``), group 2 > group 1 only where
``inference_map2 > 0`` and it is negative (<=); elsewhere p is 1 and z 0; z is the
one-tailed z with the side's sign. With ``restrict_to_inference_mask`` the permutation nulls
(maximum absolute difference, the cluster-forming threshold's quantile and the cluster
maxima) are taken over the union of the two maps' voxels only (:class:`RestrictedNull`,
:class:`RestrictedClusters`).
"""

from __future__ import annotations

import numpy as np

from daskmeta.exceptions import DaskmetaError
from daskmeta.montecarlo.models import Summary
from daskmeta.montecarlo.permutation import TwoSidedClusterMaxima

__all__ = ["RestrictedClusters", "RestrictedNull", "directional_p", "inference_union"]


def inference_union(group1, group2):
    """Indices of the in-mask voxels in either map (None when neither is given)."""
    if group1 is None and group2 is None:
        return None
    union = np.zeros((group1 if group1 is not None else group2).shape, dtype=bool)
    for found in (group1, group2):
        if found is not None:
            union |= found
    if not union.any():
        raise DaskmetaError("ALESubtraction's directional inference needs at least one voxel "
                            "> 0 in inference_map1 or inference_map2; both are empty")
    return np.flatnonzero(union)


def directional_p(diff, upper, lower, n_iters, group1, group2):
    """NiMARE's ``_finalize_masked_alediff_tail_counts``: one-sided p (float32) and sign."""
    diff = np.asarray(diff)
    smallest = 1.0 / n_iters
    p = np.ones(diff.shape[0], dtype=np.float32)
    sign = np.zeros(diff.shape[0], dtype=np.float32)
    if group1 is not None:
        pos = group1 & (diff > 0)
        p[pos] = np.maximum(smallest, upper[pos] / n_iters).astype(np.float32)
        sign[pos] = 1
    if group2 is not None:
        neg = group2 & (diff < 0)
        p[neg] = np.maximum(smallest, lower[neg] / n_iters).astype(np.float32)
        sign[neg] = -1
    return p, sign


class RestrictedNull(Summary):
    """A :class:`~daskmeta.estimators.subtraction.SubtractionNull` (``inner``, built on the
    observed difference at the voxels ``union``) applied to those voxels only: its counts
    have one entry per voxel of ``union`` (see :meth:`full_counts`)."""

    def __init__(self, inner, union):
        self.inner = inner
        self.union = np.asarray(union, dtype=np.int64)
        self.keys = inner.keys
        self.per_iteration = inner.per_iteration
        self.summed_keys = inner.summed_keys
        self.early_stop_keys = inner.early_stop_keys

    def _token_parts(self):
        return (self.inner.token, self.union)

    def start(self, n_iters, n_voxels):
        return self.inner.start(n_iters, len(self.union))

    def record(self, out, i, stat, geometry):
        self.inner.record(out, i, np.asarray(stat)[self.union], geometry)

    def full_counts(self, values, n_voxels: int):
        """The run's ``(upper, lower)`` counts over all in-mask voxels (0 outside)."""
        out = []
        for key in ("upper", "lower"):
            full = np.zeros(n_voxels, dtype=np.int64)
            full[self.union] = values[key]
            out.append(full)
        return tuple(out)


class RestrictedClusters(TwoSidedClusterMaxima):
    """Two-sided cluster maxima of the difference with every voxel outside ``union`` set to
    0 (NiMARE's restricted cluster nulls)."""

    def __init__(self, threshold: float, union):
        super().__init__(threshold)
        self.union = np.asarray(union, dtype=np.int64)

    def _token_parts(self):
        return (*super()._token_parts(), "restricted", self.union)

    def record(self, out, i, stat, geometry):
        kept = np.zeros(np.shape(stat), dtype=np.float32)
        kept[self.union] = np.asarray(stat)[self.union]
        super().record(out, i, kept, geometry)
