"""MKDA chi-square maps from counts (NiMARE 0.22.1's ``MKDAChi2``), vectorized.

Every function here takes per-voxel counts of active experiments, as arrays whose LAST axis
is the voxel axis, and group sizes broadcastable against them: one contrast is
``(n_voxels,)`` counts with scalar sizes; many contrasts at once (a decoder's labels) are
``(n_labels, n_voxels)`` counts with sizes of shape ``(n_labels, 1)``. Quantities that NiMARE
takes "over the map" (the expected count of the uniformity test, the sign of its z) are
taken along the last axis, i.e. per contrast.

Formulas, zeros and dtypes are NiMARE's:

- uniformity (one-way) chi2: ``(x - m)**2 * n / (m * (n - m))``, ``m`` the mean count over
  voxels, and 0 where ``m * (n - m) == 0``; its z is ``sqrt(chi2) * sign(x - m)``;
- association (two-way, from the 2x2 table of counts): ``N (a n2 - b n1)**2 /
  ((a + b)(N - a - b) n1 n2)``, and 2.0 where that denominator is 0 (NiMARE's value); its z
  is ``sqrt(chi2) * sign(p(A|F) - p(A|U))``;
- p is ``exp(nlogp)`` with ``nlogp = log(erfc(sqrt(chi2 / 2)))`` (one degree of freedom,
  without underflow), logp is ``-nlogp / log(10)``;
- the probability maps divide as NiMARE does, so ``prob_desc-FgA`` is NaN where no
  experiment of either group is active (0 / 0), and ``prob_desc-FgA_prior`` where neither
  group's probability is positive.

The maps come out as NiMARE's ``MetaResult`` holds them: float32, p clipped to
``[smallest positive float32, 1]``, logp to ``[0, float32 max]``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["CHI2_MAP_NAMES", "chi2_maps", "chi2_to_nlogp", "one_way", "two_way_counts"]

_LOG2 = np.log(2.0)
_SQRT2 = np.sqrt(2.0)
_F32 = np.float32
_F32_TINY = np.nextafter(_F32(0), _F32(1))
_F32_MAX = np.finfo(_F32).max

#: Names of the maps :func:`chi2_maps` returns (NiMARE's; the ``_prior`` maps only with a
#: prior).
CHI2_MAP_NAMES = (
    "z_desc-uniformity", "z_desc-association", "chi2_desc-uniformity",
    "chi2_desc-association", "p_desc-uniformity", "p_desc-association",
    "logp_desc-uniformity", "logp_desc-association", "prob_desc-A", "prob_desc-AgF",
    "prob_desc-AgU", "prob_desc-FgA", "prob_desc-group1", "prob_desc-group2",
    "chi2_desc-group1", "chi2_desc-group2", "p_desc-group1", "p_desc-group2",
    "z_desc-group1", "z_desc-group2", "logp_desc-group1", "logp_desc-group2",
    "prob_desc-AgF_prior", "prob_desc-FgA_prior",
)


def one_way(counts, n):
    """One-way chi-square test of uniformity of ``counts`` (over the last axis) out of ``n``
    experiments (NiMARE's ``one_way``): float64, 0 where the expectation is 0 or ``n``."""
    term = np.asarray(counts, dtype=np.float64)
    expected = np.mean(term, axis=-1, keepdims=True)
    denominator = expected * (np.asarray(n, dtype=np.float64) - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = (term - expected) ** 2 * n / denominator
    return np.where(denominator == 0, 0.0, chi2)


def two_way_counts(selected, unselected, n_selected, n_unselected):
    """Two-way chi-square test of the 2x2 tables (active / inactive x group 1 / group 2)
    from the groups' active counts and sizes (NiMARE's ``two_way_counts``): float64, 2.0
    where a margin of the table is 0."""
    a = np.asarray(selected, dtype=np.float64)
    b = np.asarray(unselected, dtype=np.float64)
    n1 = np.asarray(n_selected, dtype=np.float64)
    n2 = np.asarray(n_unselected, dtype=np.float64)
    total = n1 + n2
    row0 = a + b
    row1 = total - row0
    with np.errstate(divide="ignore", invalid="ignore"):
        numerator = total * (a * n2 - b * n1) ** 2
        denominator = row0 * row1 * n1 * n2
        chi2 = numerator / denominator
    return np.where(denominator == 0, 2.0, chi2)


def chi2_to_nlogp(chi2):
    """Natural log of the upper-tail p of chi-square values on one degree of freedom,
    finite where the p-value underflows (NiMARE's ``chi2_to_nlogp``)."""
    y = np.sqrt(np.asarray(chi2, dtype=np.float64) / 2.0)
    tail = special.erfc(y)
    with np.errstate(divide="ignore"):
        out = np.log(tail)
    low = tail < np.finfo(np.float64).tiny
    if low.any():
        out[low] = _LOG2 + special.log_ndtr(-y[low] * _SQRT2)
    return np.minimum(out, 0.0)


def _p_map(nlogp):
    return np.clip(np.exp(nlogp).astype(_F32), _F32_TINY, _F32(1))


def _logp_map(nlogp):
    logp = np.asarray(nlogp, dtype=np.float64) / -np.log(10.0) + 0.0
    return np.clip(logp.astype(_F32), _F32(0), _F32_MAX)


def chi2_maps(n_selected_active, n_selected, n_unselected_active, n_unselected,
              prior=0.5) -> dict:
    """NiMARE's MKDAChi2 maps from per-voxel active counts and group sizes.

    Parameters
    ----------
    n_selected_active : array, shape (..., n_voxels)
        Number of experiments of group 1 (the selection) active at each voxel.
    n_selected : int or array broadcastable to ``(..., 1)``
        Number of experiments of group 1 (> 0).
    n_unselected_active : array, shape (..., n_voxels)
        Number of experiments of group 2 (the rest) active at each voxel.
    n_unselected : int or array broadcastable to ``(..., 1)``
        Number of experiments of group 2 (> 0).
    prior : float or None
        Uniform prior of a feature being present; a false value (None, 0) omits the
        ``prob_desc-AgF_prior`` and ``prob_desc-FgA_prior`` maps, as NiMARE.

    Returns
    -------
    dict of str to ndarray
        ``{chi2,p,z,logp}_desc-{uniformity,association,group1,group2}`` and
        ``prob_desc-{A,AgF,AgU,FgA,group1,group2}`` (``prob_desc-{AgF,FgA}_prior`` with a
        prior), float32, each of the broadcast shape of the counts.
    """
    sel = np.asarray(n_selected_active, dtype=np.float64)
    unsel = np.asarray(n_unselected_active, dtype=np.float64)
    n1 = np.asarray(n_selected, dtype=np.float64)
    n2 = np.asarray(n_unselected, dtype=np.float64)
    n_all = n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        p_f = n1 / n_all
        p_a = (sel + unsel) / n_all
        p_agf = sel / n1
        p_agu = unsel / n2
        p_fga = p_agf * p_f / p_a
        if prior:
            p_agf_prior = prior * p_agf + (1 - prior) * p_agu
            p_fga_prior = p_agf * prior / p_agf_prior

    maps = {}
    signs = {
        "uniformity": np.sign(sel - np.mean(sel, axis=-1, keepdims=True)),
        "group2": np.sign(unsel - np.mean(unsel, axis=-1, keepdims=True)),
        "association": np.sign(p_agf - p_agu),
    }
    chi2 = {"uniformity": one_way(sel, n1), "group2": one_way(unsel, n2),
            "association": two_way_counts(sel, unsel, n1, n2)}
    for name in ("uniformity", "group2", "association"):
        nlogp = chi2_to_nlogp(chi2[name])
        maps[f"chi2_desc-{name}"] = chi2[name].astype(_F32)
        maps[f"p_desc-{name}"] = _p_map(nlogp)
        maps[f"z_desc-{name}"] = (np.sqrt(chi2[name]) * signs[name]).astype(_F32)
        maps[f"logp_desc-{name}"] = _logp_map(nlogp)
    for kind in ("chi2", "p", "z", "logp"):
        maps[f"{kind}_desc-group1"] = maps[f"{kind}_desc-uniformity"]
    maps["prob_desc-A"] = np.broadcast_to(p_a, sel.shape).astype(_F32)
    maps["prob_desc-AgF"] = maps["prob_desc-group1"] = p_agf.astype(_F32)
    maps["prob_desc-AgU"] = maps["prob_desc-group2"] = p_agu.astype(_F32)
    maps["prob_desc-FgA"] = p_fga.astype(_F32)
    if prior:
        maps["prob_desc-AgF_prior"] = p_agf_prior.astype(_F32)
        maps["prob_desc-FgA_prior"] = p_fga_prior.astype(_F32)
    return {name: maps[name] for name in CHI2_MAP_NAMES if name in maps}
