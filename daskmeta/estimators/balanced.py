"""Balanced ALE subtraction (NiMARE 0.22's ``BalancedALESubtraction``, after JALE's balanced
contrast; Frahm et al.).

Both groups are subsampled to the same number of experiments (``target_n``), so the
difference of their ALE maps does not depend on group size:

- ``stat_desc-balancedGroup1MinusGroup2``: the mean over ``difference_iterations`` pairs of
  random ``target_n``-subsets (one from each group) of ``ALE(subset1) - ALE(subset2)``, on
  the voxels of the prior (``mask_coverage``; zero elsewhere);
- its ``p``/``z``/``logp``: against the ``n_iters`` minima and maxima of that mean balanced
  difference in null data sets (every focus moved to a random prior voxel, or the group
  labels permuted), thresholded at the ``alpha / 2`` extremes as NiMARE does;
- ``prob_desc-group1`` / ``group2``: the share of ``n_subsamples`` distinct
  ``target_n``-subsets of a group whose ALE survives cluster-level thresholding (cluster-forming
  ``voxel_thresh``, size threshold from ``n_iters`` random-foci subsets), and
  ``stat_desc-conjunction`` their minimum.

Every subset is a row of a 0/1 weight matrix over a group's experiments: the ALE maps of a
block of subsets are one product ``1 - exp(W @ log(1 - MA))`` with the group's MA rows read
once, never separate fits. Random draws follow NiMARE's ``numpy.random.RandomState``
sequences exactly (subset schedules, subsamples, random foci), drawn in the calling process;
the work on them runs in Dask tasks of fixed size, so the maps are identical on any number of
workers and, where NiMARE's arithmetic is the same, equal to NiMARE's.
"""

from __future__ import annotations

import numbers
import threading

import numpy as np
from scipy import ndimage

from daskmeta._docs import fill_doc
from daskmeta._stats import nullhist_maps, p_to_logp, p_to_z
from daskmeta.estimators.ale import ALE
from daskmeta.estimators.base import one_of, positive_int
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.kernels import DEFAULT_MASK_MARGIN, ALEKernel

__all__ = ["BalancedALESubtraction", "prior_voxels", "subset_schedule"]

#: Subsets whose ALE maps one product computes (rows of W): bounds a task's memory.
_BLOCK = 64
#: More distinct subsets than this are summed voxel by voxel (:func:`_column_ale_sum`).
_COLUMN_SUBSETS = 16
#: Iterations or subsets per Dask task.
_TASK = 16
_NAME = "balancedGroup1MinusGroup2"


def _p01(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and bool(0 < value < 1))


def _seed_ok(value) -> bool:
    return value is None or (isinstance(value, numbers.Integral)
                             and not isinstance(value, bool) and 0 <= value < 2**32 - 1)


def prior_voxels(space, mask_coverage: str) -> np.ndarray:
    """The prior over in-mask voxels: every one (``"brain"``), or those with MNI152 grey-matter
    probability above 0.1 (``"gm"``: nilearn's template resampled onto the mask's grid,
    continuously, as NiMARE does)."""
    if mask_coverage == "brain":
        return np.ones(space.n_voxels, dtype=bool)
    key = (space.mask_hash, mask_coverage)
    if key not in _PRIORS:
        _PRIORS[key] = _gm_prior(space)
    return _PRIORS[key].copy()


_PRIORS: dict = {}


def _gm_prior(space) -> np.ndarray:
    from nilearn import datasets
    from nilearn.image import resample_to_img

    gm = resample_to_img(datasets.load_mni152_gm_template(resolution=2), space.mask_img,
                         interpolation="continuous", force_resample=True, copy_header=True)
    return (np.asanyarray(gm.dataobj) > 0.1)[space.mask]


def subset_schedule(total_n: int, target_n: int, n_samples: int, seed) -> list[np.ndarray]:
    """Distinct ``target_n``-subsets of ``range(total_n)``, NiMARE's schedule
    (``generate_subset_schedule`` with an exhaustive limit of 10,000)."""
    from itertools import combinations

    from scipy.special import comb

    if target_n == total_n - 1:
        return [np.delete(np.arange(total_n), i) for i in range(total_n)]
    n_max = int(comb(total_n, target_n, exact=True))
    n_samples = min(int(n_samples), n_max)
    if n_samples == n_max and n_max <= 10000:
        return [np.asarray(c) for c in combinations(range(total_n), target_n)]
    rng = np.random.RandomState(seed)
    subsets: set = set()
    while len(subsets) < n_samples:
        subsets.add(tuple(np.sort(rng.choice(total_n, size=target_n, replace=False))))
    return [np.asarray(s) for s in sorted(subsets)]


