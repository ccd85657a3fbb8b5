"""The pass engine: kernel rows combined from foci equal the dense MA matrix's products and
histograms, for one or many selections, however the rows are cut into tasks, and for foci on,
near or far off the grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import daskmeta
from daskmeta import _pass
from daskmeta._rows import row_histograms
from daskmeta.estimators import ALE, KDA, MKDADensity
from daskmeta.kernels import ALEKernel, KDAKernel, MKDAKernel

CASES = [(ALE, ALEKernel(sample_size=20)), (MKDADensity, MKDAKernel()), (KDA, KDAKernel())]


def _dense(kernel, dataset, space):
    plan = kernel.plan(dataset, space, float("inf"), warn=False)
    return plan, plan.fill(0, plan.n_rows)


@pytest.mark.parametrize(("cls", "kernel"), CASES, ids=["ALE", "MKDA", "KDA"])
@pytest.mark.parametrize("work", [None, 20_000])
def test_kernel_rows_equal_dense_products(cls, kernel, work, pain_dataset, nimare_space,
                                          monkeypatch):
    if work is not None:  # many small tasks, summed in a tree
        monkeypatch.setattr(_pass, "KERNEL_WORK_PER_TASK", work)
    ds = pain_dataset.slice([i for i, f in zip(pain_dataset.ids, _pass.has_foci(pain_dataset))
                             if f])
    est = cls(kernel_transformer=kernel, mask=nimare_space)
    plan, dense = _dense(kernel, ds, nimare_space)
    rng = np.random.default_rng(0)
    weights = (rng.random((3, plan.n_rows)) < 0.6) * rng.integers(1, 4, size=(3, plan.n_rows))
    source = _pass.KernelRows(plan, est._block_values, "t", est._hist_inv_step(kernel))
    assert (len(source.split(np.arange(plan.n_rows))) > 1) == (work is not None)
    est.kernel_ = kernel
    total, summaries = _pass.run_pass(source, np.arange(plan.n_rows), weights, est)
    values = est._block_values(dense).astype(np.float64)
    np.testing.assert_allclose(total, weights @ values, rtol=1e-12, atol=1e-12)
    if work is None:  # one task: rows added in order, as NiMARE's sum
        np.testing.assert_array_equal(total[0], sum(w * v for w, v in zip(weights[0], values)))
    # Summaries from the combine's histograms equal those of the dense rows.
    inv = est._hist_inv_step(kernel)
    row_max, hist, overflow = row_histograms(dense, inv, 64 if cls is not ALE else 20000)
    assert overflow == 0
    want = est._summaries_from_hist(hist, row_max, nimare_space.n_voxels)
    assert len(summaries) == len(want) == plan.n_rows
    for got, exp in zip(summaries, want):
        for g, e in zip(got if isinstance(got, tuple) else (got,),
                        exp if isinstance(exp, tuple) else (exp,)):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


@pytest.mark.parametrize(("cls", "kernel"), CASES, ids=["ALE", "MKDA", "KDA"])
def test_foci_off_the_grid(cls, kernel, nimare_space):
    """NiMARE's mask touches the bottom of its grid: foci below the grid reach in-mask
    voxels; foci farther off than a kernel's reach touch nothing; none reads out of bounds."""
    bottom = nimare_space.voxel_ijk[nimare_space.voxel_ijk[:, 2] == 0]
    ijk = np.vstack([bottom[0] + [0, 0, -2], bottom[5] + [0, 0, -6], bottom[9] + [0, 0, -40],
                     bottom[3] + [0, 0, -1], [-3, 50, 40], [95, 120, 100], bottom[7]])
    xyz = nimare_space.ijk_to_mm(ijk)
    foci = pd.DataFrame({"id": ["a", "a", "b", "b", "c", "c", "c"], "x": xyz[:, 0],
                         "y": xyz[:, 1], "z": xyz[:, 2], "sample_size": 20})
    ds = daskmeta.Dataset.from_foci(foci)
    est = cls(kernel_transformer=kernel, mask=nimare_space, mask_margin=float("inf"))
    res = est.fit(ds)
    assert res.attrs["n_foci"] == 7
    _, dense = _dense(kernel, ds, nimare_space)
    want = est._stat(est._block_values(dense).astype(np.float64).sum(axis=0))
    np.testing.assert_array_equal(res.get_map("stat", "array"), want)
    assert dense.sum() > 0


def test_selection_rule_errors(pain_dataset):
    with pytest.raises(daskmeta.DatasetError, match="select must be a label expression"):
        _pass.selection_rows(pain_dataset, 123)
    with pytest.raises(daskmeta.DatasetError, match="got bytes"):
        _pass.selection_rows(pain_dataset, b"pain")
    with pytest.raises(daskmeta.DatasetError, match="unknown experiment ids: nope"):
        _pass.selection_rows(pain_dataset, ["nope"])
    assert _pass.describe_selection(None, 0.1) == {"selection": "all"}
    assert _pass.describe_selection("a & b", 0.1) == {"selection": "a & b",
                                                      "label_threshold": 0.1}


@pytest.mark.parametrize(("kernel", "message"), [
    (ALEKernel(fwhm=1e6), r"fwhm must be a number of mm in \(0, 100\]; got 1000000.0"),
    (MKDAKernel(r=1e9), r"r must be a number of mm in \(0, 100\]; got 1000000000.0"),
    (KDAKernel(r=-1), r"r must be a number of mm in \(0, 100\]; got -1"),
])
def test_absurd_kernel_sizes_are_refused(kernel, message, pain_dataset, nimare_space):
    with pytest.raises(daskmeta.DatasetError, match=message):
        kernel.plan(pain_dataset, nimare_space)
