"""The ``daskmeta`` command line.

Errors about the input print as one line (``daskmeta: error: ...``) with exit status 2; a
traceback appears only with ``--debug``. Warnings print as one line too (``daskmeta: warning:
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
                        "worker in this process with a thread per core, <= 4)")


def _add_cbma_parser(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("input", help="Sleuth text, NiMARE JSON, foci table (CSV/TSV), a daskmeta "
                                 "dataset (.zip) or a Neurosynth/NeuroQuery directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    if name == "ale":
        p.add_argument("--fwhm", type=float, help="fixed kernel FWHM in mm")
        p.add_argument("--sample-size", type=float,
                       help="fixed sample size for every experiment's kernel")
    else:
        p.add_argument("--radius", type=float, default=None, help="sphere radius in mm (10)")
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
    g.add_argument("--n-iters", type=int, default=10000, help="Monte Carlo iterations (10000)")
    g.add_argument("--voxel-thresh", type=float, default=0.001,
                   help="cluster-forming p threshold (0.001)")
    g.add_argument("--seed", type=int, default=None, help="Monte Carlo seed")
    p.add_argument("--prefix", default="", help="prefix of output file names")
    p.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    _add_cluster_options(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


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

    if args.workers is not None and args.workers < 1:
        raise DaskmetaError(f"--workers must be a positive integer; got {args.workers}")
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
    from daskmeta.io import read
    from daskmeta.workflows import run_cbma

    t0 = time.perf_counter()
    label_threshold = _label_threshold(args)
    dataset = read(args.input)
    _log(f"read {args.input}: {dataset}")
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = run_cbma(
        args.command, dataset, args.out, mask=args.mask,
        fwhm=getattr(args, "fwhm", None), sample_size=getattr(args, "sample_size", None),
        r=getattr(args, "radius", None), weighting=getattr(args, "weighting", None),
        fwe=args.fwe, n_iters=args.n_iters, voxel_thresh=args.voxel_thresh, seed=args.seed,
        prefix=args.prefix, select=args.select, label_threshold=label_threshold,
        figures=not args.no_figures, log=_log,
    )
    _report(out, args.out, t0)


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


def _ingest_sources(source) -> list:
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("data-"))
    return [path]


def _run_ingest(args) -> None:
    import os

    from daskmeta import config
    from daskmeta.collection import Collection
    from daskmeta.io import read
    from daskmeta.kernels import DEFAULT_MASK_MARGIN

    t0 = time.perf_counter()
    kernel = _ingest_kernel(args)
    if args.rows_per_shard is not None and args.rows_per_shard < 1:
        raise DaskmetaError(f"--rows-per-shard must be a positive integer; got "
                            f"{args.rows_per_shard}")
    if args.workers is not None and args.workers < 1:
        raise DaskmetaError(f"--workers must be a positive integer; got {args.workers}")
    rows_per_shard = args.rows_per_shard or config.get_positive_int("collection.rows-per-shard")
    dataset = read(args.source)
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
    from daskmeta.space import resolve_space
    from daskmeta.workflows import run_cbma

    t0 = time.perf_counter()
    space = resolve_space(args.mask)
    sim = simulate.coordinates(n_experiments=args.n_experiments, seed=args.seed, space=space)
    _log(f"simulated {sim.dataset} around {len(sim.true_sites)} true sites (seed {args.seed})")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim.dataset.save(out_dir / "simulated_dataset.zip")
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = run_cbma("ale", sim.dataset, out_dir, mask=space, fwe="montecarlo",
                   n_iters=args.n_iters, seed=args.seed, log=_log)
    import pandas as pd

    sites = pd.DataFrame(sim.true_sites, columns=["x", "y", "z"])
    sites.to_csv(out_dir / "true_sites.tsv", sep="\t", index=False)
    _log("true sites: " + "; ".join(f"({x:g}, {y:g}, {z:g})" for x, y, z in sim.true_sites))
    _report(out, out_dir, t0)


def main(argv=None) -> int:
    """Entry point of the ``daskmeta`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
        else:
            _run_cbma(args)
    except DaskmetaError as exc:
        if args.debug:
            raise
        print(f"daskmeta: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, unwritable output folder, ...
        if args.debug:
            raise
        print(f"daskmeta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daskmeta: interrupted", file=sys.stderr)
        return 130
    finally:
        from daskmeta.cluster import close_client

        try:
            close_client()  # the clients and local clusters this command started
        finally:
            warnings.formatwarning = formatwarning
    return 0


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
