"""Seeded Monte Carlo batches on Dask.

Iterations are cut into batches of ``batch_size``; batch ``b`` draws from
``numpy.random.SeedSequence(seed).spawn(n_batches)[b]`` and returns only what its summary
records. The batches depend only on ``n_iters``, ``batch_size`` and ``seed``, so a run gives
identical nulls on the local threaded scheduler, on one worker or on many, and a batch lost
with a worker is recomputed to the same numbers.

A Dask task runs one batch or several consecutive ones: about :data:`_TASK_SECONDS` of work,
as timed on the tasks already finished. How batches are grouped into tasks changes when
results arrive, never what they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np

from daskmeta.cluster import compute, scheduler_client
from daskmeta.config import is_positive_int
from daskmeta.exceptions import DaskmetaError
from daskmeta.montecarlo.models import NullModel, Summary
from daskmeta.progress import Progress

__all__ = ["DEFAULT_BATCH_SIZE", "MonteCarloNulls", "batch_bounds", "batch_seed",
           "default_batch_size", "null_to_p", "run_batch", "run_batches", "run_montecarlo",
           "threshold_relative_se"]

#: Iterations per seeded batch by default (the packaged value of the dask config setting
#: ``daskmeta.montecarlo.batch-size``).
DEFAULT_BATCH_SIZE = 100
#: Early stopping checks the Monte Carlo error after rounds of about this fraction of the
#: batches (at least one batch per round).
_ROUND_FRACTION = 0.1
#: Tasks in flight per worker thread (or core, without a Client).
_TASKS_PER_THREAD = 3
#: No batch is submitted more than this many windows (of tasks of the current size) past the
#: first batch whose result is not yet folded in (bounds the results held while a slow batch
#: is outstanding).
_AHEAD = 4
#: Seconds of work one task aims at: consecutive batches run in one task until they take
#: about this long. Dask spends a few milliseconds of its event loop on every task (the
#: scheduler's and the worker's bookkeeping), and that loop competes with the compute threads
#: for the cores: with tasks of ~0.1 s it took a tenth of a core on 2 threads.
_TASK_SECONDS = 0.5
#: The most batches one task runs (one for summaries with summed values, see
#: :func:`run_montecarlo`).
_MAX_BATCHES_PER_TASK = 256
#: Tasks of one batch in flight per worker thread under a Client until a task has been timed.
_UNTIMED_PER_THREAD = 2


def default_batch_size() -> int:
    """Iterations per batch: the dask config ``daskmeta.montecarlo.batch-size`` (100)."""
    from daskmeta import config

    return config.get_positive_int("montecarlo.batch-size")


def _positive_int(name: str, value) -> int:
    if not is_positive_int(value):
        raise DaskmetaError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def batch_seed(seed: int, batch: int) -> np.random.SeedSequence:
    """The seed of batch ``batch``: ``SeedSequence(seed).spawn(n)[batch]`` for any ``n``."""
    return np.random.SeedSequence(seed, spawn_key=(int(batch),))


def batch_bounds(n_iters: int, batch_size: int) -> list[tuple[int, int]]:
    """Iteration ranges of the batches: a function of ``n_iters`` and ``batch_size`` only."""
    return [(a, min(a + batch_size, n_iters)) for a in range(0, n_iters, batch_size)]


def run_batch(model: NullModel, summary: Summary, seed: int, batch: int, n_iters: int) -> dict:
    """Run ``n_iters`` iterations of batch ``batch``: a pure function of its arguments (the
    same call gives the same numbers in any process)."""
    rng = np.random.default_rng(batch_seed(seed, batch))
    return model.run_batch(summary, rng, n_iters)


def run_batches(model: NullModel, summary: Summary, seed: int,
                batches: list[tuple[int, int]]) -> tuple[list[dict], float]:
    """Run batches ``(batch, n_iters)`` one after the other (one task): the result of each,
    as :func:`run_batch` gives it, and the seconds they took together."""
    t0 = time.perf_counter()
    results = [run_batch(model, summary, seed, b, n) for b, n in batches]
    return results, time.perf_counter() - t0


class _TaskSizer:
    """How many consecutive batches the next task runs: one until a task has been timed
    (and then only a few such tasks per thread are in flight), then about
    :data:`_TASK_SECONDS` of work at the average seconds per batch so far, but at most a
    share of the range's remaining batches (guided self-scheduling), so that the last tasks
    are small and spread over every thread."""

    def __init__(self, threads: int, largest: int = _MAX_BATCHES_PER_TASK):
        self.threads = max(1, int(threads))
        self.largest = max(1, int(largest))
        self.seconds = 0.0
        self.batches = 0

    @property
    def timed(self) -> bool:
        return self.batches > 0

    def observe(self, n_batches: int, seconds: float) -> None:
        if n_batches > 0 and seconds > 0:
            self.seconds += seconds
            self.batches += n_batches

    def size(self, left: int) -> int:
        """Batches of the next task, with ``left`` batches of the range not yet submitted."""
        if not self.timed:
            return 1
        want = int(_TASK_SECONDS * self.batches / self.seconds)
        share = -(-left // (2 * self.threads))
        return max(1, min(want, share, self.largest))


@dataclass
class MonteCarloNulls:
    """What a Monte Carlo run recorded.

    Attributes
    ----------
    values : dict of str to ndarray
        Per key of the summary: one value per iteration in iteration order, or (summaries
        that add up, e.g. per-voxel counts) the sum over iterations.
    seed : int
    n_iters : int
        Iterations asked for.
    n_iters_run : int
        Iterations run (fewer than ``n_iters`` when early stopping stopped the run).
    batch_size : int
    n_batches_run : int
    stopped_early : bool
    relative_se : dict
        The last estimate of the relative Monte Carlo standard error of each watched
        threshold (95th percentile), when early stopping was on.
    """

    values: dict
    seed: int
    n_iters: int
    n_iters_run: int
    batch_size: int
    n_batches_run: int
    stopped_early: bool = False
    relative_se: dict = field(default_factory=dict)

    @property
    def max_stat(self):
        return self.values.get("max_stat")

    @property
    def max_size(self):
        v = self.values.get("max_size")
        return None if v is None else v.astype(np.float32)

    @property
    def max_mass(self):
        v = self.values.get("max_mass")
        return None if v is None else v.astype(np.float32)


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


def _relative_se(values: dict, summary: Summary) -> dict:
    return {k: threshold_relative_se(values[k]) for k in summary.early_stop_keys}


class _Collector:
    """The batches' results, folded in batch order as soon as they are contiguous: values
    per iteration are kept (in order), sums are added into one running array in batch
    order (so the float additions happen in the same order however batches finish), and
    only the results of batches that finished ahead of a slower one wait."""

    def __init__(self, summary: Summary):
        self.summary = summary
        self.summed = set(summed_keys(summary))
        self.parts: dict = {k: [] for k in summary.keys if k not in self.summed}
        self.sums: dict | None = None
        self.pending: dict[int, dict] = {}
        self.next = 0  # the first batch not folded yet
        self.n_batches = 0

    def add(self, batch: int, result: dict) -> None:
        self.pending[batch] = result
        self.n_batches += 1
        while self.next in self.pending:
            res = self.pending.pop(self.next)
            for k in self.parts:
                self.parts[k].append(res[k])
            if self.summed and self.sums is None:
                # np.sum of the batches' arrays adds them in batch order: fold the same way.
                self.sums = {k: np.sum([res[k]], axis=0) for k in self.summed}
            elif self.summed:
                self.sums = {k: np.sum([self.sums[k], res[k]], axis=0) for k in self.summed}
            self.next += 1

    def values(self) -> dict:
        out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.parts.items()}
        out.update(self.sums or {})
        return {k: out[k] for k in self.summary.keys if k in out}


def summed_keys(summary: Summary) -> tuple:
    """The keys of a summary whose values are summed over iterations (all of them when
    ``per_iteration`` is False; else those in its ``summed_keys``, if any)."""
    if not summary.per_iteration:
        return tuple(summary.keys)
    return tuple(getattr(summary, "summed_keys", ()))


def _threads(client) -> int:
    """Worker threads of the client's cluster (or cores, without a Client)."""
    import os

    if client is not None:
        try:
            return sum(client.nthreads().values())
        except Exception:  # a scheduler that cannot say: a modest window still works
            return 1
    return os.cpu_count() or 1


