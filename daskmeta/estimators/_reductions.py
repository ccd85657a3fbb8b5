"""Compiled per-block reductions shared by the estimators (one task = one block of MA rows).

They run inside Dask tasks, so they release the GIL and do not start threads of their own:
the parallelism is Dask's, over blocks.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["nearest_bin_histograms", "weighted_row_sum"]


@numba.njit(cache=True, nogil=True)
def weighted_row_sum(block, weights):
    """``weights @ block`` as float64, adding rows in order (as ``block.sum(axis=0)`` and a
    sparse product do), for a block of any numeric dtype without converting it first."""
    n_rows, n_cols = block.shape
    out = np.zeros(n_cols)
    for r in range(n_rows):
        w = weights[r]
        if w == 0.0:
            continue
        row = block[r]
        for j in range(n_cols):
            out[j] += w * np.float64(row[j])
    return out


@numba.njit(cache=True, nogil=True)
def nearest_bin_histograms(block, inv_step):
    """Per row: the maximum, and the histogram of its non-zero values over bins of width
    ``1 / inv_step`` (nearest bin centre, ties upward, as NiMARE's ``_nearest_bin``).

    Returns
    -------
    row_max : (n_rows,) float32
    bins, counts : int64, float64
        Occupied bins and their counts, all rows one after the other.
    offsets : (n_rows + 1,) int64
        Row ``r``'s bins are ``bins[offsets[r]:offsets[r + 1]]``.
    """
    n_rows, n_cols = block.shape
    row_max = np.zeros(n_rows, dtype=np.float32)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    bins_parts = []
    counts_parts = []
    for r in range(n_rows):
        row = block[r]
        top = np.float32(0.0)
        for j in range(n_cols):
            if row[j] > top:
                top = row[j]
        row_max[r] = top
        scaled_top = np.float64(top) * inv_step
        n_hist = int(np.floor(scaled_top)) + 2
        hist = np.zeros(n_hist, dtype=np.int64)
        for j in range(n_cols):
            v = row[j]
            if v != 0:
                scaled = np.float64(v) * inv_step
                fl = np.floor(scaled)
                hist[max(0, int(fl) + int(scaled - fl >= 0.5))] += 1
        occupied = np.flatnonzero(hist)
        bins_parts.append(occupied.astype(np.int64))
        counts_parts.append(hist[occupied].astype(np.float64))
        offsets[r + 1] = offsets[r] + occupied.shape[0]
    bins = np.empty(offsets[n_rows], dtype=np.int64)
    counts = np.empty(offsets[n_rows], dtype=np.float64)
    for r in range(n_rows):
        bins[offsets[r]:offsets[r + 1]] = bins_parts[r]
        counts[offsets[r]:offsets[r + 1]] = counts_parts[r]
    return row_max, bins, counts, offsets
