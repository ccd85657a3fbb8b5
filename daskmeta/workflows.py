"""End-to-end workflows: fit, correct, and write maps, cluster tables, figures, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from daskmeta.exceptions import DaskmetaError

__all__ = ["run_cbma", "ESTIMATORS"]

ESTIMATORS = ("ale", "mkda", "kda")

#: Corrected p-value of the tables and figures of corrected maps.
_ALPHA = 0.05


def _make_estimator(name: str, mask=None, fwhm=None, sample_size=None, r=None,
                    weighting=None):
    from daskmeta.estimators import ALE, KDA, MKDADensity

    if name == "ale":
        if fwhm is not None and sample_size is not None:
            raise DaskmetaError("give --fwhm or --sample-size, not both")
        kw = {}
        if fwhm is not None:
            kw["kernel__fwhm"] = float(fwhm)
        if sample_size is not None:
            kw["kernel__sample_size"] = float(sample_size)
        return ALE(mask=mask, **kw)
    kw = {} if r is None else {"kernel__r": float(r)}
    if name == "mkda":
        return MKDADensity(mask=mask, weighting=weighting, **kw)
    if name == "kda":
        return KDA(mask=mask, **kw)
    raise DaskmetaError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")


def run_cbma(estimator: str, dataset, out_dir, *, mask=None, fwhm=None, sample_size=None,
             r=None, weighting=None, fwe: str = "montecarlo", n_iters: int = 10000,
             voxel_thresh: float = 0.001, seed: int | None = None, prefix: str = "",
             select: str | None = None, label_threshold: float = 0.001, figures: bool = True,
             log=print) -> dict:
    """Fit a coordinate-based meta-analysis, correct it, and write everything to a folder.

    Parameters
    ----------
    estimator : {"ale", "mkda", "kda"}
    dataset : Dataset
    out_dir : path-like
        Created if needed. Receives ``{prefix}_{map}.nii.gz`` maps, ``clusters.tsv``,
        ``{map}.png`` figures and ``provenance.json``. The table of the corrected map lists
        the clusters (faces connectivity) of voxels with corrected p < 0.05 (read from the
        correction's p or logp map, not from its z map), with peaks in the uncorrected z;
        the table of ``z`` uses z > 3.09 (uncorrected p < 0.001).
    mask, fwhm, sample_size, r, weighting
        Estimator options (see :mod:`daskmeta.estimators`).
    fwe : {"montecarlo", "bonferroni", "none"}
        Family-wise error correction.
    n_iters, voxel_thresh, seed
        Monte Carlo options.
    prefix : str
        File name prefix of the maps.
    select : str, optional
        Label expression selecting experiments.
    label_threshold : float
        Label weight threshold of ``select`` (NiMARE's ``label_threshold``).
    figures : bool
        Write PNG figures.
    log : callable
        Receives progress lines.

    Returns
    -------
    dict
        ``result`` (the MetaResult) and the written ``paths``.
    """
    if fwe not in ("montecarlo", "bonferroni", "none"):
        raise DaskmetaError(f"fwe must be montecarlo, bonferroni or none; got {fwe!r}")
    est = _make_estimator(estimator, mask=mask, fwhm=fwhm, sample_size=sample_size, r=r,
                          weighting=weighting)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"fitting {type(est).__name__} on {dataset.n_experiments} experiments, "
        f"{dataset.n_foci} foci")
    result = est.fit(dataset, select=select, label_threshold=label_threshold)
    table_map = None
    if fwe != "none":
        from daskmeta.correct import FWECorrector

        if fwe == "montecarlo":
            log(f"Monte Carlo FWE correction: {n_iters} iterations, cluster-forming "
                f"p < {voxel_thresh}")
            corrector = FWECorrector(method="montecarlo", n_iters=n_iters,
                                     voxel_thresh=voxel_thresh, seed=seed)
            table_map = "z_desc-size_level-cluster_corr-FWE_method-montecarlo"
        else:
            corrector = FWECorrector(method="bonferroni")
            table_map = "z_corr-FWE_method-bonferroni"
        result = corrector.transform(result)
    paths = result.save_maps(out, prefix=prefix)
    tables = {}
    if table_map is not None:
        # Clusters that survive correction (corrected p < 0.05), with their peaks in the
        # uncorrected z map.
        tables[table_map] = result.get_table(table_map, alpha=_ALPHA, peak_map="z")
    tables["z"] = result.get_table("z", threshold=3.09)  # uncorrected p < 0.001
    rows = []
    for name, table in tables.items():
        table = table.copy()
        table.insert(0, "map", name)
        rows.append(table)
    import pandas as pd

    cluster_path = out / (f"{prefix}_clusters.tsv" if prefix else "clusters.tsv")
    pd.concat(rows, ignore_index=True).to_csv(cluster_path, sep="\t", index=False,
                                              float_format="%.6g")
    paths.append(cluster_path)
    if figures:
        from daskmeta.plotting import plot_map

        z = result.get_map("z", return_type="array")
        figures_ = [("z", z, 3.09, "z (uncorrected p < 0.001)")]
        if table_map:
            survives = result.significant(table_map, alpha=_ALPHA)
            figures_.append((f"z_{fwe}-FWE", np.where(survives, z, 0.0), 0.0,
                             f"z in clusters surviving FWE correction ({fwe})"))
        for fname, values, thr, title in figures_:
            png = out / (f"{prefix}_{fname}.png" if prefix else f"{fname}.png")
            thr = thr if np.any(values > thr) else None
            paths.append(plot_map(result.space, values, png, threshold=thr, title=title))
    prov = out / (f"{prefix}_provenance.json" if prefix else "provenance.json")
    result.save_provenance(prov)
    paths.append(prov)
    summary = {"n_clusters": {k: int(len(v)) for k, v in tables.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return {"result": result, "paths": paths, "tables": tables}
