"""FWE (Bonferroni, Monte Carlo) and FDR correction, against NiMARE 0.22.1 on the pain data."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

import daskmeta
from daskmeta import montecarlo
from daskmeta.correct import FDRCorrector, FWECorrector, cluster_p_maps
from daskmeta.estimators import ALE, KDA, MKDADensity
from daskmeta.exceptions import DaskmetaError

nimare_correct = pytest.importorskip("nimare.correct")
nimare_cbma = pytest.importorskip("nimare.meta.cbma")
nimare_dataset = pytest.importorskip("nimare.dataset")
nimare_meta_utils = pytest.importorskip("nimare.meta.utils")

logging.getLogger("nimare").setLevel(logging.ERROR)

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nimare-testdata"
MASK = str(TESTDATA / "MNI152_2x2x2_brainmask.nii.gz")
SUFFIX = "_corr-FWE_method-montecarlo"
NULLS = {
    "voxel": "values_level-voxel_corr-fwe_method-montecarlo",
    "size": "values_desc-size_level-cluster_corr-fwe_method-montecarlo",
    "mass": "values_desc-mass_level-cluster_corr-fwe_method-montecarlo",
}
N_PARITY = 5000


# --------------------------------------------------------------------------------------------
# fixtures (module scope: the data and fits are shared by every test here)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nimare_pain():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nimare_dataset.Dataset(str(TESTDATA / "test_pain_dataset.json"), mask=MASK)


@pytest.fixture(scope="module")
def pain(nimare_pain):
    """The same 19 experiments with foci, as a daskmeta Dataset (built from NiMARE's)."""
    ss = nimare_pain.metadata.set_index("id")["sample_sizes"].map(np.mean)
    foci = nimare_pain.coordinates[["id", "x", "y", "z"]].copy()
    foci["sample_size"] = foci["id"].map(ss)
    return daskmeta.Dataset.from_foci(foci)


@pytest.fixture(scope="module")
def ale_ours(pain):
    return ALE(mask=MASK).fit(pain)


@pytest.fixture(scope="module")
def ale_theirs(nimare_pain):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nimare_cbma.ALE(mask=MASK, random_state=0).fit(nimare_pain)


@pytest.fixture(scope="module")
def mc_theirs(ale_theirs):
    """NiMARE's Monte Carlo FWE of the pain ALE, 5,000 iterations (computed once)."""
    corrector = nimare_correct.FWECorrector(method="montecarlo", n_iters=N_PARITY,
                                            voxel_thresh=0.001, n_cores=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return corrector.transform(ale_theirs)


@pytest.fixture(scope="module")
def mc_ours(ale_ours):
    return FWECorrector("montecarlo", n_iters=N_PARITY, voxel_thresh=0.001, seed=0,
                        progress=False).transform(ale_ours)


@pytest.fixture(scope="module")
def small_mc(ale_ours):
    """A quick seeded Monte Carlo run shared by the structural tests."""
    return FWECorrector("montecarlo", n_iters=300, batch_size=50, seed=7,
                        progress=False).transform(ale_ours)


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


# --------------------------------------------------------------------------------------------
# Bonferroni and FDR: NiMARE's maps, to 1e-6
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ours", "theirs", "suffix"),
    [
        (lambda: FWECorrector(method="bonferroni"),
         lambda: nimare_correct.FWECorrector(method="bonferroni"), "_corr-FWE_method-bonferroni"),
        (lambda: FDRCorrector(method="indep"),
         lambda: nimare_correct.FDRCorrector(method="indep"), "_corr-FDR_method-indep"),
        (lambda: FDRCorrector(method="negcorr", alpha=0.01),
         lambda: nimare_correct.FDRCorrector(method="negcorr", alpha=0.01),
         "_corr-FDR_method-negcorr"),
    ],
    ids=["bonferroni", "fdr-indep", "fdr-negcorr"],
)
def test_p_corrections_match_nimare(ours, theirs, suffix, ale_ours, ale_theirs):
    got = ours().transform(ale_ours)
    want = theirs().transform(ale_theirs)
    new_theirs = sorted(k for k in want.maps if k not in ale_theirs.maps)
    new_ours = sorted(k for k in got.map_names if k not in ale_ours.map_names)
    assert new_ours == new_theirs == sorted(f"{m}{suffix}" for m in ("p", "z", "logp"))
    for name in new_theirs:
        a = got.get_map(name, "array")
        b = np.asarray(want.maps[name])
        assert a.dtype == b.dtype == np.float32, name
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)
    # A new result: the input is untouched.
    assert new_ours[0] not in ale_ours.map_names


