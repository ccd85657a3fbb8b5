"""Jackknife: each experiment's contribution to each cluster, from every leave-one-out fold
computed as one pass over the experiments' MA rows (of a pairwise result: over the rows of
the group the experiment is left out of).

NiMARE refits the estimator without each experiment in turn and reports, per cluster, the
mean over its voxels of ``1 - stat_without / stat`` (0/0 read as 0). A fold's statistic is
the full fit's minus one row, so only that row is needed, at the clusters' voxels:

- ALE: ``stat_without = 1 - (1 - stat) / (1 - MA_i)`` (the log-sum minus ``log1p(-MA_i)``);
- MKDA density and KDA: ``stat_without = (n - 1) / (n - w_i) * (stat - w_i MA_i)`` with the
  fit's experiment weights ``w`` (which sum to ``n``; NiMARE renormalises the sample-size
  weights of the ``n - 1`` experiments, which this factor does; 1 for unweighted fits).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from daskmeta._docs import fill_doc
from daskmeta.diagnostics._base import Diagnostics
from daskmeta.diagnostics._passes import row_pass
from daskmeta.estimators._chi2 import two_way_counts
from daskmeta.exceptions import DaskmetaError

__all__ = ["Jackknife"]


class _LeaveOneOut:
    """Row reduction: each row's mean ``1 - stat_without / stat`` over each cluster."""

    def __init__(self, kind: str, stat, voxels, cols, n_clusters: int, n_experiments: int):
        self.kind = kind
        self.voxels = np.asarray(voxels, dtype=np.int64)
        self.stat32 = np.asarray(stat, dtype=np.float32)[self.voxels]
        self.stat64 = self.stat32.astype(np.float64)
        self.log_rest = np.log1p(-self.stat64) if kind == "ale" else None
        sizes = np.bincount(cols, minlength=n_clusters).astype(np.float64)
        self.means = sparse.csr_matrix(
            (1.0 / sizes[cols], (np.arange(len(cols)), cols)), shape=(len(cols), n_clusters))
        self.n = float(n_experiments)

    def get_params(self, deep=False):  # names the reduction in the pass's task keys
        import dask

        return {"token": dask.base.tokenize(self.kind, self.voxels, self.stat32,
                                            self.means.data, self.means.indices, self.n)}

    def _add_block(self, block, weights, total, with_summaries):
        ma = np.asarray(block[:, self.voxels], dtype=np.float32)
        if self.kind == "ale":
            # float32 log1p as the fit's; the fold's log-sum in float64, its ALE in float32.
            f = np.log1p(-ma).astype(np.float64)
            without = (1.0 - np.exp(self.log_rest[None, :] - f)).astype(np.float32)
            without = np.where(ma == 0, self.stat32[None, :], without)
        else:
            w = weights.toarray()[0]
            scale = (self.n - 1.0) / (self.n - w)
            without = (scale[:, None] * (self.stat64[None, :] - w[:, None] * ma)).astype(
                np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            prop = np.nan_to_num(np.true_divide(without, self.stat32[None, :]))
        contrib = (1.0 - prop).astype(np.float64)
        return list(np.asarray(self.means.T @ contrib.T).T)


class _PairLeaveOneOut:
    """Row reduction of a pairwise result: each row's mean ``1 - target_without / target``
    over each cluster, the row left out of group ``group`` (0 or 1).

    ``kind`` ``"chi2"`` (MKDAChi2, target ``z_desc-association``): the group's counts minus
    the row, its size minus one, NiMARE's two-way chi2 and sign; ``"ale"``
    (ALESubtraction, target ``stat_desc-group1MinusGroup2``): the group's ALE without the
    row (its log-sum minus ``log1p(-MA_i)``), minus (or from) the other group's ALE.
    """

    def __init__(self, kind, group, target, voxels, cols, n_clusters, **parts):
        self.kind = kind
        self.group = int(group)
        self.voxels = np.asarray(voxels, dtype=np.int64)
        self.target32 = np.asarray(target, dtype=np.float32)[self.voxels]
        self.parts = {k: (np.asarray(v)[self.voxels] if np.ndim(v) else v)
                      for k, v in parts.items()}
        if kind == "ale":
            self.parts["log_rest"] = np.log1p(-self.parts["own"].astype(np.float64))
        sizes = np.bincount(cols, minlength=n_clusters).astype(np.float64)
        self.means = sparse.csr_matrix(
            (1.0 / sizes[cols], (np.arange(len(cols)), cols)), shape=(len(cols), n_clusters))

    def get_params(self, deep=False):  # names the reduction in the pass's task keys
        import dask

        return {"token": dask.base.tokenize(
            "pair", self.kind, self.group, self.voxels, self.target32, self.means.data,
            self.means.indices, sorted((k, np.asarray(v).tobytes()) for k, v in
                                       self.parts.items()))}

    def _without(self, ma):
        p = self.parts
        if self.kind == "ale":
            f = np.log1p(-ma).astype(np.float64)
            own = (1.0 - np.exp(p["log_rest"][None, :] - f)).astype(np.float32)
            own = np.where(ma == 0, p["own"][None, :], own)
            if self.group == 0:
                return own - p["other"][None, :]
            return p["other"][None, :] - own
        a, b = p["a"][None, :], p["b"][None, :]
        n1, n2 = p["n1"], p["n2"]
        if self.group == 0:
            a, n1 = a - ma, n1 - 1.0
        else:
            b, n2 = b - ma, n2 - 1.0
        chi2 = two_way_counts(a, b, n1, n2)
        return (np.sqrt(chi2) * np.sign(a / n1 - b / n2)).astype(np.float32)

    def _add_block(self, block, weights, total, with_summaries):
        ma = np.asarray(block[:, self.voxels], dtype=np.float32)
        if self.kind == "chi2":
            ma = ma.astype(np.float64)
        without = self._without(ma)
        with np.errstate(divide="ignore", invalid="ignore"):
            prop = np.nan_to_num(np.true_divide(without, self.target32[None, :]))
        contrib = (1.0 - prop).astype(np.float64)
        return list(np.asarray(self.means.T @ contrib.T).T)


def _cluster_columns(n_voxels, labels, cluster_ids):
    """``(voxels, cols, n_columns)``: the voxels of the clusters of every tail, each with its
    column (clusters numbered tail after tail, in ``cluster_ids`` order)."""
    cols = np.full(n_voxels, -1, dtype=np.int64)
    offset = 0
    for lab, cids in zip(labels, cluster_ids, strict=True):
        position = np.full(int(lab.max()) + 1, -1, dtype=np.int64)
        position[cids] = np.arange(len(cids)) + offset
        inside = lab > 0
        cols[inside] = position[lab[inside]]
        offset += len(cids)
    voxels = np.flatnonzero(cols >= 0)
    return voxels, cols[voxels], offset


@fill_doc
class Jackknife(Diagnostics):
    """Each experiment's contribution to each cluster of a thresholded map (NiMARE's
    ``Jackknife``): the mean over the cluster's voxels of the proportional drop of the
    statistic when the experiment is left out.

    All leave-one-out folds are one pass over the fit's MA rows (combined from its foci, or
    read from its Collection): a fold's statistic is the full fit's minus one row, and only
    the clusters' voxels are read out.

    Parameters
    ----------
    %(diagnostic_target)s
    n_cores : int
        Accepted for NiMARE compatibility (the active Dask client does the work).
    target_threshold : float, optional
        Threshold of the target map (default 0).

    Notes
    -----
    Supports results of :class:`~daskmeta.estimators.ALE`,
    :class:`~daskmeta.estimators.MKDADensity` and :class:`~daskmeta.estimators.KDA` fits,
    and the pairwise results of :class:`~daskmeta.estimators.MKDAChi2` (target values
    ``z_desc-association``; a fold is the group's counts minus one row, its size minus one)
    and :class:`~daskmeta.estimators.ALESubtraction` (target values
    ``stat_desc-group1MinusGroup2``; a fold is one group's ALE without one row), NiMARE's
    ``Jackknife`` with the experiment left out of the group of the cluster's tail.
    Tables as NiMARE's (see :meth:`Diagnostics.transform`); values are float64 (NiMARE's
    float32 objects agree to about 1e-6).
    """

    def _contributions(self, result, est, labels, cluster_ids):
        from daskmeta.estimators import ALE, KDA, MKDADensity

        if isinstance(est, ALE):
            kind = "ale"
        elif isinstance(est, MKDADensity | KDA):
            kind = "sum"
        else:
            raise DaskmetaError(f"Jackknife supports ALE, MKDADensity and KDA results; this "
                                f"result comes from {type(est).__name__}")
        n = est.plan_.n_rows
        if n < 2:
            raise DaskmetaError(f"Jackknife needs at least 2 experiments to leave one out; "
                                f"this result was fitted on {n}")
        if "stat" not in result.maps:
            raise DaskmetaError("Jackknife needs the result's 'stat' map")
        # One column per cluster of every tail, so all tails share the one pass.
        voxels, cols, offset = _cluster_columns(result.space.n_voxels, labels, cluster_ids)
        reduction = _LeaveOneOut(kind, result.get_map("stat", "array"), voxels, cols,
                                 offset, n)
        weights = np.asarray(est._selection_weights(n), dtype=np.float64)[None, :]
        values = np.asarray(row_pass(est, reduction, weights), dtype=np.float64)
        values = values.reshape(n, offset)
        bounds = np.cumsum([0] + [len(c) for c in cluster_ids])
        return [values[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _pair_contributions(self, result, est, group, members, labels, cluster_ids):
        from daskmeta.estimators import ALESubtraction, MKDAChi2

        name = type(est).__name__
        n = len(members)
        if n < 2:
            raise DaskmetaError(f"Jackknife needs at least 2 experiments in group {group + 1} "
                                f"to leave one out; this {name} result has {n}")
        voxels, cols, n_clusters = _cluster_columns(result.space.n_voxels, [labels],
                                                    [cluster_ids])
        if isinstance(est, MKDAChi2):
            counts = _chi2_counts(result, est)
            reduction = _PairLeaveOneOut("chi2", group, _need(result, "z_desc-association"),
                                         voxels, cols, n_clusters, **counts)
        elif type(est) is ALESubtraction:
            stats = [_need(result, f"stat_desc-group{g}") for g in (1, 2)]
            reduction = _PairLeaveOneOut(
                "ale", group, _need(result, "stat_desc-group1MinusGroup2"), voxels, cols,
                n_clusters, own=np.asarray(stats[group], dtype=np.float32),
                other=np.asarray(stats[1 - group], dtype=np.float32))
        else:
            raise DaskmetaError(f"Jackknife supports the pairwise results of MKDAChi2 and "
                                f"ALESubtraction; this result comes from {name}")
        values = row_pass(est, reduction, np.ones((1, n)), members)
        return np.asarray(values, dtype=np.float64).reshape(n, n_clusters)


def _need(result, name):
    if name not in result.maps:
        raise DaskmetaError(f"Jackknife needs the result's {name!r} map; available: "
                            f"{', '.join(result.map_names)}")
    return result.get_map(name, "array")


def _chi2_counts(result, est) -> dict:
    """The groups' per-voxel sums of MA values (counts of active experiments times the
    kernel's value) and sizes of an MKDAChi2 fit, from its ``prob_desc-AgF`` /
    ``prob_desc-AgU`` maps (float32 of ``count / n``: exact after rounding)."""
    n1, n2 = (float(g.sum()) for g in est.groups_)
    value = float(est.kernel_.value)
    out = {"n1": n1, "n2": n2}
    for key, prob, n in (("a", "prob_desc-AgF", n1), ("b", "prob_desc-AgU", n2)):
        p = np.asarray(_need(result, prob), dtype=np.float64)
        out[key] = np.rint(p * n / value) * value
    return out
