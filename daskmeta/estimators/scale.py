"""Specific coactivation likelihood estimation (SCALE; Langner et al., 2014)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._stats import p_to_logp, p_to_z
from daskmeta.estimators.ale import ALE
from daskmeta.estimators.base import positive_int
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import DEFAULT_MASK_MARGIN

__all__ = ["SCALE", "base_rate_counts"]


def _seed_ok(value) -> bool:
    return value is None or (isinstance(value, numbers.Integral)
                             and not isinstance(value, bool) and 0 <= value < 2**63)


def _xyz_of(source) -> tuple[np.ndarray, str]:
    """The base-rate coordinates (mm, MNI) of ``source`` and a description of it."""
    from daskmeta.collection import Collection
    from daskmeta.dataset import Dataset

    if isinstance(source, Collection):
        ds = source.dataset
        return ds.foci[["x", "y", "z"]].to_numpy(dtype=float), (
            f"the foci of the collection {source.path} ({ds.n_experiments} experiments)")
    if isinstance(source, Dataset):
        return source.foci[["x", "y", "z"]].to_numpy(dtype=float), (
            f"the foci of a Dataset of {source.n_experiments} experiments "
            f"({source.fingerprint()[:12]})")
    if isinstance(source, np.ndarray | list | tuple):
        try:
            xyz = np.asarray(source, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DaskmetaError(f"SCALE: xyz must be numbers (an N x 3 array of mm "
                                f"coordinates); {exc}") from None
        if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
            raise DaskmetaError(f"SCALE: xyz must be an N x 3 array of mm coordinates (N >= "
                                f"1); got shape {xyz.shape}")
        if not np.all(np.isfinite(xyz)):
            raise DaskmetaError("SCALE: xyz holds NaN or infinite coordinates")
        return xyz, f"an array of {len(xyz)} coordinates"
    raise DaskmetaError(f"SCALE: xyz must be an N x 3 array of mm coordinates, a Dataset or a "
                        f"Collection (their foci); got {type(source).__name__}")


def base_rate_counts(xyz, space) -> tuple[np.ndarray, int]:
    """How many base-rate coordinates fall in each in-mask voxel of ``space``.

    Parameters
    ----------
    xyz : (N, 3) array, Dataset or Collection
        mm coordinates (MNI), or a Dataset's / Collection's foci.
    space : Space

    Returns
    -------
    counts : (n_voxels,) float64
    n_outside : int
        Coordinates whose nearest voxel is outside the mask (left out).
    """
    xyz, _ = _xyz_of(xyz)
    ijk = space.mm_to_ijk(xyz)
    inside = space.in_mask(ijk)
    ijk = ijk[inside]
    flat = np.ravel_multi_index(ijk.T, space.shape)
    index = space.flat_to_masked[flat]
    counts = np.bincount(index, minlength=space.n_voxels).astype(np.float64)
    return counts, int((~inside).sum())


@fill_doc
class SCALE(ALE):
    """Specific coactivation likelihood estimation (NiMARE's ``SCALE``).

    ``stat`` is the ALE map of the input. Its null draws every focus from a base rate, the
    foci of a whole database (``xyz``), instead of uniformly in the mask: each voxel's
    p-value is the share of ``n_iters`` null ALE maps that reach its ALE value at that voxel
    (NiMARE 0.22's exceedance counts, clipped to ``[1/n_iters, 1 - 1/n_iters]``). The
    iterations run as seeded Dask batches (:mod:`daskmeta.montecarlo`), identical on any
    number of workers. :class:`~daskmeta.correct.FWECorrector` ``(method="montecarlo",
    vfwe_only=True)`` gives voxel-level FWE maps against the same base-rate null (NiMARE
    has no cluster-level correction for SCALE, nor does daskmeta).

    Parameters
    ----------
    xyz : (N, 3) array, Dataset or Collection
        The base rate: mm coordinates (MNI), or the foci of a Dataset or Collection (e.g. the
        whole of Neurosynth). Coordinates whose nearest voxel lies outside the mask are left
        out, with one warning (NiMARE keeps them; their kernels reach into the mask from
        outside).
    n_iters : int
        Null iterations (default 5000, NiMARE's).
    kernel_transformer : ALEKernel, optional
    random_state : int, optional
        Seed of the null (NiMARE's name). None draws one and records it in the result's
        attributes (``scale_seed``).
    batch_size : int, optional
        Iterations per seeded batch (default: the dask config
        ``daskmeta.montecarlo.batch-size``).
        With ``n_iters`` and ``random_state`` it fixes the result.
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s

    Notes
    -----
    Maps: ``stat``, ``p``, ``z`` and ``logp`` (NiMARE writes no ``p`` map for SCALE; it is
    the p-value its ``z`` and ``logp`` come from).
    """

    _null_methods = ("montecarlo",)
    _parameter_constraints = {
        "n_iters": (positive_int, "a positive integer"),
        "random_state": (_seed_ok, "None or an integer from 0 to 2**63 - 1"),
        "batch_size": (lambda v: v is None or positive_int(v), "None or a positive integer"),
    }

    def __init__(self, xyz=None, n_iters=5000, kernel_transformer=None, random_state=None,
                 batch_size=None, mask=None, mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None,
                 **kwargs):
        super().__init__(kernel_transformer=kernel_transformer, null_method="montecarlo",
                         mask=mask, mask_margin=mask_margin, chunk_size=chunk_size, **kwargs)
        self.xyz = xyz
        self.n_iters = n_iters
        self.random_state = random_state
        self.batch_size = batch_size

    def _validate_params(self):
        if self.xyz is None:
            raise DaskmetaError("SCALE needs xyz= (the base rate: an N x 3 array of mm "
                                "coordinates, a Dataset or a Collection)")
        _xyz_of(self.xyz)
        super()._validate_params()

    def _light_copy(self):
        light = super()._light_copy()
        light.xyz = None  # the base rate (a whole database's foci) never travels to tasks
        light.__dict__.pop("base_rate_", None)
        return light

    # -- fit -----------------------------------------------------------------------------
    def _finalize(self, stat_sum, summaries, n_voxels):
        from daskmeta import montecarlo

        counts, n_outside = base_rate_counts(self.xyz, self.space_)
        if not counts.any():
            raise DaskmetaError("SCALE: no base-rate coordinate falls inside the mask")
        if n_outside:
            warnings.warn(f"SCALE: {n_outside} of {n_outside + int(counts.sum())} base-rate "
                          "coordinates lie outside the mask and are left out of the base rate",
                          DaskmetaWarning, stacklevel=4)
        self.base_rate_ = counts
        self.base_rate_description_ = _xyz_of(self.xyz)[1]
        stat = self._stat(stat_sum)
        mc = montecarlo.run_montecarlo(self._null_model(), montecarlo.VoxelExceedances(stat),
                                       self.n_iters, self.batch_size, self.random_state)
        n = int(self.n_iters)
        smallest = 1.0 / n
        p = np.clip(mc.values["exceedances"] / n, smallest, 1.0 - smallest) if n > 1 else (
            np.full(n_voxels, 1.0))
        self.seed_ = int(mc.seed)
        maps = {"stat": stat, "p": p, "z": p_to_z(p, tail="one").astype(np.float32),
                "logp": p_to_logp(p)}
        return maps, {}

    def _null_model(self, sampler=None):
        """SCALE's null: the fit's foci drawn from the base rate (or ``sampler``)."""
        from daskmeta.montecarlo import BaseRateFoci

        self._check_fitted()
        return super()._null_model(sampler if sampler is not None
                                   else BaseRateFoci(self.base_rate_))

    def fit_many(self, *args, **kwargs):
        """Not available: each SCALE fit runs its own null; call ``fit`` per selection."""
        raise DaskmetaError(f"{type(self).__name__}.fit_many is not available; call fit once "
                            "per selection")

    def describe(self) -> dict:
        out = super().describe()
        out.pop("xyz", None)
        out.update({"null_method": "montecarlo", "scale_seed": getattr(self, "seed_", None),
                    "base_rate": getattr(self, "base_rate_description_", None),
                    "base_rate_n_foci": int(self.base_rate_.sum())
                    if hasattr(self, "base_rate_") else None})
        return out
