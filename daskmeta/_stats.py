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


# --------------------------------------------------------------------------------------------
# t and z tails in log space (NiMARE 0.22.1's transforms, for image-based meta-analysis)
# --------------------------------------------------------------------------------------------
_LOG2 = np.log(2.0)
_SQRT2 = np.sqrt(2.0)


def _log_erfc(y) -> np.ndarray:
    """log(erfc(y)), finite where erfc underflows (NiMARE's ``_log_erfc``)."""
    shape = np.shape(y)
    y = np.atleast_1d(np.asarray(y, dtype=float))
    tail = special.erfc(y)
    with np.errstate(divide="ignore"):
        out = np.log(tail)
    underflowed = tail < np.finfo(float).tiny
    if underflowed.any():
        out[underflowed] = _LOG2 + special.log_ndtr(-y[underflowed] * _SQRT2)
    return out.reshape(shape)


def z_to_nlogp(z, tail: str = "two") -> np.ndarray:
    """Natural log of the p-value of z (NiMARE's ``z_to_nlogp``)."""
    z = np.asarray(z, dtype=float)
    if tail == "two":
        return _log_erfc(np.abs(z) / _SQRT2)
    return _log_erfc(z / _SQRT2) - _LOG2


def _log_t_power_law(dof):
    return (special.gammaln((dof + 1) / 2.0) - special.gammaln(dof / 2.0)
            - 0.5 * np.log(np.pi) + ((dof - 2) / 2.0) * np.log(dof))


def log_t_sf(t, dof) -> np.ndarray:
    """log(sf(t)) of the t distribution, finite where SciPy's underflows (NiMARE's)."""
    from scipy import stats  # imported on use: scipy.stats costs a command's start-up

    shape = np.shape(t)
    t = np.atleast_1d(np.asarray(t, dtype=float))
    with np.errstate(divide="ignore"):
        out = np.asarray(stats.t.logsf(t, dof), dtype=float).copy()
    underflowed = ~np.isfinite(out) & np.isfinite(t) & (t > 0)
    if underflowed.any():
        out[underflowed] = _log_t_power_law(dof) - dof * np.log(t[underflowed])
    return out.reshape(shape)


def t_to_nlogp(t, dof, tail: str = "two") -> np.ndarray:
    """Natural log of the p-value of t with ``dof`` degrees of freedom (NiMARE's)."""
    t = np.asarray(t, dtype=float)
    nlogp = _LOG2 + log_t_sf(np.abs(t), dof) if tail == "two" else log_t_sf(t, dof)
    return np.minimum(nlogp, 0.0)


def t_to_z(t, dof) -> np.ndarray:
    """z-values of t-values, sign kept, tails in log space (NiMARE's ``t_to_z``)."""
    t = np.asarray(t, dtype=float)
    nlogp = t_to_nlogp(np.abs(t), dof, tail="one")
    return np.sign(t) * nlogp_to_z(nlogp, tail="one") + 0.0
