"""MACM: the experiments with a focus in a seed, meta-analysed and corrected."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, NIMARE_MASK, PAIN_JSON, TESTDATA

import daskmeta
from daskmeta.cli import main
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.macm import seed_studies

AMYGDALA = TESTDATA / "amygdala_roi.nii.gz"
NS = DATA / "neurosynth-v7"


@pytest.fixture(scope="module")
def ns_subset():
    """The first 500 MNI studies of Neurosynth, as a daskmeta Dataset and a NiMARE one."""
    from nimare.dataset import Dataset as NiMAREDataset

    coords = pd.read_csv(NS / "data-neurosynth_version-7_coordinates.tsv.gz", sep="\t",
                         nrows=25000)
    meta = pd.read_csv(NS / "data-neurosynth_version-7_metadata.tsv.gz", sep="\t",
                       usecols=["id", "space"])
    mni = set(meta["id"][meta["space"] == "MNI"])
    coords = coords[coords["id"].isin(mni)]
    ids = coords["id"].drop_duplicates().iloc[:500]
    coords = coords[coords["id"].isin(set(ids))]
    foci = pd.DataFrame({"id": coords["id"].astype(str), "x": coords["x"], "y": coords["y"],
                         "z": coords["z"], "space": "MNI"})
    ours = daskmeta.Dataset.from_foci(foci)
    source = {}
    for sid, group in foci.groupby("id", sort=False):
        source[sid] = {"contrasts": {"1": {"coords": {
            "space": "MNI", "x": group["x"].tolist(), "y": group["y"].tolist(),
            "z": group["z"].tolist()}}}}
    theirs = NiMAREDataset(source, mask=str(NIMARE_MASK))
    return ours, theirs


def test_roi_selection_equals_nimare(ns_subset, nimare_space, tmp_path):
    ours, theirs = ns_subset
    ids, what = seed_studies(ours, AMYGDALA, nimare_space)
    expected = {i.rsplit("-", 1)[0] for i in theirs.get_studies_by_mask(str(AMYGDALA))}
    assert len(ids) > 10
    assert set(ids) == expected
    assert ids == [i for i in ours.ids if i in expected]  # the dataset's order
    assert "366 voxels" in what
    # The ROI on another grid (cropped: same voxels, another affine and shape) selects the
    # same studies: foci are tested on the ROI's own grid, nothing is resampled.
    img = nib.load(AMYGDALA)
    data = np.asarray(img.dataobj)
    crop = data[20:70, 40:90, 10:50]
    assert crop.sum() == data.sum()
    affine = img.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(img.affine, [20, 40, 10])
    cropped = nib.Nifti1Image(crop, affine)
    assert seed_studies(ours, cropped, nimare_space)[0] == ids


def test_sphere_selection_equals_nimare(pain_dataset, nimare_pain, nimare_space):
    centre, radius = (40.0, 14.0, 2.0), 12.0  # right anterior insula
    ids, what = seed_studies(pain_dataset, (centre, radius), nimare_space)
    expected = nimare_pain.get_studies_by_coordinate(np.array([centre]), r=radius)
    assert 3 <= len(ids) < 19
    assert set(ids) == set(expected)
    assert what == "a sphere of 12 mm around (40, 14, 2)"


def test_macm_fits_the_selection(pain_dataset, nimare_space):
    centre, radius = (40.0, 14.0, 2.0), 12.0
    res = daskmeta.macm(pain_dataset, (centre, radius), estimator=ALE(mask=nimare_space),
                        corrector=FWECorrector("montecarlo", n_iters=50, seed=1,
                                               vfwe_only=True))
    ids = res.attrs["macm_ids"]
    direct = ALE(mask=nimare_space).fit(pain_dataset.slice(ids))
    np.testing.assert_array_equal(res.get_map("stat", "array"), direct.get_map("stat", "array"))
    assert res.attrs["macm_n_selected"] == len(ids) == res.attrs["n_experiments"]
    assert "z_level-voxel_corr-FWE_method-montecarlo" in res.map_names


def test_macm_from_a_collection(tmp_path, pain_dataset, nimare_space):
    from daskmeta import Collection
    from daskmeta.kernels import MKDAKernel

    coll = Collection.build(pain_dataset, MKDAKernel(r=10), tmp_path / "pain.zarr",
                            mask=nimare_space)
    seed = ((40.0, 14.0, 2.0), 12.0)
    a = daskmeta.macm(coll, seed, estimator=MKDADensity())
    b = daskmeta.macm(pain_dataset, seed, estimator=MKDADensity(mask=nimare_space))
    assert a.attrs["macm_ids"] == b.attrs["macm_ids"]
    np.testing.assert_array_equal(a.get_map("stat", "array"), b.get_map("stat", "array"))


def test_macm_errors(pain_dataset, nimare_space, tmp_path):
    with pytest.raises(DatasetError, match=r"the seed \(the ROI .*amygdala_roi.nii.gz \(366 "
                                           r"voxels\)\) selects no experiment: none of the 21"):
        seed_studies(pain_dataset, AMYGDALA, nimare_space)
    with pytest.raises(DaskmetaError, match=r"a sphere of 5 mm around \(0, 0, 200\)\) lies "
                                            "outside the analysis mask"):
        seed_studies(pain_dataset, ((0, 0, 200), 5), nimare_space)
    img = nib.load(AMYGDALA)
    far = img.affine.copy()
    far[:3, 3] += 500  # the same voxels, half a metre away
    with pytest.raises(DaskmetaError, match="lies outside the analysis mask: no voxel of it"):
        seed_studies(pain_dataset, nib.Nifti1Image(np.asarray(img.dataobj), far),
                     nimare_space)
    empty = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(DaskmetaError, match="has no non-zero voxel"):
        seed_studies(pain_dataset, empty, nimare_space)
    with pytest.raises(DaskmetaError, match="radius must be a positive number of mm; got -1"):
        seed_studies(pain_dataset, ((0, 0, 0), -1), nimare_space)
    with pytest.raises(DaskmetaError, match="ROI image 'nope.nii.gz' does not exist"):
        seed_studies(pain_dataset, "nope.nii.gz", nimare_space)
    with pytest.raises(DaskmetaError, match="seed must be an ROI image .* got int"):
        seed_studies(pain_dataset, 3, nimare_space)
    with pytest.raises(DaskmetaError, match="source must be a daskmeta Dataset or Collection"):
        daskmeta.macm("pain.json", ((0, 0, 0), 10))


def test_cli_macm(tmp_path, capsys):
    out = tmp_path / "macm"
    argv = ["macm", str(PAIN_JSON), "--sphere", "40,14,2,12", "--mask", str(NIMARE_MASK),
            "--out", str(out), "--n-iters", "40", "--seed", "1", "--no-figures"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[-1] == str(out.resolve())
    n = int(lines[-2].split()[0])
    assert lines[-2] == f"{n} studies selected by the seed"
    assert f"selected {n} studies" in captured.err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["macm_n_selected"] == n == len(prov["macm_ids"]) == prov["n_experiments"]
    assert (out / "z_desc-size_level-cluster_corr-FWE_method-montecarlo.nii.gz").is_file()
    assert main(["macm", str(PAIN_JSON), "--roi", str(AMYGDALA), "--mask", str(NIMARE_MASK),
                 "--out", str(tmp_path / "x"), "--fwe", "none"]) == 2
    assert "selects no experiment" in capsys.readouterr().err
    assert main(["macm", str(PAIN_JSON), "--sphere", "1,2,3", "--out", str(tmp_path / "x")]) == 2
    assert "--sphere must be X,Y,Z,R" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
