"""Monte Carlo nulls are identical without a client, on 1 or 2 worker processes, on a real
scheduler with separate worker processes, and when a worker is killed mid-run."""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import daskmeta
from daskmeta import montecarlo
from daskmeta._stats import nullhist_to_threshold
from daskmeta.cluster import active_client
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE

distributed = pytest.importorskip("distributed")
nimare_dataset = pytest.importorskip("nimare.dataset")

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nimare-testdata"
MASK = str(TESTDATA / "MNI152_2x2x2_brainmask.nii.gz")
N_ITERS, BATCH, SEED = 400, 25, 2024


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pain_result():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nd = nimare_dataset.Dataset(str(TESTDATA / "test_pain_dataset.json"), mask=MASK)
    ss = nd.metadata.set_index("id")["sample_sizes"].map(np.mean)
    foci = nd.coordinates[["id", "x", "y", "z"]].copy()
    foci["sample_size"] = foci["id"].map(ss)
    return ALE(mask=MASK).fit(daskmeta.Dataset.from_foci(foci))


@pytest.fixture(scope="module")
def spec(pain_result):
    nd = pain_result.null_distributions
    thr = nullhist_to_threshold(nd["histweights_corr-none_method-approximate"],
                                nd["histogram_bins"], 0.001)
    return (pain_result.estimator._null_model(), montecarlo.ClusterMaxima(thr))


@pytest.fixture(scope="module")
def reference(spec):
    """The run with no client: dask's local threaded scheduler."""
    assert active_client() is None
    return montecarlo.run_montecarlo(*spec, N_ITERS, BATCH, SEED, progress=False)


def _assert_same(a, b):
    assert a.n_iters_run == b.n_iters_run == N_ITERS
    assert np.array_equal(a.max_stat, b.max_stat)
    assert np.array_equal(a.max_size, b.max_size)
    assert np.array_equal(a.max_mass, b.max_mass)


def _local_client(n_workers):
    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       memory_limit="2GiB")
    return cluster, distributed.Client(cluster)


# --------------------------------------------------------------------------------------------
# determinism across schedulers and worker counts
# --------------------------------------------------------------------------------------------
def test_no_client_is_deterministic(spec, reference):
    again = montecarlo.run_montecarlo(*spec, N_ITERS, BATCH, SEED, progress=False)
    _assert_same(again, reference)
    assert reference.n_batches_run == N_ITERS // BATCH
    # The batch size is part of the run's definition: batch 0 draws from the same stream
    # whatever its size, the next iterations come from another batch's seed.
    other = montecarlo.run_montecarlo(*spec, 100, 50, SEED, progress=False)
    assert np.array_equal(other.max_stat[:25], reference.max_stat[:25])
    assert not np.array_equal(other.max_stat[25:50], reference.max_stat[25:50])


@pytest.mark.parametrize("n_workers", [1, 2])
def test_local_cluster_equals_no_client(n_workers, spec, reference):
    cluster, client = _local_client(n_workers)
    try:
        assert active_client() is client
        got = montecarlo.run_montecarlo(*spec, N_ITERS, BATCH, SEED, progress=False)
        assert len(client.scheduler_info()["workers"]) == n_workers
    finally:
        client.close()
        cluster.close()
    _assert_same(got, reference)


def test_corrector_on_cluster_equals_local(pain_result):
    kwargs = {"method": "montecarlo", "n_iters": 150, "batch_size": 25, "seed": 5,
              "progress": False}
    local = FWECorrector(**kwargs).transform(pain_result)
    cluster, client = _local_client(2)
    try:
        remote = FWECorrector(**kwargs).transform(pain_result)
    finally:
        client.close()
        cluster.close()
    for key, value in local.null_distributions.items():
        assert np.array_equal(remote.null_distributions[key], value), key
    for name in local.map_names:
        assert np.array_equal(remote.get_map(name, "array"), local.get_map(name, "array")), name
    assert remote.attrs == local.attrs


def test_scheduler_and_worker_processes_equal_no_client(scheduler_and_workers, spec,
                                                        reference):
    client, _ = scheduler_and_workers
    assert active_client() is client
    got = montecarlo.run_montecarlo(*spec, N_ITERS, BATCH, SEED, progress=False)
    _assert_same(got, reference)
    # Both workers took part.
    who = client.run(os.getpid)
    assert len(who) == 2


def test_killed_worker_does_not_change_the_result(scheduler_and_workers, spec, reference):
    client, workers = scheduler_and_workers
    victim = workers[0]
    address = {pid: addr for addr, pid in client.run(os.getpid).items()}[victim.pid]
    done = []
    at_kill = {}

    def on_batch(batch, n_done):
        done.append(batch)
        if n_done == 2:
            at_kill["running"] = client.processing().get(address, ())
            at_kill["held"] = client.has_what().get(address, ())
            os.kill(victim.pid, signal.SIGKILL)

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    got = montecarlo.run_montecarlo(*spec, N_ITERS, BATCH, SEED, progress=False, on_batch=on_batch)
    assert victim.wait(timeout=30), "the killed worker is still running"
    # The victim was working (running a batch or holding data the run needed) when killed.
    assert at_kill["running"] or at_kill["held"]
    # The run went on after the kill (most batches finished on the survivor) ...
    assert sorted(done) == list(range(N_ITERS // BATCH))
    deadline = time.monotonic() + 30
    while len(client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(client.scheduler_info()["workers"]) == 1
    # ... and gave the very same nulls.
    _assert_same(got, reference)
