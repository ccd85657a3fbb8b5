"""The deploy/ recipes (issue 16), each validated without its platform: the image's entry
point, the dask-kubernetes operator manifest (against the operator's own spec builder and
its CRD schema), the official Helm chart's values (against the chart's keys), dask-jobqueue
job scripts (rendered, then run here as the batch system would run them), a real Dask Gateway
server on loopback, and the local scheduler + workers script; the last three run a Monte
Carlo correction equal to the local scheduler's."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import local_cluster

from daskmeta.cluster import active_client
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# A scheduler in the test process serves its health page on port 8787 or, if taken, another.
PORT_WARNING = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
MC = {"method": "montecarlo", "n_iters": 120, "batch_size": 30, "seed": 11, "progress": False}


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pain_fit(pain_dataset, nimare_mask):
    return ALE(mask=nimare_mask).fit(pain_dataset)


@pytest.fixture(scope="module")
def corrected_locally(pain_fit):
    """The Monte Carlo correction on dask's local threaded scheduler (no client)."""
    assert active_client() is None
    return FWECorrector(**MC).transform(pain_fit)


def _assert_same_correction(got, expected):
    assert set(got.null_distributions) == set(expected.null_distributions)
    for key, value in expected.null_distributions.items():
        assert np.array_equal(got.null_distributions[key], value), key
    for name in expected.map_names:
        assert np.array_equal(got.get_map(name, "array"), expected.get_map(name, "array")), name


# --------------------------------------------------------------------------------------------
# the image
# --------------------------------------------------------------------------------------------
def test_dockerfile_installs_precompiles_and_uses_the_entry_point():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r'^RUN pip install "\.\[s3\]"', text, re.M)
    assert "python -m daskmeta.precompile" in text
    assert 'ENTRYPOINT ["/usr/local/bin/daskmeta-entrypoint"]' in text
    assert "COPY deploy/docker/entrypoint.sh /usr/local/bin/daskmeta-entrypoint" in text
    copied = re.findall(r"^COPY (\S+)", text, re.M)
    for source in copied:
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "daskmeta" not in ignored and ".venv" in ignored


@pytest.mark.parametrize(("args", "program"), [
    (["dask-scheduler", "--help"], "dask scheduler"),
    (["dask-worker", "--help"], "dask worker"),
    (["dask worker", "--help"], "dask worker"),  # one argument, as a Helm value gives it
    (["daskmeta", "--version"], "daskmeta"),
])
def test_entry_point_runs_dask_scheduler_and_worker(args, program):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    if program == "daskmeta":
        assert proc.stdout.startswith("daskmeta ")
    else:
        assert re.search(rf"Usage: {program}\b", proc.stdout), proc.stdout[:200]


