"""BalancedALESubtraction against NiMARE 0.22.1 (same draws: the maps are NiMARE's)."""

from __future__ import annotations

import logging
import warnings

import dask
import numpy as np
import pytest
from conftest import NIMARE_MASK, PAIN_JSON

from daskmeta._pass import has_foci
from daskmeta.estimators import BalancedALESubtraction
from daskmeta.estimators.balanced import subset_schedule
from daskmeta.exceptions import DaskmetaError, DatasetError

NAME = "balancedGroup1MinusGroup2"


@pytest.fixture(scope="module")
def halves(pain_dataset):
    ids = [i for i, h in zip(pain_dataset.ids, has_foci(pain_dataset), strict=True) if h]
    return ids[:9], ids[9:]


def _nimare_fit(halves, **kw):
    from nimare.dataset import Dataset
    from nimare.meta.cbma.ale import BalancedALESubtraction as NiMAREBalanced

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NiMARE's deprecation of its Dataset
            nd = Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK))
            return NiMAREBalanced(**kw).fit(nd.slice(halves[0]), nd.slice(halves[1]))
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("null_method,coverage,kw", [
    ("random-foci", "gm", dict(n_subsamples=8, difference_iterations=6, n_iters=6)),
    ("label-permutation", "brain", dict(n_subsamples=5, difference_iterations=5, n_iters=5,
                                        target_n=7)),
])
def test_equals_nimare(pain_dataset, halves, null_method, coverage, kw):
    kw = dict(kw, random_state=7, null_method=null_method, mask_coverage=coverage)
    ours = BalancedALESubtraction(mask=str(NIMARE_MASK), **kw).fit(
        pain_dataset.slice(halves[0]), pain_dataset.slice(halves[1]))
    theirs = _nimare_fit(halves, **kw)
    assert set(ours.map_names) == set(theirs.maps)
    for name in ours.map_names:
        a = ours.get_map(name, "array")
        b = theirs.get_map(name, return_type="array")
        # float32 products and sums in NiMARE, float64 log-sums here: 1e-6 on the ALE
        # differences; every map derived from the draws (p, z, probabilities) is equal.
        atol = 1e-6 if name.startswith("stat_desc-balanced") else 0
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)
    assert np.abs(ours.get_map(f"stat_desc-{NAME}", "array")).max() > 1e-3
    for key in ("values_desc-balancedMinNull_corr-none", "values_desc-balancedMaxNull_corr-none"):
        np.testing.assert_allclose(ours.null_distributions[key],
                                   theirs.estimator.null_distributions_[key], atol=1e-6)
    assert ours.attrs["balanced_seed"] == 7


def test_schedule_is_nimares():
    from nimare.meta.cbma.utils import generate_subset_schedule

    for total, target, n in ((10, 9, 50), (9, 4, 20), (12, 3, 5000), (30, 10, 40)):
        ours = subset_schedule(total, target, n, 3)
        theirs = generate_subset_schedule(total, target, n_samples=n, random_state=3,
                                          exhaustive_limit=10000)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_workers_and_collection_give_the_same_maps(tmp_path, pain_dataset, halves,
                                                   nimare_space):
    distributed = pytest.importorskip("distributed")
    from daskmeta import Collection
    from daskmeta.kernels import ALEKernel

    kw = dict(n_subsamples=40, difference_iterations=4, n_iters=40, random_state=2,
              mask_coverage="brain")
    est = BalancedALESubtraction(mask=nimare_space, **kw)
    a, b = pain_dataset.slice(halves[0]), pain_dataset.slice(halves[1])
    with dask.config.set(scheduler="synchronous"):
        one = est.fit(a, b)
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=":0"):
        two = est.fit(a, b)
    coll = Collection.build(pain_dataset, ALEKernel(), tmp_path / "pain-ale.zarr",
                            mask=nimare_space)
    stored = BalancedALESubtraction(**kw).fit(coll, select=halves[0], select2=halves[1])
    for res in (two, stored):
        for name in one.map_names:
            np.testing.assert_allclose(res.get_map(name, "array"), one.get_map(name, "array"),
                                       rtol=0, atol=1e-7 if "stat_desc-b" in name else 0,
                                       err_msg=name)
    prob = one.get_map("prob_desc-group1", "array")
    assert 0 < prob.max() <= 1 and np.all(np.isin(np.round(prob * 40), np.arange(41)))


