"""Multiple-comparisons correction of meta-analytic results (NiMARE's correctors).

:class:`FWECorrector` controls the family-wise error rate, by Bonferroni or by Monte Carlo
(maximum statistic, cluster size and cluster mass nulls from datasets whose foci are placed
at random, computed as Dask tasks; see :mod:`daskmeta.nulls`); :class:`FDRCorrector` controls
the false discovery rate (Benjamini-Hochberg or Benjamini-Yekutieli). ``transform`` returns a
new :class:`~daskmeta.MetaResult` with NiMARE 0.22.1's map names and values:

==================  ==========================================================================
corrector           maps added
==================  ==========================================================================
FWE bonferroni      ``{p,z,logp}_corr-FWE_method-bonferroni``
FWE montecarlo      ``{z,logp}_level-voxel_corr-FWE_method-montecarlo``,
                    ``{z,logp}_desc-size_level-cluster_corr-FWE_method-montecarlo``,
                    ``{z,logp}_desc-mass_level-cluster_corr-FWE_method-montecarlo``
FDR indep/negcorr   ``{p,z,logp}_corr-FDR_method-{indep,negcorr}``
==================  ==========================================================================

Monte Carlo nulls are kept in ``result.null_distributions`` under NiMARE's names
(``values_level-voxel_corr-fwe_method-montecarlo``,
``values_desc-size_level-cluster_corr-fwe_method-montecarlo``,
``values_desc-mass_level-cluster_corr-fwe_method-montecarlo``), and the parameters, the seed
and the number of iterations run in ``result.attrs`` (keys ``fwe_montecarlo_*``).

Differences from NiMARE (documented): random foci are drawn from a seed sequence split by
batch, not NiMARE's single generator, so the nulls agree in distribution, not draw for draw;
foci that the estimator dropped as lying far outside the mask (see ``mask_margin``) are not
relocated in the null either.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from daskmeta import montecarlo as _mc
from daskmeta._stats import nlogp_to_logp, nlogp_to_z, nullhist_to_threshold, p_to_logp, p_to_z
from daskmeta.exceptions import DaskmetaError
from daskmeta.results import MetaResult

__all__ = ["FDRCorrector", "FWECorrector", "cluster_p_maps", "nlogp_bonferroni", "nlogp_fdr"]

_F32 = np.float32
_F32_TINY = np.nextafter(np.float32(0), np.float32(1))
_VOXEL_NULL = "values_level-voxel_corr-fwe_method-montecarlo"
_SIZE_NULL = "values_desc-size_level-cluster_corr-fwe_method-montecarlo"
_MASS_NULL = "values_desc-mass_level-cluster_corr-fwe_method-montecarlo"
#: Face connectivity, as NiMARE (since 0.0.13) and nilearn.
CLUSTER_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def _check_result(result, who: str):
    if not isinstance(result, MetaResult):
        raise DaskmetaError(
            f"{who}.transform expects a daskmeta MetaResult (the return value of an "
            f"estimator's fit); got {type(result).__name__}"
        )
    return result


# --------------------------------------------------------------------------------------------
# p-value based corrections (log space, as NiMARE 0.22.1)
# --------------------------------------------------------------------------------------------
def _uncorrected_nlogp(result) -> np.ndarray:
    """ln(p) from the ``p`` map, and from ``logp`` where ``p`` sits at its dtype's floor."""
    if "p" not in result.map_names:
        raise DaskmetaError(
            f"correction needs a 'p' map; the result has {', '.join(result.map_names)}"
        )
    p = np.asarray(result.get_map("p", "array"))
    tiny = np.nextafter(p.dtype.type(0), p.dtype.type(1)) if p.dtype.kind == "f" else 0
    nlogp = np.log(np.clip(p.astype(np.float64), np.nextafter(0.0, 1.0), 1.0))
    if "logp" in result.map_names:
        floored = p <= tiny
        if floored.any():
            logp = np.asarray(result.get_map("logp", "array"), dtype=np.float64)
            nlogp = np.where(floored, -np.log(10.0) * logp, nlogp)
    return nlogp


