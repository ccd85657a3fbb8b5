"""MKDAChi2: NiMARE's maps from Datasets and Collections (selection vs rest, two
selections), the cached whole-collection counts, its label-permutation Monte Carlo FWE and
its FDR correction."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import NIMARE_MASK, PAIN_JSON, ids_with_foci
from scipy import ndimage, sparse, stats

import daskmeta
from daskmeta import Collection, montecarlo
from daskmeta.correct import FDRCorrector, FWECorrector
from daskmeta.estimators import ALESubtraction, MKDAChi2
from daskmeta.estimators import chi2 as chi2_module
from daskmeta.estimators.subtraction import SubtractionNull
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.kernels import ALEKernel, MKDAKernel
from daskmeta.montecarlo.permutation import PerMap

MASK = str(NIMARE_MASK)
MAPS = ("chi2_desc-uniformity", "chi2_desc-association", "z_desc-association",
        "p_desc-association", "logp_desc-uniformity", "prob_desc-FgA", "chi2_desc-group2")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Whole-collection counts cached in the test's folder, not the user's cache."""
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def chi2_result(pain_halves):
    return MKDAChi2(mask=MASK).fit(*pain_halves)


@pytest.fixture(scope="module")
def nimare_chi2(nimare_pain):
    mkda = pytest.importorskip("nimare.meta.cbma.mkda")
    ids = list(nimare_pain.coordinates["id"].unique())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mkda.MKDAChi2().fit(nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:]))


@pytest.fixture(scope="module")
def labelled():
    """pain21 with a label 'topic' (weights 0 or 1) on 8 experiments with foci."""
    from daskmeta.io import read_nimare_json

    ds = read_nimare_json(PAIN_JSON)
    with_foci = set(ids_with_foci(ds))
    w = np.zeros((ds.n_experiments, 2))
    rows = [r for r, i in enumerate(ds.ids) if i in with_foci]
    w[rows[::2][:8], 0] = 1.0
    w[rows[1::2][:5], 1] = 1.0
    return daskmeta.Dataset(ds.experiments, ds.foci, labels=sparse.csr_matrix(w),
                            label_names=["topic", "other"])


@pytest.fixture(scope="module")
def store(tmp_path_factory, labelled):
    root = tmp_path_factory.mktemp("chi2")
    return Collection.build(labelled, MKDAKernel(), root / "mkda.zarr", mask=MASK)


def _same(a, b, names=MAPS):
    for m in names:
        x, y = a.get_map(m, "array"), b.get_map(m, "array")
        np.testing.assert_array_equal(x, y, err_msg=m)


# -- maps ---------------------------------------------------------------------------------------
def test_maps_equal_nimare(chi2_result, nimare_chi2):
    assert sorted(chi2_result.map_names) == sorted(nimare_chi2.maps)
    for name in nimare_chi2.maps:
        ours = chi2_result.get_map(name, "array")
        theirs = nimare_chi2.get_map(name, return_type="array")
        assert ours.dtype == theirs.dtype == np.float32, name
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
        ok = ~np.isnan(theirs)
        np.testing.assert_allclose(ours[ok], theirs[ok], rtol=0, atol=1e-6, err_msg=name)
    assert chi2_result.attrs["n_experiments1"] == 9
    assert chi2_result.attrs["n_experiments2"] == 10


def test_collection_selection_against_rest_and_second_selection(store, labelled):
    topic = labelled.get_studies_by_label("topic")
    rest = [i for i in ids_with_foci(labelled) if i not in set(topic)]
    want = MKDAChi2(mask=MASK).fit(labelled.slice(topic), labelled.slice(rest))
    got = MKDAChi2().fit(store, select="topic")
    _same(got, want, want.map_names)
    assert got.attrs["selection1"] == "topic" and got.attrs["selection2"] == "all"
    other = labelled.get_studies_by_label("other")
    want2 = MKDAChi2(mask=MASK).fit(labelled.slice(topic), labelled.slice(other))
    _same(MKDAChi2().fit(store, select="topic", select2="other"), want2, want2.map_names)
    # and from a Dataset source with labels
    assert MKDAChi2(prior=None).fit(store, select="topic").map_names == [
        m for m in want.map_names if not m.endswith("_prior")]


