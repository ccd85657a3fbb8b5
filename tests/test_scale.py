"""SCALE: ALE against a base rate of a database's foci (NiMARE 0.22.1's SCALE)."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, NIMARE_MASK, PAIN_JSON
from scipy import stats

from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE, SCALE
from daskmeta.estimators.scale import base_rate_counts
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning

N_ITERS = 120


@pytest.fixture(scope="module")
def base_xyz():
    """The first 20,000 foci of Neurosynth (a base-rate subset), as NiMARE takes them."""
    coords = pd.read_csv(DATA / "neurosynth-v7" / "data-neurosynth_version-7_coordinates.tsv.gz",
                         sep="\t", nrows=20000)
    return coords[["x", "y", "z"]].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def scale_result(pain_dataset, base_xyz):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)  # base-rate foci outside the mask
        return SCALE(xyz=base_xyz, n_iters=N_ITERS, random_state=3, batch_size=30,
                     mask=str(NIMARE_MASK)).fit(pain_dataset)


def test_scale_agrees_with_nimare(scale_result, base_xyz, pain_dataset):
    from nimare.dataset import Dataset
    from nimare.meta.cbma.ale import SCALE as NiMARESCALE

    nd = Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK))
    ours = scale_result
    theirs = NiMARESCALE(xyz=base_xyz, n_iters=N_ITERS, random_state=3).fit(nd)
    # The ALE map is NiMARE's exactly; z and p agree in distribution.
    np.testing.assert_array_equal(ours.get_map("stat", "array"),
                                  theirs.get_map("stat", return_type="array"))
    z1, z2 = ours.get_map("z", "array"), theirs.get_map("z", return_type="array")
    assert np.corrcoef(z1, z2)[0, 1] >= 0.95
    p1 = ours.get_map("p", "array")
    # NiMARE's p is float32 (its logp too): back to its exceedance counts over N_ITERS.
    p2 = np.round(10.0 ** -theirs.get_map("logp", return_type="array").astype(np.float64)
                  * N_ITERS) / N_ITERS
    np.testing.assert_allclose(10.0 ** -ours.get_map("logp", "array").astype(float), p1,
                               rtol=1e-5)
    active = ours.get_map("stat", "array") > 0
    ks = stats.ks_2samp(p1[active], p2[active])
    assert ks.statistic < 0.03, ks  # two seeds of daskmeta's: 0.007; NiMARE's: 0.009
    # p from exceedance counts over N_ITERS, clipped as NiMARE clips
    assert p1.min() >= 1 / N_ITERS and p1.max() <= 1 - 1 / N_ITERS
    counts = np.round(p1 * N_ITERS)
    np.testing.assert_allclose(p1 * N_ITERS, counts, atol=1e-6)
    assert set(ours.map_names) == {"stat", "p", "z", "logp"}
    assert ours.attrs["scale_seed"] == 3 and ours.attrs["base_rate_n_foci"] > 19000


def test_scale_is_seeded_and_independent_of_workers(scale_result, pain_dataset, base_xyz):
    distributed = pytest.importorskip("distributed")
    est = SCALE(xyz=base_xyz, n_iters=N_ITERS, random_state=3, batch_size=30,
                mask=str(NIMARE_MASK))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)
        with dask.config.set(scheduler="synchronous"):
            sync = est.fit(pain_dataset)
        with distributed.Client(processes=False, n_workers=2, threads_per_worker=1,
                                dashboard_address=":0") as client:
            assert len(client.scheduler_info()["workers"]) == 2
            two = est.fit(pain_dataset)
        other = SCALE(xyz=base_xyz, n_iters=N_ITERS, random_state=4, batch_size=30,
                      mask=str(NIMARE_MASK)).fit(pain_dataset)
    for res in (sync, two):
        np.testing.assert_array_equal(res.get_map("p", "array"),
                                      scale_result.get_map("p", "array"))
    assert not np.array_equal(other.get_map("p", "array"), scale_result.get_map("p", "array"))


def test_base_rate_from_dataset_or_collection(tmp_path, pain_dataset, nimare_space):
    from daskmeta import Collection
    from daskmeta.kernels import ALEKernel

    xyz = pain_dataset.foci[["x", "y", "z"]].to_numpy()
    counts, outside = base_rate_counts(xyz, nimare_space)
    by_ds, out_ds = base_rate_counts(pain_dataset, nimare_space)
    np.testing.assert_array_equal(counts, by_ds)
    # Hand count: each focus's nearest voxel, in the mask.
    ijk = nimare_space.mm_to_ijk(xyz)
    inside = nimare_space.in_mask(ijk)
    assert outside == out_ds == int((~inside).sum())
    assert counts.sum() == inside.sum()
    coll = Collection.build(pain_dataset, ALEKernel(), tmp_path / "pain-ale.zarr",
                            mask=nimare_space)
    by_coll, _ = base_rate_counts(coll, nimare_space)
    np.testing.assert_array_equal(counts, by_coll)
    # SCALE from the collection (input and base rate) equals SCALE from the Dataset.
    kw = dict(n_iters=20, random_state=1, batch_size=10, mask=nimare_space)
    with pytest.warns(DaskmetaWarning, match=f"SCALE: {outside} of 243 base-rate coord"):
        a = SCALE(xyz=coll, **kw).fit(coll)
    with pytest.warns(DaskmetaWarning, match=f"SCALE: {outside} of 243 base-rate coord"):
        b = SCALE(xyz=pain_dataset, **kw).fit(pain_dataset)
    for name in ("stat", "p", "z"):
        np.testing.assert_allclose(a.get_map(name, "array"), b.get_map(name, "array"),
                                   atol=1e-6)
    assert "collection" in a.attrs["base_rate"]


def test_scale_voxel_fwe_uses_the_base_rate(scale_result, pain_dataset):
    res = FWECorrector("montecarlo", n_iters=40, vfwe_only=True, seed=2,
                       batch_size=20).transform(scale_result)
    null = res.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"]
    # The null's maxima are those of ALE maps with the foci drawn from the base rate: the
    # same draws by hand give the same maxima.
    from daskmeta import montecarlo

    model = scale_result.estimator._null_model()
    assert isinstance(model.sampler, montecarlo.BaseRateFoci)
    direct = montecarlo.run_montecarlo(model, montecarlo.MaxStatistic(), 40, 20, 2)
    np.testing.assert_array_equal(null, direct.max_stat)
    uniform = ALE(mask=str(NIMARE_MASK)).fit(pain_dataset).estimator._null_model()
    assert uniform.token != model.token
    assert "z_level-voxel_corr-FWE_method-montecarlo" in res.map_names
    with pytest.raises(DaskmetaError, match="use vfwe_only=True"):
        FWECorrector("montecarlo", n_iters=10, seed=1).transform(scale_result)


def test_scale_errors(pain_dataset):
    with pytest.raises(DaskmetaError, match="SCALE needs xyz="):
        SCALE().fit(pain_dataset)
    with pytest.raises(DaskmetaError, match=r"N x 3 array of mm coordinates \(N >= 1\); got "
                                            r"shape \(4, 2\)"):
        SCALE(xyz=np.zeros((4, 2))).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="got str"):
        SCALE(xyz="foci.txt").fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="n_iters must be a positive integer; got 0"):
        SCALE(xyz=np.zeros((4, 3)), n_iters=0).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="random_state must be None or an integer"):
        SCALE(xyz=np.zeros((4, 3)), random_state=-1).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="no base-rate coordinate falls inside the mask"):
        SCALE(xyz=np.full((4, 3), 500.0), n_iters=2, mask=str(NIMARE_MASK)).fit(pain_dataset)
    with pytest.warns(DaskmetaWarning, match="1 of 2 base-rate coordinates lie outside"):
        SCALE(xyz=np.array([[0.0, 0, 0], [500, 0, 0]]), n_iters=2,
              mask=str(NIMARE_MASK)).fit(pain_dataset)


def test_cli_scale(tmp_path, capsys, pain_dataset):
    from conftest import NIMARE_MASK as MASK

    from daskmeta.cli import main

    out = tmp_path / "scale"
    base = tmp_path / "base.csv"
    foci = pain_dataset.foci[["id", "x", "y", "z"]]
    foci.to_csv(base, index=False)
    argv = ["scale", str(PAIN_JSON), "--base-rate", str(base), "--mask", str(MASK),
            "--n-iters", "30", "--seed", "5", "--fwe", "montecarlo", "--out", str(out)]
    with pytest.warns(DaskmetaWarning, match="base-rate coordinates lie outside the mask"):
        assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(out.resolve())
    import json

    import nibabel as nib

    with pytest.warns(DaskmetaWarning):
        expect = SCALE(xyz=pain_dataset, n_iters=30, random_state=5,
                       mask=str(MASK)).fit(pain_dataset)
    for name in ("stat", "z", "logp"):
        img = nib.load(out / f"{name}.nii.gz")
        np.testing.assert_allclose(np.asarray(img.dataobj)[expect.space.mask],
                                   expect.get_map(name, "array"), atol=1e-6)
    assert (out / "z_level-voxel_corr-FWE_method-montecarlo.nii.gz").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["scale_seed"] == 5 and prov["estimator"] == "SCALE"
    assert prov["base_rate_path"] == str(base.resolve())
    assert main(["scale", str(PAIN_JSON), "--base-rate", str(tmp_path / "none.txt"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert main(["scale", str(PAIN_JSON), "--base-rate", str(base), "--n-iters", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--n-iters must be an integer from 1" in capsys.readouterr().err


def test_fit_many_is_refused():
    from daskmeta.estimators import BalancedALESubtraction

    for est in (SCALE(xyz=np.zeros((2, 3))), BalancedALESubtraction()):
        with pytest.raises(DaskmetaError, match=r"fit_many is not available; call fit once"):
            est.fit_many(None, ["a"])
