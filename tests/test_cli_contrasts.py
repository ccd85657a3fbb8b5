"""The contrast commands: ``daskmeta mkda-chi2`` and ``daskmeta subtraction``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import NIMARE_MASK, PAIN_JSON
from scipy import sparse

import daskmeta
from daskmeta import Collection
from daskmeta.cli import main
from daskmeta.estimators import MKDAChi2
from daskmeta.io import read_nimare_json
from daskmeta.kernels import ALEKernel, MKDAKernel

MASK = str(NIMARE_MASK)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two halves of pain21 as dataset files, an MKDA and an ALE store of the whole."""
    root = tmp_path_factory.mktemp("cli-contrasts")
    ds = read_nimare_json(PAIN_JSON)
    present = set(ds.foci["id"])
    ids = [i for i in ds.ids if i in present]
    a, b = ds.slice(ids[:9]), ds.slice(ids[9:])
    a.save(root / "a.zip")
    b.save(root / "b.zip")
    mkda = Collection.build(ds, MKDAKernel(), root / "mkda.zarr", mask=MASK)
    ale = Collection.build(ds, ALEKernel(), root / "ale.zarr", mask=MASK)
    return {"a": root / "a.zip", "b": root / "b.zip", "mkda": mkda.path, "ale": ale.path,
            "ids": ids, "halves": (a, b)}


def test_mkda_chi2_two_datasets_with_fwe(tmp_path, files, capsys):
    out = tmp_path / "chi2"
    assert main(["mkda-chi2", str(files["a"]), str(files["b"]), "--out", str(out), "--mask",
                 MASK, "--n-iters", "30", "--seed", "4", "--prefix", "pain",
                 "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "MKDAChi2: 9 experiments in group 1, 10 in group 2" in err
    want = MKDAChi2(mask=MASK).fit(*files["halves"])
    for name in ("z_desc-association", "prob_desc-FgA_prior"):
        img = nib.load(out / f"pain_{name}.nii.gz").get_fdata()
        np.testing.assert_allclose(img[want.space.mask], want.get_map(name, "array"),
                                   atol=1e-6, equal_nan=True)
    assert (out / "pain_z_desc-associationSize_level-cluster_corr-FWE_method-montecarlo"
                  ".nii.gz").exists()
    prov = json.loads((out / "pain_provenance.json").read_text())
    assert prov["fwe_montecarlo_seed"] == 4 and prov["estimator"] == "MKDAChi2"


def test_mkda_chi2_store_selection_against_rest(tmp_path, files, capsys):
    ds = read_nimare_json(PAIN_JSON)
    w = np.zeros((ds.n_experiments, 1))
    w[[i for i, e in enumerate(ds.ids) if e in set(files["ids"][:6])], 0] = 1.0
    labelled = daskmeta.Dataset(ds.experiments, ds.foci, labels=sparse.csr_matrix(w),
                                label_names=["topic"])
    store = Collection.build(labelled, MKDAKernel(), tmp_path / "l.zarr", mask=MASK)
    out = tmp_path / "rest"
    assert main(["mkda-chi2", str(store.path), "--select", "topic", "--out", str(out),
                 "--n-iters", "20", "--seed", "2", "--no-figures"]) == 0
    assert "MKDAChi2: 6 experiments in group 1, 13 in group 2" in capsys.readouterr().err
    want = MKDAChi2().fit(store, select="topic")
    z = nib.load(out / "z_desc-association.nii.gz").get_fdata()[want.space.mask]
    np.testing.assert_allclose(z, want.get_map("z_desc-association", "array"), atol=1e-6)
    assert (out / "p_desc-association_level-voxel_corr-FWE_method-montecarlo.nii.gz").exists()
    # every experiment selected: no group 2
    assert main(["mkda-chi2", str(store.path), "--select", "topic | ~topic", "--out",
                 str(tmp_path / "x")]) == 2
    assert ("empty group 2: --select 'topic | ~topic' selects every experiment with foci"
            in capsys.readouterr().err)


def test_subtraction_two_datasets(tmp_path, files, capsys):
    out = tmp_path / "sub"
    assert main(["subtraction", str(files["a"]), str(files["b"]), "--out", str(out),
                 "--mask", MASK, "--n-iters", "40", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "ALESubtraction: 9 experiments in group 1, 10 in group 2" in err
    for name in ("stat_desc-group1MinusGroup2", "z_desc-group1MinusGroup2",
                 "z_desc-group1MinusGroup2_level-voxel_corr-FWE_method-montecarlo",
                 "p_desc-group1MinusGroup2Size_level-cluster_corr-FWE_method-montecarlo",
                 "z_desc-group1"):
        assert (out / f"{name}.nii.gz").exists(), name
    assert (out / "z_desc-group1MinusGroup2.png").stat().st_size > 10_000
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fwe_montecarlo_nulls_from_fit"] is True
    assert prov["subtraction_seed"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mkda-chi2", "{a}", "--out", "{tmp}/o"],
         "mkda-chi2 with one input needs a collection store (daskmeta ingest) and --select; "
         "{a} is a dataset: give group 2 as a second input"),
        (["mkda-chi2", "{mkda}", "--out", "{tmp}/o"],
         "mkda-chi2 with one collection store needs --select (group 1)"),
        (["subtraction", "{ale}", "--select", "x", "--out", "{tmp}/o"],
         "subtraction with one collection store needs --select and --select2 (the two "
         "groups)"),
        (["mkda-chi2", "{mkda}", "{ale}", "--out", "{tmp}/o"],
         "A and B are collection stores (built with different kernels): give one store with "
         "--select and --select2, or two dataset inputs"),
        (["mkda-chi2", "{mkda}", "{b}", "--out", "{tmp}/o"],
         "give two dataset inputs, or one collection store with --select (a store and a "
         "dataset cannot be mixed)"),
        (["subtraction", "{a}", "{b}", "--select", "x", "--out", "{tmp}/o"],
         "--select/--select2 apply to one collection store; with two dataset inputs, each "
         "input is a group"),
        (["mkda-chi2", "{ale}", "--select", "{id}", "--out", "{tmp}/o"],
         "unknown label"),
        (["mkda-chi2", "{a}", "{empty}", "--out", "{tmp}/o"],
         "empty group: {empty} has no experiment with foci"),
        (["subtraction", "{mkda}", "--select", "a", "--select2", "b", "--out", "{tmp}/o"],
         "unknown label 'a'"),
        (["subtraction", "{a}", "{b}", "--n-iters", "0", "--out", "{tmp}/o"],
         "--n-iters must be an integer from 1 to 10,000,000; got 0"),
        (["mkda-chi2", "{a}", "{b}", "--prior", "1.5", "--out", "{tmp}/o"],
         "--prior must be a number in [0, 1]; got 1.5"),
        (["mkda-chi2", "{mkda}", "--select", "x", "--mask", "{mask}", "--out", "{tmp}/o"],
         "--mask does not apply to a collection store"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, files, argv, message):
    empty = tmp_path / "empty.csv"
    empty.write_text("id,x,y,z\n")
    fmt = {"tmp": tmp_path, "a": files["a"], "b": files["b"], "mkda": files["mkda"],
           "ale": files["ale"], "id": files["ids"][0], "empty": empty, "mask": MASK}
    argv = [a.format(**fmt) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("daskmeta: error: ")
    assert message.format(**fmt) in err[-1], err[-1]
    assert not (tmp_path / "o").exists()
