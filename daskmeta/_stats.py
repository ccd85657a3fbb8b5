"""p-value, z and -log10(p) conversions, written to give NiMARE 0.22.1's numbers."""

from __future__ import annotations

import numpy as np
from scipy import special

_F32_MAX = np.finfo(np.float32).max


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (NiMARE's ``_round2``), as int."""
    x = np.asarray(x, dtype=float)
    y = np.rint(x)  # ties to even; a tie n + 0.5 then moves one half away from zero (exact)
    tie = np.flatnonzero(np.abs(x - y) == 0.5)
    y[tie] = x[tie] + np.copysign(0.5, x[tie])
    return y.astype(int)


def _null_tail(histogram_weights) -> np.ndarray:
    """Upper-tail probability of each bin of a null histogram (NiMARE's normalisation)."""
    weights = np.asarray(histogram_weights, dtype=np.float64)
    null = weights / np.sum(weights)
    null = np.cumsum(null[::-1])[::-1]
    null /= np.max(null)
    return null


def _value_bins(values, histogram_bins) -> np.ndarray:
    """Bin of each statistic: NiMARE's ``_round2`` of the value times the inverse bin width
    (in float64; nearest, ties away from zero), clipped to the last bin; one past the last
    bin for statistics <= 0 and NaN."""
    last = len(histogram_bins) - 1
    values = np.asarray(values)
    positive = values > 0
    out = np.full(values.shape, last + 1, dtype=np.intp)
    scaled = values[positive].astype(np.float64) * float(
        1 / (histogram_bins[1] - histogram_bins[0]))
    out[positive] = np.minimum(round_half_away(scaled), last)
    return out


def nullhist_maps(stat, histogram_weights, histogram_bins) -> dict:
    """``stat``, ``p``, ``z`` and ``logp`` maps of statistics against a null histogram.

    p is NiMARE's ``nullhist_to_p`` (clipped below at the smallest non-zero tail
    probability); z and logp are :func:`p_to_z` (one-tailed) and :func:`nlogp_to_logp` of
    it. They are computed once per bin of the null and looked up: a p-value takes at most
    one value per bin.
    """
    stat = np.atleast_1d(np.asarray(stat))
    null = _null_tail(histogram_weights)
    smallest = np.min(null[null != 0])
    # The last entry is for statistics <= 0 (p = 1).
    p_table = np.maximum(smallest, np.minimum(np.append(null, 1.0), 1.0))
    z_table = p_to_z(p_table, tail="one")
    logp_table = nlogp_to_logp(np.log(p_table))
    bins = _value_bins(stat, histogram_bins)
    return {"stat": stat, "p": p_table.take(bins), "z": z_table.take(bins),
            "logp": logp_table.take(bins)}


def nullhist_to_threshold(histogram_weights, histogram_bins, p: float) -> float:
    """Smallest statistic whose upper-tail probability under the null falls to ``p``."""
    weights = np.asarray(histogram_weights, dtype=np.float64).ravel()
    if weights.sum() <= 0:
        return float(histogram_bins[0])
    tail = np.cumsum(weights[::-1])[::-1]
    tail /= tail[0]
    below = np.flatnonzero(tail <= p)
    if below.size == 0:
        return float(histogram_bins[-1])
    return float(histogram_bins[max(0, below[0] - 1)])


def clip_p(p) -> np.ndarray:
    """p-values clipped to ``[smallest positive float64, 1]``."""
    p = np.array(p, dtype=np.float64)
    return np.clip(p, np.nextafter(0.0, 1.0), 1.0)


def nlogp_to_z(nlogp, tail: str = "one") -> np.ndarray:
    """z from the natural log of p (one- or two-tailed), without underflow."""
    nlogp = np.asarray(nlogp, dtype=float)
    if tail == "two":
        return -special.ndtri_exp(nlogp - np.log(2.0)) + 0.0
    return np.maximum(-special.ndtri_exp(nlogp), 0.0)


def p_to_z(p, tail: str = "one") -> np.ndarray:
    """z-values of p-values (``tail`` 'one' or 'two'), as NiMARE's ``p_to_z``."""
    return nlogp_to_z(np.log(clip_p(p)), tail=tail)


def nlogp_to_logp(nlogp) -> np.ndarray:
    """-log10(p) as float32 from the natural log of p (NiMARE's ``logp`` maps)."""
    logp = np.asarray(nlogp, dtype=np.float64) / -np.log(10.0) + 0.0
    return np.clip(logp.astype(np.float32), np.float32(0), _F32_MAX)


def p_to_logp(p) -> np.ndarray:
    """-log10(p) as float32, p clipped to the positive float32 range first (as NiMARE)."""
    p = np.clip(np.array(p, dtype=np.float32), np.nextafter(np.float32(0), np.float32(1)),
                np.float32(1))
    return -np.log10(p)
