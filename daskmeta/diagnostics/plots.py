"""Funnel and forest plots: per-study effect sizes in a region of interest.

Each experiment's effect in the ROI is the mean of its beta values over the ROI's voxels
where both beta and varcope are usable (finite, non-zero; varcope positive); its sampling
variance is the mean of its varcope there, i.e. the variance of the ROI mean if the voxels
were perfectly correlated (conservative: smoothed statistical maps are strongly correlated
within a small ROI). The pooled estimate is DerSimonian and Laird's random-effects mean
(PyMARE, as :class:`~daskmeta.estimators.DerSimonianLaird`). The funnel plot draws every
study's effect against its standard error, with the pooled estimate and its pseudo 95%
confidence funnel; Egger's regression test of funnel asymmetry (a check for publication
bias) is in the table's ``attrs``. The forest plot draws each study's 95% interval, its
random-effects weight as the marker's size, and the pooled estimate as a diamond.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.exceptions import DaskmetaError
from daskmeta.imagestack import ImageStack

__all__ = ["plot_forest", "plot_funnel", "roi_effects"]

_FORMATS = (".png", ".svg")
_Z95 = 1.959963984540054


def _stack_of(data, mask):
    from daskmeta.dataset import Dataset

    if isinstance(data, ImageStack):
        return data
    if isinstance(data, Dataset):
        return ImageStack.build(data, mask=mask, image_types=["beta", "varcope"])
    raise DaskmetaError(f"expected a Dataset or an ImageStack; got {type(data).__name__}")


def _roi_voxels(roi, space, radius: float) -> np.ndarray:
    """In-mask indices of the ROI: an image (path or nibabel), a boolean in-mask vector, or
    an MNI coordinate (x, y, z) with a sphere of ``radius`` mm."""
    import nibabel as nib

    if isinstance(roi, str | Path) or isinstance(roi, nib.spatialimages.SpatialImage):
        if isinstance(roi, str | Path) and not Path(roi).exists():
            raise DaskmetaError(f"ROI image {str(roi)!r} does not exist")
        inside = space.resample_mask(roi)
    else:
        arr = np.asarray(roi)
        if arr.dtype == bool and arr.shape == (space.n_voxels,):
            inside = arr
        elif arr.shape == (3,) and np.issubdtype(arr.dtype, np.number):
            if not (np.isfinite(radius) and radius > 0):
                raise DaskmetaError(f"radius must be a positive number of mm; got {radius!r}")
            d = np.sqrt(((space.voxel_xyz - arr.astype(float)) ** 2).sum(axis=1))
            inside = d <= radius
        else:
            raise DaskmetaError(
                "roi must be an image (path or nibabel), a boolean vector over the mask's "
                f"{space.n_voxels} voxels, or an MNI coordinate (x, y, z); got "
                f"{type(roi).__name__} of shape {arr.shape}")
    voxels = np.flatnonzero(inside)
    if voxels.size == 0:
        raise DaskmetaError("the ROI holds no voxel of the mask")
    return voxels


def roi_effects(data, roi, radius: float = 6.0, mask=None) -> pd.DataFrame:
    """Per-experiment effect sizes in an ROI and their random-effects pooled estimate.

    Parameters
    ----------
    data : Dataset or ImageStack
        Needs ``beta`` and ``varcope`` images (a Dataset's are read into a temporary stack).
    roi : path, nibabel image, boolean in-mask vector or (x, y, z)
        The region: non-zero voxels of an image (resampled to the mask, nearest), the
        ``True`` voxels of a vector, or a sphere of ``radius`` mm around an MNI coordinate.
    radius : float
        Sphere radius (mm) for a coordinate ROI.
    mask : str, image or Space, optional
        Mask of a Dataset's stack.

    Returns
    -------
    pandas.DataFrame
        One row per experiment with a usable ROI voxel: ``id``, ``sample_size``,
        ``n_voxels``, ``effect``, ``se``, ``ci_low``, ``ci_high``, ``weight`` (random-effects
        weight, percent). ``attrs["pooled"]``: ``est``, ``se``, ``ci_low``, ``ci_high``,
        ``tau2``, ``z``, ``p`` (DerSimonian-Laird); ``attrs["egger"]``: ``intercept``,
        ``se``, ``t``, ``p`` of Egger's test.
    """
    import pymare
    from scipy import stats

    stack = _stack_of(data, mask)
    voxels = _roi_voxels(roi, stack.space, radius)
    beta = stack.values("beta", voxels).astype(float)
    var = stack.values("varcope", voxels).astype(float)
    ok = np.isfinite(beta) & (beta != 0) & np.isfinite(var) & (var > 0)
    n_ok = ok.sum(axis=1)
    keep = n_ok > 0
    if keep.sum() < 3:
        raise DaskmetaError(f"only {int(keep.sum())} experiments have usable beta and varcope "
                            "values in the ROI; a funnel or forest plot needs at least 3")
    with np.errstate(invalid="ignore"):
        effect = np.where(ok, beta, 0).sum(axis=1) / n_ok
        v = np.where(ok, var, 0).sum(axis=1) / n_ok
    effect, v = effect[keep], v[keep]
    se = np.sqrt(v)
    est = pymare.estimators.DerSimonianLaird()
    est.fit_dataset(pymare.Dataset(y=effect[:, None], v=v[:, None]))
    summary = est.summary()
    fe = summary.get_fe_stats()
    tau2 = float(np.ravel(summary.tau2)[0])
    w = 1.0 / (v + tau2)
    pooled_est, pooled_se = float(np.ravel(fe["est"])[0]), float(np.ravel(fe["se"])[0])
    table = pd.DataFrame({
        "id": stack.experiments["id"].to_numpy()[keep],
        "sample_size": stack.experiments["sample_size"].to_numpy()[keep],
        "n_voxels": n_ok[keep], "effect": effect, "se": se,
        "ci_low": effect - _Z95 * se, "ci_high": effect + _Z95 * se,
        "weight": 100 * w / w.sum(),
    })
    # Egger: regress the standardized effect on precision; the intercept measures asymmetry.
    x, y = 1 / se, effect / se
    fit = stats.linregress(x, y)
    dof = len(x) - 2
    t = fit.intercept / fit.intercept_stderr if fit.intercept_stderr > 0 else np.nan
    table.attrs["pooled"] = {
        "est": pooled_est, "se": pooled_se, "ci_low": pooled_est - _Z95 * pooled_se,
        "ci_high": pooled_est + _Z95 * pooled_se, "tau2": tau2,
        "z": float(np.ravel(fe["z"])[0]), "p": float(np.ravel(fe["p"])[0]),
        "method": "DerSimonianLaird"}
    table.attrs["egger"] = {"intercept": float(fit.intercept),
                            "se": float(fit.intercept_stderr), "t": float(t),
                            "p": float(2 * stats.t.sf(abs(t), dof)) if dof > 0 else np.nan}
    table.attrs["roi_voxels"] = int(voxels.size)
    return table


def _check_output(output_file) -> Path:
    path = Path(output_file)
    if path.suffix.lower() not in _FORMATS:
        raise DaskmetaError(f"figure file {str(path)!r} must end in .png or .svg")
    if not path.parent.is_dir():
        raise DaskmetaError(f"folder {str(path.parent)!r} of the figure file does not exist")
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from daskmeta.results import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower()))
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_funnel(data, roi, output_file, radius: float = 6.0, mask=None,
                title: str | None = None) -> pd.DataFrame:
    """Funnel plot of the experiments' effects in an ROI (see :func:`roi_effects`).

    Parameters
    ----------
    data : Dataset or ImageStack
    roi : path, nibabel image, boolean in-mask vector or (x, y, z)
    output_file : path
        ``.png`` or ``.svg``.
    radius : float
    mask : optional
    title : str, optional

    Returns
    -------
    pandas.DataFrame
        The numbers drawn (:func:`roi_effects`).
    """
    path = _check_output(output_file)
    table = roi_effects(data, roi, radius, mask)
    pooled, egger = table.attrs["pooled"], table.attrs["egger"]
    plt = _pyplot()
    gc.freeze()
    try:
        fig, ax = plt.subplots(figsize=(6, 5))
        top = float(table["se"].max()) * 1.08
        s = np.linspace(0, top, 50)
        ax.fill_betweenx(s, pooled["est"] - _Z95 * s, pooled["est"] + _Z95 * s,
                         color="0.92", label="pseudo 95% CI")
        ax.plot(pooled["est"] - _Z95 * s, s, color="0.5", lw=0.8, ls="--")
        ax.plot(pooled["est"] + _Z95 * s, s, color="0.5", lw=0.8, ls="--")
        ax.axvline(pooled["est"], color="C3", lw=1.2,
                   label=f"pooled (DerSimonian-Laird) {pooled['est']:.3g}")
        ax.axvline(0, color="k", lw=0.6)
        ax.scatter(table["effect"], table["se"], s=28, color="C0", edgecolor="k", lw=0.4,
                   zorder=3, label=f"experiments (n = {len(table)})")
        ax.set_ylim(top, 0)
        ax.set_xlabel("effect in ROI (mean beta)")
        ax.set_ylabel("standard error")
        ax.set_title(title or f"Funnel plot (Egger's test: intercept {egger['intercept']:.2f}, "
                              f"p = {egger['p']:.2g})", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        _save(fig, path)
    finally:
        gc.unfreeze()
    return table


def plot_forest(data, roi, output_file, radius: float = 6.0, mask=None,
                title: str | None = None) -> pd.DataFrame:
    """Forest plot of the experiments' effects in an ROI (see :func:`roi_effects`).

    Parameters
    ----------
    data : Dataset or ImageStack
    roi : path, nibabel image, boolean in-mask vector or (x, y, z)
    output_file : path
        ``.png`` or ``.svg``.
    radius : float
    mask : optional
    title : str, optional

    Returns
    -------
    pandas.DataFrame
        The numbers drawn (:func:`roi_effects`).
    """
    path = _check_output(output_file)
    table = roi_effects(data, roi, radius, mask)
    pooled = table.attrs["pooled"]
    plt = _pyplot()
    k = len(table)
    gc.freeze()
    try:
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * (k + 2)))
        y = np.arange(k, 0, -1) + 1
        ax.hlines(y, table["ci_low"], table["ci_high"], color="k", lw=0.9)
        size = 15 + 8 * table["weight"].to_numpy()
        ax.scatter(table["effect"], y, s=size, marker="s", color="C0", zorder=3)
        lo, hi, est = pooled["ci_low"], pooled["ci_high"], pooled["est"]
        ax.fill([lo, est, hi, est], [0.5, 0.8, 0.5, 0.2], color="C3",
                label=f"pooled {est:.3g} [{lo:.3g}, {hi:.3g}], tau2 {pooled['tau2']:.2g}")
        ax.axvline(0, color="k", lw=0.6)
        ax.axvline(est, color="C3", lw=0.8, ls=":")
        ax.set_yticks(list(y) + [0.5])
        ax.set_yticklabels([*table["id"].astype(str), "pooled (RE)"], fontsize=7)
        ax.set_ylim(0, k + 2)
        ax.set_xlabel("effect in ROI (mean beta), 95% CI")
        ax.set_title(title or f"Forest plot ({k} experiments, ROI of "
                              f"{table.attrs['roi_voxels']} voxels)", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        _save(fig, path)
    finally:
        gc.unfreeze()
    return table
