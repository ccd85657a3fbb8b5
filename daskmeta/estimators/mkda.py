"""Multilevel kernel density analysis (Wager et al., 2007, 2009) and KDA."""

from __future__ import annotations

import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._stats import round_half_away
from daskmeta.estimators.cbma import CBMAEstimator
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.kernels import DEFAULT_MASK_MARGIN, KDAKernel, MKDAKernel

__all__ = ["KDA", "MKDADensity"]

#: Grid resolution of the weighted MKDA null (NiMARE's ``DEFAULT_HISTOGRAM_BINS``).
DEFAULT_HISTOGRAM_BINS = 100_000


def experiment_weights(experiments, weighting) -> np.ndarray:
    """Relative weights of experiments, normalised to sum to their number (NiMARE).

    ``experiments`` is a Dataset's experiments table (``id``, ``sample_size``). ``None`` or
    ``"uniform"``: all 1. ``"sample_size"``: sqrt(N) (Wager et al., 2009).
    """
    n = len(experiments)
    if weighting in (None, "uniform"):
        return np.ones(n)
    if weighting != "sample_size":
        raise DaskmetaError(
            f"weighting={weighting!r} is not supported; allowed: None, 'uniform', 'sample_size'"
        )
    sizes = experiments["sample_size"].to_numpy(dtype=float)
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        ids = experiments["id"][bad].tolist()
        raise DatasetError(
            f"sample-size weighting needs a positive sample size for every experiment; "
            f"{len(ids)} have none: {', '.join(ids[:25])}"
        )
    w = np.sqrt(sizes)
    if np.all(w == w[0]):
        return np.ones(n)
    return n * w / w.sum()


def _weighted_bins(weights, n_bins):
    weights = np.asarray(weights, dtype=np.float64).ravel()
    n_bins = max(int(n_bins), 2)
    step = weights.sum() / (n_bins - 1)
    multiples = np.maximum(np.rint(weights / step).astype(np.int64), 1)
    n_top = max(int(multiples.sum()), int(np.ceil(weights.sum() / step)))
    return np.arange(n_top + 1, dtype=np.float64) * step


def _weighted_null(weights, prop_active, bin_centers):
    """Exact null of sum_c w_c I_c on the grid (weighted Poisson binomial; NiMARE's)."""
    step = bin_centers[1] - bin_centers[0]
    multiples = np.maximum(np.rint(weights / step), 1).astype(np.int64)
    size = bin_centers.size
    current = np.zeros(size)
    nxt = np.zeros(size)
    scratch = np.empty(size)
    current[0] = 1.0
    occupied = 0
    for m_c, p_c in zip(multiples, prop_active):
        m_c = int(m_c)
        grown = min(occupied + m_c, size - 1)
        np.multiply(current[: occupied + 1], 1.0 - p_c, out=nxt[: occupied + 1])
        nxt[occupied + 1 : grown + 1] = 0.0
        np.multiply(current[: grown - m_c + 1], p_c, out=scratch[: grown - m_c + 1])
        nxt[m_c : grown + 1] += scratch[: grown - m_c + 1]
        current, nxt = nxt, current
        occupied = grown
    current[occupied + 1 :] = 0.0
    return current


