"""Meta-analytic coactivation modelling (MACM; Robinson et al., 2010).

The experiments with a focus inside a seed region (an ROI image, or a sphere around a
coordinate) form the selection, which is meta-analysed (ALE by default) and corrected: from
an in-memory Dataset, or from a Collection's store (the selection is one row of the weight
matrix of one pass over the store).

How a focus is tested against a seed:

- **ROI image**: on the ROI's own grid, each focus at its nearest ROI voxel (as NiMARE's
  ``Dataset.get_studies_by_mask``, which rounds the same way); the ROI is never resampled,
  so no voxel of it is lost or added by interpolation. A focus beyond the ROI image's grid
  is outside the ROI (NiMARE clips it to the grid's edge). The ROI must overlap the
  analysis mask (checked on the mask's grid, the ROI resampled by nearest neighbour).
- **sphere** ``(xyz_mm, radius_mm)``: foci within ``radius_mm`` mm of the centre, inclusive
  (NiMARE's ``get_studies_by_coordinate``). Some voxel of the analysis mask must lie within
  the sphere.
"""

from __future__ import annotations

import numbers

import numpy as np

from daskmeta.exceptions import DaskmetaError, DatasetError

__all__ = ["macm", "seed_studies"]


def _source_parts(source, estimator):
    """``(dataset, space)`` of a Dataset or Collection source."""
    from daskmeta.collection import Collection
    from daskmeta.dataset import Dataset
    from daskmeta.space import resolve_space

    if isinstance(source, Collection):
        return source.dataset, source.space
    if isinstance(source, Dataset):
        return source, resolve_space(getattr(estimator, "mask", None))
    raise DaskmetaError(f"macm: source must be a daskmeta Dataset or Collection; got "
                        f"{type(source).__name__}")


def _sphere(seed):
    """``(centre (3,), radius)`` if ``seed`` is ``(xyz_mm, radius_mm)``, else None."""
    if not isinstance(seed, tuple | list) or len(seed) != 2:
        return None
    xyz, radius = seed
    try:
        centre = np.asarray(xyz, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    if centre.shape != (3,):
        return None
    if (isinstance(radius, bool) or not isinstance(radius, numbers.Real)
            or not np.isfinite(radius) or radius <= 0):
        raise DaskmetaError(f"macm: the sphere's radius must be a positive number of mm; got "
                            f"{radius!r}")
    if not np.all(np.isfinite(centre)):
        raise DaskmetaError(f"macm: the sphere's centre must be finite mm coordinates; got "
                            f"{centre.tolist()}")
    return centre, float(radius)


def _load_roi(seed):
    import nibabel as nib

    if isinstance(seed, nib.spatialimages.SpatialImage):
        return seed, "an ROI image"
    if isinstance(seed, str) or hasattr(seed, "__fspath__"):
        from pathlib import Path

        path = Path(seed)
        if not path.is_file():
            raise DaskmetaError(f"macm: the ROI image {str(path)!r} does not exist")
        try:
            return nib.load(str(path)), str(path)
        except Exception as exc:  # nibabel raises many types for bad files
            raise DaskmetaError(f"macm: cannot read the ROI image {str(path)!r}: {exc}") from exc
    raise DaskmetaError(f"macm: seed must be an ROI image (a path or nibabel image) or "
                        f"(xyz_mm, radius_mm); got {type(seed).__name__}")


def seed_studies(dataset, seed, space) -> tuple[list[str], str]:
    """Ids of the experiments of ``dataset`` (those with foci) with a focus in ``seed``.

    Parameters
    ----------
    dataset : Dataset
    seed : path, nibabel image or (xyz_mm, radius_mm)
    space : Space
        The analysis mask: the seed must overlap it.

    Returns
    -------
    ids : list of str
        In the dataset's order.
    description : str
        The seed in words, for logs and provenance.

    Raises
    ------
    DaskmetaError
        A seed that is not an ROI or a sphere, an empty ROI, a seed outside the mask, or a
        seed that selects no experiment.
    """
    sphere = _sphere(seed)
    if sphere is not None:
        centre, radius = sphere
        what = (f"a sphere of {radius:g} mm around ({centre[0]:g}, {centre[1]:g}, "
                f"{centre[2]:g})")
        d2 = ((space.voxel_xyz - centre) ** 2).sum(axis=1)
        if not np.any(d2 <= radius * radius):
            raise DaskmetaError(f"macm: the seed ({what}) lies outside the analysis mask: no "
                                "mask voxel is within it")
        ids = dataset.get_studies_by_coordinate(centre, r=radius) if dataset.n_foci else []
    else:
        img, name = _load_roi(seed)
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise DaskmetaError(f"macm: the ROI {name} is not a 3-D image (shape {data.shape})")
        if not np.any(np.nan_to_num(data)):
            raise DaskmetaError(f"macm: the ROI {name} has no non-zero voxel")
        import nibabel as nib

        roi_img = nib.Nifti1Image(np.nan_to_num(data).astype(bool).astype(np.uint8),
                                  img.affine)
        what = f"the ROI {name} ({int(roi_img.get_fdata().sum())} voxels)"
        try:
            overlap = bool(space.resample_mask(roi_img).any())
        except ValueError:  # nilearn's BoundingBoxError: the ROI is beyond the mask's grid
            overlap = False
        if not overlap:
            raise DaskmetaError(f"macm: the seed ({what}) lies outside the analysis mask: no "
                                "voxel of it is in the mask")
        ids = dataset.get_studies_by_mask(roi_img) if dataset.n_foci else []
    if ids:
        with_foci = set(dataset.foci["id"].unique())
        ids = [i for i in ids if i in with_foci]
    if not ids:
        raise DatasetError(f"macm: the seed ({what}) selects no experiment: none of the "
                           f"{dataset.n_experiments} has a focus inside it")
    return ids, what


def macm(source, seed, estimator=None, corrector=None):
    """Meta-analytic coactivation modelling: the meta-analysis of the experiments with a
    focus in ``seed``, corrected.

    Parameters
    ----------
    source : Dataset or Collection
        The database (e.g. the whole of Neurosynth, or a collection store of it).
    seed : path, nibabel image or (xyz_mm, radius_mm)
        An ROI image (non-zero voxels), or a sphere: centre in mm and radius in mm.
    estimator : CBMAEstimator, optional
        Default ``ALE()`` (with a Collection, the estimator must match its kernel; the
        kernel's parameters default to the collection's).
    corrector : FWECorrector or FDRCorrector, optional
        Applied to the fit's result; None leaves it uncorrected.

    Returns
    -------
    MetaResult
        With attributes ``macm_seed`` (the seed in words), ``macm_n_selected`` and
        ``macm_ids`` (the selected experiments).

    Raises
    ------
    DaskmetaError
        See :func:`seed_studies`; and the estimator's and corrector's own errors.
    """
    if estimator is None:
        from daskmeta.estimators import ALE

        estimator = ALE()
    dataset, space = _source_parts(source, estimator)
    ids, what = seed_studies(dataset, seed, space)
    result = estimator.fit(source, select=ids)
    if corrector is not None:
        result = corrector.transform(result)
    result.attrs.update({"macm_seed": what, "macm_n_selected": len(ids),
                         "macm_ids": list(ids)})
    return result
