"""The ``daskmeta`` command line.

Errors about the input or the options print as one line (``daskmeta: error: ...``) with exit
status 2, before any cluster starts or any file is written when an option is at fault;
unexpected errors print as one line too (exit status 1). A traceback appears only with
``--debug``. Warnings print as one line too (``daskmeta: warning:
...``, with the category for warnings other than :class:`~daskmeta.DaskmetaWarning`); with
``--debug``, in Python's format (file and line).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from daskmeta._version import __version__
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning

__all__ = ["main", "run"]


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
                        "$DASK_SCHEDULER_ADDRESS, else an embedded local cluster")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the embedded local cluster as N worker processes (default: one "
                        "worker in this process with a thread per core, <= 4; at most "
                        f"{_WORKERS_PER_CORE} per core)")


def _add_space_option(p):
    p.add_argument("--unknown-space", choices=["error", "warn"], default="error",
                   help="NiMARE JSON input: a coordinate space that is neither MNI nor "
                        "Talairach (e.g. 'Dog') is refused (error, the default), or warned "
                        "about and read as MNI, untransformed, as NiMARE does (warn)")


def _add_cbma_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("input", help="Sleuth text, NiMARE JSON, foci table (CSV/TSV), a daskmeta "
                                 "dataset (.zip), a Neurosynth/NeuroQuery directory, or a "
                                 "collection store (daskmeta ingest) of this method's kernel")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (every file is written inside it)")
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    if name == "ale":
        p.add_argument("--fwhm", type=float, help="fixed kernel FWHM in mm (0 < F <= 100)")
        p.add_argument("--sample-size", type=float,
                       help="fixed sample size for every experiment's kernel")
    else:
        p.add_argument("--radius", type=float, default=None,
                       help="sphere radius in mm (10; 0 < R <= 100)")
    if name == "mkda":
        p.add_argument("--weighting", choices=["sample_size"], default=None,
                       help="weight experiments by sqrt(sample size)")
    p.add_argument("--select", metavar="EXPR",
                   help="label expression selecting experiments, e.g. 'LDA50__32_pain & ~x'")
    p.add_argument("--label-threshold", type=float, default=None,
                   help="label weight threshold of --select (0.001)")
    # The old name of --label-threshold (it read as a statistic threshold): hidden, warned.
    p.add_argument("--threshold", type=float, default=None, dest="deprecated_threshold",
                   help=argparse.SUPPRESS)
    g = p.add_argument_group("correction")
    g.add_argument("--fwe", choices=["montecarlo", "bonferroni", "none"], default="montecarlo",
                   help="family-wise error correction (default: montecarlo)")
    g.add_argument("--n-iters", type=int, default=10000,
                   help=f"Monte Carlo iterations (10000; 1 to {MAX_N_ITERS:,})")
    g.add_argument("--voxel-thresh", type=float, default=0.001,
                   help="cluster-forming p threshold (0.001; 0 < p < 1)")
    g.add_argument("--seed", type=int, default=None, help="Monte Carlo seed (0 to 2**63 - 1)")
    p.add_argument("--prefix", default=None,
                   help="prefix of every output file name (letters, digits, '_', '.', '+', "
                        "'=', '-'; no path separators)")
    p.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    _add_space_option(p)
    _add_cluster_options(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="daskmeta",
        description="Neuroimaging meta-analysis at whole-database scale, on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"daskmeta {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_cbma_parser(sub, "ale", "ALE meta-analysis (activation likelihood estimation)")
    _add_cbma_parser(sub, "mkda", "MKDA density meta-analysis")
    _add_cbma_parser(sub, "kda", "KDA meta-analysis")
    d = sub.add_parser("demo", help="ALE with Monte Carlo FWE on simulated data",
                       description="Simulate a dataset with known true sites (seeded), run an "
                                   "ALE meta-analysis with Monte Carlo FWE correction on a "
                                   "local Dask cluster, and write maps, a cluster table and "
                                   "figures.")
    d.add_argument("--out", default="daskmeta-demo", metavar="DIR", help="output folder")
    d.add_argument("--n-experiments", type=int, default=30)
    d.add_argument("--n-iters", type=int, default=2000, help="Monte Carlo iterations (2000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    _add_cluster_options(d)
    f = sub.add_parser("fetch", help="download the Neurosynth or NeuroQuery release files",
                       description="Download the upstream release files into a cache folder, "
                                   "verify their sha256 checksums, and resume partial "
                                   "downloads. Prints the folder, ready for `daskmeta ale "
                                   "FOLDER ...` or daskmeta.io.read.")
    f.add_argument("database", choices=["neurosynth", "neuroquery"])
    f.add_argument("--data-dir", metavar="DIR",
                   help="cache folder (default: $DASKMETA_DATA, else ~/.cache/daskmeta)")
    f.add_argument("--url-base", metavar="URL", help="mirror to download from ({URL}/{file})")
    f.add_argument("--overwrite", action="store_true", help="download again even if present")
    _add_ingest_parser(sub)
    _add_verify_parser(sub)
    return parser


def _add_verify_parser(sub):
    help_text = "check a collection store against what its build wrote"
    p = sub.add_parser(
        "verify", help=help_text,
        description="Read the whole collection store STORE and check every shard and file "
                    "against the manifest its build wrote (sizes and checksums), its "
                    "attributes, its Dataset file's fingerprint, its mask and completeness. "
                    "Prints one line per problem (exit status 2), or that the store is sound "
                    "(exit status 0).")
    p.add_argument("store", metavar="STORE", help="the collection store (a directory)")
    return p


def _run_verify(args) -> None:
    from daskmeta.collection import verify

    t0 = time.perf_counter()
    problems = verify(args.store)
    for problem in problems:
        print(" ".join(problem.split()))  # one line each
    if problems:
        raise DaskmetaError(f"{args.store}: {len(problems)} problem"
                            f"{'s' if len(problems) > 1 else ''} found")
    _log(f"checked in {time.perf_counter() - t0:.1f} s")
    print(f"{Path(args.store)}: sound")


def _add_ingest_parser(sub):
    help_text = "build a collection: a dataset's MA maps under one kernel, in a Zarr store"
    p = sub.add_parser(
        "ingest", help=help_text,
        description="Compute the modeled-activation map of every experiment of SOURCE under "
                    "one kernel and write them, chunk by chunk, into a Zarr store that "
                    "estimators fit from (ALE().fit(Collection.open(STORE))) and that "
                    "xarray.open_zarr opens. An interrupted ingest resumes where it stopped "
                    "when run again with the same arguments; a store built with another "
                    "kernel, mask or input is refused unless --overwrite.")
    p.add_argument("source", help="Sleuth text, NiMARE JSON, foci table (CSV/TSV), a daskmeta "
                                  "dataset (.zip) or a Neurosynth/NeuroQuery directory")
    p.add_argument("--kernel", required=True, choices=["mkda", "kda", "ale"],
                   help="MKDA (binary spheres), KDA (sphere counts) or ALE (Gaussians)")
    p.add_argument("--store", required=True, metavar="PATH",
                   help="the Zarr store (a directory, created), e.g. neurosynth-mkda.zarr")
    p.add_argument("--radius", type=float, default=None,
                   help="sphere radius in mm for mkda/kda (default 10)")
    p.add_argument("--sample-size", type=float, default=None,
                   help="ale: a fixed sample size for every experiment's kernel (needed when "
                        "the input has no sample sizes, e.g. Neurosynth)")
    p.add_argument("--fwhm", type=float, default=None, help="ale: a fixed kernel FWHM in mm")
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    p.add_argument("--mask-margin", type=float, default=None, metavar="MM",
                   help="drop foci more than MM mm outside the mask (default 10)")
    p.add_argument("--rows-per-shard", type=int, default=None, metavar="N",
                   help="experiments per shard, the unit one task writes (default: dask config "
                        "daskmeta.collection.rows-per-shard, 64); reads fetch single rows "
                        "whatever it is")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing store at PATH and build it again")
    _add_space_option(p)
    g = p.add_argument_group("Dask")
    g.add_argument("--scheduler", metavar="ADDR",
                   help="address of a running Dask scheduler (tcp://host:port; its workers "
                        "must see PATH); default: $DASK_SCHEDULER_ADDRESS, else this process")
    g.add_argument("--workers", type=int, metavar="N",
                   help="build on an embedded local cluster of N worker processes (default: "
                        "dask's threaded scheduler in this process)")
    return p


def _run_fetch(args) -> None:
    from daskmeta.io import fetch

    path = fetch(args.database, data_dir=args.data_dir, url_base=args.url_base,
                 overwrite=args.overwrite, progress=True)
    print(path)


def _client(args):
    """The Client of an analysis command: ``--scheduler`` or ``$DASK_SCHEDULER_ADDRESS``, else
    an embedded cluster of ``--workers`` processes, else of one worker in this process with a
    thread per core."""
    import os

    from daskmeta.cluster import get_client

    if args.workers is None and not (args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")):
        return get_client(processes=False)
    return get_client(args.scheduler, n_workers=args.workers)


def _describe(client) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    where = ("in this process" if str(info.get("address", "")).startswith("inproc")
             else info.get("address", "?"))
    return f"{where}, {len(workers)} worker(s), {threads} thread(s)"


def _run_cbma(args) -> None:
    from daskmeta.workflows import input_provenance, prepare_cbma

    t0 = time.perf_counter()
    label_threshold = _label_threshold(args)
    _check_cbma_options(args, label_threshold)
    data = _read_input(args.input, args.unknown_space)
    _log(f"read {args.input}: {data}")
    # Everything is checked (selection, kernel against a store, the foci the mask keeps,
    # output names) before the cluster starts or a file is written.
    job = prepare_cbma(
        args.command, data, args.out, mask=args.mask,
        fwhm=getattr(args, "fwhm", None), sample_size=getattr(args, "sample_size", None),
        r=getattr(args, "radius", None), weighting=getattr(args, "weighting", None),
        fwe=args.fwe, n_iters=args.n_iters, voxel_thresh=args.voxel_thresh, seed=args.seed,
        prefix=args.prefix or "", select=args.select, label_threshold=label_threshold,
        figures=not args.no_figures,
        provenance={**input_provenance(args.input), "command_line": args.command_line},
    )
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = job.run(log=_log)
    _report(out, args.out, t0)


def _read_input(path, unknown_space: str = "error"):
    """The input: a collection store (a directory with zarr.json), else a Dataset read by
    :func:`daskmeta.io.read` (``unknown_space`` goes to the NiMARE JSON reader)."""
    from daskmeta.io import read

    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file():
        from daskmeta.collection import Collection

        return Collection.open(p)
    if unknown_space != "error" and p.exists():
        from daskmeta.io._registry import _guess_format

        if _guess_format(p).name == "nimare-json":
            return read(p, unknown_space=unknown_space)
        raise DaskmetaError(f"--unknown-space {unknown_space} applies to NiMARE JSON input; "
                            f"{path} is not one")
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
    import os

    _check_workers(args)
    _check_scheduler(args.scheduler, "--scheduler")
    if not args.scheduler:
        _check_scheduler(os.environ.get("DASK_SCHEDULER_ADDRESS"), "DASK_SCHEDULER_ADDRESS")


def _check_out(out) -> None:
    p = Path(out)
    if str(out) == "" or (p.exists() and not p.is_dir()):
        raise _bad("--out", str(out), "a folder (created if needed), not a file")


def _check_cbma_options(args, label_threshold: float) -> None:
    """Every option of ale/mkda/kda, before any input is read or cluster started: one
    line naming the option, the value and what is allowed."""
    from daskmeta.workflows import MAX_KERNEL_MM, check_prefix

    _check_int(args.n_iters, "--n-iters", 1, MAX_N_ITERS)
    _check_int(args.seed, "--seed", 0, 2**63 - 1)
    if not 0 < args.voxel_thresh < 1:  # NaN fails too
        raise _bad("--voxel-thresh", args.voxel_thresh, "a p-value strictly between 0 and 1")
    _check_number(label_threshold, "--label-threshold", float("-inf"), float("inf"),
                  "a finite number")
    mm = f"a number of mm in (0, {MAX_KERNEL_MM:g}]"
    _check_number(getattr(args, "fwhm", None), "--fwhm", 0.0, MAX_KERNEL_MM, mm)
    _check_number(getattr(args, "radius", None), "--radius", 0.0, MAX_KERNEL_MM, mm)
    _check_number(getattr(args, "sample_size", None), "--sample-size", 0.0, float("inf"),
                  "a positive number")
    if (getattr(args, "fwhm", None) is not None
            and getattr(args, "sample_size", None) is not None):
        raise DaskmetaError("give --fwhm or --sample-size, not both")
    if args.prefix is not None:
        if args.prefix == "":
            raise _bad("--prefix", "", "a non-empty file-name prefix when given")
        check_prefix(args.prefix, "--prefix")
    _check_out(args.out)
    _check_dask_options(args)


def _label_threshold(args) -> float:
    """--label-threshold, or its deprecated name --threshold (with a one-line warning)."""
    if args.deprecated_threshold is None:
        return 0.001 if args.label_threshold is None else args.label_threshold
    if args.label_threshold is not None:
        raise DaskmetaError("give --label-threshold only (--threshold is its deprecated name)")
    print("daskmeta: warning: --threshold is deprecated; use --label-threshold (the label "
          "weight threshold of --select)", file=sys.stderr, flush=True)
    return args.deprecated_threshold


def _ingest_kernel(args):
    from daskmeta.kernels import ALEKernel, KDAKernel, MKDAKernel

    def _num(x):  # 10.0 -> 10, so the provenance reads as the Python API writes it
        return int(x) if x is not None and float(x).is_integer() else x

    if args.kernel == "ale":
        if args.radius is not None:
            raise DaskmetaError("--radius applies to --kernel mkda or kda, not ale (use "
                                "--fwhm or --sample-size)")
        return ALEKernel(fwhm=args.fwhm, sample_size=_num(args.sample_size))
    if args.fwhm is not None or args.sample_size is not None:
        raise DaskmetaError(f"--fwhm and --sample-size apply to --kernel ale, not "
                            f"{args.kernel} (use --radius)")
    cls = MKDAKernel if args.kernel == "mkda" else KDAKernel
    return cls() if args.radius is None else cls(r=_num(args.radius))


def _check_ingest_numbers(args) -> None:
    from daskmeta.workflows import MAX_KERNEL_MM

    mm = f"a number of mm in (0, {MAX_KERNEL_MM:g}]"
    _check_number(args.fwhm, "--fwhm", 0.0, MAX_KERNEL_MM, mm)
    _check_number(args.radius, "--radius", 0.0, MAX_KERNEL_MM, mm)
    _check_number(args.sample_size, "--sample-size", 0.0, float("inf"), "a positive number")
    if args.mask_margin is not None and not args.mask_margin >= 0:  # inf keeps every focus
        raise _bad("--mask-margin", args.mask_margin, "a number of mm >= 0 (or inf)")
    _check_int(args.rows_per_shard, "--rows-per-shard", 1, 1 << 20)


def _ingest_sources(source) -> list:
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("data-"))
    return [path]


def _run_ingest(args) -> None:
    import os

    from daskmeta import config
    from daskmeta.collection import Collection
    from daskmeta.dataset import Dataset
    from daskmeta.kernels import DEFAULT_MASK_MARGIN

    t0 = time.perf_counter()
    kernel = _ingest_kernel(args)
    if args.rows_per_shard is not None and args.rows_per_shard < 1:
        raise DaskmetaError(f"--rows-per-shard must be a positive integer; got "
                            f"{args.rows_per_shard}")
    _check_ingest_numbers(args)
    _check_dask_options(args)
    rows_per_shard = args.rows_per_shard or config.get_positive_int("collection.rows-per-shard")
    dataset = _read_input(args.source, args.unknown_space)
    if not isinstance(dataset, Dataset):
        raise DaskmetaError(f"{args.source} is a collection store; ingest reads a dataset "
                            "(Sleuth, NiMARE JSON, a foci table, Neurosynth/NeuroQuery)")
    _log(f"read {args.source}: {dataset}")
    if args.scheduler or args.workers or os.environ.get("DASK_SCHEDULER_ADDRESS"):
        from daskmeta.cluster import get_client

        client = get_client(args.scheduler, n_workers=args.workers)
        _log(f"Dask: {client.scheduler_info().get('address', '?')} with "
             f"{len(client.scheduler_info().get('workers', {}))} workers")
    else:
        import dask

        configured = dask.config.get("scheduler", None)
        where = "threaded scheduler" if configured is None else f"scheduler {configured!r}"
        _log(f"Dask: {where} in this process ({os.cpu_count()} cores)")
    store = Path(args.store)
    _log(f"building {store} with {kernel!r}")
    collection = Collection.build(
        dataset, kernel, store, mask=args.mask,
        mask_margin=DEFAULT_MASK_MARGIN if args.mask_margin is None else args.mask_margin,
        rows_per_shard=rows_per_shard,
        sources=_ingest_sources(args.source), progress=True, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    attrs = collection.attrs
    _log(f"{collection.n_experiments} experiments ({attrs['n_foci']} foci) x "
         f"{collection.space.n_voxels} voxels, {attrs['dtype']}, "
         f"{attrs.get('rows_per_shard') or attrs.get('rows_per_chunk')} experiments per "
         f"shard; {size / 2**20:.1f} MiB on disk; done in "
         f"{time.perf_counter() - t0:.1f} s")
    print(store.resolve())


def _report(out, out_dir, t0) -> None:
    for name, table in out["tables"].items():
        _log(f"{len(table)} clusters in {name}")
    _log(f"done in {time.perf_counter() - t0:.1f} s; {len(out['paths'])} files written to "
         f"{Path(out_dir).resolve()}")
    print(Path(out_dir).resolve())


def _run_demo(args) -> None:
    from daskmeta import simulate
    from daskmeta.results import atomic_write
    from daskmeta.space import resolve_space
    from daskmeta.workflows import run_cbma

    t0 = time.perf_counter()
    _check_int(args.n_experiments, "--n-experiments", 1, 10_000)
    _check_int(args.n_iters, "--n-iters", 1, MAX_N_ITERS)
    _check_int(args.seed, "--seed", 0, 2**63 - 1)
    _check_out(args.out)
    _check_dask_options(args)
    space = resolve_space(args.mask)
    sim = simulate.coordinates(n_experiments=args.n_experiments, seed=args.seed, space=space)
    _log(f"simulated {sim.dataset} around {len(sim.true_sites)} true sites (seed {args.seed})")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "simulated_dataset.zip", sim.dataset.save)
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = run_cbma("ale", sim.dataset, out_dir, mask=space, fwe="montecarlo",
                   n_iters=args.n_iters, seed=args.seed, log=_log,
                   provenance={"command_line": args.command_line})
    import pandas as pd

    sites = pd.DataFrame(sim.true_sites, columns=["x", "y", "z"])
    atomic_write(out_dir / "true_sites.tsv",
                 lambda tmp: sites.to_csv(tmp, sep="\t", index=False))
    _log("true sites: " + "; ".join(f"({x:g}, {y:g}, {z:g})" for x, y, z in sim.true_sites))
    _report(out, out_dir, t0)


def main(argv=None) -> int:
    """Entry point of the ``daskmeta`` command."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["daskmeta", *argv])
    # Warnings print (on stderr) as one line, for this run only; callers recording warnings
    # (warnings.catch_warnings(record=True), pytest.warns) still receive them.
    formatwarning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _format_warning
    try:
        if args.command == "demo":
            _run_demo(args)
        elif args.command == "fetch":
            _run_fetch(args)
        elif args.command == "ingest":
            _run_ingest(args)
        elif args.command == "verify":
            _run_verify(args)
        else:
            _run_cbma(args)
    except (DaskmetaError, OSError) as exc:  # the input, the options, unwritable output, ...
        if args.debug:
            raise
        print(f"daskmeta: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskmeta: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, or a case no check foresaw: still one line
        if args.debug:
            raise
        print(f"daskmeta: error: unexpected {type(exc).__name__}: {_one_line(exc)} (run "
              "with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        from daskmeta.cluster import close_client

        try:
            close_client()  # the clients and local clusters this command started
        finally:
            warnings.formatwarning = formatwarning
    return 0


def _one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run() -> None:
    """Entry point of the ``daskmeta`` command and ``python -m daskmeta``: :func:`main`, then
    exit without tearing the interpreter down.

    Python's own shutdown frees every module and object one by one, about a second after an
    analysis (numba, pandas, scikit-learn and matplotlib through nilearn's figures) that the
    command's user would wait for. Everything the command writes is closed, and the clients
    and clusters it started are closed, by the time :func:`main` returns; the output streams
    and logging handlers are flushed here.
    """
    code = main()
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
