"""Compiled primitives over MA rows: non-zero compaction and value histograms.

Shared by collections (which store each experiment's value histogram at build time) and the
estimators' block reductions (which compute it when a store has none).

numba caches a compiled function under its own file's timestamp, so functions in other modules
that inline these keep a stale copy after an edit here: delete ``daskmeta/**/__pycache__/*.nb*``
after changing this file.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload

from daskmeta._numba_cache import compiled

__all__ = ["add_entries_by_selection", "add_rows_by_selection", "compact_nonzero", "nearest_bin", "row_histograms"]


def _as_bits(row):
    """``row`` viewed as unsigned integers of its item size (compiled code only)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_as_bits, inline="always")
def _as_bits_impl(row):
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[row.dtype.bitwidth // 8]

    def impl(row):
        return row.view(unsigned)

    return impl


#: Entries per group :func:`compact_nonzero` tests for all-zero at once.
_GROUP = 8


@compiled(nogil=True, inline="always")
def compact_nonzero(row, col_buf, val_buf):
    """Copy a contiguous row's non-zero entries (column, value) to the front of the buffers
    (each with room for the whole row); return how many.

    MA rows are runs of zeros and of non-zeros (kernel blobs cut by grid lines): groups of
    eight entries whose bits are all zero are skipped with one test, and the others are
    copied without a branch (each entry is written, and kept by advancing past it if it is
    non-zero). About twice as fast as a branch per entry on ALE rows.
    """
    bits = _as_bits(row)  # +0.0 is all-zero bits; -0.0 goes through the exact test below
    n = row.shape[0]
    k = 0
    j = 0
    while j + _GROUP <= n:
        if (bits[j] | bits[j + 1] | bits[j + 2] | bits[j + 3] | bits[j + 4] | bits[j + 5]
                | bits[j + 6] | bits[j + 7]) != 0:
            for jj in range(j, j + _GROUP):
                v = row[jj]
                col_buf[k] = jj
                val_buf[k] = v
                k += v != 0
        j += _GROUP
    for jj in range(j, n):
        v = row[jj]
        if v != 0:
            col_buf[k] = jj
            val_buf[k] = v
            k += 1
    return k


@compiled(nogil=True, inline="always")
def nearest_bin(value, inv_step):
    """Index of the nearest bin centre of a grid ``0, 1 / inv_step, 2 / inv_step, ...``, ties
    upward, at least 0 (NiMARE's ``_nearest_bin``)."""
    scaled = np.float64(value) * inv_step
    fl = np.floor(scaled)
    return max(0, int(fl) + int(scaled - fl >= 0.5))


@compiled(nogil=True)
def row_histograms(block, inv_step, width):
    """Each row's maximum and the histogram of its non-zero values on the grid of
    :func:`nearest_bin` (zeros are not counted).

    Returns
    -------
    row_max : (n_rows,) float32
    hist : (n_rows, width) int32
    overflow : int
        Non-zero values past the last bin (counted in it); 0 when ``width`` is large enough.
    """
    n_rows, n_cols = block.shape
    row_max = np.zeros(n_rows, dtype=np.float32)
    hist = np.zeros((n_rows, width), dtype=np.int32)
    col_buf = np.empty(n_cols, dtype=np.int32)
    val_buf = np.empty(n_cols, dtype=block.dtype)
    overflow = 0
    for r in range(n_rows):
        k = compact_nonzero(block[r], col_buf, val_buf)
        top = np.float32(0)
        for i in range(k):
            b = nearest_bin(val_buf[i], inv_step)
            if b >= width:
                overflow += 1
                b = width - 1
            hist[r, b] += 1
            top = max(top, np.float32(val_buf[i]))
        row_max[r] = top
    return row_max, hist, overflow


@compiled(nogil=True)
def add_rows_by_selection(block, indptr, indices, data, out):
    """``out += W @ block`` for a sparse (selection x row) ``W`` given in CSC form (``indptr``,
    ``indices``, ``data`` over the block's rows), in ``out``'s dtype (float64, or an
    unsigned integer for exact counts): each row's non-zero entries are gathered once and
    added to the selections that hold it. Per entry, rows are added in order: the same
    numbers as ``W @ block.astype(out.dtype)``, without converting the block or touching its
    zeros."""
    n_rows, n_cols = block.shape
    col_buf = np.empty(n_cols, dtype=np.int64)
    val_buf = np.empty(n_cols, dtype=out.dtype)
    for r in range(n_rows):
        if indptr[r] == indptr[r + 1]:
            continue
        k = compact_nonzero(block[r], col_buf, val_buf)
        for p in range(indptr[r], indptr[r + 1]):
            target = out[indices[p]]
            w = data[p]
            for q in range(k):
                target[col_buf[q]] += w * val_buf[q]


@compiled(nogil=True)
def add_entries_by_selection(offsets, columns, values, indptr, indices, data, out):
    """:func:`add_rows_by_selection` of a block given by its non-zero entries in compressed
    sparse row form (``offsets``, ``columns``, ``values``): the same numbers."""
    for r in range(offsets.shape[0] - 1):
        for p in range(indptr[r], indptr[r + 1]):
            target = out[indices[p]]
            w = data[p]
            for k in range(offsets[r], offsets[r + 1]):
                target[columns[k]] += w * np.float64(values[k])