# --------------------------------------------------------------------------------------------
# Kubernetes: the operator's DaskCluster, the official Helm chart's values
# --------------------------------------------------------------------------------------------
def _crd_schema():
    import dask_kubernetes

    crd = (Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
           / "dask-kubernetes-operator" / "crds" / "daskcluster.yaml")
    return yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _unknown_fields(value, schema, where=""):
    """Fields the CRD's structural schema does not define (Kubernetes would drop them)."""
    out = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                out.append(f"{where}.{key}")
            else:
                out += _unknown_fields(item, schema["properties"][key], f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            out += _unknown_fields(item, schema["items"], f"{where}[{k}]")
    return out


def test_daskcluster_manifest_is_the_operators_spec():
    import jsonschema
    from dask_kubernetes.operator import make_cluster_spec

    manifest = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    worker = manifest["spec"]["worker"]
    (container,) = worker["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    expected = make_cluster_spec(manifest["metadata"]["name"], image=container["image"],
                                 n_workers=worker["replicas"],
                                 resources=container["resources"], env=env,
                                 worker_command="dask worker")
    (scheduler,) = expected["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["args"][0] == "dask-scheduler"  # the builder's, a script that is gone
    scheduler["args"] = ["dask", "scheduler", *scheduler["args"][1:]]
    assert manifest == expected
    assert manifest == _module(DEPLOY / "kubernetes" / "make_manifest.py").build()
    assert container["args"][:2] == ["dask", "worker"]
    assert container["image"].startswith("daskmeta:")
    # The operator's CRD schema (types, required fields) and no field it does not define.
    schema = _crd_schema()
    jsonschema.validate(manifest, schema)
    spec_schema = schema["properties"]["spec"]
    assert _unknown_fields(manifest["spec"], spec_schema, ".spec") == []
    broken = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    broken["spec"]["worker"]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="'four' is not of type 'integer'"):
        jsonschema.validate(broken, schema)
    broken["spec"]["worker"]["replica"] = 4
    assert _unknown_fields(broken["spec"], spec_schema, ".spec") == [".spec.worker.replica"]
    text = (DEPLOY / "kubernetes" / "daskcluster.yaml").read_text()
    assert "dask-scheduler" not in text and "dask-worker" not in text


def _chart_keys():
    keys, free = set(), set()
    for line in (DEPLOY / "helm" / "dask-chart-keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, *mark = line.split()
            keys.add(key)
            if mark == ["*"]:
                free.add(key)
    return keys, free


def _leaf_keys(node, prefix=""):
    for key, value in node.items():
        full = f"{prefix}{key}"
        yield full
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{full}.")


def _helm_key_problems(values) -> list[str]:
    keys, free = _chart_keys()
    problems = []
    for key in _leaf_keys(values):
        parents = [".".join(key.split(".")[:n]) for n in range(1, key.count(".") + 1)]
        if key not in keys and not any(p in free for p in parents):
            problems.append(key)
    return problems


def test_helm_values_use_only_the_charts_keys():
    keys, free = _chart_keys()
    assert {"worker.image.dask_worker", "scheduler.image.repository", "worker.env",
            "worker.threads_per_worker"} <= keys and "worker.resources" in free
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert _helm_key_problems(values) == []
    assert _helm_key_problems({"worker": {"replica": 3, "resources": {"limits": {"gpu": 1}}},
                               "schedular": {}}) == ["worker.replica", "schedular"]
    for part in ("scheduler", "worker"):
        assert values[part]["image"]["repository"] == "daskmeta"
    # The chart runs [dask_worker, scheduler address, ...]: "dask worker" as one argument,
    # which the image's entry point runs as `dask worker` (tested above).
    assert values["worker"]["image"]["dask_worker"] == "dask worker"
    assert values["jupyter"]["enabled"] is False


# --------------------------------------------------------------------------------------------
# HPC: dask-jobqueue
# --------------------------------------------------------------------------------------------
@PORT_WARNING
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_jobqueue_job_script(kind):
    launch = _module(DEPLOY / "jobqueue" / "launch.py")
    cluster = launch.make_cluster(kind, scheduler_options={"host": "127.0.0.1",
                                                           "dashboard_address": None})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    directive = "#SBATCH" if kind == "slurm" else "#PBS"
    assert f"{directive} -{'J' if kind == 'slurm' else 'N'} daskmeta" in script
    assert ("#SBATCH --cpus-per-task=8" in script if kind == "slurm"
            else "#PBS -l select=1:ncpus=8:mem=32GB" in script)
    assert "export OMP_NUM_THREADS=1" in script
    (command,) = [line for line in script.splitlines() if " -m dask worker " in line]
    words = shlex.split(command)
    assert words[:4] == [sys.executable, "-m", "dask", "worker"]
    assert words[4].startswith("tcp://127.0.0.1:")
    assert words[words.index("--nthreads") + 1] == "8"
    assert words[words.index("--death-timeout") + 1] == "120"


@PORT_WARNING
def test_jobqueue_job_runs_a_monte_carlo_like_the_local_scheduler(pain_fit, corrected_locally,
                                                                  tmp_path):
    """The job script, run as SLURM would run it on a node, gives a worker of the cluster's
    scheduler, and the correction on it equals the local one."""
    from distributed import Client

    launch = _module(DEPLOY / "jobqueue" / "launch.py")
    cluster = launch.make_cluster("slurm", cores=1, memory="2GiB", local_directory=str(tmp_path),
                                  scheduler_options={"host": "127.0.0.1",
                                                     "dashboard_address": None})
    job = None
    try:
        script = tmp_path / "job.sh"
        script.write_text(cluster.job_script())
        job = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "job.log", "w"))  # noqa: SIM115
        with Client(cluster.scheduler_address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=90)
            remote = FWECorrector(**MC).transform(pain_fit)
            assert len(client.scheduler_info()["workers"]) == 1
    finally:
        cluster.close()
        if job is not None:
            if job.poll() is None:
                job.terminate()
            job.wait(timeout=60)
    _assert_same_correction(remote, corrected_locally)


