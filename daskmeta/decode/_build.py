"""The association maps of every label, in passes over the MA rows, into a decoder model.

Per label, MKDAChi2 needs only counts: how many of the label's studies are active at each
voxel (one row of ``W @ B``, ``W`` the sparse label x study matrix, ``B`` the binary MA rows)
and how many of all the studies are (one more row of ones). A pass of the engine
(:func:`daskmeta._pass.pass_graph`) sums the rows of a group of labels into exact integer
counts in tasks of rows; tasks of :data:`~daskmeta.decode.model.LABELS_PER_CHUNK` labels then
turn the counts into the target map with the MKDAChi2 functions
(:mod:`daskmeta.estimators._chi2`) and write whole chunks of the model. Groups are as large
as the ``daskmeta.fit-many.memory`` setting allows, so the 50 LDA50 topics are one pass and
the 4,111 NeuroQuery terms a few.

With another CBMA estimator (ALE, MKDADensity, KDA: NiMARE's ``meta_estimator``), a label's
map is the estimator's fit on the label's studies alone: :func:`estimator_maps` runs
:func:`daskmeta.estimators._many.fit_rows` (``fit_many``'s engine: one pass per group of
labels) and each task of labels writes its ``target_image`` map to the model.
"""

from __future__ import annotations

import functools
import operator

import dask
import numpy as np
from scipy import sparse

from daskmeta import config
from daskmeta._pass import ROWS_PER_SUM_TASK, BlockFunction, KernelRows, StoredRows, pass_graph
from daskmeta.cluster import compute
from daskmeta.decode._kernels import association_z
from daskmeta.decode.model import LABELS_PER_CHUNK, write_maps_block
from daskmeta.estimators import _chi2

__all__ = ["association_maps", "estimator_maps", "target_map"]


def target_map(target: str, selected, n_selected, unselected, n_unselected, prior=0.5):
    """One MKDAChi2 map (``target``) of many contrasts at once, float32 ``(labels, voxels)``.

    The association and uniformity z and chi2 maps are computed alone (the common case);
    any other name comes from :func:`daskmeta.estimators._chi2.chi2_maps`.
    """
    sel = np.asarray(selected, dtype=np.float64)
    unsel = np.asarray(unselected, dtype=np.float64)
    n1 = np.asarray(n_selected, dtype=np.float64).reshape(-1, 1)
    n2 = np.asarray(n_unselected, dtype=np.float64).reshape(-1, 1)
    if target in ("z_desc-association", "chi2_desc-association"):
        chi2 = _chi2.two_way_counts(sel, unsel, n1, n2)
        if target.startswith("chi2"):
            return chi2.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            sign = np.sign(sel / n1 - unsel / n2)
        return (np.sqrt(chi2) * sign).astype(np.float32)
    if target in ("z_desc-uniformity", "chi2_desc-uniformity"):
        chi2 = _chi2.one_way(sel, n1)
        if target.startswith("chi2"):
            return chi2.astype(np.float32)
        return (np.sqrt(chi2) * np.sign(sel - sel.mean(axis=-1, keepdims=True))).astype(
            np.float32)
    return np.asarray(_chi2.chi2_maps(sel, n1, unsel, n2, prior=prior)[target],
                      dtype=np.float32)


def _finalize(counts, totals, complement, n_selected, n_total, target, prior, maps_path,
              start):
    """Maps of a few labels from their counts, written to the model (one task). Rows of
    ``complement`` labels counted the studies without the label."""
    totals = np.asarray(totals)
    counts = np.asarray(counts)
    flip = np.asarray(complement, dtype=bool)
    if flip.any():
        counts = counts.copy()
        counts[flip] = totals[None, :] - counts[flip]
    if target == "z_desc-association":
        values = np.empty(counts.shape, dtype=np.float32)
        association_z(counts, totals, np.asarray(n_selected, dtype=np.int64), int(n_total),
                      values)
    else:
        values = target_map(target, counts, n_selected, totals[None, :] - counts,
                            n_total - np.asarray(n_selected), prior)
    return write_maps_block(maps_path, start, values)


def _count_dtype(collection, n_total: int):
    if collection is None:
        return np.dtype(np.float64)
    stored = np.dtype(collection.attrs["dtype"])
    if stored.kind not in "ui":
        return np.dtype(np.float64)
    top = 1.0
    if "ma_max" in collection.data:
        top = float(collection.row_maxima(np.arange(collection.n_experiments)).max())
    return np.dtype(np.uint16 if n_total * top <= np.iinfo(np.uint16).max else np.uint32)


