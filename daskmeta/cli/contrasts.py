"""The contrast commands: ``mkda-chi2`` (MKDA chi-square) and ``subtraction`` (ALE
subtraction), each of two datasets, or of one collection store with ``--select`` (and
``--select2``; ``mkda-chi2`` without it tests the selection against the rest of the store)."""

from __future__ import annotations

import time
from pathlib import Path

from daskmeta.cli._common import (
    MAX_N_ITERS,
    _add_cluster_options,
    _add_diagnostics_options,
    _bad,
    _check_dask_options,
    _check_int,
    _check_number,
    _check_out,
    _client,
    _describe,
    _log,
    _read_input,
)
from daskmeta.exceptions import DaskmetaError, DatasetError

__all__ = ["add_parsers"]

_INPUTS = ("Sleuth text, NiMARE JSON, foci table (CSV/TSV), a daskmeta dataset (.zip), a "
           "Neurosynth/NeuroQuery directory, or a collection store (daskmeta ingest)")


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    p = sub.add_parser(
        "mkda-chi2", help="MKDA chi-square contrast of two groups (uniformity, association)",
        description="MKDA chi-square (NiMARE's MKDAChi2) of group A against group B; with one "
                    "collection store and --select, the selection against the rest of the "
                    "store (or --select2).")
    p.add_argument("a", metavar="A", help=f"group 1: {_INPUTS}")
    p.add_argument("b", metavar="B", nargs="?", help="group 2 (a dataset input); omit it to "
                                                     "contrast A's --select with the rest")
    p.add_argument("--radius", type=float, default=None, help="sphere radius in mm (10)")
    p.add_argument("--prior", type=float, default=0.5, help="prior of a feature (0.5)")
    _common_options(p, ("montecarlo", "fdr", "none"), 10000)
    p.add_argument("--fwe-null-method", choices=["label-permutation", "random-foci"],
                   default="label-permutation",
                   help="Monte Carlo null (NiMARE's): permuted group labels (default) or "
                        "every focus relocated uniformly in the mask")
    p.set_defaults(handler=_run_chi2)
    s = sub.add_parser(
        "subtraction", help="ALE subtraction of two groups (permutation test)",
        description="ALE subtraction (NiMARE's ALESubtraction) of group A minus group B, with "
                    "a label-permutation test; or of --select minus --select2 of one "
                    "collection store.")
    s.add_argument("a", metavar="A", help=f"group 1: {_INPUTS}")
    s.add_argument("b", metavar="B", nargs="?", help="group 2 (a dataset input)")
    s.add_argument("--fwhm", type=float, help="fixed kernel FWHM in mm (0 < F <= 100)")
    s.add_argument("--sample-size", type=float,
                   help="fixed sample size for every experiment's kernel")
    _common_options(s, ("montecarlo", "none"), 5000)
    s.add_argument("--target", choices=["pairwise", "main-effects", "all"], default=None,
                   help="what --fwe montecarlo corrects (NiMARE's target): the difference "
                        "(default), each group's one-sample ALE maps, or both")
    s.add_argument("--restrict-to-inference-mask", action="store_true",
                   help="with inference maps: permutation nulls over their voxels only")
    s.set_defaults(handler=_run_subtraction)


