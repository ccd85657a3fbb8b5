"""Figures of results (matplotlib, off-screen)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

__all__ = ["plot_map"]


def plot_map(space, values, path, threshold: float | None = None, title: str | None = None,
             display_mode: str = "lyrz") -> Path:
    """Save a glass-brain figure of an in-mask map as PNG.

    Parameters
    ----------
    space : Space
    values : ndarray
        In-mask vector (e.g. ``result.get_map("z", "array")``).
    path : path-like
        Output PNG.
    threshold : float, optional
        Values below are not drawn.
    title : str, optional
    display_mode : str
        nilearn glass-brain display mode.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from nilearn import plotting

    img = space.to_img(np.asarray(values, dtype=np.float32))
    # nilearn runs gc.collect() each time it reads an image (8 times a figure): with the heap
    # of a whole analysis that took 0.7 s a figure. Frozen objects are not scanned.
    gc.freeze()
    try:
        fig = plt.figure(figsize=(10, 3.2))
        plotting.plot_glass_brain(img, threshold=threshold, colorbar=True, plot_abs=False,
                                  display_mode=display_mode, title=title, figure=fig,
                                  cmap="inferno")
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    finally:
        gc.unfreeze()
    return path
