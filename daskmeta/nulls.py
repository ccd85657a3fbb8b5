"""Monte Carlo null distributions of the maximum statistic, cluster size and cluster mass.

One Monte Carlo iteration relocates every focus of the fitted dataset to a voxel drawn
uniformly from the in-mask voxels (the same number of foci per experiment, the same kernels
and weights), recomputes the summary statistic over the in-mask voxels, and keeps three
numbers: the maximum statistic, the size of the largest supra-threshold cluster and the
largest cluster mass (sum of ``stat - threshold`` over a cluster), clusters being
face-connected voxels whose statistic exceeds the cluster-forming threshold. These are the
nulls of NiMARE's ``correct_fwe_montecarlo``.

The iteration is compiled (numba) and never builds the experiments x voxels MA matrix. The
kernel supports of the plan are cut into runs along the grid's last axis, and a padded lookup
volume cuts each run into segments of consecutive in-mask voxels, so every update is a
contiguous, vectorised loop with no bounds check. Each experiment's foci are gathered in a
scratch vector touched only at their supports (the maximum MA, as ``log(1 - MA)``, for ALE;
a set for MKDA; a plain sum for KDA), added once to one float64 vector over the in-mask
voxels in experiment order (the same sums as NiMARE's), and the touched segments reset. One
pass over that vector gives the maximum and the supra-threshold voxels, which a flood fill
over the padded volume labels. Nothing voxel-sized is allocated per iteration.

Iterations are cut into batches of ``batch_size``; batch ``b`` draws its foci from
``numpy.random.SeedSequence(seed).spawn(n_batches)[b]`` and returns only its per-iteration
maxima. The batches depend only on ``n_iters``, ``batch_size`` and ``seed``, so a run gives
identical nulls on the local threaded scheduler, on one worker or on many, and a batch lost
with a worker is recomputed to the same numbers.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numba
import numpy as np

from daskmeta.cluster import active_client
from daskmeta.exceptions import DaskmetaError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MonteCarloNulls",
    "MonteCarloSpec",
    "batch_bounds",
    "batch_seed",
    "make_spec",
    "maxima_at",
    "montecarlo_spec",
    "null_to_p",
    "run_batch",
    "run_montecarlo",
    "stat_map",
    "threshold_relative_se",
]

#: Iterations per batch (one Dask task) when ``batch_size`` is not given.
DEFAULT_BATCH_SIZE = 100
#: Early stopping checks the Monte Carlo error after rounds of about this fraction of the
#: batches (at least one batch per round).
_ROUND_FRACTION = 0.1

STAT_ALE, STAT_COVERAGE, STAT_SUM = 0, 1, 2
_STAT_NAMES = {STAT_ALE: "ale", STAT_COVERAGE: "weighted-coverage", STAT_SUM: "sum"}
#: Slack on the ALE log-domain pre-test; candidates are then checked exactly in float32.
_LOG_SLACK = 1e-7


# --------------------------------------------------------------------------------------------
# compiled hot path
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _segments_of_lines(lut3, seg3):
    """Signed run lengths along the last axis: ``n > 0`` in-mask voxels start here (and are
    numbered consecutively), ``n < 0``: ``-n`` voxels outside the mask start here."""
    nx, ny, nz = lut3.shape
    for i in range(nx):
        for j in range(ny):
            run_in = 0
            run_out = 0
            for k in range(nz - 1, -1, -1):
                if lut3[i, j, k] >= 0:
                    run_out = 0
                    if k + 1 < nz and lut3[i, j, k + 1] == lut3[i, j, k] + 1:
                        run_in += 1
                    else:
                        run_in = 1
                    seg3[i, j, k] = run_in
                else:
                    run_in = 0
                    run_out += 1
                    seg3[i, j, k] = -run_out


@numba.njit(cache=True, nogil=True)
def _accumulate(focus_base, row_start, row_kernel, r_start, r_delta, r_len, r_val0, k_val,
                k_rank, rank_val, weights, kind, lut, seg, acc, best, rec_pos, rec_len):
    """Add every experiment's MA contribution into ``acc`` (a vector over in-mask voxels).

    Kernel supports are stored as runs along the grid's last axis: run ``r`` starts at the
    padded-volume address offset ``r_delta[r]``, has ``r_len[r]`` voxels, and its values are
    ``k_val[r_val0[r]:r_val0[r] + r_len[r]]``. ``seg`` cuts each run into segments of
    consecutive in-mask voxels (consecutive in-mask indices), so every update is a
    contiguous, vectorisable loop with no per-voxel lookup or bounds check.

    Experiments with several foci (ALE, MKDA) gather, per voxel, the rank of their largest MA
    value (``k_rank``: 1 for the smallest distinct value of all supports) in the int32
    ``best`` (0: untouched), then add ``rank_val[best]`` once per voxel, in experiment order,
    and reset ``best``: ALE adds ``log1p(-MA)`` (``rank_val`` holds it), MKDA adds
    ``weight * value``. KDA, and ALE experiments with a single focus, add ``k_val``
    (``log1p(-MA)`` for ALE, ``weight * MA`` for KDA) directly.
    """
    n_rows = row_start.shape[0] - 1
    for e in range(n_rows):
        f0 = row_start[e]
        f1 = row_start[e + 1]
        if f1 == f0:
            continue
        kk = row_kernel[e]
        q0 = r_start[kk]
        q1 = r_start[kk + 1]
        if kind == 2 or (kind == 0 and f1 - f0 == 1):
            w = weights[e] if kind == 2 else 1.0
            for f in range(f0, f1):
                b = focus_base[f]
                for r in range(q0, q1):
                    p = b + r_delta[r]
                    end = p + r_len[r]
                    v = r_val0[r]
                    while p < end:
                        n = seg[p]
                        if n > 0:
                            if n > end - p:
                                n = end - p
                            # Unsigned indices: no negative-index wraparound test, so
                            # the loop vectorises.
                            c0 = np.uint64(lut[p])
                            v0 = np.uint64(v)
                            for t in range(np.uint64(n)):
                                acc[c0 + t] += w * k_val[v0 + t]
                            p += n
                            v += n
                        else:
                            p -= n
                            v -= n
            continue
        # Gather the rank of the experiment's largest MA per voxel, then add it once.
        nrec = 0
        for f in range(f0, f1):
            b = focus_base[f]
            for r in range(q0, q1):
                p = b + r_delta[r]
                end = p + r_len[r]
                v = r_val0[r]
                while p < end:
                    n = seg[p]
                    if n > 0:
                        if n > end - p:
                            n = end - p
                        c0 = np.uint64(lut[p])
                        v0 = np.uint64(v)
                        for t in range(np.uint64(n)):
                            best[c0 + t] = max(best[c0 + t], k_rank[v0 + t])
                        rec_pos[nrec] = c0
                        rec_len[nrec] = n
                        nrec += 1
                        p += n
                        v += n
                    else:
                        p -= n
                        v -= n
        scale = 1.0 if kind == 0 else weights[e]
        # A voxel covered twice adds rank_val[0] == 0 the second time, leaving acc bit for
        # bit as if each voxel were added once.
        for i in range(nrec):
            c0 = np.uint64(rec_pos[i])
            for t in range(np.uint64(rec_len[i])):
                acc[c0 + t] += scale * rank_val[best[c0 + t]]
                best[c0 + t] = 0


@numba.njit(cache=True, nogil=True)
def _summarize(acc, kind, thr, lthr, clusters, voxel_base, lut, nb_delta, mark, visited, sval,
               supra, stack, itag):
    """Maximum statistic, largest cluster size and mass of one iteration; zeroes ``acc``.

    The statistic is float32 (as NiMARE's maps); a voxel is supra-threshold when its
    statistic exceeds ``thr`` (compared in float64, as NumPy compares a float32 map with a
    float64 threshold). Clusters are face-connected; mass is ``sum(stat - thr)``.
    """
    n = acc.shape[0]
    ns = 0
    if kind == 0:
        amin = 0.0
        for v in range(n):
            a = acc[v]
            if a != 0.0:
                if a < amin:
                    amin = a
                if clusters and a < lthr:
                    s = np.float32(1.0 - np.exp(a))
                    if s > thr:
                        mark[v] = itag
                        sval[v] = s
                        supra[ns] = v
                        ns += 1
                acc[v] = 0.0
        max_stat = np.float32(1.0 - np.exp(amin))
    else:
        amax = 0.0
        for v in range(n):
            a = acc[v]
            if a != 0.0:
                if a > amax:
                    amax = a
                if clusters:
                    s = np.float32(a)
                    if s > thr:
                        mark[v] = itag
                        sval[v] = s
                        supra[ns] = v
                        ns += 1
                acc[v] = 0.0
        max_stat = np.float32(amax)
    max_size = 0
    max_mass = 0.0
    for i in range(ns):
        v0 = supra[i]
        if visited[v0] == itag:
            continue
        visited[v0] = itag
        stack[0] = v0
        sp = 1
        size = 0
        mass = 0.0
        while sp > 0:
            sp -= 1
            u = stack[sp]
            size += 1
            mass += np.float64(sval[u]) - thr
            b = voxel_base[u]
            for d in range(nb_delta.shape[0]):
                w = lut[b + nb_delta[d]]
                if w >= 0 and mark[w] == itag and visited[w] != itag:
                    visited[w] = itag
                    stack[sp] = w
                    sp += 1
        if size > max_size:
            max_size = size
        if mass > max_mass:
            max_mass = mass
    return max_stat, max_size, max_mass


# --------------------------------------------------------------------------------------------
# what a batch needs: a small picklable spec, and a per-process context built from it
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MonteCarloSpec:
    """Everything a Monte Carlo batch needs, small enough to ship to every worker.

    Built by :func:`montecarlo_spec` from a fitted estimator. Workers expand it once per
    process into padded lookup tables (see :meth:`context`).

    Attributes
    ----------
    kind : int
        0: ALE (``1 - prod(1 - MA)``); 1: weighted coverage (MKDA density); 2: sum (KDA).
    shape : tuple of int
        The mask's grid.
    mask_bits : ndarray
        The mask, bit-packed (C order).
    n_voxels : int
        In-mask voxels; random foci are drawn uniformly among them.
    row_start, row_kernel, k_start, k_offsets, k_values
        The kernel plan: foci of experiment ``e`` are ``row_start[e]:row_start[e+1]`` and
        use support ``row_kernel[e]``.
    weights : ndarray
        Per-experiment weights (MKDA density); ones otherwise.
    threshold : float
        Cluster-forming threshold on the statistic (NaN: no cluster measures).
    """

    kind: int
    shape: tuple
    mask_bits: np.ndarray
    n_voxels: int
    row_start: np.ndarray
    row_kernel: np.ndarray
    k_start: np.ndarray
    k_offsets: np.ndarray
    k_values: np.ndarray
    weights: np.ndarray
    threshold: float
    token: str = field(default="")

    @property
    def clusters(self) -> bool:
        """Whether iterations measure clusters (a finite threshold was given)."""
        return bool(np.isfinite(self.threshold))

    @property
    def n_foci(self) -> int:
        return int(self.row_start[-1])

    def work_per_iteration(self) -> int:
        """Kernel support voxels visited per iteration (sum over foci of support sizes)."""
        sizes = np.diff(self.k_start)[self.row_kernel]
        return int(np.sum(sizes * np.diff(self.row_start)))

    def context(self) -> _Context:
        """The expanded lookup tables, built once per process and cached."""
        return _context_for(self)


def _make_token(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


def make_spec(kind, mask, row_start, row_kernel, k_start, k_offsets, k_values, weights=None,
              threshold=float("nan")) -> MonteCarloSpec:
    """A :class:`MonteCarloSpec` from arrays (:func:`montecarlo_spec` builds one from an
    estimator).

    Parameters
    ----------
    kind : {0, 1, 2}
        0: ALE, 1: weighted coverage (MKDA density), 2: sum (KDA).
    mask : (X, Y, Z) bool array
        Random foci are drawn uniformly among its voxels; statistics live on them.
    row_start : (n_experiments + 1,) int array
        Foci of experiment ``e`` are ``row_start[e]:row_start[e+1]``.
    row_kernel : (n_experiments,) int array
        Support used by each experiment.
    k_start, k_offsets, k_values
        Concatenated supports (voxel offsets and float32 MA values), as in
        :class:`~daskmeta.kernels.KernelPlan`.
    weights : (n_experiments,) array, optional
        Experiment weights (kind 1 and 2); ones by default.
    threshold : float
        Cluster-forming threshold on the statistic; NaN for no cluster measures.

    Returns
    -------
    MonteCarloSpec
    """
    mask = np.asarray(mask, dtype=bool)
    n_rows = len(row_start) - 1
    row_start = np.ascontiguousarray(row_start, dtype=np.int64)
    row_kernel = np.ascontiguousarray(row_kernel, dtype=np.int64)
    k_start = np.ascontiguousarray(k_start, dtype=np.int64)
    k_offsets = np.ascontiguousarray(k_offsets, dtype=np.int32).reshape(-1, 3)
    k_values = np.ascontiguousarray(k_values, dtype=np.float32)
    weights = (np.ones(n_rows) if weights is None
               else np.ascontiguousarray(weights, dtype=np.float64))
    if weights.shape != (n_rows,):
        raise DaskmetaError(f"expected {n_rows} experiment weights; got shape {weights.shape}")
    bits = np.packbits(mask.reshape(-1))
    threshold = float(threshold)
    token = _make_token(int(kind), mask.shape, bits, row_start, row_kernel, k_start, k_offsets,
                        k_values, weights, threshold)
    return MonteCarloSpec(int(kind), tuple(int(s) for s in mask.shape), bits, int(mask.sum()),
                          row_start, row_kernel, k_start, k_offsets, k_values, weights,
                          threshold, token)


def _stat_kind(estimator) -> int:
    hook = getattr(estimator, "_montecarlo_kind", None)
    if hook is not None:
        return int(hook() if callable(hook) else hook)
    from daskmeta.estimators.ale import ALE
    from daskmeta.estimators.mkda import KDA, MKDADensity

    if isinstance(estimator, ALE):
        return STAT_ALE
    if isinstance(estimator, MKDADensity):
        return STAT_COVERAGE
    if isinstance(estimator, KDA):
        return STAT_SUM
    raise DaskmetaError(
        f"Monte Carlo FWE correction is not available for {type(estimator).__name__}; "
        "supported estimators: ALE, MKDADensity, KDA"
    )


def montecarlo_spec(estimator, threshold: float = float("nan")) -> MonteCarloSpec:
    """The :class:`MonteCarloSpec` of a fitted estimator (ALE, MKDADensity or KDA).

    Parameters
    ----------
    estimator : CBMAEstimator
        A fitted estimator; its kernel plan (foci per experiment, kernel supports), space and
        experiment weights define the null.
    threshold : float
        Cluster-forming threshold on the summary statistic; NaN for voxel-level nulls only.

    Raises
    ------
    DaskmetaError
        If the estimator is not fitted or has no Monte Carlo null.
    """
    plan = getattr(estimator, "plan_", None)
    space = getattr(estimator, "space_", None)
    if plan is None or space is None:
        raise DaskmetaError(
            f"Monte Carlo correction needs a fitted estimator; got {type(estimator).__name__} "
            "without a fit (call estimator.fit(dataset) first)"
        )
    kind = _stat_kind(estimator)
    weights = getattr(estimator, "weights_", None) if kind == STAT_COVERAGE else None
    if kind != STAT_ALE and not (np.all(plan.k_values > 0)
                                 and (weights is None or np.all(np.asarray(weights) > 0))):
        raise DaskmetaError(
            "Monte Carlo correction of (M)KDA needs a positive kernel value and positive "
            "experiment weights"
        )
    return make_spec(kind, space.mask, plan.row_start, plan.row_kernel, plan.k_start,
                     plan.k_offsets, plan.k_values, weights, threshold)


@dataclass
class _Context:
    lut: np.ndarray          # int32 over the padded volume: in-mask index or -1
    seg: np.ndarray          # int32 over the padded volume: signed run lengths along k
    voxel_base: np.ndarray   # int64 padded address of each in-mask voxel
    r_start: np.ndarray      # int64: runs of support s are r_start[s]:r_start[s+1]
    r_delta: np.ndarray      # int64 padded address offset of each run's first voxel
    r_len: np.ndarray        # int64 voxels per run
    r_val0: np.ndarray       # int64 index of each run's first value in k_val
    k_val: np.ndarray        # float64, in run order: log1p(-MA) for ALE, MA otherwise
    k_rank: np.ndarray       # int32, in run order: rank of MA among all distinct values
    rank_val: np.ndarray     # float64 per rank: log1p(-MA) for ALE, MA otherwise; [0] = 0
    nb_delta: np.ndarray     # int64 padded address offsets of the 6 face neighbours
    lthr: float              # ALE: log-domain pre-test of the threshold
    pad: int                 # voxels of padding on each side of the grid
    max_records: int         # most runs one experiment can stamp


_CONTEXTS: OrderedDict = OrderedDict()
_CONTEXT_LOCK = threading.Lock()
_MAX_CONTEXTS = 4


def _context_for(spec: MonteCarloSpec) -> _Context:
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get(spec.token)
        if ctx is not None:
            _CONTEXTS.move_to_end(spec.token)
            return ctx
    ctx = _build_context(spec)
    with _CONTEXT_LOCK:
        _CONTEXTS[spec.token] = ctx
        while len(_CONTEXTS) > _MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    return ctx


def _support_runs(offsets: np.ndarray):
    """Order of a support's voxels by (i, j, k) and the runs of consecutive k in it."""
    order = np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0]))
    o = offsets[order].astype(np.int64)
    if len(o) == 0:
        return order, np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.ones(len(o), dtype=bool)
    new[1:] = (o[1:, 0] != o[:-1, 0]) | (o[1:, 1] != o[:-1, 1]) | (o[1:, 2] != o[:-1, 2] + 1)
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(o)))
    return order, starts, lengths


