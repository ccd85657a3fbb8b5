"""The one pass engine: a row source times a sparse selection x experiment weight matrix.

Every meta-analysis in daskmeta is ``W @ f(MA)`` plus small per-experiment summaries for
its null (DESIGN: a reduction over the study axis), so one engine serves them all:

- a **row source** gives MA rows: :class:`KernelRows` combines them from foci with the
  compiled kernel combine (:mod:`daskmeta._combine`, shared with the Monte Carlo nulls, so
  no experiments x voxels matrix is ever built); :class:`StoredRows` reads them from a
  Collection's store; image stacks will give voxel blocks of images;
- a **reduction** (an estimator, or :class:`BlockFunction` for plain sums) says how a block of
  rows is added into the sums (``f``, weights) and what each row's summary is;
- :func:`pass_graph` cuts the used rows into tasks (by a fixed amount of work, never by the
  number of workers, so sums do not depend on the cluster), each adding its rows into one
  dense ``(selections, voxels)`` partial sum, and adds the partial sums in a fixed tree;
  :func:`run_pass` computes it, and calls the single task directly when there is only one
  (a 20-study analysis pays for no graph).

One selection rule serves every caller (:func:`selection_rows`).
"""

from __future__ import annotations

import dask
import numpy as np
from scipy import sparse

from daskmeta import _fs
from daskmeta._combine import combine_rows
from daskmeta._rows import add_rows_by_selection
from daskmeta.cluster import compute, scheduler_client, tree_sum
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.storage import read_rows, scratch_rows

__all__ = ["BlockFunction", "add_rows", "KernelRows", "StoredRows", "describe_selection", "has_foci",
           "pass_graph", "run_pass", "selection_rows"]

#: Kernel-voxel updates one task of :class:`KernelRows` does at most (about 20 ms of work).
KERNEL_WORK_PER_TASK = 20_000_000
#: Rows of a store one task reads (``chunk_size`` at a time) into one partial sum.
ROWS_PER_SUM_TASK = 1024


# --------------------------------------------------------------------------------------------
# selections
# --------------------------------------------------------------------------------------------
def has_foci(dataset) -> np.ndarray:
    """Which experiments of a Dataset have foci (those without are left out of every
    selection, as NiMARE leaves them out)."""
    return dataset.experiments["id"].isin(dataset.foci["id"].unique()).to_numpy()


def selection_rows(dataset, select, label_threshold: float = 0.001,
                   foci_mask: np.ndarray | None = None) -> np.ndarray:
    """Rows (ascending) of the experiments a selection names: the one selection rule.

    Parameters
    ----------
    dataset : Dataset
    select : None, str or sequence of str
        None: every experiment; a label expression (see :meth:`Dataset.get_studies_by_label`);
        or experiment ids.
    label_threshold : float
        Label weight threshold of an expression.
    foci_mask : bool array, optional
        Experiments with foci (:func:`has_foci`); those without are dropped. None keeps
        every experiment.

    Raises
    ------
    DatasetError
        If the selection names unknown ids, matches no experiment, or none of its
        experiments has foci.
    """
    if select is None:
        chosen = np.ones(dataset.n_experiments, dtype=bool)
    elif isinstance(select, str):
        chosen = dataset.label_mask(select, label_threshold)
        what = f"label expression {select!r} (label_threshold {label_threshold:g})"
    else:
        if isinstance(select, bytes | bytearray):
            raise DatasetError("select must be a label expression (str) or a sequence of "
                               f"experiment ids; got {type(select).__name__}")
        try:
            ids = [str(i) for i in select]
        except TypeError:
            raise DatasetError(f"select must be a label expression (str) or a sequence of "
                               f"experiment ids; got {type(select).__name__}") from None
        chosen = dataset.experiments["id"].isin(set(ids)).to_numpy()
        if len(set(ids)) > int(chosen.sum()):
            present = set(dataset.experiments["id"][chosen])
            unknown = [i for i in ids if i not in present]
            raise DatasetError(f"unknown experiment ids: {', '.join(unknown[:10])}")
        what = "the given ids"
    if select is not None and not chosen.any():
        raise DatasetError(f"empty selection: no experiment matches {what}")
    rows = np.flatnonzero(chosen if foci_mask is None else chosen & foci_mask)
    if len(rows) == 0:
        raise DatasetError(
            f"empty selection: none of the {int(chosen.sum())} experiments has foci"
        )
    return rows


