"""Activation likelihood estimation (Eickhoff et al., 2009, 2012; Turkeltaub et al., 2002)."""

from __future__ import annotations

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._numba_cache import compiled
from daskmeta._rows import add_entries_by_selection
from daskmeta.estimators._reductions import entry_histograms, nonzero_entries
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.kernels import ALE_HIST_INV_STEP, ALEKernel

__all__ = ["ALE"]

_INV_STEP = 100000  # NiMARE's ALE histogram resolution: bins of 1e-5


#: Histogram bins per tile of a convolution step (sized for the L1/L2 caches).
_TILE_BINS = 2048


@compiled(inline="always")
def _score_bin(exp_one_minus, ale_center, inv_step):
    """NiMARE's bin of 1 - (1 - e)(1 - a): the nearest bin centre, ties upward, unclipped."""
    scaled = (1.0 - exp_one_minus * (1.0 - ale_center)) * inv_step
    fl = np.floor(scaled)
    return int(fl) + int(scaled - fl >= 0.5)


@compiled()
def _first_reaching(target, lo, hi, exp_one_minus, bin_centers, inv_step):
    """Smallest ALE bin in [lo, hi) whose combined bin is >= target (hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if _score_bin(exp_one_minus, bin_centers[mid], inv_step) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@compiled()
def _run_end(i, d, hi, one_minus, bin_centers, inv_step):
    """First bin in (i, hi) whose combined-bin offset is below ``d`` (``hi`` if none).

    The offset falls by one each time the combined bin's fractional position has drifted
    down by a whole bin, about every 1 / e bins: start from that prediction and settle it on
    the exact formula (the offset never rises, so the answer is where it first drops).
    """
    e = 1.0 - one_minus
    if e <= 0.0:
        return hi  # e = 0 maps every bin to itself
    frac = (1.0 - one_minus * (1.0 - bin_centers[i])) * inv_step - (i + d)
    guess = i + 1 + int(max(0.0, frac + 0.5) / e)
    lo = i + 1
    if guess >= hi:
        if _score_bin(one_minus, bin_centers[hi - 1], inv_step) - (hi - 1) >= d:
            return hi
        guess = hi - 1
    for _ in range(8):  # settle near the prediction
        if guess > lo and _score_bin(one_minus, bin_centers[guess - 1], inv_step) - (
                guess - 1) < d:
            guess -= 1
        elif _score_bin(one_minus, bin_centers[guess], inv_step) - guess >= d:
            guess += 1
            if guess >= hi:
                return hi
        else:
            return guess
    a, b = lo, hi  # a poor prediction: bisect
    while a < b:
        mid = (a + b) // 2
        if _score_bin(one_minus, bin_centers[mid], inv_step) - mid < d:
            b = mid
        else:
            a = mid + 1
    return a


@compiled(nogil=True)
def _convolve_step(ale, lo, hi, exp_bins, exp_probs, bin_centers, inv_step, out,
                   flush_below=0.0):
    """``out`` = the distribution of 1 - (1 - a)(1 - e), a ~ ``ale``, e ~ the experiment.

    NiMARE's ``_update_ale_histogram`` visits every (experiment bin, ALE bin) pair and adds
    to the combined bin. For one experiment bin the combined bin is ``i + d`` with an offset
    ``d`` that only steps down, rarely (the map has slope 1 - e < 1): so each run of
    constant ``d``, found by bisection on the exact bin formula, is one vectorised shifted
    add. Every output bin receives the same products in the same order (experiment bins,
    then ALE bins, ascending) as in NiMARE, so the result is identical to the last bit;
    output bins are done in tiles that stay in cache, and the tiling does not change it.
    Finished bins below ``flush_below`` are then set to zero.

    Serial on purpose: with ``parallel=True`` it took 1.2 s more to compile (paid by every
    first run), and its OpenMP threads competed with Dask's worker threads and any other
    load (the 865-experiment null took 2 to 9 s instead of 0.7 s on a busy machine).
    """
    n_bins = bin_centers.shape[0]
    n_tiles = (n_bins + _TILE_BINS - 1) // _TILE_BINS
    for tile in range(n_tiles):
        o_lo = tile * _TILE_BINS
        o_hi = min(n_bins, o_lo + _TILE_BINS)
        out[o_lo:o_hi] = 0.0
        for jj in range(exp_bins.shape[0]):
            one_minus = 1.0 - bin_centers[exp_bins[jj]]
            prob = exp_probs[jj]
            i = lo if tile == 0 else _first_reaching(o_lo, lo, hi, one_minus, bin_centers,
                                                     inv_step)
            i_end = hi if tile == n_tiles - 1 else _first_reaching(o_hi, i, hi, one_minus,
                                                                   bin_centers, inv_step)
            while i < i_end:
                d = _score_bin(one_minus, bin_centers[i], inv_step) - i
                a = _run_end(i, d, i_end, one_minus, bin_centers, inv_step)
                stop = max(i, min(a, n_bins - 1 - d))
                if stop > i:
                    dst = out[i + d:stop + d]
                    src = ale[i:stop]
                    for k in range(src.shape[0]):
                        dst[k] += prob * src[k]
                for k in range(stop, a):  # beyond the grid: NiMARE clips to the last bin
                    out[n_bins - 1] += prob * ale[k]
                i = a
        for k in range(o_lo, o_hi):
            if out[k] < flush_below:
                out[k] = 0.0


#: float64's smallest normal number: null probabilities below it are dropped.
_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def ale_bins(row_max: np.ndarray) -> np.ndarray:
    """Histogram bin centres of the ALE null for experiments with these MA maxima."""
    step = 1 / _INV_STEP
    row_max = np.asarray(row_max, dtype=np.float32)
    # Same dtypes as NiMARE so the grid has exactly its length: float32 throughout.
    row_max = np.ceil(row_max * _INV_STEP) / _INV_STEP
    max_poss = 1.0 - np.prod(1.0 - row_max, axis=0)
    return np.round(np.arange(0, max_poss + (1.5 * step), step), 5)


def _occupied(ale, hi: int, window: int = 4096) -> tuple[int, int]:
    """``(lo, hi')``: ``ale[:hi]`` without its leading and trailing zeros (``(hi, hi)`` if all
    zero). Both ends are looked for in a window first, where they almost always are."""
    head = np.flatnonzero(ale[:min(hi, window)])
    if head.size == 0:
        head = np.flatnonzero(ale[:hi])
        if head.size == 0:
            return hi, hi
    start = max(0, hi - window)
    tail = np.flatnonzero(ale[start:hi])
    if tail.size == 0:
        tail = np.flatnonzero(ale[:hi])
        start = 0
    return int(head[0]), start + int(tail[-1]) + 1


def ale_null_histogram(row_hists, n_voxels: int, bin_centers: np.ndarray,
                       drop_subnormal: bool = True) -> np.ndarray:
    """The approximate (analytic) null histogram of ALE values, NiMARE's.

    Parameters
    ----------
    row_hists : list of (bins, counts)
        Per experiment, the (unclipped) nearest-bin indices of its non-zero MA values and
        their counts.
    n_voxels : int
    bin_centers : ndarray
    drop_subnormal : bool
        After each experiment's convolution step, set to zero the bins whose probability is
        below float64's smallest normal number (2.2e-308). With False the histogram is
        NiMARE's to the last bit. With True (the default, used by :class:`ALE`) it is the
        same in every bin above 1e-280, so p-values differ only below 1e-280: subnormal
        arithmetic runs tens of times slower on x86, and the far tail of the null (ALE
        values no data reach) underflows into a thousand or so such bins, which took 30% of
        the time of the null of 865 experiments.
    """
    bin_centers = np.ascontiguousarray(bin_centers, dtype=np.float64)
    inv_step = float(1 / (bin_centers[1] - bin_centers[0]))
    flush_below = _SMALLEST_NORMAL if drop_subnormal else 0.0
    n_voxels = float(n_voxels)
    n_bins = bin_centers.shape[0]
    # The loop over experiments is Python (its cost is negligible next to the convolutions,
    # and compiling it took 0.6 s of every first run); the convolution step is compiled.
    ale = np.zeros(n_bins)
    out = np.zeros(n_bins)
    started = False
    hi = 0  # ale[hi:] is zero
    for bins, counts in row_hists:
        bins = np.asarray(bins, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.float64)
        top = max(0, int(min(bins.max(), n_bins - 1))) if bins.size else 0
        # Counts are added in order, as NiMARE does (bincount adds its weights in order).
        exp_hist = np.bincount(np.clip(bins, 0, n_bins - 1), weights=counts,
                               minlength=top + 1).astype(np.float64, copy=False)
        n_nonzero = float(np.add.accumulate(counts)[-1]) if counts.size else 0.0
        exp_hist[0] += n_voxels - n_nonzero
        exp_hist *= 1.0 / n_voxels
        if not started:
            ale[:top + 1] = exp_hist
            started = True
            hi = top + 1
            continue
        exp_bins = np.flatnonzero(exp_hist > 0)
        exp_probs = np.ascontiguousarray(exp_hist[exp_bins])
        lo, hi = _occupied(ale, hi)
        _convolve_step(ale, lo, hi, exp_bins.astype(np.int64), exp_probs, bin_centers,
                       inv_step, out, flush_below)
        ale, out = out, ale
        hi = min(n_bins, hi + top + 2)  # a combined bin is at most top + 1 above its bin
    return ale


@fill_doc
class ALE(CBMAEstimator):
    """Activation likelihood estimation.

    ``stat`` is the ALE value ``1 - prod(1 - MA)`` over experiments, with NiMARE's
    approximate (histogram-convolution) null for ``p``, ``z`` and ``logp``; null
    probabilities that underflow below 2.2e-308 are dropped, so p-values below 1e-280 may
    differ from NiMARE's (see :func:`ale_null_histogram`). The null convolves the
    experiments in NiMARE's order (sorted ids, whatever the data's order): each step rounds
    to the grid, so the order matters.

    Parameters
    ----------
    kernel_transformer : ALEKernel, optional
        Default ``ALEKernel()`` (FWHM from each experiment's sample size).
    %(null_method)s
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
        ALE's: ``kernel__fwhm``, ``kernel__sample_size``.
    """

    _kernel_cls = ALEKernel
    _needs_row_max = True
    _montecarlo_stat = "ale"

    def _block_values(self, block):
        # log1p in float32, summed in float64: exactly how NiMARE accumulates ALE.
        return np.log1p(-block)

    def _add_block(self, block, weights, total, with_summaries):
        # Only the non-zero entries: log1p(-0) = -0 adds nothing. numpy's float32 log1p, as
        # NiMARE's, in place over the compacted values.
        offsets, columns, values = nonzero_entries(block)
        summaries = (self._split_summaries(*entry_histograms(offsets, values,
                                                             ALE_HIST_INV_STEP))
                     if with_summaries else [])
        np.log1p(np.negative(values, out=values), out=values)
        add_entries_by_selection(offsets, columns, values, weights.indptr, weights.indices,
                                 weights.data.astype(np.float64), total)
        return summaries

    def _row_summaries(self, block):
        offsets, _, values = nonzero_entries(block)
        return self._split_summaries(*entry_histograms(offsets, values, ALE_HIST_INV_STEP))

    @staticmethod
    def _split_summaries(row_max, h_off, bins, counts):
        return [(row_max[r], bins[h_off[r]:h_off[r + 1]], counts[h_off[r]:h_off[r + 1]])
                for r in range(len(row_max))]

    def _hist_inv_step(self, kernel):
        return ALE_HIST_INV_STEP

    def _summaries_from_hist(self, hist, row_max, n_voxels):
        return [(top, bins, counts)
                for top, (bins, counts) in zip(row_max, self._occupied_bins(hist))]

    def _stat(self, log_sum):
        return (1.0 - np.exp(log_sum)).astype(np.float32)

    def _null_order(self, ids):
        # Each convolution step rounds to the grid, so the null depends (by about 1% of a
        # bin's weight) on the order of the experiments: NiMARE's is its MA rows', sorted ids
        # (np.unique), not the dataset's.
        return np.argsort(np.asarray(ids, dtype=str), kind="stable")

    def _null(self, summaries, n_voxels):
        row_max = np.asarray([s[0] for s in summaries], dtype=np.float32)
        bins = ale_bins(row_max)
        return bins, ale_null_histogram([(s[1], s[2]) for s in summaries], n_voxels, bins)
