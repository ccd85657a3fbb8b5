"""The label-permutation null of a contrast: group labels shuffled over the pooled experiments.

A contrast of two groups of experiments (MKDA chi-square, ALE subtraction) is tested
against null data sets in which the pooled experiments are dealt at random into two groups
of the observed sizes (NiMARE's label permutation). The pooled experiments' MA rows never
change, so every process that runs iterations reads (or combines from foci) them once into
a compact form (:class:`~daskmeta.montecarlo._packed.PackedRows`, cached per process and
keyed by the model's token) and an iteration is "sum the rows of the smaller permuted
group": the other group's sum is the pooled total minus it (the reductions are additive:
MKDA counts, ALE's sum of ``log1p(-MA)``). The estimator supplies the statistic of the two
sums (:class:`PairStatistic`).

Valued rows (ALE) whose smaller group is at least :data:`_COLUMN_MIN_FRACTION` of the pool
(and whose values are finite: ``-inf * 0`` is not 0) run blockwise when the statistic and
the summary allow it (``block_into`` / ``record_block``): :data:`_BLOCK` permutations at a
time, each tile of :data:`_TILE` voxels summed for all of them in one pass over the pool's
column form (:func:`~daskmeta.montecarlo._packed.column_sums`), then the statistic and the
summary on the tile. The sums, hence the statistic and every recorded value, are the same bits as
iteration by iteration; the draws are the same (all of a batch's are drawn first, in order).

The rows come from a kernel plan (:class:`PlanPool`: a Dataset's experiments, combined by
the fits' compiled combine) or from a Collection's store (:class:`StorePool`: only the
pooled experiments' rows are read, checked against the store's manifest and generation).
Seeded batches run through :func:`~daskmeta.montecarlo.run_montecarlo`, so the nulls are
identical on any number of workers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import dask
import numpy as np
from scipy import ndimage

from daskmeta.exceptions import DaskmetaError
from daskmeta.montecarlo._packed import PackedRows, column_sums
from daskmeta.montecarlo.models import ClusterMaxima, NullModel, Summary, _Geometry

__all__ = ["GroupPermutation", "PairStatistic", "PerMap", "PlanPool", "StorePool",
           "TwoSidedClusterMaxima", "loaded_pools"]

#: Rows combined or read at a time while packing a pool.
_LOAD_ROWS = 256
#: Packed pools kept per process (least recently used dropped first).
_MAX_POOLS = 2
_POOLS: OrderedDict = OrderedDict()
_POOLS_LOCK = threading.Lock()
_WORKSPACES = threading.local()
_FACES = ndimage.generate_binary_structure(3, 1)
#: Permutations summed together by the column path.
_BLOCK = 32
#: Voxels per tile of the column path.
_TILE = 8192
#: The column path sums every entry of the pool for each permutation (vectorised, about ten
#: times cheaper per entry than the row path's scattered adds, which sum only the smaller
#: group's): it is used when the smaller group is at least this fraction of the pool.
_COLUMN_MIN_FRACTION = 0.125
#: Largest column form (8 bytes per non-zero entry, kept with the packed rows) the column
#: path builds; larger pools run row by row.
_COLUMN_MAX_BYTES = 1 << 30


def loaded_pools() -> list[str]:
    """Tokens of the pools this process holds packed (for tests and diagnostics)."""
    with _POOLS_LOCK:
        return list(_POOLS)


class _Pool:
    """Where the pooled rows come from; :meth:`packed` loads them once per process."""

    token: str = ""
    n_voxels: int = 0
    n_rows: int = 0

    def _blocks(self):
        raise NotImplementedError

    def _pack(self) -> PackedRows:
        packed = PackedRows(self.n_voxels, self.constant)
        for block in self._blocks():
            if self.func is not None:
                block = self.func(block)
            packed.append(block)
        return packed.finish()

    def packed(self) -> PackedRows:
        with _POOLS_LOCK:
            found = _POOLS.get(self.token)
            if found is not None:
                _POOLS.move_to_end(self.token)
                return found
            # Packed under the lock: threads of one worker wait for one copy instead of
            # each building their own.
            packed = self._pack()
            _POOLS[self.token] = packed
            while len(_POOLS) > _MAX_POOLS:
                _POOLS.popitem(last=False)
            return packed


class PlanPool(_Pool):
    """Pooled rows combined from foci with a kernel plan (every row of the plan, in order).

    Parameters
    ----------
    plan : KernelPlan
    func : callable or None
        Elementwise ``f`` of MA values summed by the statistic (None: the MA values).
    constant : float or None
        The value of every non-zero ``f(MA)`` (binary rows), or None.
    name : str
        Names ``func`` in the token.
    """

    def __init__(self, plan, func, constant, name: str):
        self.plan = plan
        self.func = func
        self.constant = constant
        self.n_voxels = int(plan.n_voxels)
        self.n_rows = int(plan.n_rows)
        self.token = dask.base.tokenize("plan-pool", plan.token, name, constant)

    def _blocks(self):
        for a in range(0, self.n_rows, _LOAD_ROWS):
            yield self.plan.fill(a, min(a + _LOAD_ROWS, self.n_rows))


class StorePool(_Pool):
    """Pooled rows read from a Collection's store (only these rows).

    Parameters
    ----------
    collection : Collection
    rows : (n,) int array
        Store rows of the pooled experiments, in pooled order.
    func, constant, name
        As :class:`PlanPool`.
    """

    def __init__(self, collection, rows, func, constant, name: str):
        self.array_path = str(collection.path / "ma")
        self.generation = getattr(collection, "generation", None)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.func = func
        self.constant = constant
        self.n_voxels = int(collection.space.n_voxels)
        self.n_rows = len(self.rows)
        self.token = dask.base.tokenize("store-pool", collection.content_token(), self.rows,
                                        name, constant)

    def _blocks(self):
        from daskmeta.storage import read_rows

        for a in range(0, self.n_rows, _LOAD_ROWS):
            yield read_rows(self.array_path, self.rows[a:a + _LOAD_ROWS],
                            generation=self.generation)


class PairStatistic:
    """The statistic of a contrast from its two groups' sums (subclass this).

    ``__call__(sum1, sum2, n1, n2)`` gets float64 sums over in-mask voxels and the group
    sizes, and returns a float32 map, or a dict of named maps (summarised with
    :class:`PerMap`). ``token`` names everything the statistic depends on.
    """

    token: str = ""

    def __call__(self, sum1, sum2, n1: int, n2: int):
        raise NotImplementedError

    # Optional, for speed: ``into(sum1, sum2, n1, n2, maps)`` computes the same into the
    # buffers ``empty(n_voxels)`` made, reused from one iteration to the next; and
    # ``block_into(small, total, small_is_first, buf)``: the statistic of a tile of voxels for
    # a block of permutations (``small``: (voxels, permutations) float64 sums of each
    # permutation's smaller group, overwritten; ``total``: the pooled sums of the tile;
    # ``buf``: scratch of small's shape), the same bits elementwise as ``__call__``, for
    # summaries with ``record_block(out, i0, stat, v0)``.


class GroupPermutation(NullModel):
    """Null data sets of permuted group labels over the pooled experiments of a contrast.

    Parameters
    ----------
    pool : PlanPool or StorePool
        The pooled experiments' rows.
    in_first : (n,) bool array
        The observed labels: which pooled rows are group 1 (their number is kept).
    statistic : PairStatistic
    mask : 3-D bool array
        The mask of the in-mask voxels (for cluster summaries).
    """

    def __init__(self, pool, in_first, statistic: PairStatistic, mask):
        self.pool = pool
        in_first = np.asarray(in_first, dtype=bool)
        if in_first.shape != (pool.n_rows,):
            raise DaskmetaError(f"expected {pool.n_rows} group labels; got shape "
                                f"{in_first.shape}")
        self.n1 = int(in_first.sum())
        self.n2 = int(pool.n_rows - self.n1)
        if self.n1 == 0 or self.n2 == 0:
            raise DaskmetaError("a label permutation needs two non-empty groups")
        self.observed = np.flatnonzero(in_first)
        # The pooled experiments as NiMARE stacks them: group 1's then group 2's, so a seed
        # deals the same experiments whatever the order of the rows in their source.
        self.order = np.concatenate([self.observed, np.flatnonzero(~in_first)])
        self.statistic_ = statistic
        self.shape = tuple(int(s) for s in mask.shape)
        self.mask_bits = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
        self.n_voxels = int(pool.n_voxels)
        self.token = dask.base.tokenize("group-permutation", pool.token, self.observed,
                                        statistic.token)

    @property
    def geometry(self):
        return _Geometry.of_packed(self)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_geometry", None)
        state.pop("_total", None)
        return state

    def _pooled_total(self, packed) -> np.ndarray:
        if "_total" not in self.__dict__:
            self._total = packed.total()
        return self._total

    def _workspace(self, packed) -> dict:
        """This thread's buffers for this model (iterations allocate nothing: a worker under
        a nanny returns freed memory to the system at once, so a fresh 2 MB array per
        iteration costs page faults)."""
        ws = getattr(_WORKSPACES, "ws", None)
        if ws is None or ws["token"] != self.token:
            n = self.n_voxels
            binary = packed.constant is not None
            ws = {"token": self.token,
                  "acc": np.zeros(n, dtype=np.int64 if binary else np.float64),
                  "diff": np.zeros(n + 1, dtype=np.int32), "s1": np.zeros(n),
                  "s2": np.zeros(n), "rest": np.zeros(self.pool.n_rows, dtype=bool)}
            _WORKSPACES.ws = ws
        return ws

    def sums(self, group1_rows, out=None) -> tuple[np.ndarray, np.ndarray]:
        """The two groups' float64 sums when ``group1_rows`` (pooled row indices) are group
        1 and the rest group 2: the smaller group is summed, the other is the pooled total
        minus it. With ``out`` (``(s1, s2)`` float64 arrays) the sums are written there."""
        packed = self.pool.packed()
        total = self._pooled_total(packed)
        ws = self._workspace(packed)
        acc = ws["acc"]
        s1, s2 = out if out is not None else (np.empty(self.n_voxels),
                                              np.empty(self.n_voxels))
        g1 = np.sort(np.asarray(group1_rows, dtype=np.int64))
        small, big = (s1, s2) if len(g1) <= self.pool.n_rows - len(g1) else (s2, s1)
        if small is s1:
            rows = g1
        else:
            rest = ws["rest"]
            rest[:] = True
            rest[g1] = False
            rows = np.flatnonzero(rest)
        acc[:] = 0
        packed.add(rows, acc, ws["diff"])
        if packed.constant is not None:
            np.multiply(acc, float(packed.constant), out=small)
        else:
            small[:] = acc
        np.subtract(total, small, out=big)
        return s1, s2

    def draw(self, rng):
        """Group 1 of a permutation: the first ``n1`` of a shuffle of the pooled experiments
        (group 1's then group 2's, as NiMARE deals them), as pooled row indices."""
        return self.order[rng.permutation(self.pool.n_rows)[:self.n1]]

    def statistic(self, drawn):
        s1, s2 = self.sums(drawn)
        return self.statistic_(s1, s2, self.n1, self.n2)

    def _batch_statistic(self, drawn):
        """:meth:`statistic` into this thread's buffers (valid until the next call)."""
        ws = self._workspace(self.pool.packed())
        s1, s2 = self.sums(drawn, out=(ws["s1"], ws["s2"]))
        stat = getattr(self.statistic_, "into", None)
        if stat is None:
            return self.statistic_(s1, s2, self.n1, self.n2)
        if "maps" not in ws:
            ws["maps"] = self.statistic_.empty(self.n_voxels)
        return stat(s1, s2, self.n1, self.n2, ws["maps"])

    def statistic_at(self, group1_rows=None):
        """The statistic with ``group1_rows`` as group 1 (default: the observed labels, which
        give the fit's own maps)."""
        return self.statistic(self.observed if group1_rows is None else group1_rows)

    def run_batch(self, summary: Summary, rng, n_iters: int, compiled: bool = True) -> dict:
        packed = self.pool.packed()  # load once, before the first iteration's clock
        out = summary.start(n_iters, self.n_voxels)
        if compiled and self._blockwise(summary, packed):
            self._run_blocks(summary, out, [self.draw(rng) for _ in range(n_iters)], packed)
            return out
        fast = compiled and self._compiled_summary(summary)
        for i in range(n_iters):
            stat = self._batch_statistic(self.draw(rng))
            if fast:
                self._summarize(summary, out, i, stat)
            else:
                summary.record(out, i, stat, self.geometry)
        return out

    def _blockwise(self, summary, packed) -> bool:
        """Whether iterations run blockwise on the column form (see the module's docs)."""
        return (packed.constant is None and packed.finite
                and 8 * len(packed.values) <= _COLUMN_MAX_BYTES
                and hasattr(summary, "record_block")
                and hasattr(self.statistic_, "block_into")
                and min(self.n1, self.n2) >= _COLUMN_MIN_FRACTION * self.pool.n_rows)

    def _run_blocks(self, summary, out, draws, packed) -> None:
        """The iterations of ``draws`` (group 1's pooled rows of each), :data:`_BLOCK` at a
        time, tile by tile."""
        columns = packed.columns()
        total = self._pooled_total(packed)
        small_first = self.n1 <= self.n2
        ws = self._workspace(packed)
        if "blk" not in ws:
            ws["blk"] = {"g": np.zeros((self.pool.n_rows, _BLOCK)),
                         "small": np.zeros(_TILE * _BLOCK), "buf": np.zeros(_TILE * _BLOCK)}
        blk = ws["blk"]
        for i0 in range(0, len(draws), _BLOCK):
            block = draws[i0:i0 + _BLOCK]
            nb = len(block)
            g = blk["g"] if nb == _BLOCK else np.zeros((self.pool.n_rows, nb))
            g[:] = 0.0 if small_first else 1.0
            for j, rows in enumerate(block):
                g[rows, j] = 1.0 if small_first else 0.0
            for v0 in range(0, self.n_voxels, _TILE):
                nv = min(_TILE, self.n_voxels - v0)
                small = blk["small"][:nv * nb].reshape(nv, nb)
                buf = blk["buf"][:nv * nb].reshape(nv, nb)
                column_sums(columns, g, v0, small)
                stat = self.statistic_.block_into(small, total[v0:v0 + nv], small_first, buf)
                summary.record_block(out, i0, stat, v0)

    def _compiled_summary(self, summary) -> bool:
        """Whether ``summary`` runs in the Monte Carlo's compiled cluster code: the maximum
        and cluster maxima of each map of a statistic whose maps are never negative (where
        it gives the same numbers as :class:`ClusterMaxima` and :class:`MaxStatistic`)."""
        from daskmeta.montecarlo.models import MaxStatistic

        return (isinstance(summary, PerMap) and type(summary.summary) in (ClusterMaxima,
                                                                          MaxStatistic)
                and bool(getattr(self.statistic_, "non_negative", False)))

    def _summarize(self, summary, out, i, stat) -> None:
        summarize_per_map(self._workspace(self.pool.packed()), self.token, self.geometry.mask,
                          summary, out, i, stat)


