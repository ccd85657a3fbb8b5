"""Shared fixtures: paths to ../shared/data, the pain dataset, NiMARE's mask, no-early-compute,
a real Dask scheduler with worker processes (the deploy/local/cluster.sh recipe)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
NIMARE_MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN_JSON = TESTDATA / "test_pain_dataset.json"
LOCAL_CLUSTER = Path(__file__).resolve().parents[1] / "deploy" / "local" / "cluster.sh"


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


def ids_with_foci(ds) -> list:
    """The ids of a daskmeta Dataset's experiments that have foci, in its order."""
    present = set(ds.foci["id"])
    return [i for i in ds.ids if i in present]


@pytest.fixture(scope="session")
def pain_halves(pain_dataset):
    """The pain experiments with foci as two groups: the first 9 and the other 10."""
    ids = ids_with_foci(pain_dataset)
    return pain_dataset.slice(ids[:9]), pain_dataset.slice(ids[9:])


@pytest.fixture(scope="session")
def nimare_pain_halves(nimare_pain):
    """The same two groups of NiMARE's Dataset."""
    ids = list(nimare_pain.coordinates["id"].unique())
    return nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:])


@pytest.fixture(scope="session")
def neurosynth():
    """The whole Neurosynth v7 (14,371 studies), read by daskmeta (for the slow tests)."""
    from daskmeta.io import read_neurosynth

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_neurosynth(DATA / "neurosynth-v7")


@pytest.fixture(scope="session")
def neurosynth_mkda(neurosynth, tmp_path_factory):
    """An MKDA (r = 10 mm) collection of the whole Neurosynth on NiMARE's mask, built once
    per session for the whole-database tests."""
    from daskmeta import Collection
    from daskmeta.kernels import MKDAKernel

    root = tmp_path_factory.mktemp("neurosynth-mkda")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("DASKMETA_CACHE_DIR", str(root / "cache"))
        warnings.simplefilter("ignore")  # the foci far outside the mask (counted elsewhere)
        return Collection.build(neurosynth, MKDAKernel(r=10), root / "ns.zarr",
                                mask=str(NIMARE_MASK))


@pytest.fixture(scope="session")
def nimare_neurosynth(neurosynth):
    """NiMARE's Dataset of the same experiments and MNI foci (``benchmarks/run.py``'s
    ``to_nimare_dataset``) on NiMARE's mask, with the LDA50 topic weights as NiMARE
    annotations (feature group ``LDA50``): built once per session (about 7 GB of NiMARE)."""
    import pandas as pd

    pytest.importorskip("nimare")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from run import to_nimare_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = to_nimare_dataset(neurosynth, NIMARE_MASK)
    cols = [i for i, n in enumerate(neurosynth.label_names) if n.startswith("LDA50__")]
    rows = pd.Index(neurosynth.ids).get_indexer(data.ids)
    weights = neurosynth.labels.tocsr()[rows][:, cols].toarray()
    table = pd.DataFrame(weights, columns=[neurosynth.label_names[c] for c in cols])
    ids = pd.Series(data.ids)
    table.insert(0, "id", ids.to_numpy())
    table.insert(1, "study_id", ids.str.rpartition("-")[0].to_numpy())
    table.insert(2, "contrast_id", ids.str.rpartition("-")[2].to_numpy())
    data.annotations = table
    return data


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


def assert_tables_match(ours, theirs, names, atol):
    """Diagnostics tables ``names`` of two results: the same columns; with an ``id`` column
    the same ids and values within ``atol``, else equal frames."""
    import pandas as pd

    for name in names:
        a, b = ours.tables[name], theirs.tables[name]
        assert list(a.columns) == list(b.columns), name
        if "id" in b:
            assert list(a["id"]) == list(b["id"]), name
            diff = np.abs(a.iloc[:, 1:].to_numpy(float) - b.iloc[:, 1:].to_numpy(float)).max()
            assert diff <= atol, f"{name}: max abs difference {diff:.3g}"
        else:
            pd.testing.assert_frame_equal(a, b)


def assert_close(a, b, atol, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = np.abs(a - b).max()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


class ClusterProcess:
    """A process of ``deploy/local/cluster.sh`` (not our child: the script's), by its id."""

    def __init__(self, pid: int):
        self.pid = pid

    def running(self) -> bool:
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def wait(self, timeout: float) -> bool:
        """Whether the process ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@contextlib.contextmanager
def local_cluster(directory: Path, n_workers: int = 2, threads: int = 1,
                  memory_limit: str = "2GiB", extra_env: dict | None = None):
    """The project's own recipe, ``deploy/local/cluster.sh``: a ``dask scheduler`` and
    ``n_workers`` ``dask worker`` processes (no nanny) on 127.0.0.1, a free port.

    Yields ``(scheduler address, scheduler file, worker processes)``; stops the cluster (its
    script, by its process id, which stops each of its processes) at the end."""
    import os
    import signal

    directory.mkdir(parents=True, exist_ok=True)
    started = []
    log = open(directory / "cluster.log", "w")  # noqa: SIM115 (closed below)
    env = {**os.environ, "PYTHON": sys.executable, **(extra_env or {})}
    proc = subprocess.Popen(["bash", str(LOCAL_CLUSTER), "--workers", str(n_workers),
                             "--threads", str(threads), "--memory-limit", memory_limit,
                             "--host", "127.0.0.1", "--port", "0", "--dir", str(directory),
                             "--grace", "5"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        address = proc.stdout.readline().strip()
        if not address.startswith("tcp://127.0.0.1:"):
            proc.wait(timeout=30)
            raise RuntimeError("deploy/local/cluster.sh did not start: "
                               + (directory / "cluster.log").read_text()
                               + (directory / "scheduler.log").read_text())
        workers = [ClusterProcess(int((directory / f"worker-{k}.pid").read_text()))
                   for k in range(n_workers)]
        started = [ClusterProcess(int((directory / "scheduler.pid").read_text())), *workers]
        yield address, directory / "scheduler.json", workers
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        proc.stdout.close()
        log.close()
        # The script stops what it started; should it have been killed itself, its
        # processes are stopped here, by their ids.
        for process in started:
            if process.running():
                os.kill(process.pid, signal.SIGKILL)


@pytest.fixture
def scheduler_and_workers(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes (no nanny) on 127.0.0.1 started
    by ``deploy/local/cluster.sh``, and a client of them: ``(client, worker processes)``."""
    distributed = pytest.importorskip("distributed")
    with local_cluster(tmp_path / "cluster") as (address, sched_file, workers):
        client = distributed.Client(scheduler_file=str(sched_file), timeout="30s")
        try:
            client.wait_for_workers(2, timeout=60)
            assert json.loads(sched_file.read_text())["address"] == address
            yield client, workers
        finally:
            client.close()


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
