"""Parity with NiMARE 0.22.1 on the pain dataset, with NiMARE's mask."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import assert_close, no_compute

import daskmeta
from daskmeta.estimators import ALE, KDA, MKDADensity
from daskmeta.kernels import ALEKernel, KDAKernel, MKDAKernel

nimare_kernel = pytest.importorskip("nimare.meta.kernel")
nimare_cbma = pytest.importorskip("nimare.meta.cbma")

logging.getLogger("nimare").setLevel(logging.ERROR)


def _rows_in_nimare_order(dataset):
    # NiMARE orders MA rows by sorted experiment id (np.unique).
    ids = [i for i in dataset.ids if i in set(dataset.foci["id"])]
    return dataset.slice(sorted(ids))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ALEKernel, "ALEKernel"),
        (MKDAKernel, "MKDAKernel"),
        (KDAKernel, "KDAKernel"),
    ],
)
def test_ma_maps_identical(ours, theirs, pain_dataset, nimare_pain, nimare_space):
    ds = _rows_in_nimare_order(pain_dataset)
    with no_compute():
        ma = ours().transform(ds, nimare_space, chunk_size=5)
    assert ma.chunks[0] == (5, 5, 5, 4)
    expected = getattr(nimare_kernel, theirs)().transform(nimare_pain, return_type="array")
    got = ma.compute()
    assert got.dtype == expected.dtype == np.float32
    assert got.shape == expected.shape == (19, 228483)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("fwhm", [10, 12.5, np.float64(10.0)])
def test_fixed_fwhm_ale_ma_maps_identical(fwhm, pain_dataset, nimare_pain, nimare_space):
    # NiMARE divides a fixed FWHM by the float32 root of the voxel volume: a Python number is
    # divided in float32 (NumPy 2), an np.float64 in float64; the kernel follows either way.
    ds = _rows_in_nimare_order(pain_dataset)
    got = ALEKernel(fwhm=fwhm).transform(ds, nimare_space).compute()
    expected = nimare_kernel.ALEKernel(fwhm=fwhm).transform(nimare_pain, return_type="array")
    assert np.array_equal(got, expected)


CASES = [
    ("ALE", ALE, {}, {}),
    ("MKDADensity", MKDADensity, {}, {}),
    ("MKDADensity", MKDADensity, {"weighting": "sample_size"}, {"weighting": "sample_size"}),
    ("KDA", KDA, {}, {}),
    ("ALE", ALE, {"kernel__fwhm": 12.0}, {"kernel__fwhm": 12.0}),
    ("ALE", ALE, {"kernel__sample_size": 20}, {"kernel__sample_size": 20}),
    ("MKDADensity", MKDADensity, {"kernel__r": 6}, {"kernel__r": 6}),
]


@pytest.mark.parametrize(("name", "cls", "kw_ours", "kw_theirs"), CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_estimator_maps_match_nimare(name, cls, kw_ours, kw_theirs, pain_dataset, nimare_pain,
                                     nimare_mask):
    theirs = getattr(nimare_cbma, name)(**kw_theirs).fit(nimare_pain)
    ours = cls(mask=nimare_mask, chunk_size=4, **kw_ours).fit(pain_dataset)
    assert_close(ours.get_map("stat", "array"), theirs.get_map("stat", return_type="array"),
                 1e-6, "stat")
    for m in ("p", "z", "logp"):
        assert_close(ours.get_map(m, "array"), theirs.get_map(m, return_type="array"), 1e-4, m)
    # The null grids are NiMARE's, bin for bin.
    assert np.array_equal(ours.null_distributions["histogram_bins"],
                          np.asarray(theirs.estimator.null_distributions_["histogram_bins"]))
    if name == "ALE":  # the segmented convolution adds NiMARE's products in NiMARE's order
        key = "histweights_corr-none_method-approximate"
        assert np.array_equal(ours.null_distributions[key],
                              theirs.estimator.null_distributions_[key])


@pytest.mark.parametrize("kw", [{"kernel__fwhm": 10}, {"kernel__sample_size": 20}, {}],
                         ids=["fwhm", "sample_size", "default"])
def test_ale_null_in_nimare_order_of_experiments(kw, pain_dataset, nimare_pain, nimare_mask):
    # Each convolution step of the null rounds to its grid, so the null depends on the order
    # of the experiments; NiMARE's is its MA rows' (sorted ids), whatever the dataset's.
    ds = daskmeta.Dataset(pain_dataset.experiments.iloc[::-1], pain_dataset.foci)
    assert ds.ids[0] > ds.ids[-1]
    theirs = nimare_cbma.ALE(**kw).fit(nimare_pain)
    ours = ALE(mask=nimare_mask, **kw).fit(ds)
    assert np.array_equal(ours.get_map("stat", "array"),
                          theirs.get_map("stat", return_type="array"))
    key = "histweights_corr-none_method-approximate"
    assert np.array_equal(ours.null_distributions[key],
                          theirs.estimator.null_distributions_[key])
    for m in ("p", "z"):
        assert_close(ours.get_map(m, "array"), theirs.get_map(m, return_type="array"), 1e-6, m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ale_convolution_step_equals_nimare(seed):
    from nimare.meta.cbma.null_utils import _update_ale_histogram

    from daskmeta.estimators.ale import _convolve_step

    rng = np.random.default_rng(seed)
    n_bins = 9000 + 500 * seed  # several tiles, the last one partial
    centers = np.round(np.arange(n_bins) * 1e-5, 5)
    inv_step = 1 / (centers[1] - centers[0])
    ale = np.zeros(n_bins)
    lo, hi = 3 * seed, n_bins - 40 * seed  # mass up to the top: products clip to the last bin
    ale[lo:hi] = rng.random(hi - lo) ** 8
    ale[rng.random(n_bins) < 0.2] = 0  # gaps
    exp_bins = np.sort(rng.choice(np.arange(1, 3000), 60, replace=False))
    exp_bins[0] = 0
    exp_probs = rng.random(60) / 60
    expected = np.zeros(n_bins)
    nz = np.flatnonzero(ale)
    _update_ale_histogram(nz, ale[nz], exp_bins, exp_probs, centers, inv_step, n_bins, expected)
    got = np.full(n_bins, np.nan)
    _convolve_step(ale, nz[0], nz[-1] + 1, exp_bins, exp_probs, centers, inv_step, got)
    assert np.array_equal(got, expected)


def test_result_independent_of_chunking(pain_dataset, nimare_mask):
    a = ALE(mask=nimare_mask, chunk_size=1).fit(pain_dataset)
    b = ALE(mask=nimare_mask, chunk_size=64).fit(pain_dataset)
    assert_close(a.get_map("stat", "array"), b.get_map("stat", "array"), 1e-7, "stat")
    assert np.array_equal(a.get_map("p", "array"), b.get_map("p", "array"))


def test_fit_on_distributed_client_equals_local(pain_dataset, nimare_mask):
    distributed = pytest.importorskip("distributed")
    local = MKDADensity(mask=nimare_mask, chunk_size=4).fit(pain_dataset)
    with distributed.Client(n_workers=2, threads_per_worker=1, processes=True,
                            dashboard_address=None) as client:
        assert daskmeta.cluster.active_client() is client
        remote = MKDADensity(mask=nimare_mask, chunk_size=4).fit(pain_dataset)
    for m in ("stat", "p", "z"):
        assert np.array_equal(local.get_map(m, "array"), remote.get_map(m, "array"))


def test_ale_null_equals_nimare_and_drops_only_its_subnormal_tail():
    # ALE maps of 120 experiments with kernel-like values: enough convolution steps that
    # the top of NiMARE's null underflows into subnormal numbers.
    from nimare.meta.cbma.ale import ALE as NiMAREALE
    from scipy import sparse

    from daskmeta._stats import nullhist_maps
    from daskmeta.estimators.ale import ale_null_histogram

    rng = np.random.default_rng(0)
    n_exp, n_vox = 120, 100_000
    levels = (0.008 * np.exp(-np.arange(40) / 8)).astype(np.float32)
    block = np.zeros((n_exp, n_vox), dtype=np.float32)
    for row in block:
        voxels = rng.choice(n_vox, 3000, replace=False)
        row[voxels] = levels[39 - np.minimum(rng.geometric(0.08, 3000) - 1, 39)]
    ours = ALE(kernel__sample_size=20)
    bins, dropped = ours._null(ours._row_summaries(block), n_vox)
    exact = ale_null_histogram([s[1:] for s in ours._row_summaries(block)], n_vox, bins,
                               drop_subnormal=False)

    theirs = NiMAREALE()
    theirs.null_distributions_ = {"histogram_bins": bins}
    theirs._ALE__n_mask_voxels = n_vox
    theirs._compute_null_approximate(sparse.csr_matrix(block))
    nimare_hist = theirs.null_distributions_["histweights_corr-none_method-approximate"]
    assert np.array_equal(exact, nimare_hist)

    tiny = np.finfo(np.float64).tiny
    subnormal = (nimare_hist > 0) & (nimare_hist < tiny)
    assert subnormal.sum() > 100  # the case exercises the tail
    assert not ((dropped > 0) & (dropped < tiny)).any()
    assert np.all(dropped[nimare_hist < tiny] == 0)
    big = nimare_hist >= 1e-280
    assert np.array_equal(dropped[big], nimare_hist[big])
    values = np.linspace(0, bins[-1], 50_001)
    ours_p = nullhist_maps(values, dropped, bins)["p"]
    nimare_p = nullhist_maps(values, nimare_hist, bins)["p"]
    assert not np.array_equal(ours_p, nimare_p)
    resolved = nimare_p >= 1e-280
    assert np.array_equal(ours_p[resolved], nimare_p[resolved])
