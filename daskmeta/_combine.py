"""The compiled MA combine: foci -> per-experiment MA values -> weighted sums, in one pass.

Fits and Monte Carlo nulls share this code (DESIGN: every statistic is a reduction over the
study axis). For each experiment it stamps the kernel support of every focus on the grid,
combines the foci of the experiment (maximum for ALE and MKDA, sum for KDA), applies the
estimator's elementwise ``f`` (``log1p(-MA)`` for ALE, the identity for (M)KDA) and adds
``w * f(MA)`` into the sum of every selection that holds the experiment. It can also count
each experiment's MA values into a histogram (what the estimators' approximate nulls need),
so a fit never builds the experiments x voxels MA matrix.

The compiled loops live in :mod:`daskmeta._combine_kernels`; this module builds their lookup
tables (once per process) and calls them.

The order of additions is the experiments' order, per voxel, so a sum equals NiMARE's
``sum(f(MA), axis=0)`` in float64 bit for bit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from daskmeta._combine_kernels import (  # noqa: F401 (re-exported)
    SLAB_PLANES,
    _segments_of_lines,
    combine,
    value_bins,
)
from daskmeta._summary_kernels import STAT_NONE
from daskmeta.exceptions import DaskmetaError

__all__ = ["CombineContext", "IterationSummary", "combine", "combine_context", "combine_rows",
           "foci_in_reach", "identity", "support_reach", "value_bins", "zeroed"]


# --------------------------------------------------------------------------------------------
# the supports as runs, built once per process
# --------------------------------------------------------------------------------------------
@dataclass
class CombineContext:
    """Lookup tables of :func:`combine` for one mask, set of supports and ``f``.

    Attributes
    ----------
    lut : int32 over the padded volume: in-mask index or -1 (flattened)
    seg : int32 over the padded volume: signed run lengths along the last axis
    voxel_base : int64 padded address of each in-mask voxel
    r_start : int64: the runs of support ``s`` are ``r_start[s]:r_start[s + 1]``
    plane_start : int64 over the padded volume's planes (+ 1): in-mask voxels before each
        plane (in-mask indices run plane by plane)
    slab_voxels : int: most in-mask voxels in :data:`SLAB_PLANES` consecutive planes
    plane_runs : int64 ``(n_supports, 2 * reach + 2)``: the runs of support ``s`` on the
        planes ``d`` to ``d' - 1`` away from its focus along the first axis are
        ``plane_runs[s, d + reach]:plane_runs[s, d' + reach]`` (runs are in (i, j, k) order)
    r_delta, r_len, r_val0 : int64 per run: address offset of its first voxel, its length,
        the index of its first value in ``k_val``
    k_val : float64 ``f`` of each support value, in run order
    sign : float: 1.0 if ``f`` never increases with the MA value (ALE's ``log1p(-MA)``), -1.0
        if it never decreases (the identity), else 0.0: then the largest MA value of a voxel
        has the smallest ``sign * f``
    k_sval : float64 ``sign * k_val``
    k_ma : float32 MA value of each support value, in run order
    k_rank : int32 rank of each support value among all distinct values (1 = smallest)
    rank_val : float64 ``f`` of each rank's MA value; ``rank_val[0] = 0``
    rank_ma : float32 MA value of each rank; ``rank_ma[0] = 0``
    nb_delta : int64 padded address offsets of the 6 face neighbours
    row_first, row_base, row_len : int64 per run of consecutive in-mask voxels along the last
        axis (a mask row): in-mask index and padded address of its first voxel, its length
    pad : int
    pshape : tuple of int
    seg_per_support : int64 most in-mask segments one focus of each support stamps
    """

    lut: np.ndarray
    seg: np.ndarray
    voxel_base: np.ndarray
    r_start: np.ndarray
    plane_start: np.ndarray
    slab_voxels: int
    plane_runs: np.ndarray
    r_delta: np.ndarray
    r_len: np.ndarray
    r_val0: np.ndarray
    k_val: np.ndarray
    sign: float
    k_sval: np.ndarray
    k_ma: np.ndarray
    k_rank: np.ndarray
    rank_val: np.ndarray
    rank_ma: np.ndarray
    nb_delta: np.ndarray
    row_first: np.ndarray
    row_base: np.ndarray
    row_len: np.ndarray
    pad: int
    pshape: tuple
    seg_per_support: np.ndarray

    @property
    def plane(self) -> int:
        """Address distance between planes of the padded volume along the first axis."""
        return int(self.pshape[1] * self.pshape[2])

    def focus_base(self, focus_ijk) -> np.ndarray:
        """Padded-volume addresses of foci given as voxel indices on the grid."""
        ijk = np.asarray(focus_ijk, dtype=np.int64).reshape(-1, 3) + self.pad
        return (ijk[:, 0] * self.pshape[1] + ijk[:, 1]) * self.pshape[2] + ijk[:, 2]

    def bins(self, inv_step: float):
        """``(k_bin, rank_bin, width)``: the histogram bin of each support value and rank on
        the grid of ``inv_step``, and the bins needed."""
        k_bin = value_bins(self.k_ma, inv_step)
        rank_bin = value_bins(self.rank_ma, inv_step)
        width = int(max(k_bin.max(initial=0), rank_bin.max(initial=0))) + 1
        return k_bin, rank_bin, width

    def max_records(self, row_start, row_kernel) -> int:
        """Records one of these experiments can stamp at most (scratch of :func:`combine`)."""
        n_foci = np.diff(np.asarray(row_start, dtype=np.int64))
        if len(n_foci) == 0:
            return 1
        return max(1, int(np.max(n_foci * self.seg_per_support[np.asarray(row_kernel)])))

    @property
    def padded_size(self) -> int:
        """Voxels of the padded volume (the length of sums at padded addresses)."""
        return int(np.prod(self.pshape))

    def scratch(self, row_start, row_kernel, padded: bool = False):
        """Fresh scratch arrays (``best``, ``fscr``, ``rec_pos``, ``rec_len``) of
        :func:`combine` for these experiments (``padded``: for sums at padded addresses)."""
        n_rec = self.max_records(row_start, row_kernel)
        n = SLAB_PLANES * self.plane if padded else self.slab_voxels
        return (zeroed(n, np.int32), zeroed(n, np.float64), zeroed(n_rec, np.int64),
                zeroed(n_rec, np.int64))

    def run(self, focus_base, row_start, row_kernel, add_mode, sel, acc, scratch,
            hist_args=None, padded: bool = False,
            summary: IterationSummary | None = None) -> None:
        """:func:`combine` with these tables. Fits and Monte Carlo nulls call it alike, so
        its one compiled specialisation serves both.

        Parameters
        ----------
        focus_base : (n_foci,) or (n_iterations, n_foci) int64 array
            The foci's padded addresses: one placement (a fit), or one per null iteration
            (with ``summary``; without, the sums of every placement add up).
        row_start, row_kernel : int64 arrays
        add_mode : bool
        sel : tuple
            ``(indptr, indices, data)`` of the selection x experiment weights in CSC form
            (int64, int64, float64).
        acc : (n_selections, n_voxels) float64
        scratch : tuple
            From :meth:`scratch`.
        hist_args : tuple, optional
            ``(hist_inv_step, k_bin, rank_bin, hist, row_max)`` to count value histograms.
        padded : bool
            ``acc`` holds sums at padded-volume addresses (``(n_selections,
            padded_size)``; the in-mask voxels' sums are ``acc[:, voxel_base]``, the other
            entries are arbitrary), and ``scratch`` was made for it: the supports' runs are
            added whole, with no walk along the mask's segments (the Monte Carlo nulls).
        summary : IterationSummary, optional
            Summarize each placement's sums (one selection) in compiled code, and zero them
            for the next: a batch of null iterations in one call, with the GIL released
            throughout. Its ``itag`` is advanced.
        """
        if padded and hist_args is not None:
            raise DaskmetaError("value histograms need sums over the in-mask voxels")
        if hist_args is None:
            want, inv_step, k_bin, rank_bin, hist, row_max = (False, 0.0, _NO_BINS, _NO_BINS,
                                                              _NO_HIST, _NO_MAX)
        else:
            want = True
            inv_step, k_bin, rank_bin, hist, row_max = hist_args
        s = _NO_SUMMARY if summary is None else summary
        if summary is not None and acc.shape[0] != 1:
            raise DaskmetaError("a per-iteration summary needs sums of one selection")
        focus_base = _own(focus_base, np.int64)
        if focus_base.ndim == 1:
            focus_base = focus_base.reshape(1, -1)
        best, fscr, rec_pos, rec_len = scratch
        itag = combine(
            focus_base, _own(row_start, np.int64),
            _own(row_kernel, np.int64), self.r_start, self.plane_runs, self.r_delta,
            self.r_len, self.r_val0, self.k_val, self.k_sval, self.k_rank, self.rank_val,
            self.lut, self.seg, self.plane, self.plane_start, bool(add_mode),
            float(self.sign),
            _own(sel[0], np.int64), _own(sel[1], np.int64), _own(sel[2], np.float64),
            acc, best, fscr, rec_pos, rec_len, want, float(inv_step), k_bin, rank_bin,
            self.k_ma, self.rank_ma, hist, row_max, bool(padded),
            int(s.kind), float(s.thr), float(s.lthr), bool(s.clusters), self.row_first,
            self.row_base if padded else self.row_first, self.row_len, self.voxel_base,
            self.nb_delta, s.mark, s.visited, s.sval, s.supra, s.stack, int(s.itag),
            s.out_stat, s.out_size, s.out_mass)
        if summary is not None:
            summary.itag = int(itag)


@dataclass
class IterationSummary:
    """What :meth:`CombineContext.run` records of each null iteration, in compiled code
    (:func:`daskmeta._summary_kernels.summarize`): the maximum statistic into
    ``out_stat[i]`` and, with ``clusters``, the largest face-connected cluster's size and
    mass above ``thr`` into ``out_size[i]``, ``out_mass[i]``.

    ``kind`` is the statistic (``STAT_ALE``, ``STAT_IDENTITY`` of
    :mod:`daskmeta._summary_kernels`); ``lthr`` ALE's log-domain pre-test of candidates;
    ``mark``, ``visited`` (int64), ``sval`` (float32), ``supra``, ``stack`` (int32) are work
    arrays over the in-mask voxels, ``itag`` the tag of the last iteration that used them.
    """

    kind: int
    thr: float
    lthr: float
    clusters: bool
    mark: np.ndarray
    visited: np.ndarray
    sval: np.ndarray
    supra: np.ndarray
    stack: np.ndarray
    itag: int
    out_stat: np.ndarray
    out_size: np.ndarray
    out_mass: np.ndarray


#: Placeholders for the histogram arguments of :func:`combine` when none are counted (they
#: are never written then).
_NO_BINS = np.zeros(1, dtype=np.int64)
_NO_HIST = np.zeros((1, 1), dtype=np.int32)
_NO_MAX = np.zeros(1, dtype=np.float32)
#: No per-iteration summary (a fit): placeholders of the same types, never written.
_NO_SUMMARY = IterationSummary(
    kind=STAT_NONE, thr=0.0, lthr=0.0, clusters=False, mark=np.zeros(1, np.int64),
    visited=np.zeros(1, np.int64), sval=np.zeros(1, np.float32), supra=np.zeros(1, np.int32),
    stack=np.zeros(1, np.int32), itag=0, out_stat=np.zeros(1, np.float32),
    out_size=np.zeros(1, np.int64), out_mass=np.zeros(1, np.float64))


def zeroed(shape, dtype) -> np.ndarray:
    """A zero array written at once (``np.zeros`` leaves fresh pages unmapped: their first
    read maps the shared zero page and the first write then copies it, a fault that, with
    other threads of the process running, interrupts every core to flush its TLB)."""
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def _own(a, dtype) -> np.ndarray:
    """``a`` as a writeable C-contiguous array of ``dtype`` (copied only if it is not one):
    numba compiles a separate specialisation for read-only arrays, which unpickled arrays
    can be."""
    a = np.asarray(a)
    if a.dtype != dtype or not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, dtype=dtype, order="C")
    return a


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


def elementwise_values(func, values: np.ndarray) -> np.ndarray:
    """``func`` (an estimator's elementwise ``f`` of MA blocks) of float32 values, as float64;
    ``f(0)`` must be 0 (zeros outside the supports add nothing)."""
    values = np.asarray(values, dtype=np.float32)
    out = np.asarray(func(np.concatenate([[np.float32(0)], values])[None, :]))
    if out.shape != (1, len(values) + 1):
        raise DaskmetaError(f"the estimator's block function returned shape {out.shape} for "
                            f"a (1, {len(values) + 1}) block; it must be elementwise")
    if out[0, 0] != 0:
        raise DaskmetaError("the estimator's block function must map an MA value of 0 to 0; "
                            f"it gave {out[0, 0]!r}")
    return out[0, 1:].astype(np.float64)


def support_reach(k_offsets) -> int:
    """How many voxels the supports reach from their focus along any axis."""
    k_offsets = np.asarray(k_offsets)
    return int(np.abs(k_offsets).max()) if k_offsets.size else 0


def _monotone_sign(rank_val: np.ndarray) -> float:
    """1.0 if ``f`` of the ranks (``rank_val``, from ``f(0) = 0`` up) never increases, -1.0
    if it never decreases, 0.0 otherwise (or if a value is not finite)."""
    if not np.all(np.isfinite(rank_val)):
        return 0.0
    step = np.diff(rank_val)
    if np.all(step <= 0):
        return 1.0
    if np.all(step >= 0):
        return -1.0
    return 0.0


def _build_context(mask, k_start, k_offsets, k_values, func, extra_pad: int = 0
                   ) -> CombineContext:
    shape = mask.shape
    nonzero = k_values != 0  # zeros in a support add nothing and are not MA values
    # Foci lie up to extra_pad voxels off the grid: the padding holds their whole supports.
    reach = support_reach(k_offsets)
    pad = max(1, reach + int(extra_pad))
    pshape = tuple(int(s) + 2 * pad for s in shape)
    n_voxels = int(mask.sum())
    lut = np.full(pshape, -1, dtype=np.int32)
    lut[pad:pad + shape[0], pad:pad + shape[1], pad:pad + shape[2]][mask] = np.arange(
        n_voxels, dtype=np.int32)
    seg = np.zeros(pshape, dtype=np.int32)
    _segments_of_lines(lut, seg)
    per_plane = (lut >= 0).reshape(pshape[0], -1).sum(axis=1)
    plane_start = np.concatenate([[0], np.cumsum(per_plane)]).astype(np.int64)
    slab_voxels = max(1, int(np.max(plane_start[np.minimum(np.arange(pshape[0]) + SLAB_PLANES,
                                                            pshape[0])] - plane_start[:-1])))
    lut = lut.reshape(-1)
    seg = seg.reshape(-1)
    sy, sz = pshape[1], pshape[2]
    ijk = np.argwhere(mask).astype(np.int64) + pad
    voxel_base = (ijk[:, 0] * sy + ijk[:, 1]) * sz + ijk[:, 2]
    row_first = np.flatnonzero(np.diff(voxel_base, prepend=-2) != 1).astype(np.int64)
    r_start, r_delta, r_len, r_val0, ma_vals, r_di = [0], [], [], [], [], []
    n_vals = 0
    for s in range(len(k_start) - 1):
        a, b = int(k_start[s]), int(k_start[s + 1])
        keep = nonzero[a:b]
        off = k_offsets[a:b][keep]
        order, starts, lengths = _support_runs(off)
        first = off[order][starts].astype(np.int64)
        r_delta.append((first[:, 0] * sy + first[:, 1]) * sz + first[:, 2])
        r_di.append(first[:, 0])
        r_len.append(lengths)
        r_val0.append(starts + n_vals)
        ma_vals.append(k_values[a:b][keep][order])
        n_vals += len(off)
        r_start.append(r_start[-1] + len(starts))

    def cat(xs, dtype):
        return np.ascontiguousarray(np.concatenate(xs) if xs else np.zeros(0), dtype)

    k_ma = cat(ma_vals, np.float32)
    uniq, inverse = np.unique(k_ma, return_inverse=True)
    r_len_all = cat(r_len, np.int64)
    # Runs of each support by plane offset (runs are sorted by (i, j, k)).
    planes = np.arange(-reach, reach + 2)
    plane_runs = np.zeros((len(r_di), 2 * reach + 2), dtype=np.int64)
    for s, di in enumerate(r_di):
        plane_runs[s] = r_start[s] + np.searchsorted(di, planes, side="left")
    k_val = np.ascontiguousarray(elementwise_values(func, k_ma))
    rank_val = np.ascontiguousarray(np.concatenate([[0.0], elementwise_values(func, uniq)]))
    sign = _monotone_sign(rank_val)
    # A run of n voxels holds at most ceil(n / 2) in-mask segments.
    seg_per_support = np.asarray([int(np.sum((ln + 1) // 2)) for ln in r_len], dtype=np.int64)
    return CombineContext(
        lut=lut, seg=seg, voxel_base=np.ascontiguousarray(voxel_base),
        r_start=np.asarray(r_start, dtype=np.int64), plane_start=plane_start,
        slab_voxels=slab_voxels, plane_runs=plane_runs,
        r_delta=cat(r_delta, np.int64), r_len=r_len_all, r_val0=cat(r_val0, np.int64),
        k_val=k_val, sign=sign, k_sval=np.ascontiguousarray(sign * k_val), k_ma=k_ma,
        k_rank=np.ascontiguousarray(inverse.reshape(-1) + 1, dtype=np.int32),
        rank_val=rank_val,
        rank_ma=np.concatenate([[np.float32(0)], uniq]).astype(np.float32),
        nb_delta=np.array([sy * sz, -sy * sz, sz, -sz, 1, -1], dtype=np.int64),
        row_first=row_first, row_base=np.ascontiguousarray(voxel_base[row_first]),
        row_len=np.ascontiguousarray(np.diff(np.append(row_first, n_voxels)), np.int64),
        pad=pad, pshape=pshape, seg_per_support=seg_per_support,
    )


_CONTEXTS: OrderedDict = OrderedDict()
_CONTEXT_LOCK = threading.Lock()
_MAX_CONTEXTS = 4


def combine_context(token: str, mask, k_start, k_offsets, k_values, func,
                    extra_pad: int = 0) -> CombineContext:
    """The :class:`CombineContext` of a mask, supports and ``f``, built once per process
    (cached under ``token``, which must name all of them). ``extra_pad``: how far (voxels)
    foci may lie off the grid; foci must lie within it (see :func:`foci_in_reach`)."""
    token = f"{token}-{int(extra_pad)}"
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get(token)
        if ctx is not None:
            _CONTEXTS.move_to_end(token)
            return ctx
    ctx = _build_context(np.asarray(mask, dtype=bool), np.asarray(k_start, dtype=np.int64),
                         np.asarray(k_offsets, dtype=np.int32).reshape(-1, 3),
                         np.asarray(k_values, dtype=np.float32), func, extra_pad)
    with _CONTEXT_LOCK:
        _CONTEXTS[token] = ctx
        while len(_CONTEXTS) > _MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    return ctx


def foci_in_reach(focus_ijk, shape, reach: int) -> tuple[np.ndarray, int]:
    """Which foci (voxel indices, on or off the grid) can touch the grid, and how far off the
    grid the farthest of them lies (the ``extra_pad`` of :func:`combine_context`). A focus
    more than ``reach`` voxels off the grid along any axis touches no voxel of it."""
    ijk = np.asarray(focus_ijk, dtype=np.int64).reshape(-1, 3)
    if len(ijk) == 0:
        return np.zeros(0, dtype=bool), 0
    below = np.maximum(0, -ijk)
    above = np.maximum(0, ijk - (np.asarray(shape, dtype=np.int64) - 1))
    off = np.maximum(below, above).max(axis=1)
    keep = off <= reach
    return keep, int(off[keep].max(initial=0))


def run_combine(ctx: CombineContext, focus_base, row_start, row_kernel, add_mode: bool,
                weights, n_voxels: int, acc_dtype=np.float64, hist_inv_step=None,
                acc=None):
    """:func:`combine` of some experiments into the sums of the selections of ``weights``.

    Parameters
    ----------
    ctx : CombineContext
    focus_base : (n_foci,) int64
    row_start : (n_rows + 1,) int64
    row_kernel : (n_rows,) int64
    add_mode : bool
    weights : scipy.sparse matrix
        Selection x experiment weights over these rows.
    n_voxels : int
    hist_inv_step : float, optional
        Also return each experiment's MA value histogram on this grid and its maximum.
    acc : ndarray, optional
        ``(n_selections, n_voxels)`` float64 sums to add into (zeros by default).

    Returns
    -------
    acc : ndarray
    hist : (n_rows, width) int32 or None
    row_max : (n_rows,) float32 or None
    """
    from scipy import sparse

    w = sparse.csc_matrix(weights)
    n_rows = len(row_start) - 1
    if acc is None:
        acc = np.zeros((w.shape[0], n_voxels), dtype=acc_dtype)
    want = hist_inv_step is not None
    hist_args = None
    if want:
        k_bin, rank_bin, width = ctx.bins(hist_inv_step)
        if add_mode:
            # Sums of foci: up to (foci of the experiment) x (largest support value).
            n_max = float(np.diff(np.asarray(row_start)).max(initial=0))
            width = max(width, int(value_bins([float(ctx.k_ma.max(initial=0)) * n_max],
                                              hist_inv_step)[0]) + 1)
        hist_args = (float(hist_inv_step), k_bin, rank_bin,
                     np.zeros((n_rows, width), dtype=np.int32),
                     np.zeros(max(n_rows, 1), dtype=np.float32))
    ctx.run(focus_base, row_start, row_kernel, add_mode, (w.indptr, w.indices, w.data), acc,
            ctx.scratch(row_start, row_kernel), hist_args)
    if not want:
        return acc, None, None
    return acc, hist_args[3], hist_args[4][:n_rows]


def identity(block):
    """``f`` of plain MA values (the dense MA rows of :meth:`KernelPlan.fill`)."""
    return block


def _plan_reach(plan):
    """``(foci in reach of the grid, extra padding)`` of a plan, computed once per plan."""
    cached = plan.__dict__.get("_reach")
    if cached is None:
        cached = foci_in_reach(plan.focus_ijk, plan.shape, support_reach(plan.k_offsets))
        plan.__dict__["_reach"] = cached
    return cached


def combine_rows(plan, rows, func, func_name: str, weights, acc_dtype=np.float64,
                 hist_inv_step=None, acc=None):
    """:func:`run_combine` of some rows of a kernel plan.

    Parameters
    ----------
    plan : KernelPlan
    rows : (n,) int array
        Rows of the plan, in the order of the weights' columns.
    func : callable
        Elementwise ``f`` of MA values; ``func_name`` names it (context cache).
    weights : sparse (n_selections, n) matrix
    acc_dtype, hist_inv_step, acc
        As :func:`run_combine`.
    """
    in_reach, extra = _plan_reach(plan)
    # The key FociNull uses too: fits and nulls of one process share the tables.
    ctx = combine_context(f"{plan.support_token}-{func_name}", plan.mask, plan.k_start,
                          plan.k_offsets, plan.k_values, func, extra)
    rows = np.asarray(rows, dtype=np.int64)
    starts = plan.row_start[rows]
    counts = plan.row_start[rows + 1] - starts
    ends = np.cumsum(counts)
    take = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(
        starts - (ends - counts), counts)
    keep = in_reach[take]
    if not keep.all():  # foci too far off the grid to touch it add nothing
        counts = np.bincount(np.repeat(np.arange(len(rows)), counts)[keep],
                             minlength=len(rows))
        take = take[keep]
    row_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return run_combine(ctx, ctx.focus_base(plan.focus_ijk[take]), row_start,
                       plan.row_kernel[rows], plan.mode == 2, weights, plan.n_voxels,
                       acc_dtype, hist_inv_step, acc)
