"""Monte Carlo batches are submitted lazily: the memory and the time before the first batch
do not grow with n_iters, and the nulls do not depend on how many batches are in flight."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from daskmeta import montecarlo
from daskmeta.montecarlo import runner


@pytest.fixture(scope="module")
def fitted(pain_dataset, nimare_mask):
    from daskmeta.estimators import MKDADensity

    return MKDADensity(mask=nimare_mask).fit(pain_dataset)


@pytest.fixture(scope="module")
def model(fitted):
    return fitted.estimator._null_model()


class _Stop(Exception):
    pass


def test_a_billion_iterations_start_at_once_in_little_memory(model):
    seen = []

    def on_batch(batch, n_done):
        seen.append(batch)
        if n_done == 3:
            raise _Stop

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(_Stop):
            montecarlo.run_montecarlo(model, montecarlo.MaxStatistic(), n_iters=10**9,
                                      batch_size=2, seed=1, progress=False, on_batch=on_batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    # Building every one of the 5e8 batch tasks first would take gigabytes and minutes.
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB traced"
    assert elapsed < 60, f"{elapsed:.0f} s to the third batch"
    assert sorted(seen) == [0, 1, 2]


def _reference(model, summary, n_iters, batch_size, seed):
    """The batches run one by one with run_batch, merged by hand (the definition)."""
    parts = [montecarlo.run_batch(model, summary, seed, b, min(batch_size, n_iters - a))
             for b, a in enumerate(range(0, n_iters, batch_size))]
    if summary.per_iteration:
        return {k: np.concatenate([p[k] for p in parts]) for k in summary.keys}
    return {k: np.sum([p[k] for p in parts], axis=0) for k in summary.keys}


@pytest.mark.parametrize(("per_thread", "ahead"), [(1, 1), (3, 4), (50, 50)])
def test_nulls_do_not_depend_on_the_window(fitted, model, monkeypatch, per_thread, ahead):
    monkeypatch.setattr(runner, "_TASKS_PER_THREAD", per_thread)
    monkeypatch.setattr(runner, "_AHEAD", ahead)
    n_iters, batch, seed = 47, 4, 11
    maxima = montecarlo.MaxStatistic()
    got = montecarlo.run_montecarlo(model, maxima, n_iters, batch, seed, progress=False)
    assert (got.n_iters_run, got.n_batches_run) == (47, 12)
    want = _reference(model, maxima, n_iters, batch, seed)
    assert np.array_equal(got.max_stat, want["max_stat"])
    counts = montecarlo.VoxelExceedances(fitted.get_map("stat", "array"))
    got = montecarlo.run_montecarlo(model, counts, n_iters, batch, seed, progress=False)
    want = _reference(model, counts, n_iters, batch, seed)
    assert got.values["exceedances"].dtype == want["exceedances"].dtype
    assert np.array_equal(got.values["exceedances"], want["exceedances"])
    assert want["exceedances"].sum() > 0


@pytest.mark.parametrize("task_seconds", [0.0, 1e9])
def test_nulls_do_not_depend_on_how_batches_share_tasks(model, monkeypatch, task_seconds):
    """A task runs one batch until a task has been timed, then as many consecutive batches as
    fill ``_TASK_SECONDS`` (at most a share of those left, so the last ones spread over the
    threads): the nulls are those of the batches run one by one either way."""
    monkeypatch.setattr(runner, "_TASK_SECONDS", task_seconds)
    sizes = []
    real = runner.run_batches

    def counting(model, summary, seed, batches):
        sizes.append(len(batches))
        return real(model, summary, seed, batches)

    monkeypatch.setattr(runner, "run_batches", counting)
    n_iters, batch, seed = 90, 2, 3
    maxima = montecarlo.MaxStatistic()
    got = montecarlo.run_montecarlo(model, maxima, n_iters, batch, seed, progress=False)
    assert (got.n_iters_run, got.n_batches_run) == (90, 45)
    assert np.array_equal(got.max_stat, _reference(model, maxima, n_iters, batch,
                                                   seed)["max_stat"])
    assert sum(sizes) == 45
    threads = runner._threads(None)
    assert sizes[:threads] == [1] * threads  # nothing timed yet: one task per thread
    if task_seconds == 0.0:
        assert set(sizes) == {1}
    else:
        # Then a share of what is left (the largest: the first), so the last tasks are small.
        assert max(sizes) == -(-(45 - threads) // (2 * threads)) > 1
        assert sizes.count(1) > threads
    # Voxel-sized summed values: one batch per task (the results held stay few).
    sizes.clear()
    counts = montecarlo.VoxelExceedances(np.zeros(model.n_voxels, dtype=np.float32))
    got = montecarlo.run_montecarlo(model, counts, n_iters, batch, seed, progress=False)
    assert sizes == [1] * 45
    assert got.values["exceedances"].sum() == 90 * model.n_voxels  # every stat >= 0


_SIZES: list = []


def _counting_run_batches(model, summary, seed, batches):
    """run_batches, recording how many batches each task ran (module-level: pickled)."""
    _SIZES.append(len(batches))
    return _REAL_RUN_BATCHES(model, summary, seed, batches)


_REAL_RUN_BATCHES = runner.run_batches


def test_an_in_process_cluster_runs_the_same_batches(model, monkeypatch):
    """On an in-process cluster (the embedded one) the first tasks carry the model and
    summary themselves, two single-batch tasks per thread start before any is timed, and
    later tasks refer to the model sent with them: the nulls are the batches' run one by
    one, and the model's key is held on the scheduler while the run lasts."""
    import distributed

    _SIZES.clear()
    held = []
    monkeypatch.setattr(runner, "run_batches", _counting_run_batches)
    maxima = montecarlo.MaxStatistic()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        assert runner._in_process(client)
        got = montecarlo.run_montecarlo(
            model, maxima, 120, 2, 9, progress=False,
            on_batch=lambda b, n: held.append(any(str(k).startswith("montecarlo-model-")
                                                  for k in client.who_has())))
    assert np.array_equal(got.max_stat, _reference(model, maxima, 120, 2, 9)["max_stat"])
    assert sum(_SIZES) == 60
    assert _SIZES[:4] == [1, 1, 1, 1] and max(_SIZES) > 1
    assert len(held) == 60 and all(held)