def test_bonferroni_is_p_times_n_voxels(ale_ours):
    res = FWECorrector("bonferroni").transform(ale_ours)
    p = ale_ours.get_map("p", "array")
    expected = np.minimum(p * p.size, 1.0)
    np.testing.assert_allclose(res.get_map("p_corr-FWE_method-bonferroni", "array"), expected,
                               rtol=1e-6)
    assert res.attrs["fwe_bonferroni_n_tests"] == p.size
    # FDR never exceeds Bonferroni and BY is never below BH.
    bh = FDRCorrector("indep").transform(ale_ours).get_map("p_corr-FDR_method-indep", "array")
    by = FDRCorrector("negcorr").transform(ale_ours).get_map("p_corr-FDR_method-negcorr",
                                                              "array")
    assert np.all(bh <= res.get_map("p_corr-FWE_method-bonferroni", "array") + 1e-12)
    assert np.all(by >= bh)


# --------------------------------------------------------------------------------------------
# the compiled iteration against the estimators and NiMARE's cluster measures
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(ALE, {}), (MKDADensity, {}), (MKDADensity, {"weighting": "sample_size"}), (KDA, {}),
     (ALE, {"kernel__fwhm": 12.0})],
    ids=["ALE", "MKDA", "MKDA-weighted", "KDA", "ALE-fwhm12"],
)
def test_iteration_statistic_equals_estimator_stat(cls, kwargs, pain):
    """With the dataset's own foci, the null's statistic is the estimator's ``stat`` map."""
    est = cls(mask=MASK, **kwargs)
    res = est.fit(pain)
    model = est._null_model()
    got = model.statistic_at(est.plan_.focus_ijk)
    want = res.get_map("stat", "array")
    # One compiled combine and one f for fits and nulls: the same float32 statistic (the
    # weighted MKDA map is float64 in the fit, float32 in the null).
    if want.dtype == np.float32:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_array_equal(got, want.astype(np.float32))
    top = model.summary_at(montecarlo.MaxStatistic(), est.plan_.focus_ijk)["max_stat"]
    assert top == float(got.max())


@pytest.mark.parametrize("cls", [ALE, MKDADensity, KDA])
def test_padded_sums_equal_in_mask_sums(cls, pain):
    """The nulls' sums at padded addresses (runs added whole, out-of-mask entries never
    reset) equal the in-mask sums the fits compute, bit for bit, iteration after
    iteration; the in-mask entries are zero again after each summary."""
    est = cls(mask=MASK)
    est.fit(pain)
    model = est._null_model()
    ctx = model.context()
    rng = np.random.default_rng(11)
    summary = montecarlo.ClusterMaxima(0.01 if cls is ALE else 2.0)
    plain_scratch = ctx.scratch(model.row_start, model.row_kernel)
    first = model._take_workspace(ctx)
    model._give_back(first)
    for _ in range(4):
        base = ctx.voxel_base[model.draw(rng)]
        plain = np.zeros((1, model.n_voxels))
        ctx.run(base, model.row_start, model.row_kernel, model.add_mode, first["sel"], plain,
                plain_scratch)
        ws = model._take_workspace(ctx)
        assert ws is first  # this thread's, reused: its out-of-mask sums were never reset
        assert ws["acc"].shape == (1, ctx.padded_size)
        model._combine(ctx, ws, base)
        np.testing.assert_array_equal(ws["acc"][0][ctx.voxel_base].view(np.int64),
                                      plain[0].view(np.int64))
        sums = model._take_sums(ctx, ws)
        np.testing.assert_array_equal(sums.view(np.int64), plain[0].view(np.int64))
        assert not ws["acc"][0][ctx.voxel_base].any()
        model._give_back(ws)
        # The compiled summary of the padded sums (which it zeroes) is NumPy's of the plain.
        want = summary.start(1, model.n_voxels)
        summary.record(want, 0, model._stat_of(plain[0]), model.geometry)
        got = model.run_batch(summary, None, 1, fixed_base=base)
        assert (got["max_stat"][0], got["max_size"][0]) == (want["max_stat"][0],
                                                            want["max_size"][0])
        ws = model._take_workspace(ctx)
        assert not ws["acc"][0][ctx.voxel_base].any()
        model._give_back(ws)