def describe_selection(select, label_threshold: float) -> dict:
    """Provenance of a selection: the expression and its label threshold, or the ids."""
    if select is None:
        return {"selection": "all"}
    if isinstance(select, str):
        return {"selection": select, "label_threshold": float(label_threshold)}
    ids = [str(i) for i in select]
    return {"selection": "ids", "selection_ids": ids}


# --------------------------------------------------------------------------------------------
# reductions: how a block of rows is added into the sums
# --------------------------------------------------------------------------------------------
def add_rows(values, weights, total) -> None:
    """``total += weights @ values`` (``weights`` CSC over the block's rows): compiled, except
    one unweighted selection of integer rows into integer sums, which numpy sums exactly and
    without loading compiled code (a fresh process's MKDA fit from a store needs none)."""
    if (weights.shape[0] == 1 and values.dtype.kind in "ui" and total.dtype.kind in "ui"
            and weights.nnz == values.shape[0] and np.all(weights.data == 1)):
        total[0] += values.sum(axis=0, dtype=total.dtype)
        return
    add_rows_by_selection(values, weights.indptr, weights.indices,
                          weights.data.astype(total.dtype), total)


class BlockFunction:
    """The plain reduction ``W @ func(MA)`` (``func`` of float32 blocks; identity if None),
    with no row summaries. Estimators are reductions of their own (same methods)."""

    def __init__(self, func=None):
        self.func = func

    def _block_values(self, block):
        if self.func is None:
            return block
        return self.func(block.astype(np.float32, copy=False))

    def _add_block(self, block, weights, total, with_summaries: bool) -> list:
        add_rows(self._block_values(block), weights, total)
        return []


