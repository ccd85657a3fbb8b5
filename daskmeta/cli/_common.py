"""What the commands share: the parser class, the Dask options and the client, option checks
(one line naming the option, the value and what is allowed), reading an input, logging."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from daskmeta.exceptions import DaskmetaError, DaskmetaWarning


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``daskmeta: error: ...``, exit status 2)."""

    def error(self, message):
        text = " ".join(str(message).split())
        self.exit(2, f"daskmeta: error: {text} (see {self.prog} --help)\n")


#: Most Monte Carlo iterations the command accepts (the nulls then hold 240 MB).
MAX_N_ITERS = 10_000_000
#: Embedded local cluster: at most this many worker processes per core.
_WORKERS_PER_CORE = 4
_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def _import_quietly(*modules: str) -> None:
    """Import ``modules`` with Python's garbage collector paused: importing creates objects
    that live as long as the process, and collecting while they are made costs a command
    ~15% of its start-up."""
    import gc
    import importlib

    enabled = gc.isenabled()
    gc.disable()
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if enabled:
            gc.enable()


def _log(msg: str) -> None:
    print(f"[daskmeta {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, ``daskmeta: warning: ...`` (the command's
    :func:`warnings.formatwarning`); categories other than DaskmetaWarning are named."""
    kind = "" if issubclass(category, DaskmetaWarning) else f" ({category.__name__})"
    text = " ".join(str(message).splitlines())
    return f"daskmeta: warning{kind}: {text}\n"



def _add_cluster_options(p):
    g = p.add_argument_group("Dask")
    g.add_argument("--scheduler", metavar="ADDR",
                   help="address of a running Dask scheduler (tcp://host:port); default: "
                        "dask config daskmeta.scheduler-address, else "
                        "$DASK_SCHEDULER_ADDRESS, else an embedded local cluster")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the embedded local cluster as N worker processes (default: one "
                        "worker in this process with a thread per core, <= 4; at most "
                        f"{_WORKERS_PER_CORE} per core)")



def _add_diagnostics_options(p, diagnostics_help: str) -> None:
    """The "diagnostics" option group of the commands that run Jackknife / FocusCounter on a
    corrected map: ``--diagnostics`` (described by ``diagnostics_help``), ``--diag-threshold``
    and ``--diag-cluster-threshold``."""
    d = p.add_argument_group("diagnostics")
    d.add_argument("--diagnostics", action="append", default=None, metavar="NAME",
                   help=diagnostics_help)
    d.add_argument("--diag-threshold", type=float, default=None,
                   help="threshold of the corrected z map the diagnostics cluster (1.65)")
    d.add_argument("--diag-cluster-threshold", type=int, default=None,
                   help="smallest cluster the diagnostics characterise, in voxels (10)")


def _add_space_option(p):
    p.add_argument("--unknown-space", choices=["error", "warn"], default="error",
                   help="NiMARE JSON, NIMADS and NeuroStore input: a coordinate space that "
                        "is neither MNI nor Talairach (e.g. 'Dog') is refused (error, the "
                        "default), or warned about and read as MNI, untransformed, as NiMARE "
                        "does (warn)")



def _client(args):
    """The Client of an analysis command: ``--scheduler``, ``daskmeta.scheduler-address`` or
    ``$DASK_SCHEDULER_ADDRESS``, else an embedded cluster of ``--workers`` processes, else of
    one worker in this process with a thread per core."""
    from daskmeta.cluster import get_client
    from daskmeta.config import scheduler_address

    if args.workers is None and not scheduler_address(args.scheduler)[0]:
        return get_client(processes=False)
    return get_client(args.scheduler, n_workers=args.workers)



def _describe(client) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    where = ("in this process" if str(info.get("address", "")).startswith("inproc")
             else info.get("address", "?"))
    return f"{where}, {len(workers)} worker(s), {threads} thread(s)"



def _read_input(path, unknown_space: str = "error"):
    """The input: a collection store (a directory with zarr.json), else a Dataset read by
    :func:`daskmeta.io.read` (``unknown_space`` goes to the NiMARE JSON reader)."""
    from daskmeta import _fs
    from daskmeta.io import read

    if _fs.is_remote(path):  # only collection stores live on object storage
        from daskmeta.collection import Collection

        return Collection.open(path)
    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file():
        from daskmeta.collection import Collection

        return Collection.open(p)
    if unknown_space != "error" and p.exists():
        from daskmeta.io._registry import _guess_format

        if _guess_format(p).name in ("nimare-json", "nimads", "neurostore"):
            return read(p, unknown_space=unknown_space)
        raise DaskmetaError(f"--unknown-space {unknown_space} applies to NiMARE JSON, NIMADS "
                            f"and NeuroStore input; {path} is none of them")
    return read(p)



def _bad(option: str, value, allowed: str) -> DaskmetaError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return DaskmetaError(f"{option} must be {allowed}; got {shown}")



def _check_int(value, option: str, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        span = f"from {low:,} to {high:,}" if high is not None else f">= {low:,}"
        raise _bad(option, value, f"an integer {span}")



def _check_number(value, option: str, low: float, high: float, what: str) -> None:
    import math

    if value is not None and not (math.isfinite(value) and low < value <= high):
        raise _bad(option, value, what)



def _check_workers(args) -> None:
    import os

    cores = os.cpu_count() or 1
    _check_int(args.workers, "--workers", 1, max(4, _WORKERS_PER_CORE * cores))



def _check_scheduler(address, option: str) -> None:
    """A scheduler address that distributed can parse: ``scheme://host:port``."""
    if not address:
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address, strict=False)
        if scheme not in _SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not one of {', '.join(_SCHEMES)}")
        host, port = parse_host_port(loc)
        if not host or not 0 < int(port) < 65536:
            raise ValueError("give a host and a port from 1 to 65535")
    except (ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise _bad(option, address, f"a Dask scheduler address such as tcp://host:8786 "
                                    f"({detail})") from None



def _check_dask_options(args) -> None:
    from daskmeta.config import scheduler_address

    _check_workers(args)
    address, source = scheduler_address(args.scheduler)
    _check_scheduler(address, source)



def _check_out(out) -> None:
    p = Path(out)
    if str(out) == "" or (p.exists() and not p.is_dir()):
        raise _bad("--out", str(out), "a folder (created if needed), not a file")



def _report(out, out_dir, t0) -> None:
    for name, table in out["tables"].items():
        _log(f"{len(table)} clusters in {name}")
    _log(f"done in {time.perf_counter() - t0:.1f} s; {len(out['paths'])} files written to "
         f"{Path(out_dir).resolve()}")
    print(Path(out_dir).resolve())



def _one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