@pytest.mark.parametrize("cls", [ALE, MKDADensity, KDA])
def test_a_batch_in_one_compiled_call_equals_iterations_one_by_one(cls, pain, monkeypatch):
    """A batch's iterations run in compiled calls of several placements (combine, then
    summary, each): the same numbers as one placement per call, and as the NumPy summary of
    each iteration's statistic drawn one by one from the same generator."""
    from daskmeta.montecarlo import models

    est = cls(mask=MASK)
    est.fit(pain)
    model = est._null_model()
    thr = 0.01 if cls is ALE else 2.0

    class NumpyClusterMaxima(montecarlo.ClusterMaxima):
        """Not the built-in type: its iterations take the per-iteration NumPy path."""

    runs = {}
    for name, per_call, summary in (
            ("whole batch per call", None, montecarlo.ClusterMaxima(thr)),
            ("one per call", model.n_foci, montecarlo.ClusterMaxima(thr)),
            ("three per call", 3 * model.n_foci, montecarlo.ClusterMaxima(thr)),
            ("numpy", None, NumpyClusterMaxima(thr))):
        if per_call is not None:
            monkeypatch.setattr(models, "_FOCI_PER_CALL", per_call)
        runs[name] = model.run_batch(summary, np.random.default_rng(5), 7)
        monkeypatch.undo()
    want = runs.pop("numpy")
    assert want["max_size"].max() > 0  # clusters were found
    for name, got in runs.items():
        np.testing.assert_array_equal(got["max_stat"], want["max_stat"], err_msg=name)
        np.testing.assert_array_equal(got["max_size"], want["max_size"], err_msg=name)
        np.testing.assert_allclose(got["max_mass"], want["max_mass"], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    maxima = model.run_batch(montecarlo.MaxStatistic(), np.random.default_rng(5), 7)
    np.testing.assert_array_equal(maxima["max_stat"], want["max_stat"])


@pytest.mark.parametrize("cls", [ALE, MKDADensity, KDA])
def test_iteration_cluster_measures_equal_nimare(cls, pain):
    """Max statistic, cluster size and mass of random placements equal NiMARE's measures."""
    est = cls(mask=MASK)
    est.fit(pain)
    space = est.space_
    rng = np.random.default_rng(3)
    conn = ndimage.generate_binary_structure(3, 1)
    for thr in (0.009, 0.012) if cls is ALE else (2.0, 3.0):
        model = est._null_model()
        summary = montecarlo.ClusterMaxima(thr)
        for _ in range(3):
            ijk = space.voxel_ijk[rng.integers(0, space.n_voxels, size=model.n_foci)]
            stat = model.statistic_at(ijk)
            vol = np.zeros(space.shape, dtype=np.float32)
            vol[space.mask] = stat
            size, mass = nimare_meta_utils._calculate_cluster_measures(
                vol, np.float64(thr), conn, tail="upper")
            compiled = model.summary_at(summary, ijk)
            got = (compiled["max_stat"], compiled["max_size"], compiled["max_mass"])
            # The NumPy summary (for estimators without a compiled statistic) agrees.
            generic = summary.start(1, space.n_voxels)
            summary.record(generic, 0, stat, space)
            assert generic["max_stat"][0] == got[0] and generic["max_size"][0] == got[1]
            assert generic["max_mass"][0] == pytest.approx(got[2], rel=1e-9, abs=1e-12)
            assert got[0] == float(stat.max())
            assert got[1] == size
            assert got[2] == pytest.approx(mass, rel=1e-9, abs=1e-12)


def test_batch_seed_is_spawned_child():
    children = np.random.SeedSequence(1234).spawn(5)
    for b, child in enumerate(children):
        assert np.array_equal(montecarlo.batch_seed(1234, b).generate_state(4),
                              child.generate_state(4))


# --------------------------------------------------------------------------------------------
# Monte Carlo FWE against NiMARE (5,000 iterations each)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_montecarlo_nulls_and_clusters_match_nimare(mc_ours, mc_theirs):
    theirs = mc_theirs.estimator.null_distributions_
    for key in ("voxel", "size", "mass"):
        a = mc_ours.null_distributions[NULLS[key]]
        b = np.asarray(theirs[NULLS[key]])
        assert a.shape == b.shape == (N_PARITY,)
        assert a.dtype == np.float32
        ks = stats.ks_2samp(a, b)
        print(f"{key}: KS p={ks.pvalue:.3f}; quantiles 50/95/99 daskmeta "
              f"{np.percentile(a, [50, 95, 99])} NiMARE {np.percentile(b, [50, 95, 99])}")
        assert ks.pvalue > 0.01, key
    maps = [k for k in mc_theirs.maps if k.endswith(SUFFIX)]
    assert sorted(maps) == sorted(k for k in mc_ours.map_names if k.endswith(SUFFIX))
    for name in maps:
        a = mc_ours.get_map(name, "array")
        b = np.asarray(mc_theirs.maps[name])
        assert a.dtype == b.dtype == np.float32
        if name.startswith("z_"):
            dice = _dice(a > 1.645, b > 1.645)
            print(f"{name}: {int((a > 1.645).sum())} vs {int((b > 1.645).sum())} voxels at "
                  f"p < 0.05, Dice {dice:.3f}")
            if "cluster" in name:
                assert dice > 0.95, name
            else:
                assert dice > 0.8, name
    # The surviving size clusters are the same clusters: same peaks.
    table_a = mc_ours.get_table(f"z_desc-size_level-cluster{SUFFIX}", threshold=1.645,
                                connectivity=6)
    vol = np.zeros(mc_ours.space.shape)
    vol[mc_ours.space.mask] = np.asarray(mc_theirs.maps[f"z_desc-size_level-cluster{SUFFIX}"])
    table_b = daskmeta.results.cluster_table(vol, mc_ours.space, 1.645, connectivity=6)
    assert len(table_a) == len(table_b) > 0
    np.testing.assert_array_equal(table_a["n_voxels"], table_b["n_voxels"])


# --------------------------------------------------------------------------------------------
# Monte Carlo FWE: MKDADensity, KDA (500 iterations against NiMARE)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cls", "kwargs"),
    [("MKDADensity", MKDADensity, {"weighting": "sample_size"}), ("KDA", KDA, {})],
)
def test_mkda_kda_montecarlo_match_nimare(name, cls, kwargs, pain, nimare_pain):
    n = 500
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(nimare_cbma, name)(mask=MASK, random_state=1, **kwargs).fit(nimare_pain)
        theirs = nimare_correct.FWECorrector(method="montecarlo", n_iters=n, n_cores=2,
                                             voxel_thresh=0.001).transform(theirs)
    res = cls(mask=MASK, **kwargs).fit(pain)
    ours = FWECorrector("montecarlo", n_iters=n, seed=1, progress=False).transform(res)
    tn = theirs.estimator.null_distributions_
    for key in ("voxel", "size"):
        a = ours.null_distributions[NULLS[key]]
        b = np.asarray(tn[NULLS[key]])
        ks = stats.ks_2samp(a, b)
        print(f"{name} {key}: KS p={ks.pvalue:.3f}; quantiles 50/95/99 daskmeta "
              f"{np.percentile(a, [50, 95, 99])} NiMARE {np.percentile(b, [50, 95, 99])}")
        assert ks.pvalue > 0.01, key
    for m in ("z_level-voxel", "z_desc-size_level-cluster", "z_desc-mass_level-cluster"):
        z = ours.get_map(m + SUFFIX, "array")
        assert z.dtype == np.float32 and np.all(np.isfinite(z)) and np.all(z >= 0)
    # The observed maximum is where the voxel-level z peaks.
    stat = res.get_map("stat", "array")
    zv = ours.get_map("z_level-voxel" + SUFFIX, "array")
    assert zv[np.argmax(stat)] == zv.max()