def _in_process(client) -> bool:
    """Whether the client's scheduler runs in this process (objects pass by reference)."""
    try:
        return str(client.scheduler.address).startswith("inproc://")
    except Exception:  # a client that cannot say: treat it as remote
        return False


def _window(threads: int) -> int:
    """Tasks in flight at once: a few per worker thread (or core), never all of them."""
    return max(4, _TASKS_PER_THREAD * threads)


class _Tasks:
    """The Dask tasks of a run: each runs a range of consecutive batches
    (:func:`run_batches`).

    Under a Client, the model and the summary are sent to the scheduler once, with the
    first tasks, and every later task refers to them by future (they stay on the
    scheduler, so a copy lost with a worker is made again). On an in-process cluster (the
    embedded one: objects travel by reference) the first tasks carry them as arguments
    instead, so they need not wait for the model to reach a worker: a distributed client
    batches its messages to the scheduler, and a second submission within 10 ms of the
    first waited for the next send (the first batch started ~10 ms late).
    """

    def __init__(self, model: NullModel, summary: Summary, seed: int, n_iters: int,
                 batch_size: int):
        self.seed, self.n_iters, self.batch_size = seed, n_iters, batch_size
        self.token = dask.base.tokenize(model.token, summary.token)
        self._model, self._summary = model, summary
        self.model = dask.delayed(model, name=f"montecarlo-model-{self.token}", traverse=False)
        self.summary = dask.delayed(summary, name=f"montecarlo-summary-{self.token}",
                                    traverse=False)
        self.sent = False

    def task(self, batches: range, model=None, summary=None):
        parts = [(b, min(self.batch_size, self.n_iters - b * self.batch_size))
                 for b in batches]
        return dask.delayed(run_batches, pure=True)(
            self.model if model is None else model,
            self.summary if summary is None else summary, self.seed, parts, dask_key_name=(
                f"montecarlo-batch-{self.token}-{self.seed}-{self.batch_size}-"
                f"{batches.start}-{len(batches)}"))

    def submit(self, client, ranges: list[range]) -> list:
        """Futures of the tasks of ``ranges`` (in order)."""
        if self.sent:
            return client.compute([self.task(r) for r in ranges])
        if _in_process(client):
            first = [self.task(r, self._model, self._summary) for r in ranges]
        else:
            first = [self.task(r) for r in ranges]
        futures = client.compute([self.model, self.summary, *first])
        self.model, self.summary = futures[:2]
        self.sent = True
        return futures[2:]


