"""Image-based meta-analysis: every estimator's maps against NiMARE 0.22.1 on a simulated
image set (same mask, same files), PermutedOLS's FWE null against NiMARE's in distribution,
and its Monte Carlo null identical without a client and on a real scheduler with two worker
processes."""

from __future__ import annotations

import gc
import logging
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import crop_mask
from scipy import stats

import daskmeta
from daskmeta import simulate
from daskmeta.correct import FWECorrector
from daskmeta.estimators import (
    DerSimonianLaird,
    Fishers,
    FixedEffectsHedges,
    Hedges,
    PermutedOLS,
    SampleSizeBasedLikelihood,
    Stouffers,
    VarianceBasedLikelihood,
    WeightedLeastSquares,
)
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.imagestack import ImageStack
from daskmeta.space import Space

nimare_ibma = pytest.importorskip("nimare.meta.ibma")
nimare_dataset = pytest.importorskip("nimare.dataset")
nimare_correct = pytest.importorskip("nimare.correct")

N_STUDIES = 21


def _poke(path, where, value):
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[where] = value
    nib.save(nib.Nifti1Image(data, img.affine), path)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """21 simulated studies; a few images carry NaN, zero or invalid-varcope patches, so
    NiMARE's liberal mask splits the voxels into several bags."""
    mask = crop_mask()
    out = simulate.images(tmp_path_factory.mktemp("ibma-sim"), n_studies=N_STUDIES,
                          space=Space(mask), compress=False, seed=7)
    img = out.dataset.images
    for t in ("z", "beta", "t"):
        _poke(img[t][0], (slice(0, 6), slice(None), slice(None)), np.nan)
    for t in ("z", "beta", "t"):
        _poke(img[t][1], (slice(None), slice(0, 5), slice(None)), 0.0)
    _poke(img["varcope"][2], (slice(None), slice(None), slice(0, 4)), -1.0)
    return out, mask


@pytest.fixture(scope="module")
def stack(sim):
    out, mask = sim
    return ImageStack.build(out.dataset, mask=mask, image_types=["z", "t", "beta", "varcope"])


@pytest.fixture(scope="module")
def nimare_dset(sim):
    out, mask = sim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nimare_dataset.Dataset(out.nimare_dict(), mask=mask)


@pytest.fixture(scope="module")
def masked_cache():
    """NiMARE's own cache of masked images, shared by its fits (each file is masked once)."""
    return {}


def _nimare_fit(est, dset, cache):
    est.share_masked_image_cache(cache)
    logging.getLogger("nimare").setLevel(logging.ERROR)
    # nilearn runs gc.collect() for every image it masks, which with a test session's heap
    # costs most of a second an image; frozen objects are not scanned (as daskmeta.plotting).
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return est.fit(dset)
    finally:
        gc.unfreeze()


CASES = [
    (Stouffers, {}, "Stouffers"),
    (Stouffers, {"use_sample_size": True, "two_sided": False}, "Stouffers"),
    (Fishers, {}, "Fishers"),
    (WeightedLeastSquares, {"tau2": 0.1}, "WeightedLeastSquares"),
    (DerSimonianLaird, {}, "DerSimonianLaird"),
    (Hedges, {}, "Hedges"),
    (FixedEffectsHedges, {}, "FixedEffectsHedges"),
    (SampleSizeBasedLikelihood, {}, "SampleSizeBasedLikelihood"),
    (VarianceBasedLikelihood, {"method": "reml"}, "VarianceBasedLikelihood"),
    (PermutedOLS, {}, "PermutedOLS"),
    (DerSimonianLaird, {"aggressive_mask": True}, "DerSimonianLaird"),
]