def nlogp_bonferroni(nlogp) -> np.ndarray:
    """Bonferroni in log space: ``min(ln p + ln n, 0)`` (NiMARE's ``nlogp_bonferroni``)."""
    nlogp = np.asarray(nlogp, dtype=float)
    return np.minimum(nlogp + np.log(nlogp.size), 0.0)


def nlogp_fdr(nlogp, method: str = "bh") -> np.ndarray:
    """Benjamini-Hochberg (``"bh"``) or -Yekutieli (``"by"``) adjusted ln p (NiMARE's)."""
    nlogp = np.asarray(nlogp, dtype=float)
    n_tests = nlogp.size
    sort_idx = np.argsort(nlogp)
    revert_idx = np.argsort(sort_idx)
    log_ecdf = np.log(np.arange(1, n_tests + 1) / n_tests)
    if method == "by":
        log_ecdf = log_ecdf - np.log(np.sum(1 / np.arange(1, n_tests + 1)))
    adjusted = nlogp[sort_idx] - log_ecdf
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    return np.minimum(adjusted, 0.0)[revert_idx]


def _p_corrected_maps(result, correct, suffix: str) -> dict:
    """``p``, ``z`` and ``logp`` maps of a p-value correction, named ``{map}{suffix}``."""
    nlogp = _uncorrected_nlogp(result)
    ok = ~np.isnan(nlogp)
    corr = np.full_like(nlogp, np.nan)
    corr[ok] = correct(nlogp[ok])
    p = np.clip(np.exp(corr).astype(_F32), _F32_TINY, _F32(1))
    maps = {f"p{suffix}": p}
    if "z" in result.map_names:
        sign = np.sign(np.asarray(result.get_map("z", "array")))
        maps[f"z{suffix}"] = (nlogp_to_z(corr, tail="two") * sign).astype(_F32)
    if "logp" in result.map_names:
        maps[f"logp{suffix}"] = nlogp_to_logp(corr)
    return maps