# --------------------------------------------------------------------------------------------
# structure, determinism, options
# --------------------------------------------------------------------------------------------
def test_montecarlo_result_structure(small_mc, ale_ours):
    assert small_mc is not ale_ours
    new = sorted(k for k in small_mc.map_names if k not in ale_ours.map_names)
    assert new == sorted(
        f"{m}_{lvl}{SUFFIX}" for m in ("z", "logp")
        for lvl in ("level-voxel", "desc-size_level-cluster", "desc-mass_level-cluster")
    )
    assert not any(k.endswith(SUFFIX) for k in ale_ours.map_names)
    for key in NULLS.values():
        v = small_mc.null_distributions[key]
        assert v.shape == (300,) and v.dtype == np.float32
    attrs = small_mc.attrs
    assert attrs["fwe_montecarlo_n_iters"] == attrs["fwe_montecarlo_n_iters_run"] == 300
    assert attrs["fwe_montecarlo_seed"] == 7
    assert attrs["fwe_montecarlo_batch_size"] == 50
    assert attrs["fwe_montecarlo_statistic"] == "ale"
    assert attrs["fwe_montecarlo_connectivity"] == "faces"
    # The cluster-forming threshold is NiMARE's: the approximate null at p = 0.001.
    assert attrs["fwe_montecarlo_cluster_threshold"] == pytest.approx(0.01038)
    # p-values are bounded by the number of iterations, as in NiMARE.
    logp = small_mc.get_map(f"logp_level-voxel{SUFFIX}", "array")
    assert logp.max() == pytest.approx(-np.log10(1 / 300), rel=1e-6)
    # Voxel-level p follows the null: the observed peak beats every null maximum here.
    voxel_null = small_mc.null_distributions[NULLS["voxel"]]
    assert ale_ours.get_map("stat", "array").max() > voxel_null.max()


