"""Conjunction of meta-analytic maps: the minimum statistic (Nichols et al., 2005).

A voxel belongs to the conjunction of several maps when it is significant in every one of
them ("conjunction null"): the minimum of the maps' statistics tested at the level each map
was thresholded at is a valid test of that null. So the conjunction of ``z`` (or ``logp``)
maps is their voxel-wise minimum, and the conjunction of ``p`` maps their voxel-wise maximum.

:func:`conjunction` combines :class:`~daskmeta.MetaResult` objects (same mask), and
:func:`conjunction_images` NIfTI images on one grid (the ``daskmeta conjunction`` command
reads the maps of result folders).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from daskmeta.exceptions import DaskmetaError

if TYPE_CHECKING:
    from daskmeta.results import MetaResult

__all__ = ["conjunction", "conjunction_images", "conjunction_name"]


def conjunction_name(map_name: str) -> str:
    """The name of the conjunction map of ``map_name`` (BIDS-like entities kept).

    ``z`` gives ``z_desc-conjunction`` (the name NiMARE's workflows give it);
    ``z_level-voxel_corr-FWE_method-montecarlo`` gives
    ``z_desc-conjunction_level-voxel_corr-FWE_method-montecarlo``; a ``desc`` entity is
    extended: ``z_desc-size_level-cluster_...`` gives ``z_desc-sizeConjunction_level-...``.
    """
    parts = str(map_name).split("_")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("desc-"):
            parts[i] = part + "Conjunction"
            return "_".join(parts)
    return "_".join([parts[0], "desc-conjunction", *parts[1:]])


def _combine(arrays, map_name: str) -> np.ndarray:
    """Voxel-wise minimum (maximum for p-value maps) of equally shaped arrays."""
    kind = str(map_name).split("_")[0]
    arrays = [np.asarray(a) for a in arrays]
    dtype = np.result_type(np.float32, *arrays)  # float32 maps stay float32, p maps float64
    stack = np.stack([a.astype(dtype, copy=False) for a in arrays])
    return stack.max(axis=0) if kind == "p" else stack.min(axis=0)


def conjunction(results, map: str = "z", threshold: float | None = None) -> MetaResult:
    """The minimum-statistic conjunction of two or more results (Nichols et al., 2005).

    Parameters
    ----------
    results : sequence of MetaResult
        Two or more results on the same mask (same voxels and affine).
    map : str
        The map of every result to combine, e.g. ``"z"`` or a corrected map such as
        ``"z_desc-size_level-cluster_corr-FWE_method-montecarlo"``. Statistic maps (``z``,
        ``logp``, ``stat``) combine by their minimum, ``p`` maps by their maximum.
    threshold : float, optional
        Also zero the conjunction where it does not pass this value (below it; above it for
        ``p`` maps): the voxels significant in every map when each was tested at this
        threshold (e.g. 3.09 for z, 1.301 for logp, 0.05 for p).

    Returns
    -------
    MetaResult
        One map, :func:`conjunction_name` of ``map``, on the results' mask; attributes name
        the inputs (estimator, input hash) and the rule.

    Raises
    ------
    DaskmetaError
        Fewer than two results, a non-result, a result without the map, or results on
        different masks.
    """
    from daskmeta.results import MetaResult

    results = list(results) if not isinstance(results, MetaResult) else [results]
    if len(results) < 2:
        raise DaskmetaError(f"conjunction needs two or more results; got {len(results)}")
    for i, res in enumerate(results):
        if not isinstance(res, MetaResult):
            raise DaskmetaError(f"conjunction: result {i} is a {type(res).__name__}, not a "
                                "MetaResult")
        if map not in res.map_names:
            raise DaskmetaError(f"conjunction: result {i} has no map {map!r}; its maps: "
                                f"{', '.join(res.map_names)}")
    space = results[0].space
    for i, res in enumerate(results[1:], start=1):
        if res.space != space:
            raise DaskmetaError(
                f"conjunction: result {i} is on another mask ({res.space.n_voxels} voxels, "
                f"hash {res.space.mask_hash[:12]}) than result 0 ({space.n_voxels} voxels, "
                f"hash {space.mask_hash[:12]}); fit every result with the same mask")
    values = _combine([r.get_map(map, "array") for r in results], map)
    values = _apply_threshold(values, map, threshold)
    name = conjunction_name(map)
    attrs = {
        "estimator": "conjunction",
        "conjunction_map": map,
        "conjunction_rule": "maximum" if map.split("_")[0] == "p" else "minimum",
        "conjunction_n_inputs": len(results),
        "conjunction_inputs": [
            {k: r.attrs[k] for k in ("estimator", "input_hash", "input_path") if k in r.attrs}
            for r in results],
        **space.describe(),
    }
    if threshold is not None:
        attrs["conjunction_threshold"] = float(threshold)
    return MetaResult({name: values}, space, attrs=attrs)


def _apply_threshold(values, map_name: str, threshold):
    if threshold is None:
        return values
    if not np.isfinite(threshold):
        raise DaskmetaError(f"conjunction: threshold must be a finite number; got {threshold!r}")
    passes = values <= threshold if str(map_name).split("_")[0] == "p" else values >= threshold
    return np.where(passes, values, 0).astype(values.dtype)


def conjunction_images(imgs, map: str = "z", threshold: float | None = None,
                       names=None):
    """The minimum-statistic conjunction of images on one grid (see :func:`conjunction`).

    Parameters
    ----------
    imgs : sequence of nibabel images or paths
        Two or more 3-D images with the same shape and affine.
    map : str
        What the images hold (decides minimum or maximum, as in :func:`conjunction`).
    threshold : float, optional
    names : sequence of str, optional
        How to name the images in errors (default their paths or positions).

    Returns
    -------
    nibabel.Nifti1Image
        float32, on the images' grid (outside the images' support the inputs' zeros combine
        to zero).
    """
    import nibabel as nib

    imgs = list(imgs)
    if len(imgs) < 2:
        raise DaskmetaError(f"conjunction needs two or more images; got {len(imgs)}")
    names = list(names) if names is not None else [
        str(i) if isinstance(i, nib.spatialimages.SpatialImage) else str(i) for i in imgs]
    arrays = []
    ref_shape = ref_affine = None
    for name, img in zip(names, imgs, strict=True):
        if not isinstance(img, nib.spatialimages.SpatialImage):
            try:
                img = nib.load(str(img))
            except Exception as exc:  # nibabel raises many types for bad files
                raise DaskmetaError(f"cannot read image {name}: {exc}") from exc
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise DaskmetaError(f"{name} is not a 3-D image (shape {data.shape})")
        if ref_shape is None:
            ref_shape, ref_affine = data.shape, np.asarray(img.affine)
        elif data.shape != ref_shape or not np.allclose(img.affine, ref_affine, atol=1e-4):
            raise DaskmetaError(
                f"{name} is on another grid (shape {data.shape}) than {names[0]} (shape "
                f"{ref_shape}) or has another affine; conjunctions need maps of one mask")
        arrays.append(data)
    values = _apply_threshold(_combine(arrays, map), map, threshold)
    return nib.Nifti1Image(values, ref_affine)
