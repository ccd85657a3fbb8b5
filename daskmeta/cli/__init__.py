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
import warnings

from daskmeta._version import __version__
from daskmeta.cli import cbma, config, contrasts, contrasts_extra, data, decode, ibma, report
from daskmeta.cli._common import _format_warning, _one_line, _Parser
from daskmeta.exceptions import DaskmetaError

__all__ = ["COMMAND_MODULES", "build_parser", "main", "run"]

#: The modules that define the commands: each has ``add_parsers(sub)``, whose parsers set a
#: ``handler`` (called with the parsed arguments). A new command goes in one of them, or in
#: a new module listed here.
COMMAND_MODULES = (cbma, data, contrasts, contrasts_extra, ibma, decode, report, config)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``daskmeta`` command and all its subcommands."""
    parser = _Parser(
        prog="daskmeta",
        description="Neuroimaging meta-analysis at whole-database scale, on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"daskmeta {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress lines of long operations on stderr (default: only "
                             "when stderr is a terminal, or as the dask config "
                             "daskmeta.progress says)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


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
        if args.progress is None:
            args.handler(args)
        else:
            import dask

            with dask.config.set({"daskmeta.progress": bool(args.progress)}):
                args.handler(args)
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
