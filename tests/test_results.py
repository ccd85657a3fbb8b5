"""MetaResult: maps, NIfTI export, xarray export and cluster tables on hand-made cases."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

import daskmeta
from daskmeta import DaskmetaError, MetaResult


@pytest.fixture
def box_space():
    data = np.zeros((10, 10, 10), np.uint8)
    data[1:9, 1:9, 1:9] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -20, -30]
    return daskmeta.Space(nib.Nifti1Image(data, affine))


def _vec(space, cubes):
    vol = np.zeros(space.shape)
    for (sl, value) in cubes:
        vol[sl] = value
    return vol[space.mask]


def test_cluster_table_hand_computed(box_space):
    # Two clusters: a 2x2x2 block (peak 5 at voxel (2,2,2)) and a single voxel of 4.
    z = _vec(box_space, [((slice(2, 4), slice(2, 4), slice(2, 4)), 3.5),
                         ((2, 2, 2), 5.0), ((7, 7, 7), 4.0), ((7, 7, 5), 2.0)])
    res = MetaResult({"z": z, "p": np.ones_like(z)}, box_space, attrs={"estimator": "hand"})
    table = res.get_table("z", threshold=3.1)
    assert list(table.columns) == ["cluster_id", "sign", "peak_x", "peak_y", "peak_z",
                                   "peak_value", "n_voxels", "size_mm3"]
    assert table["cluster_id"].tolist() == [1, 2]
    assert table["n_voxels"].tolist() == [8, 1]
    assert table["size_mm3"].tolist() == [64.0, 8.0]
    assert table["peak_value"].tolist() == [5.0, 4.0]
    # voxel (2,2,2) -> mm (-10 + 4, -20 + 4, -30 + 4)
    assert table.loc[0, ["peak_x", "peak_y", "peak_z"]].tolist() == [-6.0, -16.0, -26.0]
    assert table.loc[1, ["peak_x", "peak_y", "peak_z"]].tolist() == [4.0, -6.0, -16.0]
    assert len(res.get_table("z", threshold=3.1, min_size=2)) == 1
    # Diagonal neighbours join under 26-connectivity but not under 6.
    d = _vec(box_space, [((3, 3, 3), 4.0), ((4, 4, 4), 4.0)])
    diag = MetaResult({"z": d}, box_space)
    assert len(diag.get_table("z", 3.0, connectivity=26)) == 1
    assert len(diag.get_table("z", 3.0, connectivity=6)) == 2
    neg = MetaResult({"z": -d}, box_space)
    assert len(neg.get_table("z", 3.0)) == 0
    two = neg.get_table("z", 3.0, two_sided=True)  # faces by default: two clusters
    assert two["sign"].tolist() == [-1, -1] and two["peak_value"].tolist() == [-4.0, -4.0]
    two = neg.get_table("z", 3.0, two_sided=True, connectivity=26)
    assert two["sign"].tolist() == [-1] and two["peak_value"].tolist() == [-4.0]


def test_maps_exports(box_space, tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=box_space.n_voxels)
    res = MetaResult({"stat": z * 2, "z": z}, box_space, attrs={"estimator": "X", "seed": 3})
    assert res.map_names == ["stat", "z"]
    paths = res.save_maps(tmp_path, prefix="demo")
    assert [p.name for p in paths] == ["demo_stat.nii.gz", "demo_z.nii.gz"]
    img = nib.load(paths[1])
    assert np.allclose(img.affine, box_space.affine)
    assert np.allclose(np.asarray(img.dataobj)[box_space.mask], z.astype(np.float32))
    assert np.all(np.asarray(img.dataobj)[~box_space.mask] == 0)
    xr_maps = res.to_xarray()
    assert xr_maps.dims == ("map", "x", "y", "z")
    assert xr_maps.sel(map="z", x=-6.0, y=-16.0, z=-26.0).item() == pytest.approx(
        np.asarray(img.dataobj)[2, 2, 2])
    assert np.isnan(xr_maps.sel(map="z", x=-10.0, y=-20.0, z=-30.0).item())
    assert xr_maps.attrs["seed"] == 3
    prov = json.loads(res.save_provenance(tmp_path / "p.json").read_text())
    assert prov == {"estimator": "X", "seed": 3}
    with pytest.raises(DaskmetaError, match="no map named 'q'; available: stat, z"):
        res.get_map("q")
    with pytest.raises(DaskmetaError, match=r"has shape \(3,\); expected"):
        MetaResult({"z": np.zeros(3)}, box_space)


def test_copy_is_independent(box_space):
    res = MetaResult({"z": np.zeros(box_space.n_voxels)}, box_space, attrs={"a": 1},
                     null_distributions={"n": np.arange(3)})
    cp = res.copy().add_maps({"z2": np.ones(box_space.n_voxels)}, attrs={"b": 2},
                             nulls={"m": np.zeros(2)})
    assert res.map_names == ["z"] and "b" not in res.attrs and "m" not in res.null_distributions
    assert cp.map_names == ["z", "z2"] and cp.attrs["b"] == 2


def test_result_provenance(pain_dataset, nimare_mask):
    from daskmeta.estimators import ALE

    res = ALE(mask=nimare_mask).fit(pain_dataset)
    a = res.attrs
    assert a["estimator"] == "ALE" and a["kernel"] == "ALEKernel"
    assert a["daskmeta_version"] == daskmeta.__version__
    assert a["mask_n_voxels"] == 228483 and len(a["mask_hash"]) == 64
    assert a["input_hash"] == pain_dataset.slice(
        [i for i in pain_dataset.ids if i in set(pain_dataset.foci["id"])]).fingerprint()
    assert a["tal2mni"] == "lancaster2007_icbm_other"
    assert a["n_experiments"] == 19 and a["n_foci"] == 243
    assert res.get_map("z").shape == (91, 109, 91)


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_to_xarray_writes_and_reads_back(box_space, tmp_path, fmt):
    """The 4-D array writes with to_netcdf and to_zarr as it is (nested attributes, such as
    the affine, as JSON text) and reads back to the same maps and attributes."""
    import xarray as xr

    from daskmeta.results import decode_attrs

    rng = np.random.default_rng(1)
    z = rng.normal(size=box_space.n_voxels)
    attrs = {"estimator": "X", **box_space.describe(), "fwe_montecarlo_seed": 2**62 + 7,
             "n_foci": 12, "selection": "pain & ~memory", "label_threshold": 0.05,
             "stopped_early": False, "note": None, "selection_ids": ["a", "b"],
             "kernel__fwhm": float("nan")}
    res = MetaResult({"z": z, "p": rng.uniform(size=box_space.n_voxels)}, box_space, attrs)
    arr = res.to_xarray()
    path = tmp_path / f"maps.{'nc' if fmt == 'netcdf' else 'zarr'}"
    if fmt == "netcdf":
        arr.to_netcdf(path)
        back = xr.open_dataarray(path)
    else:
        arr.to_zarr(path, consolidated=False)
        back = xr.open_zarr(path, consolidated=False)["maps"]
    back = back.load()
    assert back.dims == ("map", "x", "y", "z")
    assert [str(m) for m in back["map"].values] == ["z", "p"]
    assert np.array_equal(back.values, arr.values, equal_nan=True)
    assert np.array_equal(back["x"].values, arr["x"].values)
    got = decode_attrs(back.attrs)
    want = json.loads(json.dumps(res.attrs))  # tuples as lists, as JSON gives them
    assert set(got) == set(want)
    assert math.isnan(got.pop("kernel__fwhm")) and math.isnan(want.pop("kernel__fwhm"))
    assert got == want
    assert got["affine"] == box_space.describe()["affine"]  # nested lists, exactly
    assert got["fwe_montecarlo_seed"] == 2**62 + 7
    assert back.attrs["estimator"] == "X"  # plain strings stay plain
