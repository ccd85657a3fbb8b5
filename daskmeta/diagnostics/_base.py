"""What every cluster diagnostic shares (NiMARE 0.22.1's ``Diagnostics``): the clusters of a
target map, their tables and label maps, and the table of each experiment's contribution to
each cluster, which a subclass computes (:meth:`Diagnostics._contributions`).

Clusters are NiMARE's: :func:`nilearn.reporting.get_clusters_table` on the target map
(faces connectivity, ``target_threshold`` or 0, ``cluster_threshold`` voxels), with the
peaks of a cluster-level corrected target read from its uncorrected map, as NiMARE does.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from daskmeta.estimators.base import Estimator, non_negative
from daskmeta.estimators.pairwise import PairwiseCBMAEstimator
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.results import MetaResult

__all__ = ["DEFAULT_TARGET", "Diagnostics", "fitted_estimator", "table_names"]

#: NiMARE's default target: the cluster-size FWE-corrected z map of a Monte Carlo correction.
DEFAULT_TARGET = "z_desc-size_level-cluster_corr-FWE_method-montecarlo"
POSTAIL_LBL = "PositiveTail"
NEGTAIL_LBL = "NegativeTail"
_TAIL_OF_SIGN = {POSTAIL_LBL: "positive", NEGTAIL_LBL: "negative"}


def table_names(target_image: str, diag_name: str) -> dict:
    """NiMARE's names of a diagnostic's outputs for ``target_image``: ``clusters`` (the
    clusters table), ``counts`` (the contribution table's stem, ``_tail-<tail>`` added for
    one-tailed CBMA) and ``label`` (the label maps' stem, ``_tail-<tail>`` added)."""
    image_name = "_".join(target_image.split("_")[1:])
    image_name = f"_{image_name}" if image_name else image_name
    return {"clusters": f"{target_image}_tab-clust",
            "counts": f"{target_image}_diag-{diag_name}_tab-counts",
            "label": f"label{image_name}"}


def fitted_estimator(result, who: str):
    """The frozen estimator snapshot behind ``result``, which must be a coordinate-based
    fit (ALE, MKDADensity, KDA; pairwise MKDAChi2, ALESubtraction)."""
    from daskmeta.estimators.cbma import CBMAEstimator

    if not isinstance(result, MetaResult):
        raise DaskmetaError(f"{who}.transform expects a daskmeta MetaResult; got "
                            f"{type(result).__name__}")
    est = result.estimator
    if est is None:
        raise DaskmetaError(f"{who} needs the fitted estimator behind the result; this result "
                            "has none (results read back from files keep no estimator)")
    if not isinstance(est, CBMAEstimator) or not hasattr(est, "plan_"):
        raise DaskmetaError(f"{who} supports results of ALE, MKDADensity, KDA, MKDAChi2 and "
                            f"ALESubtraction fits; this result comes from "
                            f"{type(est).__name__}")
    want = result.attrs.get("input_hash")
    if want is not None and want != est.dataset_.fingerprint():
        raise DaskmetaError(f"the result's estimator snapshot does not match the result's "
                            f"input (a result built by hand from another fit?); {who} needs "
                            "the result its fit returned")
    return est


# -- nilearn's clusters, guarded as NiMARE guards them ---------------------------------------
def _pad(img):
    data = np.pad(np.asanyarray(img.dataobj), 1)
    affine = img.affine.copy()
    affine[:3, 3] -= img.affine[:3, :3] @ np.ones(3)
    return nib.Nifti1Image(data, affine)


def _clusters_table(img, threshold, cluster_threshold, two_sided, return_label_maps=False):
    import gc

    from nilearn.reporting import get_clusters_table

    data = np.asanyarray(img.dataobj)
    thr = 0 if threshold is None else abs(threshold)
    padded = bool((data > thr).all() or (data < -thr).all())
    # nilearn forces a full garbage collection per image read (half a second in a process
    # with many objects); the objects that exist now are not its garbage: freeze them.
    gc.freeze()
    try:
        out = get_clusters_table(_pad(img) if padded else img, threshold, cluster_threshold,
                                 two_sided=two_sided, return_label_maps=return_label_maps)
    finally:
        gc.unfreeze()
    if not (padded and return_label_maps):
        return out
    table, label_maps = out
    return table, [nib.Nifti1Image(np.asanyarray(m.dataobj)[1:-1, 1:-1, 1:-1], img.affine)
                   for m in label_maps]


def _peak_map_name(target_image: str) -> str:
    """The uncorrected map a cluster-level corrected target's peaks come from (NiMARE's
    rule): ``z_desc-size_level-cluster_corr-...`` -> ``z``."""
    name = target_image.split("_corr-", 1)[0].replace("_level-cluster", "")
    if "_desc-" not in name:
        return name
    prefix, rest = name.split("_desc-", 1)
    desc, sep, suffix = rest.partition("_")
    tail = f"_{suffix}" if sep else ""
    if desc in {"size", "mass"}:
        return prefix + tail
    for word in ("Size", "Mass", "size", "mass"):
        if desc.endswith(word):
            desc = desc[: -len(word)]
            break
    return prefix + tail if not desc else f"{prefix}_desc-{desc}{tail}"


class Diagnostics(Estimator):
    """Base class of the cluster diagnostics (NiMARE's ``Diagnostics``).

    Parameters
    ----------
    target_image : str
        The map whose clusters are characterised (default NiMARE's,
        ``z_desc-size_level-cluster_corr-FWE_method-montecarlo``).
    voxel_thresh : float, optional
        NiMARE's older name of ``target_threshold`` (give one of them).
    cluster_threshold : int, optional
        Smallest cluster, in voxels (None: no limit).
    display_second_group : bool
        Of a pairwise result (MKDAChi2, ALESubtraction), also characterise the negative
        tail's clusters by the second group's experiments (default: only the positive
        tail's, by the first group's; a one-tailed target is always characterised by its
        tail's group).
    n_cores : int
        Accepted for NiMARE compatibility; the work runs on the active Dask client.
    target_threshold : float, optional
        Threshold of ``target_image`` before clusters are formed (default 0: every non-zero
        voxel of a corrected map).
    """

    _fitted_marker = "_never"
    _parameter_constraints = {
        "target_image": (lambda v: isinstance(v, str) and bool(v), "a map name"),
        "cluster_threshold": (lambda v: v is None or non_negative(v),
                              "None or a number of voxels >= 0"),
        "voxel_thresh": (lambda v: v is None or non_negative(v), "None or a number >= 0"),
        "target_threshold": (lambda v: v is None or non_negative(v), "None or a number >= 0"),
        "display_second_group": (lambda v: isinstance(v, bool | np.bool_), "True or False"),
    }

    def __init__(self, target_image=DEFAULT_TARGET, voxel_thresh=None, cluster_threshold=None,
                 display_second_group=False, n_cores=1, target_threshold=None):
        self.target_image = target_image
        self.voxel_thresh = voxel_thresh
        self.cluster_threshold = cluster_threshold
        self.display_second_group = display_second_group
        self.n_cores = n_cores
        self.target_threshold = target_threshold

    def _threshold(self) -> float:
        if self.voxel_thresh is not None and self.target_threshold is not None:
            raise DaskmetaError(f"{type(self).__name__}: give target_threshold or its older "
                                "name voxel_thresh, not both")
        value = self.target_threshold if self.voxel_thresh is None else self.voxel_thresh
        return 0.0 if value is None else float(value)

    def transform(self, result: MetaResult) -> MetaResult:
        """Characterise the clusters of ``target_image``: a copy of ``result`` with NiMARE's
        tables and label maps added.

        Parameters
        ----------
        result : MetaResult
            From an ALE, MKDADensity or KDA fit, or a pairwise MKDAChi2 or ALESubtraction
            fit (from Datasets or a Collection), usually corrected by
            :class:`~daskmeta.correct.FWECorrector`.

        Returns
        -------
        MetaResult
            With tables ``<target>_tab-clust`` (nilearn's clusters table, ``Cluster ID``
            prefixed by ``PositiveTail``/``NegativeTail``) and
            ``<target>_diag-<Name>_tab-counts_tail-<tail>`` (one row per experiment, ``id``
            then one column per cluster, ``PositiveTail 1``, ...), and the label maps
            ``label_<target without its first entity>_tail-<tail>``. A target without
            clusters gives the (empty) clusters table only, with a warning. Of a pairwise
            result (NiMARE's rule), the positive tail's table lists the first group's
            experiments and the negative tail's the second group's (only with
            ``display_second_group`` when the target has both tails); tables are per tail.

        Raises
        ------
        DaskmetaError
            If the target map is missing, or the result has no fitted ALE/MKDA/KDA
            estimator behind it.
        """
        self._validate_params()
        who = type(self).__name__
        threshold = self._threshold()
        est = fitted_estimator(result, who)
        if self.target_image not in result.maps:
            corrected = [n for n in result.map_names if n.startswith("z_") and "_corr-" in n]
            hint = ", ".join(corrected) or (
                "none (correct the result first, e.g. with FWECorrector(method='montecarlo'))")
            raise DaskmetaError(f"{who}: the result has no map {self.target_image!r} to "
                                f"diagnose; corrected z maps here: {hint}")
        space = result.space
        target = np.asarray(result.get_map(self.target_image, "array"), dtype=np.float32)
        target_img = space.to_img(target, dtype=np.float32)
        two_sided = bool((target < 0).any())
        cluster_threshold = 0 if self.cluster_threshold is None else self.cluster_threshold
        table, label_maps = _clusters_table(target_img, threshold, cluster_threshold,
                                            two_sided, return_label_maps=True)
        if (not table.empty and label_maps and "_level-cluster" in self.target_image
                and "_corr-" in self.target_image):
            table = self._peak_table(result, label_maps, two_sided)
        names = table_names(self.target_image, who)
        out = result.copy()
        if table.empty:
            warnings.warn(f"{who}: no clusters in {self.target_image!r} (threshold "
                          f"{threshold:g}); no contribution table", DaskmetaWarning,
                          stacklevel=2)
            out.add_tables({names["clusters"]: table})
            return out
        table = table.astype({"Cluster ID": "str"})
        table["Cluster ID"] = [f"{POSTAIL_LBL if peak > 0 else NEGTAIL_LBL} {cid}" for cid, peak
                               in zip(table["Cluster ID"], table["Peak Stat"], strict=True)]
        if len(label_maps) == 2:
            signs = [POSTAIL_LBL, NEGTAIL_LBL]
        else:
            peaks = table["Peak Stat"].astype(float)
            signs = [NEGTAIL_LBL if (peaks < 0).any() and not (peaks > 0).any()
                     else POSTAIL_LBL]
        labels = [np.rint(np.asanyarray(m.dataobj)[space.mask]).astype(np.int32)
                  for m in label_maps]
        maps = {f"{names['label']}_tail-{_TAIL_OF_SIGN[s]}": lab
                for s, lab in zip(signs, labels, strict=True)}
        cluster_ids = [np.unique(lab[lab > 0]) for lab in labels]
        out_tables = {names["clusters"]: table}
        out.add_maps(maps)
        if isinstance(est, PairwiseCBMAEstimator):
            out_tables.update(self._pair_tables(result, est, names["counts"], signs, labels,
                                                cluster_ids))
            out.add_tables(out_tables)
            return out
        values = self._contributions(result, est, labels, cluster_ids)
        ids = list(est.dataset_.ids)
        tables = []
        for sign, cids, vals in zip(signs, cluster_ids, values, strict=True):
            frame = pd.DataFrame(vals, columns=[f"{sign} {int(c)}" for c in cids])
            frame.insert(0, "id", ids)
            tables.append(frame)
        if len(tables) == 2:  # both tails of one group: one table (NiMARE's merge)
            out_tables[names["counts"]] = tables[0].merge(tables[1], how="outer").fillna(0)
        else:
            out_tables[f"{names['counts']}_tail-{_TAIL_OF_SIGN[signs[0]]}"] = tables[0]
        out.add_tables(out_tables)
        return out

    def _pair_tables(self, result, est, stem, signs, labels, cluster_ids) -> dict:
        """NiMARE's tables of a pairwise result: the positive tail's clusters characterised
        by the first group's experiments, the negative tail's by the second group's; of a
        two-tailed target only the positive tail unless ``display_second_group``. One table
        per tail, ``<stem>_tail-<tail>`` (never merged)."""
        tails = list(zip(signs, labels, cluster_ids, strict=True))
        if len(tails) == 2 and not self.display_second_group:
            tails = tails[:1]
        out = {}
        for sign, lab, cids in tails:
            group = 0 if sign == POSTAIL_LBL else 1
            members = np.flatnonzero(est.groups_[group])
            values = self._pair_contributions(result, est, group, members, lab, cids)
            frame = pd.DataFrame(values, columns=[f"{sign} {int(c)}" for c in cids])
            frame.insert(0, "id", list(np.asarray(est.dataset_.ids)[members]))
            out[f"{stem}_tail-{_TAIL_OF_SIGN[sign]}"] = frame
        return out

    def _peak_table(self, result, label_maps, two_sided):
        """NiMARE's table of a cluster-level corrected target: clusters of the uncorrected
        map inside the target's clusters, with their peaks."""
        name = _peak_map_name(self.target_image)
        if "_level-cluster" in name or name not in result.maps:
            raise DaskmetaError(
                f"{type(self).__name__}: the peaks of {self.target_image!r} come from its "
                f"uncorrected map {name!r}, which the result lacks; available: "
                f"{', '.join(result.map_names)}")
        peak = np.asarray(result.get_map(name, "array"), dtype=np.float32)
        support = np.zeros(result.space.shape, dtype=bool)
        for m in label_maps:
            support |= np.asanyarray(m.dataobj) > 0
        vol = np.zeros(result.space.shape, dtype=np.float32)
        vol[result.space.mask] = peak
        vol = np.where(support, vol, 0).astype(np.float32)
        return _clusters_table(nib.Nifti1Image(vol, result.space.affine), 0, 0,
                               two_sided or bool((vol < 0).any()))

    def _pair_contributions(self, result, est, group, members, labels, cluster_ids):
        """For a pairwise result: an ``(len(members), clusters)`` array, each experiment of
        group ``group`` (0 or 1; ``members`` its positions in ``est.dataset_``) against each
        cluster of one tail (``labels`` its in-mask cluster ids, ``cluster_ids`` in column
        order)."""
        raise NotImplementedError

    def _contributions(self, result, est, labels, cluster_ids) -> list:
        """Per tail, an ``(experiments, clusters)`` array: each experiment's contribution to
        each cluster (``labels[t]`` an in-mask vector of cluster ids of tail ``t``,
        ``cluster_ids[t]`` the ids in column order). Experiments in ``est.dataset_`` order."""
        raise NotImplementedError
