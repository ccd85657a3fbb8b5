"""NiMARE 0.22.1's remaining contrast options, against NiMARE on two halves of pain21:
directional inference maps (MKDAChi2, ALESubtraction with and without
restrict_to_inference_mask), MKDAChi2's random-foci null, ALESubtraction's main-effects
correction; their command-line options, errors, and a real scheduler with two workers."""

from __future__ import annotations

import contextlib
import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK

from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALESubtraction, BalancedALESubtraction, MKDAChi2
from daskmeta.exceptions import DaskmetaError

MASK = str(NIMARE_MASK)


@contextlib.contextmanager
def _no_raise():
    yield


@pytest.fixture(scope="module")
def plain(pain_halves):
    return MKDAChi2(mask=MASK).fit(*pain_halves)


def _inference_maps(plain):
    """A vector map for group 1 (about half its voxels > 0) and an image for group 2."""
    rng = np.random.default_rng(0)
    vector = rng.normal(size=plain.space.n_voxels).astype(np.float32)
    image = plain.space.to_img((plain.get_map("z_desc-group2", "array") > 1).astype(np.float32))
    return vector, image


@pytest.mark.parametrize("given", ["1", "2", "both"])
def test_chi2_inference_maps_equal_nimare(given, pain_halves, nimare_pain_halves, plain, tmp_path):
    from nimare.meta.cbma import MKDAChi2 as NiChi2

    vector, image = _inference_maps(plain)
    path = tmp_path / "map2.nii.gz"
    nib.save(image, path)
    kw = {"inference_map1": vector if given in ("1", "both") else None,
          "inference_map2": image if given in ("2", "both") else None}
    theirs_kw = dict(kw)
    if given == "both":
        kw["inference_map2"] = str(path)  # a path is read on the mask's grid
    ours = MKDAChi2(mask=MASK).fit(*pain_halves, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NiChi2().fit(*nimare_pain_halves, **theirs_kw)
    assert sorted(ours.map_names) == sorted(theirs.maps)
    for name in theirs.maps:
        a, b = ours.get_map(name, "array"), theirs.get_map(name, return_type="array")
        assert a.dtype == b.dtype == np.float32, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=0, atol=1e-6, err_msg=name)
    z = ours.get_map("z_desc-association", "array")
    z_plain = plain.get_map("z_desc-association", "array")
    keep = np.zeros(z.shape, dtype=bool)
    if kw["inference_map1"] is not None:
        keep |= (z_plain > 0) & (vector > 0)
    if kw["inference_map2"] is not None:
        keep |= (z_plain < 0) & (plain.get_map("z_desc-group2", "array") > 1)
    assert 0 < keep.sum() < (z_plain != 0).sum()
    np.testing.assert_array_equal(z, np.where(keep, z_plain, 0))
    assert (ours.get_map("p_desc-association", "array")[~keep] == 1).all()
    np.testing.assert_array_equal(ours.get_map("z_desc-uniformity", "array"),
                                  plain.get_map("z_desc-uniformity", "array"))
    if given == "both":
        assert ours.attrs["inference_map1_voxels"] == int((vector > 0).sum())
        # The correction reads the restricted maps: outside them, every voxel has the p of
        # chi2 = 0 (the largest).
        corr = FWECorrector("montecarlo", n_iters=20, seed=0, vfwe_only=True,
                            progress=False).transform(ours)
        p = corr.get_map("p_desc-association_level-voxel_corr-FWE_method-montecarlo", "array")
        assert np.unique(p[~keep]).size == 1 and p[keep].min() < p[~keep][0]