def test_whole_collection_counts_are_summed_once_per_build(tmp_path, monkeypatch, labelled):
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))
    coll = Collection.build(labelled, MKDAKernel(), tmp_path / "a.zarr", mask=MASK)
    calls = []
    real = chi2_module.run_pass

    def counting(source, rows, *args, **kwargs):
        calls.append(len(rows))
        return real(source, rows, *args, **kwargs)

    monkeypatch.setattr(chi2_module, "run_pass", counting)
    first = MKDAChi2().fit(coll, select="topic")
    assert calls == [8, 19]  # the selection, then the whole collection once
    MKDAChi2().fit(coll, select="topic")
    assert calls == [8, 19, 8]
    # a new process (empty memory cache) reads the cached file
    chi2_module._TOTALS.clear()
    _same(MKDAChi2().fit(coll, select="topic"), first)
    assert calls == [8, 19, 8, 8]
    cached = list((tmp_path / "cache" / "totals").glob("*.npz"))
    assert len(cached) == 1
    # a damaged file is ignored (summed again, rewritten)
    chi2_module._TOTALS.clear()
    cached[0].write_bytes(b"not an npz")
    _same(MKDAChi2().fit(coll, select="topic"), first)
    assert calls[-2:] == [8, 19]
    # a rebuilt store has another content token: summed again
    chi2_module._TOTALS.clear()
    coll2 = Collection.build(labelled, MKDAKernel(), tmp_path / "a.zarr", mask=MASK,
                             overwrite=True)
    _same(MKDAChi2().fit(coll2, select="topic"), first)
    assert calls[-2:] == [8, 19]


def test_bad_inputs(pain_halves, store, pain_dataset):
    d1, d2 = pain_halves
    with pytest.raises(DaskmetaError, match="MKDAChi2 counts experiments active in binary "
                                            "spheres: it needs an MKDAKernel; got ALEKernel"):
        MKDAChi2(kernel_transformer=ALEKernel(), mask=MASK).fit(d1, d2)
    with pytest.raises(DaskmetaError, match=r"MKDAChi2: prior must be None or a number in "
                                            r"\[0, 1\]; got 2"):
        MKDAChi2(prior=2).fit(d1, d2)
    with pytest.raises(DatasetError, match="the two groups share 9 experiment ids"):
        MKDAChi2(mask=MASK).fit(d1, d1)
    with pytest.raises(DatasetError, match="empty selection: no experiment matches label "
                                           "expression 'topic & other'"):
        MKDAChi2().fit(store, select="topic", select2="topic & other")
    with pytest.raises(DatasetError, match="the two groups share experiments"):
        MKDAChi2().fit(store, select="topic", select2="topic")
    with pytest.raises(DaskmetaError, match=r"MKDAChi2.fit\(collection\) needs select="):
        MKDAChi2().fit(store)
    everything = ids_with_foci(pain_dataset)
    coll_ids = store.dataset.ids
    with pytest.raises(DatasetError, match="empty second group: no other experiment has foci"):
        MKDAChi2().fit(store, select=[i for i in coll_ids if i in set(everything)])


# -- Monte Carlo ----------------------------------------------------------------------------
def test_permutation_null_with_observed_labels_gives_the_fit(chi2_result, store):
    model = chi2_result.estimator._null_model()
    stat = model.statistic_at()
    fast = model._batch_statistic(model.observed)  # the compiled path of the batches
    for test in ("uniformity", "group2", "association"):
        np.testing.assert_array_equal(stat[test],
                                      chi2_result.get_map(f"chi2_desc-{test}", "array"))
        np.testing.assert_array_equal(fast[test], stat[test])
    drawn = model.draw(np.random.default_rng(1))
    slow, fast = model.statistic(drawn), model._batch_statistic(drawn)
    for test in slow:
        np.testing.assert_array_equal(fast[test], slow[test])
    res = MKDAChi2().fit(store, select="topic")
    stat = res.estimator._null_model().statistic_at()
    np.testing.assert_array_equal(stat["association"],
                                  res.get_map("chi2_desc-association", "array"))
    # a permutation keeps the group sizes
    drawn = model.draw(np.random.default_rng(0))
    assert len(drawn) == 9 and len(set(drawn)) == 9 and max(drawn) < 19


