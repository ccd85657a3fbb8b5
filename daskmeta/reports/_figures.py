"""The figures of a report, as PNG bytes or HTML text (matplotlib off-screen, nilearn)."""

from __future__ import annotations

import base64
import gc
import io
import warnings
from contextlib import contextmanager

import numpy as np

__all__ = ["data_uri", "glass_brain", "slices", "viewer", "null_histogram",
           "approximate_null"]


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


def _threshold(values, threshold):
    """``threshold``, or None when nothing exceeds it (nilearn draws nothing either way)."""
    return threshold if threshold is not None and np.any(values > threshold) else None


def glass_brain(space, values, threshold: float | None, title: str) -> bytes:
    """A glass-brain figure (four views) of an in-mask map."""
    from nilearn import plotting

    img = space.to_img(np.asarray(values, dtype=np.float32))
    with _figure((10, 3.2)) as fig:
        plotting.plot_glass_brain(img, threshold=_threshold(values, threshold), colorbar=True,
                                  plot_abs=False, display_mode="lyrz", title=title,
                                  figure=fig, cmap="inferno")
        return _png(fig)


def slices(space, values, threshold: float | None, title: str) -> bytes:
    """Axial slices of an in-mask map over the MNI152 template."""
    from nilearn import plotting

    img = space.to_img(np.asarray(values, dtype=np.float32))
    with _figure((12, 2.6)) as fig:
        plotting.plot_stat_map(img, threshold=_threshold(values, threshold), display_mode="z",
                               cut_coords=8, title=title, figure=fig, cmap="inferno",
                               colorbar=True, symmetric_cbar=False)
        return _png(fig)


def viewer(space, values, threshold: float | None, title: str) -> str:
    """An interactive slice viewer (nilearn ``view_img``) as an ``<iframe srcdoc=...>``: the
    viewer's scripts (jQuery, brainsprite) and images are embedded, so it works offline."""
    from nilearn import plotting

    img = space.to_img(np.asarray(values, dtype=np.float32))
    gc.freeze()
    try:
        with warnings.catch_warnings():
            # nilearn's notice about matplotlib's colormap API (not the user's concern).
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            view = plotting.view_img(img, threshold=_threshold(values, threshold),
                                     title=title, cmap="inferno", symmetric_cmap=False,
                                     black_bg=False,
                                     vmin=0.0 if threshold is not None else None)
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
