"""Seeded simulated datasets with known true effects: coordinates and images.

The demo and tests use these. :func:`coordinates`: experiments report foci near a few true
sites (with the spatial uncertainty the ALE kernel models for their sample size) plus foci
scattered uniformly over the mask, so a meta-analysis should find the true sites and little
else. :func:`images`: every study's z, t, beta, varcope and se maps (NIfTI files) around a
known true effect map, for image-based meta-analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import ale_fwhm
from daskmeta.space import Space

__all__ = ["SimulatedDataset", "SimulatedImages", "coordinates", "image_values", "images",
           "true_effect_map", "DEFAULT_SITES", "IMAGE_TYPES"]

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


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
#: Image types :func:`images` can write (NiMARE's names).
IMAGE_TYPES = ("z", "t", "beta", "varcope", "se")


@dataclass
class SimulatedImages:
    """A simulated image-based Dataset and its ground truth.

    Attributes
    ----------
    dataset : Dataset
        One experiment per study (one study each), ``sample_size`` set, and
        :attr:`Dataset.images` holding the absolute paths of the written maps.
    true_effect : (n_voxels,) ndarray
        The true (population) effect over the space's in-mask voxels (beta units).
    space : Space
        The grid the images were written on (values outside the mask are 0).
    directory : Path
        Where the images are.
    seed : int
    """

    dataset: Dataset
    true_effect: np.ndarray
    space: Space
    directory: Path
    seed: int
    sample_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def nimare_dict(self) -> dict:
        """The dataset as NiMARE's dataset dictionary (for ``nimare.dataset.Dataset``)."""
        out = {}
        images = self.dataset.images.set_index("id")
        for row in self.dataset.experiments.itertuples():
            imgs = {k: str(v) for k, v in images.loc[row.id].items() if isinstance(v, str)}
            out[row.study_id] = {"contrasts": {"1": {
                "images": imgs, "metadata": {"sample_sizes": [int(row.sample_size)]}}}}
        return out


def true_effect_map(space: Space, true_sites=None, effect: float = 1.0,
                    fwhm: float = 12.0) -> np.ndarray:
    """The true effect over ``space``'s in-mask voxels: Gaussian blobs of height ``effect``
    (and full width at half maximum ``fwhm`` mm) at ``true_sites`` (MNI mm)."""
    sites = np.asarray(DEFAULT_SITES if true_sites is None else true_sites, float).reshape(-1, 3)
    xyz = space.voxel_xyz
    sigma2 = (fwhm / np.sqrt(8 * np.log(2))) ** 2
    out = np.zeros(space.n_voxels)
    for site in sites:
        out += effect * np.exp(-((xyz - site) ** 2).sum(axis=1) / (2 * sigma2))
    return out


def image_values(true_effect: np.ndarray, sample_sizes, rng, sigma: float = 2.0,
                 tau: float = 0.3) -> dict:
    """Simulated beta, varcope, se, t and z values of studies, over in-mask voxels.

    Study ``i`` (``n_i`` subjects) observes ``beta_i = true * (1 + tau * u_i) + e_i`` with
    ``e_i ~ N(0, sigma^2 / n_i)`` per voxel and a study-level random effect ``u_i ~ N(0, 1)``;
    its varcope is ``sigma^2 / n_i`` times a chi-square(n_i - 1) / (n_i - 1) estimate, so
    the t map is ``beta / sqrt(varcope)`` with ``n_i - 1`` degrees of freedom and z its
    conversion (NiMARE's ``t_to_z``).

    Parameters
    ----------
    true_effect : (n_voxels,) array
    sample_sizes : (n_studies,) int array
    rng : numpy.random.Generator
    sigma : float
        Within-study standard deviation of a subject's effect.
    tau : float
        Between-study relative standard deviation of the effect.

    Returns
    -------
    dict of str to (n_studies, n_voxels) float32 array
        ``beta``, ``varcope``, ``se``, ``t``, ``z``.
    """
    from daskmeta._stats import t_to_z

    n = np.asarray(sample_sizes, dtype=float)[:, None]
    k, v = n.shape[0], true_effect.shape[0]
    u = rng.normal(size=(k, 1))
    var = sigma ** 2 / n
    beta = true_effect[None, :] * (1 + tau * u) + rng.normal(size=(k, v)) * np.sqrt(var)
    varcope = var * rng.chisquare(n - 1, size=(k, v)) / (n - 1)
    se = np.sqrt(varcope)
    t = beta / se
    z = np.vstack([t_to_z(t[i], n[i, 0] - 1) for i in range(k)])
    return {name: arr.astype(np.float32) for name, arr in
            (("beta", beta), ("varcope", varcope), ("se", se), ("t", t), ("z", z))}