def test_compiled_cluster_summary_equals_numpy(chi2_result):
    model = chi2_result.estimator._null_model()
    summary = PerMap(montecarlo.ClusterMaxima(3.84), ("uniformity", "group2", "association"))
    assert model._compiled_summary(summary)
    fast = model.run_batch(summary, np.random.default_rng(4), 6)
    slow = model.run_batch(summary, np.random.default_rng(4), 6, compiled=False)
    for key in summary.keys:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-12, err_msg=key)
    assert fast["association:max_size"].max() > 0
    voxel = PerMap(montecarlo.MaxStatistic(), ("association",))
    np.testing.assert_array_equal(
        model.run_batch(voxel, np.random.default_rng(4), 6)["association:max_stat"],
        slow["association:max_stat"])


def test_fwe_montecarlo_maps_and_nulls(chi2_result):
    res = FWECorrector("montecarlo", n_iters=60, seed=3, batch_size=20).transform(chi2_result)
    suffix = "_corr-FWE_method-montecarlo"
    for test in ("uniformity", "group1", "group2", "association"):
        for kind in ("", "Size", "Mass"):
            level = "voxel" if not kind else "cluster"
            for m in ("p", "z", "logp"):
                assert f"{m}_desc-{test}{kind}_level-{level}{suffix}" in res.map_names
    null = res.null_distributions["values_desc-pFgA_level-voxel_corr-fwe_method-montecarlo"]
    assert null.shape == (60,)
    # voxel-level p by hand: NiMARE's null_to_p of |chi2| against the maxima
    chi2 = chi2_result.get_map("chi2_desc-association", "array")
    p = res.get_map(f"p_desc-association_level-voxel{suffix}", "array")
    top = int(np.argmax(chi2))
    expected = max(1 / 60, 1 - np.sum(null < chi2[top]) / 60)
    assert p[top] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(
        res.null_distributions["values_desc-group1_level-voxel_corr-fwe_method-montecarlo"],
        res.null_distributions["values_desc-pAgF_level-voxel_corr-fwe_method-montecarlo"])
    # z carries the sign of the observed z
    z = res.get_map(f"z_desc-association_level-voxel{suffix}", "array")
    zobs = chi2_result.get_map("z_desc-association", "array")
    assert np.all(np.sign(z[zobs != 0]) * np.sign(zobs[zobs != 0]) >= 0)
    # the same seed gives the same nulls
    again = FWECorrector("montecarlo", n_iters=60, seed=3, batch_size=20).transform(chi2_result)
    np.testing.assert_array_equal(
        again.null_distributions["values_desc-pFgAsize_level-cluster_corr-fwe_method-montecarlo"],
        res.null_distributions["values_desc-pFgAsize_level-cluster_corr-fwe_method-montecarlo"])


def test_fdr_equals_nimare(chi2_result, nimare_chi2):
    nimare_correct = pytest.importorskip("nimare.correct")
    ours = FDRCorrector(method="indep").transform(chi2_result)
    theirs = nimare_correct.FDRCorrector(method="indep").transform(nimare_chi2)
    names = [m for m in theirs.maps if "FDR" in m]
    assert sorted(names) == sorted(m for m in ours.map_names if "FDR" in m)
    for m in names:
        np.testing.assert_allclose(ours.get_map(m, "array"), theirs.get_map(m, return_type="array"),
                                   rtol=1e-6, atol=1e-6, err_msg=m)


def test_random_foci_sampler_refused(chi2_result):
    with pytest.raises(DaskmetaError, match="permutes group labels; it takes no foci sampler"):
        chi2_result.estimator._null_model(sampler=montecarlo.UniformFoci())


# -- ALE subtraction ------------------------------------------------------------------------
N_SUB = 300


@pytest.fixture(scope="module")
def subtraction(pain_halves):
    return ALESubtraction(mask=MASK, n_iters=N_SUB, seed=5, batch_size=50).fit(*pain_halves)


