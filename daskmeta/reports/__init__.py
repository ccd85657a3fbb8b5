"""HTML reports of results, in the manner of NiMARE's ``nimare.reports``.

:func:`make_report` (also :meth:`daskmeta.MetaResult.report` and ``daskmeta report
RESULT_DIR``) writes one self-contained page: the data analysed and the parameters and
provenance of the run, a methods paragraph with its references (:attr:`MetaResult.description`,
:attr:`MetaResult.bibtex`), glass-brain and slice figures, an interactive viewer (nilearn's
``view_img``, its scripts embedded, so it works offline), cluster tables (with atlas regions
when an atlas is given), histograms of the null distributions and any diagnostics tables of
the result (``result.tables``).

The names below are imported on first use, so that :mod:`daskmeta.reports._render` (the
figure process an analysis command starts first) imports nothing else of daskmeta.
"""

_LAZY = {
    "make_report": "daskmeta.reports._report",
    "ReportDraft": "daskmeta.reports._report",
    "UNCORRECTED_Z": "daskmeta.reports._report",
    "load_result": "daskmeta.reports._load",
    "find_prefix": "daskmeta.reports._load",
    "NULLS_FILE": "daskmeta.reports._load",
    "Atlas": "daskmeta.reports._atlas",
    "read_labels": "daskmeta.reports._atlas",
}

__all__ = ["make_report", "load_result", "find_prefix", "Atlas", "read_labels", "NULLS_FILE",
           "UNCORRECTED_Z"]


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'daskmeta.reports' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
