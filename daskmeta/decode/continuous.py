"""Decoding unthresholded images by correlation (NiMARE's ``nimare.decode.continuous``).

:class:`CorrelationDecoder` computes the meta-analytic map of every label (MKDAChi2 of the
label's studies against the others by default, or any CBMA estimator's fit on the label's
studies) in passes over the MA rows (a collection's store, or a Dataset's foci) into a
:class:`~daskmeta.decode.DecoderModel` and correlates images with all of them at once.
:class:`CorrelationDistributionDecoder` correlates an image with every study's map and
summarizes the (Fisher z) correlations of each label's studies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta._pass import has_foci
from daskmeta.decode._build import association_maps, estimator_maps
from daskmeta.decode.labels import select_labels
from daskmeta.decode.model import DecoderModel, _Writer, images_to_matrix
from daskmeta.estimators._chi2 import CHI2_MAP_NAMES
from daskmeta.estimators.base import Estimator, non_negative
from daskmeta.exceptions import DaskmetaError

__all__ = ["CorrelationDecoder", "CorrelationDistributionDecoder"]

#: The maps of a CBMA estimator's fit a decoder can correlate with (``fit_many``'s).
CBMA_MAP_NAMES = ("stat", "p", "z", "logp")

_LABEL_DOC = """labels : None, str or list of str
        None: every label of the data; a vocabulary (``"LDA50"``: its every label); or label
        names (the ``VOCAB__`` prefix may be left out where unambiguous)."""


def _labels_ok(value) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))


def _min_studies_ok(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class CorrelationDecoder(Estimator):
    """Decode images by correlating them with the meta-analytic map of every label.

    NiMARE's ``CorrelationDecoder`` at whole-database scale: ``fit`` computes every label's
    map (by default MKDAChi2 of the label's studies against all the others; with another
    CBMA ``meta_estimator``, its fit on the label's studies) in passes over the MA rows,
    into a decoder model on disk; ``transform`` correlates images with every map as one
    matrix product over blocks of maps.

    Parameters
    ----------
    labels : None, str or list of str
        None: every label of the data; a vocabulary (``"LDA50"``: its every label); or label
        names (the ``VOCAB__`` prefix may be left out where unambiguous).
    frequency_threshold : float
        A label holds for a study whose weight is at least this (NiMARE's).
    meta_estimator : MKDAChi2, ALE, MKDADensity or KDA, optional
        The meta-analysis of each label (default ``MKDAChi2()``: MKDA kernel of r = 10 mm,
        prior 0.5): MKDAChi2 contrasts the label's studies with all the others (its kernel,
        mask, mask margin and prior are used); ALE, MKDADensity and KDA are fitted on the
        label's studies alone (their kernel, parameters, mask and mask margin are used).
    target_image : str
        The map of each label to correlate with (NiMARE's name): one of MKDAChi2's maps
        (default ``"z_desc-association"``), or ``"stat"``, ``"p"``, ``"z"`` or ``"logp"``
        of the other estimators.
    min_studies : int
        Leave out labels holding for fewer studies (default 1: NiMARE's rule).
    fwe_iters : int, optional
        Also compute label-permutation FWE nulls of every label's association map with this
        many iterations (:func:`daskmeta.decode.fwe.label_fwe`; a Collection input).
    seed : int
        Seed of the FWE permutations.

    Attributes
    ----------
    model_ : DecoderModel
        The fitted model (in a temporary folder until :meth:`save`, unless ``fit`` was
        given ``store=``).
    features_ : list of str
        The labels decoded.
    """

    _fitted_marker = "model_"
    _parameter_constraints = {
        "labels": (_labels_ok, "None, a vocabulary name or a list of label names"),
        "frequency_threshold": (lambda v: non_negative(v) and v > 0, "a number > 0"),
        "target_image": (lambda v: isinstance(v, str), "a map name such as "
                         "'z_desc-association' (MKDAChi2) or 'z'"),
        "min_studies": (_min_studies_ok, "an integer >= 1"),
        "fwe_iters": (lambda v: v is None or _min_studies_ok(v), "None or an integer >= 1"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                 "an integer >= 0"),
    }

    def __init__(self, labels=None, frequency_threshold=0.001, meta_estimator=None,
                 target_image="z_desc-association", min_studies=1, fwe_iters=None, seed=0):
        self.labels = labels
        self.frequency_threshold = frequency_threshold
        self.meta_estimator = meta_estimator
        self.target_image = target_image
        self.min_studies = min_studies
        self.fwe_iters = fwe_iters
        self.seed = seed

    def _meta(self):
        """The validated meta-estimator (a copy) and whether it is MKDAChi2."""
        from daskmeta.estimators import ALE, KDA, MKDAChi2, MKDADensity

        meta = MKDAChi2() if self.meta_estimator is None else self.meta_estimator
        allowed = (MKDAChi2, ALE, MKDADensity, KDA)
        if type(meta) not in allowed:
            raise DaskmetaError(
                f"CorrelationDecoder: meta_estimator must be one of "
                f"{', '.join(c.__name__ for c in allowed)} (an instance); got "
                f"{meta.__name__ if isinstance(meta, type) else type(meta).__name__}")
        chi2 = type(meta) is MKDAChi2
        maps = CHI2_MAP_NAMES if chi2 else CBMA_MAP_NAMES
        if self.target_image not in maps:
            raise DaskmetaError(
                f"CorrelationDecoder: target_image {self.target_image!r} is not a map of "
                f"{type(meta).__name__}; allowed: {', '.join(maps)}")
        meta = meta.clone()  # fitting sets per-label state on it
        meta._validate_params()
        return meta, chi2

    def fit(self, data, label_matrix=None, label_names=None, store=None,
            overwrite: bool = False, progress=None):
        """Compute every label's map into a decoder model.

        Parameters
        ----------
        data : Collection or Dataset
            A collection of MKDA maps (kernel, mask and margin as the meta-estimator's), or
            a Dataset (its MA rows are made from the foci on the fly).
        label_matrix, label_names : sparse matrix and list of str, optional
            A study x label matrix (rows in the data's experiment order) instead of the
            data's labels (e.g. :func:`daskmeta.decode.tfidf` of term counts).
        store : path-like, optional
            Write the model here (default: a temporary folder, see :meth:`save`).
        overwrite : bool
            Replace a model at ``store``.
        progress : callable, optional
            ``progress(n_done, n_total)`` labels after each pass.

        Returns
        -------
        self
        """
        self._validate_params()
        meta, chi2 = self._meta()
        prior = meta.prior if chi2 else None
        dataset, space, kernel, collection = meta._source(data)
        if self.fwe_iters is not None and (not chi2 or collection is None
                                           or self.target_image != "z_desc-association"):
            raise DaskmetaError("fwe_iters needs meta_estimator MKDAChi2, target_image "
                                "'z_desc-association' and a Collection input")
        from daskmeta.kernels import MKDAKernel

        if chi2 and type(kernel) is not MKDAKernel:
            raise DaskmetaError(f"CorrelationDecoder needs MKDA maps (binary spheres); the "
                                f"meta-estimator's kernel is {kernel!r}")
        # NiMARE drops a label holding for every study only for a pairwise estimator.
        selection = select_labels(dataset, has_foci(dataset), self.labels,
                                  self.frequency_threshold, self.min_studies,
                                  label_matrix, label_names, require_unselected=chi2)
        plan = None
        if collection is None and chi2:
            plan = kernel.plan(dataset, space, float(meta.mask_margin))
        tmp = None
        if store is None:
            tmp = tempfile.mkdtemp(prefix="daskmeta-decoder-")
            path = Path(tmp) / "model.zarr"
        else:
            path = Path(store)
            if path.exists() and not overwrite:
                raise DaskmetaError(f"{path} exists; pass overwrite=True (CLI --overwrite) "
                                    "to replace it, or another path")
        attrs = {"decoder": type(self).__name__, "target_image": self.target_image,
                 "frequency_threshold": float(self.frequency_threshold),
                 "min_studies": int(self.min_studies), "prior": prior,
                 "meta_estimator": type(meta).__name__,
                 "meta_estimator_params": {k: v for k, v in meta.get_params().items()
                                           if k != "mask"},
                 "kernel": type(kernel).__name__,
                 "kernel_params": kernel.get_params(), "n_total_studies": selection.n_total,
                 "source": str(collection.path) if collection is not None else
                 (dataset.name or "Dataset"),
                 "dataset_fingerprint": dataset.fingerprint()}
        from daskmeta._version import __version__

        attrs["daskmeta_version"] = __version__
        writer = None
        try:
            writer = _Writer(path, selection.names, selection.n_studies, space, attrs)
            if chi2:
                mean, norm = association_maps(selection, (collection, plan), space.n_voxels,
                                              writer, self.target_image, prior,
                                              chunk_size=meta._chunk_size(), progress=progress)
            else:
                mean, norm = estimator_maps(meta, data, selection, writer, self.target_image,
                                            progress=progress)
            model = writer.finish(mean, norm, overwrite=overwrite)
            if self.fwe_iters is not None:
                from daskmeta.decode.fwe import label_fwe

                model = label_fwe(model, collection, self.fwe_iters, seed=self.seed)
        except BaseException:
            if writer is not None:
                writer.abort()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if tmp is not None:
            # The temporary model lives as long as the DecoderModel object that reads it.
            weakref.finalize(model, shutil.rmtree, tmp, True)
        self.model_ = model
        self.features_ = list(selection.names)
        self.space_ = space
        return self

    def save(self, path, overwrite: bool = False) -> DecoderModel:
        """Write the fitted model to ``path`` (a Zarr store) and return it opened.

        Raises
        ------
        DaskmetaError
            If ``path`` exists (unless ``overwrite``; only a decoder model is replaced).
        """
        self._check_fitted()
        from daskmeta.decode.model import _remove_model

        path = Path(path)
        if path.resolve() == Path(self.model_.path).resolve():
            return self.model_
        if path.exists():
            if not overwrite:
                raise DaskmetaError(f"{path} exists; pass overwrite=True to replace it, or "
                                    "another path")
            _remove_model(path)
        tmp = path.parent / f".{path.name}.{os.getpid()}.saving"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.model_.path, tmp)
        os.replace(tmp, path)
        return DecoderModel.open(path)

    def transform(self, imgs) -> pd.DataFrame:
        """Pearson r of image(s) with every label's map (see :meth:`DecoderModel.transform`).

        Returns
        -------
        pandas.DataFrame
            One row per label (index ``feature``), column ``r`` (``r_0``, ... for several).
        """
        self._check_fitted()
        return self.model_.transform(imgs)


class CorrelationDistributionDecoder(Estimator):
    """Decode an image by its correlations with the maps of each label's studies (NiMARE's
    ``CorrelationDistributionDecoder``): per label, the mean and standard deviation of the
    Fisher z (``arctanh``) of the image's Pearson r with each of the label's study maps.

    Study maps are a Dataset's images (``target_image`` column of ``Dataset.images``, as
    NiMARE), or, for a Collection, its stored MA rows.

    Parameters
    ----------
    labels : None, str or list of str
        As :class:`CorrelationDecoder`'s.
    frequency_threshold : float
    target_image : str
        Image type of a Dataset's study images (NiMARE's, default ``"z"``).
    """

    _fitted_marker = "selection_"
    _parameter_constraints = {
        "labels": (_labels_ok, "None, a vocabulary name or a list of label names"),
        "frequency_threshold": (lambda v: non_negative(v) and v > 0, "a number > 0"),
    }

    def __init__(self, labels=None, frequency_threshold=0.001, target_image="z"):
        self.labels = labels
        self.frequency_threshold = frequency_threshold
        self.target_image = target_image

    def fit(self, data, label_matrix=None, label_names=None):
        """Select the labels and their studies' maps.

        Parameters
        ----------
        data : Collection or Dataset
        label_matrix, label_names : optional
            As :meth:`CorrelationDecoder.fit`.

        Returns
        -------
        self
        """
        from daskmeta.collection import Collection
        from daskmeta.dataset import Dataset

        self._validate_params()
        if isinstance(data, Collection):
            dataset, usable = data.dataset, has_foci(data.dataset)
            self.space_ = data.space
        elif isinstance(data, Dataset):
            images = getattr(data, "images", None)
            if images is None or self.target_image not in images.columns:
                raise DaskmetaError(f"the Dataset has no {self.target_image!r} images "
                                    "(Dataset.images); pass a Collection to use MA maps")
            dataset = data
            usable = images[self.target_image].notna().to_numpy()
        else:
            raise DaskmetaError(f"CorrelationDistributionDecoder.fit expects a Collection or "
                                f"Dataset; got {type(data).__name__}")
        self.selection_ = select_labels(dataset, usable, self.labels,
                                        self.frequency_threshold, 1, label_matrix,
                                        label_names, require_unselected=False)
        self.data_ = data
        self.features_ = self.selection_.names
        return self

    def _study_maps(self, rows):
        """``(len(rows), n_voxels)`` float32 study maps, in blocks."""
        from daskmeta.collection import Collection

        data = self.data_
        if isinstance(data, Collection):
            ids = [data.ids[r] for r in rows]
            return np.asarray(data.rows(ids, dtype=np.float32).compute(scheduler="threads"))
        paths = data.images[self.target_image].to_numpy()[rows]
        if self.space_ is None:
            raise DaskmetaError("no mask")
        return images_to_matrix([str(p) for p in paths], self.space_)

    def transform(self, img) -> pd.DataFrame:
        """Mean and standard deviation of the Fisher z of the image's correlations with
        each label's study maps.

        Returns
        -------
        pandas.DataFrame
            Index ``feature``, columns ``mean`` and ``std``.
        """
        self._check_fitted()
        if getattr(self, "space_", None) is None:
            from daskmeta.space import resolve_space

            self.space_ = resolve_space(None)
        x = images_to_matrix(img, self.space_)[0].astype(np.float64)
        xc = x - x.mean()
        rows = self.selection_.rows
        z = np.empty(len(rows))
        step = 256
        for a in range(0, len(rows), step):
            maps = self._study_maps(rows[a:a + step]).astype(np.float64)
            mc = maps - maps.mean(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = (mc @ xc) / (np.sqrt((mc * mc).sum(axis=1)) * np.sqrt(xc @ xc))
                z[a:a + step] = np.arctanh(r)
        w = self.selection_.weights.tocsc()[:, rows]
        n = self.selection_.n_studies.astype(float)
        mean = (w @ z) / n
        var = (w @ (z * z)) / n - mean * mean
        out = pd.DataFrame({"mean": mean, "std": np.sqrt(np.maximum(var, 0.0))},
                           index=pd.Index(self.features_, name="feature"))
        return out