# -- the work of tasks -------------------------------------------------------------------------
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _log_rows(plan, rows, prior, focus_ijk=None):
    """``log(1 - MA)`` (prior voxels) of ``rows`` of ``plan``: float64, or with the foci at
    ``focus_ijk`` float32 (random-foci nulls, whose sums are float32: the same values); the
    real rows are kept per process (tasks share them)."""

    if focus_ijk is not None:
        return _log_of(_moved(plan, focus_ijk), rows, prior, np.float32)
    key = (plan.token, rows.tobytes(), prior.tobytes())
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    out = _log_of(plan, rows, prior)
    with _CACHE_LOCK:
        _CACHE.clear()  # one group at a time is enough
        _CACHE[key] = out
    return out


def _moved(plan, focus_ijk):
    """``plan`` with its foci at ``focus_ijk`` (same supports: their token is kept)."""
    from dataclasses import replace

    moved = replace(plan, focus_ijk=focus_ijk)
    moved.__dict__["_support_token"] = plan.support_token
    return moved


def _ma_rows(plan, rows):
    """Dense float32 MA rows ``rows`` of ``plan`` (the compiled combine of fits and nulls)."""
    from scipy import sparse

    from daskmeta._combine import combine_rows, identity
    from daskmeta.kernels import MA_DTYPE

    rows = np.asarray(rows, dtype=np.int64)
    each = sparse.identity(len(rows), format="csc")
    out, _, _ = combine_rows(plan, rows, identity, "identity", each, MA_DTYPE)
    return out


def _log_of(plan, rows, prior, dtype=np.float64):
    ma = _ma_rows(plan, rows)
    if not prior.all():
        ma = ma[:, prior]
    np.log1p(np.negative(ma, out=ma), out=ma)  # float32, as np.log1p(-ma)
    return ma.astype(dtype, copy=False)


def _ale_of_subsets(logs, subsets):
    """ALE maps (rows) of subsets (rows of indices into ``logs``), blocks of one product,
    in ``logs``' precision."""
    n = logs.shape[0]
    for a in range(0, len(subsets), _BLOCK):
        block = subsets[a:a + _BLOCK]
        w = np.zeros((len(block), n), dtype=logs.dtype)
        w[np.repeat(np.arange(len(block)), block.shape[1]), block.ravel()] = 1.0
        s = w @ logs
        np.exp(s, out=s)
        yield (1.0 - s).astype(np.float32, copy=False)


def _mean_difference(logs1, logs2, idx1, idx2):
    """Sum over pairs of ``ALE(logs1[idx1[d]]) - ALE(logs2[idx2[d]])``: float32 products and
    exponentials (NiMARE's precision), float64 sums. Each distinct subset's ALE map is
    computed once and counted as often as it is drawn (the smaller group's subsets are all
    the same set when ``target_n`` is its size, NiMARE's default)."""
    logs1 = logs1.astype(np.float32, copy=False)
    logs2 = logs2.astype(np.float32, copy=False)
    return _counted_ale_sum(logs1, idx1) - _counted_ale_sum(logs2, idx2)


def _counted_ale_sum(logs, subsets):
    """``sum_d ALE(logs[subsets[d]])`` (float64) over the distinct subsets, each ALE map
    (float32) times its count: the sum of its copies, exactly (a float32 times a count below
    2**29 is exact in float64). Many distinct subsets are summed voxel by voxel
    (:func:`_column_ale_sum`)."""
    subsets = np.sort(np.asarray(subsets), axis=1)
    distinct, counts = np.unique(subsets, axis=0, return_counts=True)
    if len(distinct) > _COLUMN_SUBSETS:
        return _column_ale_sum(logs, distinct, counts)
    total = np.zeros(logs.shape[1], dtype=np.float64)
    for a, ale in zip(range(0, len(distinct), _BLOCK), _ale_of_subsets(logs, distinct),
                      strict=True):
        weights = counts[a:a + _BLOCK].astype(np.float64)[:, None]
        # rows added in order (a reduction over the outer axis): the same bits on any BLAS
        total += (ale.astype(np.float64) * weights).sum(axis=0)
    return total