# --------------------------------------------------------------------------------------------
# correctors
# --------------------------------------------------------------------------------------------
class FWECorrector:
    """Family-wise error rate correction (NiMARE's ``FWECorrector``).

    Parameters
    ----------
    method : {"bonferroni", "montecarlo"}
        ``"bonferroni"``: the ``p`` map times the number of in-mask voxels (clipped to 1).
        ``"montecarlo"``: voxel-level (maximum statistic) and cluster-level (maximum cluster
        size and mass) nulls from ``n_iters`` datasets with randomly placed foci; supported
        for ALE, MKDADensity (with its weights) and KDA results.
    n_iters : int
        Monte Carlo iterations (the most that run when ``early_stop`` is set).
    voxel_thresh : float
        Cluster-forming threshold as an uncorrected p-value; the statistic threshold is
        taken from the estimator's approximate null, as NiMARE does.
    vfwe_only : bool
        Only the voxel-level null and maps (no cluster labelling).
    seed : int, optional
        Seed of the Monte Carlo run. The same seed gives identical nulls whatever the number
        of workers. None draws one from OS entropy and records it in the result's attributes
        (``fwe_montecarlo_seed``), so the run can be repeated.
    early_stop : float, optional
        Relative tolerance: run the batches in rounds (about a tenth of them each) and stop
        once the Maritz-Jarrett standard error of every FWE threshold (the 95th percentile of
        the maximum-statistic null and, unless ``vfwe_only``, of the maximum-cluster-size
        null) is below ``early_stop`` times the threshold. The number of iterations run is
        recorded as ``fwe_montecarlo_n_iters_run``.
    batch_size : int, optional
        Iterations per seeded batch (default 100; a Dask task runs one batch or several
        consecutive ones, about half a second of work). The batches, and so the result,
        depend on ``n_iters``, ``batch_size`` and ``seed`` only; use smaller batches to
        spread a short run over many workers.
    progress : bool, optional
        Show the Monte Carlo batches done on standard error, under any scheduler
        (:mod:`daskmeta.progress`); None: as the Dask config ``daskmeta.progress`` says, by
        default only when standard error is a terminal.
    target : {"pairwise", "main-effects", "all"}, optional
        ALESubtraction only (NiMARE's ``correct_fwe_montecarlo(target=)``): correct the
        difference map (``"pairwise"``, the default), each group's one-sample ALE maps
        (``"main-effects"``), or both (``"all"``).

    Examples
    --------
    >>> res = ALE(mask=mask).fit(dataset)                                  # doctest: +SKIP
    >>> cres = FWECorrector("montecarlo", n_iters=5000, seed=1).transform(res)  # doctest: +SKIP
    >>> cres.get_map("z_desc-mass_level-cluster_corr-FWE_method-montecarlo")  # doctest: +SKIP
    """

    _methods = ("bonferroni", "montecarlo")

    def __init__(self, method="bonferroni", n_iters=10000, voxel_thresh=0.001, vfwe_only=False,
                 seed=None, early_stop=None, batch_size=None, progress=None, target=None):
        self.method = method
        self.n_iters = n_iters
        self.voxel_thresh = voxel_thresh
        self.vfwe_only = vfwe_only
        self.seed = seed
        self.early_stop = early_stop
        self.batch_size = batch_size
        self.progress = progress
        self.target = target
        self._validate()

    def __repr__(self) -> str:
        if self.method == "bonferroni":
            return "FWECorrector(method='bonferroni')"
        return (f"FWECorrector(method='montecarlo', n_iters={self.n_iters}, "
                f"voxel_thresh={self.voxel_thresh}, vfwe_only={self.vfwe_only}, "
                f"seed={self.seed}, early_stop={self.early_stop}, "
                f"batch_size={self.batch_size}"
                + ("" if self.target is None else f", target={self.target!r}") + ")")

    def _validate(self):
        if self.method not in self._methods:
            raise DaskmetaError(
                f"FWECorrector: method={self.method!r} is not supported; allowed: "
                f"{', '.join(repr(m) for m in self._methods)}"
            )
        if self.target is not None and (self.method != "montecarlo" or self.target not in (
                "pairwise", "main-effects", "all")):
            raise DaskmetaError(f"FWECorrector: target={self.target!r} is not supported; "
                                "allowed with method='montecarlo': None, 'pairwise', "
                                "'main-effects', 'all' (ALESubtraction)")
        if self.method != "montecarlo":
            return
        if not _is_int(self.n_iters) or self.n_iters < 1:
            raise DaskmetaError(f"n_iters must be a positive integer; got {self.n_iters!r}")
        if (isinstance(self.voxel_thresh, bool)
                or not isinstance(self.voxel_thresh, numbers.Real)
                or not 0 < self.voxel_thresh < 1):
            raise DaskmetaError(
                f"voxel_thresh must be a p-value strictly between 0 and 1; got "
                f"{self.voxel_thresh!r}"
            )
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise DaskmetaError(f"seed must be None or a non-negative integer; got {self.seed!r}")
        if self.batch_size is not None and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise DaskmetaError(
                f"batch_size must be None or a positive integer; got {self.batch_size!r}"
            )
        if self.early_stop is not None and (
            isinstance(self.early_stop, bool) or not isinstance(self.early_stop, numbers.Real)
            or not 0 < self.early_stop < 1
        ):
            raise DaskmetaError(
                "early_stop must be None or a relative tolerance strictly between 0 and 1; "
                f"got {self.early_stop!r}"
            )

    def transform(self, result: MetaResult) -> MetaResult:
        """Correct a result; returns a new :class:`~daskmeta.MetaResult` with the maps added.

        Parameters
        ----------
        result : MetaResult
            From an estimator's ``fit`` (Monte Carlo needs its fitted estimator, which the
            result keeps).

        Returns
        -------
        MetaResult
            A copy of ``result`` with the corrected maps, nulls and attributes.

        Raises
        ------
        DaskmetaError
            For a non-result, a result without the needed maps or estimator, or invalid
            parameters.
        """
        self._validate()
        result = _check_result(result, "FWECorrector")
        if self.method == "bonferroni":
            return self._bonferroni(result)
        return self._montecarlo(result)

    def _bonferroni(self, result):
        maps = _p_corrected_maps(result, nlogp_bonferroni, "_corr-FWE_method-bonferroni")
        n_tests = int(np.sum(~np.isnan(np.asarray(result.get_map("p", "array"), dtype=float))))
        out = result.copy()
        out.add_maps(maps, attrs={"fwe_bonferroni_n_tests": n_tests})
        return out

    def _montecarlo(self, result):
        # The result's own snapshot of its fitted estimator: what was fitted, whatever has
        # been done to the estimator object since.
        est = result.estimator
        if est is None or not hasattr(est, "_null_model"):
            raise DaskmetaError(
                "Monte Carlo FWE correction needs the fitted estimator behind the result; this "
                "result has none (results read back from files keep no estimator)"
            )
        want = result.attrs.get("input_hash")
        have = None
        if want is not None:  # what the snapshot was fitted on: a hash, an image stack, foci
            have = getattr(est, "input_hash_", None)
            for source in ("stack_", "dataset_"):
                if have is None and getattr(est, source, None) is not None:
                    have = getattr(est, source).fingerprint()
        if want is not None and have is not None and want != have:
            raise DaskmetaError(
                "the result's estimator snapshot does not match the result's input (a result "
                "built by hand from another fit?); correct the result its fit returned"
            )
        if self.target not in (None, "pairwise") and not getattr(est, "_fwe_targets", False):
            raise DaskmetaError(f"FWECorrector: target={self.target!r} applies to "
                                f"ALESubtraction results; this one comes from "
                                f"{type(est).__name__}")
        own = getattr(est, "_correct_fwe_montecarlo", None)
        if own is not None:
            # Contrasts (MKDAChi2, ALESubtraction) and PermutedOLS correct their own maps, as
            # NiMARE's estimators with a correct_fwe_montecarlo of their own do.
            return own(result, self)
        if "stat" not in result.map_names:
            raise DaskmetaError(
                "Monte Carlo FWE correction needs the result's 'stat' map or an estimator with "
                f"a Monte Carlo null of its own (as PermutedOLS); {type(est).__name__} has "
                "neither")
        space = result.space
        stat = np.asarray(result.get_map("stat", "array")).astype(_F32)
        clusters = not self.vfwe_only
        threshold = float("nan")
        if clusters:
            threshold = self._cluster_threshold(result, est)
        model = est._null_model()
        summary = _mc.ClusterMaxima(threshold) if clusters else _mc.MaxStatistic()
        mc = _mc.run_montecarlo(model, summary, self.n_iters, self.batch_size, self.seed,
                                self.early_stop, self.progress)
        suffix = "_corr-FWE_method-montecarlo"
        maps = {}
        nulls = {}
        if clusters:
            size_p, mass_p = cluster_p_maps(stat, space, threshold, mc.max_size, mc.max_mass)
            maps[f"logp_desc-size_level-cluster{suffix}"] = p_to_logp(size_p)
            maps[f"z_desc-size_level-cluster{suffix}"] = p_to_z(size_p, tail="one").astype(_F32)
            maps[f"logp_desc-mass_level-cluster{suffix}"] = p_to_logp(mass_p)
            maps[f"z_desc-mass_level-cluster{suffix}"] = p_to_z(mass_p, tail="one").astype(_F32)
            nulls[_SIZE_NULL] = mc.max_size
            nulls[_MASS_NULL] = mc.max_mass
        p_vox = _mc.null_to_p(stat, mc.max_stat)
        maps[f"logp_level-voxel{suffix}"] = p_to_logp(p_vox)
        maps[f"z_level-voxel{suffix}"] = p_to_z(p_vox, tail="one").astype(_F32)
        nulls[_VOXEL_NULL] = mc.max_stat
        # NiMARE's order: voxel maps first.
        order = [k for k in maps if "level-voxel" in k] + [k for k in maps if "cluster" in k]
        maps = {k: maps[k] for k in order}
        attrs = {
            "fwe_montecarlo_n_iters": int(self.n_iters),
            "fwe_montecarlo_n_iters_run": int(mc.n_iters_run),
            "fwe_montecarlo_seed": int(mc.seed),
            "fwe_montecarlo_batch_size": int(mc.batch_size),
            "fwe_montecarlo_voxel_thresh": float(self.voxel_thresh),
            "fwe_montecarlo_vfwe_only": bool(self.vfwe_only),
            "fwe_montecarlo_statistic": _statistic_name(model),
            "fwe_montecarlo_connectivity": "faces",
        }
        if clusters:
            attrs["fwe_montecarlo_cluster_threshold"] = float(threshold)
        if self.early_stop is not None:
            attrs["fwe_montecarlo_early_stop"] = float(self.early_stop)
            attrs["fwe_montecarlo_stopped_early"] = bool(mc.stopped_early)
            for k, v in mc.relative_se.items():
                attrs[f"fwe_montecarlo_relative_se_{k}"] = float(v)
        out = result.copy()
        out.add_maps(maps, attrs=attrs, nulls=nulls)
        return out

    def _cluster_threshold(self, result, est) -> float:
        nd = dict(getattr(est, "null_distributions_", None) or {})
        nd.update(result.null_distributions)
        bins = nd.get("histogram_bins")
        weights = nd.get("histweights_corr-none_method-approximate")
        if bins is None or weights is None:
            raise DaskmetaError(
                "cluster-level Monte Carlo correction needs the estimator's approximate null "
                "('histogram_bins' and 'histweights_corr-none_method-approximate') to set the "
                "cluster-forming threshold; use vfwe_only=True for voxel-level correction only"
            )
        return float(nullhist_to_threshold(weights, bins, float(self.voxel_thresh)))


