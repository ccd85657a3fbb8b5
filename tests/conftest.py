"""Shared fixtures: paths to ../shared/data, the pain dataset, NiMARE's mask, no-early-compute,
a real Dask scheduler with worker processes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
NIMARE_MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN_JSON = TESTDATA / "test_pain_dataset.json"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def nimare_mask() -> str:
    return str(NIMARE_MASK)


@pytest.fixture(scope="session")
def nimare_space():
    import daskmeta

    return daskmeta.Space(NIMARE_MASK)


@pytest.fixture(scope="session")
def pain_dataset():
    """The 21 pain experiments (19 with foci) read by daskmeta's NiMARE-JSON reader."""
    from daskmeta.io import read_nimare_json

    return read_nimare_json(PAIN_JSON)


@pytest.fixture(scope="session")
def nimare_pain():
    """NiMARE's Dataset of the same file, with NiMARE's default mask."""
    nimare_dataset = pytest.importorskip("nimare.dataset")
    return nimare_dataset.Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK))


def _refuse_compute(*args, **kwargs):
    raise AssertionError("something computed a dask graph before the documented boundary")


@contextlib.contextmanager
def no_compute():
    """Fail if anything computes a dask collection inside the block."""
    with dask.config.set(scheduler=_refuse_compute):
        yield


@pytest.fixture
def forbid_compute():
    return no_compute


def assert_close(a, b, atol, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = np.abs(a - b).max()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


@pytest.fixture
def scheduler_and_workers(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes (no nanny) on 127.0.0.1, and
    a client of them: ``(client, worker processes)``."""
    distributed = pytest.importorskip("distributed")
    dask_cli = str(Path(sys.executable).parent / "dask")
    sched_file = tmp_path / "scheduler.json"
    logs = []
    procs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed at teardown)
        logs.append(log)
        proc = subprocess.Popen([dask_cli, *args], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    client = None
    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.stat().st_size > 0):
            if time.monotonic() > deadline:
                raise RuntimeError("the dask scheduler did not start: "
                                   + (tmp_path / "scheduler.log").read_text())
            time.sleep(0.1)
        workers = [
            start(["worker", "--scheduler-file", str(sched_file), "--nworkers", "1",
                   "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                   "--memory-limit", "2GiB", "--death-timeout", "60"], f"worker{i}")
            for i in range(2)
        ]
        client = distributed.Client(scheduler_file=str(sched_file), timeout="30s")
        client.wait_for_workers(2, timeout=60)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        yield client, workers
    finally:
        if client is not None:
            client.close()
        # Workers first, then the scheduler, each waited for.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        for log in logs:
            log.close()


def crop_mask(lo=(16, 61, 27), size=(20, 20, 20)) -> nib.Nifti1Image:
    """NiMARE's FSL MNI152 2 mm mask cropped to a box around the right insula site (the
    images live on this small grid, so both programs read them without resampling)."""
    m = nib.load(str(NIMARE_MASK))
    lo = np.asarray(lo)
    sl = tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))
    data = np.asarray(m.dataobj)[sl].astype(np.uint8)
    aff = m.affine.copy()
    aff[:3, 3] = m.affine[:3, :3] @ lo + m.affine[:3, 3]
    return nib.Nifti1Image(data, aff)
