"""Compiled row primitives checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from daskmeta.estimators._reductions import nonzero_entries


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16])
@pytest.mark.parametrize("n_cols", [1, 7, 8, 61, 1000])
def test_nonzero_entries_equal_numpy(dtype, n_cols):
    rng = np.random.default_rng(n_cols)
    block = (rng.random((9, n_cols)) * 200).astype(dtype)
    block[rng.random(block.shape) < 0.6] = 0
    block[:, n_cols // 3:n_cols // 2] = 0  # runs of zeros, as in MA rows
    block[2] = 0  # an empty row
    block[4] = block[4] + 1  # a full row
    if block.dtype.kind == "f":
        block[5, ::3] = -0.0  # equal to zero (its bits are not)
        block[6, 0] = np.nan  # not equal to zero
    offsets, columns, values = nonzero_entries(block)
    rows, cols = np.nonzero(block)
    assert np.array_equal(offsets, np.searchsorted(rows, np.arange(10)))
    assert np.array_equal(columns, cols)
    assert np.array_equal(values, block[rows, cols], equal_nan=True)
    assert values.dtype == block.dtype
