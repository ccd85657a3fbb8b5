"""The ``report`` command, and the report options of the analysis commands."""

from __future__ import annotations

import time
from pathlib import Path

from daskmeta.cli._common import _bad, _log
from daskmeta.exceptions import DaskmetaError


def add_parsers(sub) -> None:
    """The parser of ``daskmeta report``."""
    p = sub.add_parser(
        "report", help="write the HTML report of an analysis's output folder",
        description="Read the maps, provenance and null distributions that an analysis "
                    "(daskmeta ale/mkda/kda/demo) wrote into RESULT_DIR and write a "
                    "self-contained HTML report next to them: methods and references, "
                    "figures, an interactive viewer, cluster tables (with atlas regions "
                    "when --atlas and --atlas-labels are given), null distributions, "
                    "parameters and provenance.")
    p.add_argument("result_dir", metavar="RESULT_DIR", help="the analysis's --out folder")
    p.add_argument("--prefix", default=None,
                   help="the run's file-name prefix (default: found from the folder's one "
                        "provenance.json)")
    p.add_argument("--mask", metavar="IMG",
                   help="the run's mask (default: the one its provenance names)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder of the report (default: RESULT_DIR)")
    _add_atlas_options(p)
    p.set_defaults(handler=_run_report, no_report=False)


def _add_atlas_options(p) -> None:
    p.add_argument("--atlas", metavar="IMG",
                   help="atlas image of integer regions, to name the regions of the report's "
                        "cluster tables (with --atlas-labels)")
    p.add_argument("--atlas-labels", metavar="FILE",
                   help="the atlas's region names: .tsv/.csv with 'index' and 'name' "
                        "columns, .txt (one name per line, line i naming value i, or "
                        "'value name' lines) or an FSL atlas .xml")


def add_report_options(p) -> None:
    """``--no-report``, ``--atlas``, ``--atlas-labels`` of an analysis command."""
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    _add_atlas_options(p)


def check_report_options(args) -> None:
    """The report options, before any work: one line naming the option."""
    atlas, labels = getattr(args, "atlas", None), getattr(args, "atlas_labels", None)
    if (atlas is None) != (labels is None):
        raise DaskmetaError("give --atlas and --atlas-labels together")
    if atlas is not None and getattr(args, "no_report", False):
        raise DaskmetaError("--atlas labels the report's cluster tables; it does not go with "
                            "--no-report")
    for option, value in (("--atlas", atlas), ("--atlas-labels", labels)):
        if value is not None and not Path(value).is_file():
            raise _bad(option, value, "an existing file")


def _run_report(args) -> None:
    from daskmeta.reports import Atlas, find_prefix, load_result, make_report

    t0 = time.perf_counter()
    check_report_options(args)
    folder = Path(args.result_dir)
    if not folder.is_dir():
        raise _bad("RESULT_DIR", args.result_dir, "an analysis's output folder")
    out = Path(args.out) if args.out is not None else folder
    if out.exists() and not out.is_dir():
        raise _bad("--out", str(out), "a folder (created if needed), not a file")
    prefix = find_prefix(folder, args.prefix)
    result = load_result(folder, prefix=prefix, mask=args.mask)
    _log(f"read {result!r} from {folder}")
    atlas = None if args.atlas is None else Atlas(args.atlas, args.atlas_labels, result.space)
    name = f"{prefix}_report.html" if prefix else "report.html"
    path = make_report(result, out, atlas=atlas, filename=name)
    _log(f"done in {time.perf_counter() - t0:.1f} s")
    print(path.resolve())