def own_null_voxel_fwe(corrector: FWECorrector, result: MetaResult, est) -> MetaResult:
    """Voxel-level Monte Carlo FWE from an estimator's own null of the maximum statistic
    (PermutedOLS's sign flips, as NiMARE's ``correct_fwe_montecarlo``): ``est._fwe_montecarlo``
    returns the maps, the null maxima and the run."""
    if corrector.early_stop is not None:
        raise DaskmetaError(f"early_stop is not offered for {type(est).__name__}'s Monte "
                            "Carlo correction; leave it None")
    maps, h0, mc = est._fwe_montecarlo(result, corrector.n_iters, corrector.seed,
                                       corrector.batch_size, corrector.progress)
    suffix = "_corr-FWE_method-montecarlo"
    out = result.copy()
    out.add_maps({f"{k}{suffix}": v for k, v in maps.items()}, attrs={
        "fwe_montecarlo_n_iters": int(corrector.n_iters),
        "fwe_montecarlo_n_iters_run": int(mc.n_iters_run),
        "fwe_montecarlo_seed": int(mc.seed),
        "fwe_montecarlo_batch_size": int(mc.batch_size),
        "fwe_montecarlo_vfwe_only": True,
        "fwe_montecarlo_statistic": "max_z_signflip",
    }, nulls={_VOXEL_NULL: h0})
    return out


