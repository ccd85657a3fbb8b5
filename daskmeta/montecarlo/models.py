"""What a Monte Carlo iteration does: draw a null data set (a :class:`NullModel`) and
summarise its statistic (a :class:`Summary`).

An estimator plugs into the runner (:func:`daskmeta.montecarlo.run_montecarlo`) by returning
a null model from its fitted snapshot; a correction chooses the summary. Built in:

- :class:`FociNull`: every focus of the fitted dataset moves to a voxel drawn by a sampler
  (:class:`UniformFoci`, NiMARE's null; :class:`BaseRateFoci`, voxels drawn in proportion to
  a base-rate map, SCALE's null), same foci per experiment, same kernels and weights; the MA
  combine is the fits' own compiled code (:mod:`daskmeta._combine`), so with the real foci the
  null's statistic is the fitted ``stat`` map bit for bit.
- :class:`MaxStatistic`, :class:`ClusterMaxima` (largest face-connected cluster's size and
  mass above a threshold, with the maximum), :class:`VoxelExceedances` (per voxel, the
  iterations whose statistic reaches an observed map: permutation p-values of every voxel).

Other nulls (a permutation of group labels, sign flips of images) are null models with their
own ``draw`` and ``statistic``; other summaries are :class:`Summary` subclasses.
"""

from __future__ import annotations

import math
import threading

import dask
import numpy as np
from scipy import ndimage

from daskmeta._combine import IterationSummary, _own, combine_context
from daskmeta._combine import zeroed as _zeroed
from daskmeta._summary_kernels import STAT_ALE, STAT_IDENTITY
from daskmeta.exceptions import DaskmetaError

__all__ = ["BaseRateFoci", "ClusterMaxima", "FociNull", "MaxStatistic", "NullModel",
           "Summary", "UniformFoci", "VoxelExceedances"]

