"""``fit_many``: one meta-analysis per selection of a Collection, in passes over its store.

Each pass sums the MA rows of a group of selections (:func:`daskmeta._pass.pass_graph`:
tasks of :data:`~daskmeta._pass.ROWS_PER_SUM_TASK` rows adding each row into the sums of the
selections that hold it), then tasks of :data:`FIT_MANY_SELECTIONS_PER_TASK` selections
compute their maps (and write them to a store).
"""

from __future__ import annotations

import copy
import functools
import operator
import os

import dask
import dask.array as da
import numpy as np
from scipy import sparse

from daskmeta import config
from daskmeta._pass import (
    ROWS_PER_SUM_TASK,
    KernelRows,
    StoredRows,
    has_foci,
    pass_graph,
    selection_rows,
)
from daskmeta._version import __version__
from daskmeta.cluster import compute
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.space import TAL2MNI_METHOD

__all__ = ["FIT_MANY_SELECTIONS_PER_TASK", "fit_many", "fit_rows"]

#: Selections whose maps one fit_many task computes (and writes).
FIT_MANY_SELECTIONS_PER_TASK = 16
_MANY_DTYPES = {"stat": np.float64, "p": np.float64, "z": np.float64, "logp": np.float32}


def _finalize_selections(estimator, sums, summaries, jobs, n_voxels: int, sink, start: int):
    """Maps of a few selections from their sums (one task): ``jobs`` holds, per selection,
    the positions of its rows among the pass's rows, its experiments and foci counts. With a
    ``sink``, returns ``sink(maps, start)`` (e.g. the maps written to a store), else the
    maps (stacked, one row per selection)."""
    estimator = copy.copy(estimator)  # _prepare sets per-selection state
    maps_of = {k: [] for k in _MANY_DTYPES}
    for s, (positions, experiments, n_foci) in enumerate(jobs):
        estimator._prepare(experiments, n_foci)
        mine = estimator._in_null_order([summaries[p] for p in positions],
                                        experiments["id"].to_numpy())
        maps, _ = estimator._finalize(sums[s].astype(np.float64), mine, n_voxels)
        for k, dtype in _MANY_DTYPES.items():
            maps_of[k].append(np.asarray(maps[k], dtype=dtype))
    stacked = {k: np.vstack(v) for k, v in maps_of.items()}
    return stacked if sink is None else sink(stacked, start)


def _write_store(store, maps, start):
    """Write a task's maps to a fit_many store, rows ``start:``."""
    import zarr

    for k, values in maps.items():
        zarr.open_array(store, path=k, mode="r+")[start:start + len(values)] = values