def _statistic_name(model) -> str:
    stat = getattr(model, "stat", None)
    names = {"ale": "ale", "identity": "sum"}
    return names.get(stat, "custom") if isinstance(stat, str) or stat is None else "custom"


def cluster_p_maps(stat, space, threshold, null_size, null_mass):
    """Cluster-level FWE p-values of every in-mask voxel, by cluster size and by mass.

    Clusters are face-connected voxels with ``stat > threshold``; a cluster's mass is the
    sum of ``stat - threshold`` over it. Voxels outside clusters get the p-value of a
    cluster of size (mass) zero, as in NiMARE.

    Parameters
    ----------
    stat : (n_voxels,) array
        The statistic over in-mask voxels (compared as float32, as NiMARE's maps).
    space : Space
    threshold : float
    null_size, null_mass : (n_iters,) arrays
        Maximum cluster size and mass per Monte Carlo iteration.

    Returns
    -------
    p_size, p_mass : (n_voxels,) float64
    """
    vol = np.zeros(space.shape, dtype=_F32)
    vol[space.mask] = np.asarray(stat, dtype=_F32)
    supra = vol > threshold
    labels, n = ndimage.label(supra, CLUSTER_STRUCTURE)
    lab = labels[space.mask]
    sizes = np.bincount(labels[supra], minlength=n + 1).astype(np.int64)
    masses = np.bincount(labels[supra], weights=vol[supra].astype(np.float64) - threshold,
                         minlength=n + 1)
    sizes[0] = 0
    masses[0] = 0.0
    p_size = _mc.null_to_p(sizes, null_size)[lab]
    p_mass = _mc.null_to_p(masses, null_mass)[lab]
    return p_size, p_mass


