"""Compiled per-voxel maps of many labels from integer counts (the decoder's hot path).

:func:`association_z_at` is NiMARE's ``z_desc-association`` of MKDAChi2 at one voxel (as
:func:`daskmeta.estimators._chi2.two_way_counts` and the sign of ``p(A|F) - p(A|U)``), with
the same float64 operations in the same order, so the float32 maps are the same to the last
bit; :func:`association_z` applies it to every label and voxel, without temporaries,
releasing the GIL. The FWE nulls (:mod:`daskmeta.decode.fwe`) use the same function.
"""

from __future__ import annotations

import numpy as np

from daskmeta._numba_cache import compiled

__all__ = ["association_z", "association_z_at"]


@compiled(nogil=True, inline="always")
def association_z_at(count, total_count, n_selected, n_total):
    """float32 association z of a group of ``n_selected`` of ``n_total`` studies, ``count``
    of them active at a voxel where ``total_count`` of all the studies are."""
    n1 = np.float64(n_selected)
    n2 = np.float64(n_total) - n1
    total = n1 + n2
    a = np.float64(count)
    b = np.float64(total_count) - a
    row0 = a + b
    row1 = total - row0
    d = a * n2 - b * n1
    numerator = total * (d * d)
    denominator = row0 * row1 * n1 * n2
    if denominator == 0.0:
        chi2 = 2.0
    else:
        chi2 = numerator / denominator
    diff = a / n1 - b / n2
    if diff > 0:
        return np.float32(np.sqrt(chi2))
    if diff < 0:
        return np.float32(-np.sqrt(chi2))
    return np.float32(0.0)


@compiled(nogil=True)
def association_z(counts, totals, n_selected, n_total, out):
    """``out[l, v]``: the association z of label ``l`` at voxel ``v`` from its active count
    ``counts[l, v]`` among its ``n_selected[l]`` studies, the active count of all the
    ``n_total`` studies ``totals[v]``."""
    n_labels, n_vox = counts.shape
    for i in range(n_labels):
        for v in range(n_vox):
            out[i, v] = association_z_at(counts[i, v], totals[v], n_selected[i], n_total)
