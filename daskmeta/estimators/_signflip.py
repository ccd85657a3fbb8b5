"""PermutedOLS's sign-flip null as a Monte Carlo null model (seeded batches on Dask).

One iteration flips the sign of every selected image at random (one sign per image, the
same at every voxel) and records the largest z over the mask: per bag of voxels usable in
the same images (NiMARE's liberal mask), the largest |t| (two-sided) or t, converted to z
with the bag's degrees of freedom, as NiMARE's ``PermutedOLS.correct_fwe_montecarlo``. A
batch reads the stack's voxel chunks once and evaluates all its iterations on each chunk
(a matrix product), so the stack is never held whole; stacks small enough are cached per
process between batches.
"""

from __future__ import annotations

import threading

import dask
import numpy as np

from daskmeta._stats import t_to_z
from daskmeta.estimators._ibma_base import MIN_STUDIES, liberal_bags, usable
from daskmeta.montecarlo import MaxStatistic, NullModel

__all__ = ["SignFlipNull", "empirical_max_p"]

#: Stacks up to this many bytes (selected rows, float64) are kept in memory between batches.
CACHE_BYTES = 256 * 2**20
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def empirical_max_p(observed, h0_max, two_sided: bool) -> np.ndarray:
    """``(#(null >= observed) + 1) / (n + 1)`` (NiMARE's ``_empirical_max_p``)."""
    obs = np.abs(observed) if two_sided else np.asarray(observed)
    null = np.sort(np.asarray(h0_max, dtype=float))
    exceed = null.size - np.searchsorted(null, obs, side="left")
    return (exceed + 1) / (null.size + 1)


class SignFlipNull(NullModel):
    """The sign-flip null of a fitted :class:`~daskmeta.estimators.PermutedOLS`.

    Parameters
    ----------
    stack : ImageStack
        The fit's stack (read by path in every worker).
    rows : int array
        The fit's experiments (rows of the stack).
    weights : array or None
        Per selected experiment, the sample-size weights (``use_sample_size``).
    two_sided : bool
    aggressive : bool
        Only voxels usable in every image (``aggressive_mask``).
    """

    def __init__(self, stack, rows, weights, two_sided: bool, aggressive: bool):
        self.path = str(stack.path)
        self.chunk_voxels = int(stack.chunk_voxels)
        self.n_voxels = int(stack.n_voxels)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        self.two_sided = bool(two_sided)
        self.aggressive = bool(aggressive)
        self.space = stack.space
        self.token = dask.base.tokenize("signflip", stack.fingerprint(), self.rows,
                                        self.weights, self.two_sided, self.aggressive)

    @property
    def geometry(self):
        return self.space

    def _chunks(self):
        """The selected rows' beta values, chunk by chunk of voxels."""
        import zarr

        k = len(self.rows)
        cacheable = k * self.n_voxels * 8 <= CACHE_BYTES
        if cacheable:
            with _CACHE_LOCK:
                hit = _CACHE.get(self.token)
            if hit is not None:
                yield from hit
                return
        z = zarr.open_array(self.path + "/beta", mode="r")
        contiguous = k and np.all(np.diff(self.rows) == 1)
        out = []
        for a in range(0, self.n_voxels, self.chunk_voxels * 4):
            b = min(a + self.chunk_voxels * 4, self.n_voxels)
            if contiguous:
                block = z[int(self.rows[0]):int(self.rows[-1]) + 1, a:b]
            else:
                block = z[:, a:b][self.rows]
            block = np.asarray(block, dtype=np.float64)
            pieces = self._bags(block)
            if cacheable:
                out.append(pieces)
            yield pieces
        if cacheable:
            with _CACHE_LOCK:
                _CACHE.clear()
                _CACHE[self.token] = out

    def _bags(self, block):
        valid = usable(block)
        if self.aggressive:
            voxels = np.flatnonzero(valid.all(axis=0))
            studies = np.arange(block.shape[0])
            bags = [(voxels, studies)] if voxels.size and studies.size >= MIN_STUDIES else []
        else:
            bags = liberal_bags(valid)
        return [(studies, block[np.ix_(studies, voxels)]) for voxels, studies in bags]

    def _max_z(self, flips: np.ndarray) -> np.ndarray:
        from pymare import stats as pst

        n = flips.shape[0]
        best = np.full(n, -np.inf)
        for pieces in self._chunks():
            for studies, values in pieces:
                k = len(studies)
                f = flips[:, studies]
                if self.weights is None:
                    t = pst.one_sample_t_from_sufficient_statistics(
                        f @ values, np.einsum("ij,ij->j", values, values), k)
                    dof = k - 1
                else:
                    w = self.weights[studies]
                    suff = pst.weighted_intercept_cr2_sufficient_statistics(values, w)
                    t = pst.weighted_intercept_cr2(f, suff)
                    dof = float(np.ravel(pst.satterthwaite_dof(
                        np.ones((k, 1)), w[:, None], np.arange(k)))[0])
                if self.two_sided:
                    t = np.abs(t)
                with np.errstate(invalid="ignore"):
                    top = np.nanmax(t, axis=1)
                np.maximum(best, t_to_z(top, dof), out=best)
        return best

    def draw(self, rng):
        return rng.choice((-1.0, 1.0), size=(1, len(self.rows)))

    def statistic(self, drawn):
        raise NotImplementedError("SignFlipNull records the maximum z only (MaxStatistic)")

    def run_batch(self, summary, rng, n_iters: int) -> dict:
        if not isinstance(summary, MaxStatistic):
            from daskmeta.exceptions import DaskmetaError

            raise DaskmetaError("the sign-flip null records the maximum statistic only "
                                "(voxel-level FWE); cluster-level correction is not offered")
        flips = rng.choice((-1.0, 1.0), size=(n_iters, len(self.rows)))
        return {"max_stat": self._max_z(flips)}