def _run_range(batches: range, tasks: _Tasks, client, window: int, collector: _Collector,
               progress: Progress, on_batch, sizer: _TaskSizer) -> None:
    """Run the batches of ``batches`` as tasks of consecutive batches (``sizer`` says how
    many), at most ``window`` tasks in flight and no batch more than ``_AHEAD`` windows past
    the first batch not yet folded: memory does not grow with the number of batches."""
    pos, stop = batches.start, batches.stop

    # Untimed tasks (one batch each) in flight at once, until one has been timed: one per
    # thread, or under a Client two (each thread starts its second while the first's
    # timing travels back and sizes the next ones).
    untimed = sizer.threads * (1 if client is None else _UNTIMED_PER_THREAD)

    def take(n_tasks, in_flight=0):
        nonlocal pos
        if not sizer.timed:
            n_tasks = min(n_tasks, untimed - in_flight)
        out = []
        while len(out) < n_tasks and pos < stop:
            size = sizer.size(stop - pos)
            n = min(size, stop - pos, collector.next + _AHEAD * window * size - pos)
            if n <= 0:
                break
            out.append(range(pos, pos + n))
            pos += n
        return out

    def finished(task, result):
        results, seconds = result
        sizer.observe(len(task), seconds)
        for b, r in zip(task, results, strict=True):
            collector.add(b, r)
            progress.update(collector.n_batches)
            if on_batch is not None:
                on_batch(b, collector.n_batches)

    if client is None:
        while pos < stop:
            chunk = take(window)
            for task, r in zip(chunk, compute(*(tasks.task(t) for t in chunk)),
                               strict=True):
                finished(task, r)
        return
    from distributed import as_completed

    index = {}
    first = take(window)
    futures = tasks.submit(client, first)
    index.update({f.key: t for f, t in zip(futures, first, strict=True)})
    # The results come with the futures (fetched in the client's event loop, with no round
    # trip from this thread per task); an erred task raises its error here.
    pool = as_completed(futures, with_results=True)
    in_flight = len(futures)
    for fut, result in pool:
        task = index.pop(fut.key)
        in_flight -= 1
        finished(task, result)
        # Refill in groups of half a window: one graph submission for several tasks. It
        # goes before the release of the finished task's key (the client's messages to the
        # scheduler are batched: the one after another within 10 ms waits for the next send).
        if in_flight <= window // 2:
            more = take(window - in_flight, in_flight)
            if more:
                new = tasks.submit(client, more)
                index.update({f.key: t for f, t in zip(new, more, strict=True)})
                pool.update(new)
                in_flight += len(new)
        fut.release()