def summarize_per_map(ws: dict, token: str, mask, summary, out: dict, i: int,
                      stat: dict) -> None:
    """Record iteration ``i`` of a :class:`PerMap` summary of non-negative maps (``stat``:
    name to in-mask map) in compiled code: each map's maximum and, when the inner summary
    has a threshold, its largest face-connected cluster's size and mass. The work arrays
    live in the thread's workspace ``ws`` (made on first use)."""
    from daskmeta._combine import combine_context, identity
    from daskmeta._summary_kernels import STAT_IDENTITY, summarize

    if "cl" not in ws:
        n = int(np.count_nonzero(mask))
        ctx = combine_context(f"perm-mask-{token}", mask, np.array([0, 1]),
                              np.zeros((1, 3), dtype=np.int32), np.ones(1, dtype=np.float32),
                              identity)
        ws["cl"] = {"ctx": ctx, "acc": np.zeros(n), "mark": np.zeros(n, dtype=np.int64),
                    "visited": np.zeros(n, dtype=np.int64),
                    "sval": np.zeros(n, dtype=np.float32),
                    "supra": np.zeros(n, dtype=np.int32),
                    "stack": np.zeros(n, dtype=np.int32), "itag": 0}
    cl = ws["cl"]
    ctx = cl["ctx"]
    inner = summary.summary
    clusters = hasattr(inner, "threshold")
    thr = inner.threshold if clusters else np.inf
    for name in summary.names:
        cl["acc"][:] = stat[name]
        cl["itag"] += 1
        s, n, m = summarize(cl["acc"], STAT_IDENTITY, thr, 0.0, clusters, ctx.row_first,
                            ctx.row_first, ctx.row_len, ctx.voxel_base, ctx.lut, ctx.nb_delta,
                            cl["mark"], cl["visited"], cl["sval"], cl["supra"], cl["stack"],
                            cl["itag"])
        out[f"{name}:max_stat"][i] = s
        if clusters:
            out[f"{name}:max_size"][i] = n
            out[f"{name}:max_mass"][i] = m


