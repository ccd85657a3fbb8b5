"""Jackknife: each experiment's contribution to each cluster, from every leave-one-out fold
computed as one pass over the experiments' MA rows.

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
    target_image : str
        The map whose clusters are characterised (default
        ``z_desc-size_level-cluster_corr-FWE_method-montecarlo``).
    voxel_thresh : float, optional
        NiMARE's older name of ``target_threshold``.
    cluster_threshold : int, optional
        Smallest cluster, in voxels.
    display_second_group : bool
        NiMARE's option for pairwise results (not supported yet).
    n_cores : int
        Accepted for NiMARE compatibility (the active Dask client does the work).
    target_threshold : float, optional
        Threshold of the target map (default 0).

    Notes
    -----
    Supports results of :class:`~daskmeta.estimators.ALE`,
    :class:`~daskmeta.estimators.MKDADensity` and :class:`~daskmeta.estimators.KDA` fits.
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
        cols = np.full(result.space.n_voxels, -1, dtype=np.int64)
        offset = 0
        for lab, cids in zip(labels, cluster_ids, strict=True):
            position = np.full(int(lab.max()) + 1, -1, dtype=np.int64)
            position[cids] = np.arange(len(cids)) + offset
            inside = lab > 0
            cols[inside] = position[lab[inside]]
            offset += len(cids)
        voxels = np.flatnonzero(cols >= 0)
        reduction = _LeaveOneOut(kind, result.get_map("stat", "array"), voxels, cols[voxels],
                                 offset, n)
        weights = np.asarray(est._selection_weights(n), dtype=np.float64)[None, :]
        values = np.asarray(row_pass(est, reduction, weights), dtype=np.float64)
        values = values.reshape(n, offset)
        bounds = np.cumsum([0] + [len(c) for c in cluster_ids])
        return [values[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
