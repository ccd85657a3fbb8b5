"""Diagnostics (Jackknife, FocusCounter) and result tables: parity with NiMARE 0.22.1 on the
pain dataset with NiMARE's mask, results fitted from a Collection, hand-computed cases, the
command line's --diagnostics, and errors."""

from __future__ import annotations

import logging
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK, PAIN_JSON, assert_tables_match

from daskmeta.collection import Collection
from daskmeta.correct import FWECorrector
from daskmeta.diagnostics import FocusCounter, Jackknife
from daskmeta.estimators import ALE, KDA, MKDADensity
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import ALEKernel
from daskmeta.results import MetaResult

logging.getLogger("nimare").setLevel(logging.ERROR)

TARGET = "z_desc-size_level-cluster_corr-FWE_method-montecarlo"
COUNTS = f"{TARGET}_diag-{{}}_tab-counts_tail-positive"
CLUST = f"{TARGET}_tab-clust"
LABEL = "label_desc-size_level-cluster_corr-FWE_method-montecarlo_tail-positive"


def _corrected(est, data, **kw):
    return FWECorrector("montecarlo", n_iters=100, seed=0, progress=False).transform(
        est.fit(data, **kw))


@pytest.fixture(scope="module")
def ale_result(pain_dataset):
    return _corrected(ALE(mask=str(NIMARE_MASK)), pain_dataset)


def _nimare_result(name, kw, ours):
    """NiMARE's fit of the same data, given our corrected target map (Monte Carlo nulls
    differ by generator; the diagnostics must agree on the same clusters)."""
    from nimare.dataset import Dataset
    from nimare.meta import cbma

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = getattr(cbma, name)(**kw).fit(Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK)))
    theirs.maps[TARGET] = ours.get_map(TARGET, "array").astype(np.float32)
    return theirs


@pytest.mark.parametrize(("name", "cls", "kw"), [
    ("ALE", ALE, {}),
    ("MKDADensity", MKDADensity, {"weighting": "sample_size"}),
])
def test_jackknife_and_focuscounter_match_nimare(name, cls, kw, pain_dataset, ale_result):
    nd = pytest.importorskip("nimare.diagnostics")
    ours = ale_result if name == "ALE" else _corrected(cls(mask=str(NIMARE_MASK), **kw),
                                                       pain_dataset)
    theirs = _nimare_result(name, kw, ours)
    for ours_cls, theirs_cls, atol in ((Jackknife, nd.Jackknife, 1e-6),
                                       (FocusCounter, nd.FocusCounter, 0)):
        got = ours_cls().transform(ours)
        want = theirs_cls().transform(theirs.copy())
        diag = ours_cls.__name__
        assert set(got.tables) == {k for k, v in want.tables.items() if v is not None} == {
            CLUST, COUNTS.format(diag)}
        assert_tables_match(got, want, [CLUST, COUNTS.format(diag)], atol)
        assert np.array_equal(got.get_map(LABEL, "array"), np.asarray(want.maps[LABEL]))
        assert diag not in repr(ours) and CLUST not in ours.tables  # the input is unchanged
    counts = got.tables[COUNTS.format("FocusCounter")]
    assert counts.iloc[:, 1:].to_numpy().sum() > 0


def test_kda_jackknife_by_hand(pain_dataset):
    """KDA: leaving experiment i out removes its MA row, so its contribution to a cluster is
    the mean of MA_i / stat over the cluster's voxels."""
    res = KDA(mask=str(NIMARE_MASK)).fit(pain_dataset)
    stat = res.get_map("stat", "array")
    z = res.get_map("z", "array")
    res.add_maps({"z_corr-FWE_method-manual": np.where(z > 3.1, z, 0).astype(np.float32)})
    got = Jackknife(target_image="z_corr-FWE_method-manual").transform(res)
    table = got.tables["z_corr-FWE_method-manual_diag-Jackknife_tab-counts_tail-positive"]
    labels = got.get_map("label_corr-FWE_method-manual_tail-positive", "array")
    est = res.estimator
    ma = est.kernel_.transform(est.dataset_, res.space).compute().astype(np.float64)
    assert table.shape == (ma.shape[0], labels.max() + 1)
    for col in table.columns[1:]:
        inside = labels == int(col.split()[1])
        want = (ma[:, inside] / stat[inside]).mean(axis=1)
        np.testing.assert_allclose(table[col].to_numpy(float), want, rtol=0, atol=1e-6)