class FDRCorrector:
    """False discovery rate correction (NiMARE's ``FDRCorrector``).

    Parameters
    ----------
    method : {"indep", "negcorr"}
        ``"indep"``: Benjamini-Hochberg (independent or positively correlated tests);
        ``"negcorr"``: Benjamini-Yekutieli (any dependence).
    alpha : float
        The FDR the maps are meant to be thresholded at. As in NiMARE, the step-up procedure
        only rescales p-values, so ``alpha`` does not change the maps; it is recorded.
    """

    _methods = ("indep", "negcorr")

    def __init__(self, method="indep", alpha=0.05):
        self.method = method
        self.alpha = alpha
        self._validate()

    def __repr__(self) -> str:
        return f"FDRCorrector(method={self.method!r}, alpha={self.alpha!r})"

    def _validate(self):
        if self.method not in self._methods:
            raise DaskmetaError(
                f"FDRCorrector: method={self.method!r} is not supported; allowed: "
                f"{', '.join(repr(m) for m in self._methods)}"
            )
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real)
                or not 0 < self.alpha < 1):
            raise DaskmetaError(f"alpha must be strictly between 0 and 1; got {self.alpha!r}")

    def transform(self, result: MetaResult) -> MetaResult:
        """Correct a result; returns a new :class:`~daskmeta.MetaResult` with the maps added.

        Parameters
        ----------
        result : MetaResult

        Returns
        -------
        MetaResult
            A copy with ``{p,z,logp}_corr-FDR_method-<method>``.

        Raises
        ------
        DaskmetaError
            For a non-result or a result without a ``p`` map.
        """
        self._validate()
        result = _check_result(result, "FDRCorrector")
        own = getattr(result.estimator, "_correct_fdr", None)
        if own is not None:
            out = result.copy()
            out.add_maps(own(result, self.method),
                         attrs={f"fdr_{self.method}_alpha": float(self.alpha)})
            return out
        how = "bh" if self.method == "indep" else "by"
        maps = _p_corrected_maps(result, lambda x: nlogp_fdr(x, how),
                                 f"_corr-FDR_method-{self.method}")
        out = result.copy()
        out.add_maps(maps, attrs={f"fdr_{self.method}_alpha": float(self.alpha)})
        return out
