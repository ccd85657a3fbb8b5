"""ResampledStability: how often each voxel survives thresholding when the meta-analysis is
repeated on resampled subsets of its experiments (NiMARE 0.22.1's diagnostic, after JALE's
resampling, Frahm et al.).

Each resample is a row of the weight matrix of one pass over the fit's MA rows (combined
from its foci or read from its Collection): ``W @ f(MA)`` gives every resample's statistic at
once, ``group_size`` resamples per pass. A resample's statistic is converted to z against
the full fit's approximate null (as NiMARE and JALE do), thresholded at ``voxel_thresh``
(a p-value, default 0.001), its clusters (faces) larger than the cluster-size threshold
kept, and the stability map is the fraction of resamples in which each voxel survives.
"""

from __future__ import annotations

import numbers
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd
from scipy import ndimage

from daskmeta._stats import nullhist_maps
from daskmeta.diagnostics._base import DEFAULT_TARGET, fitted_estimator
from daskmeta.estimators.base import Estimator, non_negative, one_of, positive_int
from daskmeta.exceptions import DaskmetaError

__all__ = ["ResampledStability", "subset_schedule"]

_SIZE_NULL = "values_desc-size_level-cluster_corr-fwe_method-montecarlo"
#: NiMARE's cap on enumerating every subset.
EXHAUSTIVE_LIMIT = 1000


def subset_size(policy: str, total_n: int, k=None, target_n=None) -> int:
    """The experiments each resample keeps (NiMARE's ``resolve_subset_size``)."""
    if policy == "leave_1_out":
        return total_n - 1
    if policy == "leave_k_out":
        if k is None:
            raise DaskmetaError("ResampledStability: resampling_policy='leave_k_out' needs k")
        if not 0 < k < total_n:
            raise DaskmetaError(f"ResampledStability: k must be from 1 to {total_n - 1} (the "
                                f"result has {total_n} experiments); got {k!r}")
        return total_n - int(k)
    n = total_n if target_n is None else target_n
    if not 0 < n <= total_n:
        raise DaskmetaError(f"ResampledStability: target_n must be from 1 to {total_n}; got "
                            f"{n!r}")
    return int(n)


def subset_schedule(total_n: int, target_n: int, n_samples=None, random_state=None) -> list:
    """The resamples, as sorted row indices (NiMARE's ``generate_subset_schedule``: every
    leave-one-out subset; all combinations when there are at most 1000 and ``n_samples``
    allows; else ``n_samples`` distinct random subsets from ``RandomState(random_state)``,
    sorted)."""
    if target_n == total_n - 1:
        return [np.delete(np.arange(total_n), i) for i in range(total_n)]
    n_max = comb(total_n, target_n)
    if n_samples is None:
        if n_max > EXHAUSTIVE_LIMIT:
            raise DaskmetaError(
                f"ResampledStability: {n_max:,} subsets of {target_n} of {total_n} experiments "
                f"are too many to enumerate (more than {EXHAUSTIVE_LIMIT}); set n_resamples")
        n_samples = n_max
    n_samples = min(int(n_samples), n_max)
    if n_samples == n_max and n_max <= EXHAUSTIVE_LIMIT:
        return [np.asarray(c) for c in combinations(range(total_n), target_n)]
    rng = np.random.RandomState(random_state)
    subsets = set()
    while len(subsets) < n_samples:
        subsets.add(tuple(np.sort(rng.choice(total_n, size=target_n, replace=False))))
    return [np.asarray(s) for s in sorted(subsets)]


