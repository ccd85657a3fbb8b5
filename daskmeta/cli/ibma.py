"""The image-based meta-analysis command: ``ibma``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from daskmeta.cli._common import (
    MAX_N_ITERS,
    _add_cluster_options,
    _bad,
    _check_dask_options,
    _check_int,
    _check_out,
    _client,
    _describe,
    _log,
)
from daskmeta.exceptions import DaskmetaError

#: --method -> (estimator class name, options it takes)
METHODS = {
    "stouffers": ("Stouffers", {"use_sample_size", "two_sided"}),
    "fishers": ("Fishers", {"use_sample_size", "two_sided"}),
    "wls": ("WeightedLeastSquares", {"tau2"}),
    "dersimonian-laird": ("DerSimonianLaird", set()),
    "hedges": ("Hedges", set()),
    "fe-hedges": ("FixedEffectsHedges", {"tau2"}),
    "ssbl": ("SampleSizeBasedLikelihood", {"method"}),
    "vbl": ("VarianceBasedLikelihood", {"method"}),
    "permuted-ols": ("PermutedOLS", {"use_sample_size", "two_sided"}),
}
_FWE = ("none", "bonferroni", "fdr", "montecarlo")


def add_parsers(sub) -> None:
    """The ``ibma`` parser, with its ``handler``."""
    p = sub.add_parser(
        "ibma", help="image-based meta-analysis (NiMARE's IBMA estimators)",
        description="Image-based meta-analysis of z, t, beta/varcope images: reads the images "
                    "into an image stack (resampled to the mask) and fits NiMARE's estimator "
                    "blockwise over voxels on Dask.")
    p.add_argument("input", help="NiMARE JSON or a daskmeta dataset (.zip) whose contrasts "
                                 "reference images, a table (CSV/TSV) of image paths (id, "
                                 "sample_size, z, t, beta, varcope, se, p), or an image stack "
                                 "directory (ImageStack.build)")
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="the estimator")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (every file is written inside it)")
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    p.add_argument("--store", metavar="DIR",
                   help="build the image stack here (kept; a rerun resumes or reuses it); "
                        "default: a temporary folder")
    p.add_argument("--select", metavar="IDS",
                   help="comma-separated experiment ids to analyse (default: all)")
    p.add_argument("--tau2", type=float, default=None,
                   help="wls, fe-hedges: assumed between-study variance (0; >= 0)")
    p.add_argument("--use-sample-size", action="store_true",
                   help="stouffers, fishers, permuted-ols: weight by sample size")
    p.add_argument("--one-sided", action="store_true",
                   help="stouffers, fishers, permuted-ols: one-sided test (positive effects)")
    p.add_argument("--likelihood", choices=["ml", "reml"], default=None,
                   help="ssbl, vbl: maximum or restricted maximum likelihood (ml)")
    p.add_argument("--aggressive-mask", action="store_true",
                   help="analyse only voxels usable in every image (default: each voxel with "
                        "the images usable there, as NiMARE)")
    g = p.add_argument_group("correction")
    g.add_argument("--fwe", choices=list(_FWE), default="none",
                   help="none (default); bonferroni; fdr (Benjamini-Hochberg); montecarlo "
                        "(permuted-ols only: sign-flip max-statistic null)")
    g.add_argument("--n-iters", type=int, default=5000,
                   help=f"Monte Carlo iterations (5000; 1 to {MAX_N_ITERS:,})")
    g.add_argument("--seed", type=int, default=None, help="Monte Carlo seed (0 to 2**63 - 1)")
    p.add_argument("--prefix", default=None,
                   help="prefix of every output file name (letters, digits, '_', '.', '+', "
                        "'=', '-'; no path separators)")
    _add_cluster_options(p)
    p.set_defaults(handler=_run_ibma)


def _check(args) -> None:
    """Every option, before the input is read or a cluster started."""
    from daskmeta.workflows import check_prefix

    _, takes = METHODS[args.method]
    given = {"tau2": args.tau2 is not None, "use_sample_size": args.use_sample_size,
             "two_sided": args.one_sided, "method": args.likelihood is not None}
    flags = {"tau2": "--tau2", "use_sample_size": "--use-sample-size",
             "two_sided": "--one-sided", "method": "--likelihood"}
    for name, was_given in given.items():
        if was_given and name not in takes:
            raise DaskmetaError(f"{flags[name]} does not apply to --method {args.method}")
    if args.tau2 is not None and not (args.tau2 >= 0 and args.tau2 < float("inf")):
        raise _bad("--tau2", args.tau2, "a finite number >= 0")
    if args.fwe == "montecarlo" and args.method != "permuted-ols":
        raise DaskmetaError(f"--fwe montecarlo is offered for --method permuted-ols only (its "
                            f"sign-flip null); use bonferroni or fdr with {args.method}")
    _check_int(args.n_iters, "--n-iters", 1, MAX_N_ITERS)
    _check_int(args.seed, "--seed", 0, 2**63 - 1)
    if args.prefix is not None:
        if args.prefix == "":
            raise _bad("--prefix", "", "a non-empty file-name prefix when given")
        check_prefix(args.prefix, "--prefix")
    if args.select is not None and not [s for s in args.select.split(",") if s.strip()]:
        raise _bad("--select", args.select, "comma-separated experiment ids")
    _check_out(args.out)
    if args.store is not None and Path(args.store).resolve() == Path(args.out).resolve():
        raise DaskmetaError("--store must be another folder than --out")
    _check_dask_options(args)


def _read(path: str):
    """An ImageStack (a stack directory) or a Dataset (image table or daskmeta.io.read),
    with the folder relative image paths are relative to."""
    from daskmeta.imagestack import ImageStack, read_image_table
    from daskmeta.io import read

    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file():
        return ImageStack.open(p), None
    if not p.exists():
        raise DaskmetaError(f"input {path!r} does not exist")
    if p.suffix.lower() in (".csv", ".tsv", ".tab") and p.is_file():
        with open(p, errors="replace") as f:
            head = f.readline()
        cols = {c.strip() for c in head.replace("\t", ",").split(",")}
        if not {"x", "y", "z"} <= cols:
            return read_image_table(p), None
    return read(p), p.parent.resolve()


def _run_ibma(args) -> None:
    from daskmeta import estimators
    from daskmeta.imagestack import ImageStack

    t0 = time.perf_counter()
    _check(args)
    data, base = _read(args.input)
    cls_name, takes = METHODS[args.method]
    params = {}
    if "tau2" in takes and args.tau2 is not None:
        params["tau2"] = args.tau2
    if "use_sample_size" in takes:
        params["use_sample_size"] = bool(args.use_sample_size)
    if "two_sided" in takes:
        params["two_sided"] = not args.one_sided
    if "method" in takes and args.likelihood is not None:
        params["method"] = args.likelihood
    est = getattr(estimators, cls_name)(aggressive_mask=bool(args.aggressive_mask), **params)
    select = None if args.select is None else [s.strip() for s in args.select.split(",")
                                               if s.strip()]
    if isinstance(data, ImageStack) and args.mask is not None:
        from daskmeta.space import resolve_space

        if resolve_space(args.mask) != data.space:
            raise DaskmetaError("--mask differs from the image stack's mask; rebuild the stack "
                                "with that mask or drop --mask")
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    # The command ends with os._exit (no finalizers): a temporary stack is removed here.
    tmp = None
    if not isinstance(data, ImageStack) and args.store is None:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="daskmeta-imagestack-")
        args.store = str(Path(tmp) / "stack.zarr")
    try:
        _fit_and_write(args, data, base, est, select, cls_name, t0)
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _fit_and_write(args, data, base, est, select, cls_name, t0) -> None:
    import numpy as np

    from daskmeta.correct import FDRCorrector, FWECorrector
    from daskmeta.imagestack import ImageStack
    from daskmeta.results import atomic_write, output_path
    from daskmeta.workflows import input_provenance

    if not isinstance(data, ImageStack):
        if select is not None:
            data = data.slice(select)
        _log(f"read {args.input}: {data}")
        data = ImageStack.build(data, store=args.store, mask=args.mask,
                                image_types=list(est._inputs), base_dir=base)
        select = None
        _log(f"image stack: {data}")
    result = est.fit(data, select=select)
    if args.fwe == "bonferroni":
        result = FWECorrector(method="bonferroni").transform(result)
    elif args.fwe == "fdr":
        result = FDRCorrector(method="indep").transform(result)
    elif args.fwe == "montecarlo":
        result = FWECorrector(method="montecarlo", n_iters=args.n_iters,
                              seed=args.seed).transform(result)
    result.attrs.update({**input_provenance(args.input), "command_line": args.command_line})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    paths = list(result.save_maps(out, prefix=prefix))

    def name(s: str) -> str:
        return f"{prefix}_{s}" if prefix else s

    prov = output_path(out, name("provenance.json"))
    result.save_provenance(prov)
    paths.append(prov)
    z = np.asarray(result.get_map("z", "array"), dtype=float)
    summary = {"method": args.method, "estimator": cls_name,
               "n_experiments": int(result.attrs["n_experiments"]),
               "n_voxels_analysed": int(np.isfinite(z).sum()),
               "max_abs_z": float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else None,
               "maps": result.map_names}
    text = json.dumps(summary, indent=1)
    summary_path = output_path(out, name("summary.json"))
    atomic_write(summary_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    paths.append(summary_path)
    _log(f"{cls_name} of {summary['n_experiments']} experiments over "
         f"{summary['n_voxels_analysed']} voxels; max |z| {summary['max_abs_z']}")
    _log(f"done in {time.perf_counter() - t0:.1f} s; {len(paths)} files written to "
         f"{out.resolve()}")
    print(out.resolve())
