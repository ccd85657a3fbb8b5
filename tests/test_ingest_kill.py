"""A real ``kill -9`` of ``daskmeta ingest`` midway, then a resumed build equal to a clean one.

4,000 Neurosynth studies with the MKDA kernel and 4 experiments per chunk (1,000 chunks, a
few seconds of work) so the kill lands while chunks are being written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from daskmeta.collection import _PROGRESS, Collection
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import MKDAKernel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEUROSYNTH = DATA / "neurosynth-v7"
MASK = DATA / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz"
N_STUDIES = 4000
ROWS = 4
N_CHUNKS = N_STUDIES // ROWS

pytestmark = pytest.mark.skipif(not NEUROSYNTH.is_dir(),
                                reason=f"Neurosynth release files not found at {NEUROSYNTH}")


def _ingest_cmd(source, store):
    return [sys.executable, "-m", "daskmeta.cli", "ingest", str(source), "--kernel", "mkda",
            "--store", str(store), "--mask", str(MASK), "--rows-per-shard", str(ROWS)]


def _env():
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # the threaded scheduler, in the killed process
    return env


def _markers(store) -> int:
    folder = Path(store) / _PROGRESS
    return len(list(folder.glob("*.done"))) if folder.is_dir() else 0


def test_kill_9_midway_then_resume_equals_clean_build(tmp_path):
    from daskmeta.io import read

    ns = read(NEUROSYNTH)
    subset = ns.slice(ns.ids[:N_STUDIES])
    source = subset.save(tmp_path / "neurosynth-4000.zip")
    store = tmp_path / "killed.zarr"

    proc = subprocess.Popen(_ingest_cmd(source, store), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _markers(store) < N_CHUNKS // 10:
            assert proc.poll() is None, (
                "the ingest ended before it could be killed:\n"
                + proc.stderr.read().decode(errors="replace")[-2000:])
            assert time.monotonic() < deadline, "the ingest wrote no chunks in 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    done_at_kill = _markers(store)
    assert N_CHUNKS // 10 <= done_at_kill < N_CHUNKS, done_at_kill
    assert zarr.open_group(store, mode="r").attrs["complete"] is False
    with pytest.raises(DaskmetaError, match="incomplete collection"):
        Collection.open(store)

    # Run the same ingest again: it finishes the chunks without markers.
    again = subprocess.run(_ingest_cmd(source, store), env=_env(), capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == str(store.resolve())
    resumed = Collection.open(store)
    assert resumed.attrs["complete"] is True and resumed.n_experiments == N_STUDIES
    assert not (store / _PROGRESS).exists()
    assert not list(store.rglob("*.tmp"))  # no half-written shard left behind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)  # foci far outside the mask
        clean = Collection.build(subset, MKDAKernel(), tmp_path / "clean.zarr", mask=MASK,
                                 rows_per_shard=ROWS)
    assert resumed.attrs["dataset_fingerprint"] == clean.attrs["dataset_fingerprint"]
    a = zarr.open_array(store, path="ma", mode="r")
    b = zarr.open_array(clean.path, path="ma", mode="r")
    assert a.shape == b.shape == (N_STUDIES, resumed.space.n_voxels)
    assert a.dtype == b.dtype == np.uint8
    step = 64 * ROWS
    for start in range(0, N_STUDIES, step):
        block_a, block_b = a[start:start + step], b[start:start + step]
        assert np.array_equal(block_a, block_b), f"rows {start}:{start + step} differ"
    assert block_a.any()  # a real map, not an empty one on both sides
