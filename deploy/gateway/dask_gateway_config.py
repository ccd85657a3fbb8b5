# A Dask Gateway server whose clusters run daskmeta (dask-gateway-server's configuration).
#
#   DASKMETA_GATEWAY_PASSWORD=... dask-gateway-server -f deploy/gateway/dask_gateway_config.py
#
# This one starts schedulers and workers as local processes of the server's user (the
# "unsafe" local backend: a single-user machine, a workstation, a test). For a shared
# service use the Kubernetes backend (dask-gateway's Helm chart) with the daskmeta image
# (deploy/docker/Dockerfile) as its image, and the same ClusterConfig settings. Clients
# connect with deploy/gateway/gateway.yaml.
import os

c = get_config()  # noqa: F821 (defined by dask-gateway-server when it reads this file)

c.DaskGateway.address = os.environ.get("DASKMETA_GATEWAY_ADDRESS", "127.0.0.1:8000")
c.Proxy.address = os.environ.get("DASKMETA_GATEWAY_PROXY_ADDRESS", "127.0.0.1:8001")
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"

# Users sign in with a user name and this shared password (HTTP basic authentication).
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = os.environ.get("DASKMETA_GATEWAY_PASSWORD") or None

# Workers: threads for daskmeta's compiled loops (they release the GIL); schedulers and
# workers read daskmeta's settings from these variables (the server's PATH and PYTHONPATH
# are inherited, so they run the server's daskmeta).
# dask-gateway-server's defaults are the dask-scheduler / dask-worker scripts, which current
# distributed no longer has.
c.ClusterConfig.scheduler_cmd = ["dask", "scheduler"]
c.ClusterConfig.worker_cmd = ["dask", "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_threads = 1
c.ClusterConfig.worker_memory = "2 G"
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.environment = {
    name: value for name, value in os.environ.items() if name.startswith("DASK_DASKMETA__")}
c.ClusterConfig.idle_timeout = 3600
c.ClusterConfig.cluster_max_workers = 16
c.LocalBackend.inherited_environment = ["PATH", "PYTHONPATH", "LANG", "LC_ALL", "HOME",
                                        "NUMBA_CACHE_DIR", "DASKMETA_CACHE_DIR"]
