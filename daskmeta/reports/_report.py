"""The report page: its figures asked for, its tables, its HTML (see :mod:`daskmeta.reports`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from daskmeta import _methods
from daskmeta.exceptions import DaskmetaError
from daskmeta.reports import _figures, _html
from daskmeta.reports._atlas import Atlas
from daskmeta.results import DEFAULT_ALPHA, atomic_write, output_path

__all__ = ["make_report", "ReportDraft", "UNCORRECTED_Z"]

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


def _null_figures(result, drawer) -> list[tuple[object, str]]:
    """The figures of the null distributions, asked of ``drawer``: (pending figure, caption)."""
    nulls = result.null_distributions
    figs = []
    stat = result.get_map("stat", return_type="array") if "stat" in result.maps else None
    for key, (title, xlabel) in _NULLS.items():
        if key in nulls and np.size(nulls[key]):
            observed = (float(np.max(stat)) if stat is not None and "voxel" in key else None)
            figs.append((drawer.submit("null_histogram", values=np.asarray(nulls[key]),
                                       observed=observed, title=title, xlabel=xlabel),
                         f"{title} ({np.size(nulls[key]):,} iterations)"))
    weights = next((k for k in nulls if k.startswith("histweights_")), None)
    if weights is not None and "histogram_bins" in nulls:
        observed = float(np.max(stat)) if stat is not None else None
        figs.append((drawer.submit("approximate_null", bins=np.asarray(nulls["histogram_bins"]),
                                   weights=np.asarray(nulls[weights]), observed=observed),
                     "Analytic null of the statistic: the voxel-wise p-value of each value "
                     f"({weights})"))
    return figs


def make_report(result, out_dir, atlas=None, atlas_labels=None, filename: str = "report.html",
                progress=None, glass_brains=None, drawer=None) -> Path:
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
        Glass-brain figures already drawn (PNG bytes, or a figure asked of ``drawer``, and
        caption: the uncorrected z, then the z of the main corrected map, as the analysis
        commands write them), shown instead of drawing them again.
    drawer : optional
        Where figures are drawn (internal: the analysis commands pass a second process that
        draws while this one computes the cluster tables); default: in this process.

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
    return ReportDraft(result, out_dir, atlas=atlas, atlas_labels=atlas_labels,
                       filename=filename, glass_brains=glass_brains,
                       drawer=drawer).write(progress)


class ReportDraft:
    """A report whose figures are asked for (of ``drawer``) as it is made; :meth:`write`
    computes the cluster tables and writes the page once the figures are there. Parameters
    as :func:`make_report`'s (internal: analysis commands make one early, then write it)."""

    def __init__(self, result, out_dir, atlas=None, atlas_labels=None,
                 filename: str = "report.html", glass_brains=None, drawer=None):
        from daskmeta.reports._render import FigureDrawer

        if "z" not in result.maps:
            raise DaskmetaError(f"a report needs the result's z map; it has "
                                f"{', '.join(result.map_names)}")
        self.target = output_path(Path(out_dir), filename)
        if isinstance(atlas, Atlas):
            if atlas.space != result.space:
                raise DaskmetaError("the Atlas was resampled to another mask than the result's")
            atlas_obj, atlas = atlas, atlas.source
        elif (atlas is None) != (atlas_labels is None):
            raise DaskmetaError("give an atlas image and its labels together (atlas and "
                                "atlas_labels)")
        else:
            atlas_obj = None if atlas is None else Atlas(atlas, atlas_labels, result.space)
        self.result, self.out_dir, self.atlas, self.atlas_obj = result, out_dir, atlas, atlas_obj
        drawer = drawer or FigureDrawer()
        space = result.space
        z = result.get_map("z", return_type="array")
        corrected = _corrected(result)
        main_values, main_thr, main_title = z, UNCORRECTED_Z, "z (uncorrected p < 0.001)"
        if corrected:
            keep = result.significant(corrected[0], alpha=DEFAULT_ALPHA)
            main_values, main_thr = np.where(keep, z, 0.0), 0.0
            main_title = f"z where {corrected[0]} has corrected p < {DEFAULT_ALPHA:g}"
        self.main_title = main_title
        main_img = space.to_img(np.asarray(main_values, dtype=np.float32))
        main_shown = _figures.threshold_or_none(main_values, main_thr)
        figs = []  # (figure: bytes or pending, caption, class)
        if glass_brains:
            figs += [(png, f"Glass brain: {caption}", "glass-brain")
                     for png, caption in glass_brains]
        else:
            figs.append((drawer.submit(
                "glass_brain", img=space.to_img(np.asarray(z, dtype=np.float32)),
                threshold=_figures.threshold_or_none(z, UNCORRECTED_Z),
                title="z (uncorrected p < 0.001)"),
                f"Glass brain: z > {UNCORRECTED_Z} (uncorrected p < 0.001)", "glass-brain"))
            if corrected:
                figs.append((drawer.submit("glass_brain", img=main_img, threshold=main_shown,
                                           title="z, corrected"),
                             f"Glass brain: {main_title}", "glass-brain"))
        figs.append((drawer.submit("slices", img=main_img, threshold=main_shown, title=""),
                     f"Axial slices: {main_title}", "slices"))
        self.figs = figs
        self.viewer = drawer.submit("viewer", img=main_img, threshold=main_shown,
                                    title="z, corrected" if corrected else "z, p < 0.001",
                                    vmin=0.0 if main_thr is not None else None)
        self.null_figs = _null_figures(result, drawer)

    def write(self, progress=None) -> Path:
        """Compute the cluster tables, collect the figures and write the page."""
        from daskmeta.progress import Progress

        result, atlas, atlas_obj = self.result, self.atlas, self.atlas_obj
        attrs = dict(result.attrs)
        tables = _tables(result, atlas_obj)  # while a figure process draws
        n_drawn = sum(not isinstance(f, bytes) for f, _, _ in self.figs)
        with Progress("report figures", n_drawn + 1 + len(self.null_figs), "figures",
                      progress) as bar:
            # The null figures were asked for last: drawn here (matplotlib only) unless a
            # figure process has started them, while it draws the brains.
            null_figs = []
            for fig, caption in self.null_figs:
                null_figs.append(_html.figure(_figures.data_uri(fig.result(steal=True)),
                                              caption, "null"))
                bar.advance()
            figs = []
            for fig, caption, kind in self.figs:
                if not isinstance(fig, bytes):
                    fig = fig.result()
                    bar.advance()
                figs.append(_html.figure(_figures.data_uri(fig), caption, kind))
            viewer = self.viewer.result()
            bar.advance()
        main_title = self.main_title
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
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(self.target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return self.target
