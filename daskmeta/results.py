"""MetaResult: named maps over the in-mask voxels, with provenance, nulls and cluster tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from daskmeta.exceptions import DaskmetaError
from daskmeta.space import Space

__all__ = ["MetaResult", "cluster_table"]

_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


def cluster_table(volume: np.ndarray, space: Space, threshold: float, min_size: int = 0,
                  connectivity: int = 26, two_sided: bool = False,
                  peak_volume: np.ndarray | None = None) -> pd.DataFrame:
    """Clusters of a 3-D map above ``threshold``.

    Parameters
    ----------
    volume : (X, Y, Z) ndarray
        The map (zero outside the mask).
    space : Space
    threshold : float
        Voxels with a value > threshold (or < -threshold when ``two_sided``) form clusters.
    min_size : int
        Smallest cluster kept, in voxels.
    connectivity : {6, 18, 26}
        Voxel neighbourhood.
    two_sided : bool
        Also report negative clusters.
    peak_volume : (X, Y, Z) ndarray, optional
        Where to find each cluster's peak and its value (default: ``volume``); e.g. the
        uncorrected z map for clusters of a cluster-level corrected map.

    Returns
    -------
    pandas.DataFrame
        One row per cluster, largest first: ``cluster_id``, ``sign``, ``peak_x``, ``peak_y``,
        ``peak_z`` (mm), ``peak_value``, ``n_voxels``, ``size_mm3``.
    """
    if connectivity not in _CONNECTIVITY:
        raise DaskmetaError(f"connectivity must be 6, 18 or 26; got {connectivity!r}")
    struct = ndimage.generate_binary_structure(3, _CONNECTIVITY[connectivity])
    voxel_mm3 = float(np.prod(space.zooms))
    rows = []
    signs = (1, -1) if two_sided else (1,)
    peak_volume = volume if peak_volume is None else peak_volume
    for sign in signs:
        data = volume * sign
        labels, n = ndimage.label(data > threshold, structure=struct)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        peaks = ndimage.maximum_position(peak_volume * sign, labels=labels, index=index)
        for size, peak in zip(sizes, peaks):
            if size < min_size:
                continue
            xyz = space.ijk_to_mm(np.asarray(peak))[0]
            rows.append({"sign": sign, "peak_x": xyz[0], "peak_y": xyz[1], "peak_z": xyz[2],
                         "peak_value": float(peak_volume[peak]), "n_voxels": int(size),
                         "size_mm3": float(size * voxel_mm3)})
    table = pd.DataFrame(rows, columns=["sign", "peak_x", "peak_y", "peak_z", "peak_value",
                                        "n_voxels", "size_mm3"])
    table = table.sort_values(["n_voxels", "peak_value"], ascending=[False, False],
                              key=lambda c: c.abs() if c.name == "peak_value" else c)
    table.insert(0, "cluster_id", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


class MetaResult:
    """The maps of a fitted estimator (or corrector), with their provenance.

    Parameters
    ----------
    maps : dict of str to ndarray
        In-mask vectors, named as NiMARE names them (``stat``, ``p``, ``z``, ``logp``,
        ``z_level-voxel_corr-FWE_method-montecarlo``, ...).
    space : Space
    attrs : dict
        Parameters and provenance (JSON-serialisable values).
    estimator : object, optional
        The fitted estimator (correctors use it).
    null_distributions : dict, optional
        Null distributions (arrays), e.g. ``histweights_corr-none_method-approximate``.

    Attributes
    ----------
    maps : xarray.Dataset
        One variable per map over the ``voxel`` dimension, with ``x_mm``, ``y_mm``, ``z_mm``
        coordinates.
    """

    def __init__(self, maps: dict, space: Space, attrs: dict | None = None, estimator=None,
                 null_distributions: dict | None = None):
        self.space = space
        self.estimator = estimator
        self.null_distributions = dict(null_distributions or {})
        xyz = space.voxel_xyz
        coords = {"x_mm": ("voxel", xyz[:, 0]), "y_mm": ("voxel", xyz[:, 1]),
                  "z_mm": ("voxel", xyz[:, 2])}
        data_vars = {}
        for name, values in maps.items():
            values = np.asarray(values)
            if values.shape != (space.n_voxels,):
                raise DaskmetaError(
                    f"map {name!r} has shape {values.shape}; expected ({space.n_voxels},)"
                )
            data_vars[name] = ("voxel", values)
        self.maps = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))

    # -- access ----------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return self.maps.attrs

    @property
    def map_names(self) -> list[str]:
        return list(self.maps.data_vars)

    def _vector(self, name: str) -> np.ndarray:
        if name not in self.maps:
            raise DaskmetaError(
                f"no map named {name!r}; available: {', '.join(self.map_names)}"
            )
        return self.maps[name].to_numpy()

    def get_map(self, name: str, return_type: str = "image"):
        """A map as a NIfTI image (``return_type="image"``) or in-mask vector ("array")."""
        vec = self._vector(name)
        if return_type == "array":
            return vec
        if return_type != "image":
            raise DaskmetaError(f"return_type must be 'image' or 'array'; got {return_type!r}")
        return self.space.to_img(vec)

    def copy(self) -> MetaResult:
        """A copy sharing the estimator; maps and nulls are copied."""
        new = MetaResult({k: v.copy() for k, v in ((n, self._vector(n)) for n in self.map_names)},
                         self.space, dict(self.attrs), self.estimator,
                         {k: np.copy(v) for k, v in self.null_distributions.items()})
        return new

    def add_maps(self, maps: dict, attrs: dict | None = None, nulls: dict | None = None):
        """Add maps (and attributes, nulls) in place; used by correctors on a copy."""
        for name, values in maps.items():
            values = np.asarray(values)
            if values.shape != (self.space.n_voxels,):
                raise DaskmetaError(f"map {name!r} has shape {values.shape}")
            self.maps[name] = ("voxel", values)
        self.maps.attrs.update(attrs or {})
        self.null_distributions.update(nulls or {})
        return self

    def __repr__(self) -> str:
        est = self.attrs.get("estimator", "?")
        return f"MetaResult({est}, maps=[{', '.join(self.map_names)}])"

    # -- exports ---------------------------------------------------------------------------
    def save_maps(self, output_dir=".", prefix: str = "", names=None) -> list[Path]:
        """Write maps as NIfTI files ``{prefix}_{name}.nii.gz`` (NiMARE's naming).

        Returns the written paths.
        """
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in names or self.map_names:
            fname = f"{prefix}_{name}.nii.gz" if prefix else f"{name}.nii.gz"
            img = self.get_map(name)
            img.to_filename(str(out / fname))
            paths.append(out / fname)
        return paths

    def save_provenance(self, path) -> Path:
        """Write the attributes (parameters, provenance) as JSON."""
        path = Path(path)
        path.write_text(json.dumps(_jsonable(dict(self.attrs)), indent=1, sort_keys=True))
        return path

    def to_xarray(self, names=None) -> xr.DataArray:
        """The maps as one 4-D array ``(map, x, y, z)`` with mm coordinates on ``x``, ``y``,
        ``z`` (NaN outside the mask), for xarray-native use: ``res.to_xarray().sel(map="z")``.
        Requires an axis-aligned affine."""
        aff = self.space.affine
        if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))):
            raise DaskmetaError("to_xarray needs an axis-aligned (diagonal) affine")
        names = list(names or self.map_names)
        axes = [aff[d, 3] + aff[d, d] * np.arange(self.space.shape[d]) for d in range(3)]
        vol = np.full((len(names),) + self.space.shape, np.nan, dtype=np.float64)
        for i, name in enumerate(names):
            vol[i][self.space.mask] = self._vector(name)
        return xr.DataArray(vol, dims=("map", "x", "y", "z"),
                            coords={"map": names, "x": axes[0], "y": axes[1], "z": axes[2]},
                            name="maps", attrs=dict(self.attrs))

    def get_table(self, name: str = "z", threshold: float = 3.1, min_size: int = 0,
                  connectivity: int = 26, two_sided: bool = False,
                  peak_map: str | None = None) -> pd.DataFrame:
        """Cluster table of a map thresholded at ``threshold`` (see :func:`cluster_table`);
        peaks are taken from ``peak_map`` when given (e.g. ``"z"`` for the clusters of a
        corrected map)."""
        vol = np.zeros(self.space.shape)
        vol[self.space.mask] = self._vector(name)
        peak_vol = None
        if peak_map is not None:
            peak_vol = np.zeros(self.space.shape)
            peak_vol[self.space.mask] = self._vector(peak_map)
        return cluster_table(vol, self.space, threshold, min_size=min_size,
                             connectivity=connectivity, two_sided=two_sided,
                             peak_volume=peak_vol)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
