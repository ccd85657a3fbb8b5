"""ImageStack: resampling as NiMARE (nilearn, same settings), NiMARE's conversions, resumed
builds, and bad images refused with an error naming the file."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import crop_mask

import daskmeta
from daskmeta import simulate
from daskmeta._stats import t_to_z
from daskmeta.exceptions import DaskmetaError, DatasetError, ParseError
from daskmeta.imagestack import ImageStack, load_masked
from daskmeta.space import Space


@pytest.fixture(scope="module")
def space():
    return Space(crop_mask(size=(12, 12, 12)))


@pytest.fixture(scope="module")
def sim(tmp_path_factory, space):
    return simulate.images(tmp_path_factory.mktemp("stack-sim"), n_studies=5, space=space,
                           seed=3, compress=True)


def _dataset(images: dict, sizes=None):
    ids = list(images)
    cols = sorted({k for v in images.values() for k in v})
    frame = pd.DataFrame({"id": ids, **{c: [images[i].get(c) for i in ids] for c in cols}})
    exp = pd.DataFrame({"id": ids, "sample_size": sizes if sizes is not None else [20] * len(ids)})
    return daskmeta.Dataset(exp, pd.DataFrame(columns=["id", "x", "y", "z"]), images=frame)


def test_values_and_conversions(sim, space, tmp_path):
    ds = sim.dataset
    st = ImageStack.build(ds, tmp_path / "s.zarr", mask=space, rows_per_block=2,
                          chunk_voxels=500)
    assert st.image_types == ("z", "t", "beta", "varcope", "se")
    assert st.n_blocks == 3 and st.missing_blocks() == []
    beta = st.values("beta")
    direct = np.vstack([np.asarray(nib.load(p).dataobj)[space.mask] for p in ds.images["beta"]])
    np.testing.assert_array_equal(beta, direct)
    # Voxel reads by index and the lazy array agree with the whole read.
    idx = np.array([3, 700, 1200])
    np.testing.assert_array_equal(st.values("beta", idx), beta[:, idx])
    np.testing.assert_array_equal(np.asarray(st.array("beta", 1000)), beta)
    # Conversions, as NiMARE's transforms: z from t (dof = n - 1), varcope from se,
    # se from varcope, beta from t and varcope, p from z (two-tailed).
    only_t = _dataset({e: {"t": t, "se": s} for e, t, s in
                       zip(ds.ids, ds.images["t"], ds.images["se"], strict=True)},
                      ds.experiments["sample_size"].tolist())
    conv = ImageStack.build(only_t, mask=space, image_types=["z", "varcope", "beta", "p"])
    t = st.values("t").astype(float)
    n = ds.experiments["sample_size"].to_numpy()[:, None]
    z = np.vstack([t_to_z(t[i], n[i, 0] - 1) for i in range(len(t))])
    np.testing.assert_allclose(conv.values("z"), z, rtol=1e-6, atol=1e-6)
    se = st.values("se").astype(float)
    np.testing.assert_allclose(conv.values("varcope"), se ** 2, rtol=1e-6)
    np.testing.assert_allclose(conv.values("beta"), t * se, rtol=1e-5, atol=1e-6)
    from scipy import stats
    np.testing.assert_allclose(conv.values("p"), 2 * stats.norm.sf(np.abs(z)), rtol=1e-5,
                               atol=1e-7)
    # What cannot be made is named.
    with pytest.raises(DatasetError, match=r"experiment study-0000: no 'z' image and none can "
                                           r"be made from its images \(se; sample size 35\): a 'z' map "
                                           "needs t and a sample size, or p"):
        ImageStack.build(_dataset({e: {"se": s} for e, s in zip(ds.ids, ds.images["se"],
                                                                strict=True)},
                                  ds.experiments["sample_size"].tolist()),
                         mask=space, image_types=["z"])


def test_resampling_matches_nilearn_with_nimares_settings(sim, space, tmp_path):
    from nilearn.image import resample_to_img

    src = nib.load(sim.dataset.images["z"][0])
    # The same image on a 3 mm grid, shifted.
    aff = src.affine.copy()
    aff[:3, :3] *= 1.5
    aff[:3, 3] -= 3
    coarse = resample_to_img(src, nib.Nifti1Image(np.zeros((9, 9, 9), np.float32), aff),
                             force_resample=True, copy_header=True)
    path = tmp_path / "coarse.nii.gz"
    nib.save(coarse, str(path))
    got = load_masked(path, space)
    want = resample_to_img(nib.load(str(path)), space.mask_img, clip=True,
                           interpolation="linear", copy_header=True, force_resample=True)
    np.testing.assert_array_equal(got, np.asarray(want.dataobj, np.float32)[space.mask])
    with pytest.raises(ParseError, match=r"coarse.nii.gz: image grid \(shape \(9, 9, 9\).*"
                                         r"differs from the mask's \(shape \(12, 12, 12\)\) "
                                         "and resample=False"):
        load_masked(path, space, resample=False)


def _bad(tmp_path, good, kind):
    img = nib.load(good)
    data = np.asarray(img.dataobj, dtype=np.float32)
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "nan":
        nib.save(nib.Nifti1Image(np.full_like(data, np.nan), img.affine), str(path))
    elif kind == "corrupt":
        raw = gzip.compress(open(good, "rb").read() if not good.endswith(".gz")
                            else gzip.decompress(open(good, "rb").read()))
        path.write_bytes(raw[: len(raw) // 3])
    elif kind == "noaffine":
        nib.save(nib.Nifti1Image(data, None), str(path))  # sform and qform codes 0
    elif kind == "wrongaffine":  # 200 mm away: nothing of it lands in the mask
        aff = img.affine.copy()
        aff[:3, 3] += 200
        nib.save(nib.Nifti1Image(data, aff), str(path))
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), str(path))
    elif kind == "missing":
        return str(tmp_path / "nowhere.nii.gz")
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("nan", "nan.nii.gz: image has no finite non-zero value inside the mask"),
    ("corrupt", r"corrupt.nii.gz: cannot read image \(.*\); is it a valid NIfTI file"),
    ("noaffine", "noaffine.nii.gz: image has no affine .NIfTI sform and qform codes are both 0"),
    ("wrongaffine", "wrongaffine.nii.gz: cannot resample image to the mask: The field of "
                    "view given by the target affine does not contain any of the data"),
    ("4d", r"4d.nii.gz: image must be 3-D; got shape \(12, 12, 12, 2\)"),
    ("missing", "nowhere.nii.gz: image file not found"),
])
def test_bad_images_stop_the_build_naming_the_file(sim, space, tmp_path, kind, message):
    ds = sim.dataset
    images = {e: {"z": z} for e, z in zip(ds.ids, ds.images["z"], strict=True)}
    images[ds.ids[3]]["z"] = _bad(tmp_path, ds.images["z"][0], kind)
    with pytest.raises(ParseError, match=message):
        ImageStack.build(_dataset(images), tmp_path / "s.zarr", mask=space)


def test_resume_and_refusals(sim, space, tmp_path):
    ds = sim.dataset
    store = tmp_path / "s.zarr"
    full = ImageStack.build(ds, store, mask=space, image_types=["z"], rows_per_block=2)
    want = full.values("z")
    # A build that stopped: blocks 1 and 2 unwritten (markers gone, values wiped).
    for b in (1, 2):
        (store / ".blocks" / f"{b:06d}").unlink()
    import zarr
    zarr.open_array(str(store / "z"), mode="r+")[2:] = np.nan
    with pytest.raises(DaskmetaError, match=r"incomplete \(2 of 3 blocks of experiments not "
                                            r"written\); run ImageStack.build again"):
        ImageStack.open(store)
    # (resumed in the stored stack's blocks of 2, whatever rows_per_block is given now)
    resumed = ImageStack.build(ds, store, mask=space, image_types=["z"], rows_per_block=3)
    assert resumed.rows_per_block == 2
    np.testing.assert_array_equal(resumed.values("z"), want)
    # Another dataset at the same path is refused; overwrite rebuilds.
    with pytest.raises(DaskmetaError, match="holds another image stack .*overwrite=True"):
        ImageStack.build(ds, store, mask=space, image_types=["z", "beta"])
    again = ImageStack.build(ds, store, mask=space, image_types=["z", "beta"], overwrite=True)
    assert again.image_types == ("z", "beta")
    with pytest.raises(DaskmetaError, match="is not an image stack"):
        ImageStack.open(tmp_path)
    with pytest.raises(DaskmetaError, match="has no 't' images; it has z, beta"):
        again.values("t")
    nothing = daskmeta.Dataset(ds.experiments, ds.foci)
    with pytest.raises(DatasetError, match="the dataset has no images"):
        ImageStack.build(nothing, mask=space)
    shutil.rmtree(store)