class ResampledStability(Estimator):
    """Voxel-wise stability of a thresholded meta-analysis under resampling of its
    experiments (NiMARE's ``ResampledStability``).

    Parameters
    ----------
    target_image : str
        Names the output (``<target_image>_diag-ResampledStability``), as NiMARE's.
    resampling_policy : {"subsample", "leave_1_out", "leave_k_out"}
        Resamples of ``target_n`` experiments (default all: every resample is the whole
        set unless ``target_n`` is smaller), every leave-one-out subset, or subsets without
        ``k`` experiments.
    k : int, optional
        Experiments left out per resample (``leave_k_out``).
    target_n : int, optional
        Experiments kept per resample (``subsample``).
    n_resamples : int, optional
        Resamples drawn (default: every subset, when there are at most 1000).
    random_state : int, optional
        Seed of the resample draw (NiMARE's schedule: same seed, same subsets).
    voxel_thresh : float, optional
        Cluster-forming p-value of each resample's z map (default 0.001).
    cluster_threshold : int, optional
        Clusters must have more voxels than this to count. Default: the ``1 - alpha``
        quantile of the result's Monte Carlo null of the largest cluster size (from
        ``FWECorrector(method="montecarlo")``).
    mask_coverage : {"gm", "brain"}
        Accepted for NiMARE compatibility (used only by NiMARE's own cluster-size null).
    alpha : float
        See ``cluster_threshold`` (0.05).
    n_cores : int
        Accepted for NiMARE compatibility (the active Dask client does the work).
    generate_description : bool
        Accepted for NiMARE compatibility.
    group_size : int
        Resamples summed per pass over the MA rows (each holds one map of float64 per
        voxel while its clusters are found).

    Notes
    -----
    Differs from NiMARE 0.22.1 in one place: NiMARE sets the cluster-size threshold by a
    new Monte Carlo null of random subsets of ``target_n`` experiments (its corrector's
    ``n_iters``, else 5000); daskmeta reads it from the result's own Monte Carlo
    cluster-size null (or takes ``cluster_threshold``). Given the same threshold, each
    resample's support is NiMARE's (see the tests).
    """

    _fitted_marker = "_never"
    _parameter_constraints = {
        "resampling_policy": (one_of("subsample", "leave_1_out", "leave_k_out"),
                              "'subsample', 'leave_1_out' or 'leave_k_out'"),
        "k": (lambda v: v is None or positive_int(v), "None or a positive integer"),
        "target_n": (lambda v: v is None or positive_int(v), "None or a positive integer"),
        "n_resamples": (lambda v: v is None or positive_int(v), "None or a positive integer"),
        "random_state": (lambda v: v is None or (isinstance(v, numbers.Integral)
                                                 and not isinstance(v, bool)
                                                 and 0 <= v < 2**32),
                         "None or an integer from 0 to 2**32 - 1"),
        "voxel_thresh": (lambda v: v is None or (non_negative(v) and 0 < v < 1),
                         "None or a p-value strictly between 0 and 1"),
        "cluster_threshold": (lambda v: v is None or non_negative(v),
                              "None or a number of voxels >= 0"),
        "mask_coverage": (one_of("gm", "brain"), "'gm' or 'brain'"),
        "alpha": (lambda v: non_negative(v) and 0 < v < 1, "strictly between 0 and 1"),
        "group_size": (positive_int, "a positive integer"),
    }

    def __init__(self, target_image=DEFAULT_TARGET, resampling_policy="subsample", k=None,
                 target_n=None, n_resamples=None, random_state=None, voxel_thresh=None,
                 cluster_threshold=None, mask_coverage="gm", alpha=0.05, n_cores=1,
                 generate_description=True, group_size=64):
        self.target_image = target_image
        self.resampling_policy = resampling_policy
        self.k = k
        self.target_n = target_n
        self.n_resamples = n_resamples
        self.random_state = random_state
        self.voxel_thresh = voxel_thresh
        self.cluster_threshold = cluster_threshold
        self.mask_coverage = mask_coverage
        self.alpha = alpha
        self.n_cores = n_cores
        self.generate_description = generate_description
        self.group_size = group_size

    def _size_threshold(self, result) -> float:
        if self.cluster_threshold is not None:
            return float(self.cluster_threshold)
        null = result.null_distributions.get(_SIZE_NULL)
        if null is None:
            raise DaskmetaError(
                "ResampledStability needs a cluster-size threshold: give cluster_threshold=, "
                "or a result corrected by FWECorrector(method='montecarlo') (its null of the "
                "largest cluster size sets it)")
        return float(np.percentile(null, 100.0 * (1.0 - self.alpha)))

    def transform(self, result):
        """Add ``<target_image>_diag-ResampledStability`` (the fraction of resamples in which
        each voxel survives) and its table ``..._tab-summary`` to a copy of ``result``.

        Parameters
        ----------
        result : MetaResult
            From an ALE, MKDADensity or KDA fit (from a Dataset or a Collection).

        Returns
        -------
        MetaResult

        Raises
        ------
        DaskmetaError
            For bad parameters, a result without its fitted estimator or approximate null,
            or a schedule too large to enumerate.
        """
        self._validate_params()
        est = fitted_estimator(result, "ResampledStability")
        nulls = dict(getattr(est, "null_distributions_", None) or {})
        nulls.update(result.null_distributions)
        bins = nulls.get("histogram_bins")
        hist = nulls.get("histweights_corr-none_method-approximate")
        if bins is None or hist is None:
            raise DaskmetaError("ResampledStability needs the fit's approximate null "
                                "('histogram_bins' and 'histweights_corr-none_method-"
                                "approximate')")
        n = est.plan_.n_rows
        target_n = subset_size(self.resampling_policy, n, self.k, self.target_n)
        schedule = subset_schedule(n, target_n, self.n_resamples, self.random_state)
        size_thr = self._size_threshold(result)
        from scipy.stats import norm  # on use: scipy.stats costs a command's start-up

        z_thr = norm.ppf(1 - (0.001 if self.voxel_thresh is None else self.voxel_thresh))
        base = np.asarray(est._selection_weights(n), dtype=np.float64)
        space = result.space
        volume = np.zeros(space.shape, dtype=np.float32)
        counts = np.zeros(space.n_voxels, dtype=np.int64)
        for g in range(0, len(schedule), self.group_size):
            group = schedule[g:g + self.group_size]
            weights = np.zeros((len(group), n))
            for r, rows in enumerate(group):
                w = base[rows]
                # (M)KDA weights are renormalised over the experiments kept, as a refit does.
                weights[r, rows] = w if np.all(w == 1) else w * (len(rows) / w.sum())
            totals, _ = est._sums(est.collection_, est.plan_, est.dataset_, weights)
            for total in totals:
                stat = est._stat(np.asarray(total, dtype=np.float64))
                z = nullhist_maps(stat, hist, bins)["z"].astype(np.float32)
                volume[space.mask] = z
                labels, n_lab = ndimage.label(volume > z_thr)
                if n_lab == 0:
                    continue
                sizes = np.bincount(labels[labels > 0])
                keep = (sizes > size_thr)[labels[space.mask]]
                counts += keep & (z > 0)
        stability = (counts / len(schedule)).astype(np.float32)
        name = f"{self.target_image}_diag-ResampledStability"
        out = result.copy()
        out.add_maps({name: stability})
        out.add_tables({f"{name}_tab-summary": pd.DataFrame([{
            "target_image": self.target_image, "resampling_policy": self.resampling_policy,
            "n_resamples": len(schedule), "target_n": target_n, "k": self.k,
            "random_state": self.random_state}])})
        return out
