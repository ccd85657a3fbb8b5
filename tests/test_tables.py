"""Cluster tables agree with the corrected maps they describe: faces connectivity (as the
cluster-level Monte Carlo correction), and corrected maps cut at their own corrected p."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import daskmeta
from daskmeta import DaskmetaError, MetaResult
from daskmeta._stats import p_to_logp, p_to_z
from daskmeta.correct import CLUSTER_STRUCTURE, FDRCorrector, FWECorrector, cluster_p_maps
from daskmeta.montecarlo import null_to_p
from daskmeta.results import DEFAULT_CONNECTIVITY, cluster_table

SIZE = "_desc-size_level-cluster_corr-FWE_method-montecarlo"
MASS = "_desc-mass_level-cluster_corr-FWE_method-montecarlo"
FACES = ndimage.generate_binary_structure(3, 1)


@pytest.fixture(scope="module")
def box_space():
    data = np.zeros((10, 10, 10), np.uint8)
    data[1:9, 1:9, 1:9] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -20, -30]
    return daskmeta.Space(nib.Nifti1Image(data, affine))


# Blob A: a 2x2x2 cube; B touches A only at an edge, C only at a corner; D stands alone.
A = [(i, j, k) for i in (2, 3) for j in (2, 3) for k in (2, 3)]
B = [(4, 4, 2), (5, 4, 2)]  # (4, 4, 2) shares an edge with A's (3, 3, 2)
C = [(4, 4, 4), (5, 4, 4)]  # (4, 4, 4) shares a corner with A's (3, 3, 3)
D = [(7, 7, 7)]
# Null maximum cluster sizes (100 iterations): p(size 1) = 0.10, p(size 2 or 8) = 0.04.
NULL_SIZE = np.array([0] * 90 + [1] * 6 + [9] * 4, dtype=np.float32)


def _blobs(space):
    vol = np.zeros(space.shape, np.float32)
    for blob, value in ((A, 5.0), (B, 3.0), (C, 4.0), (D, 6.0)):
        for ijk in blob:
            vol[ijk] = value
    vol[2, 2, 2] = 7.0  # A's peak
    return vol


def _in_mask(space, voxels):
    vol = np.zeros(space.shape, bool)
    for ijk in voxels:
        vol[ijk] = True
    return vol[space.mask]


def test_faces_is_the_default_everywhere():
    import inspect

    assert DEFAULT_CONNECTIVITY == 6
    assert np.array_equal(CLUSTER_STRUCTURE, FACES)
    assert inspect.signature(cluster_table).parameters["connectivity"].default == 6
    assert inspect.signature(MetaResult.get_table).parameters["connectivity"].default == 6


def test_edge_and_corner_neighbours_are_separate_clusters(box_space):
    space = box_space
    vol = _blobs(space)
    stat = vol[space.mask]
    p_size, p_mass = cluster_p_maps(stat, space, 1.0, NULL_SIZE, NULL_SIZE * 4)
    # The correction labels four clusters: A (8 voxels), B and C (2 each), D (1).
    for blob, size in ((A, 8), (B, 2), (C, 2), (D, 1)):
        where = _in_mask(space, blob)
        assert np.all(p_size[where] == null_to_p(size, NULL_SIZE)), blob
    # (Had B and C joined A, its 12 voxels would have had p(12) = 0.01, not 0.04.)
    assert null_to_p(12, NULL_SIZE) != null_to_p(8, NULL_SIZE)
    mass_a = 8 * 4.0 + 2.0  # sum of (stat - 1) over A (one voxel is 7)
    assert np.all(p_mass[_in_mask(space, A)] == null_to_p(mass_a, NULL_SIZE * 4))

    # The uncorrected table at the same threshold: faces by default, 18 and 26 on request.
    res = MetaResult({"z": stat}, space)
    assert res.get_table("z", 1.0)["n_voxels"].tolist() == [8, 2, 2, 1]
    assert cluster_table(vol, space, 1.0)["n_voxels"].tolist() == [8, 2, 2, 1]
    assert res.get_table("z", 1.0, connectivity=18)["n_voxels"].tolist() == [10, 2, 1]
    assert res.get_table("z", 1.0, connectivity=26)["n_voxels"].tolist() == [12, 1]

    # The table of the corrected map lists the clusters the correction found significant
    # (A, B and C; not D, p = 0.1), each exactly.
    corrected = MetaResult({"stat": stat, "z": stat,
                            f"z{SIZE}": p_to_z(p_size, tail="one").astype(np.float32),
                            f"logp{SIZE}": p_to_logp(p_size)}, space)
    table, labels = corrected.get_table(f"z{SIZE}", return_labels=True)
    assert table["n_voxels"].tolist() == [8, 2, 2]
    assert table["peak_value"].tolist() == [7.0, 4.0, 3.0]  # peaks from the z map
    for cluster_id, blob in zip(table["cluster_id"], (A, C, B)):
        assert np.array_equal(labels == cluster_id, _in_mask(space, blob))
    assert not labels[_in_mask(space, D)].any()
    # Under 26-connectivity A, B and C would have been one cluster; on request, still possible.
    assert corrected.get_table(f"z{SIZE}", connectivity=26)["n_voxels"].tolist() == [12]


def test_significance_rule(box_space):
    space = box_space
    n = space.n_voxels
    p = np.full(n, 0.5, np.float32)
    p[:3] = [0.049, 0.05, 0.051]
    res = MetaResult({"z": np.ones(n), f"logp{SIZE}": p_to_logp(p),
                      "p_corr-FWE_method-bonferroni": p,
                      "z_corr-FWE_method-bonferroni": p_to_z(p, "two").astype(np.float32)},
                     space)
    # p == alpha is not significant, by the logp map or by the p map.
    assert res.significant(f"z{SIZE}")[:3].tolist() == [True, False, False]
    assert res.significant("z_corr-FWE_method-bonferroni")[:3].tolist() == [True, False, False]
    assert res.significant("z_corr-FWE_method-bonferroni", alpha=0.1).sum() == 3
    # z of a two-tailed conversion above 1.645 is not the rule: p = 0.051 has z > 1.645.
    assert res.get_map("z_corr-FWE_method-bonferroni", "array")[2] > 1.645
    assert res.is_corrected(f"z{SIZE}") and not res.is_corrected("z")
    assert not res.is_corrected("z_desc-mass_level-cluster_corr-FWE_method-montecarlo")
    with pytest.raises(DaskmetaError, match="'z' is not a corrected map"):
        res.significant("z")
    with pytest.raises(DaskmetaError, match="alpha must be strictly between 0 and 1"):
        res.significant(f"z{SIZE}", alpha=5)
    with pytest.raises(DaskmetaError, match="a threshold or an alpha, not both"):
        res.get_table(f"z{SIZE}", threshold=1.0, alpha=0.05)
    with pytest.raises(DaskmetaError, match="no p or logp map of the correction"):
        MetaResult({"z_corr-FDR_method-indep": np.ones(n)}, space).significant(
            "z_corr-FDR_method-indep")


# --------------------------------------------------------------------------------------------
# real corrections of the pain ALE
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pain_ale(pain_dataset, nimare_mask):
    from daskmeta.estimators import ALE

    return ALE(mask=nimare_mask).fit(pain_dataset)


def _components(space, keep_in_mask):
    vol = np.zeros(space.shape, bool)
    vol[space.mask] = keep_in_mask
    labels, n = ndimage.label(vol, FACES)
    return labels[space.mask], n


def _assert_same_clusters(labels, components, n_components, expected_ids):
    """Each listed cluster is exactly one of the expected components, and vice versa."""
    listed = sorted(int((labels == c).sum()) for c in np.unique(labels[labels > 0]))
    want = sorted(int((components == k).sum()) for k in expected_ids)
    assert listed == want
    for k in expected_ids:
        ids = np.unique(labels[components == k])
        assert len(ids) == 1 and ids[0] > 0, k
        assert np.array_equal(labels == ids[0], components == k), k


def test_montecarlo_cluster_table_lists_the_significant_clusters(pain_ale):
    mc = FWECorrector(method="montecarlo", n_iters=200, seed=0).transform(pain_ale)
    space = mc.space
    threshold = mc.attrs["fwe_montecarlo_cluster_threshold"]
    stat = mc.get_map("stat", "array").astype(np.float32)
    components, n = _components(space, stat > np.float32(threshold))
    for kind in (SIZE, MASS):
        logp = mc.get_map(f"logp{kind}", "array")
        # Cluster p-values are multiples of 1/200: read them back exactly.
        p = np.rint(10.0 ** -logp.astype(np.float64) * 200) / 200
        cluster_p = np.array([p[components == k][0] for k in range(1, n + 1)])
        significant = [k for k in range(1, n + 1) if cluster_p[k - 1] < 0.05]
        assert 0 < len(significant) < n, kind  # some clusters survive, some do not
        table, labels = mc.get_table(f"z{kind}", return_labels=True)
        assert len(table) == len(significant)
        _assert_same_clusters(labels, components, n, significant)
        # Peaks are those of the uncorrected z map, inside their clusters.
        z = mc.get_map("z", "array")
        for cid, peak in zip(table["cluster_id"], table["peak_value"]):
            assert peak == pytest.approx(z[labels == cid].max())


@pytest.mark.parametrize("corrector", [FWECorrector(method="bonferroni"),
                                       FDRCorrector(method="indep"),
                                       FDRCorrector(method="negcorr")])
def test_p_corrected_tables_hold_only_significant_voxels(pain_ale, corrector):
    res = corrector.transform(pain_ale)
    name = next(n for n in res.map_names if n.startswith("z_corr-"))
    p = res.get_map("p" + name[1:], "array")
    significant = p < np.float32(0.05)
    assert significant.any()
    table, labels = res.get_table(name, return_labels=True)
    # Every listed voxel has corrected p < 0.05, and no such voxel is missing.
    assert np.array_equal(labels > 0, significant)
    assert table["n_voxels"].sum() == significant.sum()
    components, n = _components(res.space, significant)
    _assert_same_clusters(labels, components, n, range(1, n + 1))
    # The old rule (z > 1.645 on the two-tailed corrected z) let in p up to 0.1.
    z_corr = res.get_map(name, "array")
    assert ((z_corr > 1.645) & ~significant).any()


def test_run_cbma_tables_and_figures_use_corrected_p(pain_dataset, nimare_mask, tmp_path):
    import pandas as pd

    from daskmeta.workflows import run_cbma

    out = run_cbma("ale", pain_dataset, tmp_path, mask=nimare_mask, fwe="bonferroni",
                   figures=False, log=lambda msg: None)
    res = out["result"]
    p = res.get_map("p_corr-FWE_method-bonferroni", "array")
    table = out["tables"]["z_corr-FWE_method-bonferroni"]
    assert table["n_voxels"].sum() == (p < np.float32(0.05)).sum() > 0
    written = pd.read_csv(tmp_path / "clusters.tsv", sep="\t")
    assert (written["map"] == "z_corr-FWE_method-bonferroni").sum() == len(table)
    # Peaks from the uncorrected z.
    z = res.get_map("z", "array")
    assert table["peak_value"].max() == pytest.approx(z.max())
