"""Seeded simulated coordinate datasets with known true activation sites.

The demo and tests use these: experiments report foci near a few true sites (with the spatial
uncertainty the ALE kernel models for their sample size) plus foci scattered uniformly over the
mask, so a meta-analysis should find the true sites and little else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import ale_fwhm
from daskmeta.space import Space

__all__ = ["SimulatedDataset", "coordinates", "DEFAULT_SITES"]

#: Default true sites (MNI mm): left/right anterior insula, dorsal ACC, left/right thalamus.
DEFAULT_SITES = np.array([
    [-38.0, 14.0, 2.0],
    [38.0, 16.0, 2.0],
    [2.0, 18.0, 38.0],
    [-12.0, -18.0, 6.0],
    [12.0, -18.0, 6.0],
])


@dataclass
class SimulatedDataset:
    """A simulated Dataset and its ground truth.

    Attributes
    ----------
    dataset : Dataset
    true_sites : (n_sites, 3) ndarray
        MNI mm of the true activation sites.
    is_true_focus : ndarray of bool
        Per focus of ``dataset.foci`` (same order): drawn near a true site (True) or noise.
    seed : int
    """

    dataset: Dataset
    true_sites: np.ndarray
    is_true_focus: np.ndarray
    seed: int


def coordinates(n_experiments: int = 30, true_sites=None, p_activation: float = 0.6,
                n_noise_foci=(2, 10), sample_size=(12, 40), space: Space | None = None,
                seed: int = 0) -> SimulatedDataset:
    """Simulate a coordinate-based dataset with known true sites.

    Parameters
    ----------
    n_experiments : int
        Number of experiments.
    true_sites : (n_sites, 3) array, optional
        MNI mm of the true sites (default :data:`DEFAULT_SITES`).
    p_activation : float
        Probability that an experiment reports a focus near each true site.
    n_noise_foci : (int, int)
        Inclusive range of the number of uniformly scattered foci per experiment.
    sample_size : (int, int)
        Inclusive range of sample sizes.
    space : Space, optional
        Where noise foci are drawn (default: the package's default mask).
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same dataset.

    Returns
    -------
    SimulatedDataset
    """
    if n_experiments < 1:
        raise DaskmetaError(f"n_experiments must be >= 1; got {n_experiments}")
    if not 0 <= p_activation <= 1:
        raise DaskmetaError(f"p_activation must be in [0, 1]; got {p_activation}")
    lo, hi = (int(v) for v in n_noise_foci)
    nlo, nhi = (int(v) for v in sample_size)
    if lo < 0 or hi < lo or nlo < 1 or nhi < nlo:
        raise DaskmetaError("n_noise_foci and sample_size must be increasing (low, high) ranges")
    sites = np.asarray(DEFAULT_SITES if true_sites is None else true_sites, dtype=float)
    sites = sites.reshape(-1, 3)
    if space is None:
        from daskmeta.space import resolve_space

        space = resolve_space(None)
    rng = np.random.default_rng(seed)
    ids, xyz, truth, sizes = [], [], [], []
    for e in range(n_experiments):
        eid = f"sim-{e:04d}"
        n = int(rng.integers(nlo, nhi + 1))
        # Spatial uncertainty of a reported peak: the ALE kernel's Gaussian for this N.
        sigma = ale_fwhm(n) / np.sqrt(8 * np.log(2))
        hits = sites[rng.random(len(sites)) < p_activation]
        near = hits + rng.normal(0.0, sigma, size=hits.shape)
        n_noise = int(rng.integers(lo, hi + 1))
        noise_vox = space.voxel_ijk[rng.integers(0, space.n_voxels, size=n_noise)]
        noise = space.ijk_to_mm(noise_vox)
        points = np.vstack([near, noise]) if len(near) else noise
        if len(points) == 0:  # every experiment reports at least one focus
            points = space.ijk_to_mm(space.voxel_ijk[rng.integers(0, space.n_voxels, size=1)])
            flags = [False]
        else:
            flags = [True] * len(near) + [False] * len(noise)
        ids += [eid] * len(points)
        xyz.append(np.round(points))
        truth += flags
        sizes += [n] * len(points)
    xyz = np.vstack(xyz)
    foci = pd.DataFrame({"id": ids, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                         "sample_size": sizes, "space": "MNI"})
    dataset = Dataset.from_foci(foci, name=f"simulated (seed {seed})")
    return SimulatedDataset(dataset, sites, np.asarray(truth, dtype=bool), int(seed))