def test_inference_map_errors(pain_halves, plain, tmp_path):
    est = MKDAChi2(mask=MASK)
    n = plain.space.n_voxels
    with pytest.raises(DaskmetaError, match=rf"inference_map1 has shape \(5,\); the "
                                            rf"estimator's mask has {n} voxels"):
        est.fit(*pain_halves, inference_map1=np.ones(5))
    small = nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), np.eye(4))
    with pytest.raises(DaskmetaError, match="inference_map2 does not match the mask: shape "
                                            r"\(4, 4, 4\)"):
        est.fit(*pain_halves, inference_map2=small)
    with pytest.raises(DaskmetaError, match="inference_map1 must be an in-mask vector or an "
                                            "image on the mask's grid; got dict"):
        est.fit(*pain_halves, inference_map1={"a": 1})
    with pytest.raises(DaskmetaError, match="BalancedALESubtraction.fit takes no "
                                            "inference_map1/inference_map2"):
        BalancedALESubtraction(mask=MASK).fit(*pain_halves, inference_map1=np.ones(n))
    with pytest.raises(DaskmetaError, match="needs at least one voxel > 0 in inference_map1 "
                                            "or inference_map2; both are empty"):
        ALESubtraction(mask=MASK, n_iters=10).fit(*pain_halves, inference_map2=np.zeros(n))
    # A later fit without the maps is unrestricted again.
    est.fit(*pain_halves, inference_map1=np.ones(n))
    again = est.fit(*pain_halves)
    np.testing.assert_array_equal(again.get_map("z_desc-association", "array"),
                                  plain.get_map("z_desc-association", "array"))
    assert "inference_map1_voxels" not in again.attrs


# -- MKDAChi2(fwe_null_method="random-foci") ------------------------------------------------
N_NULL = 100


@pytest.fixture(scope="module")
def random_foci(pain_halves):
    return MKDAChi2(mask=MASK, fwe_null_method="random-foci").fit(*pain_halves)


def _nimare_intended_random_foci(nimare_pain_halves, n_iters, seed):
    """The per-iteration maximum chi2 of NiMARE's random-foci null as its code means it:
    NiMARE's own uniform in-mask coordinates (``_mask_coverage_to_null_ijk``), kernel and
    chi2 tests, with the coordinates' voxel indices recomputed from the drawn positions.
    (NiMARE 0.22.1 passes the observed ``i, j, k`` columns along with the drawn ``x, y,
    z``, and its kernel reads the former: every iteration there repeats the observed maps;
    see test_nimare_random_foci_repeats_the_observed_maps.)"""
    from nimare.meta.cbma import MKDAChi2 as NiChi2
    from nimare.meta.cbma.mkda import one_way, two_way_counts
    from nimare.utils import _mask_coverage_to_null_ijk, vox2mm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NiChi2(fwe_null_method="random-foci").fit(*nimare_pain_halves).estimator
    null_xyz = vox2mm(_mask_coverage_to_null_ijk(est.masker, mask_coverage=est.mask_coverage),
                      est.masker.mask_img.affine)
    frames = [est.inputs_[f"coordinates{g}"].drop(columns=["i", "j", "k"]) for g in (1, 2)]
    n1, n2 = len(est.inputs_["id1"]), len(est.inputs_["id2"])
    rng = np.random.default_rng(seed)
    out = {"uniformity": [], "group2": [], "association": []}
    for _ in range(n_iters):
        counts = []
        for frame in frames:
            frame = frame.copy()
            frame[["x", "y", "z"]] = null_xyz[rng.integers(0, len(null_xyz), len(frame))]
            counts.append(np.squeeze(est.kernel_transformer.transform(
                frame, est.masker, return_type="summary_array")))
        out["uniformity"].append(np.max(one_way(counts[0], n1)))
        out["group2"].append(np.max(one_way(counts[1], n2)))
        out["association"].append(np.max(two_way_counts(counts[0], counts[1], n1, n2)))
    return {k: np.asarray(v) for k, v in out.items()}


def test_random_foci_null_agrees_with_nimare_in_distribution(random_foci, nimare_pain_halves):
    from scipy import stats

    corr = FWECorrector("montecarlo", n_iters=N_NULL, seed=3, vfwe_only=True,
                        progress=False).transform(random_foci)
    assert corr.attrs["fwe_montecarlo_null"] == "random-foci"
    theirs = _nimare_intended_random_foci(nimare_pain_halves, N_NULL, seed=3)
    names = {"uniformity": "pAgF", "group2": "group2", "association": "pFgA"}
    observed = {t: random_foci.get_map(f"chi2_desc-{t}", "array").max() for t in names}
    for test, null_name in names.items():
        ours = corr.null_distributions[
            f"values_desc-{null_name}_level-voxel_corr-fwe_method-montecarlo"]
        assert ours.shape == (N_NULL,) and np.unique(ours).size > 3  # not one value
        # Compared in float32, the maps' precision: the association test's maxima take a
        # few values, which the two would otherwise hold 1 ulp apart.
        ks = stats.ks_2samp(ours, theirs[test].astype(np.float32))
        print(f"{test}: median max chi2 ours {np.median(ours):.3f}, NiMARE's "
              f"{np.median(theirs[test]):.3f}, KS p {ks.pvalue:.3f}")
        assert ks.pvalue > 0.01, test
        # Relocated foci give smaller maxima than the observed concentration of group 1.
        if test != "association":
            assert np.median(ours) < observed[test]