def test_from_a_collection_equals_from_the_dataset(pain_dataset, tmp_path):
    """A fit from a store reads the selection's rows only, and diagnoses the same."""
    store = Collection.build(pain_dataset, ALEKernel(), tmp_path / "pain.zarr",
                             mask=str(NIMARE_MASK))
    ids = [i for i in pain_dataset.ids if i in set(pain_dataset.foci["id"])][2:16]
    est = ALE(mask=str(NIMARE_MASK), chunk_size=4)
    from_store = _corrected(ALE(chunk_size=4), store, select=ids)
    from_dataset = _corrected(est, pain_dataset, select=ids)
    jack = {}
    for d in (Jackknife(), FocusCounter()):
        a, b = d.transform(from_store), d.transform(from_dataset)
        name = COUNTS.format(type(d).__name__)
        assert list(a.tables[name]["id"]) == ids
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], atol=1e-12, rtol=0)
        jack.setdefault("store", a)
    from daskmeta.diagnostics import ResampledStability

    stability = ResampledStability(resampling_policy="leave_k_out", k=3, n_resamples=8,
                                   random_state=0, group_size=3)
    name = f"{TARGET}_diag-ResampledStability"
    a, b = stability.transform(from_store), stability.transform(from_dataset)
    assert (a.get_map(name, "array") > 0).any()
    np.testing.assert_array_equal(a.get_map(name, "array"), b.get_map(name, "array"))
    # A pass cut into several tasks on a scheduler gives the same numbers.
    with dask.config.set(scheduler="threads"):
        from daskmeta.diagnostics import _passes

        small = _passes.ROWS_PER_TASK
        _passes.ROWS_PER_TASK = 3
        try:
            c = Jackknife().transform(from_store)
        finally:
            _passes.ROWS_PER_TASK = small
    name = COUNTS.format("Jackknife")
    pd.testing.assert_frame_equal(c.tables[name], jack["store"].tables[name], atol=0, rtol=0)


def test_tables_are_kept_copied_and_saved(ale_result, tmp_path):
    res = Jackknife().transform(ale_result)
    name = COUNTS.format("Jackknife")
    corrected = FWECorrector("bonferroni").transform(res)  # corrections keep tables
    assert set(corrected.tables) == set(res.tables)
    corrected.tables[name].iloc[0, 1] = -5.0
    assert res.tables[name].iloc[0, 1] != -5.0  # ... as copies
    assert res.get_table(name).equals(res.tables[name])
    with pytest.raises(DaskmetaError, match="is a stored table; threshold, alpha"):
        res.get_table(name, threshold=2)
    paths = res.save_tables(tmp_path, prefix="pre")
    assert sorted(p.name for p in paths) == sorted(f"pre_{n}.tsv" for n in res.tables)
    back = pd.read_csv(tmp_path / f"pre_{name}.tsv", sep="\t")
    np.testing.assert_allclose(back.iloc[:, 1:].to_numpy(float),
                               res.tables[name].iloc[:, 1:].to_numpy(float), rtol=1e-12)
    with pytest.raises(DaskmetaError, match="no table named 'nope'"):
        res.save_tables(tmp_path, names=["nope"])
    with pytest.raises(DaskmetaError, match="is a list; expected a pandas DataFrame"):
        res.add_tables({"x": [1, 2]})
    assert LABEL in res.save_maps(tmp_path, names=[LABEL])[0].name