def _common_options(p, fwe, n_iters):
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--mask", metavar="IMG", help="mask image (default: MNI152 2 mm brain "
                                                  "mask; a store has its own)")
    p.add_argument("--select", metavar="EXPR", help="with one collection store: group 1")
    p.add_argument("--select2", metavar="EXPR", help="with one collection store: group 2")
    p.add_argument("--label-threshold", type=float, default=0.001,
                   help="label weight threshold of --select/--select2 (0.001)")
    g = p.add_argument_group("correction")
    g.add_argument("--fwe", choices=list(fwe), default=fwe[0],
                   help=f"correction (default: {fwe[0]}; montecarlo: label permutations)")
    g.add_argument("--n-iters", type=int, default=n_iters,
                   help=f"permutations ({n_iters}; 1 to {MAX_N_ITERS:,})")
    g.add_argument("--voxel-thresh", type=float, default=0.001,
                   help="cluster-forming p threshold (0.001; 0 < p < 1)")
    g.add_argument("--seed", type=int, default=None, help="permutation seed (0 to 2**63 - 1)")
    i = p.add_argument_group("directional inference (NiMARE's inference maps)")
    i.add_argument("--inference-map1", metavar="IMG",
                   help="test group 1 > group 2 only where this image (on the mask's grid) "
                        "is > 0")
    i.add_argument("--inference-map2", metavar="IMG",
                   help="test group 2 > group 1 only where this image is > 0")
    _add_diagnostics_options(
        p, "jackknife and/or focuscounter (repeat, or a comma list), with --fwe montecarlo: "
           "each experiment's contribution to each cluster of the cluster-mass corrected z "
           "map (positive tail: group 1's experiments, negative tail: group 2's), written as "
           "<map>_diag-<Name>_tab-counts_tail-<tail>.tsv next to the maps")
    p.add_argument("--prefix", default=None, help="prefix of every output file name")
    p.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    _add_cluster_options(p)


