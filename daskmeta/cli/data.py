"""The data commands: ``fetch``, ``ingest`` (build a collection store) and ``verify``."""

from __future__ import annotations

import time
from pathlib import Path

from daskmeta.cli._common import (
    _add_space_option,
    _bad,
    _check_dask_options,
    _check_int,
    _check_number,
    _log,
    _read_input,
)
from daskmeta.exceptions import DaskmetaError


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    f = sub.add_parser("fetch", help="download Neurosynth, NeuroQuery, a NeuroStore release or "
                                     "a NeuroVault collection",
                       description="Download the upstream release files into a cache folder, "
                                   "verify their sha256 checksums, and resume partial "
                                   "downloads. Prints the folder, ready for `daskmeta ale "
                                   "FOLDER ...` or daskmeta.io.read. `fetch neurostore` "
                                   "downloads a NeuroStore studyset release (as NiMARE's "
                                   "fetch_neurostore) and extracts it safely; `fetch "
                                   "neurovault COLLECTION` downloads a collection's group "
                                   "maps and prints their folder.")
    f.add_argument("database", choices=["neurosynth", "neuroquery", "neurostore", "neurovault"])
    f.add_argument("collection", nargs="?", help="neurovault: the collection number")
    f.add_argument("--data-dir", metavar="DIR",
                   help="cache folder (default: $DASKMETA_DATA, else ~/.cache/daskmeta)")
    f.add_argument("--url-base", metavar="URL", help="mirror to download from ({URL}/{file})")
    f.add_argument("--version", dest="release", metavar="VERSION", default=None,
                   help="neurostore: latest (default), nightly or a release such as 2026-09")
    f.add_argument("--url", metavar="URL",
                   help="neurostore: the release index (default: NeuroStore's); neurovault: "
                        "the site (default: https://neurovault.org)")
    f.add_argument("--overwrite", action="store_true", help="download again even if present")
    f.set_defaults(handler=_run_fetch)
    _add_ingest_parser(sub).set_defaults(handler=_run_ingest)
    _add_verify_parser(sub).set_defaults(handler=_run_verify)


def _check_fetch(args) -> None:
    from daskmeta.io._fetch import check_url
    from daskmeta.io._neurostore_fetch import check_version

    db = args.database
    if args.collection is not None and db != "neurovault":
        raise DaskmetaError(f"a collection number applies to `fetch neurovault`, not {db}")
    if db == "neurovault" and args.collection is None:
        raise DaskmetaError("fetch neurovault needs the COLLECTION number")
    if args.url_base is not None and db not in ("neurosynth", "neuroquery"):
        raise DaskmetaError(f"--url-base applies to neurosynth and neuroquery, not {db} (use "
                            "--url)")
    if args.release is not None and db != "neurostore":
        raise DaskmetaError(f"--version applies to `fetch neurostore`, not {db}")
    if args.url is not None:
        if db not in ("neurostore", "neurovault"):
            raise DaskmetaError(f"--url applies to neurostore and neurovault, not {db} (use "
                                "--url-base)")
        check_url(args.url, "--url")
    if args.release is not None:
        check_version(args.release)
    if db == "neurovault" and not str(args.collection).isdigit():
        raise _bad("COLLECTION", args.collection, "a NeuroVault collection number")


def _run_fetch(args) -> None:
    from daskmeta.io import fetch, fetch_neurostore, read_neurovault

    _check_fetch(args)
    if args.database == "neurostore":
        path = fetch_neurostore(args.release or "latest", data_dir=args.data_dir, url=args.url,
                                overwrite=args.overwrite, progress=True)
    elif args.database == "neurovault":
        ds = read_neurovault(args.collection, data_dir=args.data_dir, url=args.url,
                             overwrite=args.overwrite, progress=True)
        from daskmeta.io.download import default_data_dir

        _log(f"NeuroVault collection {args.collection}: {ds.n_experiments} group maps")
        parent = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
        path = (parent / "neurovault" / f"collection-{int(args.collection)}").resolve()
    else:
        path = fetch(args.database, data_dir=args.data_dir, url_base=args.url_base,
                     overwrite=args.overwrite, progress=True)
    print(path)



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
    p.add_argument("source", help="Sleuth text, NiMARE JSON, NIMADS JSON, foci table (CSV/TSV), "
                                  "a daskmeta dataset (.zip), a Neurosynth/NeuroQuery "
                                  "directory or a NeuroStore release folder (studyset.json "
                                  "and parquet tables; its annotations become labels)")
    p.add_argument("--kernel", required=True, choices=["mkda", "kda", "ale"],
                   help="MKDA (binary spheres), KDA (sphere counts) or ALE (Gaussians)")
    p.add_argument("--store", required=True, metavar="PATH",
                   help="the Zarr store (a directory, created), e.g. neurosynth-mkda.zarr, or "
                        "an object-store URL such as s3://bucket/neurosynth-mkda.zarr (see "
                        "the daskmeta.s3 settings: `daskmeta config`)")
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
                        "must see PATH); default: dask config daskmeta.scheduler-address, "
                        "else $DASK_SCHEDULER_ADDRESS, else this process")
    g.add_argument("--workers", type=int, metavar="N",
                   help="build on an embedded local cluster of N worker processes (default: "
                        "dask's threaded scheduler in this process)")
    return p



