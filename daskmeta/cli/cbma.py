"""The analysis commands: ``ale``, ``mkda``, ``kda`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from daskmeta.cli._common import (
    MAX_N_ITERS,
    _add_cluster_options,
    _add_diagnostics_options,
    _add_space_option,
    _bad,
    _check_dask_options,
    _check_int,
    _check_number,
    _check_out,
    _client,
    _describe,
    _import_quietly,
    _log,
    _read_input,
    _report,
)
from daskmeta.cli.report import add_report_options, check_report_options
from daskmeta.exceptions import DaskmetaError
from daskmeta.precompile import start_warm_up


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    for name, help_text in (("ale", "ALE meta-analysis (activation likelihood estimation)"),
                            ("mkda", "MKDA density meta-analysis"),
                            ("kda", "KDA meta-analysis")):
        _add_cbma_parser(sub, name, help_text).set_defaults(handler=_run_cbma)
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
    d.add_argument("--no-report", action="store_true", help="do not write report.html")
    _add_cluster_options(d)
    d.set_defaults(handler=_run_demo)


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
    _add_diagnostics_options(
        p, "jackknife and/or focuscounter (repeat, or a comma list): each experiment's "
           "contribution to each cluster of the corrected z map, written as "
           "<map>_diag-<Name>_tab-counts_tail-positive.tsv next to the maps (as NiMARE's "
           "workflow)")
    p.add_argument("--prefix", default=None,
                   help="prefix of every output file name (letters, digits, '_', '.', '+', "
                        "'=', '-'; no path separators)")
    p.add_argument("--no-figures", action="store_true", help="do not write PNG figures")
    add_report_options(p)
    _add_space_option(p)
    _add_cluster_options(p)
    return p



def _run_cbma(args) -> None:
    from daskmeta.reports._render import figure_drawer

    t0 = time.perf_counter()
    label_threshold = _label_threshold(args)
    _check_cbma_options(args, label_threshold)
    # Started first: the process that draws the figures imports nilearn's plotting while
    # this one reads, fits and corrects.
    with figure_drawer(not (args.no_figures and args.no_report)) as drawer:
        _fit_cbma(args, label_threshold, drawer, t0)


def _fit_cbma(args, label_threshold: float, drawer, t0: float) -> None:
    # A first run compiles the combine while this thread imports, reads and checks.
    start_warm_up(args.command)
    _import_quietly("daskmeta.workflows", "daskmeta.io", "daskmeta.estimators",
                    "daskmeta.correct", "distributed")
    from daskmeta.workflows import input_provenance, prepare_cbma

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
        diagnostics=args.diagnostics or (), **_diag_options(args),
        report=not args.no_report, atlas=args.atlas, atlas_labels=args.atlas_labels,
    )
    client = _client(args)
    _log(f"Dask: {_describe(client)}")
    out = job.run(log=_log, drawer=drawer)
    _report(out, args.out, t0)



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
    _check_diagnostics(args)
    _check_out(args.out)
    check_report_options(args)
    _check_dask_options(args)


def _diag_options(args) -> dict:
    """The diagnostics thresholds (their defaults for commands without these options)."""
    from daskmeta.workflows import DIAG_CLUSTER_THRESHOLD, DIAG_TARGET_THRESHOLD

    threshold = getattr(args, "diag_threshold", None)
    cluster_threshold = getattr(args, "diag_cluster_threshold", None)
    return {"diag_threshold": DIAG_TARGET_THRESHOLD if threshold is None else threshold,
            "diag_cluster_threshold": (DIAG_CLUSTER_THRESHOLD if cluster_threshold is None
                                       else cluster_threshold)}


def _check_diagnostics(args) -> None:
    from daskmeta.diagnostics import DIAGNOSTICS
    from daskmeta.workflows import check_diagnostics

    if not hasattr(args, "diagnostics"):  # a command without --diagnostics (scale, macm)
        return
    opts = _diag_options(args)
    if not args.diagnostics and (args.diag_threshold is not None
                                 or args.diag_cluster_threshold is not None):
        raise DaskmetaError("--diag-threshold and --diag-cluster-threshold apply to "
                            "--diagnostics; give --diagnostics jackknife|focuscounter")
    _check_number(opts["diag_threshold"] if opts["diag_threshold"] != 0 else None,
                  "--diag-threshold", 0.0, float("inf"), "a number >= 0")
    _check_int(opts["diag_cluster_threshold"], "--diag-cluster-threshold", 0)
    for item in args.diagnostics or ():
        for name in item.split(","):
            if name.strip().lower() not in DIAGNOSTICS:
                raise _bad("--diagnostics", name, " or ".join(DIAGNOSTICS))
    if args.diagnostics and args.fwe == "none":
        raise DaskmetaError("--diagnostics characterises the clusters of a corrected map; "
                            "--fwe none gives none (use --fwe montecarlo or bonferroni)")
    check_diagnostics(args.diagnostics or (), args.fwe, **{
        "threshold": opts["diag_threshold"], "cluster_threshold": opts["diag_cluster_threshold"]})


def _label_threshold(args) -> float:
    """--label-threshold, or its deprecated name --threshold (with a one-line warning)."""
    if args.deprecated_threshold is None:
        return 0.001 if args.label_threshold is None else args.label_threshold
    if args.label_threshold is not None:
        raise DaskmetaError("give --label-threshold only (--threshold is its deprecated name)")
    print("daskmeta: warning: --threshold is deprecated; use --label-threshold (the label "
          "weight threshold of --select)", file=sys.stderr, flush=True)
    return args.deprecated_threshold



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
    start_warm_up("ale")  # a first run compiles while this thread simulates and starts Dask
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
                   provenance={"command_line": args.command_line},
                   report=not args.no_report)
    import pandas as pd

    sites = pd.DataFrame(sim.true_sites, columns=["x", "y", "z"])
    atomic_write(out_dir / "true_sites.tsv",
                 lambda tmp: sites.to_csv(tmp, sep="\t", index=False))
    _log("true sites: " + "; ".join(f"({x:g}, {y:g}, {z:g})" for x, y, z in sim.true_sites))
    _report(out, out_dir, t0)
