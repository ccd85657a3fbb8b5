"""Commands over results, base rates, seeds and balanced groups: ``conjunction``, ``scale``,
``macm``, ``balanced-subtraction``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from daskmeta.cli._common import (
    MAX_N_ITERS,
    _add_cluster_options,
    _add_space_option,
    _bad,
    _check_out,
    _client,
    _describe,
    _log,
    _read_input,
    _report,
)
from daskmeta.exceptions import DaskmetaError


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    c = sub.add_parser(
        "conjunction", help="minimum-statistic conjunction of result maps",
        description="The voxel-wise minimum (maximum for p maps) of one map of two or more "
                    "result folders written by the analysis commands (Nichols et al., 2005). "
                    "The maps must share a mask: their grids, and the mask hashes in the "
                    "folders' provenance, are checked.")
    c.add_argument("inputs", nargs="+", metavar="DIR",
                   help="result folders (or NIfTI files of the map)")
    c.add_argument("--map", default="z", metavar="NAME",
                   help="the map to combine (default z), e.g. "
                        "z_desc-size_level-cluster_corr-FWE_method-montecarlo")
    c.add_argument("--threshold", type=float, default=None,
                   help="also zero the conjunction where it does not pass this value")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--prefix", default=None, help="prefix of every output file name")
    c.set_defaults(handler=_run_conjunction)

    s = sub.add_parser(
        "scale", help="SCALE: ALE against the base rate of a database's foci",
        description="Specific coactivation likelihood estimation (Langner et al., 2014; "
                    "NiMARE's SCALE): the ALE map of INPUT, each voxel's p-value the share of "
                    "null ALE maps, foci drawn from the base rate, that reach it there.")
    s.add_argument("input", help="the experiments (any input of the ale command, or an ALE "
                                 "collection store)")
    s.add_argument("--base-rate", required=True, metavar="SOURCE",
                   help="the base rate: every focus of SOURCE (a Neurosynth/NeuroQuery "
                        "directory, a collection store, or any readable input)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--n-iters", type=int, default=5000,
                   help=f"null iterations (5000, NiMARE's; 1 to {MAX_N_ITERS:,})")
    s.add_argument("--seed", type=int, default=None, help="seed of the null (0 to 2**63 - 1)")
    s.add_argument("--fwe", choices=["none", "montecarlo"], default="none",
                   help="voxel-level Monte Carlo FWE against the same base-rate null, with "
                        "--n-iters iterations (default none)")
    _add_fit_options(s, kernels=("ale",))
    s.set_defaults(handler=_run_scale)

    m = sub.add_parser(
        "macm", help="meta-analytic coactivation modelling from a seed",
        description="The experiments of SOURCE with a focus inside the seed (--roi or "
                    "--sphere) are meta-analysed and corrected; prints how many the seed "
                    "selected. A focus is in an ROI if its nearest voxel of the ROI image "
                    "is non-zero (the ROI is not resampled).")
    m.add_argument("input", metavar="SOURCE",
                   help="the database: a Neurosynth/NeuroQuery directory, a collection store, "
                        "or any input of the analysis commands")
    seed = m.add_mutually_exclusive_group(required=True)
    seed.add_argument("--roi", metavar="IMG", help="seed ROI image (non-zero voxels)")
    seed.add_argument("--sphere", metavar="X,Y,Z,R",
                      help="seed sphere: centre in mm and radius in mm, e.g. 24,-2,-20,6")
    m.add_argument("--estimator", choices=["ale", "mkda", "kda"], default="ale",
                   help="meta-analysis of the selection (ale)")
    m.add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = m.add_argument_group("correction")
    g.add_argument("--fwe", choices=["montecarlo", "bonferroni", "none"], default="montecarlo",
                   help="family-wise error correction (default: montecarlo)")
    g.add_argument("--n-iters", type=int, default=10000,
                   help=f"Monte Carlo iterations (10000; 1 to {MAX_N_ITERS:,})")
    g.add_argument("--voxel-thresh", type=float, default=0.001,
                   help="cluster-forming p threshold (0.001; 0 < p < 1)")
    g.add_argument("--seed", type=int, default=None, help="Monte Carlo seed (0 to 2**63 - 1)")
    _add_fit_options(m, kernels=("ale", "mkda"), select=False)
    m.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    m.set_defaults(handler=_run_macm)

    b = sub.add_parser(
        "balanced-subtraction", help="balanced ALE subtraction of two groups (NiMARE 0.22's)",
        description="Balanced ALE subtraction (Frahm et al.; NiMARE's BalancedALESubtraction): "
                    "both groups subsampled to the same size, the mean difference of their "
                    "ALE maps against a null of random foci (or permuted labels), and each "
                    "group's probability of surviving cluster-level thresholding. A and B "
                    "are two inputs, or A is an ALE collection store and --select / "
                    "--select2 name the groups.")
    b.add_argument("inputs", nargs="+", metavar="A [B]", help="the two groups (or a store)")
    b.add_argument("--select2", metavar="EXPR",
                   help="with a store: the second group (label expression)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder")
    b.add_argument("--target-n", type=int, default=None,
                   help="experiments per subsample (default: the smaller group's size)")
    b.add_argument("--n-subsamples", type=int, default=2500,
                   help="subsamples per group of the probability maps (2500)")
    b.add_argument("--difference-iterations", type=int, default=1000,
                   help="subsample pairs averaged in the difference (1000)")
    b.add_argument("--n-iters", type=int, default=1000, help="null iterations (1000)")
    b.add_argument("--voxel-thresh", type=float, default=0.001,
                   help="cluster-forming p of the probability maps (0.001)")
    b.add_argument("--null-method", choices=["random-foci", "label-permutation"],
                   default="random-foci", help="null of the difference (random-foci)")
    b.add_argument("--mask-coverage", choices=["gm", "brain"], default="gm",
                   help="prior: grey matter (p > 0.1) in the mask, or the whole mask (gm)")
    b.add_argument("--alpha", type=float, default=0.05, help="FWE level (0.05)")
    b.add_argument("--seed", type=int, default=None, help="seed (0 to 2**32 - 2)")
    _add_fit_options(b, kernels=("ale",))
    b.set_defaults(handler=_run_balanced)


def _add_fit_options(p, kernels, select=True) -> None:
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain mask)")
    if "ale" in kernels:
        p.add_argument("--fwhm", type=float, help="ALE: fixed kernel FWHM in mm (0 < F <= 100)")
        p.add_argument("--sample-size", type=float,
                       help="ALE: fixed sample size for every experiment's kernel (needed for "
                            "databases without sample sizes, e.g. Neurosynth)")
    if "mkda" in kernels:
        p.add_argument("--radius", type=float, default=None,
                       help="MKDA/KDA: sphere radius in mm (10; 0 < R <= 100)")
    if select:
        p.add_argument("--select", metavar="EXPR",
                       help="label expression selecting the experiments of INPUT")
        p.add_argument("--label-threshold", type=float, default=0.001,
                       help="label weight threshold of --select (0.001)")
    p.add_argument("--prefix", default=None,
                   help="prefix of every output file name (letters, digits, '_', '.', '+', "
                        "'=', '-'; no path separators)")
    _add_space_option(p)
    _add_cluster_options(p)


# -- conjunction --------------------------------------------------------------------------------
def _map_file(source: Path, name: str) -> tuple[Path, Path | None]:
    """The NIfTI file of map ``name`` in a result folder (``NAME.nii.gz`` or
    ``PREFIX_NAME.nii.gz``), or ``source`` itself if it is a file; with the folder's
    provenance file when there is one."""
    if source.is_file():
        return source, None
    if not source.is_dir():
        raise DaskmetaError(f"{source} is neither a result folder nor a NIfTI file")
    exact = source / f"{name}.nii.gz"
    if exact.is_file():
        prov = source / "provenance.json"
        return exact, prov if prov.is_file() else None
    found = sorted(p for p in source.glob(f"*_{name}.nii.gz") if p.is_file()
                   and not p.name.startswith("."))
    if len(found) != 1:
        what = ("no file" if not found
                else f"{len(found)} files ({', '.join(p.name for p in found[:3])})")
        raise DaskmetaError(f"{source} holds {what} named {name}.nii.gz or "
                            f"PREFIX_{name}.nii.gz; give --map the name of a map it holds, "
                            "or the file itself")
    prefix = found[0].name[: -len(f"_{name}.nii.gz")]
    prov = source / f"{prefix}_provenance.json"
    return found[0], prov if prov.is_file() else None


def _mask_hash(prov: Path | None):
    if prov is None:
        return None
    try:
        return json.loads(prov.read_text(encoding="utf-8")).get("mask_hash")
    except (ValueError, OSError, AttributeError) as exc:
        raise DaskmetaError(f"cannot read provenance {prov}: {exc}") from exc


def _run_conjunction(args) -> None:
    import math

    from daskmeta.conjunction import conjunction_images, conjunction_name
    from daskmeta.results import atomic_write, output_path
    from daskmeta.workflows import check_prefix, input_provenance

    t0 = time.perf_counter()
    if len(args.inputs) < 2:
        raise DaskmetaError(f"conjunction needs two or more result folders; got "
                            f"{len(args.inputs)}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise _bad("--threshold", args.threshold, "a finite number")
    if args.prefix is not None:
        check_prefix(args.prefix, "--prefix")
    check_prefix(args.map, "--map")
    _check_out(args.out)
    files, hashes = [], []
    for src in args.inputs:
        path, prov = _map_file(Path(src), args.map)
        files.append(path)
        hashes.append(_mask_hash(prov))
    known = {h for h in hashes if h is not None}
    if len(known) > 1:
        first = next(i for i, h in enumerate(hashes) if h is not None)
        other = next(i for i, h in enumerate(hashes) if h is not None and h != hashes[first])
        raise DaskmetaError(f"{args.inputs[other]} was fitted on another mask (hash "
                            f"{hashes[other][:12]}) than {args.inputs[first]} (hash "
                            f"{hashes[first][:12]}); conjunctions need maps of one mask")
    img = conjunction_images(files, args.map, args.threshold, names=[str(f) for f in files])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    name = conjunction_name(args.map)
    target = output_path(out, f"{prefix}_{name}.nii.gz" if prefix else f"{name}.nii.gz")
    atomic_write(target, lambda tmp: img.to_filename(str(tmp)))
    prov = {
        "estimator": "conjunction",
        "conjunction_map": args.map,
        "conjunction_rule": "maximum" if args.map.split("_")[0] == "p" else "minimum",
        "conjunction_threshold": args.threshold,
        "conjunction_inputs": [{**input_provenance(f), "mask_hash": h}
                               for f, h in zip(files, hashes, strict=True)],
        "command_line": args.command_line,
    }
    if known:
        prov["mask_hash"] = known.pop()
    text = json.dumps(prov, indent=1, sort_keys=True)
    prov_path = output_path(out, f"{prefix}_provenance.json" if prefix else "provenance.json")
    atomic_write(prov_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _log(f"conjunction of {len(files)} maps ({args.map}) in {time.perf_counter() - t0:.1f} s; "
         f"2 files written to {out.resolve()}")
    print(out.resolve())


# -- scale ---------------------------------------------------------------------------------------
def _check_fit_options(args) -> None:
    from daskmeta.cli.cbma import _check_cbma_options

    if getattr(args, "voxel_thresh", None) is None:
        args.voxel_thresh = 0.001
    _check_cbma_options(args, getattr(args, "label_threshold", 0.001))


def _run_scale(args) -> None:
    import pandas as pd

    from daskmeta.correct import FWECorrector
    from daskmeta.estimators import SCALE
    from daskmeta.results import atomic_write, output_path
    from daskmeta.workflows import input_provenance

    t0 = time.perf_counter()
    _check_fit_options(args)
    data = _read_input(args.input, args.unknown_space)
    _log(f"read {args.input}: {data}")
    base = _read_input(args.base_rate, args.unknown_space)
    _log(f"base rate {args.base_rate}: {base}")
    kwargs = {}
    if args.fwhm is not None:
        kwargs["kernel__fwhm"] = args.fwhm
    if args.sample_size is not None:
        kwargs["kernel__sample_size"] = args.sample_size
    est = SCALE(xyz=base, n_iters=args.n_iters, random_state=args.seed, mask=args.mask,
                **kwargs)
    est._validate_params()
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    _log(f"SCALE: {args.n_iters} iterations against the base rate of {args.base_rate}")
    result = est.fit(data, select=args.select, label_threshold=args.label_threshold)
    tables = {"z": None}
    if args.fwe == "montecarlo":
        _log(f"voxel-level Monte Carlo FWE: {args.n_iters} iterations")
        result = FWECorrector("montecarlo", n_iters=args.n_iters, vfwe_only=True,
                              seed=result.attrs["scale_seed"]).transform(result)
        tables["z_level-voxel_corr-FWE_method-montecarlo"] = None
    result.attrs.update({**input_provenance(args.input), "command_line": args.command_line,
                         "base_rate_path": str(Path(args.base_rate).resolve())})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    paths = result.save_maps(out, prefix=prefix)
    for name in tables:
        tables[name] = (result.get_table(name, threshold=3.09) if name == "z"
                        else result.get_table(name, alpha=0.05, peak_map="z"))
    rows = [t.assign(map=n)[["map", *t.columns]] for n, t in tables.items()]
    clusters = pd.concat(rows, ignore_index=True)
    name = f"{prefix}_clusters.tsv" if prefix else "clusters.tsv"
    path = output_path(out, name)
    atomic_write(path, lambda tmp: clusters.to_csv(tmp, sep="\t", index=False,
                                                   float_format="%.6g"))
    paths.append(path)
    prov = output_path(out, f"{prefix}_provenance.json" if prefix else "provenance.json")
    paths.append(result.save_provenance(prov))
    _report({"tables": tables, "paths": paths}, out, t0)


def _is_collection(data) -> bool:
    from daskmeta.collection import Collection

    return isinstance(data, Collection)


# -- macm ----------------------------------------------------------------------------------------
def _parse_sphere(text: str):
    import math

    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[3] <= 0:
        raise _bad("--sphere", text, "X,Y,Z,R: a centre in mm and a positive radius in mm")
    return (tuple(values[:3]), values[3])


def _run_macm(args) -> None:
    from daskmeta.macm import _source_parts, seed_studies
    from daskmeta.space import resolve_space
    from daskmeta.workflows import input_provenance, prepare_cbma

    t0 = time.perf_counter()
    _check_fit_options(args)
    seed = _parse_sphere(args.sphere) if args.sphere is not None else args.roi
    if args.roi is not None and not Path(args.roi).is_file():
        raise _bad("--roi", args.roi, "an existing image file")
    data = _read_input(args.input, args.unknown_space)
    _log(f"read {args.input}: {data}")
    if _is_collection(data):
        dataset, space = _source_parts(data, None)
    else:
        dataset, space = data, resolve_space(args.mask)
    ids, what = seed_studies(dataset, seed, space)
    _log(f"the seed ({what}) selected {len(ids)} studies")
    job = prepare_cbma(
        args.estimator, data, args.out, mask=args.mask,
        fwhm=getattr(args, "fwhm", None), sample_size=getattr(args, "sample_size", None),
        r=getattr(args, "radius", None), fwe=args.fwe, n_iters=args.n_iters,
        voxel_thresh=args.voxel_thresh, seed=args.seed, prefix=args.prefix or "",
        select=ids, figures=not args.no_figures,
        provenance={**input_provenance(args.input), "command_line": args.command_line,
                    "macm_seed": what, "macm_n_selected": len(ids), "macm_ids": ids},
    )
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = job.run(log=_log)
    print(f"{len(ids)} studies selected by the seed")
    _report(out, args.out, t0)


# -- balanced-subtraction --------------------------------------------------------------------------
def _run_balanced(args) -> None:
    from daskmeta.estimators import BalancedALESubtraction
    from daskmeta.results import output_path
    from daskmeta.workflows import input_provenance

    t0 = time.perf_counter()
    _check_fit_options(args)
    for option in ("n_subsamples", "difference_iterations"):
        value = getattr(args, option)
        if value < 1 or value > MAX_N_ITERS:
            raise _bad(f"--{option.replace('_', '-')}", value,
                       f"an integer from 1 to {MAX_N_ITERS:,}")
    if args.target_n is not None and args.target_n < 1:
        raise _bad("--target-n", args.target_n, "a positive integer")
    if not 0 < args.alpha < 1:
        raise _bad("--alpha", args.alpha, "a number strictly between 0 and 1")
    if args.seed is not None and args.seed > 2**32 - 2:
        raise _bad("--seed", args.seed, "an integer from 0 to 2**32 - 2")
    if len(args.inputs) > 2:
        raise DaskmetaError(f"balanced-subtraction takes two inputs (or one store); got "
                            f"{len(args.inputs)}")
    data = [_read_input(p, args.unknown_space) for p in args.inputs]
    for path, d in zip(args.inputs, data, strict=True):
        _log(f"read {path}: {d}")
    kwargs = {}
    if args.fwhm is not None:
        kwargs["kernel__fwhm"] = args.fwhm
    if args.sample_size is not None:
        kwargs["kernel__sample_size"] = args.sample_size
    est = BalancedALESubtraction(
        target_n=args.target_n, n_subsamples=args.n_subsamples,
        difference_iterations=args.difference_iterations, n_iters=args.n_iters,
        voxel_thresh=args.voxel_thresh, null_method=args.null_method,
        mask_coverage=args.mask_coverage, alpha=args.alpha, random_state=args.seed,
        mask=args.mask, **kwargs)
    est._validate_params()
    if len(data) == 1:
        if not _is_collection(data[0]) or args.select is None:
            raise DaskmetaError("balanced-subtraction needs two inputs A B, or one "
                                "collection store with --select (and --select2)")
        fit_args = dict(data=data[0], select=args.select, select2=args.select2,
                        label_threshold=args.label_threshold)
    else:
        if args.select is not None or args.select2 is not None:
            raise DaskmetaError("--select/--select2 apply to one collection store, not to two "
                                "inputs")
        fit_args = dict(data=data[0], data2=data[1])
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    _log(f"balanced subtraction: {args.n_subsamples} subsamples, {args.difference_iterations} "
         f"difference iterations, {args.n_iters} null iterations ({args.null_method})")
    result = est.fit(**fit_args)
    result.attrs.update({"input_paths": [str(Path(p).resolve()) for p in args.inputs],
                         "inputs": [input_provenance(p) for p in args.inputs],
                         "command_line": args.command_line})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    paths = result.save_maps(out, prefix=prefix)
    prov = output_path(out, f"{prefix}_provenance.json" if prefix else "provenance.json")
    paths.append(result.save_provenance(prov))
    _log(f"target_n {result.attrs['balanced_target_n']}, seed {result.attrs['balanced_seed']}")
    _report({"tables": {}, "paths": paths}, out, t0)