def _column_ale_sum(logs, subsets, counts):
    """:func:`_counted_ale_sum` of many subsets: each voxel's log-sums of every subset in one
    pass over the voxel's non-zero entries (float64, rounded to float32: NiMARE's float32
    precision, where the product path sums in float32), then float32 exponentials, weighted
    by the counts; voxels no row touches add nothing (their ALE is 0)."""
    from daskmeta.montecarlo._packed import column_sums

    n, n_vox = logs.shape
    voxels, rows = np.nonzero(logs.T)  # voxel-major, rows ascending within a voxel
    vals = logs.T[voxels, rows].astype(np.float32)
    active, col_counts = np.unique(voxels, return_counts=True)
    col_ptr = np.zeros(len(active) + 1, dtype=np.int64)
    np.cumsum(col_counts, out=col_ptr[1:])
    columns = (col_ptr, rows.astype(np.int32), vals)
    g = np.zeros((n, len(subsets)))
    g[subsets.ravel(), np.repeat(np.arange(len(subsets)), subsets.shape[1])] = 1.0
    weights = counts.astype(np.float64)
    total = np.zeros(n_vox, dtype=np.float64)
    tile = max(16, (1 << 20) // len(subsets))
    buf = np.empty(tile * len(subsets))
    for v0 in range(0, len(active), tile):
        nv = min(tile, len(active) - v0)
        sums = column_sums(columns, g, v0, buf[:nv * len(subsets)].reshape(nv, -1))
        ale = sums.astype(np.float32)
        np.exp(ale, out=ale)
        np.subtract(np.float32(1.0), ale, out=ale)
        total[active[v0:v0 + nv]] = (ale.astype(np.float64) * weights).sum(axis=1)
    return total


def _cluster_z(z, space_mask, voxel_thresh, size_threshold=None, ijk=None):
    """NiMARE's ``_threshold_z_clusters``: (z kept in clusters larger than the threshold, the
    largest cluster's size), clusters face-connected above ``norm.ppf(1 - voxel_thresh)``.
    The labelling runs on the bounding box of the voxels above the threshold (``ijk``: the
    in-mask voxels' indices, ``np.argwhere(space_mask)``): the same clusters, numbered in
    the same (raster) order."""
    z = np.asarray(z, dtype=np.float32)
    from scipy.stats import norm  # on use: scipy.stats costs a command's start-up

    supra = z > norm.ppf(1 - voxel_thresh)
    idx = np.flatnonzero(supra)
    if idx.size == 0:
        return np.zeros_like(z), 0
    if ijk is None:
        ijk = np.argwhere(space_mask)
    at = ijk[idx]
    at = at - at.min(axis=0)
    box = np.zeros(tuple(at.max(axis=0) + 1), dtype=bool)
    pos = tuple(at.T)
    box[pos] = True
    labels, _ = ndimage.label(box)
    lab = labels[pos]
    sizes = np.bincount(lab)
    sizes[0] = 0
    if size_threshold is not None:
        keep = sizes > size_threshold
        keep[0] = False
        full = np.zeros(z.shape, dtype=np.int64)
        full[idx] = lab
        z = z * keep[full]
    return z, int(sizes.max())


def _z_of(ale, summaries, n_voxels):
    """Approximate-null z of an ALE map (in-mask vector) from its experiments' summaries."""
    est = ALE()
    bins, hist = est._null(summaries, n_voxels)
    return nullhist_maps(ale, hist, bins)["z"]


def _group_task(job, kind, items):
    """A task of a group's probability map: ``kind`` "null" (max cluster sizes of random-foci
    subsets) or "prob" (surviving voxel counts of real subsets)."""
    plan, rows, space_mask, prior, summaries = (job["plan"], job["rows"], job["mask"],
                                                job["prior_all"], job["summaries"])
    n_vox = int(space_mask.sum())
    mask_ijk = np.argwhere(space_mask)  # once per task (shipping it would double the job)
    if kind == "null":
        sizes = []
        for subset, ijk in items:
            ma = _ma_rows(_moved(plan, ijk), rows[subset])
            sums = ALE()._row_summaries(ma)
            ale = (1.0 - np.exp(np.log1p(-ma).sum(axis=0, dtype=np.float64))).astype(
                np.float32)
            _, size = _cluster_z(_z_of(ale, sums, n_vox), space_mask, job["voxel_thresh"],
                                 ijk=mask_ijk)
            sizes.append(size)
        return np.asarray(sizes, dtype=np.int64)
    logs = _log_rows(plan, rows, prior)
    counts = np.zeros(n_vox, dtype=np.int64)
    subsets = np.asarray(items)
    for a, ale in zip(range(0, len(subsets), _BLOCK), _ale_of_subsets(logs, subsets),
                      strict=True):
        for s, row in zip(subsets[a:a + _BLOCK], ale, strict=True):
            z = _z_of(row, [summaries[i] for i in s], n_vox)
            kept, _ = _cluster_z(z, space_mask, job["voxel_thresh"], job["size_threshold"],
                                 mask_ijk)
            counts += kept > 0
    return counts


def _null_task(job, items):
    """Minima and maxima of the mean balanced difference of null data sets."""
    plan, rows1, rows2, prior = job["plan"], job["rows1"], job["rows2"], job["prior"]
    out = np.zeros((len(items), 2))
    for i, (ijk, perm, idx1, idx2) in enumerate(items):
        if ijk is not None:  # random foci
            logs1 = _log_rows(plan, rows1, prior, ijk)
            logs2 = _log_rows(plan, rows2, prior, ijk)
        else:  # permuted labels: subsets of the pooled real rows
            pooled = np.concatenate([rows1, rows2])
            logs = _log_rows(plan, pooled, prior)
            n1 = len(rows1)
            logs1, logs2 = logs, logs
            idx1, idx2 = perm[:n1][idx1], perm[n1:][idx2]
        diff = _mean_difference(logs1, logs2, idx1, idx2) / len(idx1)
        diff = diff.astype(np.float32)
        out[i] = float(diff.min()), float(diff.max())
    return out


def _chunks(items, size=_TASK):
    return [items[a:a + size] for a in range(0, len(items), size)]


def _run(func, job, chunks):
    """``[func(job, chunk) for chunk in chunks]`` as Dask tasks (the job shipped once)."""
    import dask

    from daskmeta.cluster import compute

    if len(chunks) <= 1:
        return [func(job, c) for c in chunks]
    job_d = dask.delayed(job, traverse=False)
    call = dask.delayed(func, pure=True)
    return list(compute(*[call(job_d, c) for c in chunks]))


@fill_doc
class BalancedALESubtraction(PairwiseCBMAEstimator, ALE):
    """Balanced ALE subtraction with matched-size subsampling (NiMARE 0.22's).

    ``fit(dataset1, dataset2)``, or ``fit(collection, select=..., select2=...)``. Maps:
    ``stat_desc-balancedGroup1MinusGroup2`` and its ``p_``, ``z_`` and ``logp_`` maps,
    ``prob_desc-group1``, ``prob_desc-group2`` and ``stat_desc-conjunction`` (see the
    module's description); null distributions ``values_desc-balancedMinNull_corr-none`` and
    ``values_desc-balancedMaxNull_corr-none``.

    Parameters
    ----------
    kernel_transformer : ALEKernel, optional
    target_n : int, optional
        Experiments per subsample (default: the smaller group's size).
    n_subsamples : int
        Distinct subsamples per group of the probability maps (2500).
    difference_iterations : int
        Subsample pairs averaged in the balanced difference (1000).
    n_iters : int
        Null data sets, for the balanced difference and for each group's cluster-size
        threshold (1000).
    voxel_thresh : float
        Cluster-forming p of the probability maps (0.001).
    null_method : {"random-foci", "label-permutation"}
        Null of the balanced difference: every focus moved to a random prior voxel (default),
        or the experiments' group labels permuted.
    mask_coverage : {"gm", "brain"}
        The prior: voxels with MNI152 grey-matter probability > 0.1 in the mask (default),
        or the whole mask.
    alpha : float
        FWE level of the cluster-size threshold and of the difference's extreme thresholds.
    random_state : int, optional
        Seed of every draw (NiMARE's name and sequences; the second group's probability map
        uses ``random_state + 1``). None draws one and records it (``balanced_seed``).
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
    """

    _kernel_cls = ALEKernel
    _null_methods = ("random-foci", "label-permutation")
    _parameter_constraints = {
        "target_n": (lambda v: v is None or positive_int(v), "None or a positive integer"),
        "n_subsamples": (positive_int, "a positive integer"),
        "difference_iterations": (positive_int, "a positive integer"),
        "n_iters": (positive_int, "a positive integer"),
        "voxel_thresh": (_p01, "a p-value strictly between 0 and 1"),
        "mask_coverage": (one_of("gm", "brain"), "'gm' or 'brain'"),
        "alpha": (_p01, "a number strictly between 0 and 1"),
        "random_state": (_seed_ok, "None or an integer from 0 to 2**32 - 2"),
    }

    def __init__(self, kernel_transformer=None, target_n=None, n_subsamples=2500,
                 difference_iterations=1000, n_iters=1000, voxel_thresh=0.001,
                 null_method="random-foci", mask_coverage="gm", alpha=0.05, random_state=None,
                 mask=None, mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None, **kwargs):
        super().__init__(kernel_transformer=kernel_transformer, null_method=null_method,
                         mask=mask, mask_margin=mask_margin, chunk_size=chunk_size, **kwargs)
        self.target_n = target_n
        self.n_subsamples = n_subsamples
        self.difference_iterations = difference_iterations
        self.n_iters = n_iters
        self.voxel_thresh = voxel_thresh
        self.mask_coverage = mask_coverage
        self.alpha = alpha
        self.random_state = random_state

    def _finalize_pair(self, sum1, sum2, summaries1, summaries2, n_voxels):
        plan, space = self.plan_, self.space_
        in_first = self.groups_[0]
        rows1, rows2 = np.flatnonzero(in_first), np.flatnonzero(~in_first)
        n1, n2 = len(rows1), len(rows2)
        target_n = self.target_n or min(n1, n2)
        if not 0 < target_n <= min(n1, n2):
            raise DatasetError(f"{type(self).__name__}: target_n must be between 1 and the "
                               f"smaller group's size ({min(n1, n2)}); got {target_n}")
        seed = self.random_state
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**32 - 1))
        self.seed_, self.target_n_ = int(seed), int(target_n)
        prior = prior_voxels(space, self.mask_coverage)
        if not prior.any():
            raise DaskmetaError("the prior (mask_coverage) holds no voxel of the mask")
        space_mask = space.mask
        ijk_space = np.argwhere(_full(space, prior))  # C order, as NiMARE's sample space
        n_foci = np.diff(plan.row_start)
        prob1 = self._probability(plan, rows1, summaries1, target_n, seed, ijk_space,
                                  n_foci, space_mask)
        prob2 = self._probability(plan, rows2, summaries2, target_n, seed + 1, ijk_space,
                                  n_foci, space_mask)
        rng = np.random.RandomState(seed)
        d = int(self.difference_iterations)
        idx1, idx2 = _pairs(rng, n1, n2, target_n, d)
        logs1 = _log_rows(plan, rows1, prior)
        logs2 = _log_rows(plan, rows2, prior)
        observed = np.zeros(n_voxels, dtype=np.float32)
        observed[prior] = (_mean_difference(logs1, logs2, idx1, idx2) / d).astype(np.float32)
        items = []
        for _ in range(int(self.n_iters)):
            if self.null_method == "random-foci":
                ijk = plan.focus_ijk.copy()
                for r in np.concatenate([rows1, rows2]):
                    a, b = plan.row_start[r], plan.row_start[r + 1]
                    ijk[a:b] = ijk_space[rng.randint(0, len(ijk_space), size=int(b - a))]
                perm = None
            else:
                ijk, perm = None, rng.permutation(n1 + n2)
            p1, p2 = _pairs(rng, n1, n2, target_n, d)
            items.append((ijk, perm, p1, p2))
        job = {"plan": plan, "rows1": rows1, "rows2": rows2, "prior": prior}
        extrema = np.concatenate(_run(_null_task, job, _chunks(items, 4)))
        min_null = extrema[:, 0].astype(np.float32)
        max_null = extrema[:, 1].astype(np.float32)
        maps = _difference_maps(observed, min_null, max_null, self.alpha, int(self.n_iters))
        maps.update({"stat_desc-conjunction": np.minimum(prob1, prob2).astype(np.float32),
                     "prob_desc-group1": prob1, "prob_desc-group2": prob2})
        with _CACHE_LOCK:
            _CACHE.clear()  # the groups' log(1 - MA) rows: not kept after the fit
        nulls = {"values_desc-balancedMinNull_corr-none": min_null,
                 "values_desc-balancedMaxNull_corr-none": max_null}
        return maps, nulls

    def _probability(self, plan, rows, summaries, target_n, seed, ijk_space, n_foci,
                     space_mask):
        """NiMARE's ``_probabilistic_map`` of one group."""
        rng = np.random.RandomState(seed)
        n = len(rows)
        draws = []
        for _ in range(int(self.n_iters)):
            subset = rng.permutation(n)[:target_n] if target_n < n else np.arange(n)
            ijk = plan.focus_ijk.copy()
            for r in rows[subset]:
                a, b = plan.row_start[r], plan.row_start[r + 1]
                ijk[a:b] = ijk_space[rng.randint(0, len(ijk_space), size=int(n_foci[r]))]
            draws.append((subset, ijk))
        all_voxels = np.ones(int(space_mask.sum()), dtype=bool)
        job = {"plan": plan, "rows": rows, "mask": space_mask, "prior_all": all_voxels,
               "summaries": summaries, "voxel_thresh": float(self.voxel_thresh),
               "size_threshold": None}
        sizes = np.concatenate(_run(_group_task_null, job, _chunks(draws)))
        job["size_threshold"] = float(np.percentile(sizes, 100.0 * (1.0 - self.alpha)))
        subsets = subset_schedule(n, target_n, int(self.n_subsamples), seed)
        counts = sum(_run(_group_task_prob, job, _chunks(subsets, _BLOCK)))
        return (counts / len(subsets)).astype(np.float32)

    def fit_many(self, *args, **kwargs):
        """Not available: each BalancedALESubtraction fit runs its own null; call ``fit`` per selection."""
        raise DaskmetaError(f"{type(self).__name__}.fit_many is not available; call fit once "
                            "per selection")

    def describe(self) -> dict:
        out = super().describe()
        out.update({"balanced_seed": getattr(self, "seed_", None),
                    "balanced_target_n": getattr(self, "target_n_", None)})
        return out