def _check_options(args) -> None:
    from daskmeta.workflows import MAX_KERNEL_MM, check_prefix

    _check_int(args.n_iters, "--n-iters", 1, MAX_N_ITERS)
    _check_int(args.seed, "--seed", 0, 2**63 - 1)
    if not 0 < args.voxel_thresh < 1:
        raise _bad("--voxel-thresh", args.voxel_thresh, "a p-value strictly between 0 and 1")
    _check_number(args.label_threshold, "--label-threshold", float("-inf"), float("inf"),
                  "a finite number")
    mm = f"a number of mm in (0, {MAX_KERNEL_MM:g}]"
    _check_number(getattr(args, "radius", None), "--radius", 0.0, MAX_KERNEL_MM, mm)
    _check_number(getattr(args, "fwhm", None), "--fwhm", 0.0, MAX_KERNEL_MM, mm)
    _check_number(getattr(args, "sample_size", None), "--sample-size", 0.0, float("inf"),
                  "a positive number")
    prior = getattr(args, "prior", None)
    if prior is not None and not 0 <= prior <= 1:  # NaN fails too
        raise _bad("--prior", prior, "a number in [0, 1]")
    if getattr(args, "fwhm", None) is not None and getattr(args, "sample_size", None):
        raise DaskmetaError("give --fwhm or --sample-size, not both")
    if args.prefix is not None:
        if args.prefix == "":
            raise _bad("--prefix", "", "a non-empty file-name prefix when given")
        check_prefix(args.prefix, "--prefix")
    for option in ("inference_map1", "inference_map2"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file():
            raise _bad(f"--{option.replace('_', '-')}", value, "an existing image file")
    if getattr(args, "restrict_to_inference_mask", False) and not (args.inference_map1
                                                                   or args.inference_map2):
        raise DaskmetaError("--restrict-to-inference-mask needs --inference-map1 and/or "
                            "--inference-map2")
    if getattr(args, "target", None) is not None and args.fwe != "montecarlo":
        raise DaskmetaError(f"--target {args.target} applies to --fwe montecarlo; got --fwe "
                            f"{args.fwe}")
    if args.fwe != "montecarlo" and (args.diagnostics or args.diag_threshold is not None
                                     or args.diag_cluster_threshold is not None):
        raise DaskmetaError("--diagnostics characterises the clusters of the cluster-mass "
                            f"corrected z map of --fwe montecarlo; got --fwe {args.fwe}")
    from daskmeta.cli.cbma import _check_diagnostics

    _check_diagnostics(args)
    _check_out(args.out)
    _check_dask_options(args)


def _inputs(args, need_select2: bool):
    """``(data, data2, select, select2)`` for the estimator's fit, checked: two datasets, or
    one collection store with its selections."""
    from daskmeta._pass import has_foci, selection_rows
    from daskmeta.collection import Collection

    a = _read_input(args.a)
    _log(f"read {args.a}: {a}")
    if args.b is None:
        if not isinstance(a, Collection):
            raise DaskmetaError(f"{args.command} with one input needs a collection store "
                                f"(daskmeta ingest) and --select; {args.a} is a dataset: give "
                                "group 2 as a second input")
        if not args.select:
            raise DaskmetaError(f"{args.command} with one collection store needs --select "
                                "(group 1)")
        if need_select2 and not args.select2:
            raise DaskmetaError(f"{args.command} with one collection store needs --select and "
                                "--select2 (the two groups)")
        if args.mask:
            raise DaskmetaError(f"--mask does not apply to a collection store ({args.a} was "
                                f"built on {a.attrs.get('mask_source')}); drop it")
        foci = has_foci(a.dataset)
        rows1 = selection_rows(a.dataset, args.select, args.label_threshold, foci)
        if args.select2:
            selection_rows(a.dataset, args.select2, args.label_threshold, foci)
        elif len(rows1) == int(foci.sum()):
            raise DatasetError(f"empty group 2: --select {args.select!r} selects every "
                               f"experiment with foci of {args.a}")
        return a, None, args.select, args.select2
    b = _read_input(args.b)
    _log(f"read {args.b}: {b}")
    if isinstance(a, Collection) or isinstance(b, Collection):
        if isinstance(a, Collection) and isinstance(b, Collection):
            what = ("built with different kernels" if a.attrs.get("kernel_params")
                    != b.attrs.get("kernel_params") or a.attrs.get("kernel")
                    != b.attrs.get("kernel") else
                    "built on different masks" if a.attrs.get("mask_hash")
                    != b.attrs.get("mask_hash") else "two stores")
            raise DaskmetaError(f"A and B are collection stores ({what}): give one store with "
                                "--select and --select2, or two dataset inputs")
        raise DaskmetaError("give two dataset inputs, or one collection store with --select "
                            "(a store and a dataset cannot be mixed)")
    if args.select or args.select2:
        raise DaskmetaError("--select/--select2 apply to one collection store; with two "
                            "dataset inputs, each input is a group")
    for path, data in ((args.a, a), (args.b, b)):
        if not has_foci(data).any():
            raise DatasetError(f"empty group: {path} has no experiment with foci")
    return a, b, None, None


def _run_chi2(args) -> None:
    from daskmeta.estimators import MKDAChi2

    t0 = time.perf_counter()
    _check_options(args)
    data, data2, select, select2 = _inputs(args, need_select2=False)
    kw = {} if args.radius is None else {"kernel__r": args.radius}
    mask = None if data2 is None else args.mask
    est = MKDAChi2(prior=args.prior, fwe_null_method=args.fwe_null_method, mask=mask, **kw)
    if data2 is None:
        est._validate_params()
        est._source(data)  # the store's kernel must be the estimator's: before any work
    corrector = _corrector(args, vfwe_only=False)
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    result = (est.fit(data, data2, **_inference(args)) if data2 is not None
              else est.fit(data, select=select, select2=select2,
                           label_threshold=args.label_threshold, **_inference(args)))
    _log(f"MKDAChi2: {result.attrs['n_experiments1']} experiments in group 1, "
         f"{result.attrs['n_experiments2']} in group 2")
    result = _diagnose(_correct(result, corrector, args), args, "association")
    _write(result, args, t0, "z_desc-association", "association z")


def _run_subtraction(args) -> None:
    from daskmeta.estimators import ALESubtraction

    t0 = time.perf_counter()
    _check_options(args)
    data, data2, select, select2 = _inputs(args, need_select2=True)
    kw = {}
    if args.fwhm is not None:
        kw["kernel__fwhm"] = args.fwhm
    if args.sample_size is not None:
        kw["kernel__sample_size"] = args.sample_size
    est = ALESubtraction(n_iters=args.n_iters, voxel_thresh=args.voxel_thresh,
                         vfwe_only=args.fwe != "montecarlo", seed=args.seed,
                         mask=None if data2 is None else args.mask,
                         restrict_to_inference_mask=args.restrict_to_inference_mask, **kw)
    est._validate_params()
    if data2 is None:
        est._source(data)
    corrector = _corrector(args, vfwe_only=False)
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    _log(f"ALE subtraction with {args.n_iters} label permutations")
    result = (est.fit(data, data2, **_inference(args)) if data2 is not None
              else est.fit(data, select=select, select2=select2,
                           label_threshold=args.label_threshold, **_inference(args)))
    _log(f"ALESubtraction: {result.attrs['n_experiments1']} experiments in group 1, "
         f"{result.attrs['n_experiments2']} in group 2")
    if corrector is not None:
        corrector.seed = result.attrs.get("subtraction_seed")  # the fit's own permutations
        corrector.target = args.target
    result = _diagnose(_correct(result, corrector, args), args, "group1MinusGroup2")
    _write(result, args, t0, "z_desc-group1MinusGroup2", "group 1 minus group 2 z")


def _inference(args) -> dict:
    return {"inference_map1": args.inference_map1, "inference_map2": args.inference_map2}


def _diagnose(result, args, test: str):
    """``--diagnostics``: each diagnostic on the cluster-mass corrected z map of ``test``,
    both tails (group 1's experiments for the positive, group 2's for the negative)."""
    import warnings

    from daskmeta.cli.cbma import _diag_options
    from daskmeta.diagnostics import DIAGNOSTICS
    from daskmeta.exceptions import DaskmetaWarning

    names = [n.strip().lower() for item in args.diagnostics or () for n in item.split(",")]
    if not names:
        return result
    target = f"z_desc-{test}Mass_level-cluster_corr-FWE_method-montecarlo"
    opts = _diag_options(args)
    for name in dict.fromkeys(names):
        diag = DIAGNOSTICS[name](target_image=target, target_threshold=opts["diag_threshold"],
                                 cluster_threshold=opts["diag_cluster_threshold"],
                                 display_second_group=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DaskmetaWarning)
            result = diag.transform(result)
        for w in caught:
            _log(str(w.message))
        for table in [t for t in result.tables if "_tab-counts" in t
                      and f"_diag-{type(diag).__name__}_" in t]:
            shape = result.tables[table].shape
            _log(f"{table}: {shape[0]} experiments x {shape[1] - 1} clusters")
    return result


def _corrector(args, vfwe_only: bool):
    from daskmeta.correct import FDRCorrector, FWECorrector

    if args.fwe == "montecarlo":
        return FWECorrector("montecarlo", n_iters=args.n_iters, voxel_thresh=args.voxel_thresh,
                            vfwe_only=vfwe_only, seed=args.seed)
    if args.fwe == "fdr":
        return FDRCorrector("indep")
    return None


def _correct(result, corrector, args):
    if corrector is None:
        return result
    _log(f"correction: {corrector!r}")
    out = corrector.transform(result)
    out.attrs["command_line"] = args.command_line
    return out


def _write(result, args, t0, z_name, title) -> None:
    import numpy as np

    from daskmeta.results import atomic_write, output_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    result.attrs["command_line"] = args.command_line
    paths = result.save_maps(out, prefix=prefix)
    if result.tables:
        paths.extend(result.save_tables(out, prefix=prefix))

    def name(n: str) -> str:
        return f"{prefix}_{n}" if prefix else n

    if not args.no_figures:
        from daskmeta.plotting import plot_map

        z = result.get_map(z_name, return_type="array")
        thr = 3.09 if np.any(np.abs(z) > 3.09) else None
        png = output_path(out, name(f"{z_name}.png"))
        atomic_write(png, lambda tmp: plot_map(result.space, z, tmp, threshold=thr,
                                               title=f"{title} (|z| > 3.09)"))
        paths.append(png)
    paths.append(result.save_provenance(output_path(out, name("provenance.json"))))
    _log(f"done in {time.perf_counter() - t0:.1f} s; {len(paths)} files written to "
         f"{out.resolve()}")
    print(out.resolve())