@pytest.mark.parametrize("cls, params, nimare_name", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_maps_equal_nimare(stack, nimare_dset, masked_cache, cls, params, nimare_name):
    ours = cls(**params).fit(stack, voxels_per_task=4096)  # two voxel chunks: blockwise
    theirs = _nimare_fit(getattr(nimare_ibma, nimare_name)(**params), nimare_dset,
                         masked_cache)
    assert ours.map_names == list(theirs.maps), "NiMARE's map names, in NiMARE's order"
    for name in ours.map_names:
        a = np.asarray(ours.get_map(name, "array"), dtype=float)
        b = np.asarray(theirs.get_map(name, return_type="array"), dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: NaN voxels differ"
        both = ~np.isnan(a)
        assert both.sum() > (3000 if params.get("aggressive_mask") else 7000)
        diff = np.max(np.abs(a[both] - b[both]))
        assert diff < 1e-5, f"{cls.__name__} {name}: max abs difference {diff:.3g}"
    # The patches made bags: the first study's NaN slab has one experiment fewer.
    dof = ours.get_map("dof", "array")
    if not params.get("aggressive_mask") and cls is not SampleSizeBasedLikelihood:
        assert set(np.unique(dof[np.isfinite(dof)])) >= {N_STUDIES - 1, N_STUDIES - 2}


def test_dataset_fit_equals_stack_fit(sim, stack):
    out, mask = sim
    a = DerSimonianLaird(mask=mask).fit(out.dataset)
    b = DerSimonianLaird().fit(stack)
    for name in a.map_names:
        np.testing.assert_array_equal(a.get_map(name, "array"), b.get_map(name, "array"))
    # A selection of experiments by id equals the stack of those experiments.
    ids = list(out.dataset.experiments["id"][5:15])
    c = Stouffers(mask=mask).fit(out.dataset, select=ids)
    d = Stouffers().fit(stack, select=ids)
    np.testing.assert_array_equal(c.get_map("z", "array"), d.get_map("z", "array"))
    assert d.attrs["n_experiments"] == 10


def test_true_effect_is_found(sim, stack):
    out, _ = sim
    res = DerSimonianLaird().fit(stack)
    est = res.get_map("est", "array")
    ok = np.isfinite(est)
    se = res.get_map("se", "array")
    # The pooled estimate's 95% intervals cover the simulated true effect about 95% of the
    # time, and it follows the effect's shape.
    covered = np.abs(est[ok] - out.true_effect[ok]) < 1.96 * se[ok]
    assert 0.9 < covered.mean() < 0.99
    assert np.corrcoef(est[ok], out.true_effect[ok])[0, 1] > 0.6


def test_bad_fits_are_refused(sim, stack):
    out, mask = sim
    with pytest.raises(DatasetError, match="at least 2 experiments; the selection has 1"):
        Stouffers().fit(stack, select=[out.dataset.experiments["id"][0]])
    with pytest.raises(DatasetError, match="unknown experiment ids: nope"):
        Stouffers().fit(stack, select=["nope"])
    with pytest.raises(DaskmetaError, match="tau2 must be a number >= 0; got -1"):
        WeightedLeastSquares(tau2=-1).fit(stack)
    with pytest.raises(DaskmetaError, match="groupby must be None or False"):
        Stouffers(groupby="study").fit(stack)
    with pytest.raises(DaskmetaError, match="has no 'se' images; it has z, t, beta, varcope"):
        from daskmeta.estimators.ibma import _Regression

        class SE(_Regression):
            _inputs = ("beta", "se")
            _pymare_name = "DerSimonianLaird"

            def __init__(self, mask=None):
                self.mask = mask
                self.groupby = None
                self.aggressive_mask = False
                self.weight_scheme = "rescale"
                self.rho = 0.8
                self.small_sample_correction = None

        SE().fit(stack)
    # Two images of one study are dependent: refused unless groupby=False.
    ds = out.dataset
    exp = ds.experiments.copy()
    exp.loc[1, "study_id"] = exp.loc[0, "study_id"]
    dup = daskmeta.Dataset(exp, ds.foci, images=ds.images)
    with pytest.raises(DatasetError, match="study study-0000 has 2 selected images.*groupby=False"):
        Stouffers(mask=mask).fit(dup)
    assert "z" in Stouffers(mask=mask, groupby=False).fit(dup).map_names
    # Sample sizes are needed where the model reads them.
    exp = ds.experiments.copy()
    exp.loc[3, "sample_size"] = np.nan
    nosize = daskmeta.Dataset(exp, ds.foci, images=ds.images)
    with pytest.raises(DatasetError, match="positive sample size for every experiment; "
                                           "missing or invalid for study-0003"):
        Stouffers(use_sample_size=True, mask=mask).fit(nosize)


# --------------------------------------------------------------------------------------------
# PermutedOLS: Monte Carlo FWE
# --------------------------------------------------------------------------------------------
N_ITERS, BATCH, SEED = 600, 50, 11
_NULL = "values_level-voxel_corr-fwe_method-montecarlo"


@pytest.fixture(scope="module")
def pols(stack):
    return PermutedOLS().fit(stack)


@pytest.fixture(scope="module")
def pols_fwe(pols):
    return FWECorrector(method="montecarlo", n_iters=N_ITERS, batch_size=BATCH,
                        seed=SEED).transform(pols)


def test_permuted_ols_fwe_agrees_with_nimare_in_distribution(pols_fwe, nimare_dset,
                                                             masked_cache):
    theirs = _nimare_fit(nimare_ibma.PermutedOLS(), nimare_dset, masked_cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.freeze()
        try:
            ncres = nimare_correct.FWECorrector(method="montecarlo",
                                                n_iters=N_ITERS).transform(theirs)
        finally:
            gc.unfreeze()
    names = [n for n in pols_fwe.map_names if n.endswith("_corr-FWE_method-montecarlo")]
    assert names == [n for n in ncres.maps if n.endswith("_corr-FWE_method-montecarlo")]
    ours = pols_fwe.null_distributions[_NULL]
    nulls = ncres.estimator.null_distributions_[_NULL]
    assert ours.shape == nulls.shape == (N_ITERS,)
    ks = stats.ks_2samp(ours, nulls)
    assert ks.pvalue > 0.01, f"max-z nulls differ: {ks}"
    # The corrected p-values agree to Monte Carlo error (both from N_ITERS draws).
    pa = pols_fwe.get_map("p_level-voxel_corr-FWE_method-montecarlo", "array")
    pb = ncres.get_map("p_level-voxel_corr-FWE_method-montecarlo", return_type="array")
    assert np.array_equal(np.isnan(pa), np.isnan(pb))
    ok = np.isfinite(pa)
    assert np.max(np.abs(pa[ok] - pb[ok])) < 0.06
    sig_a, sig_b = pa[ok] < 0.05, pb[ok] < 0.05
    assert sig_a.sum() > 50 and abs(int(sig_a.sum()) - int(sig_b.sum())) <= 0.1 * sig_b.sum()
    # The p map is the null's empirical exceedance of the observed |z|, as NiMARE's.
    z = np.abs(pols_fwe.get_map("z", "array"))
    i = int(np.nanargmax(z))
    assert pa[i] == pytest.approx((np.sum(ours >= z[i]) + 1) / (N_ITERS + 1))


def test_permuted_ols_null_on_scheduler_and_two_workers(scheduler_and_workers, pols,
                                                        pols_fwe):
    client, _ = scheduler_and_workers
    got = FWECorrector(method="montecarlo", n_iters=N_ITERS, batch_size=BATCH,
                       seed=SEED).transform(pols)
    np.testing.assert_array_equal(got.null_distributions[_NULL],
                                  pols_fwe.null_distributions[_NULL])
    for name in got.map_names:
        np.testing.assert_array_equal(got.get_map(name, "array"),
                                      pols_fwe.get_map(name, "array"))
    assert len(client.run(os.getpid)) == 2
    # The fit itself on the cluster (blockwise tasks) equals the local fit.
    again = PermutedOLS().fit(pols.estimator.stack_, voxels_per_task=4096)
    np.testing.assert_array_equal(again.get_map("t", "array"), pols.get_map("t", "array"))


def test_permuted_ols_fwe_refuses_cluster_level_and_early_stop(pols):
    with pytest.raises(DaskmetaError, match="early_stop is not offered for PermutedOLS"):
        FWECorrector(method="montecarlo", n_iters=10, early_stop=0.1).transform(pols)
    with pytest.raises(DaskmetaError, match="a Monte Carlo null of its own .as PermutedOLS.; "
                                            "Stouffers has neither"):
        FWECorrector(method="montecarlo", n_iters=10).transform(
            Stouffers().fit(pols.estimator.stack_))
