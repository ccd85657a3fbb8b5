"""MKDA chi-square maps from counts (daskmeta.estimators._chi2) against NiMARE 0.22.1."""

from __future__ import annotations

import numpy as np
import pytest

from daskmeta.estimators._chi2 import CHI2_MAP_NAMES, chi2_maps, one_way, two_way_counts


@pytest.fixture(scope="module")
def nimare_chi2_pain(nimare_pain):
    """NiMARE's MKDAChi2 on two halves of pain21 and its groups' active counts."""
    mkda = pytest.importorskip("nimare.meta.cbma.mkda")
    kernel = pytest.importorskip("nimare.meta.kernel")
    ids = list(nimare_pain.coordinates["id"].unique())
    d1, d2 = nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:])
    result = mkda.MKDAChi2(prior=0.5).fit(d1, d2)
    k = kernel.MKDAKernel(r=10)
    c1 = k.transform(d1, masker=nimare_pain.masker, return_type="summary_array")
    c2 = k.transform(d2, masker=nimare_pain.masker, return_type="summary_array")
    return result, c1, len(ids[:9]), c2, len(ids[9:])


def test_chi2_maps_equal_nimare(nimare_chi2_pain):
    result, c1, n1, c2, n2 = nimare_chi2_pain
    ours = chi2_maps(c1, n1, c2, n2, prior=0.5)
    assert set(ours) == set(result.maps), set(ours) ^ set(result.maps)
    for name in CHI2_MAP_NAMES:
        theirs = result.get_map(name, return_type="array")
        assert ours[name].dtype == theirs.dtype == np.float32, name
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(theirs), err_msg=name)
        ok = ~np.isnan(theirs)
        np.testing.assert_allclose(ours[name][ok], theirs[ok], rtol=1e-6, atol=1e-6,
                                   err_msg=name)
    # the case has voxels active in no experiment (p(F|A) = 0 / 0) and zero tables (chi2 2.0)
    assert np.isnan(ours["prob_desc-FgA"]).any()
    assert (ours["chi2_desc-association"] == 2.0).any()


def test_chi2_maps_without_prior(nimare_chi2_pain):
    _, c1, n1, c2, n2 = nimare_chi2_pain
    assert "prob_desc-AgF_prior" not in chi2_maps(c1, n1, c2, n2, prior=None)


def test_chi2_maps_broadcast_over_labels():
    """(labels x voxels) counts with (labels x 1) sizes give each label's one-contrast maps."""
    rng = np.random.default_rng(0)
    n1 = np.array([[5], [12], [30]])
    n2 = np.array([[40], [33], [15]])
    c1 = rng.binomial(n1, 0.2, size=(3, 500))
    c2 = rng.binomial(n2, 0.1, size=(3, 500))
    many = chi2_maps(c1, n1, c2, n2)
    for i in range(3):
        one = chi2_maps(c1[i], int(n1[i, 0]), c2[i], int(n2[i, 0]))
        for name in one:
            np.testing.assert_array_equal(many[name][i], one[name], err_msg=name)


def test_chi2_hand_computed():
    # table a=3 of n1=4 active, b=1 of n2=6: N (a n2 - b n1)^2 / ((a+b)(N-a-b) n1 n2)
    assert two_way_counts(np.array([3.0]), np.array([1.0]), 4, 6)[0] == pytest.approx(
        10 * (18 - 4) ** 2 / (4 * 6 * 4 * 6))
    # a margin of zero: NiMARE's 2.0
    assert two_way_counts(np.array([0.0]), np.array([0.0]), 4, 6)[0] == 2.0
    # uniformity: counts 0, 2 of n=4, mean 1: (x - 1)^2 * 4 / (1 * 3)
    np.testing.assert_allclose(one_way(np.array([0.0, 2.0]), 4), [4 / 3, 4 / 3])
    # all counts equal: 0, not 0 / 0
    np.testing.assert_array_equal(one_way(np.zeros(3), 4), 0.0)
    maps = chi2_maps(np.array([0.0, 2.0]), 4, np.array([1.0, 1.0]), 2)
    np.testing.assert_array_equal(maps["z_desc-uniformity"],
                                  np.float32([-np.sqrt(4 / 3), np.sqrt(4 / 3)]))
    np.testing.assert_allclose(maps["prob_desc-FgA"], [0.0, (0.5 * 4 / 6) / (3 / 6)],
                               rtol=1e-6)