def test_losing_the_worker_that_holds_the_model_changes_nothing(scheduler_and_workers, model):
    """Under a Client the null model is sent once and referred to by every batch; when the
    worker holding it dies, the scheduler makes it again and the nulls are the same."""
    import logging
    import os
    import signal

    client, workers = scheduler_and_workers
    pid_of = client.run(os.getpid)
    killed = {}

    def on_batch(batch, n_done):
        if n_done == 2:
            holders = {addr for key, addrs in client.who_has().items()
                       if str(key).startswith("montecarlo-model-") for addr in addrs}
            victim = next(w for w in workers if pid_of[sorted(holders)[0]] == w.pid)
            killed["pid"] = victim.pid
            os.kill(victim.pid, signal.SIGKILL)

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    maxima = montecarlo.MaxStatistic()
    got = montecarlo.run_montecarlo(model, maxima, 60, 3, 5, progress=False, on_batch=on_batch)
    assert killed
    want = _reference(model, maxima, 60, 3, 5)
    assert np.array_equal(got.max_stat, want["max_stat"])


@pytest.mark.parametrize(("n_iters", "batch_size", "message"), [
    (10, 0, "batch_size must be a positive integer; got 0"),
    (10, -5, "batch_size must be a positive integer; got -5"),
    (10, 2.5, "batch_size must be a positive integer; got 2.5"),
    (0, 5, "n_iters must be a positive integer; got 0"),
    (7.9, 5, "n_iters must be a positive integer; got 7.9"),
    (True, 5, "n_iters must be a positive integer; got True"),
])
def test_bad_iteration_counts_are_refused(model, n_iters, batch_size, message):
    """A batch size of 0 or below used to run the default or no batch at all (an empty null)."""
    from daskmeta import DaskmetaError

    with pytest.raises(DaskmetaError, match=message):
        montecarlo.run_montecarlo(model, montecarlo.MaxStatistic(), n_iters, batch_size, 1,
                                  progress=False)
