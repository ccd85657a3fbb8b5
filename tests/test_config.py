"""daskmeta's dask.config settings (daskmeta.yaml), and computing where the user says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml
from conftest import NIMARE_MASK, PAIN_JSON, no_compute

import daskmeta
from daskmeta import DaskmetaError, config
from daskmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "daskmeta" / "daskmeta.yaml"


# --------------------------------------------------------------------------------------------
# defaults and overrides
# --------------------------------------------------------------------------------------------
def test_defaults_come_from_the_yaml():
    on_disk = yaml.safe_load(YAML.read_text())
    assert config.DEFAULTS == on_disk
    assert on_disk["daskmeta"] == {"progress": "auto", "figure-process": True, "chunk-size": 64,
                                   "fit-many": {"memory": "2GB"},
                                   "montecarlo": {"batch-size": 100},
                                   "collection": {"rows-per-shard": 64},
                                   "fetch": {"max-extracted-bytes": "64GB"},
                                   "cache-dir": None, "data-dir": None,
                                   "scheduler-address": None,
                                   "s3": {"endpoint-url": None, "region": None, "anon": False,
                                          "key": None, "secret": None, "lock-lease": 60}}
    assert config.get("chunk-size") == 64
    assert config.get("progress") == "auto"
    assert config.get("fit-many.memory") == "2GB"
    assert config.get_bytes("fit-many.memory") == 2_000_000_000
    assert config.get("montecarlo.batch-size") == 100
    assert config.get("daskmeta.collection.rows-per-shard") == 64
    assert config.get("collection.rows_per_shard") == 64  # "_" and "-" alike, as in dask
    assert dask.config.get("daskmeta.montecarlo.batch-size") == 100
    assert daskmeta.config is config


def test_dask_config_set_overrides():
    with dask.config.set({"daskmeta.montecarlo.batch-size": 50,
                          "daskmeta.fit-many.memory": "512MiB"}):
        assert config.get("montecarlo.batch-size") == 50
        assert config.get_bytes("fit-many.memory") == 512 * 2**20
    assert config.get("montecarlo.batch-size") == 100


def test_environment_overrides_in_a_fresh_process(tmp_path):
    env = {**os.environ, "DASK_DASKMETA__MONTECARLO__BATCH_SIZE": "50",
           "DASK_DASKMETA__FIT_MANY__MEMORY": "8GB"}
    code = ("from daskmeta import config; "
            "print(config.get('montecarlo.batch-size'), config.get_bytes('fit-many.memory'), "
            "config.get('chunk-size'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["50", "8000000000", "64"]


@pytest.mark.parametrize(("value", "expected"),
                         [("2GB", 2_000_000_000), ("512MiB", 512 * 2**20), ("1 kB", 1000),
                          (4096, 4096), (1.5e9, 1_500_000_000)])
def test_parse_bytes(value, expected):
    assert config.parse_bytes(value) == expected


@pytest.mark.parametrize("value",
                         ["lots", "2 gigs", "", "GB", "-1GB", 0, -5, True, None, [1]])
def test_parse_bytes_refuses_bad_values(value):
    with pytest.raises(DaskmetaError, match=r"is not a byte count: give a positive number of "
                                            r"bytes or a size such as '2GB'"):
        config.parse_bytes(value)


def test_bad_memory_setting_names_the_key():
    with dask.config.set({"daskmeta.fit-many.memory": "lots"}):
        with pytest.raises(DaskmetaError, match=r"^dask config daskmeta.fit-many.memory='lots' "
                                                r"is not a byte count"):
            config.get_bytes("fit-many.memory")
    with dask.config.set({"daskmeta.collection.rows-per-shard": 0}):
        with pytest.raises(DaskmetaError, match=r"daskmeta.collection.rows-per-shard=0 must "
                                                r"be a positive integer"):
            config.get_positive_int("collection.rows-per-shard")


def test_ingest_rows_per_shard_from_config(tmp_path, capsys):
    store = tmp_path / "pain.zarr"
    with dask.config.set({"daskmeta.collection.rows-per-shard": 5}):
        assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--store", str(store),
                     "--mask", str(NIMARE_MASK)]) == 0
    assert daskmeta.Collection.open(store).attrs["rows_per_shard"] == 5
    # The command line wins over the config.
    with dask.config.set({"daskmeta.collection.rows-per-shard": 5}):
        assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--store", str(store),
                     "--mask", str(NIMARE_MASK), "--rows-per-shard", "7",
                     "--overwrite"]) == 0
    assert daskmeta.Collection.open(store).attrs["rows_per_shard"] == 7
    capsys.readouterr()
    with dask.config.set({"daskmeta.collection.rows-per-shard": "many"}):
        assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--store",
                     str(tmp_path / "x.zarr"), "--mask", str(NIMARE_MASK)]) == 2
    assert ("daskmeta: error: dask config daskmeta.collection.rows-per-shard='many' must be "
            "a positive integer") in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_yaml_ships_and_loads_from_an_installed_package(tmp_path):
    """Build a wheel (pip, as a user would), install it by unpacking, import it alone."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "daskmeta", src / "daskmeta",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "-w", str(wheels), str(src)], capture_output=True, text=True,
                          check=False, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here (no package index?): {proc.stderr[-300:]}")
    (wheel,) = wheels.glob("daskmeta-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        assert "daskmeta/daskmeta.yaml" in zf.namelist()
        zf.extractall(site)
    code = ("import daskmeta, dask; from daskmeta import config; "
            "print(daskmeta.__file__); print(config.get('montecarlo.batch-size'), "
            "dask.config.get('daskmeta.fit-many.memory'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DASKMETA")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    where, values = proc.stdout.strip().splitlines()
    assert Path(where).is_relative_to(site)
    assert values == "100 2GB"


# --------------------------------------------------------------------------------------------
# computing where the user says
# --------------------------------------------------------------------------------------------
def test_no_compute_guard_catches_a_fit(pain_dataset, nimare_mask):
    from daskmeta.estimators import ALE

    with no_compute(), pytest.raises(AssertionError, match="computed a dask graph"):
        ALE(mask=nimare_mask).fit(pain_dataset)


def test_a_configured_scheduler_is_used(pain_dataset, nimare_mask):
    from daskmeta.estimators import ALE

    calls = []

    def counting_get(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_get):
        ours = ALE(mask=nimare_mask).fit(pain_dataset)
    assert calls, "the configured scheduler was not used"
    threads = ALE(mask=nimare_mask).fit(pain_dataset)
    for name in ("stat", "p", "z"):
        assert np.array_equal(ours.get_map(name, "array"), threads.get_map(name, "array"))


def test_a_scheduler_by_name_is_used():
    import threading

    from daskmeta.cluster import compute

    where = dask.delayed(lambda: threading.get_ident(), pure=False)
    main_thread = threading.get_ident()
    with dask.config.set(scheduler="synchronous"):
        assert compute(where()) == (main_thread,)
    assert compute(where()) != (main_thread,)  # the threaded scheduler's pool


def test_a_client_is_used_unless_a_scheduler_is_configured(pain_dataset, nimare_mask):
    from distributed import Client, LocalCluster, get_task_stream

    from daskmeta.estimators import ALE

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as ts:
            ALE(mask=nimare_mask).fit(pain_dataset)
        assert len(ts.data) > 0  # the fit ran on the client
        # An explicit scheduler in dask.config still wins over the client.
        with no_compute(), pytest.raises(AssertionError, match="computed a dask graph"):
            ALE(mask=nimare_mask).fit(pain_dataset)


def test_embedded_cluster_starts_quiet_unless_the_user_says_otherwise():
    """The embedded cluster runs no statistical profiler and ticks its event loop less often
    (it serves no dashboard; both only take CPU from the compute threads), except where the
    user's dask config sets those values."""
    from daskmeta.cluster import active_client, close_client, get_client

    assert active_client() is None
    client = get_client(processes=False, threads_per_worker=1)
    try:
        worker = next(iter(client.cluster.workers.values()))
        assert "profile" not in worker.periodic_callbacks
        assert worker._tick_interval == pytest.approx(0.2)
        assert client.cluster.scheduler._tick_interval == pytest.approx(0.2)
        assert worker.periodic_callbacks["monitor"].callback_time == pytest.approx(2000)
    finally:
        close_client()
    # Nothing leaks into the user's config.
    assert dask.config.get("distributed.worker.profile.enabled") is True
    with dask.config.set({"distributed.admin.tick.interval": "50ms",
                          "distributed.admin.system-monitor.interval": "1s"}):
        client = get_client(processes=False, threads_per_worker=1)
        try:
            worker = next(iter(client.cluster.workers.values()))
            assert worker._tick_interval == pytest.approx(0.05)
            assert worker.periodic_callbacks["monitor"].callback_time == pytest.approx(1000)
            assert "profile" not in worker.periodic_callbacks
        finally:
            close_client()
    assert active_client() is None