def _check_ingest_numbers(args) -> None:
    from daskmeta.workflows import MAX_KERNEL_MM

    mm = f"a number of mm in (0, {MAX_KERNEL_MM:g}]"
    _check_number(args.fwhm, "--fwhm", 0.0, MAX_KERNEL_MM, mm)
    _check_number(args.radius, "--radius", 0.0, MAX_KERNEL_MM, mm)
    _check_number(args.sample_size, "--sample-size", 0.0, float("inf"), "a positive number")
    if args.mask_margin is not None and not args.mask_margin >= 0:  # inf keeps every focus
        raise _bad("--mask-margin", args.mask_margin, "a number of mm >= 0 (or inf)")
    _check_int(args.rows_per_shard, "--rows-per-shard", 1, 1 << 20)



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
    if path.is_dir() and (path / "studyset.json").is_file():  # a NeuroStore release
        return sorted(p for p in path.iterdir() if p.is_file()
                      and (p.name == "studyset.json" or p.suffix == ".parquet"))
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
                            "(Sleuth, NiMARE JSON, NIMADS, a foci table, Neurosynth/NeuroQuery, "
                            "a NeuroStore release)")
    _log(f"read {args.source}: {dataset}")
    if args.workers or config.scheduler_address(args.scheduler)[0]:
        from daskmeta.cluster import get_client

        client = get_client(args.scheduler, n_workers=args.workers)
        _log(f"Dask: {client.scheduler_info().get('address', '?')} with "
             f"{len(client.scheduler_info().get('workers', {}))} workers")
    else:
        import dask

        configured = dask.config.get("scheduler", None)
        where = "threaded scheduler" if configured is None else f"scheduler {configured!r}"
        _log(f"Dask: {where} in this process ({os.cpu_count()} cores)")
    from daskmeta import _fs

    store = _fs.as_location(args.store)
    _log(f"building {store} with {kernel!r}")
    collection = Collection.build(
        dataset, kernel, store, mask=args.mask,
        mask_margin=DEFAULT_MASK_MARGIN if args.mask_margin is None else args.mask_margin,
        rows_per_shard=rows_per_shard,
        sources=_ingest_sources(args.source), progress=True, overwrite=args.overwrite)
    size = sum(_fs.sizes(store).values())
    attrs = collection.attrs
    _log(f"{collection.n_experiments} experiments ({attrs['n_foci']} foci) x "
         f"{collection.space.n_voxels} voxels, {attrs['dtype']}, "
         f"{attrs.get('rows_per_shard') or attrs.get('rows_per_chunk')} experiments per "
         f"shard; {size / 2**20:.1f} MiB on disk; done in "
         f"{time.perf_counter() - t0:.1f} s")
    print(store.resolve())  # the absolute path, or the URL



def _add_verify_parser(sub):
    help_text = "check a collection store against what its build wrote"
    p = sub.add_parser(
        "verify", help=help_text,
        description="Read the whole collection store STORE and check every shard and file "
                    "against the manifest its build wrote (sizes and checksums), its "
                    "attributes, its Dataset file's fingerprint, its mask and completeness. "
                    "Prints one line per problem (exit status 2), or that the store is sound "
                    "(exit status 0).")
    p.add_argument("store", metavar="STORE",
                   help="the collection store (a directory, or an s3:// URL)")
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