def test_subtraction_equals_nimare(subtraction, nimare_pain):
    ale = pytest.importorskip("nimare.meta.cbma.ale")
    ids = list(nimare_pain.coordinates["id"].unique())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ale.ALESubtraction(n_iters=N_SUB, random_state=5).fit(
            nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:]))
    assert sorted(subtraction.map_names) == sorted(theirs.maps)
    diff = "group1MinusGroup2"
    np.testing.assert_array_equal(subtraction.get_map(f"stat_desc-{diff}", "array"),
                                  theirs.get_map(f"stat_desc-{diff}", return_type="array"))
    for group in ("group1", "group2"):
        for kind in ("stat", "z", "logp"):
            np.testing.assert_allclose(
                subtraction.get_map(f"{kind}_desc-{group}", "array"),
                theirs.get_map(f"{kind}_desc-{group}", return_type="array"), atol=1e-5)
    z_ours = subtraction.get_map(f"z_desc-{diff}", "array")
    z_theirs = theirs.get_map(f"z_desc-{diff}", return_type="array")
    r = np.corrcoef(z_ours, z_theirs)[0, 1]
    print(f"z correlation with NiMARE at {N_SUB} permutations each: {r:.4f}")
    assert r >= 0.99
    null = subtraction.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"]
    assert null.shape == (N_SUB,)
    ks = stats.ks_2samp(null, theirs.estimator.null_distributions_[
        "values_level-voxel_corr-fwe_method-montecarlo"])
    assert ks.pvalue > 0.01


def test_subtraction_p_by_hand(subtraction, pain_halves):
    """p and the sign from the permutation counts, recomputed from the null model."""
    model = subtraction.estimator._null_model()
    diff = subtraction.get_map("stat_desc-group1MinusGroup2", "array")
    np.testing.assert_allclose(model.statistic_at(), diff, atol=1e-7)
    run = montecarlo.run_montecarlo(model, SubtractionNull(diff, hist=False), N_SUB, 50, 5,
                                    progress=False)
    upper, lower = run.values["upper"], run.values["lower"]
    p = np.clip(2 * np.minimum(upper, lower) / N_SUB, 1 / N_SUB, 1 - 1 / N_SUB)
    np.testing.assert_allclose(subtraction.get_map("p_desc-group1MinusGroup2", "array"), p,
                               rtol=1e-6)
    assert subtraction.attrs["subtraction_seed"] == 5


@pytest.mark.parametrize("swap", [False, True])
def test_subtraction_blockwise_permutations_equal_one_by_one(subtraction, pain_halves, swap):
    """The column path (blocks of permutations summed per voxel tile) records the same bits
    as the row path iteration by iteration: counts, maxima and histogram, with the smaller
    group first (9 vs 10) or second (10 vs 9), over a full and a partial block."""
    from daskmeta.montecarlo.permutation import _BLOCK

    est = subtraction.estimator
    if swap:
        est = ALESubtraction(mask=MASK, n_iters=1, seed=5).fit(pain_halves[1], pain_halves[0]).estimator
    model = est._null_model()
    summary = SubtractionNull(est.diff_, hist=True)
    assert model._blockwise(summary, model.pool.packed())
    n = _BLOCK + 7
    blocked = model.run_batch(summary, np.random.default_rng(3), n)
    one_by_one = model.run_batch(summary, np.random.default_rng(3), n, compiled=False)
    assert sorted(blocked) == ["abs_hist", "lower", "max_abs", "upper"]
    for key, values in one_by_one.items():
        np.testing.assert_array_equal(blocked[key], values, err_msg=key)
    assert blocked["abs_hist"].sum() == n * model.n_voxels
    assert (blocked["max_abs"] > 0).all()


def test_packed_column_sums_equal_row_sums():
    """PackedRows' column form sums a 0/1 matrix of groups to the same float64 bits as
    adding the rows of each group in order; it refuses binary rows, and rows with an
    infinite value are flagged (the permutations then run row by row)."""
    from daskmeta.montecarlo._packed import PackedRows, column_sums

    rng = np.random.default_rng(0)
    dense = rng.random((37, 500)).astype(np.float32) - 1.0
    dense[rng.random(dense.shape) < 0.7] = 0.0
    dense[:, 100:110] = 0.0  # voxels no row touches
    packed = PackedRows(500, None)
    packed.append(dense[:20])
    packed.append(dense[20:])
    packed.finish()
    g = (rng.random((37, 5)) < 0.4).astype(np.float64)
    out = column_sums(packed.columns(), g, 50, np.full((400, 5), np.nan))
    for b in range(5):
        acc = np.zeros(500)
        packed.add(np.flatnonzero(g[:, b]), acc)
        np.testing.assert_array_equal(out[:, b], acc[50:450])
    np.testing.assert_allclose(out[:, 0], g[:, 0] @ dense[:, 50:450].astype(np.float64),
                               rtol=1e-12)
    assert packed.finite
    dense[3, 7] = -np.inf  # MA = 1: -inf * 0 is nan, so no column path for such rows
    infinite = PackedRows(500, None)
    infinite.append(dense)
    assert not infinite.finish().finite
    binary = PackedRows(500, 1.0)
    binary.append((dense != 0).astype(np.uint8))
    with pytest.raises(ValueError, match="binary rows have no column form"):
        binary.finish().columns()


