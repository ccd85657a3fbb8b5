"""Figures of results (matplotlib, off-screen)."""

from __future__ import annotations

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
    from daskmeta.reports._figures import glass_brain

    img = space.to_img(np.asarray(values, dtype=np.float32))
    path = Path(path)
    path.write_bytes(glass_brain(img, threshold, title, display_mode=display_mode, dpi=110))
    return path
