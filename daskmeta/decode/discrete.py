"""Decoding selections of studies and regions (NiMARE's ``nimare.decode.discrete``).

:class:`NeurosynthDecoder` and :class:`BrainMapDecoder` compare the labels of a selection of
studies (e.g. those reporting a focus in a region) with the rest; :class:`ROIAssociationDecoder`
correlates each study's mean modeled activation in a region with every label's weights. All
work from a Collection or a Dataset, with NiMARE 0.22.1's statistics and column names, as
vectorized sparse algebra over every label at once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import binom

from daskmeta._pass import has_foci
from daskmeta._stats import clip_p, nlogp_to_z
from daskmeta.correct import nlogp_bonferroni, nlogp_fdr
from daskmeta.decode.labels import select_labels
from daskmeta.estimators import _chi2
from daskmeta.estimators.base import Estimator, non_negative, one_of
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning

__all__ = ["BrainMapDecoder", "NeurosynthDecoder", "ROIAssociationDecoder"]


def _labels_ok(value) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))


def _dataset_of(data, who: str):
    from daskmeta.collection import Collection
    from daskmeta.dataset import Dataset

    if isinstance(data, Collection):
        return data.dataset, data
    if isinstance(data, Dataset):
        return data, None
    raise DaskmetaError(f"{who}.fit expects a daskmeta Collection or Dataset; got "
                        f"{type(data).__name__}")


def _correct(nlogp, correction):
    if correction is None:
        return nlogp
    if correction in ("bh", "by"):
        return nlogp_fdr(nlogp, method=correction)
    return nlogp_bonferroni(nlogp)


class _SelectionDecoder(Estimator):
    """Shared fit and id handling of the decoders of a selection of studies."""

    _fitted_marker = "selection_"
    _parameter_constraints = {
        "labels": (_labels_ok, "None, a vocabulary name or a list of label names"),
        "frequency_threshold": (lambda v: non_negative(v) and v > 0, "a number > 0"),
        "u": (lambda v: non_negative(v) and v <= 1, "a number in [0, 1]"),
        "correction": (one_of(None, "bh", "by", "bonferroni"),
                       "one of None, 'bh', 'by', 'bonferroni'"),
    }

    def fit(self, data, label_matrix=None, label_names=None):
        """Select the labels (those holding for at least one study with foci).

        Parameters
        ----------
        data : Collection or Dataset
        label_matrix, label_names : optional
            A study x label matrix (rows in the data's experiment order) instead of the
            data's labels.

        Returns
        -------
        self
        """
        self._validate_params()
        dataset, _ = _dataset_of(data, type(self).__name__)
        self.selection_ = select_labels(dataset, has_foci(dataset), self.labels,
                                        self.frequency_threshold, 1, label_matrix,
                                        label_names, require_unselected=False)
        self.features_ = self.selection_.names
        self.dataset_ = dataset
        return self

    def _held(self):
        """(studies with foci x labels) 0/1 CSR and the studies' ids."""
        sel = self.selection_
        return sel.weights.T.tocsr()[sel.rows], [self.dataset_.ids[r] for r in sel.rows]

    def _positions(self, ids, ids_all, what: str):
        index = {i: p for p, i in enumerate(ids_all)}
        if isinstance(ids, str | bytes):
            raise DaskmetaError(f"{what} must be a list of study ids; got a string")
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise DaskmetaError(f"{what}: {len(unknown)} ids are not studies with foci of the "
                                f"data: {', '.join(unknown[:5])}")
        if not ids:
            raise DaskmetaError(f"{what} is empty")
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def _groups(self, ids, ids2):
        held, ids_all = self._held()
        sel = self._positions(ids, ids_all, "ids")
        if ids2 is None:
            unsel = np.setdiff1d(np.arange(len(ids_all)), sel)
        else:
            unsel = self._positions(ids2, ids_all, "ids2")
        return held, sel, unsel


class NeurosynthDecoder(_SelectionDecoder):
    """Neurosynth's decoding of a selection of studies (NiMARE's ``NeurosynthDecoder``):
    per label, the uniformity ('Forward') and association ('Reverse') chi-square tests of the
    label among the selected studies against the rest.

    Parameters
    ----------
    labels : None, str or list of str
        Labels to test (None: all; a vocabulary name; label names).
    frequency_threshold : float
    prior : float or None
        Uniform prior of a label (None: each label's frequency).
    u : float
        Alpha level (kept for NiMARE's signature; the table has every label).
    correction : {None, "bh", "by", "bonferroni"}
    min_studies : int or float
        Labels holding for fewer studies are dropped (a float in (0, 1): a proportion of
        the studies analysed).
    """

    def __init__(self, labels=None, frequency_threshold=0.001, prior=0.5, u=0.05,
                 correction="bh", min_studies=1):
        self.labels = labels
        self.frequency_threshold = frequency_threshold
        self.prior = prior
        self.u = u
        self.correction = correction
        self.min_studies = min_studies

    def transform(self, ids, ids2=None) -> pd.DataFrame:
        """Decode a selection of studies.

        Parameters
        ----------
        ids : list of str
            The selected studies (with foci).
        ids2 : list of str, optional
            The unselected studies (default: every other study with foci).

        Returns
        -------
        pandas.DataFrame
            Index ``Term``; columns ``pForward``, ``zForward``, ``probForward``,
            ``pReverse``, ``zReverse``, ``probReverse`` (NiMARE's).
        """
        self._check_fitted()
        held, sel, unsel = self._groups(ids, ids2)
        features = list(self.features_)
        n_selected, n_unselected = len(sel), len(unsel)
        n_sel_term = np.asarray(held[sel].sum(axis=0), dtype=np.float64).ravel()
        n_unsel_term = np.asarray(held[unsel].sum(axis=0), dtype=np.float64).ravel()
        n_term = n_sel_term + n_unsel_term
        floor = self.min_studies
        if isinstance(floor, float) and 0 < floor < 1:
            floor = floor * (n_selected + n_unselected)
        elif floor is None:
            floor = 0
        elif floor < 0:
            raise DaskmetaError(f"min_studies must be non-negative; got {floor}")
        keep = n_term >= floor
        if not keep.any():
            raise DaskmetaError(f"no label reaches min_studies={self.min_studies}; all "
                                f"{len(features)} labels were excluded")
        features = [f for f, k in zip(features, keep) if k]
        n_sel_term, n_unsel_term, n_term = n_sel_term[keep], n_unsel_term[keep], n_term[keep]
        n_sel_noterm = n_selected - n_sel_term
        n_unsel_noterm = n_unselected - n_unsel_term
        n_noterm = n_sel_noterm + n_unsel_noterm
        with np.errstate(divide="ignore", invalid="ignore"):
            p_term = n_term / (n_term + n_noterm)
            p_sel_g_term = n_sel_term / n_term
            p_sel_g_noterm = n_sel_noterm / n_noterm
        prior = p_term if self.prior is None else self.prior
        chi2_fi = _chi2.one_way(n_sel_term, n_selected)
        nlogp_fi = _chi2.chi2_to_nlogp(chi2_fi)
        sign_fi = np.sign(n_sel_term - np.mean(n_sel_term))
        chi2_ri = _chi2.two_way_counts(n_sel_term, n_unsel_term,
                                       n_sel_term + n_sel_noterm,
                                       n_unsel_term + n_unsel_noterm)
        nlogp_ri = _chi2.chi2_to_nlogp(chi2_ri)
        sign_ri = np.sign(p_sel_g_term - p_sel_g_noterm)
        nlogp_fi, nlogp_ri = _correct(nlogp_fi, self.correction), _correct(nlogp_ri,
                                                                           self.correction)
        with np.errstate(divide="ignore", invalid="ignore"):
            prob_fwd = prior * p_sel_g_term + (1 - prior) * p_sel_g_noterm
            prob_rev = p_sel_g_term * prior / prob_fwd
        out = pd.DataFrame({
            "pForward": clip_p(np.exp(nlogp_fi)),
            "zForward": nlogp_to_z(nlogp_fi, "two") * sign_fi,
            "probForward": prob_fwd,
            "pReverse": clip_p(np.exp(nlogp_ri)),
            "zReverse": nlogp_to_z(nlogp_ri, "two") * sign_ri,
            "probReverse": prob_rev,
        }, index=pd.Index(features, name="Term"))
        return out


class BrainMapDecoder(_SelectionDecoder):
    """BrainMap's decoding of a selection of studies (NiMARE's ``BrainMapDecoder``):
    forward (binomial) and reverse (chi-square) inference per label.

    Parameters
    ----------
    labels : None, str or list of str
    frequency_threshold : float
    u : float
    correction : {None, "bh", "by", "bonferroni"}
    """

    def __init__(self, labels=None, frequency_threshold=0.001, u=0.05, correction="bh"):
        self.labels = labels
        self.frequency_threshold = frequency_threshold
        self.u = u
        self.correction = correction

    def transform(self, ids, ids2=None) -> pd.DataFrame:
        """Decode a selection of studies.

        Returns
        -------
        pandas.DataFrame
            Index ``Term``; columns ``pForward``, ``zForward``, ``likelihoodForward``,
            ``pReverse``, ``zReverse``, ``probReverse`` (NiMARE's).
        """
        self._check_fitted()
        held, sel, unsel = self._groups(ids, ids2)
        dataset = self.dataset_
        n_foci_of = dataset.foci["id"].value_counts()
        ids_all = [dataset.ids[r] for r in self.selection_.rows]
        foci = n_foci_of.reindex(ids_all).fillna(0).to_numpy(dtype=np.float64)
        n_selected, n_unselected = len(sel), len(unsel)
        n_exps_across_terms = float(held.sum())
        n_sel_term = np.asarray(held[sel].sum(axis=0), dtype=np.float64).ravel()
        n_unsel_term = np.asarray(held[unsel].sum(axis=0), dtype=np.float64).ravel()
        n_sel_noterm = n_selected - n_sel_term
        n_unsel_noterm = n_unselected - n_unsel_term
        n_term = n_sel_term + n_unsel_term
        p_term = n_term / n_exps_across_terms
        n_foci_in_database = float(foci.sum())
        p_selected = n_selected / n_foci_in_database
        n_term_foci = np.asarray(held.T @ foci, dtype=np.float64).ravel()
        n_noterm_foci = n_foci_in_database - n_term_foci
        with np.errstate(divide="ignore", invalid="ignore"):
            p_sel_g_term = n_sel_term / n_term_foci
            l_sel_g_term = p_sel_g_term / p_selected
            p_sel_g_noterm = n_sel_noterm / n_noterm_foci
            p_term_g_sel = p_sel_g_term * p_term / p_selected
            p_term_g_sel = p_term_g_sel / np.nansum(p_term_g_sel)
        nlogp_fi = binom.logsf(k=n_sel_term - 1, n=n_term_foci, p=p_selected)
        chi2_ri = _chi2.two_way_counts(n_sel_term, n_unsel_term,
                                       n_sel_term + n_sel_noterm,
                                       n_unsel_term + n_unsel_noterm)
        nlogp_ri = _chi2.chi2_to_nlogp(chi2_ri)
        sign_ri = np.sign(p_sel_g_term - p_sel_g_noterm)
        nlogp_fi[n_sel_term < 5] = 0.0
        nlogp_ri[n_sel_term < 5] = 0.0
        nlogp_fi, nlogp_ri = _correct(nlogp_fi, self.correction), _correct(nlogp_ri,
                                                                           self.correction)
        return pd.DataFrame({
            "pForward": clip_p(np.exp(nlogp_fi)),
            "zForward": nlogp_to_z(nlogp_fi, "one"),
            "likelihoodForward": l_sel_g_term,
            "pReverse": clip_p(np.exp(nlogp_ri)),
            "zReverse": nlogp_to_z(nlogp_ri, "two") * sign_ri,
            "probReverse": p_term_g_sel,
        }, index=pd.Index(list(self.features_), name="Term"))


class ROIAssociationDecoder(Estimator):
    """Neurosynth's ROI association decoding (NiMARE's ``ROIAssociationDecoder``): the
    Pearson r, over studies with foci, of each study's mean modeled activation inside a
    region with each label's weight.

    Parameters
    ----------
    masker : str or image
        The region (non-zero voxels), resampled (nearest) to the data's mask grid.
    labels : None, str or list of str
        Labels (those with a positive weight somewhere are kept, as NiMARE).
    kernel_transformer : Kernel, optional
        For a Dataset (default ``MKDAKernel()``); a Collection's MA rows are its own.
    mask : str or image, optional
        For a Dataset: the grid of the MA maps (default: the package's mask).
    """

    _fitted_marker = "roi_values_"
    _parameter_constraints = {
        "labels": (_labels_ok, "None, a vocabulary name or a list of label names"),
    }

    def __init__(self, masker, labels=None, kernel_transformer=None, mask=None):
        self.masker = masker
        self.labels = labels
        self.kernel_transformer = kernel_transformer
        self.mask = mask

    def fit(self, data, label_matrix=None, label_names=None):
        """Each study's mean MA value in the region (one pass over the MA rows).

        Returns
        -------
        self
        """
        self._validate_params()
        dataset, collection = _dataset_of(data, "ROIAssociationDecoder")
        from daskmeta.space import resolve_space

        space = collection.space if collection is not None else resolve_space(self.mask)
        try:
            roi = space.resample_mask(self.masker)
        except DaskmetaError:
            raise
        except Exception as exc:
            raise DaskmetaError(f"cannot read the region image {self.masker!r}: {exc}") from None
        if not roi.any():
            raise DaskmetaError("the region has no voxel inside the mask")
        self._warn_outside(space)
        rows = np.flatnonzero(has_foci(dataset))
        idx = np.flatnonzero(roi)
        if collection is not None:
            ma = collection.rows([dataset.ids[r] for r in rows], dtype=None)
        else:
            from daskmeta.kernels import MKDAKernel

            kernel = self.kernel_transformer or MKDAKernel()
            ma = kernel.transform(dataset, space)[rows]
        from daskmeta.cluster import compute

        (values,) = compute(ma[:, idx].astype(np.float64).mean(axis=1))
        from daskmeta.decode.labels import _label_matrix, _resolve_names

        matrix, names = _label_matrix(dataset, label_matrix, label_names)
        cols = _resolve_names(self.labels, names)
        weights = sparse.csc_matrix(matrix)[rows][:, cols]
        positive = np.asarray((weights > 0).sum(axis=0)).ravel() > 0
        if not positive.any():
            raise DaskmetaError("no label has a positive weight in any study with foci")
        self.weights_ = weights[:, np.flatnonzero(positive)]
        self.features_ = [names[cols[k]] for k in np.flatnonzero(positive)]
        self.roi_values_ = np.asarray(values, dtype=np.float64)
        self.space_ = space
        return self

    def _warn_outside(self, space):
        import nibabel as nib

        img = self.masker if isinstance(self.masker, nib.spatialimages.SpatialImage) else (
            nib.load(str(self.masker)))
        data = np.asanyarray(img.dataobj)
        if data.shape[:3] == space.shape and np.allclose(img.affine, space.affine, atol=1e-4):
            outside = int((data.astype(bool).reshape(space.shape) & ~space.mask).sum())
            if outside:
                warnings.warn(f"{outside} voxels of the region lie outside the mask and are "
                              "left out of the region's mean", DaskmetaWarning, stacklevel=3)

    def transform(self) -> pd.DataFrame:
        """Pearson r of the studies' region means with each label's weights.

        Returns
        -------
        pandas.DataFrame
            Index ``feature``, column ``r``.
        """
        self._check_fitted()
        x = self.roi_values_
        y = sparse.csc_matrix(self.weights_, dtype=np.float64)
        n = len(x)
        xc = x - x.mean()
        y_mean = np.asarray(y.sum(axis=0)).ravel() / n
        dot = np.asarray(y.T @ xc).ravel()
        y_ss = np.asarray(y.multiply(y).sum(axis=0)).ravel() - n * y_mean ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            r = dot / (np.sqrt(np.maximum(y_ss, 0.0)) * np.sqrt(xc @ xc))
        return pd.DataFrame({"r": r}, index=pd.Index(self.features_, name="feature"))
