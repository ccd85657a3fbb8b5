"""End-to-end workflows: fit, correct, and write maps, cluster tables, figures, provenance.

:func:`prepare_cbma` checks everything a run needs (options, the selection, the kernel
against a collection's, the foci the mask keeps, the output names) without computing or
writing anything; :meth:`CBMAJob.run` fits, corrects and writes; :func:`run_cbma` does
both.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.results import atomic_write, output_path

__all__ = ["run_cbma", "prepare_cbma", "CBMAJob", "ESTIMATORS", "check_prefix",
           "check_diagnostics", "input_provenance", "MAX_KERNEL_MM"]

ESTIMATORS = ("ale", "mkda", "kda")

#: Corrected p-value of the tables and figures of corrected maps.
_ALPHA = 0.05
#: Largest ALE FWHM and (M)KDA radius accepted, in mm: wider kernels cover the whole brain
#: (and a radius of 1e9 mm would need more memory than exists).
MAX_KERNEL_MM = 100.0
#: NiMARE's CBMA workflow's defaults for its diagnostics: the corrected z map thresholded at
#: 1.65 (``voxel_thresh``), clusters of at least 10 voxels (``cluster_threshold``).
DIAG_TARGET_THRESHOLD = 1.65
DIAG_CLUSTER_THRESHOLD = 10
#: A prefix: a letter, digit or underscore, then those, '.', '+', '=' or '-'; no '..'.
_PREFIX = re.compile(r"\w[\w.+=-]*")
_MAX_PREFIX = 100


def check_prefix(prefix, what: str = "prefix") -> str:
    """A file-name prefix checked to keep every output inside the output folder.

    Parameters
    ----------
    prefix : str
        ``""`` for none; else a plain file-name prefix: letters, digits, ``_``, ``.``,
        ``+``, ``=``, ``-`` (starting with a letter, digit or ``_``), no ``..``, at most 100
        characters.
    what : str
        The name of the option in the error message.

    Raises
    ------
    DaskmetaError
        Naming the option, the value and what is allowed.
    """
    if prefix == "":
        return ""
    if (not isinstance(prefix, str) or len(prefix) > _MAX_PREFIX
            or not _PREFIX.fullmatch(prefix) or ".." in prefix):
        shown = repr(prefix) if len(repr(prefix)) <= 60 else repr(prefix)[:57] + "..."
        raise DaskmetaError(
            f"{what} must be a plain file-name prefix (letters, digits, '_', '.', '+', '=', "
            f"'-', starting with a letter, digit or '_'; no path separators, no '..'; at "
            f"most {_MAX_PREFIX} characters); got {shown}"
        )
    return prefix


def _positive_mm(value, name: str, limit: float = MAX_KERNEL_MM):
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or not 0 < value <= limit):
        raise DaskmetaError(f"{name} must be a number of mm in (0, {limit:g}]; got {value!r}")
    return float(value)


def _make_estimator(name: str, mask=None, fwhm=None, sample_size=None, r=None,
                    weighting=None, mask_margin=None):
    from daskmeta.estimators import ALE, KDA, MKDADensity

    extra = {} if mask_margin is None else {"mask_margin": mask_margin}
    if name == "ale":
        if fwhm is not None and sample_size is not None:
            raise DaskmetaError("give --fwhm or --sample-size, not both")
        if r is not None:
            raise DaskmetaError("a radius applies to mkda and kda, not ale (use --fwhm or "
                                "--sample-size)")
        kw = {}
        if fwhm is not None:
            kw["kernel__fwhm"] = _positive_mm(fwhm, "fwhm")
        if sample_size is not None:
            if (isinstance(sample_size, bool) or not isinstance(sample_size, numbers.Real)
                    or not math.isfinite(sample_size) or sample_size <= 0):
                raise DaskmetaError(f"sample_size must be a positive number; got "
                                    f"{sample_size!r}")
            kw["kernel__sample_size"] = float(sample_size)
        return ALE(mask=mask, **kw, **extra)
    if name not in ESTIMATORS:
        raise DaskmetaError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    if fwhm is not None or sample_size is not None:
        raise DaskmetaError(f"fwhm and sample_size apply to ale, not {name} (use a radius)")
    kw = {} if r is None else {"kernel__r": _positive_mm(r, "r")}
    if name == "mkda":
        return MKDADensity(mask=mask, weighting=weighting, **kw, **extra)
    if weighting is not None:
        raise DaskmetaError(f"weighting applies to mkda, not {name}")
    return KDA(mask=mask, **kw, **extra)


def _check_collection(est, name: str, collection, mask, fwhm, sample_size, r) -> None:
    """The estimator's kernel options against the kernel a collection's maps were built
    with (the fit would refuse a mismatch only after the cluster started)."""
    kernel = collection.kernel
    want = est._kernel_cls
    if type(kernel) is not want:
        raise DaskmetaError(
            f"the collection {collection.path} holds MA maps of {kernel!r}; {name} needs "
            f"{want.__name__} maps (build one with: daskmeta ingest SOURCE --kernel {name} "
            "--store PATH)"
        )
    stored = kernel.get_params()
    given = {"fwhm": fwhm, "sample_size": sample_size, "r": r}
    option = {"fwhm": "--fwhm", "sample_size": "--sample-size", "r": "--radius"}
    for key, value in given.items():
        if value is None:
            continue
        if key not in stored or stored[key] is None or float(stored[key]) != float(value):
            raise DaskmetaError(
                f"{option[key]} {value:g} does not match the kernel of the collection "
                f"{collection.path} ({kernel!r}); drop {option[key]} to use the store's "
                "kernel, or build a store with this kernel"
            )
    if mask is not None:
        from daskmeta.space import resolve_space

        if resolve_space(mask) != collection.space:
            raise DaskmetaError(
                f"--mask {mask} is not the mask the collection {collection.path} was built "
                f"on ({collection.attrs.get('mask_source')}); drop --mask or build a store "
                "on this mask"
            )


def _file_sha256(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_provenance(path) -> dict:
    """The input's path and sha256, for provenance.

    A file is hashed whole; a collection store by its ``zarr.json`` (whose attributes record
    the sha256 of the files it was built from and its dataset's fingerprint; the maps
    themselves are not read); another directory by a manifest of its files (each file's
    relative path and sha256, in sorted order).

    Returns
    -------
    dict
        ``input_path`` (absolute), ``input_sha256`` and ``input_sha256_of`` (what was
        hashed).
    """
    from daskmeta import _fs

    if _fs.is_remote(path):  # a collection store on object storage
        location = _fs.as_location(path)
        return {"input_path": str(location),
                "input_sha256": hashlib.sha256((location / "zarr.json").read_bytes()
                                               ).hexdigest(),
                "input_sha256_of": "the collection store's zarr.json (its provenance)"}
    p = Path(path).resolve()
    out = {"input_path": str(p)}
    if p.is_file():
        out.update(input_sha256=_file_sha256(p), input_sha256_of="the file")
    elif (p / "zarr.json").is_file():
        out.update(input_sha256=_file_sha256(p / "zarr.json"),
                   input_sha256_of="the collection store's zarr.json (its provenance)")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(p).as_posix()}\t{_file_sha256(f)}\n".encode())
        out.update(input_sha256=h.hexdigest(),
                   input_sha256_of=f"a manifest of the directory's {len(files)} files "
                                   "(relative path and sha256 of each)")
    return out


@dataclass
class CBMAJob:
    """A checked coordinate-based meta-analysis, ready to :meth:`run`.

    Made by :func:`prepare_cbma`; nothing has been computed or written yet.
    """

    estimator: object
    data: object
    out: Path
    fwe: str
    corrector: object
    prefix: str
    select: object
    label_threshold: float
    figures: bool
    n_experiments: int
    n_experiments_input: int
    n_foci: int
    n_foci_dropped: int
    margin: float
    provenance: dict = field(default_factory=dict)
    diagnostics: tuple = ()
    diag_threshold: float = DIAG_TARGET_THRESHOLD
    diag_cluster_threshold: int = DIAG_CLUSTER_THRESHOLD
    report: bool = False
    atlas: object = None

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def describe(self) -> str:
        """What will be fitted, in words, with the one number of experiments that the log,
        the result and its provenance all give: those analysed, after the selection."""
        est = type(self.estimator).__name__
        n, total = self.n_experiments, self.n_experiments_input
        if self.select is None:
            how = "" if n == total else f" (of {total} in the input, those with foci)"
        elif isinstance(self.select, str):
            how = (f" (those of {total} with foci selected by {self.select!r}, label "
                   f"threshold {self.label_threshold:g})")
        else:
            how = f" (those of {total} with foci selected by id)"
        dropped = (f"; {self.n_foci_dropped} more lie more than {self.margin:g} mm outside "
                   "the mask and are dropped" if self.n_foci_dropped else "")
        return f"fitting {est} on {n} experiments{how}, {self.n_foci} foci{dropped}"

    def run(self, log=print, drawer=None) -> dict:
        """Fit, correct, and write maps, cluster tables, figures, provenance and summary
        into :attr:`out` (each file atomically).

        Parameters
        ----------
        log : callable
            Receives progress lines.
        drawer : optional
            Where figures are drawn (:func:`daskmeta.reports._render.figure_drawer`: a
            second process started before the fit draws them while this one works);
            default: in this process.

        Returns
        -------
        dict
            ``result`` (the MetaResult), the written ``paths`` and the cluster ``tables``.
        """
        import pandas as pd

        from daskmeta.reports._render import FigureDrawer

        log(self.describe())
        result = self.estimator.fit(self.data, select=self.select,
                                    label_threshold=self.label_threshold)
        out = self.out
        # Figures are asked for as soon as their map exists (the uncorrected z now): a
        # FigureProcess draws them while this process corrects, writes files and computes
        # the report's tables.
        drawer = drawer or FigureDrawer()
        drawn = []  # the glass-brain figures (path, pending PNG, title), which the report shows

        def glass_brain(fname, values, thr, title):
            png = output_path(out, self._name(f"{fname}.png"))
            thr = thr if np.any(values > thr) else None
            drawn.append((png, drawer.submit(
                "glass_brain", img=result.space.to_img(np.asarray(values, np.float32)),
                threshold=thr, title=title, dpi=110), title))

        if self.figures:
            z = result.get_map("z", return_type="array")
            glass_brain("z", z, 3.09, "z (uncorrected p < 0.001)")
        table_map = None
        if self.corrector is not None:
            if self.fwe == "montecarlo":
                c = self.corrector
                log(f"Monte Carlo FWE correction: {c.n_iters} iterations, cluster-forming "
                    f"p < {c.voxel_thresh}")
                table_map = "z_desc-size_level-cluster_corr-FWE_method-montecarlo"
            else:
                table_map = "z_corr-FWE_method-bonferroni"
            result = self.corrector.transform(result)
        result.attrs.update({
            **self.provenance,
            "n_experiments_input": self.n_experiments_input,
            "n_foci_dropped": self.n_foci_dropped,
            "prefix": self.prefix,
        })
        if isinstance(self.select, str):
            result.attrs.setdefault("label_threshold", float(self.label_threshold))
        out.mkdir(parents=True, exist_ok=True)
        diag_tables = {}
        if self.diagnostics:
            result = self._diagnose(result, log)
            diag_tables = dict(result.tables)
        if self.figures and table_map:
            survives = result.significant(table_map, alpha=_ALPHA)
            glass_brain(f"z_{self.fwe}-FWE", np.where(survives, z, 0.0), 0.0,
                        f"z in clusters surviving FWE correction ({self.fwe})")
        report = None
        if self.report:
            from daskmeta.reports import ReportDraft

            report = ReportDraft(result, out, atlas=self.atlas,
                                 filename=self._name("report.html"),
                                 glass_brains=[(fig, title) for _, fig, title in drawn] or None,
                                 drawer=drawer)
        paths = result.save_maps(out, prefix=self.prefix)
        paths += result.save_tables(out, prefix=self.prefix)
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
        clusters = pd.concat(rows, ignore_index=True)
        cluster_path = output_path(out, self._name("clusters.tsv"))
        atomic_write(cluster_path, lambda tmp: clusters.to_csv(
            tmp, sep="\t", index=False, float_format="%.6g"))
        paths.append(cluster_path)
        figure_paths = len(paths)
        prov = output_path(out, self._name("provenance.json"))
        result.save_provenance(prov)
        paths.append(prov)
        summary = {"n_experiments": int(result.attrs.get("n_experiments", self.n_experiments)),
                   "n_foci": int(result.attrs.get("n_foci", self.n_foci)),
                   "n_clusters": {k: int(len(v)) for k, v in tables.items()},
                   # What this run wrote, for readers of the folder (daskmeta report).
                   "maps": result.map_names,
                   "nulls": bool(result.null_distributions)}
        if self.diagnostics:
            summary["diagnostics"] = {k: int(len(v)) for k, v in diag_tables.items()}
        summary_path = output_path(out, self._name("summary.json"))
        text = json.dumps(summary, indent=1)
        atomic_write(summary_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        paths.append(summary_path)
        if result.null_distributions:
            # For `daskmeta report`, which reads the folder back (reports.load_result).
            nulls = output_path(out, self._name("nulls.npz"))
            atomic_write(nulls, lambda tmp: np.savez_compressed(
                tmp, **{k: np.asarray(v) for k, v in result.null_distributions.items()}))
            paths.append(nulls)
        if report is not None:
            log("writing the HTML report")
            paths.append(report.write())
        for png, fig, _ in drawn:
            atomic_write(png, lambda tmp, f=fig: tmp.write_bytes(f.result()))
        paths[figure_paths:figure_paths] = [png for png, _, _ in drawn]
        return {"result": result, "paths": paths, "tables": tables}

    def _diagnose(self, result, log):
        """NiMARE's workflow: each diagnostic on the corrected z map(s) (the cluster-mass
        map of a Monte Carlo correction), thresholded at :attr:`diag_threshold` with
        clusters of at least :attr:`diag_cluster_threshold` voxels."""
        import warnings

        from daskmeta.diagnostics import DIAGNOSTICS
        from daskmeta.exceptions import DaskmetaWarning

        mods = ["_desc-mass", "_corr-"] if self.fwe == "montecarlo" else ["_corr-"]
        targets = [n for n in result.map_names
                   if n.startswith("z_") and all(m in n for m in mods)]
        if not targets:
            raise DaskmetaError(f"no corrected z map ({' and '.join(mods)}) to diagnose; "
                                f"maps: {', '.join(result.map_names)}")
        for target in targets:
            for name in self.diagnostics:
                diag = DIAGNOSTICS[name](target_image=target,
                                         target_threshold=self.diag_threshold,
                                         cluster_threshold=self.diag_cluster_threshold)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DaskmetaWarning)
                    result = diag.transform(result)
                for w in caught:
                    log(str(w.message))
                for table in [t for t in result.tables if t.startswith(
                        f"{target}_diag-{type(diag).__name__}_tab-counts")]:
                    shape = result.tables[table].shape
                    log(f"{table}: {shape[0]} experiments x {shape[1] - 1} clusters")
        return result


def prepare_cbma(estimator: str, data, out_dir, *, mask=None, fwhm=None, sample_size=None,
                 r=None, weighting=None, fwe: str = "montecarlo", n_iters: int = 10000,
                 voxel_thresh: float = 0.001, seed: int | None = None, prefix: str = "",
                 select=None, label_threshold: float = 0.001, figures: bool = True,
                 provenance: dict | None = None, diagnostics=(),
                 diag_threshold: float = DIAG_TARGET_THRESHOLD,
                 diag_cluster_threshold: int = DIAG_CLUSTER_THRESHOLD, report: bool = False,
                 atlas=None, atlas_labels=None) -> CBMAJob:
    """Check a coordinate-based meta-analysis without computing or writing anything.

    Takes the arguments of :func:`run_cbma` (but ``log``); the atlas and its labels are
    read (and resampled to the mask) here, so a bad one fails before any work.

    Returns
    -------
    CBMAJob

    Raises
    ------
    DaskmetaError
        For a bad option (naming it, its value and what is allowed), a selection that is
        empty or names unknown labels, kernel options that differ from a collection's
        kernel, an output folder that is a file, or when the mask keeps none of the
        selected experiments' foci.
    """
    from daskmeta._pass import has_foci, selection_rows
    from daskmeta.collection import Collection
    from daskmeta.correct import FWECorrector
    from daskmeta.dataset import Dataset
    from daskmeta.space import resolve_space

    if fwe not in ("montecarlo", "bonferroni", "none"):
        raise DaskmetaError(f"fwe must be montecarlo, bonferroni or none; got {fwe!r}")
    diagnostics = check_diagnostics(diagnostics, fwe, diag_threshold, diag_cluster_threshold)
    prefix = check_prefix(prefix)
    if (isinstance(label_threshold, bool) or not isinstance(label_threshold, numbers.Real)
            or not math.isfinite(label_threshold)):
        raise DaskmetaError(f"label_threshold must be a finite number; got {label_threshold!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DaskmetaError(f"the output folder {str(out)!r} exists and is not a directory")
    corrector = None
    if fwe == "montecarlo":
        corrector = FWECorrector(method="montecarlo", n_iters=n_iters,
                                 voxel_thresh=voxel_thresh, seed=seed)
    elif fwe == "bonferroni":
        corrector = FWECorrector(method="bonferroni")
    if corrector is not None:
        corrector._validate()
    collection = data if isinstance(data, Collection) else None
    if collection is None and not isinstance(data, Dataset):
        raise DaskmetaError(f"run_cbma expects a daskmeta Dataset or Collection; got "
                            f"{type(data).__name__}")
    est = _make_estimator(estimator, mask=None if collection is not None else mask,
                          fwhm=fwhm, sample_size=sample_size, r=r, weighting=weighting,
                          mask_margin=None if collection is None else collection.mask_margin)
    if collection is not None:
        _check_collection(est, estimator, collection, mask, fwhm, sample_size, r)
        dataset, space, margin = collection.dataset, collection.space, collection.mask_margin
    else:
        dataset, space, margin = data, resolve_space(mask), float(est.mask_margin)
    try:
        rows = selection_rows(dataset, select, label_threshold, has_foci(dataset))
    except RecursionError:
        raise DaskmetaError(f"the label expression is nested too deeply: "
                            f"{str(select)[:40]}...") from None
    if len(rows) == 0:
        raise DatasetError(f"{getattr(dataset, 'name', None) or 'the input'} has no "
                           "experiment with foci")
    selected = dataset if len(rows) == dataset.n_experiments else dataset.slice(
        dataset.experiments["id"].to_numpy()[rows])
    if estimator == "ale" and collection is None and fwhm is None and sample_size is None:
        from daskmeta.kernels import ALEKernel

        ALEKernel().experiment_fwhm(selected)  # raises when sample sizes are missing
    xyz = selected.foci[["x", "y", "z"]].to_numpy(dtype=float)
    n_foci = len(xyz)
    kept = int(space.near_mask(space.mm_to_ijk(xyz), margin).sum()) if n_foci else 0
    if kept == 0:
        raise DatasetError(
            f"all {n_foci} foci of the {len(rows)} experiments to analyse lie more than "
            f"{margin:g} mm outside the mask (mask_margin={margin:g}) and would be dropped: "
            "nothing to analyse (are the coordinates MNI or Talairach mm? is the mask right?)"
        )
    if not report and (atlas is not None or atlas_labels is not None):
        raise DaskmetaError("an atlas labels the report's cluster tables: it needs the report")
    atlas_obj = None
    if atlas is not None or atlas_labels is not None:
        from daskmeta.reports import Atlas

        if atlas is None or atlas_labels is None:
            raise DaskmetaError("give an atlas image and its labels together (--atlas and "
                                "--atlas-labels)")
        atlas_obj = Atlas(atlas, atlas_labels, space)
    return CBMAJob(estimator=est, data=data, out=out, fwe=fwe, corrector=corrector,
                   prefix=prefix, select=select, label_threshold=float(label_threshold),
                   figures=bool(figures), n_experiments=len(rows),
                   n_experiments_input=dataset.n_experiments, n_foci=kept,
                   n_foci_dropped=n_foci - kept, margin=margin, provenance=dict(provenance or {}),
                   diagnostics=diagnostics, diag_threshold=float(diag_threshold),
                   diag_cluster_threshold=int(diag_cluster_threshold),
                   report=bool(report), atlas=atlas_obj)


def check_diagnostics(diagnostics, fwe: str, threshold, cluster_threshold) -> tuple:
    """The diagnostics to run (names of :data:`daskmeta.diagnostics.DIAGNOSTICS`, each
    once, in order), checked: known names, a correction to give them a corrected map, and
    a threshold >= 0 and a whole number of voxels >= 0."""
    from daskmeta.diagnostics import DIAGNOSTICS

    if isinstance(diagnostics, str):
        diagnostics = [diagnostics]
    names = []
    for item in diagnostics or ():
        for name in str(item).split(","):
            name = name.strip().lower()
            if name not in DIAGNOSTICS:
                raise DaskmetaError(f"unknown diagnostic {name!r}; allowed: "
                                    f"{', '.join(DIAGNOSTICS)}")
            if name not in names:
                names.append(name)
    if names and fwe == "none":
        raise DaskmetaError("diagnostics characterise the clusters of a corrected map; with "
                            "fwe='none' there is none (use montecarlo or bonferroni)")
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not (math.isfinite(threshold) and threshold >= 0)):
        raise DaskmetaError(f"the diagnostics' target threshold must be a number >= 0; got "
                            f"{threshold!r}")
    if (isinstance(cluster_threshold, bool) or not isinstance(cluster_threshold, numbers.Integral)
            or cluster_threshold < 0):
        raise DaskmetaError(f"the diagnostics' cluster threshold must be a whole number of "
                            f"voxels >= 0; got {cluster_threshold!r}")
    return tuple(names)


def run_cbma(estimator: str, dataset, out_dir, *, mask=None, fwhm=None, sample_size=None,
             r=None, weighting=None, fwe: str = "montecarlo", n_iters: int = 10000,
             voxel_thresh: float = 0.001, seed: int | None = None, prefix: str = "",
             select=None, label_threshold: float = 0.001, figures: bool = True,
             provenance: dict | None = None, diagnostics=(),
             diag_threshold: float = DIAG_TARGET_THRESHOLD,
             diag_cluster_threshold: int = DIAG_CLUSTER_THRESHOLD, report: bool = False,
             atlas=None, atlas_labels=None, log=print) -> dict:
    """Fit a coordinate-based meta-analysis, correct it, and write everything to a folder.

    Everything is checked first (:func:`prepare_cbma`): a bad option, an empty selection or
    a mask that keeps no focus fails before anything is computed or written.

    Parameters
    ----------
    estimator : {"ale", "mkda", "kda"}
    dataset : Dataset or Collection
        The experiments, or a collection store of their MA maps
        (:meth:`daskmeta.Collection.open`; its kernel, mask and mask margin are used, and
        kernel options must match them).
    out_dir : path-like
        Created if needed. Receives ``{prefix}_{map}.nii.gz`` maps, ``clusters.tsv``,
        ``{map}.png`` figures, ``provenance.json`` and ``summary.json`` (all with the
        prefix), ``nulls.npz`` (the null distributions) and, with ``report``,
        ``report.html``, each written atomically. The table of the corrected map lists the
        clusters (faces connectivity) of voxels with corrected p < 0.05 (read from the
        correction's p or logp map, not from its z map), with peaks in the uncorrected z;
        the table of ``z`` uses z > 3.09 (uncorrected p < 0.001).
    mask, fwhm, sample_size, r, weighting
        Estimator options (see :mod:`daskmeta.estimators`); ``fwhm`` and ``r`` in
        (0, 100] mm.
    fwe : {"montecarlo", "bonferroni", "none"}
        Family-wise error correction.
    n_iters, voxel_thresh, seed
        Monte Carlo options.
    prefix : str
        File name prefix of every output (see :func:`check_prefix`).
    select : str or sequence of str, optional
        Label expression (or experiment ids) selecting experiments.
    label_threshold : float
        Label weight threshold of ``select`` (NiMARE's ``label_threshold``).
    figures : bool
        Write PNG figures.
    provenance : dict, optional
        Attributes added to the result and its ``provenance.json`` (e.g.
        :func:`input_provenance` and the command line).
    diagnostics : sequence of {"jackknife", "focuscounter"}
        Diagnostics of the corrected z map(s), as NiMARE's CBMA workflow runs them: on the
        cluster-mass map of a Monte Carlo correction (every corrected z map otherwise),
        thresholded at ``diag_threshold`` (1.65) with clusters of at least
        ``diag_cluster_threshold`` voxels (10). Their tables are written as
        ``{prefix}_{name}.tsv``, their label maps as maps.
    diag_threshold, diag_cluster_threshold
        See ``diagnostics`` (NiMARE's workflow's ``voxel_thresh`` and
        ``cluster_threshold``).
    report : bool
        Also write the HTML report ``{prefix}_report.html`` (:mod:`daskmeta.reports`).
    atlas, atlas_labels : optional
        An atlas image and its region names, to label the report's cluster tables (see
        :class:`daskmeta.reports.Atlas`).
    log : callable
        Receives progress lines.

    Returns
    -------
    dict
        ``result`` (the MetaResult), the written ``paths`` and the cluster ``tables``.
    """
    from daskmeta.reports._render import figure_drawer

    job = prepare_cbma(estimator, dataset, out_dir, mask=mask, fwhm=fwhm,
                       sample_size=sample_size, r=r, weighting=weighting, fwe=fwe,
                       n_iters=n_iters, voxel_thresh=voxel_thresh, seed=seed, prefix=prefix,
                       select=select, label_threshold=label_threshold, figures=figures,
                       provenance=provenance, diagnostics=diagnostics,
                       diag_threshold=diag_threshold,
                       diag_cluster_threshold=diag_cluster_threshold, report=report,
                       atlas=atlas, atlas_labels=atlas_labels)
    with figure_drawer(job.figures or job.report) as drawer:
        return job.run(log=log, drawer=drawer)