def test_cluster_p_maps_by_hand(ale_ours):
    """Cluster p-values from a hand-made null: sizes above every null value get 1/n."""
    space = ale_ours.space
    stat = ale_ours.get_map("stat", "array")
    thr = 0.01038
    vol = np.zeros(space.shape, np.float32)
    vol[space.mask] = stat
    labels, n = ndimage.label(vol > thr, ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel())[1:]
    big = int(sizes.max())
    null_size = np.array([0, 1, 2, big - 1, big - 1], dtype=np.float32)
    null_mass = np.zeros(5, np.float32)
    p_size, p_mass = cluster_p_maps(stat, space, thr, null_size, null_mass)
    in_big = (labels[space.mask] == int(np.argmax(sizes)) + 1)
    assert np.all(p_size[in_big] == 0.2)  # 1 - 5/5, clipped to 1/n
    outside = labels[space.mask] == 0
    assert np.all(p_size[outside] == 0.8)  # background: clipped to 1 - 1/n
    assert np.all(p_mass[~outside] == 0.2)


def test_same_seed_same_nulls_and_seed_recorded(ale_ours, small_mc):
    again = FWECorrector("montecarlo", n_iters=300, batch_size=50, seed=7,
                         progress=False).transform(ale_ours)
    for key in NULLS.values():
        assert np.array_equal(again.null_distributions[key], small_mc.null_distributions[key])
    other = FWECorrector("montecarlo", n_iters=300, batch_size=50, seed=8,
                         progress=False).transform(ale_ours)
    assert not np.array_equal(other.null_distributions[NULLS["voxel"]],
                              small_mc.null_distributions[NULLS["voxel"]])
    # No seed: one is drawn and recorded, and repeating with it repeats the run.
    drawn = FWECorrector("montecarlo", n_iters=60, batch_size=20,
                         progress=False).transform(ale_ours)
    seed = drawn.attrs["fwe_montecarlo_seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**63
    rerun = FWECorrector("montecarlo", n_iters=60, batch_size=20, seed=seed,
                         progress=False).transform(ale_ours)
    assert np.array_equal(rerun.null_distributions[NULLS["size"]],
                          drawn.null_distributions[NULLS["size"]])


def test_batches_are_a_prefix_of_longer_runs(ale_ours, small_mc):
    """Batch b's draws depend on (seed, b) only: 100 iterations are the first 100 of 300."""
    short = FWECorrector("montecarlo", n_iters=100, batch_size=50, seed=7,
                         progress=False).transform(ale_ours)
    for key in NULLS.values():
        assert np.array_equal(short.null_distributions[key],
                              small_mc.null_distributions[key][:100])


def test_vfwe_only(ale_ours, small_mc):
    res = FWECorrector("montecarlo", n_iters=300, batch_size=50, seed=7, vfwe_only=True,
                       progress=False).transform(ale_ours)
    new = sorted(k for k in res.map_names if k.endswith(SUFFIX))
    assert new == [f"logp_level-voxel{SUFFIX}", f"z_level-voxel{SUFFIX}"]
    assert NULLS["size"] not in res.null_distributions
    assert NULLS["mass"] not in res.null_distributions
    # The same draws: the voxel-level null and maps equal the full run's.
    assert np.array_equal(res.null_distributions[NULLS["voxel"]],
                          small_mc.null_distributions[NULLS["voxel"]])
    assert np.array_equal(res.get_map(f"z_level-voxel{SUFFIX}", "array"),
                          small_mc.get_map(f"z_level-voxel{SUFFIX}", "array"))
    assert "fwe_montecarlo_cluster_threshold" not in res.attrs


def test_early_stop(ale_ours):
    full = FWECorrector("montecarlo", n_iters=1000, batch_size=50, seed=3,
                        progress=False).transform(ale_ours)
    # A loose tolerance stops after the first round (2 of the 20 batches).
    early = FWECorrector("montecarlo", n_iters=1000, batch_size=50, seed=3, early_stop=0.2,
                         progress=False).transform(ale_ours)
    run = early.attrs["fwe_montecarlo_n_iters_run"]
    assert run == 100 and early.attrs["fwe_montecarlo_stopped_early"] is True
    assert early.attrs["fwe_montecarlo_relative_se_max_stat"] < 0.2
    assert early.attrs["fwe_montecarlo_relative_se_max_size"] < 0.2
    for key in NULLS.values():
        assert early.null_distributions[key].shape == (run,)
        assert np.array_equal(early.null_distributions[key], full.null_distributions[key][:run])
    # An impossible tolerance runs everything and says so.
    tight = FWECorrector("montecarlo", n_iters=200, batch_size=50, seed=3, early_stop=1e-9,
                         progress=False).transform(ale_ours)
    assert tight.attrs["fwe_montecarlo_n_iters_run"] == 200
    assert tight.attrs["fwe_montecarlo_stopped_early"] is False


def test_relative_se():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 1, 4000)
    se = montecarlo.threshold_relative_se(x)
    # The 95th percentile of N(10, 1) from 4000 draws: SE about 0.033.
    assert 0.002 < se < 0.005
    assert montecarlo.threshold_relative_se(np.zeros(100)) == 0.0
    assert montecarlo.threshold_relative_se(x[:5]) == np.inf


