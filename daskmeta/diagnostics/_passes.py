"""Passes over the MA rows behind a fitted result, for the diagnostics.

A diagnostic reads the rows of the experiments its result was fitted on — combined from the
foci by the fit's kernel plan, or read from the Collection the fit read — through
:func:`daskmeta._pass.run_pass`, with a *row reduction*: an object whose
``_add_block(block, weights, total, with_summaries)`` returns one small summary per row of
the block (e.g. its contribution to each cluster), the weights being the columns of the
pass's weight matrix for those rows. So every leave-one-out fold or resample is a row of one
pass, on whichever Dask client is active, and nothing experiments x voxels is kept.
"""

from __future__ import annotations

import dask
import numpy as np
from scipy import sparse

from daskmeta._combine import combine_rows, identity
from daskmeta._pass import StoredRows, run_pass
from daskmeta.kernels import MA_DTYPE

__all__ = ["PlanRows", "row_pass"]

#: Rows combined (or read) at a time into one dense block.
BLOCK_ROWS = 64
#: Rows one task handles.
ROWS_PER_TASK = 256


class PlanRows:
    """Dense MA rows of a kernel plan, :data:`BLOCK_ROWS` at a time (the compiled combine
    of the fits), handed whole to a row reduction."""

    def __init__(self, plan, block_rows: int = BLOCK_ROWS):
        self.plan = plan
        self.n_voxels = plan.n_voxels
        self.block_rows = int(block_rows)
        self.token = dask.base.tokenize(plan.token, "dense-rows", self.block_rows)

    def split(self, rows: np.ndarray, rows_per_task: int) -> list[tuple[int, int]]:
        return [(a, min(a + rows_per_task, len(rows))) for a in range(0, len(rows),
                                                                      rows_per_task)]

    def reduce(self, rows, weights, reduction, acc_dtype, with_summaries: bool):
        total = np.zeros((weights.shape[0], self.n_voxels), dtype=acc_dtype)
        out = []
        for start in range(0, len(rows), self.block_rows):
            part = np.asarray(rows[start:start + self.block_rows], dtype=np.int64)
            n = len(part)
            each = sparse.csc_matrix((np.ones(n), (np.arange(n), np.arange(n))), shape=(n, n))
            block, _, _ = combine_rows(self.plan, part, identity, "identity", each, MA_DTYPE)
            out.extend(reduction._add_block(block, weights[:, start:start + n], total, True))
        return total, out


def row_pass(est, reduction, weights, members=None) -> list:
    """One summary per experiment of the fit behind ``est`` (a CBMA estimator snapshot), in
    ``est.dataset_`` order: ``reduction._add_block`` over its MA rows, ``weights`` (a
    ``(k, n_experiments)`` matrix) passed along column by column. ``members`` (positions in
    ``est.dataset_``, increasing) restricts the pass to those experiments (``weights`` then
    has one column per member)."""
    collection = getattr(est, "collection_", None)
    if collection is None:
        source = PlanRows(est.plan_)
        rows = np.arange(est.plan_.n_rows)
    else:
        source = StoredRows(collection, est._chunk_size())
        rows = collection.row_indices(est.dataset_.ids)
    if members is not None:
        rows = rows[np.asarray(members, dtype=np.int64)]
    _, summaries = run_pass(source, rows, weights, reduction, np.float64,
                            with_summaries=True, rows_per_task=ROWS_PER_TASK)
    return summaries