def images(directory, n_studies: int = 21, true_sites=None, effect: float = 1.0,
           fwhm: float = 12.0, sigma: float = 2.0, tau: float = 0.3, sample_size=(12, 40),
           image_types=IMAGE_TYPES, space: Space | None = None, compress: bool = True,
           seed: int = 0) -> SimulatedImages:
    """Simulate an image-based dataset: per study z, t, beta, varcope and se NIfTI maps.

    The true effect is :func:`true_effect_map` (blobs at ``true_sites``, by default
    :data:`DEFAULT_SITES`, the pain-like sites of :func:`coordinates`); each study's values
    are :func:`image_values`. Files are ``{directory}/{study}_{type}.nii[.gz]`` on the
    space's grid (zero outside its mask).

    Parameters
    ----------
    directory : path
        Where to write the images (created if needed).
    n_studies : int
    true_sites : (n_sites, 3) array, optional
    effect, fwhm : float
        Height and width (mm) of each true blob.
    sigma, tau : float
        Within-study standard deviation and between-study relative deviation (see
        :func:`image_values`).
    sample_size : (int, int)
        Inclusive range of sample sizes (each at least 4).
    image_types : sequence of str
        Which of :data:`IMAGE_TYPES` to write.
    space : Space, optional
        The grid and mask (default: the package's default mask).
    compress : bool
        Write ``.nii.gz`` (True) or ``.nii``.
    seed : int

    Returns
    -------
    SimulatedImages
    """
    import nibabel as nib

    if n_studies < 2:
        raise DaskmetaError(f"n_studies must be >= 2; got {n_studies}")
    nlo, nhi = (int(v) for v in sample_size)
    if nlo < 4 or nhi < nlo:
        raise DaskmetaError(f"sample_size must be an increasing range of sizes >= 4; got "
                            f"{sample_size!r}")
    unknown = sorted(set(image_types) - set(IMAGE_TYPES))
    if unknown:
        raise DaskmetaError(f"unknown image types {unknown}; allowed: {', '.join(IMAGE_TYPES)}")
    if space is None:
        from daskmeta.space import resolve_space

        space = resolve_space(None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(nlo, nhi + 1, size=n_studies)
    truth = true_effect_map(space, true_sites, effect, fwhm)
    suffix = ".nii.gz" if compress else ".nii"
    ids = [f"study-{i:04d}" for i in range(n_studies)]
    rows = {t: [] for t in image_types}
    vol = np.zeros(space.shape, dtype=np.float32)
    for i, sid in enumerate(ids):
        values = image_values(truth, sizes[i:i + 1], rng, sigma, tau)
        for t in image_types:
            vol[space.mask] = values[t][0]
            path = directory / f"{sid}_{t}{suffix}"
            nib.save(nib.Nifti1Image(vol, space.affine), str(path))
            rows[t].append(str(path.resolve()))
    experiments = pd.DataFrame({"id": ids, "study_id": ids, "sample_size": sizes.astype(float)})
    dataset = Dataset(experiments, pd.DataFrame(columns=["id", "x", "y", "z"]),
                      images=pd.DataFrame({"id": ids, **rows}),
                      name=f"simulated images (seed {seed})")
    return SimulatedImages(dataset, truth, space, directory.resolve(), int(seed), sizes)
