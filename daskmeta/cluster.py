"""The Dask client: an active one, a scheduler by address, or an embedded LocalCluster.

Library code computes only at documented boundaries (``fit``, ``transform`` of correctors,
``save``), through :func:`compute`: on the scheduler the user configured with
``dask.config.set(scheduler=...)``, else on the active distributed Client when there is one,
else on dask's local threaded scheduler, which costs nothing to start.
"""

from __future__ import annotations

import atexit
import os
import warnings

import dask

from daskmeta.exceptions import DaskmetaError

__all__ = ["get_client", "active_client", "compute", "close_client", "scheduler_client",
           "tree_sum"]

_OWNED: list = []

#: Settings of ``distributed`` an embedded cluster starts with, unless the user's dask config
#: sets them to something other than distributed's default. An embedded cluster serves no
#: dashboard, so its worker's statistical profiler (every thread's stack sampled every 10 ms),
#: its event-loop health ticks (every 20 ms per server) and its system monitor (every 500 ms)
#: only wake the event loop, which then takes the cores and the GIL from the compute threads:
#: about 4% of a core when idle, and a 2-thread Monte Carlo ran ~5% slower with them.
EMBEDDED_DISTRIBUTED_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def _embedded_config() -> dict:
    """The settings of :data:`EMBEDDED_DISTRIBUTED_CONFIG` the user left at distributed's
    default."""
    defaults = dask.config.merge(*dask.config.defaults)
    missing = object()
    return {key: value for key, value in EMBEDDED_DISTRIBUTED_CONFIG.items()
            if dask.config.get(key, missing) == dask.config.get(key, missing, config=defaults)}


def active_client():
    """The current distributed Client, or None."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def get_client(address: str | None = None, n_workers: int | None = None,
               threads_per_worker: int | None = None, memory_limit: str | None = None,
               timeout: str = "10s", processes: bool = True, **kwargs):
    """Return a distributed Client.

    In order: ``address`` (a scheduler such as ``tcp://127.0.0.1:8786``), else the dask config
    setting ``daskmeta.scheduler-address``, else the ``DASK_SCHEDULER_ADDRESS`` environment
    variable (:func:`daskmeta.config.scheduler_address`), else an already active Client, else a new
    embedded :class:`distributed.LocalCluster`, closed when the interpreter exits: of
    ``n_workers`` single-threaded worker processes (default: the number of cores, at most 4),
    or with ``processes=False`` of one worker in this process with a thread per core (no
    process to start, and compiled code loaded or compiled once: daskmeta's compiled loops
    release the GIL, so threads scale like processes). An embedded cluster serves no
    dashboard and starts with the ``distributed`` settings of
    :data:`EMBEDDED_DISTRIBUTED_CONFIG` (no statistical profiler, fewer event-loop wake-ups)
    wherever the dask config leaves distributed's defaults.

    Parameters
    ----------
    address : str, optional
        Scheduler address.
    n_workers : int, optional
        Workers of an embedded cluster (default: cores, at most 4, with ``processes``;
        one without).
    threads_per_worker : int, optional
        Threads per worker of an embedded cluster (default: 1 with ``processes``; the
        number of cores, at most 4, without).
    memory_limit : str, optional
        Memory limit per worker of an embedded cluster (e.g. ``"2GiB"``).
    timeout : str
        How long to try to reach a scheduler by address.
    processes : bool
        Whether an embedded cluster's workers are processes (True) or threads of this
        process (False).
    **kwargs
        Passed to :class:`distributed.LocalCluster`.

    Raises
    ------
    DaskmetaError
        If the scheduler at ``address`` cannot be reached.
    """
    from distributed import Client, LocalCluster

    from daskmeta.config import scheduler_address

    address, _ = scheduler_address(address)
    if address:
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise DaskmetaError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        _OWNED.append(client)
        return client
    client = active_client()
    if client is not None:
        return client
    cores = max(1, min(4, os.cpu_count() or 1))
    if n_workers is None:
        n_workers = cores if processes else 1
    if threads_per_worker is None:
        threads_per_worker = 1 if processes else cores
    with warnings.catch_warnings(), dask.config.set(_embedded_config()):
        # Without a dashboard the scheduler still serves its health page, on port 8787 if
        # free, else on another port with a warning that means nothing to the user.
        warnings.filterwarnings("ignore", message="Port 8787 is already in use")
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            memory_limit=memory_limit or "auto",
            dashboard_address=None,
            **kwargs,
        )
    client = Client(cluster)
    _OWNED.append(client)
    return client


def close_client():
    """Close the clients (and embedded clusters) this module started."""
    while _OWNED:
        client = _OWNED.pop()
        cluster = getattr(client, "cluster", None)
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        except Exception:  # closing at exit: nothing useful to do with an error
            pass


atexit.register(close_client)


_DISTRIBUTED = ("dask.distributed", "distributed")


def compute(*collections, **kwargs):
    """Compute dask collections where the user says.

    In order: a ``scheduler=`` argument; a scheduler set in ``dask.config`` (e.g.
    ``dask.config.set(scheduler="synchronous")``, or a callable such as ``dask.get``),
    other than the ``"dask.distributed"`` that a default Client sets; the active
    distributed Client; dask's local threaded scheduler.
    """
    if "scheduler" in kwargs:
        return dask.compute(*collections, **kwargs)
    configured = dask.config.get("scheduler", None)
    if configured is not None and not (isinstance(configured, str)
                                       and configured in _DISTRIBUTED):
        return dask.compute(*collections, scheduler=configured, **kwargs)
    client = active_client()
    if client is not None:
        return tuple(client.compute(list(collections), sync=True, **kwargs))
    return dask.compute(*collections, scheduler="threads", **kwargs)


def scheduler_client():
    """The distributed Client computations go to: the active one, unless ``dask.config``
    names another scheduler (see :func:`compute`); None otherwise."""
    configured = dask.config.get("scheduler", None)
    if configured is not None and not (isinstance(configured, str)
                                       and configured in _DISTRIBUTED):
        return None
    return active_client()


def tree_sum(parts: list):
    """Pairwise (tree) sum of delayed arrays: parallel, bounded memory, and a fixed order of
    additions (so the float sums do not depend on the number of workers)."""
    import numpy as np

    add = dask.delayed(np.add, pure=True)
    while len(parts) > 1:
        parts = [add(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]
