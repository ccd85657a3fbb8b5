"""Compiled per-block reductions shared by the estimators (one task = one block of MA rows).

They run inside Dask tasks, so they release the GIL and do not start threads of their own:
the parallelism is Dask's, over blocks.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["nonzero_summary", "weighted_entry_sum", "weighted_row_sum",
           "weighted_rows_by_selection"]


@numba.njit(cache=True, nogil=True, inline="always")
def _compact_nonzero(row, col_buf, val_buf):
    """Copy a row's non-zero entries (column, value) to the front of the buffers; return
    how many. Branch-free: MA rows are mostly zeros in an unpredictable pattern."""
    k = 0
    for j in range(row.shape[0]):
        v = row[j]
        col_buf[k] = j
        val_buf[k] = v
        k += v != 0
    return k


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
def nonzero_summary(block, inv_step):
    """One pass over a block of MA rows: each row's non-zero entries, maximum, and histogram
    of its non-zero values over bins of width ``1 / inv_step`` (nearest bin centre, ties
    upward: NiMARE's ``_nearest_bin``).

    A row is read once, while it is in cache (blocks are far larger than the caches, and
    memory bandwidth, not arithmetic, sets the pace).

    Returns
    -------
    offsets : (n_rows + 1,) int64
        Row ``r``'s entries are ``columns[offsets[r]:offsets[r + 1]]`` and ``values[...]``.
    columns : int32
    values : block's dtype
    row_max : (n_rows,) float32
    hist_offsets : (n_rows + 1,) int64
        Row ``r``'s occupied bins are ``bins[hist_offsets[r]:hist_offsets[r + 1]]``.
    bins : int64
    counts : float64
    """
    n_rows, n_cols = block.shape
    col_buf = np.empty(n_cols, dtype=np.int32)
    val_buf = np.empty(n_cols, dtype=block.dtype)
    bin_buf = np.empty(n_cols, dtype=np.int64)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    hist_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    row_max = np.zeros(n_rows, dtype=np.float32)
    col_parts = []
    val_parts = []
    bin_parts = []
    count_parts = []
    for r in range(n_rows):
        k = _compact_nonzero(block[r], col_buf, val_buf)
        top = 0.0
        top_bin = 0
        for i in range(k):
            v = np.float64(val_buf[i])
            scaled = v * inv_step
            fl = np.floor(scaled)
            b = max(0, int(fl) + int(scaled - fl >= 0.5))
            bin_buf[i] = b
            top = max(top, v)
            top_bin = max(top_bin, b)
        row_max[r] = top
        hist = np.zeros(top_bin + 1, dtype=np.int64)
        for i in range(k):
            hist[bin_buf[i]] += 1
        occupied = np.flatnonzero(hist)
        col_parts.append(col_buf[:k].copy())
        val_parts.append(val_buf[:k].copy())
        bin_parts.append(occupied.astype(np.int64))
        count_parts.append(hist[occupied].astype(np.float64))
        offsets[r + 1] = offsets[r] + k
        hist_offsets[r + 1] = hist_offsets[r] + occupied.shape[0]
    columns = np.empty(offsets[n_rows], dtype=np.int32)
    values = np.empty(offsets[n_rows], dtype=block.dtype)
    bins = np.empty(hist_offsets[n_rows], dtype=np.int64)
    counts = np.empty(hist_offsets[n_rows], dtype=np.float64)
    for r in range(n_rows):
        columns[offsets[r]:offsets[r + 1]] = col_parts[r]
        values[offsets[r]:offsets[r + 1]] = val_parts[r]
        bins[hist_offsets[r]:hist_offsets[r + 1]] = bin_parts[r]
        counts[hist_offsets[r]:hist_offsets[r + 1]] = count_parts[r]
    return offsets, columns, values, row_max, hist_offsets, bins, counts


@numba.njit(cache=True, nogil=True)
def weighted_entry_sum(offsets, columns, values, weights, n_cols):
    """:func:`weighted_row_sum` of a block given by its non-zero entries (same order, same
    result: the zeros it skips add nothing)."""
    out = np.zeros(n_cols)
    for r in range(offsets.shape[0] - 1):
        w = weights[r]
        if w == 0.0:
            continue
        for k in range(offsets[r], offsets[r + 1]):
            out[columns[k]] += w * np.float64(values[k])
    return out


@numba.njit(cache=True, nogil=True)
def weighted_rows_by_selection(block, indptr, indices, data, n_selections):
    """``W @ block`` as float64 for a sparse (selection x row) ``W`` given in CSC form
    (``indptr``, ``indices``, ``data`` over the block's rows): each row's non-zero entries
    are gathered once and added to the selections that hold it. The same numbers as
    ``W @ block.astype(float64)`` (per entry, rows added in order), without converting the
    block or touching its zeros."""
    n_rows, n_cols = block.shape
    out = np.zeros((n_selections, n_cols))
    col_buf = np.empty(n_cols, dtype=np.int64)
    val_buf = np.empty(n_cols, dtype=np.float64)
    for r in range(n_rows):
        if indptr[r] == indptr[r + 1]:
            continue
        k = _compact_nonzero(block[r], col_buf, val_buf)
        for p in range(indptr[r], indptr[r + 1]):
            target = out[indices[p]]
            w = data[p]
            for q in range(k):
                target[col_buf[q]] += w * val_buf[q]
    return out