@fill_doc
class MKDADensity(CBMAEstimator):
    """MKDA density: the (weighted) number of experiments with a focus within ``r`` mm.

    Parameters
    ----------
    kernel_transformer : MKDAKernel, optional
        Default ``MKDAKernel(r=10, value=1)``.
    null_method : {"approximate"}
        The exact null of a (weighted) sum of independent Bernoulli indicators.
    weighting : {None, "uniform", "sample_size"}
        Experiment weights; ``"sample_size"`` weights by sqrt(N) (Wager et al., 2009),
        normalised to sum to the number of experiments, as NiMARE.
    n_histogram_bins : int
        Grid of the weighted null.
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
        MKDA's: ``kernel__r``, ``kernel__value``.
    """

    _kernel_cls = MKDAKernel
    _montecarlo_stat = "identity"

    def __init__(self, kernel_transformer=None, null_method="approximate", weighting=None,
                 n_histogram_bins=DEFAULT_HISTOGRAM_BINS, mask=None,
                 mask_margin=DEFAULT_MASK_MARGIN, chunk_size=None,
                 **kwargs):
        super().__init__(kernel_transformer=kernel_transformer, null_method=null_method,
                         mask=mask, mask_margin=mask_margin, chunk_size=chunk_size, **kwargs)
        self.weighting = weighting
        self.n_histogram_bins = n_histogram_bins

    def _prepare(self, experiments, n_foci):
        self.weights_ = experiment_weights(experiments, self.weighting)

    def _selection_weights(self, n_experiments):
        return self.weights_

    def _row_summaries(self, block):
        return list(block.sum(axis=1))

    def _summaries_from_hist(self, hist, row_max, n_voxels):
        # Row sums: count x value per bin (exact for integer values).
        return list(hist @ (np.arange(hist.shape[1], dtype=np.float64)
                            * float(self.kernel_.value)))

    def _null(self, summaries, n_voxels):
        counts = np.asarray(summaries, dtype=np.float32)
        prop_active = counts / n_voxels  # float32, as NiMARE's
        weights = self.weights_
        if np.all(weights == weights[0]):
            bins = np.arange(len(prop_active) + 1, step=1)
            hist = 1.0
            for prop in prop_active:
                hist = np.convolve(hist, [1 - prop, prop])
        else:
            bins = _weighted_bins(weights, self.n_histogram_bins)
            hist = _weighted_null(weights, prop_active, bins)
        return bins, hist


@fill_doc
class KDA(CBMAEstimator):
    """Kernel density analysis (Wager et al., 2004): the sum of sphere counts.

    Superseded by :class:`MKDADensity` in the literature; kept for comparisons.

    Parameters
    ----------
    kernel_transformer : KDAKernel, optional
        Default ``KDAKernel(r=10, value=1)``.
    %(null_method)s
    %(mask)s
    %(mask_margin)s
    %(chunk_size)s
    %(kernel_kwargs)s
        KDA's: ``kernel__r``, ``kernel__value``.
    """

    _kernel_cls = KDAKernel
    _montecarlo_stat = "identity"

    def _prepare(self, experiments, n_foci):
        value = float(self.kernel_.value)
        max_poss = np.sum(value * np.asarray(n_foci, dtype=np.float64))
        self._bins = np.arange(0, max_poss + (value * 1.5), value)

    def _summaries_from_hist(self, hist, row_max, n_voxels):
        return [(bins, counts, n_voxels - int(counts.sum()))
                for bins, counts in self._occupied_bins(hist)]

    def _row_summaries(self, block):
        value = float(self.kernel_.value)
        out = []
        for row in block:
            vals = row[row != 0]
            idx, counts = np.unique(np.rint(vals / value).astype(np.int64), return_counts=True)
            out.append((idx, counts.astype(np.float64), row.shape[0] - vals.shape[0]))
        return out

    def _stat(self, stat_sum):
        return stat_sum.astype(np.float32)

    def _null(self, summaries, n_voxels):
        bins = self._bins
        n_bins = len(bins)
        inv_step = 1 / (bins[1] - bins[0])
        ma_hists = np.zeros((len(summaries), n_bins))
        for r, (idx, counts, n_zero) in enumerate(summaries):
            np.add.at(ma_hists[r], np.clip(idx, 0, n_bins - 1), counts)
            ma_hists[r, 0] += n_zero
        ma_hists /= ma_hists.sum(1)[:, None]
        hist = ma_hists[0].copy()
        for exp_hist in ma_hists[1:]:
            s_idx = np.where(hist > 0)[0]
            e_idx = np.where(exp_hist > 0)[0]
            scores = np.add.outer(bins[e_idx], bins[s_idx]).ravel()
            score_idx = round_half_away(scores * inv_step)
            probs = np.outer(exp_hist[e_idx], hist[s_idx]).ravel()
            hist = np.zeros(hist.shape)
            np.add.at(hist, score_idx, probs)
        return bins, hist
