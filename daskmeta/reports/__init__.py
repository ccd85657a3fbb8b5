"""HTML reports of results, in the manner of NiMARE's ``nimare.reports``.

:func:`make_report` (also :meth:`daskmeta.MetaResult.report` and ``daskmeta report
RESULT_DIR``) writes one self-contained page: the data analysed and the parameters and
provenance of the run, a methods paragraph with its references (:attr:`MetaResult.description`,
:attr:`MetaResult.bibtex`), glass-brain and slice figures, an interactive viewer (nilearn's
``view_img``, its scripts embedded, so it works offline), cluster tables (with atlas regions
when an atlas is given), histograms of the null distributions and any diagnostics tables of
the result (``result.tables``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from daskmeta import _methods
from daskmeta.exceptions import DaskmetaError
from daskmeta.reports import _figures, _html
from daskmeta.reports._atlas import Atlas, read_labels
from daskmeta.reports._load import NULLS_FILE, find_prefix, load_result
from daskmeta.results import DEFAULT_ALPHA, atomic_write, output_path

__all__ = ["make_report", "load_result", "find_prefix", "Atlas", "read_labels", "NULLS_FILE",
           "UNCORRECTED_Z"]

#: z threshold of the uncorrected map's figures and table (one-sided p < 0.001).
UNCORRECTED_Z = 3.09
#: Corrected maps shown, most informative first: the first one present is the report's
#: main corrected map (figures and viewer).
_CORRECTED = ("z_desc-size_level-cluster_corr-FWE_method-montecarlo",
              "z_desc-mass_level-cluster_corr-FWE_method-montecarlo",
              "z_level-voxel_corr-FWE_method-montecarlo",
              "z_corr-FWE_method-bonferroni",
              "z_corr-FDR_method-indep", "z_corr-FDR_method-negcorr")
_NULLS = {
    "values_level-voxel_corr-fwe_method-montecarlo":
        ("Voxel-level FWE: maximum statistic per iteration", "maximum statistic"),
    "values_desc-size_level-cluster_corr-fwe_method-montecarlo":
        ("Cluster-level FWE: largest cluster size per iteration", "cluster size (voxels)"),
    "values_desc-mass_level-cluster_corr-fwe_method-montecarlo":
        ("Cluster-level FWE: largest cluster mass per iteration", "cluster mass"),
}


def _corrected(result) -> list[str]:
    return [n for n in _CORRECTED if n in result.maps]


def _summary(result) -> str:
    a = result.attrs
    rows = {
        "Estimator": a.get("estimator"),
        "Experiments analysed": a.get("n_experiments"),
        "Experiments in the input": a.get("n_experiments_input"),
        "Foci analysed": a.get("n_foci"),
        "Foci dropped (outside the mask margin)": a.get("n_foci_dropped"),
        "Selection": a.get("selection"),
        "Label threshold": a.get("label_threshold"),
        "Input": a.get("input_path"),
        "Input sha256": a.get("input_sha256"),
        "Command line": a.get("command_line"),
        "Mask": f"{a.get('mask_source')} ({a.get('mask_n_voxels')} voxels)",
        "daskmeta version": a.get("daskmeta_version"),
        "Maps": ", ".join(result.map_names),
    }
    return _html.parameters({k: v for k, v in rows.items() if v is not None})


def _tables(result, atlas) -> list[tuple[str, object]]:
    """(caption, table) of the uncorrected z and of every corrected z map."""
    out = []
    specs = [(name, {"alpha": DEFAULT_ALPHA, "peak_map": "z"},
              f"Clusters of {name} (corrected p < {DEFAULT_ALPHA:g}; peaks in z)")
             for name in _corrected(result)]
    specs.append(("z", {"threshold": UNCORRECTED_Z},
                  f"Clusters of z > {UNCORRECTED_Z} (uncorrected p < 0.001)"))
    for name, kw, caption in specs:
        table, labels = result.get_table(name, return_labels=True, **kw)
        if atlas is not None:
            table = atlas.label_table(table, labels)
        out.append((caption, table))
    return out


def _null_figures(result, bar) -> list[str]:
    nulls = result.null_distributions
    figs = []
    stat = result.get_map("stat", return_type="array") if "stat" in result.maps else None
    for key, (title, xlabel) in _NULLS.items():
        if key in nulls and np.size(nulls[key]):
            observed = (float(np.max(stat)) if stat is not None and "voxel" in key else None)
            png = _figures.null_histogram(nulls[key], observed, title, xlabel)
            n = np.size(nulls[key])
            figs.append(_html.figure(_figures.data_uri(png), f"{title} ({n:,} iterations)",
                                     "null"))
            bar.advance()
    weights = next((k for k in nulls if k.startswith("histweights_")), None)
    if weights is not None and "histogram_bins" in nulls:
        observed = float(np.max(stat)) if stat is not None else None
        png = _figures.approximate_null(nulls["histogram_bins"], nulls[weights], observed)
        figs.append(_html.figure(_figures.data_uri(png),
                                 "Analytic null of the statistic: the voxel-wise p-value of "
                                 f"each value ({weights})", "null"))
        bar.advance()
    return figs


def _n_figures(result) -> int:
    nulls = result.null_distributions
    n_nulls = sum(1 for k in _NULLS if k in nulls and np.size(nulls[k]))
    n_nulls += int("histogram_bins" in nulls and any(k.startswith("histweights_") for k in nulls))
    return 4 + n_nulls  # two glass brains (when drawn), slices, viewer, nulls


def make_report(result, out_dir, atlas=None, atlas_labels=None, filename: str = "report.html",
                progress=None, glass_brains=None) -> Path:
    """Write the HTML report of a result.

    Parameters
    ----------
    result : MetaResult
    out_dir : path-like
        Created if needed; receives ``filename`` (written atomically).
    atlas : path-like, nibabel image or Atlas, optional
        An atlas of integer regions: cluster tables then name the region of each peak and
        the regions each cluster covers. An :class:`Atlas` carries its labels.
    atlas_labels : dict, list, DataFrame or path-like, optional
        The atlas's region names (required with ``atlas``; see :class:`Atlas`).
    filename : str
        The page's file name (a plain name, kept inside ``out_dir``).
    progress : bool, optional
        Show the figures drawn on standard error (see :mod:`daskmeta.progress`).
    glass_brains : list of (bytes, str), optional
        Glass-brain figures already drawn (PNG bytes and caption: the uncorrected z, then
        the z of the main corrected map, as the analysis commands write them), shown
        instead of drawing them again.

    Returns
    -------
    pathlib.Path
        The page.

    Raises
    ------
    DaskmetaError
        For an atlas without labels (or labels without an atlas), an unreadable atlas or
        label table, or one that names no region for some value of the image.
    """
    from daskmeta.progress import Progress

    if "z" not in result.maps:
        raise DaskmetaError(f"a report needs the result's z map; it has "
                            f"{', '.join(result.map_names)}")
    target = output_path(Path(out_dir), filename)
    if isinstance(atlas, Atlas):
        if atlas.space != result.space:
            raise DaskmetaError("the Atlas was resampled to another mask than the result's")
        atlas_obj, atlas = atlas, atlas.source
    elif (atlas is None) != (atlas_labels is None):
        raise DaskmetaError("give an atlas image and its labels together (atlas and "
                            "atlas_labels)")
    else:
        atlas_obj = None if atlas is None else Atlas(atlas, atlas_labels, result.space)
    attrs = dict(result.attrs)
    space = result.space
    z = result.get_map("z", return_type="array")
    corrected = _corrected(result)
    main_values, main_thr, main_title = z, UNCORRECTED_Z, "z (uncorrected p < 0.001)"
    if corrected:
        keep = result.significant(corrected[0], alpha=DEFAULT_ALPHA)
        main_values, main_thr = np.where(keep, z, 0.0), 0.0
        main_title = f"z where {corrected[0]} has corrected p < {DEFAULT_ALPHA:g}"
    n_glass = 0 if glass_brains else 1 + int(bool(corrected))
    with Progress("report figures", _n_figures(result) - 2 + n_glass, "figures",
                  progress) as bar:
        if glass_brains:
            figs = [_html.figure(_figures.data_uri(png), f"Glass brain: {caption}",
                                 "glass-brain") for png, caption in glass_brains]
        else:
            figs = [_html.figure(_figures.data_uri(_figures.glass_brain(
                space, z, UNCORRECTED_Z, "z (uncorrected p < 0.001)")),
                f"Glass brain: z > {UNCORRECTED_Z} (uncorrected p < 0.001)", "glass-brain")]
            bar.advance()
            if corrected:
                figs.append(_html.figure(_figures.data_uri(_figures.glass_brain(
                    space, main_values, main_thr, "z, corrected")),
                    f"Glass brain: {main_title}", "glass-brain"))
                bar.advance()
        figs.append(_html.figure(_figures.data_uri(_figures.slices(
            space, main_values, main_thr, "")), f"Axial slices: {main_title}", "slices"))
        bar.advance()
        viewer = _figures.viewer(space, main_values, main_thr,
                                 "z, corrected" if corrected else "z, p < 0.001")
        bar.advance()
        null_figs = _null_figures(result, bar)
    tables = _tables(result, atlas_obj)
    diag = getattr(result, "tables", None) or {}
    keys = _methods.reference_keys(attrs)
    methods = (f'<p class="methods">{_html._e(result.description)}</p>'
               "<h3>References</h3>" + _html.references_list(
                   [_methods.REFERENCES[k] for k in keys])
               + f"<details><summary>BibTeX</summary><pre>{_html._e(result.bibtex)}</pre>"
               "</details>")
    sections = [
        ("summary", "Summary", _summary(result)),
        ("methods", "Methods", methods),
        ("figures", "Figures", "\n".join(figs)),
        ("viewer", "Interactive viewer",
         f'<p>{_html._e(main_title)}: click to move the cursor.</p>'
         f'<div class="viewer" id="interactive-viewer">{viewer}</div>'),
        ("clusters", "Cluster tables",
         "\n".join(_html.table(t, c, f"clusters-{i}") for i, (c, t) in enumerate(tables))
         + ("" if atlas_obj is None else
            f"<p>Regions from the atlas {_html._e(atlas if isinstance(atlas, str | Path) else 'image')}"
            " (peak_region: the region at the peak; regions: the share of the cluster's "
            "voxels in each, at most three).</p>")),
        ("nulls", "Null distributions",
         "\n".join(null_figs) or '<p class="empty">The result holds no null distribution.</p>'),
    ]
    if diag:
        sections.append(("diagnostics", "Diagnostics",
                         "\n".join(_html.table(t, str(n), f"diagnostics-{i}")
                                   for i, (n, t) in enumerate(diag.items()))))
    sections.append(("parameters", "Parameters and provenance", _html.parameters(attrs)))
    text = _html.page(f"daskmeta report: {attrs.get('estimator', 'result')}",
                      f"written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by daskmeta "
                      f"{attrs.get('daskmeta_version', '')}", sections)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target