def test_random_foci_null_model(random_foci, pain_halves, tmp_path):
    import dask

    from daskmeta import Collection, montecarlo
    from daskmeta.kernels import MKDAKernel
    from daskmeta.montecarlo.permutation import PerMap

    est = random_foci.estimator
    model = est._null_model()
    # With the fit's own foci, the null's statistic is the fit's chi2 maps.
    stat = model.statistic_at(est.plan_.focus_ijk)
    for test in ("uniformity", "group2", "association"):
        np.testing.assert_array_equal(stat[test],
                                      random_foci.get_map(f"chi2_desc-{test}", "array"))
    summary = PerMap(montecarlo.ClusterMaxima(10.0), ("uniformity", "group2", "association"))
    one = montecarlo.run_montecarlo(model, summary, 12, 4, 7, progress=False)
    with dask.config.set(scheduler="threads", num_workers=3):
        threads = montecarlo.run_montecarlo(model, summary, 12, 4, 7, progress=False)
    # The compiled summaries equal the NumPy ones on the same draws.
    plain = PerMap(montecarlo.ClusterMaxima(10.0), ("uniformity", "group2", "association"))
    rng = np.random.default_rng(0)
    fast = model.run_batch(summary, np.random.default_rng(0), 3)
    slow = {k: np.zeros(3) for k in fast}
    for i in range(3):
        plain.record(slow, i, model.statistic(model.draw(rng)), model.geometry)
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-6, err_msg=key)
    # From a Collection: the same null for the same seed.
    store = Collection.build(pain_halves[0].merge(pain_halves[1]), MKDAKernel(),
                             tmp_path / "mkda.zarr", mask=MASK)
    from_store = MKDAChi2(fwe_null_method="random-foci").fit(store,
                                                             select=list(pain_halves[0].ids))
    again = montecarlo.run_montecarlo(from_store.estimator._null_model(), summary, 12, 4, 7,
                                      progress=False)
    for key in one.values:
        np.testing.assert_array_equal(one.values[key], threads.values[key], err_msg=key)
        np.testing.assert_array_equal(one.values[key], again.values[key], err_msg=key)
    with pytest.raises(DaskmetaError, match="fwe_null_method must be 'label-permutation' or "
                                            "'random-foci'"):
        MKDAChi2(fwe_null_method="random").fit(*pain_halves)


def test_nimare_random_foci_repeats_the_observed_maps(nimare_pain_halves):
    """The documented difference: NiMARE 0.22.1's random-foci null is the observed maxima
    at every iteration (its kernel reads the observed i, j, k)."""
    from nimare.correct import FWECorrector as NiFWE
    from nimare.meta.cbma import MKDAChi2 as NiChi2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = NiChi2(fwe_null_method="random-foci", random_state=0).fit(*nimare_pain_halves)
        corr = NiFWE("montecarlo", n_iters=2).transform(res)
    null = corr.estimator.null_distributions_[
        "values_desc-pAgF_level-voxel_corr-fwe_method-montecarlo"]
    observed = res.get_map("chi2_desc-uniformity", return_type="array").max()
    np.testing.assert_allclose(null, [observed, observed], rtol=1e-6)


# -- ALESubtraction: FWECorrector(target="main-effects" | "all") -----------------------------
@pytest.fixture(scope="module")
def subtraction(pain_halves):
    return ALESubtraction(mask=MASK, n_iters=20, seed=1).fit(*pain_halves)


