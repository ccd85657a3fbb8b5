"""Bad input gets a clear error (or one documented warning), never silently wrong numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmeta
from daskmeta import DaskmetaWarning, DatasetError
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.exceptions import DaskmetaError, NotFittedError


def _foci(**extra):
    df = pd.DataFrame({"id": ["a", "a", "b", "c"], "x": [-38.0, 40, 2, -12],
                       "y": [14.0, 16, 18, -18], "z": [2.0, 2, 38, 6]})
    for k, v in extra.items():
        df[k] = v
    return df


def test_ale_without_sample_sizes_lists_experiments_and_fix(nimare_mask):
    ds = daskmeta.Dataset.from_foci(_foci(sample_size=[20, 20, np.nan, np.nan]))
    with pytest.raises(DatasetError, match=r"2 have none: b, c\..*ALEKernel\(sample_size=N\)"):
        ALE(mask=nimare_mask).fit(ds)
    # The suggested fix works.
    res = ALE(mask=nimare_mask, kernel__sample_size=20).fit(ds)
    assert np.isfinite(res.get_map("z", "array")).all()


def test_foci_outside_mask_dropped_with_one_counting_warning(nimare_mask):
    base = _foci(sample_size=20)
    far = pd.concat([base, pd.DataFrame({"id": ["b", "c"], "x": [0.0, 80.0], "y": [0.0, 0.0],
                                         "z": [100.0, 0.0], "sample_size": 20})])
    with pytest.warns(DaskmetaWarning, match=r"^2 of 6 foci \(in 2 experiments\) lie more than "
                                             r"10 mm outside the mask and were dropped$") as rec:
        res = ALE(mask=nimare_mask).fit(daskmeta.Dataset.from_foci(far))
    assert len(rec) == 1
    clean = ALE(mask=nimare_mask).fit(daskmeta.Dataset.from_foci(base))
    assert np.array_equal(res.get_map("stat", "array"), clean.get_map("stat", "array"))
    assert res.attrs["n_foci"] == 4


def test_foci_just_outside_mask_kept_as_nimare(nimare_mask, nimare_space):
    # A focus 2 voxels past the mask edge is kept: its kernel reaches in-mask voxels.
    ijk = nimare_space.voxel_ijk
    top = ijk[np.argmax(ijk[:, 2])]
    xyz = nimare_space.ijk_to_mm(top + [0, 0, 2])[0]
    ds = daskmeta.Dataset.from_foci(pd.DataFrame(
        {"id": ["a"], "x": [xyz[0]], "y": [xyz[1]], "z": [xyz[2]], "sample_size": [20]}))
    res = MKDADensity(mask=nimare_mask).fit(ds)
    assert res.get_map("stat", "array").sum() > 0


def test_empty_selection(nimare_mask, pain_dataset):
    with pytest.raises(DatasetError, match="empty selection: no experiment matches the given ids"):
        ALE(mask=nimare_mask).fit(pain_dataset, select=[])
    no_foci = [i for i in pain_dataset.ids if i not in set(pain_dataset.foci["id"])]
    assert len(no_foci) == 2
    with pytest.raises(DatasetError, match="empty selection: none of the 2 experiments has foci"):
        ALE(mask=nimare_mask).fit(pain_dataset, select=no_foci)


def test_empty_label_selection(nimare_mask):
    from scipy import sparse

    ds = daskmeta.Dataset.from_foci(_foci(sample_size=20))
    ds = daskmeta.Dataset(ds.experiments, ds.foci, labels=sparse.csr_matrix(np.eye(3)[:, :2]),
                          label_names=["pain", "vision"])
    with pytest.raises(DatasetError, match=r"no experiment matches label expression "
                                           r"'pain & vision' \(label_threshold 0.001\)"):
        ALE(mask=nimare_mask).fit(ds, select="pain & vision")
    res = MKDADensity(mask=nimare_mask).fit(ds, select="pain | vision")
    assert res.attrs["n_experiments"] == 2


def test_nan_coordinates_name_experiments():
    with pytest.raises(DatasetError, match=r"1 foci have NaN or non-numeric coordinates, in "
                                           r"experiments b"):
        daskmeta.Dataset.from_foci(_foci(x=[1.0, 2.0, np.nan, 4.0]))


def test_unknown_space():
    with pytest.raises(DaskmetaError, match=r"experiment c: unknown coordinate space 'ICBM452'; "
                                            r"allowed: MNI"):
        daskmeta.Dataset.from_foci(_foci(space=["MNI", "MNI", "TAL", "ICBM452"]))


def test_talairach_converted():
    ds = daskmeta.Dataset.from_foci(_foci(space=["MNI", "MNI", "TAL", "MNI"]))
    got = ds.foci.loc[ds.foci["id"] == "b", ["x", "y", "z"]].to_numpy()
    assert np.allclose(got, daskmeta.tal2mni([[2, 18, 38]]))
    assert np.allclose(daskmeta.mni2tal(got), [[2, 18, 38]])
    assert ds.experiments.set_index("id").loc["b", "space"] == "TAL"


def test_bad_parameters_named(nimare_mask, pain_dataset):
    with pytest.raises(DaskmetaError, match="null_method='montecarlo' is not supported"):
        ALE(null_method="montecarlo", mask=nimare_mask).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match=r"unexpected parameters \['fwhm'\]; kernel "
                                            r"parameters are given as kernel__<name>"):
        ALE(fwhm=10, mask=nimare_mask).fit(pain_dataset)
    with pytest.raises(DatasetError, match="ALEKernel has no parameter 'r'"):
        ALE(kernel__r=10, mask=nimare_mask).fit(pain_dataset)
    with pytest.raises(DatasetError, match='only one of "fwhm" and "sample_size"'):
        ALE(kernel__fwhm=10, kernel__sample_size=20, mask=nimare_mask).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="weighting='sqrt' is not supported"):
        MKDADensity(weighting="sqrt", mask=nimare_mask).fit(pain_dataset)
    with pytest.raises(DaskmetaError, match="expects a daskmeta Dataset or Collection; got str"):
        ALE(mask=nimare_mask).fit("pain.json")


def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ALE().describe()


def test_mask_problems(tmp_path, pain_dataset, nimare_space):
    import nibabel as nib

    with pytest.raises(DaskmetaError, match="does not exist"):
        ALE(mask=tmp_path / "nope.nii.gz").fit(pain_dataset)
    empty = nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    with pytest.raises(DaskmetaError, match="no non-zero voxel"):
        daskmeta.Space(empty)
    other = nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4))
    with pytest.raises(DaskmetaError, match="does not match the mask"):
        nimare_space.from_img(other, name="z map")


def test_distance_to_mask_is_exact_on_and_off_the_grid(nimare_space):
    rng = np.random.default_rng(3)
    shape = np.asarray(nimare_space.shape)
    points = np.vstack([rng.integers(-60, shape + 60, size=(300, 3)),
                        nimare_space.voxel_ijk[:5]])  # and some in-mask voxels
    mask_mm = nimare_space.voxel_ijk * 2.0
    brute = np.array([np.sqrt(((mask_mm - p * 2.0) ** 2).sum(1)).min() for p in points])
    got = nimare_space.distance_to_mask(points)
    assert np.array_equal(got, brute.astype(np.float32))
    assert np.all(got[-5:] == 0)


@pytest.mark.parametrize("margin", [0.0, 2.0, 4.5, 10.0, 17.3, 30.0, float("inf")])
def test_near_mask_is_distance_within_margin(nimare_mask, margin):
    # Looking the mask up around points decides exactly as the KD-tree distance does, on
    # and off the grid; margins of up to 12 voxels (24 mm) never build the KD-tree.
    space = daskmeta.Space(nimare_mask)
    rng = np.random.default_rng(5)
    shape = np.asarray(space.shape)
    points = np.vstack([rng.integers(-20, shape + 20, size=(3000, 3)),
                        space.voxel_ijk[::5000] + rng.integers(-8, 9, size=(46, 3))])
    got = space.near_mask(points, margin)
    assert ("_mask_surface" in space.__dict__) == (24 < margin < np.inf)
    assert np.array_equal(got, space.distance_to_mask(points) <= margin)
    assert 0 < got.sum() < len(points) or np.isinf(margin)


def test_focus_just_off_the_grid_but_near_the_mask_is_kept(nimare_mask, nimare_space):
    # NiMARE's mask touches the bottom of its grid (cerebellum at z = -72 mm): a focus 4 mm
    # below the grid is 4 mm from the mask, and its MKDA sphere reaches in-mask voxels.
    bottom = nimare_space.voxel_ijk[nimare_space.voxel_ijk[:, 2] == 0][0]
    xyz = nimare_space.ijk_to_mm(bottom + [0, 0, -2])[0]
    assert nimare_space.distance_to_mask(bottom + [0, 0, -2])[0] == pytest.approx(4.0)
    ds = daskmeta.Dataset.from_foci(pd.DataFrame(
        {"id": ["a"], "x": [xyz[0]], "y": [xyz[1]], "z": [xyz[2]], "sample_size": [20]}))
    res = MKDADensity(mask=nimare_mask).fit(ds)
    assert res.attrs["n_foci"] == 1
    assert res.get_map("stat", "array").sum() > 0