def test_null_to_p_matches_nimare():
    nimare_stats = pytest.importorskip("nimare.stats")
    rng = np.random.default_rng(1)
    null = rng.normal(size=500).astype(np.float32)
    values = np.concatenate([rng.normal(size=2000), [-10, 10, null[0]]]).astype(np.float32)
    np.testing.assert_array_equal(montecarlo.null_to_p(values, null),
                                  nimare_stats.null_to_p(values, null, tail="upper"))


def test_nullhist_maps_equal_voxelwise_conversions_and_nimare():
    # Maps computed once per null bin and looked up equal NiMARE's p-values and the
    # voxel-by-voxel conversions of them, bit for bit (ties, values past the last bin, zeros,
    # negatives).
    nimare_stats = pytest.importorskip("nimare.stats")
    from daskmeta import _stats

    rng = np.random.default_rng(2)
    bins = np.arange(0, 60.5, 0.5)
    hist = rng.random(bins.size) * np.exp(-bins / 5)
    hist[-10:] = 0.0
    stat = np.concatenate([rng.uniform(-1, 70, 5000), bins[::7], bins[::9] + 0.25, [0.0]])
    for values in (stat, stat.astype(np.float32)):  # MKDA's float64 statistics, ALE's float32
        maps = _stats.nullhist_maps(values, hist, bins)
        p = nimare_stats.nullhist_to_p(values, hist, bins)
        assert np.array_equal(maps["p"], p)
        assert np.array_equal(maps["z"], _stats.p_to_z(p, tail="one"))
        assert np.array_equal(maps["logp"], _stats.nlogp_to_logp(np.log(p)))
        assert maps["logp"].dtype == np.float32 and np.array_equal(maps["stat"], values)


# --------------------------------------------------------------------------------------------
# errors, by message
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "permutation"},
         "method='permutation' is not supported; allowed: 'bonferroni', 'montecarlo'"),
        ({"method": "montecarlo", "n_iters": 0}, "n_iters must be a positive integer; got 0"),
        ({"method": "montecarlo", "n_iters": 2.5}, "n_iters must be a positive integer; got 2.5"),
        ({"method": "montecarlo", "voxel_thresh": 0},
         r"voxel_thresh must be a p-value strictly between 0 and 1; got 0"),
        ({"method": "montecarlo", "voxel_thresh": 1.5},
         r"voxel_thresh must be a p-value strictly between 0 and 1; got 1.5"),
        ({"method": "montecarlo", "seed": -1}, "seed must be None or a non-negative integer"),
        ({"method": "montecarlo", "batch_size": 0},
         "batch_size must be None or a positive integer; got 0"),
        ({"method": "montecarlo", "early_stop": 2.0},
         "early_stop must be None or a relative tolerance strictly between 0 and 1"),
    ],
)
def test_fwe_parameter_errors(kwargs, match):
    with pytest.raises(DaskmetaError, match=match):
        FWECorrector(**kwargs)