def fit_many(estimator, collection, selections, label_threshold: float = 0.001, store=None,
             group_size: int | None = None, progress=None, overwrite: bool = False):
    """Fit one meta-analysis per selection of a Collection, reading the store once per
    group of selections.

    Each pass over the store sums the MA rows of a group of selections in tasks of
    :data:`~daskmeta._pass.ROWS_PER_SUM_TASK` rows (exact integer counts for
    unweighted (M)KDA, float64 otherwise), then computes the maps of the group's
    selections in tasks of :data:`FIT_MANY_SELECTIONS_PER_TASK`, which write them to
    ``store`` when one is given.

    Parameters
    ----------
    collection : Collection
    selections : dict of str to (str or list of str), or list of str
        Named label expressions or id lists; a list of label names means one selection
        per label (``label_threshold`` applies).
    label_threshold : float
        Label weight threshold.
    store : path-like, optional
        Write the maps to this Zarr store as they are computed (``selection`` x
        ``voxel``); the returned Dataset is then opened lazily from it.
    group_size : int, optional
        Selections per pass (default: as many as keep the pass's sums within the
        ``dask.config`` setting ``daskmeta.fit-many.memory``, 2 GB unless set; e.g.
        ``dask.config.set({"daskmeta.fit-many.memory": "8GB"})`` or the environment
        variable ``DASK_DASKMETA__FIT_MANY__MEMORY=8GB``).
    progress : bool or callable, optional
        A callable is called with ``(n_done, n_total)`` selections after each group; True
        or False show or hide a line of the selections done on standard error
        (:mod:`daskmeta.progress`); None: as the Dask config ``daskmeta.progress`` says, by
        default only when standard error is a terminal.
    overwrite : bool
        Replace what is at ``store`` (by default an existing path is an error).

    Returns
    -------
    xarray.Dataset
        ``stat``, ``p``, ``z``, ``logp`` over (``selection``, ``voxel``), with the
        number of experiments of each selection and the provenance in attributes.

    Raises
    ------
    DatasetError
        If a selection is empty or names unknown experiments (the message names it).
    DaskmetaError
        If ``store`` exists and ``overwrite`` is false.
    """
    import xarray as xr

    from daskmeta.collection import Collection

    if not isinstance(collection, Collection):
        raise DaskmetaError(f"fit_many needs a Collection; got {type(collection).__name__}")
    estimator._validate_params()
    _, space, kernel, _ = estimator._source(collection)
    if isinstance(selections, list | tuple):
        selections = {name: name for name in selections}
    if not selections:
        raise DaskmetaError("fit_many needs at least one selection")
    if group_size is not None and not (isinstance(group_size, int | np.integer)
                                       and group_size > 0):
        raise DaskmetaError(f"group_size must be a positive integer; got {group_size!r}")
    if store is not None and os.path.exists(store) and not overwrite:
        raise DaskmetaError(f"{store} exists; pass overwrite=True to replace it, or "
                            "another store path")
    names = list(selections)
    dataset = collection.dataset
    foci_mask = has_foci(dataset)
    rows_of = []
    for name in names:
        try:
            rows_of.append(selection_rows(dataset, selections[name], label_threshold,
                                          foci_mask))
        except DatasetError as exc:
            raise DatasetError(f"selection {name!r}: {exc}") from None
    n_vox = space.n_voxels
    attrs = {"estimator": type(estimator).__name__, "daskmeta_version": __version__,
             **kernel.describe(), **space.describe(), "collection": str(collection.path),
             "label_threshold": float(label_threshold), "tal2mni": TAL2MNI_METHOD}
    n_exp = np.asarray([len(rows) for rows in rows_of])
    if store is not None:
        _init_many_store(store, names, n_vox, n_exp)
        out = None
    else:
        out = {k: np.empty((len(names), n_vox), dtype=_MANY_DTYPES[k]) for k in _MANY_DTYPES}
    from daskmeta.progress import Progress

    bar = None if callable(progress) else Progress("fit_many", len(names), "selections",
                                                    progress)

    def collect(g0, g1, results):
        if out is not None:
            for s0, maps in results:
                for k in out:
                    out[k][g0 + s0:g0 + s0 + len(maps[k])] = maps[k]
        if bar is not None:
            bar.update(g1)
        elif progress is not None:
            progress(g1, len(names))

    sink = None if store is None else functools.partial(_write_store, str(store))
    fit_rows(estimator, collection, rows_of, collect, sink=sink, group_size=group_size)
    if bar is not None:
        bar.close()
    if store is not None:
        import zarr

        zarr.open_group(store, mode="r+").attrs.update({**attrs, "complete": True})
        return xr.open_zarr(store, consolidated=False)
    data = {k: (("selection", "voxel"), v) for k, v in out.items()}
    return xr.Dataset(data, coords={"selection": names, "voxel": np.arange(n_vox),
                                    "n_experiments": ("selection", n_exp)},
                      attrs=attrs)


