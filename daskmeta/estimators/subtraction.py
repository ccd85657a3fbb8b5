"""ALE subtraction (Laird et al., 2005; Eickhoff et al., 2012), NiMARE 0.22.1's version.

:class:`ALESubtraction` computes both groups' ALE maps in one pass (two weight rows), their
difference ``stat_desc-group1MinusGroup2`` and each group's uncorrected one-sample maps
(``{stat,p,z,logp}_desc-group{1,2}``, NiMARE's approximate null), and tests the difference
voxel by voxel against NiMARE's label-permutation null: the pooled experiments dealt at
random into groups of the observed sizes, ``n_iters`` times, as seeded Dask batches
(:mod:`daskmeta.montecarlo.permutation`; identical on any number of workers). Each
permutation sums the MA rows (``log1p(-MA)``) of the smaller permuted group only; the other
group's sum is the pooled total minus it.

The permutations also record the maximum absolute difference (voxel-level FWE) and, with
``vfwe_only=False``, the cluster-level nulls of the difference map as NiMARE 0.22.1 does:
the cluster-forming threshold is the ``1 - voxel_thresh`` quantile of the absolute
permuted differences over all iterations and voxels (from a histogram of bins of 1e-6,
where NiMARE keeps every permuted map), and a second run of the same seeded permutations
records the largest positive or negative face-connected cluster's size and mass
(``sum(|diff| - threshold)``). ``FWECorrector(method="montecarlo")`` turns the nulls into
NiMARE's corrected maps.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from daskmeta._docs import fill_doc
from daskmeta._numba_cache import compiled
from daskmeta.estimators.ale import ALE
from daskmeta.estimators.base import positive_int
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import DEFAULT_MASK_MARGIN, ALEKernel
from daskmeta.montecarlo.models import Summary

__all__ = ["ALESubtraction", "AleDifference", "SubtractionNull", "two_sided_cluster_p"]

_DIFF = "group1MinusGroup2"
_VOXEL_NULL = "values_level-voxel_corr-fwe_method-montecarlo"
_SIZE_NULL = "values_desc-size_level-cluster_corr-fwe_method-montecarlo"
_MASS_NULL = "values_desc-mass_level-cluster_corr-fwe_method-montecarlo"
_THRESH = "summary_stat_thresh_level-voxel_corr-fwe_method-montecarlo"
#: Width of the bins of the histogram of absolute permuted differences (the cluster-forming
#: threshold is its quantile).
_HIST_STEP = 1e-6
_FACES = ndimage.generate_binary_structure(3, 1)


class AleDifference:
    """The permutation statistic of ALE subtraction: ``ALE(group 1) - ALE(group 2)`` from
    the groups' sums of ``log1p(-MA)`` (float64, as NiMARE's permuted differences)."""

    token = "ale-difference"

    def __call__(self, sum1, sum2, n1, n2):
        return (1.0 - np.exp(sum1)) - (1.0 - np.exp(sum2))

    @staticmethod
    def empty(n_voxels: int) -> np.ndarray:
        return np.zeros((2, n_voxels))

    def into(self, sum1, sum2, n1, n2, buf):
        """:meth:`__call__` in ``buf`` (from :meth:`empty`), allocating nothing."""
        a, b = buf
        np.exp(sum1, out=a)
        np.subtract(1.0, a, out=a)
        np.exp(sum2, out=b)
        np.subtract(1.0, b, out=b)
        np.subtract(a, b, out=a)
        return a

    def block_into(self, small, total, small_is_first, buf):
        """:meth:`__call__` of a tile for a block of permutations (see
        :class:`~daskmeta.montecarlo.permutation.PairStatistic`), in ``small``."""
        np.subtract(total[:, None], small, out=buf)
        s1, s2 = (small, buf) if small_is_first else (buf, small)
        for s in (s1, s2):
            np.exp(s, out=s)
            np.subtract(1.0, s, out=s)
        np.subtract(s1, s2, out=s1)
        return s1


class SubtractionNull(Summary):
    """What each permutation of an ALE subtraction records: per voxel, the iterations whose
    difference is >= and <= the observed one (summed); the maximum absolute difference; and
    (``hist=True``) a histogram of the absolute differences (summed)."""

    per_iteration = True
    early_stop_keys = ()

    def __init__(self, observed, hist: bool):
        self.observed = np.asarray(observed, dtype=np.float32)
        self.hist = bool(hist)
        self.keys = ("upper", "lower", "max_abs") + (("abs_hist",) if hist else ())
        self.summed_keys = ("upper", "lower") + (("abs_hist",) if hist else ())

    def _token_parts(self):
        return (self.observed, self.hist)

    def start(self, n_iters, n_voxels):
        out = {"upper": np.zeros(n_voxels, dtype=np.int64),
               "lower": np.zeros(n_voxels, dtype=np.int64),
               "max_abs": np.zeros(n_iters, dtype=np.float32)}
        if self.hist:
            out["abs_hist"] = np.zeros(int(round(1 / _HIST_STEP)) + 2, dtype=np.int64)
        return out

    def record(self, out, i, stat, geometry):
        hist = out["abs_hist"] if self.hist else out["upper"][:0]
        out["max_abs"][i] = _record_difference(np.asarray(stat, dtype=np.float64),
                                               self.observed, out["upper"], out["lower"],
                                               hist, self.hist)

    def record_block(self, out, i0, stat, v0):
        """:meth:`record` of iterations ``i0, i0 + 1, ...`` (the columns of ``stat``) over
        voxels ``v0, v0 + 1, ...`` (its rows): the same counts, histogram and maxima."""
        v1 = v0 + stat.shape[0]
        hist = out["abs_hist"] if self.hist else out["upper"][:0]
        _record_block(stat, self.observed[v0:v1], out["upper"][v0:v1], out["lower"][v0:v1],
                      hist, self.hist, out["max_abs"][i0:i0 + stat.shape[1]])


@compiled(nogil=True)
def _record_block(stat, observed, upper, lower, hist, with_hist, top):
    """:func:`_record_difference` of a (voxels, iterations) tile; ``top`` (float32 per
    iteration) is raised to each iteration's maximum |difference| over the tile (the float32
    of the float64 maximum: rounding is monotonic, so the same value)."""
    last = hist.shape[0] - 1
    n_i = stat.shape[1]
    high = np.zeros(n_i)
    for v in range(stat.shape[0]):
        o = np.float64(observed[v])
        up = 0
        low = 0
        row = stat[v]
        for i in range(n_i):
            d = row[i]
            up += d >= o
            low += d <= o
            high[i] = max(high[i], abs(d))
        upper[v] += up
        lower[v] += low
        if with_hist:
            for i in range(n_i):
                b = int(np.float64(np.float32(abs(row[i]))) / _HIST_STEP)
                hist[min(b, last)] += 1
    for i in range(n_i):
        top[i] = max(top[i], np.float32(high[i]))


@compiled(nogil=True)
def _record_difference(stat, observed, upper, lower, hist, with_hist):
    """One permutation of :class:`SubtractionNull`: counts where the difference is >= and <=
    the observed (float32, compared in float64 as NumPy does), the histogram of |difference|
    as float32 on bins of :data:`_HIST_STEP` (the last bin takes the rest); returns the
    maximum |difference| (float32)."""
    top = np.float32(0.0)
    last = hist.shape[0] - 1
    for v in range(stat.shape[0]):
        d = stat[v]
        o = np.float64(observed[v])
        if d >= o:
            upper[v] += 1
        if d <= o:
            lower[v] += 1
        a = np.float32(abs(d))
        if a > top:
            top = a
        if with_hist:
            b = int(np.float64(a) / _HIST_STEP)
            hist[min(b, last)] += 1
    return top


def _hist_quantile(hist: np.ndarray, q: float) -> float:
    """NiMARE's ``np.quantile(values, q)`` (linear) of values known only by their histogram on
    bins of :data:`_HIST_STEP`: the two order statistics it interpolates are placed at the
    centres of their bins (accurate to half a bin, 5e-7)."""
    n = int(hist.sum())
    if n == 0:
        return 0.0
    pos = q * (n - 1)
    lo, frac = int(np.floor(pos)), pos - np.floor(pos)
    cum = np.cumsum(hist)
    b_lo = int(np.searchsorted(cum, lo + 1))
    b_hi = int(np.searchsorted(cum, min(lo + 2, n)))
    centre = lambda b: (b + 0.5) * _HIST_STEP  # noqa: E731
    return float(centre(b_lo) + frac * (centre(b_hi) - centre(b_lo)))


def two_sided_cluster_p(stat, space, threshold, null_size, null_mass):
    """Cluster-level FWE p-values of a signed map (NiMARE's ALE-subtraction correction):
    clusters of ``stat > threshold`` and of ``stat < -threshold`` (face-connected), a
    cluster's mass ``sum(|stat| - threshold)``; voxels outside clusters get the p-value of
    size (mass) zero. Returns ``(p_size, p_mass)`` over in-mask voxels."""
    from daskmeta.montecarlo import null_to_p

    vol = np.zeros(space.shape, dtype=np.float32)
    vol[space.mask] = np.asarray(stat, dtype=np.float32)
    pos, n_pos = ndimage.label(vol > threshold, _FACES)
    neg, n_neg = ndimage.label(vol < -threshold, _FACES)
    labels = pos + np.where(neg > 0, neg + n_pos, 0)
    supra = labels > 0
    n = n_pos + n_neg
    sizes = np.bincount(labels[supra], minlength=n + 1).astype(np.int64)
    masses = np.bincount(labels[supra], weights=np.abs(vol[supra]).astype(np.float64)
                         - threshold, minlength=n + 1).astype(np.float32)
    sizes[0] = 0
    masses[0] = 0.0
    lab = labels[space.mask]
    return null_to_p(sizes, null_size)[lab], null_to_p(masses, null_mass)[lab]


def _p_from_counts(upper, lower, n_iters):
    """NiMARE's ``_finalize_alediff_tail_counts``: two-sided p and the sign of the
    difference's side."""
    smallest = 1.0 / n_iters
    p = 2.0 * np.minimum(upper / n_iters, lower / n_iters)
    p = np.maximum(smallest, np.minimum(p, 1.0 - smallest)).astype(np.float32)
    sign = np.sign(lower.astype(np.int64) - upper.astype(np.int64)).astype(np.float32)
    return p, sign


@fill_doc
class ALESubtraction(PairwiseCBMAEstimator, ALE):
    """ALE subtraction of two groups with NiMARE's label-permutation null.

    Maps: ``{stat,p,z,logp}_desc-group1MinusGroup2`` (``stat`` the difference of the two
    groups' ALE maps, ``p`` two-sided from ``n_iters`` permutations, ``z`` its two-tailed z
    with the sign of the difference's side, ``logp`` -log10 p) and each group's one-sample
    ALE maps ``{stat,p,z,logp}_desc-group1`` / ``..._desc-group2``.

    Parameters
    ----------
    kernel_transformer : ALEKernel, optional
        Default ``ALEKernel()`` (FWHM from each experiment's sample size).
    n_iters : int
        Label permutations (NiMARE's default 5000).
    voxel_thresh : float
        Cluster-forming threshold of the cluster-level nulls, as the fraction of permuted
        absolute differences above it (``vfwe_only=False`` only).
    vfwe_only : bool
        Record only the voxel-level null (NiMARE's default); False adds the cluster-level
        nulls (a second run of the same permutations).
    seed : int, optional
        Root of the permutations' seed sequence (None: drawn from OS entropy and recorded in
        the result's ``subtraction_seed``). Results depend on ``seed``, ``n_iters`` and
        ``batch_size`` only, never on the number of workers.
    batch_size : int, optional
        Permutations per seeded batch (default: the dask config
        ``daskmeta.montecarlo.batch-size``, 100).
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    restrict_to_inference_mask : bool
        With inference maps given to ``fit``: take the permutation nulls (maximum absolute
        difference, cluster-forming threshold, cluster maxima) over the union of the maps'
        voxels only (NiMARE's; default False).
    %(kernel_kwargs)s
        ALE's: ``kernel__fwhm``, ``kernel__sample_size``.

    Notes
    -----
    ``fit(..., inference_map1=, inference_map2=)`` (NiMARE's directional inference maps):
    the difference is tested one-sided, group 1 > group 2 where ``inference_map1 > 0`` and
    group 2 > group 1 where ``inference_map2 > 0``; elsewhere p is 1 and z 0
    (:mod:`daskmeta.estimators._subtraction_inference`).
    """

    _kernel_cls = ALEKernel
    #: ``FWECorrector(target=...)`` applies (NiMARE's main-effects correction).
    _fwe_targets = True
    _takes_inference_maps = True
    _parameter_constraints = {
        "n_iters": (positive_int, "a positive integer"),
        "voxel_thresh": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
                         and 0 < v < 1, "a number strictly between 0 and 1"),
        "vfwe_only": (lambda v: isinstance(v, bool), "True or False"),
        "seed": (lambda v: v is None or (isinstance(v, numbers.Integral)
                                         and not isinstance(v, bool) and v >= 0),
                 "None or a non-negative integer"),
        "batch_size": (lambda v: v is None or positive_int(v), "None or a positive integer"),
        "restrict_to_inference_mask": (lambda v: isinstance(v, bool), "True or False"),
    }

    def __init__(self, kernel_transformer=None, n_iters=5000, voxel_thresh=0.001,
                 vfwe_only=True, seed=None, batch_size=None, mask=None,
                 mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None,
                 restrict_to_inference_mask=False, **kwargs):
        super().__init__(kernel_transformer=kernel_transformer, mask=mask,
                         mask_margin=mask_margin, chunk_size=chunk_size, **kwargs)
        self.n_iters = n_iters
        self.voxel_thresh = voxel_thresh
        self.vfwe_only = vfwe_only
        self.seed = seed
        self.batch_size = batch_size
        self.restrict_to_inference_mask = restrict_to_inference_mask

    def _validate_params(self):
        super()._validate_params()
        kernel = self._make_kernel()
        if not isinstance(kernel, ALEKernel):
            raise DaskmetaError(f"ALESubtraction subtracts ALE maps: it needs an ALEKernel; "
                                f"got {kernel!r}")

    def _finalize_pair(self, sum1, sum2, summaries1, summaries2, n_voxels):
        maps = {}
        nulls = {}
        stats = []
        ids = np.asarray(self.dataset_.ids)
        for label, total, summaries, in_group in (("group1", sum1, summaries1, self.groups_[0]),
                                                  ("group2", sum2, summaries2, self.groups_[1])):
            group, group_nulls = self._finalize(
                total, self._in_null_order(summaries, ids[in_group]), n_voxels)
            stats.append(group["stat"])
            for kind in ("stat", "p", "z", "logp"):
                maps[f"{kind}_desc-{label}"] = np.asarray(group[kind])
            nulls.update({f"{k}_desc-{label}": v for k, v in group_nulls.items()})
        diff = (stats[0] - stats[1]).astype(np.float32)
        self.diff_ = diff
        from daskmeta.estimators import _subtraction_inference as directional

        union = directional.inference_union(*self.inference_masks_)
        restricted = union if self.restrict_to_inference_mask else None
        null = (SubtractionNull(diff, hist=not self.vfwe_only) if restricted is None
                else directional.RestrictedNull(
                    SubtractionNull(diff[restricted], hist=not self.vfwe_only), restricted))
        run = self._permutations(null)
        tail = "two"
        if union is None:
            p, sign = _p_from_counts(run.values["upper"], run.values["lower"], run.n_iters_run)
        else:
            counts = ((run.values["upper"], run.values["lower"]) if restricted is None
                      else null.full_counts(run.values, n_voxels))
            p, sign = directional.directional_p(diff, *counts, run.n_iters_run,
                                                *self.inference_masks_)
            tail = "one"
        from daskmeta._stats import p_to_logp, p_to_z

        out = {f"stat_desc-{_DIFF}": diff, f"p_desc-{_DIFF}": p,
               f"z_desc-{_DIFF}": (p_to_z(p, tail=tail) * sign).astype(np.float32),
               f"logp_desc-{_DIFF}": p_to_logp(p)}
        out.update(maps)
        nulls[_VOXEL_NULL] = run.values["max_abs"]
        self.seed_ = int(run.seed)
        if not self.vfwe_only:
            thr = _hist_quantile(run.values["abs_hist"], 1 - float(self.voxel_thresh))
            size, mass = self._cluster_nulls(thr, self.seed_, int(self.n_iters), restricted)
            nulls.update({_THRESH: np.float64(thr), _SIZE_NULL: size, _MASS_NULL: mass})
        return out, nulls

    def _permutations(self, summary, seed=None, n_iters=None):
        from daskmeta.montecarlo import run_montecarlo

        return run_montecarlo(self._null_model(), summary,
                              int(self.n_iters if n_iters is None else n_iters),
                              self.batch_size, self.seed if seed is None else seed,
                              progress=False)

    def _cluster_nulls(self, threshold, seed, n_iters, union=None):
        from daskmeta.montecarlo.permutation import TwoSidedClusterMaxima

        if union is None:
            summary = TwoSidedClusterMaxima(threshold)
        else:
            from daskmeta.estimators._subtraction_inference import RestrictedClusters

            summary = RestrictedClusters(threshold, union)
        run = self._permutations(summary, seed, n_iters)
        return run.values["max_size"].astype(np.float32), run.values["max_mass"].astype(
            np.float32)

    def describe(self) -> dict:
        out = super().describe()
        if "seed_" in self.__dict__:
            out["subtraction_seed"] = self.seed_
        return out

    # -- Monte Carlo -----------------------------------------------------------------------
    def _null_model(self, sampler=None):
        """NiMARE's label-permutation null of this fit."""
        from daskmeta.montecarlo.permutation import GroupPermutation, PlanPool, StorePool

        if sampler is not None:
            raise DaskmetaError("ALESubtraction's null permutes group labels; it takes no foci "
                                "sampler")
        self._check_fitted()
        light = self._light_copy()
        if self.collection_ is None:
            pool = PlanPool(self.plan_, light._block_values, None, "ALESubtraction")
        else:
            pool = StorePool(self.collection_, self.collection_.row_indices(self.dataset_.ids),
                             light._block_values, None, "ALESubtraction")
        return GroupPermutation(pool, self.groups_[0], AleDifference(), self.space_.mask)

    def _correct_fwe_montecarlo(self, result, corrector):
        """NiMARE's ``ALESubtraction.correct_fwe_montecarlo`` (target ``"pairwise"``): the
        fit's nulls when ``n_iters``, ``voxel_thresh`` and ``vfwe_only`` are the fit's (and
        the corrector's seed is None or the fit's), else new permutations. With the
        corrector's ``target="main-effects"`` or ``"all"``, each group's one-sample ALE
        maps are corrected too (:mod:`daskmeta.estimators._subtraction_targets`)."""
        if getattr(corrector, "target", None) not in (None, "pairwise"):
            from daskmeta.estimators._subtraction_targets import correct_targets

            return correct_targets(result.estimator, result, corrector, corrector.target)
        from daskmeta._stats import p_to_logp, p_to_z
        from daskmeta.montecarlo import null_to_p

        est = result.estimator
        nulls = dict(result.null_distributions)
        same = ((corrector.n_iters, float(corrector.voxel_thresh), bool(corrector.vfwe_only))
                == (est.n_iters, float(est.voxel_thresh), bool(est.vfwe_only))
                and corrector.seed in (None, getattr(est, "seed_", None))
                and _VOXEL_NULL in nulls and (corrector.vfwe_only or _SIZE_NULL in nulls))
        stat = np.asarray(result.get_map(f"stat_desc-{_DIFF}", "array"), dtype=np.float32)
        seed = getattr(est, "seed_", None)
        if not same:
            run = est._permutations(SubtractionNull(stat, hist=not corrector.vfwe_only),
                                    corrector.seed, corrector.n_iters)
            seed = int(run.seed)
            nulls[_VOXEL_NULL] = run.values["max_abs"]
            if not corrector.vfwe_only:
                thr = _hist_quantile(run.values["abs_hist"], 1 - float(corrector.voxel_thresh))
                size, mass = est._cluster_nulls(thr, seed, corrector.n_iters)
                nulls.update({_THRESH: np.float64(thr), _SIZE_NULL: size, _MASS_NULL: mass})
        sign = np.sign(np.asarray(result.get_map(f"z_desc-{_DIFF}", "array")))
        suffix = "_corr-FWE_method-montecarlo"
        found = {f"desc-{_DIFF}_level-voxel": null_to_p(np.abs(stat), nulls[_VOXEL_NULL])}
        if not corrector.vfwe_only:
            p_size, p_mass = two_sided_cluster_p(stat, result.space, float(nulls[_THRESH]),
                                                 nulls[_SIZE_NULL], nulls[_MASS_NULL])
            found[f"desc-{_DIFF}Mass_level-cluster"] = p_mass
            found[f"desc-{_DIFF}Size_level-cluster"] = p_size
        maps = {}
        tiny = np.nextafter(np.float32(0), np.float32(1))
        for base, p in found.items():
            maps[f"p_{base}{suffix}"] = np.clip(p.astype(np.float32), tiny, np.float32(1))
            maps[f"z_{base}{suffix}"] = (p_to_z(p, tail="two") * sign).astype(np.float32)
            maps[f"logp_{base}{suffix}"] = p_to_logp(p)
        attrs = {"fwe_montecarlo_n_iters": int(corrector.n_iters),
                 "fwe_montecarlo_voxel_thresh": float(corrector.voxel_thresh),
                 "fwe_montecarlo_vfwe_only": bool(corrector.vfwe_only),
                 "fwe_montecarlo_null": "label-permutation",
                 "fwe_montecarlo_nulls_from_fit": bool(same),
                 "fwe_montecarlo_connectivity": "faces"}
        if seed is not None:
            attrs["fwe_montecarlo_seed"] = int(seed)
        if not corrector.vfwe_only:
            attrs["fwe_montecarlo_cluster_threshold"] = float(nulls[_THRESH])
        out = result.copy()
        out.add_maps(maps, attrs=attrs, nulls=nulls)
        return out