def test_errors(ale_result, pain_dataset):
    with pytest.raises(DaskmetaError, match=r"Jackknife: the result has no map 'z_nope' to "
                                            r"diagnose; corrected z maps here: z_level-voxel"):
        Jackknife(target_image="z_nope").transform(ale_result)
    bare = ALE(mask=str(NIMARE_MASK)).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="corrected z maps here: none \\(correct the "):
        FocusCounter().transform(bare)
    lone = MetaResult({n: ale_result.get_map(n, "array") for n in ale_result.map_names},
                      ale_result.space)
    with pytest.raises(DaskmetaError, match="needs the fitted estimator behind the result"):
        Jackknife().transform(lone)
    with pytest.raises(DaskmetaError, match="expects a daskmeta MetaResult; got str"):
        Jackknife().transform("result.nii.gz")
    with pytest.raises(DaskmetaError, match="give target_threshold or its older name"):
        Jackknife(voxel_thresh=1, target_threshold=2).transform(ale_result)
    with pytest.raises(DaskmetaError, match="cluster_threshold must be None or a number"):
        Jackknife(cluster_threshold=-1).transform(ale_result)
    with pytest.warns(DaskmetaWarning, match="no clusters in 'z_desc-size.*threshold 1e"):
        empty = Jackknife(target_threshold=1e9).transform(ale_result)
    assert list(empty.tables) == [CLUST] and empty.tables[CLUST].empty


def test_cli_diagnostics_write_tables_next_to_the_maps(tmp_path, capsys, pain_dataset):
    from daskmeta.cli import main

    out = tmp_path / "out"
    argv = ["ale", str(PAIN_JSON), "--mask", str(NIMARE_MASK), "--n-iters", "100", "--seed",
            "3", "--no-figures", "--out", str(out)]
    assert main(argv + ["--diagnostics", "jackknife,focuscounter", "--diagnostics",
                        "jackknife"]) == 0
    target = "z_desc-mass_level-cluster_corr-FWE_method-montecarlo"
    summary = __import__("json").loads((out / "summary.json").read_text())
    names = [f"{target}_tab-clust"] + [
        f"{target}_diag-{d}_tab-counts_tail-positive" for d in ("Jackknife", "FocusCounter")]
    assert list(summary["diagnostics"]) == names
    # The tables are the Python API's on the same result, with NiMARE's workflow settings.
    res = FWECorrector("montecarlo", n_iters=100, seed=3, progress=False).transform(
        ALE(mask=str(NIMARE_MASK)).fit(pain_dataset))
    want = Jackknife(target_image=target, target_threshold=1.65,
                     cluster_threshold=10).transform(res)
    got = pd.read_csv(out / f"{names[1]}.tsv", sep="\t")
    expected = want.tables[names[1]]
    assert list(got.columns) == list(expected.columns) and len(got) == 19
    np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(float),
                               expected.iloc[:, 1:].to_numpy(float), rtol=1e-12, atol=1e-15)
    assert (out / "label_desc-mass_level-cluster_corr-FWE_method-montecarlo_tail-positive"
                  ".nii.gz").is_file()
    capsys.readouterr()
    for extra, message in (
            (["--diagnostics", "jackknife,nope"], "--diagnostics must be jackknife or "
                                                  "focuscounter; got 'nope'"),
            (["--diagnostics", "focuscounter", "--fwe", "none"], "--fwe none gives none"),
            (["--diag-threshold", "2"], "apply to --diagnostics"),
            (["--diagnostics", "jackknife", "--diag-threshold", "-1"],
             "--diag-threshold must be a number >= 0"),
            (["--diagnostics", "jackknife", "--diag-cluster-threshold", "-1"],
             "--diag-cluster-threshold must be an integer >= 0")):
        assert main(argv[:-1] + [str(tmp_path / "bad")] + extra) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("policy", [
    {"resampling_policy": "leave_1_out"},
    {"resampling_policy": "subsample", "target_n": 15, "n_resamples": 6, "random_state": 3},
])
def test_resampled_stability_equals_nimares_replicates(policy, ale_result):
    """Given the same cluster-size threshold, the stability map is the mean of NiMARE's own
    replicate supports (its ``_fit_cbma_subset_replicate``) over NiMARE's schedule."""
    import copy

    nd = pytest.importorskip("nimare.diagnostics")
    from nimare.dataset import Dataset
    from nimare.meta.cbma import ALE as NiMAREALE
    from nimare.utils import _mask_img_to_bool

    from daskmeta.diagnostics import ResampledStability

    ours = ResampledStability(**policy)
    got = ours.transform(ale_result)
    threshold = ours._size_threshold(ale_result)
    name = f"{TARGET}_diag-ResampledStability"
    summary = got.tables[f"{name}_tab-summary"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        est = NiMAREALE().fit(Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK))).estimator
    theirs = nd.ResampledStability(**policy)
    ma = est._collect_ma_maps()
    full = copy.deepcopy(est)
    full.null_distributions_ = {}
    full._prepare_subsample_null(ma)
    full._compute_approximate_z_values(ma)
    ids = np.array(est.inputs_["id"])
    subsets, target_n = theirs._resolve_subsets(len(ids))
    mask = _mask_img_to_bool(est.masker.mask_img)
    want = sum(theirs._fit_cbma_subset_replicate(s, ma, est, ids, threshold,
                                                 full.null_distributions_, mask)
               .astype(np.float64) for s in subsets) / len(subsets)
    stability = got.get_map(name, "array")
    assert stability.dtype == np.float32 and np.array_equal(stability, want.astype(np.float32))
    assert 0 < (stability > 0).sum() and stability.max() == 1
    assert summary.to_dict("records") == [{
        "target_image": TARGET, "resampling_policy": policy["resampling_policy"],
        "n_resamples": len(subsets), "target_n": target_n, "k": None,
        "random_state": policy.get("random_state")}]