def _group_task_null(job, items):
    return _group_task(job, "null", items)


def _group_task_prob(job, items):
    return _group_task(job, "prob", items)


def _full(space, vector):
    vol = np.zeros(space.shape, dtype=bool)
    vol[space.mask] = vector
    return vol


def _pairs(rng, n1, n2, target_n, d):
    """``d`` pairs of subsets, drawn as NiMARE draws them (alternating groups)."""
    idx1 = np.empty((d, target_n), dtype=np.int32)
    idx2 = np.empty((d, target_n), dtype=np.int32)
    for i in range(d):
        # RandomState.choice(n, k, replace=False) is permutation(n)[:k]: the same draws
        idx1[i] = rng.permutation(n1)[:target_n]
        idx2[i] = rng.permutation(n2)[:target_n]
    return idx1, idx2


def _difference_maps(observed, min_null, max_null, alpha, n_iters):
    """NiMARE's p, z and logp of the balanced difference against the null extremes."""
    low = np.percentile(min_null, 100.0 * alpha / 2.0)
    high = np.percentile(max_null, 100.0 * (1.0 - alpha / 2.0))
    smallest = 1.0 / float(n_iters)
    p = np.ones(observed.shape[0], dtype=np.float32)
    z = np.zeros(observed.shape[0], dtype=np.float32)
    pos = np.flatnonzero(observed > high)
    neg = np.flatnonzero(observed < low)
    srt_max = np.sort(max_null)
    srt_min = np.sort(min_null)
    if pos.size:
        # mean(max_null >= diff), by sorted search (NiMARE loops over voxels)
        frac = (len(srt_max) - np.searchsorted(srt_max, observed[pos], side="left"))
        p_pos = np.maximum(smallest, (frac / len(srt_max)).astype(np.float32))
        p[pos] = p_pos
        z[pos] = p_to_z(p_pos, tail="one")
    if neg.size:
        frac = np.searchsorted(srt_min, observed[neg], side="right")
        p_neg = np.maximum(smallest, (frac / len(srt_min)).astype(np.float32))
        p[neg] = np.minimum(p[neg], p_neg)
        z[neg] = -p_to_z(p_neg, tail="one")
    return {f"stat_desc-{_NAME}": observed, f"p_desc-{_NAME}": p, f"z_desc-{_NAME}": z,
            f"logp_desc-{_NAME}": p_to_logp(p)}