def test_subtraction_cluster_fwe(pain_halves):
    res = ALESubtraction(mask=MASK, n_iters=100, seed=2, batch_size=50,
                         vfwe_only=False).fit(*pain_halves)
    nulls = res.null_distributions
    thr = float(nulls["summary_stat_thresh_level-voxel_corr-fwe_method-montecarlo"])
    assert 0 < thr < 0.1
    corrected = FWECorrector("montecarlo", n_iters=100, vfwe_only=False).transform(res)
    assert corrected.attrs["fwe_montecarlo_nulls_from_fit"] is True
    name = "p_desc-group1MinusGroup2Size_level-cluster_corr-FWE_method-montecarlo"
    p_size = corrected.get_map(name, "array")
    # by hand: the largest cluster above the threshold, its size against the null
    diff = res.get_map("stat_desc-group1MinusGroup2", "array")
    vol = np.zeros(res.space.shape, dtype=np.float32)
    vol[res.space.mask] = diff
    labels, n = ndimage.label(vol > thr, ndimage.generate_binary_structure(3, 1))
    assert n > 0
    sizes = np.bincount(labels[labels > 0])
    big = int(np.argmax(sizes))
    null = nulls["values_desc-size_level-cluster_corr-fwe_method-montecarlo"]
    want = min(1 - 1 / 100, max(1 / 100, 1 - np.sum(null < sizes[big]) / 100))
    at = labels[res.space.mask] == big
    np.testing.assert_allclose(p_size[at], want, rtol=1e-6)
    # other parameters: new permutations, with the corrector's seed
    other = FWECorrector("montecarlo", n_iters=60, seed=9, vfwe_only=True).transform(res)
    assert other.attrs["fwe_montecarlo_nulls_from_fit"] is False
    assert other.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"].shape == (
        60,)


def test_subtraction_from_collection_equals_dataset(tmp_path, labelled):
    coll = Collection.build(labelled, ALEKernel(), tmp_path / "ale.zarr", mask=MASK)
    topic = labelled.get_studies_by_label("topic")
    other = labelled.get_studies_by_label("other")
    a = ALESubtraction(n_iters=40, seed=1, batch_size=20).fit(coll, select="topic",
                                                               select2="other")
    b = ALESubtraction(mask=MASK, n_iters=40, seed=1, batch_size=20).fit(
        labelled.slice(topic), labelled.slice(other))
    np.testing.assert_allclose(a.get_map("stat_desc-group1MinusGroup2", "array"),
                               b.get_map("stat_desc-group1MinusGroup2", "array"), atol=1e-7)
    np.testing.assert_array_equal(a.get_map("p_desc-group1MinusGroup2", "array"),
                                  b.get_map("p_desc-group1MinusGroup2", "array"))


def test_subtraction_bad_inputs(pain_halves):
    with pytest.raises(DaskmetaError, match="ALESubtraction: n_iters must be a positive "
                                            "integer; got 0"):
        ALESubtraction(n_iters=0).fit(*pain_halves)
    with pytest.raises(DaskmetaError, match="ALESubtraction subtracts ALE maps: it needs an "
                                            "ALEKernel; got MKDAKernel"):
        ALESubtraction(kernel_transformer=MKDAKernel()).fit(*pain_halves)
    with pytest.raises(DaskmetaError, match=r"ALESubtraction.fit\(dataset1, dataset2\) needs "
                                            "two Datasets; got NoneType as the second"):
        ALESubtraction().fit(pain_halves[0])
