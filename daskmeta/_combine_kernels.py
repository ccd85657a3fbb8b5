"""The compiled loops of the MA combine (see :mod:`daskmeta._combine`, which prepares their
lookup tables and calls them).

How they stay fast: kernel supports are cut into runs along the grid's last axis, and a
padded lookup volume cuts each run into segments of consecutive in-mask voxels, so every
update is a contiguous loop with no bounds check. An experiment with several foci gathers,
per voxel, its largest MA value in a scratch vector touched only at its supports (as
``sign * f`` when ``f`` is monotone, one vectorised minimum; else as the value's rank among
all distinct values, which the value histograms need too), records the touched segments,
then adds ``f`` of that value once per voxel and resets them. The volume is visited in
slabs of a few planes, every experiment in order within a slab, so the sums and scratch
being updated stay in the core's cache whatever the number of experiments. Nothing
voxel-sized is allocated per experiment.

The Monte Carlo nulls keep their sums at padded-volume addresses (``padded``): every run is
then added (or gathered) whole, with no lookup of the mask's segments, and the voxels outside
the mask collect values nobody reads (the per-iteration sweep reads and resets the in-mask
ones, row by row). Each in-mask sum gets the same additions in the same order either way.
A batch of null iterations is one call: per iteration, the combine of that iteration's foci,
then its summary (:func:`daskmeta._summary_kernels.summarize`), which also resets the sums;
the GIL stays released for the whole batch.
"""

from __future__ import annotations

import numpy as np

from daskmeta._numba_cache import compiled
from daskmeta._summary_kernels import summarize

__all__ = ["SLAB_PLANES", "combine", "value_bins"]


@compiled(nogil=True)
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


#: Planes (along the grid's first axis) of one slab. :func:`combine` works slab by slab, so
#: the part of the sums and scratch it updates stays in the core's own cache.
SLAB_PLANES = 4


