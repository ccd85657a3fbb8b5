"""Compiled per-iteration summaries of the Monte Carlo nulls (maximum statistic, cluster
size and mass), fused with the statistic of the built-in estimators."""

from __future__ import annotations

import numpy as np

from daskmeta._numba_cache import compiled

#: Statistics computed from the combined sum inside compiled code: ALE (``1 - exp(sum)``)
#: and the sum itself ((M)KDA).
STAT_ALE, STAT_IDENTITY = 0, 1


@compiled(nogil=True)
def summarize(acc, kind, thr, lthr, clusters, voxel_base, lut, nb_delta, mark, visited, sval,
               supra, stack, itag):
    """Maximum statistic, largest cluster size and mass of one iteration; zeroes ``acc``.

    The statistic is float32 (as NiMARE's maps); a voxel is supra-threshold when its
    statistic exceeds ``thr`` (compared in float64, as NumPy compares a float32 map with a
    float64 threshold). Clusters are face-connected; mass is ``sum(stat - thr)``.
    """
    n = acc.shape[0]
    ns = 0
    # One branch-light sweep: the extreme, a rare candidate test, an unconditional reset
    # (zeros are never candidates, and leave the extreme at its start of 0).
    if kind == 0:
        amin = 0.0
        for v in range(n):
            a = acc[v]
            amin = a if a < amin else amin
            if clusters and a < lthr and a != 0.0:
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
            amax = a if a > amax else amax
            if clusters and np.float32(a) > thr and a != 0.0:
                mark[v] = itag
                sval[v] = np.float32(a)
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