def test_resampled_stability_errors(ale_result, pain_dataset):
    from daskmeta.diagnostics import ResampledStability

    with pytest.raises(DaskmetaError, match="k must be from 1 to 18 .* got 19"):
        ResampledStability(resampling_policy="leave_k_out", k=19).transform(ale_result)
    with pytest.raises(DaskmetaError, match="too many to enumerate"):
        ResampledStability(target_n=10).transform(ale_result)
    with pytest.raises(DaskmetaError, match="resampling_policy must be 'subsample'"):
        ResampledStability(resampling_policy="bootstrap").transform(ale_result)
    bare = ALE(mask=str(NIMARE_MASK)).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="needs a cluster-size threshold: give "):
        ResampledStability(resampling_policy="leave_1_out").transform(bare)
    # A fixed threshold needs no Monte Carlo null; the subsets sum in groups of 4.
    a = ResampledStability(resampling_policy="leave_1_out", cluster_threshold=50,
                           group_size=4).transform(bare)
    b = ResampledStability(resampling_policy="leave_1_out", cluster_threshold=50).transform(bare)
    name = "z_desc-size_level-cluster_corr-FWE_method-montecarlo_diag-ResampledStability"
    assert np.array_equal(a.get_map(name, "array"), b.get_map(name, "array"))


def test_worker_processes_give_the_same_tables(scheduler_and_workers, ale_result):
    """A real scheduler and two worker processes on loopback: same tables and maps."""
    from daskmeta.diagnostics import ResampledStability

    client, _ = scheduler_and_workers
    stability = ResampledStability(resampling_policy="leave_1_out", cluster_threshold=50,
                                   group_size=8)
    name = f"{TARGET}_diag-ResampledStability"
    with client.as_current():
        remote = Jackknife().transform(ale_result)
        remote_stab = stability.transform(ale_result).get_map(name, "array")
        assert client.run(lambda: __import__("daskmeta").__file__)  # the workers ran daskmeta
    local = Jackknife().transform(ale_result)
    counts = COUNTS.format("Jackknife")
    pd.testing.assert_frame_equal(remote.tables[counts], local.tables[counts], atol=0, rtol=0)
    assert np.array_equal(remote_stab, stability.transform(ale_result).get_map(name, "array"))
