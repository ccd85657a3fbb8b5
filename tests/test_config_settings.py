"""The settings of issue 16: cache and data directories, the default scheduler address, the
S3 options; every one overridable by a DASK_DASKMETA__... variable; ``daskmeta config``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dask
import pytest

from daskmeta import DaskmetaError, config
from daskmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str, env: dict, tmp_path) -> str:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DASK_DASKMETA", "DASKMETA_", "DASK_SCHEDULER"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**clean, **env}, cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_setting_has_its_variable_and_readme_documents_it():
    keys = [key for key, _, _ in config.settings()]
    assert keys[:4] == ["daskmeta.chunk-size", "daskmeta.fit-many.memory",
                        "daskmeta.montecarlo.batch-size", "daskmeta.collection.rows-per-shard"]
    assert {"daskmeta.cache-dir", "daskmeta.data-dir", "daskmeta.scheduler-address",
            "daskmeta.s3.endpoint-url", "daskmeta.s3.region", "daskmeta.s3.anon",
            "daskmeta.s3.key", "daskmeta.s3.secret", "daskmeta.s3.lock-lease"} <= set(keys)
    assert config.env_var("s3.lock-lease") == "DASK_DASKMETA__S3__LOCK_LEASE"
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):]
    for key, _, env in config.settings():
        assert f"`{key}`" in table, key
        assert f"`{env}`" in table, env


def test_every_setting_is_overridden_by_its_variable_in_a_fresh_process(tmp_path):
    values = {"daskmeta.cache-dir": str(tmp_path / "cache"),
              "daskmeta.data-dir": str(tmp_path / "data"),
              "daskmeta.scheduler-address": "tcp://127.0.0.1:8786",
              "daskmeta.s3.endpoint-url": "http://127.0.0.1:9000",
              "daskmeta.s3.region": "eu-west-1", "daskmeta.s3.anon": "true",
              "daskmeta.s3.key": "K", "daskmeta.s3.secret": "S", "daskmeta.s3.lock-lease": "7",
              "daskmeta.chunk-size": "16"}
    env = {config.env_var(k): v for k, v in values.items()}
    out = _fresh("import json, daskmeta; from daskmeta import config; "
                 "print(json.dumps({k: v for k, v, _ in config.settings()}))", env, tmp_path)
    got = json.loads(out)
    for key, value in values.items():
        assert str(got[key]).lower() == value.lower(), key


def test_cache_and_data_dirs_follow_the_config(tmp_path):
    from daskmeta import _numba_cache
    from daskmeta.io.download import default_data_dir

    out = _fresh("from daskmeta import _numba_cache; print(_numba_cache.default_dir())",
                 {"DASK_DASKMETA__CACHE_DIR": str(tmp_path / "c")}, tmp_path)
    assert out.strip() == str(tmp_path / "c")
    out = _fresh("from daskmeta import _numba_cache; print(_numba_cache.default_dir())",
                 {"DASK_DASKMETA__CACHE_DIR": str(tmp_path / "c"),
                  "DASKMETA_CACHE_DIR": str(tmp_path / "env")}, tmp_path)
    assert out.strip() == str(tmp_path / "env")  # the older variable still wins
    with dask.config.set({"daskmeta.data-dir": str(tmp_path / "d")}):
        if not os.environ.get("DASKMETA_DATA"):
            assert default_data_dir() == tmp_path / "d"
    assert _numba_cache.default_dir() != tmp_path / "c"


def test_scheduler_address_order(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert config.scheduler_address() == (None, "")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    assert config.scheduler_address() == ("tcp://10.0.0.1:8786", "DASK_SCHEDULER_ADDRESS")
    with dask.config.set({"daskmeta.scheduler-address": "tcp://10.0.0.2:8786"}):
        assert config.scheduler_address() == ("tcp://10.0.0.2:8786",
                                              "dask config daskmeta.scheduler-address")
        assert config.scheduler_address("tcp://h:1") == ("tcp://h:1", "--scheduler")


def test_bad_scheduler_setting_is_refused_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"daskmeta.scheduler-address": "nowhere"}):
        assert main(["ale", str(ROOT / "nothing.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"dask config daskmeta.scheduler-address must be a Dask scheduler "
                     r"address such as tcp://host:8786 .*; got 'nowhere'", err), err
    assert not (tmp_path / "o").exists()


def test_storage_options_from_the_s3_settings():
    assert config.storage_options("s3://b/x.zarr") == {}
    with dask.config.set({"daskmeta.s3.endpoint-url": "http://127.0.0.1:9000",
                          "daskmeta.s3.region": "us-east-1", "daskmeta.s3.key": "K",
                          "daskmeta.s3.secret": "S"}):
        assert config.storage_options("s3://b/x.zarr") == {
            "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "us-east-1"},
            "key": "K", "secret": "S"}
        assert config.storage_options("/local/x.zarr") == {}
    with dask.config.set({"daskmeta.s3.anon": "yes"}):
        assert config.storage_options("s3://b/x") == {"anon": True}
    with dask.config.set({"daskmeta.s3.anon": "maybe"}):
        with pytest.raises(DaskmetaError, match=r"daskmeta.s3.anon='maybe' must be true or "
                                                r"false"):
            config.storage_options("s3://b/x")
    with dask.config.set({"daskmeta.s3.lock-lease": 0}):
        with pytest.raises(DaskmetaError, match=r"lock-lease=0 must be a number of seconds"):
            config.lock_lease()


def test_config_command_prints_the_values_in_force(capsys):
    with dask.config.set({"daskmeta.montecarlo.batch-size": 7,
                          "daskmeta.s3.secret": "hunter2"}):
        assert main(["config"]) == 0
        text = capsys.readouterr().out
        assert main(["config", "--json"]) == 0
        as_json = json.loads(capsys.readouterr().out)
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()}
    assert lines["daskmeta.montecarlo.batch-size"] == ["7",
                                                       "DASK_DASKMETA__MONTECARLO__BATCH_SIZE"]
    assert lines["daskmeta.s3.secret"] == ["***", "DASK_DASKMETA__S3__SECRET"]
    assert lines["daskmeta.scheduler-address"][0] == "null"
    assert "hunter2" not in text and "hunter2" not in json.dumps(as_json)
    assert as_json["daskmeta.montecarlo.batch-size"] == 7
    assert as_json["daskmeta.s3.anon"] is False
