"""Compiled per-iteration summaries of the Monte Carlo nulls (maximum statistic, cluster
size and mass), fused with the statistic of the built-in estimators.

:func:`summarize` is inlined into :func:`daskmeta._combine_kernels.combine`, which runs a
whole batch of a coordinate-based null (combine, then summarize, iteration after iteration)
in one compiled call; the permutation nulls call it on their own maps.
"""

from __future__ import annotations

import numpy as np

from daskmeta._numba_cache import compiled

#: Statistics computed from the combined sum inside compiled code: ALE (``1 - exp(sum)``)
#: and the sum itself ((M)KDA); ``STAT_NONE``: no summary (what fits pass to ``combine``).
STAT_ALE, STAT_IDENTITY, STAT_NONE = 0, 1, -1


@compiled(nogil=True)
def summarize(acc, kind, thr, lthr, clusters, row_first, row_at, row_len, voxel_base, lut,
              nb_delta, mark, visited, sval, supra, stack, itag):
    """Maximum statistic, largest cluster size and mass of one iteration; zeroes the sums.

    The statistic is float32 (as NiMARE's maps); a voxel is supra-threshold when its
    statistic exceeds ``thr`` (compared in float64, as NumPy compares a float32 map with a
    float64 threshold). Clusters are face-connected; mass is ``sum(stat - thr)``.

    The sums are read mask row by mask row: row ``r`` holds the in-mask voxels
    ``row_first[r]:row_first[r] + row_len[r]``, whose sums are ``acc[row_at[r]:row_at[r] +
    row_len[r]]`` (``row_at``: ``row_first`` for sums over the in-mask voxels, the rows'
    padded addresses for sums at padded addresses).
    """
    ns = 0
    # Per row: its extreme, the rare candidate test only in rows that can hold a candidate,
    # then a reset (zeros are never candidates, and leave the extreme at its start of 0).
    # ALE's largest statistic has the smallest sum; (M)KDA's the largest.
    ext = 0.0
    sign = 1.0 if kind == 0 else -1.0
    for r in range(row_first.shape[0]):
        c = row_first[r]
        at = row_at[r]
        n = row_len[r]
        lo = _row_min(acc, at, n, sign)
        if kind == 0:
            ext = lo if lo < ext else ext
            if clusters and lo < lthr:
                for t in range(n):
                    a = acc[at + t]
                    if a < lthr and a != 0.0:
                        s = np.float32(1.0 - np.exp(a))
                        if s > thr:
                            mark[c + t] = itag
                            sval[c + t] = s
                            supra[ns] = c + t
                            ns += 1
        else:
            # -min(0, -a) is -0.0 for a row of zeros; ext starts at +0.0 and stays so.
            hi = -lo
            ext = hi if hi > ext else ext
            if clusters and np.float32(hi) > thr:
                for t in range(n):
                    a = acc[at + t]
                    if np.float32(a) > thr and a != 0.0:
                        mark[c + t] = itag
                        sval[c + t] = np.float32(a)
                        supra[ns] = c + t
                        ns += 1
        for t in range(np.uint64(n)):
            acc[np.uint64(at) + t] = 0.0
    max_stat = np.float32(1.0 - np.exp(ext)) if kind == 0 else np.float32(ext)
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


@compiled(nogil=True, inline="always")
def _row_min(acc, at, n, sign):
    """``min(0, sign * acc[at:at + n])`` (``sign``: 1.0 or -1.0), in four independent
    chains: a minimum is exact in any order, and one chain waits on every comparison."""
    m0 = 0.0
    m1 = 0.0
    m2 = 0.0
    m3 = 0.0
    base = np.uint64(at)
    quads = np.uint64(n) // np.uint64(4)
    for i in range(quads):
        q = base + np.uint64(4) * i
        a0 = sign * acc[q]
        a1 = sign * acc[q + np.uint64(1)]
        a2 = sign * acc[q + np.uint64(2)]
        a3 = sign * acc[q + np.uint64(3)]
        m0 = a0 if a0 < m0 else m0
        m1 = a1 if a1 < m1 else m1
        m2 = a2 if a2 < m2 else m2
        m3 = a3 if a3 < m3 else m3
    for t in range(np.uint64(4) * quads, np.uint64(n)):
        a0 = sign * acc[base + t]
        m0 = a0 if a0 < m0 else m0
    m0 = m1 if m1 < m0 else m0
    m2 = m3 if m3 < m2 else m2
    return m2 if m2 < m0 else m0