def test_fdr_parameter_errors():
    with pytest.raises(DaskmetaError, match="method='bh' is not supported; allowed: 'indep', "
                                            "'negcorr'"):
        FDRCorrector(method="bh")
    with pytest.raises(DaskmetaError, match="alpha must be strictly between 0 and 1; got 5"):
        FDRCorrector(alpha=5)


@pytest.mark.parametrize("corrector", [FWECorrector("bonferroni"), FDRCorrector(),
                                       FWECorrector("montecarlo", n_iters=10)])
def test_transform_needs_a_result(corrector, ale_ours):
    name = type(corrector).__name__
    with pytest.raises(DaskmetaError, match=f"{name}.transform expects a daskmeta MetaResult "
                                            r"\(the return value of an estimator's fit\); "
                                            "got ndarray"):
        corrector.transform(ale_ours.get_map("p", "array"))


def test_montecarlo_needs_the_estimator(ale_ours):
    bare = daskmeta.MetaResult({"stat": ale_ours.get_map("stat", "array"),
                                "p": ale_ours.get_map("p", "array")}, ale_ours.space)
    with pytest.raises(DaskmetaError, match="needs the fitted estimator behind the result"):
        FWECorrector("montecarlo", n_iters=10).transform(bare)
    # Bonferroni needs only the p map.
    assert "p_corr-FWE_method-bonferroni" in FWECorrector().transform(bare).map_names
    no_p = daskmeta.MetaResult({"stat": ale_ours.get_map("stat", "array")}, ale_ours.space)
    with pytest.raises(DaskmetaError, match="correction needs a 'p' map; the result has stat"):
        FDRCorrector().transform(no_p)


def _corrected(result):
    out = FWECorrector("montecarlo", n_iters=300, seed=7, batch_size=100).transform(result)
    return {k: out.get_map(k, "array") for k in out.map_names}, out.null_distributions


@pytest.mark.parametrize("change", ["kernel", "refit-other-data", "set_params", "collection"])
def test_earlier_result_is_corrected_with_its_own_fit(change, pain, nimare_space, tmp_path):
    """A result keeps a frozen snapshot of its fit: whatever happens to the estimator after
    (another kernel, a refit on other data or another mask), correcting the earlier result
    gives exactly the correction of a fresh fit."""
    est = ALE(mask=MASK)
    first = est.fit(pain)
    fresh_maps, fresh_nulls = _corrected(ALE(mask=MASK).fit(pain))
    if change == "kernel":
        est.kernel_transformer = daskmeta.kernels.ALEKernel(fwhm=20)
        est.fit(pain)
    elif change == "refit-other-data":
        est.fit(pain.slice(pain.ids[:10]))
    elif change == "set_params":
        est.set_params(kernel__fwhm=6.0, chunk_size=3)
        est.fit(pain)
        est.plan_ = None  # even fitted state torn down by hand
    else:
        coll = daskmeta.Collection.build(pain, daskmeta.kernels.ALEKernel(sample_size=20),
                                         tmp_path / "c.zarr", mask=nimare_space)
        est.set_params(mask=None)
        est.fit(coll)
    got_maps, got_nulls = _corrected(first)
    assert got_maps.keys() == fresh_maps.keys()
    for k in fresh_maps:
        np.testing.assert_array_equal(got_maps[k], fresh_maps[k], err_msg=k)
    for k in fresh_nulls:
        np.testing.assert_array_equal(got_nulls[k], fresh_nulls[k], err_msg=k)


def test_result_snapshot_is_read_only_and_not_the_estimator(pain):
    est = ALE(mask=MASK)
    res = est.fit(pain)
    assert res.estimator is not est
    assert res.estimator.get_params(deep=False) == est.get_params(deep=False)
    with pytest.raises(ValueError, match="read-only"):
        res.estimator.plan_.focus_ijk[0, 0] = 1