def _build_context(spec: MonteCarloSpec) -> _Context:
    shape = spec.shape
    n_flat = int(np.prod(shape))
    mask = np.unpackbits(spec.mask_bits, count=n_flat).astype(bool).reshape(shape)
    reach = int(np.abs(spec.k_offsets).max()) if spec.k_offsets.size else 0
    pad = max(1, reach)
    pshape = tuple(s + 2 * pad for s in shape)
    lut = np.full(pshape, -1, dtype=np.int32)
    lut[pad:pad + shape[0], pad:pad + shape[1], pad:pad + shape[2]][mask] = np.arange(
        spec.n_voxels, dtype=np.int32)
    seg = np.zeros(pshape, dtype=np.int32)
    _segments_of_lines(lut, seg)
    lut = lut.reshape(-1)
    seg = seg.reshape(-1)
    sy, sz = pshape[1], pshape[2]
    ijk = np.argwhere(mask).astype(np.int64) + pad
    voxel_base = (ijk[:, 0] * sy + ijk[:, 1]) * sz + ijk[:, 2]
    v64 = spec.k_values.astype(np.float64)
    if spec.kind == STAT_ALE:
        vals = np.log1p(-v64)
        lthr = (math.log1p(-spec.threshold) + _LOG_SLACK
                if spec.clusters and spec.threshold < 1 else 0.0)
    else:
        vals = v64
        lthr = 0.0
    r_start, r_delta, r_len, r_val0, k_val, ma_vals = [0], [], [], [], [], []
    for s in range(len(spec.k_start) - 1):
        a, b = spec.k_start[s], spec.k_start[s + 1]
        off = spec.k_offsets[a:b]
        order, starts, lengths = _support_runs(off)
        first = off[order][starts].astype(np.int64)
        r_delta.append((first[:, 0] * sy + first[:, 1]) * sz + first[:, 2])
        r_len.append(lengths)
        r_val0.append(starts + sum(len(v) for v in k_val))
        k_val.append(vals[a:b][order])
        ma_vals.append(spec.k_values[a:b][order])
        r_start.append(r_start[-1] + len(starts))

    def cat(xs, dtype):
        return np.ascontiguousarray(np.concatenate(xs) if xs else np.zeros(0), dtype)

    # A run of n voxels holds at most ceil(n / 2) in-mask segments.
    n_foci_row = np.diff(spec.row_start)
    max_seg = np.asarray([int(np.sum((ln + 1) // 2)) for ln in r_len], dtype=np.int64)
    max_records = (int(np.max(n_foci_row * max_seg[spec.row_kernel]))
                   if len(n_foci_row) and len(max_seg) else 0)
    nb_delta = np.array([sy * sz, -sy * sz, sz, -sz, 1, -1], dtype=np.int64)
    k_val = cat(k_val, np.float64)
    # Ranks of the MA values (run order) among all distinct values of all supports.
    ma = cat(ma_vals, np.float32)
    uniq, inverse = np.unique(ma, return_inverse=True)
    k_rank = np.ascontiguousarray(inverse.reshape(-1) + 1, dtype=np.int32)
    u64 = uniq.astype(np.float64)
    rank_val = np.concatenate([[0.0], np.log1p(-u64) if spec.kind == STAT_ALE else u64])
    return _Context(lut, seg, np.ascontiguousarray(voxel_base),
                    np.asarray(r_start, dtype=np.int64), cat(r_delta, np.int64),
                    cat(r_len, np.int64), cat(r_val0, np.int64), k_val, k_rank,
                    np.ascontiguousarray(rank_val), nb_delta, float(lthr), pad,
                    max(1, max_records))


class _Workspace:
    """Scratch vectors of one running batch (reused across its iterations)."""

    def __init__(self, n_voxels: int, max_records: int):
        n = n_voxels
        self.acc = np.zeros(n, dtype=np.float64)
        self.best = np.zeros(n, dtype=np.int32)
        self.rec_pos = np.zeros(max_records, dtype=np.int64)
        self.rec_len = np.zeros(max_records, dtype=np.int64)
        self.mark = np.zeros(n, dtype=np.int64)
        self.visited = np.zeros(n, dtype=np.int64)
        self.sval = np.zeros(n, dtype=np.float32)
        self.supra = np.zeros(n, dtype=np.int32)
        self.stack = np.zeros(n, dtype=np.int32)
        self.itag = 0


def _accumulate_spec(spec, ctx, ws, focus_base):
    _accumulate(focus_base, spec.row_start, spec.row_kernel, ctx.r_start, ctx.r_delta,
                ctx.r_len, ctx.r_val0, ctx.k_val, ctx.k_rank, ctx.rank_val, spec.weights,
                spec.kind, ctx.lut, ctx.seg, ws.acc, ws.best, ws.rec_pos, ws.rec_len)


def _iteration(spec, ctx, ws, focus_base):
    _accumulate_spec(spec, ctx, ws, focus_base)
    ws.itag += 1
    return _summarize(ws.acc, spec.kind, spec.threshold if spec.clusters else np.inf, ctx.lthr,
                      spec.clusters, ctx.voxel_base, ctx.lut, ctx.nb_delta, ws.mark, ws.visited,
                      ws.sval, ws.supra, ws.stack, ws.itag)


def batch_seed(seed: int, batch: int) -> np.random.SeedSequence:
    """The seed of batch ``batch``: ``SeedSequence(seed).spawn(n)[batch]`` for any ``n``."""
    return np.random.SeedSequence(seed, spawn_key=(int(batch),))


def run_batch(spec: MonteCarloSpec, seed: int, batch: int, n_iters: int):
    """Run ``n_iters`` Monte Carlo iterations of batch ``batch``.

    A pure function of its arguments: the same call gives the same numbers in any process.

    Returns
    -------
    max_stat : (n_iters,) float32
    max_size : (n_iters,) int64
        Zero when no voxel passes the threshold (or without a threshold).
    max_mass : (n_iters,) float64
    """
    ctx = spec.context()
    rng = np.random.default_rng(batch_seed(seed, batch))
    ws = _Workspace(spec.n_voxels, ctx.max_records)
    out_stat = np.empty(n_iters, dtype=np.float32)
    out_size = np.zeros(n_iters, dtype=np.int64)
    out_mass = np.zeros(n_iters, dtype=np.float64)
    n_foci = spec.n_foci
    for i in range(n_iters):
        draw = rng.integers(0, spec.n_voxels, size=n_foci)
        out_stat[i], out_size[i], out_mass[i] = _iteration(spec, ctx, ws, ctx.voxel_base[draw])
    return out_stat, out_size, out_mass


def _focus_base(spec, ctx, focus_ijk) -> np.ndarray:
    pshape = tuple(s + 2 * ctx.pad for s in spec.shape)
    ijk = np.asarray(focus_ijk, dtype=np.int64).reshape(-1, 3)
    if len(ijk) != spec.n_foci:
        raise DaskmetaError(f"expected {spec.n_foci} foci; got {len(ijk)}")
    if (ijk < 0).any() or (ijk >= np.asarray(spec.shape)).any():
        raise DaskmetaError("foci must lie on the mask's grid")
    ijk = ijk + ctx.pad
    return (ijk[:, 0] * pshape[1] + ijk[:, 1]) * pshape[2] + ijk[:, 2]


def maxima_at(spec: MonteCarloSpec, focus_ijk) -> tuple[float, int, float]:
    """One Monte Carlo iteration's maxima with the foci at ``focus_ijk`` (for checking).

    Returns
    -------
    max_stat, max_size, max_mass
        As :func:`run_batch` records them for a random placement.
    """
    ctx = spec.context()
    ws = _Workspace(spec.n_voxels, ctx.max_records)
    s, n, m = _iteration(spec, ctx, ws, _focus_base(spec, ctx, focus_ijk))
    return float(s), int(n), float(m)


def stat_map(spec: MonteCarloSpec, focus_ijk) -> np.ndarray:
    """The summary statistic (float32 over in-mask voxels) with foci at ``focus_ijk``.

    The per-iteration computation of the Monte Carlo null, exposed for checking it against
    the estimators: with the dataset's own foci it gives the estimator's ``stat`` map.

    Parameters
    ----------
    spec : MonteCarloSpec
    focus_ijk : (n_foci, 3) int array
        Voxel indices on the mask's grid, in the plan's focus order.
    """
    ctx = spec.context()
    ws = _Workspace(spec.n_voxels, ctx.max_records)
    _accumulate_spec(spec, ctx, ws, _focus_base(spec, ctx, focus_ijk))
    if spec.kind == STAT_ALE:
        return (1.0 - np.exp(ws.acc)).astype(np.float32)
    return ws.acc.astype(np.float32)


# --------------------------------------------------------------------------------------------
# running batches on Dask
# --------------------------------------------------------------------------------------------
@dataclass
class MonteCarloNulls:
    """The per-iteration maxima of a Monte Carlo run, in iteration order.

    Attributes
    ----------
    max_stat : (n,) float32
    max_size : (n,) float32 or None
        Largest cluster size per iteration (None for voxel-level runs).
    max_mass : (n,) float32 or None
    seed : int
    n_iters : int
        Iterations asked for.
    n_iters_run : int
        Iterations run (fewer than ``n_iters`` when early stopping stopped the run).
    batch_size : int
    n_batches_run : int
    stopped_early : bool
    relative_se : dict
        The last estimate of the relative Monte Carlo standard error of each FWE threshold
        (95th percentile), when early stopping was on.
    """

    max_stat: np.ndarray
    max_size: np.ndarray | None
    max_mass: np.ndarray | None
    seed: int
    n_iters: int
    n_iters_run: int
    batch_size: int
    n_batches_run: int
    stopped_early: bool = False
    relative_se: dict = field(default_factory=dict)


def batch_bounds(n_iters: int, batch_size: int) -> list[tuple[int, int]]:
    """Iteration ranges of the batches: a function of ``n_iters`` and ``batch_size`` only."""
    return [(a, min(a + batch_size, n_iters)) for a in range(0, n_iters, batch_size)]


def threshold_relative_se(values: np.ndarray, q: float = 0.95) -> float:
    """Relative Maritz-Jarrett standard error of the ``q`` quantile of ``values``.

    0 when the quantile's standard error is 0 (e.g. a null of zeros); inf with fewer than
    ten values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 10:
        return float("inf")
    from scipy.stats.mstats import mjci

    se = float(np.asarray(mjci(values, prob=[q]))[0])
    if not np.isfinite(se):
        return float("inf")
    if se == 0.0:
        return 0.0
    center = abs(float(np.quantile(values, q)))
    return se / center if center > 0 else float("inf")


def _round_plan(n_batches: int, early_stop) -> list[range]:
    if early_stop is None:
        return [range(0, n_batches)]
    per_round = max(1, math.ceil(n_batches * _ROUND_FRACTION))
    return [range(a, min(a + per_round, n_batches)) for a in range(0, n_batches, per_round)]


def run_montecarlo(spec: MonteCarloSpec, n_iters: int, batch_size: int | None = None,
                   seed: int | None = None, early_stop: float | None = None,
                   progress: bool | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> MonteCarloNulls:
    """Run the Monte Carlo null on Dask and collect the per-iteration maxima.

    Parameters
    ----------
    spec : MonteCarloSpec
        From :func:`montecarlo_spec`.
    n_iters : int
        Iterations (the most that will run with early stopping).
    batch_size : int, optional
        Iterations per task (default :data:`DEFAULT_BATCH_SIZE`). With ``n_iters`` it fixes
        the batches and their seeds; the number of workers never does.
    seed : int, optional
        Root of the seed sequence; None draws one from OS entropy (reported in the result).
    early_stop : float, optional
        Run the batches in rounds (about a tenth of the batches each) and stop after the
        first round where the relative Maritz-Jarrett standard error of every FWE threshold
        (the 95th percentile of the max-statistic null, and of the max-cluster-size null when
        clusters are measured) is below ``early_stop``. Round boundaries depend only on
        ``n_iters`` and ``batch_size``, so the result still only depends on the seed.
    progress : bool, optional
        Show :func:`distributed.progress` under a distributed Client. None: only when
        standard error is a terminal. Never shown on the local scheduler.
    on_batch : callable, optional
        ``on_batch(batch_index, n_batches_done)``, called in the caller's thread as batches
        finish (under a Client, in completion order; locally, after each round).

    Returns
    -------
    MonteCarloNulls
    """
    n_iters = int(n_iters)
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    if seed is None:
        # 63 bits of OS entropy: enough, and an integer every attribute store can hold.
        seed = int(np.random.SeedSequence().entropy) % (2**63)
    seed = int(seed)
    bounds = batch_bounds(n_iters, batch_size)
    rounds = _round_plan(len(bounds), early_stop)
    client = active_client()
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    spec_key = f"montecarlo-spec-{spec.token}"
    spec_d = dask.delayed(spec, name=spec_key)
    run = dask.delayed(run_batch, pure=True)

    results: dict[int, tuple] = {}
    n_done = 0
    stopped = False
    rel_se: dict = {}
    for rnd in rounds:
        tasks = [run(spec_d, seed, b, bounds[b][1] - bounds[b][0],
                     dask_key_name=f"montecarlo-batch-{spec.token}-{seed}-{batch_size}-{b}")
                 for b in rnd]
        if client is not None:
            from distributed import as_completed

            futures = client.compute(tasks)
            index = {f.key: b for f, b in zip(futures, rnd, strict=True)}
            if progress:
                import contextlib

                from distributed import progress as dprogress

                with contextlib.redirect_stdout(sys.stderr):  # stdout is for results
                    dprogress(futures)
            for fut in as_completed(futures):
                b = index[fut.key]
                results[b] = fut.result()
                fut.release()
                n_done += 1
                if on_batch is not None:
                    on_batch(b, n_done)
        else:
            out = dask.compute(*tasks, scheduler="threads")
            for b, r in zip(rnd, out, strict=True):
                results[b] = r
                n_done += 1
                if on_batch is not None:
                    on_batch(b, n_done)
        if early_stop is not None and rnd is not rounds[-1]:
            stat, size, _ = _concat(results)
            rel_se = {"max_stat": threshold_relative_se(stat)}
            if spec.clusters:
                rel_se["max_size"] = threshold_relative_se(size)
            if all(v < early_stop for v in rel_se.values()):
                stopped = True
                break
    stat, size, mass = _concat(results)
    if early_stop is not None and not stopped:
        rel_se = {"max_stat": threshold_relative_se(stat)}
        if spec.clusters:
            rel_se["max_size"] = threshold_relative_se(size)
    return MonteCarloNulls(
        max_stat=stat,
        max_size=size.astype(np.float32) if spec.clusters else None,
        max_mass=mass.astype(np.float32) if spec.clusters else None,
        seed=seed, n_iters=n_iters, n_iters_run=int(stat.size), batch_size=batch_size,
        n_batches_run=len(results), stopped_early=stopped, relative_se=rel_se,
    )


def _concat(results: dict):
    order = sorted(results)
    return tuple(np.concatenate([results[b][i] for b in order]) for i in range(3))


def null_to_p(values, null, tail: str = "upper") -> np.ndarray:
    """p-values of ``values`` against a null sample (NiMARE's ``null_to_p``, one-sided upper).

    ``p = 1 - #(null < value) / n``, clipped to ``[1/n, 1 - 1/n]``.
    """
    if tail != "upper":
        raise DaskmetaError(f"tail must be 'upper'; got {tail!r}")
    null = np.sort(np.asarray(null))
    values = np.asarray(values)
    n = null.size
    p = 1.0 - np.searchsorted(null, values, side="left").astype(float) / n
    smallest = 1.0 / n
    return np.maximum(smallest, np.minimum(p, 1.0 - smallest))


def describe_kind(kind: int) -> str:
    """Name of a statistic kind (for attributes)."""
    return _STAT_NAMES[int(kind)]