# --------------------------------------------------------------------------------------------
# Dask Gateway
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _gateway_server(tmp_path, password):
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DASKMETA_GATEWAY_PASSWORD": password,
           "DASKMETA_GATEWAY_ADDRESS": f"127.0.0.1:{_free_port()}",
           "DASKMETA_GATEWAY_PROXY_ADDRESS": f"127.0.0.1:{port}"}
    log = open(tmp_path / "gateway.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(BIN / "dask-gateway-server"), "-f",
                             str(DEPLOY / "gateway" / "dask_gateway_config.py")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while "Dask-Gateway server started" not in (tmp_path / "gateway.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "gateway.log").read_text())
            time.sleep(0.2)
        # The proxy routes the API once it has fetched its routing table from the server.
        while not _answers(f"http://127.0.0.1:{port}/api/health"):
            if time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "gateway.log").read_text())
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def _closed(gateway) -> None:
    """dask-gateway's ``Gateway.close`` is not idempotent: closed once, its ``__del__``
    closes it again and raises (in whatever code runs at garbage collection)."""
    gateway.close = lambda: None


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_gateway_cluster_runs_a_monte_carlo_like_the_local_scheduler(pain_fit,
                                                                     corrected_locally,
                                                                     tmp_path):
    import dask
    from dask_gateway import Gateway

    client_config = yaml.safe_load((DEPLOY / "gateway" / "gateway.yaml").read_text())
    assert client_config["gateway"]["auth"]["type"] == "basic"
    with _gateway_server(tmp_path, "s3cret") as port:
        settings = _flatten(client_config)
        settings.update({"gateway.address": f"http://127.0.0.1:{port}",
                         "gateway.proxy-address": f"gateway://127.0.0.1:{port}",
                         "gateway.auth.kwargs.password": "s3cret"})
        with dask.config.set(settings):
            gateway = Gateway()  # everything from the client configuration
            try:
                cluster = gateway.new_cluster()
                try:
                    cluster.scale(2)
                    with cluster.get_client() as client:
                        client.wait_for_workers(2, timeout=120)
                        remote = FWECorrector(**MC).transform(pain_fit)
                        done = client.run(lambda dask_worker: dask_worker.state.executed_count)
                finally:
                    cluster.shutdown()
                    _closed(cluster.gateway)
            finally:
                gateway.close()
                _closed(gateway)
        with dask.config.set({**settings, "gateway.auth.kwargs.password": "wrong"}):
            gateway = Gateway()
            try:
                with pytest.raises(Exception, match="401|Unauthorized|nauthori"):
                    gateway.list_clusters()
            finally:
                gateway.close()
                _closed(gateway)
    assert len(done) == 2 and sum(done.values()) >= MC["n_iters"] // MC["batch_size"]
    _assert_same_correction(remote, corrected_locally)


def _flatten(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dask.config.set then changes only those)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------------------------
# the local scheduler + workers script
# --------------------------------------------------------------------------------------------
def test_local_cluster_script_runs_a_monte_carlo_like_the_local_scheduler(pain_fit,
                                                                          corrected_locally,
                                                                          tmp_path):
    from distributed import Client

    with local_cluster(tmp_path / "c", n_workers=2) as (address, sched_file, workers):
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            remote = FWECorrector(**MC).transform(pain_fit)
            pids = sorted(client.run(os.getpid).values())
        assert pids == sorted(w.pid for w in workers)
    for worker in workers:  # the script stopped every process it started
        assert worker.wait(timeout=30)
    assert not list((tmp_path / "c").glob("*.pid"))
    _assert_same_correction(remote, corrected_locally)


def test_local_cluster_script_refuses_bad_options(tmp_path):
    script = str(DEPLOY / "local" / "cluster.sh")
    for args, message in ((["--workers", "0"], "--workers must be at least 1"),
                          (["--workers", "two"], "two is not a whole number"),
                          (["--grace", "-1"], "-1 is not a whole number"),
                          (["--threads"], "--threads needs a value"),
                          (["--frobnicate"], "unknown option --frobnicate")):
        proc = subprocess.run(["bash", script, "--dir", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
