"""Start a Dask cluster of SLURM or PBS jobs for daskmeta (dask-jobqueue), and keep it up.

    python deploy/jobqueue/launch.py slurm --jobs 4 [--config deploy/jobqueue/daskmeta.yaml]
        [--scheduler-file ~/daskmeta-scheduler.json] [--print-script]

Runs on the login node: the scheduler runs in this process, each job one `dask worker`.
Prints the scheduler's address (and writes it in the scheduler file, as `dask scheduler
--scheduler-file` does); point daskmeta at it from any shell of the cluster:

    export DASK_DASKMETA__SCHEDULER_ADDRESS=tcp://login1:34567
    daskmeta ingest ~/data/neurosynth-v7 --kernel mkda --store /scratch/ns-mkda.zarr

Ctrl-C stops the cluster and cancels its jobs. ``--print-script`` prints one job's script
and exits (nothing is submitted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "daskmeta.yaml"
KINDS = ("slurm", "pbs")


def load_config(path=DEFAULT_CONFIG) -> dict:
    """The dask config in a YAML file, checked to have a jobqueue section."""
    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict) or not isinstance(config.get("jobqueue"), dict):
        raise SystemExit(f"launch.py: {path} has no 'jobqueue' section")
    return config


def make_cluster(kind: str, config_file=DEFAULT_CONFIG, **kwargs):
    """A dask-jobqueue cluster (SLURMCluster or PBSCluster) from the config file; ``kwargs``
    override its settings (e.g. ``scheduler_options={"host": "127.0.0.1"}``)."""
    if kind not in KINDS:
        raise SystemExit(f"launch.py: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    from dask_jobqueue import PBSCluster, SLURMCluster

    cls = SLURMCluster if kind == "slurm" else PBSCluster
    section = load_config(config_file)["jobqueue"].get(kind)
    if not isinstance(section, dict):
        raise SystemExit(f"launch.py: {config_file} has no 'jobqueue.{kind}' section")
    # The file's settings as the cluster's arguments (over dask-jobqueue's defaults), so they
    # hold for every job the cluster makes, without changing this process's dask config.
    options = {key.replace("-", "_"): value for key, value in section.items()}
    options.update(kwargs)
    return cls(**options)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--jobs", type=int, default=1, help="batch jobs (one worker each)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dask config YAML")
    parser.add_argument("--scheduler-file", help="write the scheduler's address here (JSON)")
    parser.add_argument("--print-script", action="store_true",
                        help="print one job's script and exit")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    cluster = make_cluster(args.kind, args.config)
    if args.print_script:
        print(cluster.job_script())
        cluster.close()
        return
    address = cluster.scheduler_address
    if args.scheduler_file:
        Path(args.scheduler_file).write_text(json.dumps({"address": address}))
    cluster.scale(jobs=args.jobs)
    print(address, flush=True)
    print(f"export DASK_DASKMETA__SCHEDULER_ADDRESS={address}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
