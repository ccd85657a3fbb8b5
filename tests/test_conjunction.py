"""Conjunction: the minimum statistic of two or more results (Nichols et al., 2005)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import NIMARE_MASK

import daskmeta
from daskmeta.cli import main
from daskmeta.conjunction import conjunction_images, conjunction_name
from daskmeta.exceptions import DaskmetaError
from daskmeta.results import MetaResult


@pytest.fixture(scope="module")
def halves(pain_dataset, nimare_space):
    from daskmeta.estimators import ALE

    ids = pain_dataset.ids
    a = ALE(mask=nimare_space).fit(pain_dataset.slice(ids[:11]))
    b = ALE(mask=nimare_space).fit(pain_dataset.slice(ids[11:]))
    return a, b


def test_conjunction_is_the_voxelwise_minimum(halves):
    a, b = halves
    res = daskmeta.conjunction([a, b], map="z")
    za, zb = a.get_map("z", "array"), b.get_map("z", "array")
    out = res.get_map("z_desc-conjunction", "array")
    np.testing.assert_array_equal(out, np.minimum(za, zb))
    # Where both are positive it is NiMARE's conjunction_analysis, voxel for voxel.
    from nimare.workflows import conjunction_analysis

    nim = conjunction_analysis([a.get_map("z"), b.get_map("z")])
    nim_vec = np.asarray(nim.dataobj)[a.space.mask]
    both = (za > 0) & (zb > 0)
    assert both.sum() > 1000
    np.testing.assert_allclose(out[both], nim_vec[both], rtol=0, atol=1e-6)
    assert res.attrs["conjunction_n_inputs"] == 2
    assert res.attrs["conjunction_rule"] == "minimum"
    # A threshold keeps the voxels significant in both.
    thr = daskmeta.conjunction([a, b], map="z", threshold=2.0)
    kept = thr.get_map("z_desc-conjunction", "array")
    np.testing.assert_array_equal(kept > 0, (za >= 2) & (zb >= 2))


def test_conjunction_of_p_maps_is_the_maximum(halves):
    a, b = halves
    res = daskmeta.conjunction([a, b, a], map="p", threshold=0.001)
    pa, pb = a.get_map("p", "array"), b.get_map("p", "array")
    expect = np.maximum(pa, pb)
    out = res.get_map("p_desc-conjunction", "array")
    np.testing.assert_array_equal(out, np.where(expect <= 0.001, expect, 0))


def test_names():
    assert conjunction_name("z") == "z_desc-conjunction"
    assert conjunction_name("z_level-voxel_corr-FWE_method-montecarlo") == (
        "z_desc-conjunction_level-voxel_corr-FWE_method-montecarlo")
    assert conjunction_name("z_desc-size_level-cluster_corr-FWE_method-montecarlo") == (
        "z_desc-sizeConjunction_level-cluster_corr-FWE_method-montecarlo")


def test_conjunction_errors(halves, pain_dataset):
    from daskmeta.estimators import ALE

    a, b = halves
    with pytest.raises(DaskmetaError, match="two or more results; got 1"):
        daskmeta.conjunction([a])
    with pytest.raises(DaskmetaError, match="result 1 has no map 'z'; its maps: zz"):
        daskmeta.conjunction([a, MetaResult({"zz": a.get_map("z", "array")}, a.space)])
    other = ALE().fit(pain_dataset)  # nilearn's default mask
    with pytest.raises(DaskmetaError, match="result 1 is on another mask"):
        daskmeta.conjunction([a, other])
    with pytest.raises(DaskmetaError, match="result 1 is a str"):
        daskmeta.conjunction([a, "b"])
    img = a.get_map("z")
    small = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), img.affine)
    with pytest.raises(DaskmetaError, match="small.nii is on another grid"):
        conjunction_images([img, small], names=["a.nii", "small.nii"])


def test_cli_conjunction(tmp_path, halves, capsys):
    a, b = halves
    dirs = []
    for name, res in (("a", a), ("b", b)):
        d = tmp_path / name
        res.save_maps(d, prefix="run" if name == "b" else "")
        res.save_provenance(d / ("run_provenance.json" if name == "b" else "provenance.json"))
        dirs.append(str(d))
    out = tmp_path / "conj"
    assert main(["conjunction", *dirs, "--map", "z", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    img = nib.load(out / "z_desc-conjunction.nii.gz")
    expect = np.minimum(a.get_map("z", "array"), b.get_map("z", "array")).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[a.space.mask], expect)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["mask_hash"] == a.space.mask_hash and len(prov["conjunction_inputs"]) == 2
    # A folder fitted on another mask is refused, by its provenance.
    c = tmp_path / "c"
    b.save_maps(c)
    (c / "provenance.json").write_text(json.dumps({"mask_hash": "0" * 64}))
    assert main(["conjunction", dirs[0], str(c), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "was fitted on another mask" in err and str(c) in err
    assert main(["conjunction", dirs[0], dirs[1], "--map", "nope", "--out",
                 str(tmp_path / "y")]) == 2
    assert "holds no file named nope.nii.gz" in capsys.readouterr().err
    assert main(["conjunction", dirs[0], "--out", str(tmp_path / "y")]) == 2
    assert "two or more result folders; got 1" in capsys.readouterr().err
    assert main(["conjunction", dirs[0], str(NIMARE_MASK), "--out", str(tmp_path / "y")]) == 0


def test_help_of_the_new_commands():
    from daskmeta.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    for name, words in (("conjunction", "--map"), ("scale", "--base-rate"),
                        ("macm", "--sphere"), ("balanced-subtraction", "--n-subsamples")):
        text = choices[name].format_help()
        assert f"usage: daskmeta {name}" in text and words in text
