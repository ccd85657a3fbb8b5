"""NiMARE 0.22.1's remaining contrast options: MKDAChi2's directional inference maps
(``fit(..., inference_map1=, inference_map2=)``), against NiMARE on two halves of pain21,
and their errors."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import NIMARE_MASK

from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALESubtraction, MKDAChi2
from daskmeta.exceptions import DaskmetaError

MASK = str(NIMARE_MASK)


def _ids_with_foci(ds):
    present = set(ds.foci["id"])
    return [i for i in ds.ids if i in present]


@pytest.fixture(scope="module")
def halves(pain_dataset):
    ids = _ids_with_foci(pain_dataset)
    return pain_dataset.slice(ids[:9]), pain_dataset.slice(ids[9:])


@pytest.fixture(scope="module")
def nimare_halves(nimare_pain):
    ids = list(nimare_pain.coordinates["id"].unique())
    return nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:])


@pytest.fixture(scope="module")
def plain(halves):
    return MKDAChi2(mask=MASK).fit(*halves)


def _inference_maps(plain):
    """A vector map for group 1 (about half its voxels > 0) and an image for group 2."""
    rng = np.random.default_rng(0)
    vector = rng.normal(size=plain.space.n_voxels).astype(np.float32)
    image = plain.space.to_img((plain.get_map("z_desc-group2", "array") > 1).astype(np.float32))
    return vector, image


@pytest.mark.parametrize("given", ["1", "2", "both"])
def test_chi2_inference_maps_equal_nimare(given, halves, nimare_halves, plain, tmp_path):
    from nimare.meta.cbma import MKDAChi2 as NiChi2

    vector, image = _inference_maps(plain)
    path = tmp_path / "map2.nii.gz"
    nib.save(image, path)
    kw = {"inference_map1": vector if given in ("1", "both") else None,
          "inference_map2": image if given in ("2", "both") else None}
    theirs_kw = dict(kw)
    if given == "both":
        kw["inference_map2"] = str(path)  # a path is read on the mask's grid
    ours = MKDAChi2(mask=MASK).fit(*halves, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NiChi2().fit(*nimare_halves, **theirs_kw)
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


def test_inference_map_errors(halves, plain, tmp_path):
    est = MKDAChi2(mask=MASK)
    n = plain.space.n_voxels
    with pytest.raises(DaskmetaError, match=rf"inference_map1 has shape \(5,\); the "
                                            rf"estimator's mask has {n} voxels"):
        est.fit(*halves, inference_map1=np.ones(5))
    small = nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), np.eye(4))
    with pytest.raises(DaskmetaError, match="inference_map2 does not match the mask: shape "
                                            r"\(4, 4, 4\)"):
        est.fit(*halves, inference_map2=small)
    with pytest.raises(DaskmetaError, match="inference_map1 must be an in-mask vector or an "
                                            "image on the mask's grid; got dict"):
        est.fit(*halves, inference_map1={"a": 1})
    with pytest.raises(DaskmetaError, match="ALESubtraction.fit takes no inference_map1"):
        ALESubtraction(mask=MASK, n_iters=10).fit(*halves, inference_map1=np.ones(n))
    # A later fit without the maps is unrestricted again.
    est.fit(*halves, inference_map1=np.ones(n))
    again = est.fit(*halves)
    np.testing.assert_array_equal(again.get_map("z_desc-association", "array"),
                                  plain.get_map("z_desc-association", "array"))
    assert "inference_map1_voxels" not in again.attrs
