"""Random-foci null of a contrast (NiMARE's ``MKDAChi2(fwe_null_method="random-foci")``):
every focus of both groups moves to an in-mask voxel drawn by a sampler (uniform by
default), each experiment keeping its number of foci and its group, and the contrast's
statistic is computed from the two groups' sums.

:class:`PairFociNull` is a :class:`~daskmeta.montecarlo.FociNull` whose combine adds each
experiment into the row of its group (two accumulator rows, one compiled combine per
iteration) and whose statistic is a :class:`~daskmeta.montecarlo.permutation.PairStatistic`
of the two sums (e.g. MKDAChi2's three chi2 maps, summarised per map with
:class:`~daskmeta.montecarlo.permutation.PerMap`). Draws come from the batch's seeded
generator, so a seed gives the same null on any number of workers.
"""

from __future__ import annotations

import dask
import numpy as np

from daskmeta._combine import _own
from daskmeta.exceptions import DaskmetaError
from daskmeta.montecarlo.models import ClusterMaxima, FociNull, MaxStatistic, Summary
from daskmeta.montecarlo.permutation import PerMap, summarize_per_map

__all__ = ["PairFociNull"]


class PairFociNull(FociNull):
    """Relocated foci of two groups, their contrast's statistic.

    Parameters
    ----------
    plan : KernelPlan
        The pooled experiments' foci and kernels (the contrast's fitted plan).
    in_first : (n_experiments,) bool array
        Which experiments of the plan are group 1.
    func, func_name : callable, str
        The estimator's elementwise ``f`` of MA values and its name (see
        :class:`~daskmeta.montecarlo.FociNull`).
    statistic : PairStatistic
        The contrast's statistic from the groups' float64 sums and sizes.
    sampler : UniformFoci or BaseRateFoci, optional
        Where foci go (default uniform in the mask, NiMARE's).
    params : str
        Names everything else the statistic depends on.
    """

    def __init__(self, plan, in_first, func, func_name: str, statistic, sampler=None,
                 params: str = ""):
        in_first = np.asarray(in_first, dtype=bool)
        if in_first.shape != (plan.n_rows,):
            raise DaskmetaError(f"expected {plan.n_rows} group labels; got shape "
                                f"{in_first.shape}")
        super().__init__(plan, np.ones(plan.n_rows), func, func_name, stat="identity",
                         sampler=sampler, params=params)
        self.group = np.where(in_first, 0, 1).astype(np.int64)
        self.n1 = int(in_first.sum())
        self.n2 = int(plan.n_rows - self.n1)
        if self.n1 == 0 or self.n2 == 0:
            raise DaskmetaError("a random-foci null of a contrast needs two non-empty groups")
        self.statistic_ = statistic
        self.token = dask.base.tokenize("pair-foci", self.token, self.group, statistic.token)

    #: Two rows of in-mask sums (the contrast's statistic reads them whole).
    _padded = False

    def _take_workspace(self, ctx) -> dict:
        ws = super()._take_workspace(ctx)
        if ws["acc"].shape[0] != 2:
            n = self.n_voxels
            ws["acc"] = np.zeros((2, n))
            ws["sel"] = (np.arange(self.n_experiments + 1, dtype=np.int64),
                         _own(self.group, np.int64), _own(self.weights, np.float64))
        return ws

    def _pair_statistic(self, acc, ws):
        """The statistic of the two sums in ``acc`` (then zeroed)."""
        s1, s2 = acc[0], acc[1]
        into = getattr(self.statistic_, "into", None)
        if into is None:
            stat = self.statistic_(s1.copy(), s2.copy(), self.n1, self.n2)
        else:
            if "maps" not in ws:
                ws["maps"] = self.statistic_.empty(self.n_voxels)
            stat = into(s1, s2, self.n1, self.n2, ws["maps"])
        acc[:] = 0.0
        return stat

    def _statistic_of_base(self, focus_base):
        ctx = self.context()
        ws = self._take_workspace(ctx)
        self._combine(ctx, ws, focus_base)
        stat = self._pair_statistic(ws["acc"], ws)
        stat = {k: v.copy() for k, v in stat.items()} if isinstance(stat, dict) else stat.copy()
        self._give_back(ws)
        return stat

    def run_batch(self, summary: Summary, rng, n_iters: int, fixed_base=None) -> dict:
        ctx = self.context()
        ws = self._take_workspace(ctx)
        out = summary.start(n_iters, self.n_voxels)
        fast = (isinstance(summary, PerMap)
                and type(summary.summary) in (ClusterMaxima, MaxStatistic)
                and bool(getattr(self.statistic_, "non_negative", False)))
        for i in range(n_iters):
            self._combine(ctx, ws, ctx.voxel_base[self.draw(rng)] if fixed_base is None
                          else fixed_base)
            stat = self._pair_statistic(ws["acc"], ws)
            if fast:
                self._summarize(summary, out, i, stat, ws)
            else:
                summary.record(out, i, stat, self.geometry)
        self._give_back(ws)
        return out

    def _summarize(self, summary, out, i, stat, ws) -> None:
        """The maximum (and cluster maxima) of each non-negative map in compiled code, as
        :class:`~daskmeta.montecarlo.permutation.GroupPermutation` does."""
        summarize_per_map(ws, self.token, self.geometry.mask, summary, out, i, stat)
