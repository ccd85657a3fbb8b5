"""Write ``daskcluster.yaml``: a ``DaskCluster`` of the daskmeta image for the dask-kubernetes
operator, made by the operator's own spec builder (``make_cluster_spec``).

    python deploy/kubernetes/make_manifest.py [--image daskmeta:0.1.0] [--workers 4] > x.yaml
    kubectl apply -f deploy/kubernetes/daskcluster.yaml

One change to what ``make_cluster_spec`` gives: its scheduler runs ``dask-scheduler`` and its
default worker command is ``dask-worker``, scripts current distributed no longer has; here
they are ``dask scheduler`` and ``dask worker`` (the daskmeta image would also translate
the old names).
"""

from __future__ import annotations

import argparse
import sys

import yaml

NAME = "daskmeta"
IMAGE = "daskmeta:0.1.0"
N_WORKERS = 4
RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
# Settings every pod reads (dask config through variables); credentials for S3 stores come
# from the pods' service account (an IAM role) or a Secret you add as envFrom.
ENV = {"DASK_DASKMETA__S3__REGION": "us-east-1",
       "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "0.8"}
SCHEDULER_ARGS = ["dask", "scheduler", "--host", "0.0.0.0"]


def build(name: str = NAME, image: str = IMAGE, n_workers: int = N_WORKERS,
          resources: dict | None = None, env: dict | None = None) -> dict:
    """The DaskCluster resource (a dict)."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(name, image=image, n_workers=n_workers,
                             resources=RESOURCES if resources is None else resources,
                             env=ENV if env is None else env, worker_command="dask worker")
    (container,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert container["args"][0] == "dask-scheduler", container["args"]
    container["args"] = SCHEDULER_ARGS + container["args"][3:]
    return spec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--workers", type=int, default=N_WORKERS)
    args = parser.parse_args(argv)
    sys.stdout.write("# Made by deploy/kubernetes/make_manifest.py (dask_kubernetes.operator."
                     "make_cluster_spec); edit that, not this.\n")
    yaml.dump(build(args.name, args.image, args.workers), sys.stdout, Dumper=_NoAliases,
              sort_keys=False)


class _NoAliases(yaml.SafeDumper):
    """Writes shared values out in full (no YAML anchors)."""

    def ignore_aliases(self, data):
        return True


if __name__ == "__main__":
    main()
