"""The figures of a report, as PNG bytes or HTML text (matplotlib off-screen, nilearn).

The drawing functions take NIfTI images and plain values, and this module imports nothing
from daskmeta: :mod:`daskmeta.reports._render` loads it by its path in a second process that
does not import the package.
"""

from __future__ import annotations

import base64
import gc
import io
import warnings
from contextlib import contextmanager

import numpy as np

__all__ = ["data_uri", "threshold_or_none", "glass_brain", "slices", "viewer", "null_histogram",
           "approximate_null", "warm"]

#: The functions that draw (what a figure process may be asked to run).
DRAWING = ("glass_brain", "slices", "viewer", "null_histogram", "approximate_null")


def data_uri(png: bytes) -> str:
    """A ``data:`` URI of PNG bytes (figures inlined in a self-contained page)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@contextmanager
def _figure(size):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # nilearn collects garbage each time it reads an image; frozen objects are not scanned.
    gc.freeze()
    fig = plt.figure(figsize=size)
    try:
        yield fig
    finally:
        plt.close(fig)
        gc.unfreeze()


def _png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def threshold_or_none(values, threshold):
    """``threshold``, or None when no value of the in-mask map ``values`` exceeds it (nilearn
    draws nothing either way)."""
    return threshold if threshold is not None and np.any(values > threshold) else None


def warm() -> None:
    """Import what drawing needs and load nilearn's MNI152 template (its 2 mm resampling,
    cached by nilearn), as a figure process does before it is asked for a figure."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot  # noqa: F401
    from nilearn import datasets, plotting  # noqa: F401

    datasets.load_mni152_template(resolution=2)


def glass_brain(img, threshold: float | None, title: str | None, display_mode: str = "lyrz",
                dpi: int = 90) -> bytes:
    """A glass-brain figure (four views by default) of an image, as PNG bytes; voxels at or
    below ``threshold`` are not drawn."""
    from nilearn import plotting

    with _figure((10, 3.2)) as fig:
        plotting.plot_glass_brain(img, threshold=threshold, colorbar=True, plot_abs=False,
                                  display_mode=display_mode, title=title, figure=fig,
                                  cmap="inferno")
        return _png(fig, dpi)


def slices(img, threshold: float | None, title: str) -> bytes:
    """Axial slices of an image over the MNI152 template, as PNG bytes."""
    from nilearn import plotting

    with _figure((12, 2.6)) as fig:
        plotting.plot_stat_map(img, threshold=threshold, display_mode="z", cut_coords=8,
                               title=title, figure=fig, cmap="inferno", colorbar=True,
                               symmetric_cbar=False)
        return _png(fig)


def viewer(img, threshold: float | None, title: str, vmin: float | None = None) -> str:
    """An interactive slice viewer (nilearn ``view_img``) as an ``<iframe srcdoc=...>``: the
    viewer's scripts (jQuery, brainsprite) and images are embedded, so it works offline."""
    from nilearn import plotting

    gc.freeze()
    try:
        with warnings.catch_warnings():
            # nilearn's notice about matplotlib's colormap API (not the user's concern).
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            view = plotting.view_img(img, threshold=threshold, title=title, cmap="inferno",
                                     symmetric_cmap=False, black_bg=False,
                                     vmin=vmin)
        return view.get_iframe(width=900, height=420)
    finally:
        gc.unfreeze()


def null_histogram(values, observed: float | None, title: str, xlabel: str) -> bytes:
    """The histogram of a Monte Carlo null (one value per iteration), with its 95th
    percentile and, when given, the observed maximum."""
    values = np.asarray(values, dtype=float)
    with _figure((6, 3.0)) as fig:
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(values, bins=min(50, max(5, values.size // 10)), color="#4c72b0")
        if values.size:
            q95 = float(np.quantile(values, 0.95))
            ax.axvline(q95, color="black", linestyle="--", label=f"95th percentile {q95:.4g}")
        if observed is not None:
            ax.axvline(observed, color="#c44e52", label=f"observed maximum {observed:.4g}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("iterations")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _png(fig)


def approximate_null(bins, weights, observed: float | None) -> bytes:
    """The analytic null of the statistic as the p-value it gives each value,
    ``P(statistic >= x)`` (log scale, down to 1e-12), with the observed maximum."""
    bins, weights = np.asarray(bins, dtype=float), np.asarray(weights, dtype=float)
    total = weights.sum()
    sf = np.cumsum(weights[::-1])[::-1] / (total if total > 0 else 1.0)
    keep = sf >= 1e-12
    with _figure((6, 3.0)) as fig:
        ax = fig.add_subplot(1, 1, 1)
        ax.semilogy(bins[keep], sf[keep], color="#4c72b0")
        if observed is not None:
            ax.axvline(observed, color="#c44e52", label=f"observed maximum {observed:.4g}")
            ax.legend(fontsize=8)
        ax.set_title("Approximate (analytic) null of the statistic", fontsize=10)
        ax.set_xlabel("statistic")
        ax.set_ylabel("P(statistic >= value)")
        fig.tight_layout()
        return _png(fig)
