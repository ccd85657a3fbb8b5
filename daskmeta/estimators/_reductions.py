"""Compiled per-block reductions shared by the estimators (one task = one block of MA rows).

They run inside Dask tasks, so they release the GIL and do not start threads of their own:
the parallelism is Dask's, over blocks.
"""

from __future__ import annotations

import numpy as np

from daskmeta._numba_cache import compiled
from daskmeta._rows import compact_nonzero, nearest_bin

__all__ = ["entry_histograms", "nonzero_entries"]


@compiled(nogil=True)
def nonzero_entries(block):
    """A block of MA rows in compressed sparse row form: ``offsets`` (n_rows + 1), and the
    non-zero entries' ``columns`` (int32) and ``values`` (the block's dtype), each row's in
    column order. One pass over the block, one copy of its non-zeros."""
    n_rows, n_cols = block.shape
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    # Room for half the block (MA rows are sparser), grown if a block is denser.
    columns = np.empty(max(n_cols, n_rows * n_cols // 2), dtype=np.int32)
    values = np.empty(columns.shape[0], dtype=block.dtype)
    k = 0
    for r in range(n_rows):
        if k + n_cols > columns.shape[0]:  # room for a whole row
            grown_c = np.empty(max(2 * columns.shape[0], k + n_cols), dtype=np.int32)
            grown_v = np.empty(grown_c.shape[0], dtype=block.dtype)
            grown_c[:k] = columns[:k]
            grown_v[:k] = values[:k]
            columns, values = grown_c, grown_v
        k += compact_nonzero(block[r], columns[k:], values[k:])
        offsets[r + 1] = k
    return offsets, columns[:k], values[:k]


@compiled(nogil=True)
def entry_histograms(offsets, values, inv_step):
    """Each row's maximum and the histogram of its (non-zero) entry values on the grid of
    :func:`daskmeta._rows.nearest_bin`, as occupied bins and their counts.

    Returns
    -------
    row_max : (n_rows,) float32
    hist_offsets : (n_rows + 1,) int64
        Row ``r``'s occupied bins are ``bins[hist_offsets[r]:hist_offsets[r + 1]]``.
    bins : int64
    counts : float64
    """
    n_rows = offsets.shape[0] - 1
    row_max = np.zeros(n_rows, dtype=np.float32)
    hist_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    bin_parts = []
    count_parts = []
    for r in range(n_rows):
        top = np.float32(0)
        top_bin = 0
        for k in range(offsets[r], offsets[r + 1]):
            top = max(top, np.float32(values[k]))
            top_bin = max(top_bin, nearest_bin(values[k], inv_step))
        hist = np.zeros(top_bin + 1, dtype=np.int64)
        for k in range(offsets[r], offsets[r + 1]):
            hist[nearest_bin(values[k], inv_step)] += 1
        occupied = np.flatnonzero(hist)
        bin_parts.append(occupied.astype(np.int64))
        count_parts.append(hist[occupied].astype(np.float64))
        row_max[r] = top
        hist_offsets[r + 1] = hist_offsets[r] + occupied.shape[0]
    bins = np.empty(hist_offsets[n_rows], dtype=np.int64)
    counts = np.empty(hist_offsets[n_rows], dtype=np.float64)
    for r in range(n_rows):
        bins[hist_offsets[r]:hist_offsets[r + 1]] = bin_parts[r]
        counts[hist_offsets[r]:hist_offsets[r + 1]] = count_parts[r]
    return row_max, hist_offsets, bins, counts