def fit_rows(estimator, data, rows_of, collect, sink=None, group_size: int | None = None,
             align: int = 1) -> None:
    """The engine of :func:`fit_many`: one meta-analysis per list of rows (experiments of
    the data, sorted) in passes over the MA rows, a group of selections per pass.

    Parameters
    ----------
    estimator : CBMAEstimator
        Validated.
    data : Collection or Dataset
        A collection's stored rows, or a Dataset's rows made from its foci in the tasks.
    rows_of : list of int arrays
        Each selection's experiments (rows of the data's dataset, sorted, non-empty).
    collect : callable
        ``collect(g0, g1, results)`` after the pass of selections ``g0:g1``; ``results`` is a
        list of ``(s0, value)``, ``s0`` the first selection of a task relative to ``g0`` and
        ``value`` what ``sink`` returned (or the stacked maps without a sink).
    sink : callable, optional
        ``sink(maps, start)`` run in each task of :data:`FIT_MANY_SELECTIONS_PER_TASK`
        selections (picklable: it may run on a worker); ``start`` is the task's first
        selection.
    group_size : int, optional
        Selections per pass (default from ``daskmeta.fit-many.memory``), rounded down to a
        multiple of ``align`` (at least ``align``).
    align : int
        A multiple of :data:`FIT_MANY_SELECTIONS_PER_TASK`: the first selection of every
        task is a multiple of it (whole chunks of a store written by one task).
    """
    dataset, space, kernel, collection = estimator._source(data)
    estimator.kernel_, estimator.space_ = kernel, space
    if collection is not None:
        plan = None
        # Foci per experiment that made it into the store (the build's margin rule).
        n_foci = np.diff(kernel.plan(dataset, space, collection.mask_margin,
                                     warn=False).row_start)
    else:
        plan = kernel.plan(dataset, space, float(estimator.mask_margin))
        n_foci = np.diff(plan.row_start)
    weights_of = []
    for rows in rows_of:
        estimator._prepare(dataset.experiments.iloc[rows], n_foci[rows])
        weights_of.append(np.asarray(estimator._selection_weights(len(rows)), dtype=np.float64))
    light = estimator._light_copy()
    known = None
    if collection is not None:
        chunk = estimator._chunk_size()
        source, per_task = StoredRows(collection, chunk), max(ROWS_PER_SUM_TASK, chunk)
        store_dtype = np.dtype(collection.attrs["dtype"])
        exact = store_dtype.kind in "ui" and all(np.all(w == 1.0) for w in weights_of)
        acc_dtype = (estimator._count_dtype(collection, rows_of) if exact
                     else np.dtype(np.float64))
        # The null summaries of every row any selection holds, read once if stored.
        all_rows = np.unique(np.concatenate(rows_of))
        stored = estimator._stored_summaries(collection, all_rows, kernel)
        known = None if stored is None else (all_rows, stored,
                                             collection.content_token())
    else:
        source = KernelRows(plan, light._block_values, estimator._func_name(),
                            estimator._hist_inv_step(kernel))
        per_task, acc_dtype = ROWS_PER_SUM_TASK, np.dtype(np.float64)
    if group_size is None:
        # Each thread's running sum, finished partial sums and their tree sum.
        memory = config.get_bytes("fit-many.memory")
        group_size = max(1, int(memory // (space.n_voxels * acc_dtype.itemsize * 6)))
    group_size = max(align, group_size // align * align)
    for g0 in range(0, len(rows_of), group_size):
        g1 = min(g0 + group_size, len(rows_of))
        results = _fit_group(light, source, per_task, dataset.experiments, space.n_voxels,
                             rows_of[g0:g1], weights_of[g0:g1], n_foci, acc_dtype, known,
                             sink, g0)
        collect(g0, g1, results)


def _fit_group(light, source, per_task, experiments, n_vox, rows_of, weights_of, n_foci,
               acc_dtype, known, sink, first):
    """One pass over the rows for a group of selections: sums in row tasks, then maps in
    selection tasks (each handing its maps to ``sink`` with its index from ``first``).
    ``known``: ``(rows, summaries, token)`` stored for a superset of the group's rows, or
    None (then the row tasks compute them)."""
    used = np.unique(np.concatenate(rows_of))
    w_rows = np.concatenate([np.full(len(r), s) for s, r in enumerate(rows_of)])
    w_cols = np.searchsorted(used, np.concatenate(rows_of))
    weights = sparse.csc_matrix((np.concatenate(weights_of), (w_rows, w_cols)),
                                shape=(len(rows_of), len(used)))
    total, summaries = pass_graph(source, used, weights, light, acc_dtype,
                                  with_summaries=known is None, rows_per_task=per_task,
                                  name="fit-many")
    if known is not None:
        stored = [known[1][i] for i in np.searchsorted(known[0], used)]
        token = dask.base.tokenize(known[2], used)
        summaries = dask.delayed(stored, name=f"summaries-{token}", traverse=False)
    est_d = dask.delayed(light, name=f"fit-many-estimator-{dask.base.tokenize(total.key)}",
                         traverse=False)
    finalize = dask.delayed(_finalize_selections, pure=True)
    tasks = []
    for s0 in range(0, len(rows_of), FIT_MANY_SELECTIONS_PER_TASK):
        s1 = min(s0 + FIT_MANY_SELECTIONS_PER_TASK, len(rows_of))
        jobs = [(np.searchsorted(used, rows_of[s]), experiments.iloc[rows_of[s]],
                 n_foci[rows_of[s]]) for s in range(s0, s1)]
        sums = dask.delayed(operator.getitem, pure=True)(total, slice(s0, s1))
        tasks.append(finalize(est_d, sums, summaries, jobs, n_vox, sink, first + s0))
    return [(s0, value) for s0, value in
            zip(range(0, len(rows_of), FIT_MANY_SELECTIONS_PER_TASK), compute(*tasks))]


def _init_many_store(store, names, n_vox, n_exp):
    import xarray as xr

    n = len(names)
    lazy = {k: (("selection", "voxel"), da.zeros((n, n_vox), chunks=(1, n_vox),
                                                  dtype=dtype))
            for k, dtype in _MANY_DTYPES.items()}
    xr.Dataset(lazy, coords={"selection": np.asarray(names, dtype=object),
                             "voxel": np.arange(n_vox),
                             "n_experiments": ("selection", np.asarray(n_exp))},
               attrs={"complete": False}).to_zarr(store, compute=False, consolidated=False,
                                                  mode="w")
