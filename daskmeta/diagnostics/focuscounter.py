"""FocusCounter: how many foci of each experiment fall in each cluster (NiMARE's rule: a
focus counts for the cluster of the voxel its coordinates round to)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from daskmeta._docs import fill_doc
from daskmeta.diagnostics._base import Diagnostics

__all__ = ["FocusCounter"]


def count_foci(experiment_ids, foci, label_volume, affine, cluster_ids) -> np.ndarray:
    """``(experiments, clusters)`` int64 counts of ``foci`` (a table with ``id``, ``x``,
    ``y``, ``z`` in mm) whose nearest voxel (``numpy.round`` of the voxel coordinates, as
    NiMARE's ``mm2vox``) carries each label of ``cluster_ids``; vectorized over foci."""
    n_exp, n_clu = len(experiment_ids), len(cluster_ids)
    counts = np.zeros(n_exp * n_clu, dtype=np.int64)
    if len(foci) == 0 or n_clu == 0:
        return counts.reshape(n_exp, n_clu)
    xyz = foci[["x", "y", "z"]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ijk = np.round(nib.affines.apply_affine(np.linalg.inv(affine), xyz))
    finite = np.isfinite(ijk).all(axis=1)
    shape = np.asarray(label_volume.shape)
    inside = finite.copy()
    inside[finite] = ((ijk[finite] >= 0) & (ijk[finite] < shape)).all(axis=1)
    ijk = ijk[inside].astype(np.int64)
    lab = label_volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    column = np.full(int(max(label_volume.max(), 0)) + 1, -1, dtype=np.int64)
    column[np.asarray(cluster_ids, dtype=np.int64)] = np.arange(n_clu)
    col = column[np.clip(lab, 0, None)]
    row_of = {eid: r for r, eid in enumerate(experiment_ids)}
    row = foci["id"].map(row_of).to_numpy()[inside]
    keep = (col >= 0) & ~np.isnan(row.astype(np.float64))
    flat = row[keep].astype(np.int64) * n_clu + col[keep]
    counts += np.bincount(flat, minlength=n_exp * n_clu)
    return counts.reshape(n_exp, n_clu)


@fill_doc
class FocusCounter(Diagnostics):
    """The number of foci of each experiment in each cluster of a thresholded map
    (NiMARE's ``FocusCounter``).

    Parameters
    ----------
    %(diagnostic_target)s
    n_cores : int
        Accepted for NiMARE compatibility.
    target_threshold : float, optional
        Threshold of the target map (default 0).

    Notes
    -----
    A focus counts for a cluster when the voxel nearest to it belongs to the cluster (NiMARE
    rounds coordinates to voxels before its within-one-voxel test, which leaves exactly
    this). Every focus of the fitted experiments counts, inside the mask or not.
    """

    def _contributions(self, result, est, labels, cluster_ids):
        space = result.space
        dataset = est.dataset_
        ids = list(dataset.ids)
        out = []
        for lab, cids in zip(labels, cluster_ids, strict=True):
            volume = np.zeros(space.shape, dtype=np.int64)
            volume[space.mask] = lab
            out.append(count_foci(ids, dataset.foci, volume, space.affine, cids))
        return out

    def _pair_contributions(self, result, est, group, members, labels, cluster_ids):
        space = result.space
        ids = list(np.asarray(est.dataset_.ids)[members])
        volume = np.zeros(space.shape, dtype=np.int64)
        volume[space.mask] = labels
        foci = est.dataset_.foci
        return count_foci(ids, foci[foci["id"].isin(ids)], volume, space.affine, cluster_ids)
