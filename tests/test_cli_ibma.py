"""The ``ibma`` command: NiMARE JSON with relative image paths, an image table and an image
stack give the same maps as the Python API; options are checked before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import crop_mask

from daskmeta import simulate
from daskmeta.cli import main
from daskmeta.cluster import close_client
from daskmeta.estimators import PermutedOLS, Stouffers
from daskmeta.imagestack import ImageStack
from daskmeta.space import Space


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-ibma")
    mask = crop_mask(size=(14, 14, 14))
    mask.to_filename(str(folder / "mask.nii.gz"))
    out = simulate.images(folder / "images", n_studies=8, space=Space(mask),
                          image_types=("z", "beta"), compress=True, seed=2)
    # NiMARE's JSON with paths relative to the file.
    doc = out.nimare_dict()
    for study in doc.values():
        imgs = study["contrasts"]["1"]["images"]
        for k, v in imgs.items():
            imgs[k] = "images/" + v.rsplit("/", 1)[1]
    (folder / "dset.json").write_text(json.dumps(doc))
    table = out.dataset.images.copy()
    table["sample_size"] = out.dataset.experiments["sample_size"].to_numpy()
    table["z"] = ["images/" + p.rsplit("/", 1)[1] for p in table["z"]]
    table["beta"] = ["images/" + p.rsplit("/", 1)[1] for p in table["beta"]]
    table.to_csv(folder / "images.tsv", sep="\t", index=False)
    yield out, folder
    close_client()


def test_ibma_from_json_table_and_stack(sim, tmp_path, capsys):
    out, folder = sim
    mask = str(folder / "mask.nii.gz")
    want = Stouffers(use_sample_size=True, mask=mask).fit(out.dataset)
    store = tmp_path / "stack.zarr"
    assert main(["ibma", str(folder / "dset.json"), "--method", "stouffers",
                 "--use-sample-size", "--mask", mask, "--out", str(tmp_path / "a"),
                 "--store", str(store), "--fwe", "bonferroni"]) == 0
    a = tmp_path / "a"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(["z.nii.gz", "p.nii.gz", "logp.nii.gz", "dof.nii.gz",
                            "p_corr-FWE_method-bonferroni.nii.gz",
                            "z_corr-FWE_method-bonferroni.nii.gz",
                            "logp_corr-FWE_method-bonferroni.nii.gz",
                            "provenance.json", "summary.json"])
    import nibabel as nib

    space = want.space
    z = np.asarray(nib.load(str(a / "z.nii.gz")).dataobj)[space.mask]
    np.testing.assert_allclose(z, want.get_map("z", "array"), rtol=1e-6, atol=1e-6)
    summary = json.loads((a / "summary.json").read_text())
    assert summary["n_experiments"] == 8 and summary["estimator"] == "Stouffers"
    # The image table gives the same z; the stack built by the first run, too.
    assert main(["ibma", str(folder / "images.tsv"), "--method", "stouffers",
                 "--use-sample-size", "--mask", mask, "--out", str(tmp_path / "b")]) == 0
    zb = np.asarray(nib.load(str(tmp_path / "b" / "z.nii.gz")).dataobj)[space.mask]
    np.testing.assert_array_equal(zb, z)
    assert main(["ibma", str(store), "--method", "stouffers", "--use-sample-size",
                 "--out", str(tmp_path / "s")]) == 0
    zs = np.asarray(nib.load(str(tmp_path / "s" / "z.nii.gz")).dataobj)[space.mask]
    np.testing.assert_array_equal(zs, z)
    store2 = tmp_path / "beta.zarr"
    assert main(["ibma", str(folder / "dset.json"), "--method", "permuted-ols", "--mask", mask,
                 "--fwe", "montecarlo", "--n-iters", "200", "--seed", "4", "--store",
                 str(store2), "--out", str(tmp_path / "c"), "--prefix", "pols"]) == 0
    c = tmp_path / "c"
    assert (c / "pols_z_level-voxel_corr-FWE_method-montecarlo.nii.gz").exists()
    pols = PermutedOLS().fit(ImageStack.open(store2))
    t = np.asarray(nib.load(str(c / "pols_t.nii.gz")).dataobj)[space.mask]
    np.testing.assert_allclose(t, pols.get_map("t", "array"), rtol=1e-6, atol=1e-6)
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(c.resolve())


@pytest.mark.parametrize("argv, message", [
    (["--method", "dersimonian-laird", "--tau2", "1"],
     "--tau2 does not apply to --method dersimonian-laird"),
    (["--method", "wls", "--tau2", "-1"], "--tau2 must be a finite number >= 0; got -1.0"),
    (["--method", "stouffers", "--fwe", "montecarlo"],
     "--fwe montecarlo is offered for --method permuted-ols only"),
    (["--method", "ssbl", "--use-sample-size"],
     "--use-sample-size does not apply to --method ssbl"),
    (["--method", "permuted-ols", "--n-iters", "0"], "--n-iters must be an integer from 1"),
    (["--method", "hedges", "--prefix", "../x"], "--prefix"),
])
def test_ibma_options_checked_first(sim, tmp_path, capsys, argv, message):
    _, folder = sim
    out = tmp_path / "never"
    assert main(["ibma", str(folder / "dset.json"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_ibma_missing_images_named(sim, tmp_path, capsys):
    _, folder = sim
    table = pd.read_csv(folder / "images.tsv", sep="\t")
    for c in ("z", "beta"):
        table[c] = [str(folder / p) for p in table[c]]
    table.loc[2, "beta"] = str(tmp_path / "gone.nii.gz")
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    argv = ["ibma", str(tmp_path / "t.tsv"), "--mask", str(folder / "mask.nii.gz"),
            "--out", str(tmp_path / "o")]
    assert main([*argv, "--method", "permuted-ols"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"daskmeta: error: {tmp_path / 'gone.nii.gz'}: image file not found")
    assert main([*argv, "--method", "hedges"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "daskmeta: error: experiment study-0000: no 'varcope' image and none can be made "
        "from its images (beta, z; sample size")
