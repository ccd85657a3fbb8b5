"""Funnel and forest plots: the figures are written (PNG, SVG) and their numbers are the
ROI means of the stack and DerSimonian-Laird's pooled estimate, computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import crop_mask

from daskmeta import simulate
from daskmeta.diagnostics import plot_forest, plot_funnel
from daskmeta.exceptions import DaskmetaError
from daskmeta.imagestack import ImageStack
from daskmeta.space import Space

SITE = (38.0, 16.0, 2.0)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    space = Space(crop_mask())
    out = simulate.images(tmp_path_factory.mktemp("plots"), n_studies=9, space=space,
                          image_types=("beta", "varcope"), compress=False, seed=5)
    return out, ImageStack.build(out.dataset, mask=space)


def test_funnel_and_forest_numbers_and_files(sim, tmp_path):
    out, stack = sim
    table = plot_funnel(stack, SITE, tmp_path / "funnel.png")
    assert (tmp_path / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "funnel.png").stat().st_size > 10_000
    same = plot_forest(out.dataset, SITE, tmp_path / "forest.svg", mask=stack.space)
    assert b"<svg" in (tmp_path / "forest.svg").read_bytes()[:400]
    # By hand: the ROI is the 6 mm sphere around SITE; effect = mean beta, variance = mean
    # varcope over its voxels.
    d = np.sqrt(((stack.space.voxel_xyz - SITE) ** 2).sum(axis=1))
    roi = np.flatnonzero(d <= 6)
    beta = stack.values("beta")[:, roi].astype(float)
    var = stack.values("varcope")[:, roi].astype(float)
    y, v = beta.mean(axis=1), var.mean(axis=1)
    np.testing.assert_allclose(table["effect"], y, rtol=1e-12)
    np.testing.assert_allclose(table["se"], np.sqrt(v), rtol=1e-12)
    assert (table["n_voxels"] == roi.size).all() and table.attrs["roi_voxels"] == roi.size
    np.testing.assert_allclose(table["ci_high"] - table["effect"], 1.959964 * np.sqrt(v),
                               rtol=1e-6)
    # DerSimonian-Laird by hand.
    w = 1 / v
    mu = (w * y).sum() / w.sum()
    q = (w * (y - mu) ** 2).sum()
    tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    pooled = table.attrs["pooled"]
    assert pooled["tau2"] == pytest.approx(tau2, abs=1e-12)
    assert pooled["est"] == pytest.approx((ws * y).sum() / ws.sum(), rel=1e-10)
    np.testing.assert_allclose(table["weight"], 100 * ws / ws.sum(), rtol=1e-10)
    # The Dataset path (temporary stack) gives the same numbers.
    np.testing.assert_allclose(same["effect"], table["effect"], rtol=1e-12)
    # The pooled effect in the ROI is near the simulated truth there.
    truth = out.true_effect[roi].mean()
    assert abs(pooled["est"] - truth) < 4 * pooled["se"] + 0.1


def test_plot_errors(sim, tmp_path):
    _, stack = sim
    with pytest.raises(DaskmetaError, match="must end in .png or .svg"):
        plot_funnel(stack, SITE, tmp_path / "f.pdf")
    with pytest.raises(DaskmetaError, match="folder .* of the figure file does not exist"):
        plot_forest(stack, SITE, tmp_path / "no" / "f.png")
    with pytest.raises(DaskmetaError, match="the ROI holds no voxel of the mask"):
        plot_funnel(stack, (-60.0, -90.0, 60.0), tmp_path / "f.png")
    with pytest.raises(DaskmetaError, match="roi must be an image .* or an MNI coordinate"):
        plot_funnel(stack, [1, 2], tmp_path / "f.png")
    with pytest.raises(DaskmetaError, match="ROI image 'nowhere.nii.gz' does not exist"):
        plot_funnel(stack, "nowhere.nii.gz", tmp_path / "f.png")
    assert not list(tmp_path.iterdir())