def run_montecarlo(model: NullModel, summary: Summary, n_iters: int,
                   batch_size: int | None = None, seed: int | None = None,
                   early_stop: float | None = None, progress: bool | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> MonteCarloNulls:
    """Run a Monte Carlo null on Dask and collect what its summary records.

    Batches run as Dask tasks of one or several consecutive batches (about half a second of
    work each, as timed on the tasks already finished, so Dask's cost per task stays small;
    one batch per task when the summary sums voxel-sized values over iterations),
    submitted lazily: a few tasks per worker thread are in flight at once and more are
    submitted as they finish (under a distributed Client, with
    :func:`distributed.as_completed`; otherwise in rounds on the configured or threaded
    scheduler), so the memory and the time before the first batch runs do not grow with
    ``n_iters``. The results are the same as if every batch ran at once: they depend only on
    the seed and the batch index, never on how batches were grouped into tasks.

    Parameters
    ----------
    model : NullModel
        How a null data set is drawn and its statistic computed (e.g. an estimator's
        ``_null_model()``).
    summary : Summary
        What each iteration returns (e.g. :class:`~daskmeta.montecarlo.ClusterMaxima`).
    n_iters : int
        Iterations (the most that will run with early stopping).
    batch_size : int, optional
        Iterations per seeded batch (default: the dask config
        ``daskmeta.montecarlo.batch-size``, 100). With ``n_iters`` it fixes the batches and
        their seeds; the number of workers never does. A task runs one batch or several
        consecutive ones.
    seed : int, optional
        Root of the seed sequence; None draws one from OS entropy (reported in the result).
    early_stop : float, optional
        Run the batches in rounds (about a tenth of the batches each) and stop after the
        first round where the relative Maritz-Jarrett standard error of the 95th percentile
        of every watched value (``summary.early_stop_keys``) is below ``early_stop``. Round
        boundaries depend only on ``n_iters`` and ``batch_size``, so the result still only
        depends on the seed.
    progress : bool, optional
        Show the batches done on standard error (:class:`daskmeta.progress.Progress`).
        None: as the Dask config ``daskmeta.progress`` says, by default only when standard
        error is a terminal.
    on_batch : callable, optional
        ``on_batch(batch_index, n_batches_done)``, called in the caller's thread as batches
        finish (under a Client, in completion order; otherwise after each round of
        submitted batches).

    Returns
    -------
    MonteCarloNulls
    """
    n_iters = _positive_int("n_iters", n_iters)
    batch_size = (default_batch_size() if batch_size is None
                  else _positive_int("batch_size", batch_size))
    if early_stop is not None and not summary.early_stop_keys:
        raise DaskmetaError(f"early stopping needs per-iteration maxima; {type(summary).__name__}"
                            " records none")
    if seed is None:
        # 63 bits of OS entropy: enough, and an integer every attribute store can hold.
        seed = int(np.random.SeedSequence().entropy) % (2**63)
    seed = int(seed)
    n_batches = -(-n_iters // batch_size)
    client = scheduler_client()
    tasks = _Tasks(model, summary, seed, n_iters, batch_size)
    collector = _Collector(summary)
    bar = Progress("Monte Carlo", n_batches, "batches", progress)
    threads = _threads(client)
    window = _window(threads)
    # Summed values (e.g. per-voxel counts) are voxel-sized per batch: one batch per task
    # keeps the results held at once as few as the window.
    sizer = _TaskSizer(threads, 1 if summed_keys(summary) else _MAX_BATCHES_PER_TASK)
    stopped = False
    rel_se: dict = {}
    rounds = _round_plan(n_batches, early_stop)
    for i, rnd in enumerate(rounds):
        _run_range(rnd, tasks, client, window, collector, bar, on_batch, sizer)
        if early_stop is not None and i < len(rounds) - 1:
            rel_se = _relative_se(collector.values(), summary)
            if all(v < early_stop for v in rel_se.values()):
                stopped = True
                break
    bar.update(collector.n_batches)
    bar.close()
    values = collector.values()
    if early_stop is not None and not stopped:
        rel_se = _relative_se(values, summary)
    n_done = collector.n_batches
    n_run = min(n_iters, n_done * batch_size)
    return MonteCarloNulls(values=values, seed=seed, n_iters=n_iters, n_iters_run=int(n_run),
                           batch_size=batch_size, n_batches_run=n_done,
                           stopped_early=stopped, relative_se=rel_se)


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
