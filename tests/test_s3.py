"""Collection stores on S3 (issue 16), against a real S3 server on loopback (moto in server
mode, started here): a Neurosynth MKDA collection ingested there by ``daskmeta ingest``,
killed part-way (``kill -9``) and resumed, equals the local-disk store; ALE and MKDADensity
fits and ``fit_many`` from S3 stores equal the local ones; the build lock is a lease that a
second build respects and that a killed build's successor takes over once it expires."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest

from daskmeta import _fs, _integrity
from daskmeta.collection import _PROGRESS, Collection, verify
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import ALEKernel, MKDAKernel

pytest.importorskip("s3fs")
pytest.importorskip("moto")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEUROSYNTH = DATA / "neurosynth-v7"
MASK = str(DATA / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz")
N_STUDIES, ROWS = 600, 8  # 75 shards: seconds of writing, so the kill lands midway
BUCKET = "daskmeta-test"
LEASE = 4  # seconds: the killed build's lock outlives the kill by that much at most
MAPS = ("stat", "p", "z", "logp")

pytestmark = pytest.mark.skipif(not NEUROSYNTH.is_dir(),
                                reason=f"Neurosynth release files not found at {NEUROSYNTH}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the daskmeta.s3 settings that reach it (also as
    the environment variables of subprocesses)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"DASK_DASKMETA__S3__ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "DASK_DASKMETA__S3__KEY": "testing", "DASK_DASKMETA__S3__SECRET": "testing",
           "DASK_DASKMETA__S3__REGION": "us-east-1",
           "DASK_DASKMETA__S3__LOCK_LEASE": str(LEASE)}
    settings = {"daskmeta.s3.endpoint-url": f"http://127.0.0.1:{port}",
                "daskmeta.s3.key": "testing", "daskmeta.s3.secret": "testing",
                "daskmeta.s3.region": "us-east-1", "daskmeta.s3.lock-lease": LEASE}
    try:
        with dask.config.set(settings):
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            _fs.as_location(f"s3://{BUCKET}/x").fs.call_s3("create_bucket", Bucket=BUCKET)
            yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    from daskmeta.io import read

    ns = read(NEUROSYNTH)
    subset = ns.slice(ns.ids[:N_STUDIES])
    return subset, subset.save(tmp_path_factory.mktemp("ns") / "neurosynth-600.zip")


def _ingest(source, store, *extra):
    return [sys.executable, "-m", "daskmeta.cli", "ingest", str(source), "--kernel", "mkda",
            "--store", str(store), "--mask", MASK, "--rows-per-shard", str(ROWS), *extra]


def _env(s3):
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    return {**env, **s3}


def _markers(store) -> int:
    location = _fs.as_location(store) / _PROGRESS
    try:
        return len(list(location.glob("*.done")))
    except FileNotFoundError:
        return 0


def _quiet_build(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)  # foci far outside the mask
        return Collection.build(*args, **kwargs)


def _maps(result):
    return {m: np.asarray(result.get_map(m, return_type="array")) for m in MAPS}


@pytest.fixture(scope="module")
def local_mkda(subset, tmp_path_factory):
    return _quiet_build(subset[0], MKDAKernel(), tmp_path_factory.mktemp("local") / "ns.zarr",
                        mask=MASK, rows_per_shard=ROWS)


def test_ingest_killed_midway_then_resumed_on_s3_equals_local(s3, subset, local_mkda):
    dataset, source = subset
    store = f"s3://{BUCKET}/ns-mkda.zarr"
    proc = subprocess.Popen(_ingest(source, store), env=_env(s3), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while _markers(store) < 5:
            assert proc.poll() is None, ("the ingest ended before it could be killed:\n"
                                         + proc.stderr.read().decode(errors="replace")[-2000:])
            assert time.monotonic() < deadline, "the ingest wrote no shard in 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _markers(store)
    assert 5 <= done_at_kill < N_STUDIES // ROWS, done_at_kill
    with pytest.raises(DaskmetaError, match="incomplete collection"):
        Collection.open(store)

    # The killed build's lock holds until its lease runs out (renewed at most LEASE / 3
    # before the kill): a build now is refused, and touches nothing ...
    with pytest.raises(DaskmetaError, match=rf"another build of {store} is running \(it "
                                            rf"holds s3://{BUCKET}/.ns-mkda.zarr.lock"):
        _quiet_build(dataset, MKDAKernel(), store, mask=MASK, rows_per_shard=ROWS)
    assert time.time() - killed_at < LEASE * 2 / 3  # (so the refusal was the lease's)
    assert _markers(store) == done_at_kill
    # ... then, once the lease has expired, the same ingest takes the lock over and
    # finishes the shards left.
    time.sleep(max(0.0, killed_at + LEASE + 0.5 - time.time()))
    again = subprocess.run(_ingest(source, store), env=_env(s3), capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == store
    assert not _fs.as_location(f"s3://{BUCKET}/.ns-mkda.zarr.lock").exists()  # released

    resumed = Collection.open(store)
    assert resumed.attrs["complete"] is True and resumed.n_experiments == N_STUDIES
    assert _markers(store) == 0
    assert verify(store) == []
    check = subprocess.run([sys.executable, "-m", "daskmeta.cli", "verify", store],
                           env=_env(s3), capture_output=True, text=True, timeout=300,
                           check=False)
    assert check.returncode == 0 and "checked in" in check.stderr, check.stderr[-2000:]
    assert resumed.attrs["dataset_fingerprint"] == local_mkda.attrs["dataset_fingerprint"]
    for array in ("ma", "ma_max", "ma_hist"):
        a, b = resumed.data[array].values, local_mkda.data[array].values
        assert a.dtype == b.dtype and np.array_equal(a, b), array
    assert resumed.data["ma"].values.any()


def test_fits_from_s3_equal_local(s3, subset, local_mkda, tmp_path):
    dataset = subset[0]
    label = "LDA50__32_pain_somatosensory_stimulation"
    # The MKDA store of the previous test, or built here when run alone.
    remote_mkda = _quiet_build(dataset, MKDAKernel(), f"s3://{BUCKET}/ns-mkda.zarr",
                               mask=MASK, rows_per_shard=ROWS)
    assert isinstance(remote_mkda.path, _fs.RemotePath)
    kwargs = {"select": label, "label_threshold": 0.05}
    got = _maps(MKDADensity().fit(remote_mkda, **kwargs))
    want = _maps(MKDADensity().fit(local_mkda, **kwargs))
    for m in MAPS:
        assert np.array_equal(got[m], want[m]), m
    assert got["stat"].max() > 0

    remote_ale = _quiet_build(dataset, ALEKernel(sample_size=20), f"s3://{BUCKET}/ns-ale.zarr",
                              mask=MASK, rows_per_shard=32)
    local_ale = _quiet_build(dataset, ALEKernel(sample_size=20), tmp_path / "ns-ale.zarr",
                             mask=MASK, rows_per_shard=32)
    got = _maps(ALE().fit(remote_ale, **kwargs))
    want = _maps(ALE().fit(local_ale, **kwargs))
    for m in MAPS:
        assert np.array_equal(got[m], want[m]), m
    selections = {"pain": label, "memory": "LDA50__33_memory_retrieval_encoding",
                  "first": dataset.ids[:40]}
    many_remote = MKDADensity().fit_many(remote_mkda, selections, label_threshold=0.05)
    many_local = MKDADensity().fit_many(local_mkda, selections, label_threshold=0.05)
    for m in MAPS:
        assert np.array_equal(many_remote[m].values, many_local[m].values), m
    # A decoder model with FWE nulls (each batch reads the store's binary rows) from S3.
    from daskmeta.decode import CorrelationDecoder

    labels = ["LDA50__32_pain_somatosensory_stimulation", "LDA50__33_memory_retrieval_encoding"]
    models = [CorrelationDecoder(labels=labels, fwe_iters=30, seed=2).fit(
        coll, store=tmp_path / f"model-{i}.zarr").model_.to_xarray()
        for i, coll in enumerate((remote_mkda, local_mkda))]
    for key in ("maps", "fwe_null", "fwe_threshold"):
        assert np.array_equal(models[0][key].values, models[1][key].values), key


def test_a_second_build_is_refused_while_the_lease_is_held(s3, subset):
    dataset = subset[0].slice(subset[0].ids[:8])
    store = f"s3://{BUCKET}/small.zarr"
    with _integrity.build_lock(_fs.as_location(store)) as still_held:
        time.sleep(LEASE * 0.6)  # renewed meanwhile
        with pytest.raises(DaskmetaError, match=r"another build of s3://daskmeta-test/small."
                                                r"zarr is running \(it holds s3://"):
            _quiet_build(dataset, MKDAKernel(), store, mask=MASK)
        time.sleep(LEASE * 0.6)  # past the first lease: still held, thanks to renewals
        with pytest.raises(DaskmetaError, match="another build of"):
            _quiet_build(dataset, MKDAKernel(), store, mask=MASK)
        still_held()
    assert not _fs.as_location(store).exists()
    built = _quiet_build(dataset, MKDAKernel(), store, mask=MASK)
    assert built.n_experiments == 8 and verify(store) == []


def test_bad_s3_store_errors_are_one_line(s3, capsys, tmp_path):
    from daskmeta.cli import main

    assert main(["mkda", f"s3://{BUCKET}/nothing.zarr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"daskmeta: error: s3://{BUCKET}/nothing.zarr is not a daskmeta "
                          "collection store (no zarr.json)"), err
    assert main(["ingest", str(DATA / "nimare-testdata" / "test_pain_dataset.json"),
                 "--kernel", "mkda", "--store", f"s3://{BUCKET}", "--mask", MASK]) == 2
    assert (f"daskmeta: error: s3://{BUCKET}: a store needs a name inside the bucket, e.g. "
            f"s3://{BUCKET}/neurosynth-mkda.zarr") in capsys.readouterr().err
    with pytest.raises(DaskmetaError, match=r"^gcsx://b/x.zarr/zarr.json: cannot reach gcsx:// stores: Protocol not known"):
        Collection.open("gcsx://b/x.zarr")


def test_fit_from_s3_on_dask_workers_equals_local(s3, subset, local_mkda, scheduler_and_workers):
    """Worker processes (deploy/local/cluster.sh, without the daskmeta.s3 settings) read
    the store's rows: the options travel with the store's location."""
    client, _ = scheduler_and_workers
    remote = _quiet_build(subset[0], MKDAKernel(), f"s3://{BUCKET}/ns-mkda.zarr", mask=MASK,
                          rows_per_shard=ROWS)
    ids = subset[0].ids
    selections = {"a": ids[:300], "b": ids[200:]}
    many = MKDADensity().fit_many(remote, selections)
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert min(executed.values()) > 0, executed  # both workers read rows from S3
    client.close()
    local = MKDADensity().fit_many(local_mkda, selections)
    for m in MAPS:
        assert np.array_equal(many[m].values, local[m].values), m
