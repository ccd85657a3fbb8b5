"""MKDA chi-square (Wager et al., 2007): uniformity and association tests of two groups.

:class:`MKDAChi2` counts, at each voxel, the experiments of each group with a focus within
``r`` mm (binary MKDA spheres; two weight rows of one pass) and turns the counts into
NiMARE 0.22.1's maps (:mod:`daskmeta.estimators._chi2`). From a Collection with only
``select``, the second group is the rest of the collection: its counts are the
whole-collection counts minus the selection's, and the whole-collection counts are summed
once per store and process (kept in memory, keyed by the store's content token, which
names its build), so a contrast costs one pass over the selected rows only.

Monte Carlo FWE correction (``FWECorrector(method="montecarlo")``) is NiMARE's label
permutation: the pooled experiments dealt at random into groups of the observed sizes
(:mod:`daskmeta.montecarlo.permutation`), or with ``fwe_null_method="random-foci"`` every
focus relocated uniformly in the mask (:mod:`daskmeta.montecarlo.pairfoci`); voxel-level
(maximum chi2) and cluster-level (size and mass above ``chi2.isf(voxel_thresh, 1)``) nulls
of the uniformity, group-2 and association tests. FDR correction (``FDRCorrector``) corrects the same three tests.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._numba_cache import compiled
from daskmeta._pass import BlockFunction, KernelRows, StoredRows, has_foci, run_pass
from daskmeta.estimators._chi2 import chi2_maps, one_way, two_way_counts
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import DEFAULT_MASK_MARGIN, MKDAKernel

__all__ = ["Chi2Statistic", "MKDAChi2", "collection_total"]

#: The tests a Monte Carlo or FDR correction of MKDAChi2 corrects, with NiMARE's names of
#: their voxel-level nulls.
_TESTS = {"uniformity": "pAgF", "group2": "group2", "association": "pFgA"}
_TOTALS: OrderedDict = OrderedDict()
_TOTALS_LOCK = threading.Lock()
_MAX_TOTALS = 4


def _totals_dir() -> Path:
    chosen = os.environ.get("DASKMETA_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser() / "totals"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "daskmeta" / "totals"


def _read_cached_total(path: Path, key: str, n_voxels: int):
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            total = np.asarray(f["total"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, damaged or foreign: summed again
    if total.shape != (n_voxels,) or total.dtype != np.float64:
        return None
    return total


def _write_cached_total(path: Path, key: str, total: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    except OSError:  # a read-only cache: the in-memory copy still serves this process
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), total=total)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def collection_total(collection, chunk_size: int = 64) -> np.ndarray:
    """The sum of every MA row of a Collection (float64 over voxels), computed once per
    store build.

    Kept in memory per process and on disk (``$DASKMETA_CACHE_DIR/totals``, else
    ``$XDG_CACHE_HOME/daskmeta/totals`` or ``~/.cache/daskmeta/totals``; skipped if not
    writable), under the store's content token (path, kernel, mask, dataset, build
    generation and metadata time), which the cached file also holds and which is checked
    on reading: a rebuilt store is summed again.
    """
    key = collection.content_token()
    with _TOTALS_LOCK:
        found = _TOTALS.get(key)
        if found is not None:
            _TOTALS.move_to_end(key)
            return found
    path = _totals_dir() / f"{key}.npz"
    n_voxels = collection.space.n_voxels
    total = _read_cached_total(path, key, n_voxels)
    if total is None:
        rows = np.flatnonzero(has_foci(collection.dataset))
        weights = np.ones((1, len(rows)))
        stored = np.dtype(collection.attrs["dtype"])
        acc = np.uint32 if stored.kind in "ui" else np.float64
        total, _ = run_pass(StoredRows(collection, chunk_size), rows, weights,
                            BlockFunction(), acc, with_summaries=False,
                            rows_per_task=4 * chunk_size)
        total = total[0].astype(np.float64)
        _write_cached_total(path, key, total)
    total.flags.writeable = False
    with _TOTALS_LOCK:
        _TOTALS[key] = total
        while len(_TOTALS) > _MAX_TOTALS:
            _TOTALS.popitem(last=False)
    return total


@compiled(nogil=True)
def _chi2_into(s1, s2, n1, n2, m1, m2, out_u, out_g, out_a):
    """:func:`one_way` of both groups and :func:`two_way_counts`, voxel by voxel in the same
    float64 operations (so the same float32 values), into preallocated maps."""
    total = n1 + n2
    d1 = m1 * (n1 - m1)
    d2 = m2 * (n2 - m2)
    for v in range(s1.shape[0]):
        a = s1[v]
        b = s2[v]
        out_u[v] = 0.0 if d1 == 0 else (a - m1) ** 2 * n1 / d1
        out_g[v] = 0.0 if d2 == 0 else (b - m2) ** 2 * n2 / d2
        row0 = a + b
        row1 = total - row0
        num = total * (a * n2 - b * n1) ** 2
        den = row0 * row1 * n1 * n2
        out_a[v] = 2.0 if den == 0 else num / den


class Chi2Statistic:
    """The permutation statistic of MKDAChi2: chi2 maps of the uniformity (group 1),
    group-2 and association tests from the groups' sums (float32, as NiMARE's maps)."""

    token = "mkda-chi2"
    non_negative = True

    def __call__(self, sum1, sum2, n1, n2):
        return {"uniformity": one_way(sum1, n1).astype(np.float32),
                "group2": one_way(sum2, n2).astype(np.float32),
                "association": two_way_counts(sum1, sum2, n1, n2).astype(np.float32)}

    @staticmethod
    def empty(n_voxels: int) -> dict:
        return {k: np.zeros(n_voxels, dtype=np.float32)
                for k in ("uniformity", "group2", "association")}

    def into(self, sum1, sum2, n1, n2, maps):
        """:meth:`__call__` into ``maps`` (from :meth:`empty`), compiled."""
        _chi2_into(sum1, sum2, float(n1), float(n2), float(np.mean(sum1)),
                   float(np.mean(sum2)), maps["uniformity"], maps["group2"],
                   maps["association"])
        return maps


def _restrict_association(maps, difference, group1, group2) -> None:
    """NiMARE's directional inference maps: the association test only where group 1's
    effect (``p(A|F) > p(A|U)``, ``difference > 0``) lies in ``group1`` or group 2's in
    ``group2`` (boolean in-mask vectors, None: nowhere); elsewhere chi2 and z are 0, p 1
    and logp 0. Nothing to do when neither is given."""
    if group1 is None and group2 is None:
        return
    sign = np.sign(difference)
    keep = np.zeros(sign.shape, dtype=bool)
    if group1 is not None:
        keep |= (sign > 0) & group1
    if group2 is not None:
        keep |= (sign < 0) & group2
    for name, value in (("chi2", 0.0), ("z", 0.0), ("p", 1.0), ("logp", 0.0)):
        values = np.array(maps[f"{name}_desc-association"], dtype=np.float32)
        values[~keep] = value
        maps[f"{name}_desc-association"] = values


def _prior_ok(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                             and 0 <= value <= 1)


@fill_doc
class MKDAChi2(PairwiseCBMAEstimator):
    """Multilevel kernel density analysis, chi-square tests (NiMARE's ``MKDAChi2``).

    Maps (NiMARE's names): ``{chi2,p,z,logp}_desc-{uniformity,association}``, the same of
    ``group1`` (= uniformity) and ``group2`` (the second group's uniformity test), and
    ``prob_desc-{A,AgF,AgU,FgA,group1,group2}`` (``prob_desc-{AgF,FgA}_prior`` with a prior).

    ``fit(..., inference_map1=, inference_map2=)`` (NiMARE's directional inference maps, an
    in-mask vector or an image on the mask's grid): the association test is kept only
    where group 1's effect lies in ``inference_map1 > 0`` or group 2's in
    ``inference_map2 > 0``; elsewhere its chi2 and z are 0, p 1 and logp 0 (the other maps,
    and the Monte Carlo null, are unrestricted, as NiMARE's).

    Parameters
    ----------
    kernel_transformer : MKDAKernel, optional
        Default ``MKDAKernel(r=10, value=1)``.
    prior : float or None
        Uniform prior probability of a feature being present (for the ``_prior`` maps;
        None or 0 leaves them out, as NiMARE).
    fwe_null_method : {"label-permutation", "random-foci"}
        The null of ``FWECorrector(method="montecarlo")`` (NiMARE's): the pooled
        experiments dealt at random into groups of the observed sizes, or every focus of
        both groups moved to a voxel drawn uniformly in the mask (each experiment keeping
        its group and number of foci).
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
        MKDA's: ``kernel__r``, ``kernel__value``.
    """

    _kernel_cls = MKDAKernel
    _parameter_constraints = {
        "prior": (_prior_ok, "None or a number in [0, 1]"),
        "fwe_null_method": (lambda v: v in ("label-permutation", "random-foci"),
                            "'label-permutation' or 'random-foci'"),
    }
    _takes_inference_maps = True

    def __init__(self, kernel_transformer=None, prior=0.5, fwe_null_method="label-permutation",
                 mask=None, mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None, **kwargs):
        super().__init__(kernel_transformer=kernel_transformer, mask=mask,
                         mask_margin=mask_margin, chunk_size=chunk_size, **kwargs)
        self.prior = prior
        self.fwe_null_method = fwe_null_method

    def _validate_params(self):
        super()._validate_params()
        kernel = self._make_kernel()
        if not isinstance(kernel, MKDAKernel):
            raise DaskmetaError(f"MKDAChi2 counts experiments active in binary spheres: it "
                                f"needs an MKDAKernel; got {kernel!r}")

    def _fit_pair(self, data, select1, select2, shown1, shown2, label_threshold):
        dataset, space, kernel, collection, rows1, rows2 = self._pair_groups(
            data, select1, select2, label_threshold)
        sub, plan, rows, in_first = self._set_pair_state(
            dataset, space, kernel, collection, rows1, rows2, shown1, shown2, label_threshold)
        light = self._light_copy()
        if collection is None:
            weights = np.zeros((2, len(rows)))
            weights[0, in_first] = 1.0
            weights[1, ~in_first] = 1.0
            source = KernelRows(plan, light._block_values, self._func_name())
            total, _ = run_pass(source, np.arange(plan.n_rows), weights, light,
                                with_summaries=False)
            count1, count2 = total[0].astype(np.float64), total[1].astype(np.float64)
        else:
            chunk = self._chunk_size()
            ids = dataset.experiments["id"].to_numpy()
            stored = collection.row_indices(ids[rows1])
            if select2 is None:
                # The rest of the collection: its counts are the whole collection's (summed
                # once per store) minus the selection's. One pass over the selection only.
                acc = self._count_dtype(collection, [stored])
                total, _ = run_pass(StoredRows(collection, chunk), stored,
                                    np.ones((1, len(stored))), light, acc,
                                    with_summaries=False, rows_per_task=chunk)
                count1 = total[0].astype(np.float64)
                count2 = collection_total(collection, chunk) - count1
            else:
                stored2 = collection.row_indices(ids[rows2])
                both = np.concatenate([stored, stored2])
                weights = np.zeros((2, len(both)))
                weights[0, :len(stored)] = 1.0
                weights[1, len(stored):] = 1.0
                acc = self._count_dtype(collection, [stored, stored2])
                total, _ = run_pass(StoredRows(collection, chunk), both, weights, light, acc,
                                    with_summaries=False, rows_per_task=chunk)
                count1, count2 = total[0].astype(np.float64), total[1].astype(np.float64)
        maps = chi2_maps(count1, len(rows1), count2, len(rows2), prior=self.prior)
        _restrict_association(maps, count1 / len(rows1) - count2 / len(rows2),
                              *self.inference_masks_)
        self.null_distributions_ = {}
        return self._make_result(maps, {})

    def _row_summaries(self, block):
        return []

    # -- Monte Carlo -----------------------------------------------------------------------
    def _null_model(self, sampler=None):
        """NiMARE's null of this fit: ``fwe_null_method="label-permutation"`` (the pooled
        experiments' rows, the observed group sizes) or ``"random-foci"`` (the fit's foci
        relocated by ``sampler``, uniformly in the mask by default)."""
        from daskmeta.montecarlo.permutation import GroupPermutation, PlanPool, StorePool

        self._check_fitted()
        if self.fwe_null_method == "random-foci":
            from daskmeta.montecarlo.pairfoci import PairFociNull

            light = self._light_copy()
            return PairFociNull(self.plan_, self.groups_[0], light._block_values,
                                self._func_name(), Chi2Statistic(), sampler=sampler,
                                params=self._func_name())
        if sampler is not None:
            raise DaskmetaError("MKDAChi2's label-permutation null permutes group labels; it "
                                "takes no foci sampler (fwe_null_method='random-foci' does)")
        value = float(self.kernel_.value)
        if self.collection_ is None:
            pool = PlanPool(self.plan_, None, value, "MKDAChi2")
        else:
            pool = StorePool(self.collection_, self.collection_.row_indices(self.dataset_.ids),
                             None, value, "MKDAChi2")
        return GroupPermutation(pool, self.groups_[0], Chi2Statistic(), self.space_.mask)

    def _correct_fwe_montecarlo(self, result, corrector):
        """NiMARE's ``MKDAChi2.correct_fwe_montecarlo``: maps ``{p,z,logp}_desc-{test}
        _level-voxel``, ``..._desc-{test}{Size,Mass}_level-cluster`` (tests uniformity,
        group1 (= uniformity), group2, association), suffixed ``_corr-FWE_method-montecarlo``;
        nulls under NiMARE's names."""
        from scipy import stats  # on use: scipy.stats costs a command's start-up

        from daskmeta import montecarlo as mc
        from daskmeta.correct import cluster_p_maps
        from daskmeta.montecarlo.permutation import PerMap

        clusters = not corrector.vfwe_only
        thr = float(stats.chi2.isf(float(corrector.voxel_thresh), 1))
        inner = mc.ClusterMaxima(thr) if clusters else mc.MaxStatistic()
        summary = PerMap(inner, tuple(_TESTS))
        model = result.estimator._null_model()
        run = mc.run_montecarlo(model, summary, corrector.n_iters, corrector.batch_size,
                                corrector.seed, corrector.early_stop, corrector.progress)
        values = summary.split(run.values)
        suffix = "_corr-FWE_method-montecarlo"
        maps, nulls = {}, {}
        for test, null_name in _TESTS.items():
            chi2 = np.asarray(result.get_map(f"chi2_desc-{test}", "array"), dtype=np.float32)
            sign = np.sign(np.asarray(result.get_map(f"z_desc-{test}", "array")))
            found = {"": mc.null_to_p(np.abs(chi2), values[test]["max_stat"])}
            nulls[f"values_desc-{null_name}_level-voxel_corr-fwe_method-montecarlo"] = (
                values[test]["max_stat"])
            if clusters:
                size = values[test]["max_size"].astype(np.float32)
                mass = values[test]["max_mass"].astype(np.float32)
                found["Size"], found["Mass"] = cluster_p_maps(chi2, result.space, thr, size,
                                                              mass)
                nulls[f"values_desc-{null_name}size_level-cluster_corr-fwe_method-montecarlo"
                      ] = size
                nulls[f"values_desc-{null_name}mass_level-cluster_corr-fwe_method-montecarlo"
                      ] = mass
            for kind, p in found.items():
                level = "voxel" if not kind else "cluster"
                names = [test] + (["group1"] if test == "uniformity" else [])
                for label in names:
                    base = f"desc-{label}{kind}_level-{level}{suffix}"
                    maps[f"p_{base}"] = _p32(p)
                    maps[f"z_{base}"] = (_p_to_z_two(p) * sign).astype(np.float32)
                    maps[f"logp_{base}"] = _logp32(p)
        for alias in ("", "size", "mass"):
            key = f"values_desc-pAgF{alias}_level-"
            for name in list(nulls):
                if name.startswith(key):
                    nulls[name.replace("pAgF", "group1", 1)] = nulls[name]
        attrs = {"fwe_montecarlo_n_iters": int(corrector.n_iters),
                 "fwe_montecarlo_n_iters_run": int(run.n_iters_run),
                 "fwe_montecarlo_seed": int(run.seed),
                 "fwe_montecarlo_batch_size": int(run.batch_size),
                 "fwe_montecarlo_voxel_thresh": float(corrector.voxel_thresh),
                 "fwe_montecarlo_vfwe_only": bool(corrector.vfwe_only),
                 "fwe_montecarlo_statistic": "chi2",
                 "fwe_montecarlo_null": result.estimator.fwe_null_method,
                 "fwe_montecarlo_connectivity": "faces"}
        if clusters:
            attrs["fwe_montecarlo_cluster_threshold"] = thr
        out = result.copy()
        out.add_maps(maps, attrs=attrs, nulls=nulls)
        return out

    def _correct_fdr(self, result, method: str):
        """NiMARE's ``MKDAChi2.correct_fdr_indep`` (and Benjamini-Yekutieli for
        ``negcorr``) of the uniformity, group-2 and association tests."""
        from daskmeta._stats import nlogp_to_logp, nlogp_to_z
        from daskmeta.correct import nlogp_fdr

        how = "bh" if method == "indep" else "by"
        maps = {}
        for test in _TESTS:
            p = np.asarray(result.get_map(f"p_desc-{test}", "array"))
            nlogp = np.log(np.clip(p.astype(np.float64), np.nextafter(0.0, 1.0), 1.0))
            floored = p <= np.nextafter(np.float32(0), np.float32(1))
            if floored.any():
                logp = np.asarray(result.get_map(f"logp_desc-{test}", "array"), np.float64)
                nlogp = np.where(floored, -np.log(10.0) * logp, nlogp)
            corr = nlogp_fdr(nlogp, how)
            sign = np.sign(np.asarray(result.get_map(f"z_desc-{test}", "array")))
            for label in [test] + (["group1"] if test == "uniformity" else []):
                base = f"desc-{label}_level-voxel_corr-FDR_method-{method}"
                maps[f"p_{base}"] = _p32(np.exp(corr))
                maps[f"z_{base}"] = (nlogp_to_z(corr, tail="two") * sign).astype(np.float32)
                maps[f"logp_{base}"] = nlogp_to_logp(corr)
        return maps


def _p32(p) -> np.ndarray:
    tiny = np.nextafter(np.float32(0), np.float32(1))
    return np.clip(np.asarray(p, dtype=np.float32), tiny, np.float32(1))


def _p_to_z_two(p) -> np.ndarray:
    from daskmeta._stats import p_to_z

    return p_to_z(p, tail="two")


def _logp32(p) -> np.ndarray:
    from daskmeta._stats import p_to_logp

    return p_to_logp(p)