@compiled(nogil=True)
def combine(focus_base, row_start, row_kernel, r_start, plane_runs, r_delta, r_len, r_val0,
            k_val, k_sval, k_rank, rank_val, lut, seg, plane, plane_start, add_mode, sign,
            sel_indptr, sel_indices, sel_data, acc, best, fscr, rec_pos, rec_len, want_hist,
            hist_inv_step, k_bin, rank_bin, k_ma, rank_ma, hist, row_max, padded, kind, thr,
            lthr, clusters, row_first, row_at, row_len, voxel_base, nb_delta, mark, visited,
            sval, supra, stack, itag, out_stat, out_size, out_mass):
    """Add ``w * f(MA)`` of every experiment into the sums of the selections holding it,
    for each of one or several placements of the foci (a fit: one; a batch of Monte Carlo
    null iterations: one per iteration, each summarized and its sums reset before the next).

    Parameters
    ----------
    focus_base : (n_iterations, n_foci) int64
        Padded-volume address of each focus (foci of experiment ``e`` are
        ``row_start[e]:row_start[e + 1]``, using support ``row_kernel[e]``), per iteration.
        Without a summary (``kind < 0``) the sums of every iteration add up.
    r_start, plane_runs, r_delta, r_len, r_val0, k_val, k_sval, k_rank, rank_val, lut, seg,
    plane, plane_start
        The supports as runs and the volume (see :class:`CombineContext`).
    add_mode : bool
        Foci of an experiment add (KDA) instead of taking the maximum.
    sign : float
        :attr:`CombineContext.sign`: with ``f`` monotone (``sign != 0``) and no histograms,
        the maximum of an experiment's foci is gathered as the minimum of ``sign * f``.
    sel_indptr, sel_indices, sel_data
        Selection x experiment weights in CSC form: experiment ``e`` is in selections
        ``sel_indices[sel_indptr[e]:sel_indptr[e + 1]]`` with those weights.
    acc : (n_selections, n_voxels) float64
        The sums, added into (with ``padded``, ``(n_selections, padded volume size)``).
    best, fscr, rec_pos, rec_len
        Scratch (zeros): int32 and float64 over the in-mask voxels of one slab
        (:attr:`CombineContext.slab_voxels`; with ``padded``, over the slab's padded
        planes), and records of touched segments.
    want_hist : bool
        Also count each experiment's non-zero MA values into ``hist[e, bin]`` (bins from
        ``k_bin`` / ``rank_bin``; in add mode, of the sums on the grid of ``hist_inv_step``)
        and its maximum into ``row_max[e]`` (zeros on entry).
    padded : bool
        Sums at padded-volume addresses, the supports' runs added whole: no walk along the
        mask's segments. The entries of ``acc`` outside the mask are then arbitrary (the
        caller never reads them). Not with ``want_hist``.
    kind : int
        :data:`~daskmeta._summary_kernels.STAT_NONE` (-1): no summary (a fit). Otherwise
        the statistic of :func:`~daskmeta._summary_kernels.summarize`, which summarizes
        each iteration's sums (``acc[0]``, one selection) into ``out_stat[it]`` (and, with
        ``clusters``, ``out_size[it]``, ``out_mass[it]``) and zeroes them.
    thr, lthr, clusters, row_first, row_at, row_len, voxel_base, nb_delta, mark, visited, sval,
    supra, stack, itag
        As :func:`~daskmeta._summary_kernels.summarize` takes them (``lut`` is this
        function's); ``itag`` is that of the last iteration summarized before this call.

    Returns
    -------
    int
        ``itag`` of the last iteration summarized (unchanged without a summary).
    """
    n_rows = row_start.shape[0] - 1
    n_foci = focus_base.shape[1]
    reach = (plane_runs.shape[1] - 2) // 2
    mono = sign != 0.0 and not add_mode and not want_hist
    fplane = np.empty(n_foci, dtype=np.int64)
    for it in range(focus_base.shape[0]):
        fb = focus_base[it]
        # Each focus's plane, and the planes the foci reach.
        first = np.int64(0)
        last = np.int64(0)
        for f in range(n_foci):
            fplane[f] = fb[f] // plane
            if f == 0 or fplane[f] - reach < first:
                first = fplane[f] - reach
            if f == 0 or fplane[f] + reach + 1 > last:
                last = fplane[f] + reach + 1
        # Slab by slab, every experiment in order: per voxel the additions are in the
        # experiments' order whatever the slabs. The scratch holds one slab's voxels (in-mask
        # indices are plane by plane), so it stays in the core's cache too.
        n_planes = plane_start.shape[0] - 1
        for s0 in range(first, last, SLAB_PLANES):
            s1 = s0 + SLAB_PLANES
            if padded:
                slab0 = np.uint64(s0 * plane)
            else:
                slab0 = np.uint64(plane_start[min(max(s0, 0), n_planes)])
            for e in range(n_rows):
                f0 = row_start[e]
                f1 = row_start[e + 1]
                p0 = sel_indptr[e]
                p1 = sel_indptr[e + 1]
                if f1 == f0 or (p1 == p0 and not want_hist):
                    continue
                kk = row_kernel[e]
                top = np.float32(0)
                nrec = 0
                if f1 - f0 == 1 or (add_mode and not want_hist):
                    # One focus (no overlaps to combine), or sums: add the support values.
                    for f in range(f0, f1):
                        d_lo = max(s0 - fplane[f], -reach)
                        d_hi = min(s1 - fplane[f], reach + 1)
                        if d_lo >= d_hi:
                            continue
                        b = fb[f]
                        for r in range(plane_runs[kk, d_lo + reach], plane_runs[kk, d_hi + reach]):
                            p = b + r_delta[r]
                            end = p + r_len[r]
                            v = r_val0[r]
                            while p < end:
                                # n in-mask voxels from p, their sums from c0 (padded: the
                                # whole run); skip -n voxels outside the mask.
                                if padded:
                                    n = end - p
                                    c0 = np.uint64(p)
                                else:
                                    n = seg[p]
                                    if n <= 0:
                                        p -= n
                                        v -= n
                                        continue
                                    if n > end - p:
                                        n = end - p
                                    # Unsigned indices: no negative-index wraparound test, so
                                    # the loops vectorise.
                                    c0 = np.uint64(lut[p])
                                v0 = np.uint64(v)
                                for q in range(p0, p1):
                                    row = sel_indices[q]
                                    w = sel_data[q]
                                    for t in range(np.uint64(n)):
                                        acc[row, c0 + t] += w * k_val[v0 + t]
                                if want_hist:
                                    for t in range(np.uint64(n)):
                                        hist[e, k_bin[v0 + t]] += 1
                                        top = max(top, k_ma[v0 + t])
                                p += n
                                v += n
                    if want_hist:
                        row_max[e] = max(row_max[e], top)
                    continue
                # Gather each voxel's largest value (as sign * f, or its rank; the sum in add
                # mode) in scratch, recording the touched segments, then add it once.
                for f in range(f0, f1):
                    d_lo = max(s0 - fplane[f], -reach)
                    d_hi = min(s1 - fplane[f], reach + 1)
                    if d_lo >= d_hi:
                        continue
                    b = fb[f]
                    for r in range(plane_runs[kk, d_lo + reach], plane_runs[kk, d_hi + reach]):
                        p = b + r_delta[r]
                        end = p + r_len[r]
                        v = r_val0[r]
                        while p < end:
                            # The segment step of the loop above, written out again: an inlined
                            # helper taking the lookup arrays measured 4-11% slower (nulls).
                            if padded:
                                n = end - p
                                c0 = np.uint64(p)
                            else:
                                n = seg[p]
                                if n <= 0:
                                    p -= n
                                    v -= n
                                    continue
                                if n > end - p:
                                    n = end - p
                                c0 = np.uint64(lut[p])
                            v0 = np.uint64(v)
                            l0 = c0 - slab0
                            if mono:
                                for t in range(np.uint64(n)):
                                    x = k_sval[v0 + t]
                                    y = fscr[l0 + t]
                                    fscr[l0 + t] = x if x < y else y
                            elif add_mode:
                                for t in range(np.uint64(n)):
                                    fscr[l0 + t] += k_val[v0 + t]
                            else:
                                for t in range(np.uint64(n)):
                                    best[l0 + t] = max(best[l0 + t], k_rank[v0 + t])
                            rec_pos[nrec] = c0
                            rec_len[nrec] = n
                            nrec += 1
                            p += n
                            v += n
                # A voxel covered by two records is reset after the first, so the second adds
                # zero: each voxel counts once, bit for bit. sign * (sign * f) == f and
                # (w * sign) * (sign * f) == w * f exactly.
                if mono and p1 - p0 == 1:
                    # One selection (a Monte Carlo null): add and reset in one sweep.
                    target = acc[sel_indices[p0]]
                    ws = sel_data[p0] * sign
                    for i in range(nrec):
                        c0 = np.uint64(rec_pos[i])
                        l0 = c0 - slab0
                        for t in range(np.uint64(rec_len[i])):
                            target[c0 + t] += ws * fscr[l0 + t]
                            fscr[l0 + t] = 0.0
                    nrec = 0
                for i in range(nrec):
                    c0 = np.uint64(rec_pos[i])
                    l0 = c0 - slab0
                    n = np.uint64(rec_len[i])
                    if mono:
                        for q in range(p0, p1):
                            target = acc[sel_indices[q]]
                            ws = sel_data[q] * sign
                            for t in range(n):
                                target[c0 + t] += ws * fscr[l0 + t]
                        for t in range(n):
                            fscr[l0 + t] = 0.0
                    elif add_mode:
                        for q in range(p0, p1):
                            target = acc[sel_indices[q]]
                            w = sel_data[q]
                            for t in range(n):
                                target[c0 + t] += w * fscr[l0 + t]
                        if want_hist:
                            for t in range(n):
                                a = fscr[l0 + t]
                                if a != 0.0:
                                    hist[e, _nearest_bin(a, hist_inv_step)] += 1
                                    top = max(top, np.float32(a))
                        for t in range(n):
                            fscr[l0 + t] = 0.0
                    else:
                        for q in range(p0, p1):
                            target = acc[sel_indices[q]]
                            w = sel_data[q]
                            for t in range(n):
                                target[c0 + t] += w * rank_val[best[l0 + t]]
                        if want_hist:
                            for t in range(n):
                                k = best[l0 + t]
                                if k > 0:
                                    hist[e, rank_bin[k]] += 1
                                    top = max(top, rank_ma[k])
                        for t in range(n):
                            best[l0 + t] = 0
                if want_hist:
                    row_max[e] = max(row_max[e], top)
        if kind >= 0:
            # A null iteration: its summary, which also zeroes the sums for the next one.
            itag += 1
            top_stat, top_size, top_mass = summarize(
                acc[0], kind, thr, lthr, clusters, row_first, row_at, row_len, voxel_base, lut,
                nb_delta, mark, visited, sval, supra, stack, itag)
            out_stat[it] = top_stat
            if clusters:
                out_size[it] = top_size
                out_mass[it] = top_mass
    return itag


@compiled(nogil=True, inline="always")
def _nearest_bin(value, inv_step):
    """Nearest bin of a value on the grid ``0, 1 / inv_step, ...``, ties upward (NiMARE's
    ``_nearest_bin``); the same rule as :func:`value_bins`."""
    scaled = np.float64(value) * inv_step
    fl = np.floor(scaled)
    return max(0, int(fl) + int(scaled - fl >= 0.5))


def value_bins(values, inv_step: float) -> np.ndarray:
    """Nearest bin (ties upward, at least 0) of each value on the grid ``0, 1 / inv_step,
    2 / inv_step, ...``: :func:`daskmeta._rows.nearest_bin`, vectorised."""
    scaled = np.asarray(values, dtype=np.float32).astype(np.float64) * float(inv_step)
    fl = np.floor(scaled)
    return np.maximum(0, fl.astype(np.int64) + (scaled - fl >= 0.5)).astype(np.int64)