def association_maps(selection, source, n_voxels: int, writer, target: str, prior,
                     chunk_size: int = 64, group_size: int | None = None, progress=None):
    """Compute every label's map into a model writer; returns per-label (mean, norm).

    Parameters
    ----------
    selection : LabelSelection
    source : (Collection or None, KernelPlan or None)
        Where the MA rows come from: a collection's store, or a kernel plan of a Dataset.
    n_voxels : int
    writer : model writer (its ``maps_path`` receives the maps)
    target : str
        MKDAChi2 map name.
    prior : float
    chunk_size : int
        Rows per read from a store.
    group_size : int, optional
        Labels per pass (a multiple of LABELS_PER_CHUNK); default from
        ``daskmeta.fit-many.memory``.
    progress : callable, optional
        ``progress(n_done, n_total)`` after each pass.
    """
    collection, plan = source
    rows = selection.rows
    acc = _count_dtype(collection, selection.n_total)
    n_labels = len(selection.names)
    if group_size is None:
        memory = config.get_bytes("fit-many.memory")
        group_size = int(memory // (n_voxels * acc.itemsize * 8))
    group_size = max(LABELS_PER_CHUNK, group_size // LABELS_PER_CHUNK * LABELS_PER_CHUNK)
    if collection is not None:
        row_source = StoredRows(collection, chunk_size)
        per_task = max(ROWS_PER_SUM_TASK, chunk_size)
    else:
        row_source = KernelRows(plan, BlockFunction()._block_values, "decode-identity")
        per_task = ROWS_PER_SUM_TASK
    w_all = sparse.csr_matrix(selection.weights.tocsc()[:, rows])
    # A label holding for most studies is counted over the studies without it (fewer rows
    # to add), and its counts are the totals minus those: the same integers.
    complement = selection.n_studies * 2 > selection.n_total
    flipped = np.flatnonzero(complement)
    if len(flipped):
        others = sparse.csr_matrix(1.0 - w_all[flipped].toarray())
        place = sparse.csr_matrix((np.ones(len(flipped)), (flipped, np.arange(len(flipped)))),
                                  shape=(n_labels, len(flipped)))
        w_all = sparse.csr_matrix(sparse.diags((~complement).astype(np.float64)) @ w_all
                                  + place @ others)
        w_all.eliminate_zeros()
    ones = sparse.csr_matrix(np.ones((1, len(rows))))
    means, norms = np.empty(n_labels), np.empty(n_labels)
    getitem = dask.delayed(operator.getitem, pure=True)
    finalize = dask.delayed(_finalize, pure=True)
    for g0 in range(0, n_labels, group_size):
        g1 = min(g0 + group_size, n_labels)
        weights = sparse.vstack([ones, w_all[g0:g1]]).tocsc()
        total, _ = pass_graph(row_source, rows, weights, BlockFunction(), acc,
                              with_summaries=False, rows_per_task=per_task, name="decode")
        totals = getitem(total, 0)
        tasks = []
        for s0 in range(g0, g1, LABELS_PER_CHUNK):
            s1 = min(s0 + LABELS_PER_CHUNK, g1)
            counts = getitem(total, slice(1 + s0 - g0, 1 + s1 - g0))
            tasks.append(finalize(counts, totals, complement[s0:s1],
                                  selection.n_studies[s0:s1],
                                  selection.n_total, target, prior, writer.maps_path, s0))
        for (mean, norm), s0 in zip(compute(*tasks), range(g0, g1, LABELS_PER_CHUNK)):
            means[s0:s0 + len(mean)], norms[s0:s0 + len(norm)] = mean, norm
        if progress is not None:
            progress(g1, n_labels)
    return means, norms


def _write_target(maps_path: str, target: str, maps: dict, start: int):
    """A fit_rows sink: write one map of a task's labels to the model (whole chunks)."""
    return write_maps_block(maps_path, start, maps[target])


def estimator_maps(estimator, data, selection, writer, target: str, progress=None):
    """Every label's ``target`` map of a CBMA estimator's fit on the label's studies, in
    passes over the MA rows (:func:`~daskmeta.estimators._many.fit_rows`), into a model
    writer; returns per-label (mean, norm).

    Parameters
    ----------
    estimator : CBMAEstimator
        Validated.
    data : Collection or Dataset
    selection : LabelSelection
    writer : model writer (its ``maps_path`` receives the maps)
    target : str
        One of the estimator's maps (``stat``, ``p``, ``z``, ``logp``).
    progress : callable, optional
        ``progress(n_done, n_total)`` after each pass.
    """
    from daskmeta.estimators._many import FIT_MANY_SELECTIONS_PER_TASK, fit_rows

    if LABELS_PER_CHUNK % FIT_MANY_SELECTIONS_PER_TASK:
        raise AssertionError("a model chunk must hold whole tasks of labels")
    weights = sparse.csr_matrix(selection.weights)
    rows_of = [np.sort(weights.indices[weights.indptr[i]:weights.indptr[i + 1]])
               for i in range(weights.shape[0])]
    n_labels = len(rows_of)
    means, norms = np.empty(n_labels), np.empty(n_labels)

    def collect(g0, g1, results):
        for s0, (mean, norm) in results:
            means[g0 + s0:g0 + s0 + len(mean)], norms[g0 + s0:g0 + s0 + len(norm)] = mean, norm
        if progress is not None:
            progress(g1, n_labels)

    fit_rows(estimator, data, rows_of, collect,
             sink=functools.partial(_write_target, writer.maps_path, target),
             align=LABELS_PER_CHUNK)
    return means, norms
