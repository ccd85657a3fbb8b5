"""The extension points: a kernel, an estimator and a pairwise estimator defined outside the
package fit, Monte-Carlo-correct and contrast through the package's own machinery (see
docs/extending.md), with values checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

import daskmeta
from daskmeta import montecarlo
from daskmeta.correct import FWECorrector
from daskmeta.estimators import CBMAEstimator, MKDADensity, PairwiseCBMAEstimator
from daskmeta.kernels import COMBINE_MAX, Kernel, MKDAKernel


# -- a kernel and an estimator, as a user would write them ------------------------------------
class ConeKernel(Kernel):
    """A linear cone: ``1 - d / r`` within ``r`` mm of a focus, maximum over foci."""

    _mode = COMBINE_MAX
    _param_names = ("r",)

    def __init__(self, r=8.0):
        self.r = r

    def hist_inv_step(self):
        return 100.0  # value histograms in bins of 0.01

    def _supports(self, dataset, space):
        reach = int(np.ceil(self.r / min(space.zooms)))
        grid = np.mgrid[-reach:reach + 1, -reach:reach + 1, -reach:reach + 1].reshape(3, -1).T
        dist = np.sqrt(((grid * np.asarray(space.zooms)) ** 2).sum(axis=1))
        inside = dist < self.r
        values = (1 - dist[inside] / self.r).astype(np.float32)
        return (np.zeros(dataset.n_experiments, dtype=np.int64),
                [(grid[inside].astype(np.int32), values)])


class ConeSum(CBMAEstimator):
    """Sum of cone maps; null: the exact distribution of a sum of independent experiments'
    values at a random voxel (on the 0.01 grid); Monte Carlo statistic in NumPy."""

    _kernel_cls = ConeKernel
    _montecarlo_stat = None  # use _stat in Python

    def _summaries_from_hist(self, hist, row_max, n_voxels):
        return [(np.asarray(row, dtype=np.float64), n_voxels) for row in hist]

    def _stat(self, stat_sum):
        return stat_sum.astype(np.float32)

    def _null(self, summaries, n_voxels):
        dist = np.ones(1)
        for row, n in summaries:
            p = row / n
            p[0] += 1 - p.sum()  # the voxels outside the experiment's cones
            dist = np.convolve(dist, p)
        return np.arange(len(dist)) / 100.0, dist


class DensityDifference(PairwiseCBMAEstimator):
    """Proportion of group 1's experiments with a focus nearby minus group 2's."""

    _kernel_cls = MKDAKernel

    def _summaries_from_hist(self, hist, row_max, n_voxels):
        return list(hist.sum(axis=1))

    def _finalize_pair(self, sum1, sum2, summaries1, summaries2, n_voxels):
        stat = sum1 / len(summaries1) - sum2 / len(summaries2)
        return {"stat_desc-group1MinusGroup2": stat}, {}


MASK = None


@pytest.fixture(scope="module")
def pain(pain_dataset):
    return pain_dataset


def _dense_ma(kernel, dataset, space, focus_ijk=None):
    plan = kernel.plan(dataset, space, float("inf"), warn=False)
    if focus_ijk is not None:
        plan.focus_ijk = np.asarray(focus_ijk, dtype=np.int32)
    return plan.fill(0, plan.n_rows)


def test_outside_kernel_and_estimator_fit(pain, nimare_space):
    est = ConeSum(mask=nimare_space, kernel__r=6.0)
    res = est.fit(pain)
    assert est.get_params()["kernel__r"] == 6.0
    ma = _dense_ma(ConeKernel(r=6.0), pain.slice(res.estimator.dataset_.ids), nimare_space)
    np.testing.assert_array_equal(res.get_map("stat", "array"),
                                  ma.astype(np.float64).sum(axis=0).astype(np.float32))
    # The null from the per-experiment value histograms the pass returned, by hand.
    bins = np.rint(ma * 100).astype(int)
    dist = np.ones(1)
    for row in bins:
        p = np.bincount(row[row > 0], minlength=row.max() + 1).astype(float) / len(row)
        p[0] = 1 - p[1:].sum()
        dist = np.convolve(dist, p)
    np.testing.assert_allclose(res.null_distributions["histweights_corr-none_method-approximate"],
                               dist, rtol=1e-12, atol=1e-15)
    assert res.get_map("p", "array").min() < 1e-3


def test_outside_estimator_montecarlo(pain, nimare_space):
    res = ConeSum(mask=nimare_space, kernel__r=6.0).fit(pain)
    cres = FWECorrector("montecarlo", n_iters=20, seed=3, batch_size=10).transform(res)
    null = cres.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"]
    # Recompute batch 1's first iteration by hand: its foci, dense cone maps, their sum.
    model = res.estimator._null_model()
    rng = np.random.default_rng(montecarlo.batch_seed(3, 1))
    idx = model.draw(rng)
    ijk = nimare_space.voxel_ijk[idx]
    dataset = pain.slice(res.estimator.dataset_.ids)
    ma = _dense_ma(ConeKernel(r=6.0), dataset, nimare_space, focus_ijk=ijk)
    assert null[10] == ma.astype(np.float64).sum(axis=0).astype(np.float32).max()
    # Cluster nulls went through the NumPy summary: same values from the compiled ones'
    # definition (face-connected voxels above the threshold).
    sizes = cres.null_distributions["values_desc-size_level-cluster_corr-fwe_method-montecarlo"]
    assert sizes.shape == (20,) and np.all(sizes >= 0)
    again = FWECorrector("montecarlo", n_iters=20, seed=3, batch_size=10).transform(res)
    np.testing.assert_array_equal(
        again.get_map("z_level-voxel_corr-FWE_method-montecarlo", "array"),
        cres.get_map("z_level-voxel_corr-FWE_method-montecarlo", "array"))


class ConeBump(ConeSum):
    """Cone maps through a non-monotone ``f`` (rising to 1/8 at 1/4, then falling)."""

    def _block_values(self, block):
        return block - 2 * block * block


@pytest.mark.parametrize(("cls", "sign"), [(ConeSum, -1.0), (ConeBump, 0.0)])
def test_null_statistic_of_any_f_equals_the_dense_sum(cls, sign, pain, nimare_space):
    """The null's combine gathers an experiment's largest value as the minimum of
    ``sign * f`` when ``f`` is monotone, and by rank otherwise: both give the fitted map,
    which is the sum over experiments (in order) of ``f`` of the dense MA rows."""
    est = cls(mask=nimare_space, kernel__r=6.0)
    res = est.fit(pain)
    model = res.estimator._null_model()
    assert model.context().sign == sign
    dataset = pain.slice(res.estimator.dataset_.ids)
    ma = _dense_ma(ConeKernel(r=6.0), dataset, nimare_space)
    want = est._block_values(ma).astype(np.float64).sum(axis=0).astype(np.float32)
    np.testing.assert_array_equal(res.get_map("stat", "array"), want)
    np.testing.assert_array_equal(model.statistic_at(res.estimator.plan_.focus_ijk), want)
    # Random foci: the null's statistic against the dense sum of their cone maps.
    ijk = nimare_space.voxel_ijk[np.random.default_rng(5).integers(0, nimare_space.n_voxels,
                                                                   size=model.n_foci)]
    ma = _dense_ma(ConeKernel(r=6.0), dataset, nimare_space, focus_ijk=ijk)
    np.testing.assert_array_equal(
        model.statistic_at(ijk),
        est._block_values(ma).astype(np.float64).sum(axis=0).astype(np.float32))


def test_base_rate_sampler_draws_from_the_map(pain, nimare_space):
    res = MKDADensity(mask=nimare_space).fit(pain)
    weights = np.zeros(nimare_space.n_voxels)
    weights[:50] = 1.0  # every null focus lands among the first 50 voxels
    model = res.estimator._null_model(sampler=montecarlo.BaseRateFoci(weights))
    rng = np.random.default_rng(0)
    idx = model.draw(rng)
    assert idx.shape == (model.n_foci,) and idx.max() < 50
    out = montecarlo.run_montecarlo(model, montecarlo.MaxStatistic(), 4, 2, seed=1)
    assert out.max_stat.shape == (4,) and np.all(out.max_stat >= 1)


def test_voxel_exceedances_summary(pain, nimare_space):
    res = MKDADensity(mask=nimare_space).fit(pain)
    model = res.estimator._null_model()
    observed = res.get_map("stat", "array")
    out = montecarlo.run_montecarlo(model, montecarlo.VoxelExceedances(observed), 6, 3, seed=2)
    counts = out.values["exceedances"]
    expected = np.zeros_like(counts)
    for b in range(2):
        rng = np.random.default_rng(montecarlo.batch_seed(2, b))
        for _ in range(3):
            expected += model.statistic(model.draw(rng)) >= observed.astype(np.float32)
    np.testing.assert_array_equal(counts, expected)


def test_pairwise_estimator_from_datasets_and_collection(pain, nimare_space, tmp_path):
    first, second = pain.ids[:10], pain.ids[10:]
    est = DensityDifference(mask=nimare_space)
    res = est.fit(pain.slice(first), pain.slice(second))
    ma = _dense_ma(MKDAKernel(), pain, nimare_space)
    has = np.asarray([i in set(res.estimator.dataset_.ids) for i in pain.ids])
    g1 = np.isin(pain.ids, first) & has
    g2 = np.isin(pain.ids, second) & has
    assert 0 < g1.sum() < 10 and 0 < g2.sum()  # experiments without foci are left out
    assert (res.attrs["n_experiments1"], res.attrs["n_experiments2"]) == (g1.sum(), g2.sum())
    want = ma[g1].mean(axis=0, dtype=np.float64) - ma[g2].mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(res.get_map("stat_desc-group1MinusGroup2", "array"), want,
                               rtol=0, atol=1e-12)
    coll = daskmeta.Collection.build(pain, MKDAKernel(), tmp_path / "m.zarr", mask=nimare_space)
    from_store = DensityDifference().fit(coll, select=first)  # against the rest
    np.testing.assert_allclose(from_store.get_map("stat_desc-group1MinusGroup2", "array"), want,
                               rtol=0, atol=1e-12)
    with pytest.raises(daskmeta.DatasetError, match="share 1 experiment ids"):
        est.fit(pain.slice(first), pain.slice(pain.ids[9:]))
    with pytest.raises(daskmeta.DaskmetaError, match="needs select="):
        DensityDifference().fit(coll)


def test_estimator_contract(nimare_space):
    est = ConeSum(mask=nimare_space, kernel__r=6.0, chunk_size=8)
    shallow = est.get_params(deep=False)
    assert shallow == {"kernel_transformer": None, "null_method": "approximate",
                       "mask": nimare_space, "mask_margin": 10.0, "chunk_size": 8,
                       "kernel__r": 6.0}
    clone = est.clone()
    assert clone is not est and clone.get_params(deep=False) == shallow
    est.set_params(kernel__r=4.0, chunk_size=2)
    assert est.get_params()["kernel__r"] == 4.0 and clone.get_params()["kernel__r"] == 6.0
    with pytest.raises(daskmeta.DaskmetaError, match="ConeSum has no parameter 'radius'"):
        est.set_params(radius=3)
    with pytest.raises(daskmeta.DaskmetaError, match="chunk_size must be None or a positive "
                                                     "integer; got 0"):
        ConeSum(chunk_size=0).fit(None)
    deep = ConeSum(kernel_transformer=ConeKernel(r=5)).get_params(deep=True)
    assert deep["kernel_transformer__r"] == 5 and deep["kernel__r"] == 5