class PerMap(Summary):
    """A summary applied to each map of a statistic that returns several (a dict of maps):
    keys ``"{map}:{key}"``."""

    def __init__(self, summary: Summary, names):
        self.summary = summary
        self.names = tuple(names)
        self.keys = tuple(f"{n}:{k}" for n in self.names for k in summary.keys)
        self.per_iteration = summary.per_iteration
        inner = set(getattr(summary, "summed_keys", ()))
        self.summed_keys = tuple(f"{n}:{k}" for n in self.names for k in summary.keys
                                 if k in inner)
        self.early_stop_keys = tuple(f"{n}:{k}" for n in self.names
                                     for k in summary.early_stop_keys)

    def _token_parts(self):
        return (self.summary.token, self.names)

    def start(self, n_iters, n_voxels):
        out = {}
        for n in self.names:
            out.update({f"{n}:{k}": v for k, v in self.summary.start(n_iters, n_voxels).items()})
        return out

    def record(self, out, i, stat, geometry):
        for n in self.names:
            view = {k: out[f"{n}:{k}"] for k in self.summary.keys}
            self.summary.record(view, i, stat[n], geometry)
            for k in self.summary.keys:  # scalars summed into a new array are rebound
                out[f"{n}:{k}"] = view[k]

    def split(self, values: dict) -> dict:
        """``{map: {key: values}}`` of a run's values."""
        return {n: {k: values[f"{n}:{k}"] for k in self.summary.keys} for n in self.names}


class TwoSidedClusterMaxima(ClusterMaxima):
    """The maximum absolute statistic and the largest cluster's size and mass of each
    iteration, clusters taken on both sides: face-connected voxels with ``stat >
    threshold``, and separately those with ``stat < -threshold``; mass is ``sum(|stat| -
    threshold)`` (NiMARE's two-tailed cluster measures)."""

    def __init__(self, threshold: float):
        super().__init__(threshold)
        if self.threshold < 0:
            raise DaskmetaError(f"cluster-forming threshold must be finite and >= 0; got "
                                f"{threshold!r}")

    def record(self, out, i, stat, geometry):
        vol = np.zeros(geometry.shape, dtype=np.float32)
        vol[geometry.mask] = stat
        out["max_stat"][i] = np.max(np.abs(stat)) if stat.size else 0.0
        size = mass = 0
        for supra in (vol > self.threshold, vol < -self.threshold):
            labels, n = ndimage.label(supra, _FACES)
            if n:
                lab = labels[supra]
                size = max(size, int(np.bincount(lab).max()))
                mass = max(mass, float(np.bincount(
                    lab, weights=np.abs(vol[supra]).astype(np.float64) - self.threshold).max()))
        out["max_size"][i] = size
        out["max_mass"][i] = mass