def test_errors(pain_dataset, halves):
    a, b = pain_dataset.slice(halves[0]), pain_dataset.slice(halves[1])
    with pytest.raises(DatasetError, match=r"target_n must be between 1 and the smaller "
                                           r"group's size \(9\); got 10"):
        BalancedALESubtraction(target_n=10, n_iters=1, n_subsamples=1,
                               difference_iterations=1).fit(a, b)
    with pytest.raises(DaskmetaError, match="null_method='uniform' is not supported; allowed: "
                                            "random-foci, label-permutation"):
        BalancedALESubtraction(null_method="uniform").fit(a, b)
    with pytest.raises(DaskmetaError, match="mask_coverage must be 'gm' or 'brain'; got 'wm'"):
        BalancedALESubtraction(mask_coverage="wm").fit(a, b)
    with pytest.raises(DaskmetaError, match="alpha must be a number strictly between 0 and 1"):
        BalancedALESubtraction(alpha=1.5).fit(a, b)
    with pytest.raises(DaskmetaError, match="n_subsamples must be a positive integer; got 0"):
        BalancedALESubtraction(n_subsamples=0).fit(a, b)
    with pytest.raises(DatasetError, match="share"):
        BalancedALESubtraction().fit(a, a)


def test_cli_balanced_subtraction(tmp_path, capsys, pain_dataset, halves):
    import json

    import nibabel as nib

    from daskmeta.cli import main

    paths = []
    for name, ids in zip("ab", halves, strict=True):
        path = tmp_path / f"{name}.zip"
        pain_dataset.slice(ids).save(path)
        paths.append(str(path))
    out = tmp_path / "bal"
    opts = ["--n-subsamples", "6", "--difference-iterations", "3", "--n-iters", "5",
            "--seed", "4", "--mask-coverage", "brain", "--mask", str(NIMARE_MASK)]
    assert main(["balanced-subtraction", *paths, "--out", str(out), *opts]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    expect = BalancedALESubtraction(n_subsamples=6, difference_iterations=3, n_iters=5,
                                    random_state=4, mask_coverage="brain",
                                    mask=str(NIMARE_MASK)).fit(
        pain_dataset.slice(halves[0]), pain_dataset.slice(halves[1]))
    for name in expect.map_names:
        img = nib.load(out / f"{name}.nii.gz")
        np.testing.assert_allclose(np.asarray(img.dataobj)[expect.space.mask],
                                   expect.get_map(name, "array"), atol=1e-7, err_msg=name)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["balanced_seed"] == 4 and prov["estimator"] == "BalancedALESubtraction"
    assert main(["balanced-subtraction", paths[0], "--out", str(tmp_path / "x"), *opts]) == 2
    assert "needs two inputs A B, or one collection store" in capsys.readouterr().err
    assert main(["balanced-subtraction", *paths, "--out", str(tmp_path / "x"),
                 "--n-subsamples", "0"]) == 2
    assert "--n-subsamples must be an integer from 1" in capsys.readouterr().err
    assert main(["balanced-subtraction", paths[0], paths[0], "--out", str(tmp_path / "x"),
                 *opts]) == 2
    assert "share" in capsys.readouterr().err


def test_distinct_subsets_counted_equal_every_draw():
    """Each distinct subset's ALE is computed once and counted: the sum over draws (repeats,
    in any order) equals summing every draw's ALE map."""
    from daskmeta.estimators.balanced import _ale_of_subsets, _counted_ale_sum

    rng = np.random.default_rng(2)
    logs = np.log1p(-rng.random((6, 300)) * 0.3).astype(np.float32)
    logs[rng.random(logs.shape) < 0.6] = 0.0
    draws = np.array([rng.permutation(6)[:4] for _ in range(150)], dtype=np.int32)
    full = np.array([rng.permutation(6) for _ in range(70)], dtype=np.int32)
    for subsets in (draws, full):
        want = sum(ale.astype(np.float64).sum(axis=0)
                   for ale in _ale_of_subsets(logs, subsets))
        got = _counted_ale_sum(logs, subsets)
        assert len(np.unique(np.sort(subsets, axis=1), axis=0)) <= 15
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # every draw the same set (NiMARE's default target_n for the smaller group): one map
    np.testing.assert_array_equal(_counted_ale_sum(logs, full),
                                  70 * next(_ale_of_subsets(logs, full[:1]))[0].astype(
                                      np.float64))


def test_many_distinct_subsets_summed_by_voxel_equal_nimare(pain_dataset, halves):
    """More than _COLUMN_SUBSETS distinct subsamples per group (target_n=7 of 9 and of 10):
    the balanced difference is summed voxel by voxel, and the maps are still NiMARE's."""
    from daskmeta.estimators import balanced

    kw = dict(n_subsamples=5, difference_iterations=40, n_iters=3, target_n=7,
              null_method="label-permutation", mask_coverage="brain", random_state=3)
    rng = np.random.RandomState(3)
    first = balanced._pairs(rng, 9, 10, 7, 40)
    assert min(len(np.unique(np.sort(i, axis=1), axis=0)) for i in first) > (
        balanced._COLUMN_SUBSETS)
    ours = BalancedALESubtraction(mask=str(NIMARE_MASK), **kw).fit(
        pain_dataset.slice(halves[0]), pain_dataset.slice(halves[1]))
    theirs = _nimare_fit(halves, **kw)
    for name in ours.map_names:
        atol = 1e-6 if name.startswith("stat_desc-balanced") else 0
        np.testing.assert_allclose(ours.get_map(name, "array"),
                                   theirs.get_map(name, return_type="array"), rtol=0,
                                   atol=atol, err_msg=name)
    assert np.abs(ours.get_map(f"stat_desc-{NAME}", "array")).max() > 1e-3


def test_column_ale_sum_equals_products():
    """The voxel-by-voxel sum of many subsets' ALE maps equals the products' (float32
    precision), including voxels no row touches."""
    from daskmeta.estimators import balanced

    rng = np.random.default_rng(4)
    logs = np.log1p(-rng.random((12, 400)) * 0.3).astype(np.float32)
    logs[rng.random(logs.shape) < 0.7] = 0.0
    logs[:, 50:60] = 0.0
    subsets = np.array([rng.permutation(12)[:5] for _ in range(300)], dtype=np.int32)
    distinct, counts = np.unique(np.sort(subsets, axis=1), axis=0, return_counts=True)
    assert len(distinct) > balanced._COLUMN_SUBSETS
    got = balanced._column_ale_sum(logs, distinct, counts)
    want = sum(ale.astype(np.float64).sum(axis=0)
               for ale in balanced._ale_of_subsets(logs, subsets))
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert np.all(got[50:60] == 0) and got.min() >= 0 and got.max() > 1


def test_cluster_z_on_the_bounding_box_equals_whole_volume():
    """Clusters labelled on the bounding box of the supra-threshold voxels: the same kept z
    and largest size as labelling the whole volume (NiMARE's _threshold_z_clusters)."""
    from scipy import ndimage
    from scipy.stats import norm

    from daskmeta.estimators.balanced import _cluster_z

    rng = np.random.default_rng(5)
    mask = np.zeros((12, 13, 14), dtype=bool)
    mask[1:11, 2:12, 1:13] = True
    mask[5, 5, 5] = False
    z = ndimage.gaussian_filter(rng.normal(size=mask.shape), 1.2)[mask] * 8
    z = z.astype(np.float32)
    for thr in (None, 3):
        vol = np.zeros(mask.shape, dtype=np.float32)
        vol[mask] = z
        labels, n = ndimage.label(vol > norm.ppf(1 - 0.05))
        sizes = np.bincount(labels[labels > 0])
        assert n > 2
        keep = sizes > (thr if thr is not None else -1)
        keep[0] = False
        want = (vol * keep[labels])[mask] if thr is not None else z
        got, size = _cluster_z(z, mask, 0.05, thr)
        assert size == sizes.max()
        np.testing.assert_array_equal(got, want)
    assert _cluster_z(np.zeros_like(z), mask, 0.05, 3)[1] == 0