#: Slack on the ALE log-domain pre-test; candidates are then checked exactly in float32.
_LOG_SLACK = 1e-7
_FACES = ndimage.generate_binary_structure(3, 1)
#: Each thread's last iteration workspace (:meth:`FociNull._take_workspace`).
_WORKSPACES = threading.local()
#: Foci placements (iterations x foci) one compiled call of a null batch runs at most: the
#: placements are drawn before the call (8 bytes each).
_FOCI_PER_CALL = 1 << 20
#: Cluster outputs of a summary without clusters (never written).
_NO_SIZE = np.zeros(1, dtype=np.int64)
_NO_MASS = np.zeros(1, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# summaries: what an iteration returns
# --------------------------------------------------------------------------------------------
class Summary:
    """What each Monte Carlo iteration returns.

    Subclasses set ``keys`` (the names of the values), ``per_iteration`` (True: one value
    per iteration and key, concatenated in iteration order; False: arrays summed over
    iterations, e.g. per-voxel counts) and implement :meth:`record`. A per-iteration summary
    may also name some of its keys in ``summed_keys``: those are summed over iterations.
    """

    keys: tuple = ()
    per_iteration = True
    summed_keys: tuple = ()
    #: Keys whose 95th percentile early stopping watches.
    early_stop_keys: tuple = ()

    @property
    def token(self) -> str:
        return dask.base.tokenize(type(self).__name__, self._token_parts())

    def _token_parts(self):
        return ()

    def start(self, n_iters: int, n_voxels: int) -> dict:
        """Empty outputs of a batch of ``n_iters`` iterations."""
        return {k: np.zeros(n_iters) for k in self.keys}

    def record(self, out: dict, i: int, stat: np.ndarray, geometry) -> None:
        """Record iteration ``i``'s statistic (float32 over in-mask voxels) into ``out``.
        ``geometry`` is the Space-like object of the null (``mask``, ``shape``)."""
        raise NotImplementedError


class MaxStatistic(Summary):
    """The maximum statistic of each iteration (voxel-level FWE)."""

    keys = ("max_stat",)
    early_stop_keys = ("max_stat",)

    def start(self, n_iters, n_voxels):
        return {"max_stat": np.zeros(n_iters, dtype=np.float32)}

    def record(self, out, i, stat, geometry):
        out["max_stat"][i] = np.max(stat) if stat.size else 0.0


class ClusterMaxima(Summary):
    """The maximum statistic and the largest cluster's size and mass of each iteration.

    Clusters are face-connected voxels whose statistic exceeds ``threshold`` (compared in
    float64 with the float32 statistic, as NumPy compares); mass is ``sum(stat -
    threshold)`` over a cluster. Iterations with no cluster record 0.
    """

    keys = ("max_stat", "max_size", "max_mass")
    early_stop_keys = ("max_stat", "max_size")

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        if not np.isfinite(self.threshold):
            raise DaskmetaError(f"cluster-forming threshold must be finite; got {threshold!r}")

    def _token_parts(self):
        return (self.threshold,)

    def start(self, n_iters, n_voxels):
        return {"max_stat": np.zeros(n_iters, dtype=np.float32),
                "max_size": np.zeros(n_iters, dtype=np.int64),
                "max_mass": np.zeros(n_iters, dtype=np.float64)}

    def record(self, out, i, stat, geometry):
        vol = np.zeros(geometry.shape, dtype=np.float32)
        vol[geometry.mask] = stat
        out["max_stat"][i] = np.max(stat) if stat.size else 0.0
        supra = vol > self.threshold
        labels, n = ndimage.label(supra, _FACES)
        if n:
            lab = labels[supra]
            out["max_size"][i] = int(np.bincount(lab).max())
            out["max_mass"][i] = float(np.bincount(
                lab, weights=vol[supra].astype(np.float64) - self.threshold).max())


class VoxelExceedances(Summary):
    """Per voxel, the number of iterations whose statistic is >= the observed one (summed
    over iterations: ``(count + 1) / (n + 1)`` is a permutation p-value of each voxel)."""

    keys = ("exceedances",)
    per_iteration = False

    def __init__(self, observed):
        self.observed = np.asarray(observed, dtype=np.float32)

    def _token_parts(self):
        return (self.observed,)

    def start(self, n_iters, n_voxels):
        return {"exceedances": np.zeros(n_voxels, dtype=np.int64)}

    def record(self, out, i, stat, geometry):
        out["exceedances"] += stat >= self.observed


# --------------------------------------------------------------------------------------------
# samplers: where null foci go
# --------------------------------------------------------------------------------------------
class UniformFoci:
    """Null foci at in-mask voxels drawn uniformly (NiMARE's Monte Carlo null)."""

    def token(self) -> str:
        return "uniform"

    def draw(self, rng, n_foci: int, n_voxels: int) -> np.ndarray:
        return rng.integers(0, n_voxels, size=n_foci)


class BaseRateFoci:
    """Null foci at in-mask voxels drawn in proportion to a base-rate map (SCALE's null:
    Langner et al., 2014).

    Parameters
    ----------
    probabilities : (n_voxels,) array
        Non-negative weights over the in-mask voxels (e.g. how many foci of a database fall
        in each voxel); normalised here.
    """

    def __init__(self, probabilities):
        p = np.asarray(probabilities, dtype=np.float64).ravel()
        if not (np.all(np.isfinite(p)) and np.all(p >= 0) and p.sum() > 0):
            raise DaskmetaError("base-rate probabilities must be finite, >= 0 and not all 0")
        self.cdf = np.cumsum(p / p.sum())

    def token(self) -> str:
        return dask.base.tokenize("base-rate", self.cdf)

    def draw(self, rng, n_foci: int, n_voxels: int) -> np.ndarray:
        if len(self.cdf) != n_voxels:
            raise DaskmetaError(f"the base rate covers {len(self.cdf)} voxels; the mask has "
                                f"{n_voxels}")
        idx = np.searchsorted(self.cdf, rng.random(n_foci) * self.cdf[-1], side="right")
        return np.minimum(idx, n_voxels - 1)


# --------------------------------------------------------------------------------------------
# null models: how one null data set is drawn and its statistic computed
# --------------------------------------------------------------------------------------------
class NullModel:
    """How one null data set is drawn and its statistic computed (subclass this).

    A model is small and picklable (it is shipped once to every worker); ``token`` names its
    contents. :meth:`run_batch` runs iterations; the default draws with :meth:`draw` and
    computes :meth:`statistic`, then lets the summary record it.
    """

    token: str = ""
    n_voxels: int = 0

    @property
    def geometry(self):
        """Object with ``mask`` and ``shape`` for cluster summaries."""
        raise NotImplementedError

    def draw(self, rng):
        """One null data set."""
        raise NotImplementedError

    def statistic(self, drawn) -> np.ndarray:
        """The statistic (float32 over in-mask voxels) of a null data set."""
        raise NotImplementedError

    def run_batch(self, summary: Summary, rng, n_iters: int) -> dict:
        out = summary.start(n_iters, self.n_voxels)
        for i in range(n_iters):
            summary.record(out, i, self.statistic(self.draw(rng)), self.geometry)
        return out


class _Geometry:
    def __init__(self, mask):
        self.mask = mask
        self.shape = mask.shape

    @classmethod
    def of_packed(cls, model) -> _Geometry:
        """The geometry of a null model whose mask travels as packed bits (``mask_bits``,
        ``shape``), unpacked once per process (``_geometry``, left out of its pickle)."""
        if "_geometry" not in model.__dict__:
            mask = np.unpackbits(model.mask_bits, count=int(np.prod(model.shape)))
            model._geometry = cls(mask.astype(bool).reshape(model.shape))
        return model._geometry


class FociNull(NullModel):
    """Null data sets of relocated foci for a coordinate-based estimator.

    Built by an estimator from its fitted snapshot (``estimator._null_model()``).

    Parameters
    ----------
    plan : KernelPlan
        Foci per experiment and kernel supports of the fit.
    weights : (n_experiments,) array
        Experiment weights of the fit.
    func : callable
        The estimator's elementwise ``f`` of MA values (``_block_values``).
    func_name : str
        Names ``func`` (the estimator class: ``f`` depends on nothing else), so fits and
        nulls of one process share the combine's lookup tables.
    params : str
        Names everything else the statistic depends on (the estimator's parameters).
    stat : {"ale", "identity"} or callable
        The statistic from the weighted sum: built in (computed in compiled code, fused with
        the summary), or the estimator's own ``_stat`` (a Python function of the float64
        sum; then summaries run in NumPy).
    sampler : UniformFoci or BaseRateFoci, optional
        Where foci go (default uniform).
    """

    def __init__(self, plan, weights, func, func_name: str, stat="identity", sampler=None,
                 params: str = ""):
        self.shape = tuple(int(s) for s in plan.shape)
        mask = plan.mask
        self.mask_bits = np.packbits(mask.reshape(-1))
        self.n_voxels = int(plan.n_voxels)
        self.row_start = np.ascontiguousarray(plan.row_start, dtype=np.int64)
        self.row_kernel = np.ascontiguousarray(plan.row_kernel, dtype=np.int64)
        self.k_start = np.asarray(plan.k_start)
        self.k_offsets = np.asarray(plan.k_offsets)
        self.k_values = np.asarray(plan.k_values)
        self.add_mode = plan.mode == 2
        n_rows = len(self.row_start) - 1
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        if self.weights.shape != (n_rows,):
            raise DaskmetaError(f"expected {n_rows} experiment weights; got shape "
                                f"{self.weights.shape}")
        self.func = func
        self.stat = stat
        self.sampler = sampler if sampler is not None else UniformFoci()
        self.context_token = f"{plan.support_token}-{func_name}"
        self.token = dask.base.tokenize(self.context_token, self.row_start, self.row_kernel,
                                        self.weights, self.add_mode, func_name, params,
                                        stat if isinstance(stat, str) else "python",
                                        self.sampler.token())

    @property
    def n_foci(self) -> int:
        return int(self.row_start[-1])

    @property
    def n_experiments(self) -> int:
        return len(self.row_start) - 1

    def work_per_iteration(self) -> int:
        """Kernel support voxels visited per iteration (sum over foci of support sizes)."""
        sizes = np.diff(self.k_start)[self.row_kernel]
        return int(np.sum(sizes * np.diff(self.row_start)))

    @property
    def geometry(self):
        return _Geometry.of_packed(self)

    def context(self):
        """The combine's lookup tables, built once per process."""
        return combine_context(self.context_token, self.geometry.mask, self.k_start,
                               self.k_offsets, self.k_values, self.func)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_geometry", None)
        return state

    # -- one iteration ----------------------------------------------------------------------
    def _compiled_kind(self, summary):
        if isinstance(self.stat, str) and type(summary) in (MaxStatistic, ClusterMaxima):
            return STAT_ALE if self.stat == "ale" else STAT_IDENTITY
        return None

    #: Sums at padded-volume addresses (:func:`daskmeta._combine.combine`'s ``padded``): the
    #: supports' runs are added whole, with no walk along the mask's segments.
    _padded = True

    def _take_workspace(self, ctx) -> dict:
        """Zeroed scratch of an iteration: this thread's last one if it was this model's (a
        batch of 1 ms iterations should not spend its time zeroing fresh pages). Return it
        with :meth:`_give_back` once its in-mask sums are zero again; a batch that fails
        keeps it."""
        ws = getattr(_WORKSPACES, "ws", None)
        _WORKSPACES.ws = None
        if ws is not None and ws["token"] == self.token:
            return ws
        n = self.n_voxels
        return {"token": self.token,
                "acc": _zeroed((1, ctx.padded_size if self._padded else n), np.float64),
                "scratch": ctx.scratch(self.row_start, self.row_kernel, self._padded),
                "mark": _zeroed(n, np.int64), "visited": _zeroed(n, np.int64),
                "sval": _zeroed(n, np.float32), "supra": _zeroed(n, np.int32),
                "stack": _zeroed(n, np.int32), "itag": 0,
                "row_start": _own(self.row_start, np.int64),
                "row_kernel": _own(self.row_kernel, np.int64),
                "sel": (np.arange(self.n_experiments + 1, dtype=np.int64),
                        np.zeros(self.n_experiments, dtype=np.int64),
                        _own(self.weights, np.float64))}

    @staticmethod
    def _give_back(ws: dict) -> None:
        _WORKSPACES.ws = ws

    def _combine(self, ctx, ws, focus_base, summary=None):
        ctx.run(focus_base, ws["row_start"], ws["row_kernel"], self.add_mode, ws["sel"],
                ws["acc"], ws["scratch"], padded=self._padded, summary=summary)

    def _take_sums(self, ctx, ws) -> np.ndarray:
        """The in-mask sums of the last combine (float64, a copy), zeroed in ``ws``."""
        acc = ws["acc"][0]
        if not self._padded:
            sums = acc.copy()
            acc[:] = 0.0
            return sums
        sums = acc[ctx.voxel_base]
        acc[ctx.voxel_base] = 0.0
        return sums

    def _statistic_of_base(self, focus_base) -> np.ndarray:
        ctx = self.context()
        ws = self._take_workspace(ctx)
        self._combine(ctx, ws, focus_base)
        stat = self._stat_of(self._take_sums(ctx, ws))
        self._give_back(ws)
        return stat

    def _stat_of(self, acc) -> np.ndarray:
        if self.stat == "ale":
            return (1.0 - np.exp(acc)).astype(np.float32)
        if self.stat == "identity":
            return acc.astype(np.float32)
        return np.asarray(self.stat(acc), dtype=np.float32)

    def draw(self, rng):
        return self.sampler.draw(rng, self.n_foci, self.n_voxels)

    def statistic(self, drawn) -> np.ndarray:
        return self._statistic_of_base(self.context().voxel_base[np.asarray(drawn)])

    def run_batch(self, summary, rng, n_iters, fixed_base=None):
        """Run ``n_iters`` iterations (with ``fixed_base``, foci at those padded addresses
        instead of drawn ones: for checking)."""
        kind = self._compiled_kind(summary)
        ctx = self.context()
        ws = self._take_workspace(ctx)
        out = summary.start(n_iters, self.n_voxels)
        if kind is None:
            for i in range(n_iters):
                self._combine(ctx, ws, ctx.voxel_base[self.draw(rng)] if fixed_base is None
                              else fixed_base)
                summary.record(out, i, self._stat_of(self._take_sums(ctx, ws)),
                               self.geometry)
            self._give_back(ws)
            return out
        clusters = isinstance(summary, ClusterMaxima)
        thr = summary.threshold if clusters else np.inf
        lthr = (math.log1p(-thr) + _LOG_SLACK if kind == STAT_ALE and clusters and thr < 1
                else 0.0)
        # Iterations run in compiled calls of up to _FOCI_PER_CALL foci placements: combine
        # and summary, iteration after iteration, with the GIL released (a 2-core machine
        # loses several percent to two GIL acquisitions per iteration).
        per_call = max(1, _FOCI_PER_CALL // max(1, self.n_foci))
        for i0 in range(0, n_iters, per_call):
            i1 = min(n_iters, i0 + per_call)
            if fixed_base is None:
                bases = np.empty((i1 - i0, self.n_foci), dtype=np.int64)
                for i in range(i1 - i0):
                    bases[i] = ctx.voxel_base[self.draw(rng)]
            else:
                bases = np.tile(np.asarray(fixed_base, dtype=np.int64), (i1 - i0, 1))
            isum = IterationSummary(
                kind=kind, thr=thr, lthr=lthr, clusters=clusters, mark=ws["mark"],
                visited=ws["visited"], sval=ws["sval"], supra=ws["supra"], stack=ws["stack"],
                itag=ws["itag"], out_stat=out["max_stat"][i0:i1],
                out_size=out["max_size"][i0:i1] if clusters else _NO_SIZE,
                out_mass=out["max_mass"][i0:i1] if clusters else _NO_MASS)
            self._combine(ctx, ws, bases, isum)
            ws["itag"] = isum.itag
        self._give_back(ws)  # the summary zeroed the sums
        return out

    # -- checking ---------------------------------------------------------------------------
    def _fixed_base(self, ctx, focus_ijk) -> np.ndarray:
        ijk = np.asarray(focus_ijk, dtype=np.int64).reshape(-1, 3)
        if len(ijk) != self.n_foci:
            raise DaskmetaError(f"expected {self.n_foci} foci; got {len(ijk)}")
        if (ijk < 0).any() or (ijk >= np.asarray(self.shape)).any():
            raise DaskmetaError("foci must lie on the mask's grid")
        return ctx.focus_base(ijk)

    def statistic_at(self, focus_ijk) -> np.ndarray:
        """The null's statistic with the foci at ``focus_ijk`` (voxel indices on the grid, in
        the plan's focus order): with the fit's own foci it is the fitted ``stat`` map."""
        return self._statistic_of_base(self._fixed_base(self.context(), focus_ijk))

    def summary_at(self, summary: Summary, focus_ijk) -> dict:
        """One iteration's summary with the foci at ``focus_ijk`` (the compiled path for the
        built-in statistics and summaries, as the runner uses it)."""
        base = self._fixed_base(self.context(), focus_ijk)
        return {k: v[0] for k, v in self.run_batch(summary, None, 1, base).items()}
