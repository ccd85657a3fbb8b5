"""Compiled per-voxel maps of many labels from integer counts (the decoder's hot path).

:func:`association_z` is NiMARE's ``z_desc-association`` of MKDAChi2 (as
:func:`daskmeta.estimators._chi2.two_way_counts` and the sign of ``p(A|F) - p(A|U)``), with
the same float64 operations in the same order, so the float32 maps are the same to the last
bit; it runs label by label without temporaries and releases the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["association_z"]


@numba.njit(cache=True, nogil=True)
def association_z(counts, totals, n_selected, n_total, out):
    """``out[l, v]``: the association z of label ``l`` at voxel ``v`` from its active count
    ``counts[l, v]`` among its ``n_selected[l]`` studies, the active count of all the
    ``n_total`` studies ``totals[v]``."""
    n_labels, n_vox = counts.shape
    for i in range(n_labels):
        n1 = np.float64(n_selected[i])
        n2 = np.float64(n_total) - n1
        total = n1 + n2
        for v in range(n_vox):
            a = np.float64(counts[i, v])
            b = np.float64(totals[v]) - a
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
                out[i, v] = np.float32(np.sqrt(chi2))
            elif diff < 0:
                out[i, v] = np.float32(-np.sqrt(chi2))
            else:
                out[i, v] = np.float32(0.0)