def test_subtraction_main_effects_match_nimare(subtraction, pain_halves, nimare_pain_halves):
    from nimare.correct import FWECorrector as NiFWE
    from nimare.meta.cbma import ALESubtraction as NiSubtraction

    from daskmeta.estimators import ALE

    # NiMARE's group corrections are unseeded (its temporary ALE estimators take no
    # random_state): the voxel-level maps, coarse at this many iterations, vary most.
    n_iters = 100
    ours = FWECorrector("montecarlo", n_iters=n_iters, seed=2, target="main-effects",
                        progress=False).transform(subtraction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_fit = NiSubtraction(n_iters=20).fit(*nimare_pain_halves)
        theirs = NiFWE("montecarlo", n_iters=n_iters, target="main-effects").transform(
            theirs_fit)
    assert sorted(ours.map_names) == sorted(theirs.maps)
    added = sorted(set(theirs.maps) - set(theirs_fit.maps))
    assert len(added) == 12 and "z_desc-group2Size_level-cluster_corr-FWE_method-montecarlo" in added
    assert not any("group1MinusGroup2_level-voxel" in n for n in ours.map_names)
    for name in added:
        a, b = ours.get_map(name, "array"), theirs.get_map(name, return_type="array")
        r = np.corrcoef(a, b)[0, 1]
        print(f"{name}: correlation with NiMARE at {n_iters} iterations {r:.4f}")
        assert a.dtype == np.float32 and r >= (0.9 if "level-voxel" in name else 0.95), name
    # Each group's correction is that of the group's one-sample ALE fit.
    group1 = ALE(mask=MASK).fit(pain_halves[0])
    np.testing.assert_array_equal(group1.get_map("stat", "array"),
                                  subtraction.get_map("stat_desc-group1", "array"))
    seed1 = ours.attrs["fwe_montecarlo_group1_seed"]
    alone = FWECorrector("montecarlo", n_iters=n_iters, seed=seed1,
                         progress=False).transform(group1)
    np.testing.assert_array_equal(
        alone.get_map("z_desc-size_level-cluster_corr-FWE_method-montecarlo", "array"),
        ours.get_map("z_desc-group1Size_level-cluster_corr-FWE_method-montecarlo", "array"))
    np.testing.assert_array_equal(
        alone.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"],
        ours.null_distributions["values_desc-group1_level-voxel_corr-fwe_method-montecarlo"])
    assert ours.attrs["fwe_montecarlo_target"] == "main-effects"


def test_subtraction_target_all_and_errors(subtraction, plain):
    both = FWECorrector("montecarlo", n_iters=20, seed=4, vfwe_only=True, target="all",
                        progress=False).transform(subtraction)
    pairwise = FWECorrector("montecarlo", n_iters=20, seed=4, vfwe_only=True,
                            progress=False).transform(subtraction)
    main = FWECorrector("montecarlo", n_iters=20, seed=4, vfwe_only=True,
                        target="main-effects", progress=False).transform(subtraction)
    assert set(both.map_names) == set(pairwise.map_names) | set(main.map_names)
    for name in both.map_names:
        source = pairwise if name in pairwise.map_names else main
        np.testing.assert_array_equal(both.get_map(name, "array"),
                                      source.get_map(name, "array"), err_msg=name)
    assert "z_desc-group1_level-voxel_corr-FWE_method-montecarlo" in both.map_names
    assert not any("level-cluster_corr" in n for n in both.map_names)  # vfwe_only
    with pytest.raises(DaskmetaError, match="target='main-effects' applies to ALESubtraction "
                                            "results; this one comes from MKDAChi2"):
        FWECorrector("montecarlo", n_iters=5, target="main-effects").transform(plain)
    with pytest.raises(DaskmetaError, match="target='both' is not supported; allowed with "
                                            "method='montecarlo'"):
        FWECorrector("montecarlo", target="both")
    with pytest.raises(DaskmetaError, match="target='all' is not supported"):
        FWECorrector("bonferroni", target="all")


def test_subtraction_main_effects_from_a_collection(subtraction, pain_halves, tmp_path):
    from daskmeta import Collection
    from daskmeta.kernels import ALEKernel

    store = Collection.build(pain_halves[0].merge(pain_halves[1]), ALEKernel(), tmp_path / "ale.zarr",
                             mask=MASK)
    from_store = ALESubtraction(n_iters=20, seed=1, chunk_size=4).fit(
        store, select=list(pain_halves[0].ids))
    corr = {}
    for name, res in (("store", from_store), ("datasets", subtraction)):
        corr[name] = FWECorrector("montecarlo", n_iters=10, seed=6, target="main-effects",
                                  progress=False).transform(res)
    names = [n for n in corr["datasets"].map_names if n.endswith("_corr-FWE_method-montecarlo")]
    assert len(names) == 12
    for name in names:
        np.testing.assert_array_equal(corr["store"].get_map(name, "array"),
                                      corr["datasets"].get_map(name, "array"), err_msg=name)


# -- ALESubtraction: directional inference maps ---------------------------------------------
@pytest.mark.parametrize("restrict", [False, True])
def test_subtraction_inference_maps_match_nimare(restrict, subtraction, pain_halves,
                                                 nimare_pain_halves):
    from nimare.meta.cbma import ALESubtraction as NiSubtraction
    from scipy import stats

    # NiMARE's cluster nulls cost a second per permutation here: only with the restriction.
    n_iters, vfwe_only = (50, False) if restrict else (200, True)
    g1 = subtraction.get_map("z_desc-group1", "array")
    g2 = subtraction.get_map("z_desc-group2", "array")
    maps = {"inference_map1": (g1 > 1.65).astype(np.float32),
            "inference_map2": subtraction.space.to_img((g2 > 1.65).astype(np.float32))}
    ours = ALESubtraction(mask=MASK, n_iters=n_iters, seed=3, vfwe_only=vfwe_only,
                          restrict_to_inference_mask=restrict).fit(*pain_halves, **maps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NiSubtraction(n_iters=n_iters, vfwe_only=vfwe_only, random_state=3,
                               restrict_to_inference_mask=restrict).fit(*nimare_pain_halves, **maps)
    assert sorted(ours.map_names) == sorted(theirs.maps)
    diff = "group1MinusGroup2"
    stat = ours.get_map(f"stat_desc-{diff}", "array")
    np.testing.assert_array_equal(stat, theirs.get_map(f"stat_desc-{diff}",
                                                       return_type="array"))
    # The one-sided structure is deterministic: where each side is tested, and its sign.
    pos = (g1 > 1.65) & (stat > 0)
    neg = (g2 > 1.65) & (stat < 0)
    tested = pos | neg
    assert pos.any() and neg.any()
    z_ours = ours.get_map(f"z_desc-{diff}", "array")
    z_theirs = theirs.get_map(f"z_desc-{diff}", return_type="array")
    for z in (z_ours, z_theirs):
        assert (z[~tested] == 0).all()
    p_ours = ours.get_map(f"p_desc-{diff}", "array")
    assert (p_ours[~tested] == 1).all()
    strong = tested & (p_ours < 0.5)  # one-tailed z: positive below p = 0.5, times the side
    assert strong.any()
    assert (np.sign(z_ours[strong]) == np.where(pos, 1, -1)[strong]).all()
    r = np.corrcoef(z_ours[tested], z_theirs[tested])[0, 1]
    null = "values_level-voxel_corr-fwe_method-montecarlo"
    a, b = ours.null_distributions[null], theirs.estimator.null_distributions_[null]
    ks = stats.ks_2samp(a, b)
    print(f"restrict={restrict}: z correlation {r:.4f} over {tested.sum()} tested voxels; "
          f"max |diff| null median {np.median(a):.5f} vs {np.median(b):.5f} (KS p "
          f"{ks.pvalue:.3f})")
    assert r >= 0.98 and ks.pvalue > 0.01
    if not vfwe_only:
        key = "summary_stat_thresh_level-voxel_corr-fwe_method-montecarlo"
        thr = (float(ours.null_distributions[key]),
               float(theirs.estimator.null_distributions_[key]))
        size = "values_desc-size_level-cluster_corr-fwe_method-montecarlo"
        ks_size = stats.ks_2samp(ours.null_distributions[size],
                                 theirs.estimator.null_distributions_[size])
        print(f"cluster-forming threshold {thr[0]:.6f} vs {thr[1]:.6f}; max cluster size "
              f"KS p {ks_size.pvalue:.3f}")
        assert abs(thr[0] - thr[1]) <= 0.1 * thr[1] and ks_size.pvalue > 0.01
    assert ours.attrs["inference_map1_voxels"] == int((g1 > 1.65).sum())
    if restrict:  # the null's maxima lie in the union, below the whole mask's
        plain = subtraction.null_distributions[null]
        assert np.median(a) < np.median(plain)


# -- command line ---------------------------------------------------------------------------
def test_cli_contrast_options(tmp_path, pain_halves, plain, capsys):
    from daskmeta.cli import main

    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    pain_halves[0].save(a)
    pain_halves[1].save(b)
    inf1 = tmp_path / "inf1.nii.gz"
    nib.save(plain.space.to_img((plain.get_map("z_desc-group1", "array") > 1)
                                .astype(np.float32)), inf1)
    out = tmp_path / "chi2"
    assert main(["mkda-chi2", str(a), str(b), "--out", str(out), "--mask", MASK, "--n-iters",
                 "20", "--seed", "1", "--voxel-thresh", "0.05", "--fwe-null-method",
                 "random-foci", "--inference-map1", str(inf1), "--diagnostics",
                 "jackknife,focuscounter", "--no-figures"]) == 0
    err = capsys.readouterr().err
    target = "z_desc-associationMass_level-cluster_corr-FWE_method-montecarlo"
    assert f"{target}_diag-Jackknife_tab-counts_tail-positive: 9 experiments x" in err
    table = pd.read_csv(out / f"{target}_diag-FocusCounter_tab-counts_tail-positive.tsv",
                        sep="\t")
    assert list(table["id"]) == list(pain_halves[0].ids)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fwe_montecarlo_null"] == "random-foci"
    assert prov["inference_map1_voxels"] == int((plain.get_map("z_desc-group1", "array")
                                                 > 1).sum())
    z = nib.load(out / "z_desc-association.nii.gz").get_fdata()[plain.space.mask]
    assert (z[(plain.get_map("z_desc-association", "array") < 0)] == 0).all()
    sub = tmp_path / "sub"
    assert main(["subtraction", str(a), str(b), "--out", str(sub), "--mask", MASK,
                 "--n-iters", "10", "--seed", "1", "--target", "main-effects",
                 "--no-figures"]) == 0
    assert (sub / "z_desc-group2Size_level-cluster_corr-FWE_method-montecarlo.nii.gz").exists()
    assert not (sub / "z_desc-group1MinusGroup2_level-voxel_corr-FWE_method-montecarlo"
                      ".nii.gz").exists()
    capsys.readouterr()
    for argv, message in (
            (["subtraction", str(a), str(b), "--fwe", "none", "--target", "all"],
             "--target all applies to --fwe montecarlo; got --fwe none"),
            (["subtraction", str(a), str(b), "--restrict-to-inference-mask"],
             "--restrict-to-inference-mask needs --inference-map1 and/or --inference-map2"),
            (["mkda-chi2", str(a), str(b), "--inference-map2", str(tmp_path / "no.nii.gz")],
             "--inference-map2 must be an existing image file; got"),
            (["mkda-chi2", str(a), str(b), "--fwe", "fdr", "--diagnostics", "jackknife"],
             "--diagnostics characterises the clusters of the cluster-mass corrected z map "
             "of --fwe montecarlo; got --fwe fdr"),
            (["mkda-chi2", str(a), str(b), "--fwe-null-method", "shuffle"],
             "invalid choice: 'shuffle'")):
        with pytest.raises(SystemExit) if "invalid choice" in message else \
                _no_raise():
            rc = main([*argv, "--out", str(tmp_path / "bad"), "--mask", MASK])
            assert rc != 0
        err = capsys.readouterr().err
        assert message in err, err
        assert not (tmp_path / "bad").exists()


def test_worker_processes_give_the_same_random_foci_null_and_tables(scheduler_and_workers,
                                                                    random_foci):
    """A real scheduler and two worker processes on loopback: the random-foci null of a
    seed, and a pairwise Jackknife, are those of this process."""
    from daskmeta import montecarlo
    from daskmeta.diagnostics import Jackknife
    from daskmeta.montecarlo.permutation import PerMap

    client, _ = scheduler_and_workers
    model = random_foci.estimator._null_model()
    summary = PerMap(montecarlo.ClusterMaxima(10.0), ("uniformity", "group2", "association"))
    target = "z_desc-association_corr-FWE_method-manual"
    z = random_foci.get_map("z_desc-association", "array")
    res = random_foci.copy()
    res.add_maps({target: np.where(np.abs(z) > 2, z, 0).astype(np.float32)})
    jack = Jackknife(target_image=target, display_second_group=True)
    with client.as_current():
        remote = montecarlo.run_montecarlo(model, summary, 12, 3, 7, progress=False)
        remote_tables = jack.transform(res).tables
    local = montecarlo.run_montecarlo(model, summary, 12, 3, 7, progress=False)
    for key in local.values:
        np.testing.assert_array_equal(remote.values[key], local.values[key], err_msg=key)
    local_tables = jack.transform(res).tables
    assert len(local_tables) == 3
    for name, table in local_tables.items():
        pd.testing.assert_frame_equal(remote_tables[name], table, atol=0, rtol=0)
