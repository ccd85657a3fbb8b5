"""Activation likelihood estimation (Eickhoff et al., 2009, 2012; Turkeltaub et al., 2002)."""

from __future__ import annotations

import numba
import numpy as np

from daskmeta._stats import nlogp_to_logp, nullhist_to_p, p_to_z
from daskmeta.estimators._base import CBMAEstimator
from daskmeta.kernels import ALEKernel

__all__ = ["ALE"]

_INV_STEP = 100000  # NiMARE's ALE histogram resolution: bins of 1e-5
# The inverse step NiMARE bins with: 1 / (bins[1] - bins[0]), not exactly 1e5 in float64.
_BIN_INV_STEP = 1 / float(np.round(np.arange(0, 2.5e-5, 1 / _INV_STEP), 5)[1])


#: Fixed partition of each convolution step (not the thread count), so sums are the same
#: on every machine.
_N_PARTS = 8


@numba.njit(cache=True, parallel=True, nogil=True)
def _update_ale_histogram(ale_idx, ale_probs, exp_idx, exp_probs, bin_centers, inv_step,
                          n_bins):
    """Distribution of 1 - (1 - a)(1 - e) for independent a ~ ale, e ~ exp (NiMARE's rule:
    each product lands on its nearest bin, ties upward), split over the experiment's bins."""
    parts = np.zeros((_N_PARTS, n_bins))
    n_exp = exp_idx.shape[0]
    step = (n_exp + _N_PARTS - 1) // _N_PARTS
    for part in numba.prange(_N_PARTS):
        out = parts[part]
        for i_exp in range(part * step, min(n_exp, (part + 1) * step)):
            exp_one_minus = 1.0 - bin_centers[exp_idx[i_exp]]
            exp_prob = exp_probs[i_exp]
            for i_ale in range(ale_idx.shape[0]):
                score = 1.0 - exp_one_minus * (1.0 - bin_centers[ale_idx[i_ale]])
                scaled = score * inv_step
                fl = np.floor(scaled)
                idx = int(fl) + int(scaled - fl >= 0.5)
                if idx < 0:
                    idx = 0
                elif idx >= n_bins:
                    idx = n_bins - 1
                out[idx] += exp_prob * ale_probs[i_ale]
    total = parts[0].copy()
    for part in range(1, _N_PARTS):
        total += parts[part]
    return total


def nearest_bin(values: np.ndarray, inv_step: float) -> np.ndarray:
    """Index of the nearest bin centre, ties upward (NiMARE's ``_nearest_bin``), unclipped."""
    scaled = np.asarray(values, dtype=np.float64) * inv_step
    fl = np.floor(scaled)
    return fl.astype(np.int64) + (scaled - fl >= 0.5)


def ale_bins(row_max: np.ndarray) -> np.ndarray:
    """Histogram bin centres of the ALE null for experiments with these MA maxima."""
    step = 1 / _INV_STEP
    row_max = np.asarray(row_max, dtype=np.float32)
    # Same dtypes as NiMARE so the grid has exactly its length: float32 throughout.
    row_max = np.ceil(row_max * _INV_STEP) / _INV_STEP
    max_poss = 1.0 - np.prod(1.0 - row_max, axis=0)
    return np.round(np.arange(0, max_poss + (1.5 * step), step), 5)


def ale_null_histogram(row_hists, n_voxels: int, bin_centers: np.ndarray) -> np.ndarray:
    """The approximate (analytic) null histogram of ALE values.

    Parameters
    ----------
    row_hists : list of (bins, counts)
        Per experiment, the (unclipped) nearest-bin indices of its non-zero MA values and
        their counts.
    n_voxels : int
    bin_centers : ndarray
    """
    bin_centers = bin_centers.astype(np.float64, copy=False)
    inv_step = 1 / (bin_centers[1] - bin_centers[0])
    n_bins = bin_centers.shape[0]
    recip = 1.0 / n_voxels
    ale_hist = None
    for bins, counts in row_hists:
        exp_hist = np.zeros(n_bins)
        np.add.at(exp_hist, np.clip(bins, 0, n_bins - 1), counts)
        exp_hist[0] += n_voxels - counts.sum()
        exp_hist *= recip
        if ale_hist is None:
            ale_hist = exp_hist
            continue
        ale_idx = np.where(ale_hist > 0)[0]
        exp_idx = np.where(exp_hist > 0)[0]
        ale_hist = _update_ale_histogram(ale_idx, ale_hist[ale_idx], exp_idx,
                                         exp_hist[exp_idx], bin_centers, inv_step, n_bins)
    return ale_hist


class ALE(CBMAEstimator):
    """Activation likelihood estimation.

    ``stat`` is the ALE value ``1 - prod(1 - MA)`` over experiments, with NiMARE's
    approximate (histogram-convolution) null for ``p``, ``z`` and ``logp``.

    Parameters
    ----------
    kernel_transformer : ALEKernel, optional
        Default ``ALEKernel()`` (FWHM from each experiment's sample size).
    null_method : {"approximate"}
        Null for voxel-wise p-values.
    mask : str, image or Space, optional
        Analysis mask (default: nilearn's MNI152 2 mm brain mask).
    mask_margin : float
        Foci more than this many mm outside the mask are dropped with a warning (default 10).
    chunk_size : int
        Experiments per chunk of the MA matrix.
    **kwargs
        Kernel parameters as ``kernel__fwhm``, ``kernel__sample_size``.
    """

    _kernel_cls = ALEKernel

    def _block_values(self, block):
        # log1p in float32, summed in float64: exactly how NiMARE accumulates ALE.
        return np.log1p(-block)

    def _row_summaries(self, block):
        out = []
        for row in block:
            vals = row[row != 0]
            bins, counts = np.unique(nearest_bin(vals, _BIN_INV_STEP), return_counts=True)
            out.append((vals.max(initial=0.0), bins, counts.astype(np.float64)))
        return out

    def _finalize(self, log_sum, summaries, dataset, plan):
        stat = (1.0 - np.exp(log_sum)).astype(np.float32)
        row_max = np.asarray([s[0] for s in summaries], dtype=np.float32)
        bins = ale_bins(row_max)
        null = ale_null_histogram([(s[1], s[2]) for s in summaries], plan.n_voxels, bins)
        p = nullhist_to_p(stat, null, bins)
        z = p_to_z(p, tail="one")
        maps = {"stat": stat, "p": p, "z": z, "logp": nlogp_to_logp(np.log(p))}
        nulls = {"histogram_bins": bins, "histweights_corr-none_method-approximate": null}
        return maps, nulls