# --------------------------------------------------------------------------------------------
# row sources
# --------------------------------------------------------------------------------------------
class KernelRows:
    """MA rows combined from foci with a kernel plan (nothing experiments x voxels is built).

    Parameters
    ----------
    plan : KernelPlan
    func : callable
        The estimator's elementwise ``f`` of MA values (``_block_values``).
    func_name : str
        Names ``func`` (e.g. the estimator class), for the per-process context cache.
    hist_inv_step : float, optional
        Grid of the per-experiment value histograms returned as row summaries.
    """

    def __init__(self, plan, func, func_name: str, hist_inv_step: float | None = None):
        self.plan = plan
        self.func = func
        self.hist_inv_step = hist_inv_step
        self.func_name = func_name
        self.token = dask.base.tokenize(plan.token, func_name, hist_inv_step)

    @property
    def n_voxels(self) -> int:
        return self.plan.n_voxels

    def split(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """Cut ``rows`` into tasks of about :data:`KERNEL_WORK_PER_TASK` updates."""
        plan = self.plan
        sizes = np.diff(plan.k_start)[plan.row_kernel[rows]] * np.diff(plan.row_start)[
            rows] if len(rows) else np.zeros(0)
        bounds, acc, a = [], 0, 0
        for i, work in enumerate(np.asarray(sizes, dtype=np.int64)):
            if acc and acc + work > KERNEL_WORK_PER_TASK:
                bounds.append((a, i))
                a, acc = i, 0
            acc += int(work)
        bounds.append((a, len(rows)))
        return bounds

    def reduce(self, rows, weights, reduction, acc_dtype, with_summaries: bool):
        """``weights @ f(MA rows)`` and, if asked, the rows' summaries (runs in a task)."""
        total, hist, row_max = combine_rows(
            self.plan, rows, self.func, self.func_name, weights, acc_dtype,
            self.hist_inv_step if with_summaries else None)
        if not with_summaries:
            return total, []
        return total, reduction._summaries_from_hist(hist, row_max, self.plan.n_voxels)


class StoredRows:
    """MA rows read from a Collection's store, ``chunk_size`` rows at a time into the
    thread's scratch block."""

    def __init__(self, collection, chunk_size: int = 64):
        self.array_path = _fs.portable(collection.path / "ma")
        self.n_voxels = collection.space.n_voxels
        self.dtype = np.dtype(collection.attrs["dtype"])
        self.chunk_size = int(chunk_size)
        # Every read, on any worker, checks the rows belong to the build that was opened.
        self.generation = getattr(collection, "generation", None)
        self.token = dask.base.tokenize(collection.content_token(), self.generation,
                                        chunk_size)

    def split(self, rows: np.ndarray, rows_per_task: int) -> list[tuple[int, int]]:
        return [(a, min(a + rows_per_task, len(rows))) for a in range(0, len(rows),
                                                                      rows_per_task)]

    def reduce(self, rows, weights, reduction, acc_dtype, with_summaries: bool):
        """``weights @ f(MA rows)`` and, if asked, the rows' summaries (runs in a task).
        The reduction must not keep references to a block (the next read overwrites it)."""
        total = np.zeros((weights.shape[0], self.n_voxels), dtype=acc_dtype)
        summaries = []
        step = self.chunk_size
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            block = read_rows(self.array_path, part, generation=self.generation,
                              out=scratch_rows(len(part), self.n_voxels, self.dtype))
            summaries.extend(reduction._add_block(
                block, weights[:, start:start + len(part)], total, with_summaries))
        return total, summaries


# --------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------
def _task(source, reduction, weights, rows, a: int, acc_dtype, with_summaries: bool):
    return source.reduce(rows, weights[:, a:a + len(rows)], reduction, acc_dtype,
                         with_summaries)


def _concat_lists(lists):
    return [item for part in lists for item in part]


def _weights_csc(weights, n_rows: int):
    w = sparse.csc_matrix(weights, dtype=np.float64)
    if w.shape[1] != n_rows:
        raise DaskmetaError(f"weights have {w.shape[1]} columns for {n_rows} rows")
    return w


def pass_graph(source, rows, weights, reduction, acc_dtype=np.float64,
               with_summaries: bool = True, rows_per_task: int = ROWS_PER_SUM_TASK,
               name: str = "pass"):
    """The lazy pass: ``(total, summaries)`` as dask delayed objects.

    Parameters
    ----------
    source : KernelRows or StoredRows
    rows : (n,) int array
        The source's rows the weights' columns refer to, in that order.
    weights : sparse or dense (n_selections, n) matrix
    reduction : object
        An estimator (or :class:`BlockFunction`): ``_add_block`` for stored rows,
        ``_summaries_from_hist`` for kernel rows.
    acc_dtype : dtype
        float64, or an unsigned integer for exact counts.
    with_summaries : bool
        Also collect per-row summaries (in ``rows`` order).
    rows_per_task : int
        Rows per task of a stored source (kernel sources split by work).
    name : str
        Prefix of the task keys.

    Returns
    -------
    total : dask.delayed.Delayed
        ``(n_selections, n_voxels)`` ndarray of ``acc_dtype``.
    summaries : dask.delayed.Delayed
        A list over ``rows`` (empty without summaries).
    """
    rows = np.asarray(rows, dtype=np.int64)
    w = _weights_csc(weights, len(rows))
    bounds = (source.split(rows) if isinstance(source, KernelRows)
              else source.split(rows, max(1, int(rows_per_task))))
    token = dask.base.tokenize(source.token, rows, w.data, w.indices, w.indptr,
                               np.dtype(acc_dtype).str, with_summaries, bounds,
                               type(reduction).__name__, _params_of(reduction))
    src_d = dask.delayed(source, name=f"{name}-source-{token}", traverse=False)
    red_d = dask.delayed(reduction, name=f"{name}-reduction-{token}", traverse=False)
    w_d = dask.delayed(w, name=f"{name}-weights-{token}", traverse=False)
    task = dask.delayed(_task, pure=True, nout=2)
    parts = [task(src_d, red_d, w_d, rows[a:b], a, np.dtype(acc_dtype), with_summaries,
                  dask_key_name=f"{name}-{token}-{a}") for a, b in bounds]
    total = tree_sum([p[0] for p in parts])
    summaries = dask.delayed(_concat_lists, pure=True)([p[1] for p in parts])
    return total, summaries


def _params_of(reduction) -> str:
    get = getattr(reduction, "get_params", None)
    return str(get(deep=False)) if callable(get) else repr(getattr(reduction, "func", None))


def run_pass(source, rows, weights, reduction, acc_dtype=np.float64,
             with_summaries: bool = True, rows_per_task: int = ROWS_PER_SUM_TASK):
    """:func:`pass_graph`, computed: ``(total, summaries)``. A pass of one task runs in this
    thread, without a graph (the sums are the same), unless a scheduler is configured
    (``dask.config`` ``scheduler``, or a distributed Client)."""
    rows = np.asarray(rows, dtype=np.int64)
    w = _weights_csc(weights, len(rows))
    bounds = (source.split(rows) if isinstance(source, KernelRows)
              else source.split(rows, max(1, int(rows_per_task))))
    if (len(bounds) == 1 and dask.config.get("scheduler", None) is None
            and scheduler_client() is None):
        return _task(source, reduction, w, rows, 0, np.dtype(acc_dtype), with_summaries)
    total, summaries = pass_graph(source, rows, w, reduction, acc_dtype, with_summaries,
                                  rows_per_task)
    return compute(total, summaries)
