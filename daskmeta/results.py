"""MetaResult: named maps over the in-mask voxels, with provenance, nulls and cluster tables."""

from __future__ import annotations

import contextlib
import json
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from daskmeta.exceptions import DaskmetaError
from daskmeta.space import Space

__all__ = ["DEFAULT_ALPHA", "DEFAULT_CONNECTIVITY", "MetaResult", "cluster_table",
           "decode_attrs", "JSON_ATTRS"]

_CONNECTIVITY = {6: 1, 18: 2, 26: 3}
#: Voxel neighbourhood of cluster tables by default: faces (6), as the cluster-level Monte
#: Carlo correction (:data:`daskmeta.correct.CLUSTER_STRUCTURE`), NiMARE and nilearn.
DEFAULT_CONNECTIVITY = 6
#: Corrected p-value at which the tables of corrected maps are cut by default.
DEFAULT_ALPHA = 0.05
#: The attribute of :meth:`MetaResult.to_xarray` arrays that lists (as a JSON list) the
#: attributes stored as JSON text; :func:`decode_attrs` reads them back.
JSON_ATTRS = "daskmeta_json_attrs"
_TABLE_COLUMNS = ["sign", "peak_x", "peak_y", "peak_z", "peak_value", "n_voxels", "size_mm3"]


def cluster_table(volume: np.ndarray, space: Space, threshold: float, min_size: int = 0,
                  connectivity: int = DEFAULT_CONNECTIVITY, two_sided: bool = False,
                  peak_volume: np.ndarray | None = None, return_labels: bool = False):
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
        Voxel neighbourhood: faces (6, the default, as the cluster-level correction, NiMARE
        and nilearn), faces and edges (18), or faces, edges and corners (26).
    two_sided : bool
        Also report negative clusters.
    peak_volume : (X, Y, Z) ndarray, optional
        Where to find each cluster's peak and its value (default: ``volume``); e.g. the
        uncorrected z map for clusters of a cluster-level corrected map.
    return_labels : bool
        Also return the clusters as a volume of ``cluster_id`` values (0 elsewhere).

    Returns
    -------
    pandas.DataFrame
        One row per cluster, largest first: ``cluster_id``, ``sign``, ``peak_x``, ``peak_y``,
        ``peak_z`` (mm), ``peak_value``, ``n_voxels``, ``size_mm3``.
    labels : (X, Y, Z) int ndarray
        Only with ``return_labels``.
    """
    volume = np.asarray(volume)
    supra = {1: volume > threshold}
    if two_sided:
        supra[-1] = volume < -threshold
    return _clusters(supra, space, volume if peak_volume is None else peak_volume, min_size,
                     connectivity, return_labels)


def _clusters(supra: dict, space: Space, peak_volume, min_size: int, connectivity: int,
              return_labels: bool):
    """The table (and label volume) of the clusters of boolean volumes ``supra[sign]``."""
    if connectivity not in _CONNECTIVITY:
        raise DaskmetaError(f"connectivity must be 6, 18 or 26; got {connectivity!r}")
    struct = ndimage.generate_binary_structure(3, _CONNECTIVITY[connectivity])
    voxel_mm3 = float(np.prod(space.zooms))
    peak_volume = np.asarray(peak_volume)
    rows, members = [], []
    for sign, mask in supra.items():
        labels, n = ndimage.label(mask, structure=struct)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        peaks = ndimage.maximum_position(peak_volume * sign, labels=labels, index=index)
        for lab, size, peak in zip(index, sizes, peaks):
            if size < min_size:
                continue
            xyz = space.ijk_to_mm(np.asarray(peak))[0]
            rows.append({"sign": sign, "peak_x": xyz[0], "peak_y": xyz[1], "peak_z": xyz[2],
                         "peak_value": float(peak_volume[peak]), "n_voxels": int(size),
                         "size_mm3": float(size * voxel_mm3)})
            if return_labels:
                members.append(labels == lab)
    table = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    table = table.sort_values(["n_voxels", "peak_value"], ascending=[False, False],
                              key=lambda c: c.abs() if c.name == "peak_value" else c)
    order = table.index.to_numpy()
    table.insert(0, "cluster_id", np.arange(1, len(table) + 1))
    table = table.reset_index(drop=True)
    if not return_labels:
        return table
    label_volume = np.zeros(space.shape, dtype=np.int32)
    for cluster_id, row in enumerate(order, start=1):
        label_volume[members[row]] = cluster_id
    return table, label_volume


def _split_name(name: str) -> tuple[str, str] | None:
    """``("z", "_corr-FWE_method-bonferroni")`` for ``"z_corr-FWE_method-bonferroni"``: the
    kind and suffix of a corrected map's name, or None for other names."""
    for kind in ("z", "logp", "p"):
        if name.startswith(kind + "_"):
            suffix = name[len(kind):]
            if "_corr-" in suffix and "_corr-none" not in suffix:
                return kind, suffix
    return None


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
    tables : dict of str to pandas.DataFrame, optional
        Named tables, e.g. the diagnostics' contribution tables
        (``<map>_diag-Jackknife_tab-counts_tail-positive``), as NiMARE's ``tables``.

    Attributes
    ----------
    maps : xarray.Dataset
        One variable per map over the ``voxel`` dimension, with ``x_mm``, ``y_mm``, ``z_mm``
        coordinates.
    tables : dict of str to pandas.DataFrame
        Named tables (kept by :meth:`copy` and the corrections, written by
        :meth:`save_tables`).
    """

    def __init__(self, maps: dict, space: Space, attrs: dict | None = None, estimator=None,
                 null_distributions: dict | None = None, tables: dict | None = None):
        self.space = space
        self.estimator = estimator
        self.null_distributions = dict(null_distributions or {})
        self.tables: dict = {}
        self.add_tables(tables or {})
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
        """A copy sharing the estimator; maps, nulls and tables are copied."""
        new = MetaResult({k: v.copy() for k, v in ((n, self._vector(n)) for n in self.map_names)},
                         self.space, dict(self.attrs), self.estimator,
                         {k: np.copy(v) for k, v in self.null_distributions.items()},
                         {k: v.copy() for k, v in self.tables.items()})
        return new

    def add_tables(self, tables: dict):
        """Add named tables (pandas DataFrames) in place; used by diagnostics on a copy."""
        for name, table in tables.items():
            if not isinstance(name, str) or not name:
                raise DaskmetaError(f"table names are non-empty strings; got {name!r}")
            if not isinstance(table, pd.DataFrame):
                raise DaskmetaError(f"table {name!r} is a {type(table).__name__}; expected a "
                                    "pandas DataFrame")
            self.tables[name] = table
        return self

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
        tables = f", tables=[{', '.join(self.tables)}]" if self.tables else ""
        return f"MetaResult({est}, maps=[{', '.join(self.map_names)}]{tables})"

    # -- exports ---------------------------------------------------------------------------
    def save_maps(self, output_dir=".", prefix: str = "", names=None) -> list[Path]:
        """Write maps as NIfTI files ``{prefix}_{name}.nii.gz`` (NiMARE's naming).

        Each file is written to a temporary name in ``output_dir`` and renamed into place,
        so a reader never sees half a file. ``prefix`` and map names must be plain file
        names (no path separators, no ``..``): every file lands in ``output_dir``.

        Returns the written paths.
        """
        out = Path(output_dir)
        names = list(names or self.map_names)
        targets = [output_path(out, f"{prefix}_{name}.nii.gz" if prefix else f"{name}.nii.gz")
                   for name in names]
        out.mkdir(parents=True, exist_ok=True)
        for name, target in zip(names, targets, strict=True):
            img = self.get_map(name)
            atomic_write(target, lambda tmp, img=img: img.to_filename(str(tmp)))
        return targets

    def save_tables(self, output_dir=".", prefix: str = "", names=None) -> list[Path]:
        """Write tables as tab-separated files ``{prefix}_{name}.tsv`` (``{name}.tsv`` without
        a prefix; NiMARE's naming), without the index, atomically as :meth:`save_maps`.

        Returns the written paths.
        """
        out = Path(output_dir)
        names = list(self.tables if names is None else names)
        missing = [n for n in names if n not in self.tables]
        if missing:
            raise DaskmetaError(f"no table named {missing[0]!r}; available: "
                                f"{', '.join(self.tables) or 'none'}")
        targets = [output_path(out, f"{prefix}_{name}.tsv" if prefix else f"{name}.tsv")
                   for name in names]
        out.mkdir(parents=True, exist_ok=True)
        for name, target in zip(names, targets, strict=True):
            table = self.tables[name]
            atomic_write(target, lambda tmp, t=table: t.to_csv(tmp, sep="\t", index=False))
        return targets

    def save_provenance(self, path) -> Path:
        """Write the attributes (parameters, provenance) as JSON (atomically)."""
        path = Path(path)
        text = json.dumps(_jsonable(dict(self.attrs)), indent=1, sort_keys=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    def to_xarray(self, names=None) -> xr.DataArray:
        """The maps as one 4-D array ``(map, x, y, z)`` with mm coordinates on ``x``, ``y``,
        ``z`` (NaN outside the mask), for xarray-native use: ``res.to_xarray().sel(map="z")``.
        Requires an axis-aligned affine.

        The array writes as it is with ``to_netcdf`` and ``to_zarr``: attributes that are
        not a string, a float or an integer of 32 bits (the affine, the mask's shape, a
        64-bit seed, True/False, None) are stored as JSON text, and the attribute
        ``daskmeta_json_attrs`` lists them; :func:`decode_attrs` gives the attributes back
        as :attr:`attrs` holds them. :attr:`tables` are not part of it (write them with
        :meth:`save_tables`)."""
        aff = self.space.affine
        if not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))):
            raise DaskmetaError("to_xarray needs an axis-aligned (diagonal) affine")
        names = list(names or self.map_names)
        axes = [aff[d, 3] + aff[d, d] * np.arange(self.space.shape[d]) for d in range(3)]
        vol = np.full((len(names),) + self.space.shape, np.nan, dtype=np.float64)
        for i, name in enumerate(names):
            vol[i][self.space.mask] = self._vector(name)
        return xr.DataArray(vol, dims=("map", "x", "y", "z"),
                            coords={"map": np.array(names, dtype=object), "x": axes[0],
                                    "y": axes[1], "z": axes[2]},
                            name="maps", attrs=_encode_attrs(dict(self.attrs)))

    def is_corrected(self, name: str) -> bool:
        """Whether ``name`` is a corrected map (``{z,p,logp}_..._corr-...``) with a ``p`` or
        ``logp`` map of the same correction in this result."""
        split = _split_name(name)
        return split is not None and any(kind + split[1] in self.maps for kind in ("p", "logp"))

    def significant(self, name: str, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
        """In-mask boolean vector: where the corrected p-value of map ``name`` is < ``alpha``.

        ``name`` is any map of a correction (``z_...``, ``p_...`` or ``logp_...``, e.g.
        ``z_desc-size_level-cluster_corr-FWE_method-montecarlo``); the p-value is read from
        the correction's ``p_...`` map when the result has one (Bonferroni, FDR), else from
        its ``logp_...`` map (``-log10(p) > -log10(alpha)``, in the map's precision, so a
        p-value equal to ``alpha`` is not significant). The corrected ``z`` maps of
        Bonferroni and FDR are two-tailed conversions of a one-sided p (as NiMARE's), so
        ``z > 1.645`` would keep p up to 0.1: the p-value is the rule.
        """
        if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
                or not 0 < alpha < 1):
            raise DaskmetaError(f"alpha must be strictly between 0 and 1; got {alpha!r}")
        split = _split_name(name)
        if split is None:
            raise DaskmetaError(
                f"{name!r} is not a corrected map (named {{z,p,logp}}_..._corr-...); "
                f"corrected maps here: {', '.join(self._corrected_names()) or 'none'}"
            )
        suffix = split[1]
        if "p" + suffix in self.maps:
            p = self._vector("p" + suffix)
            return p < np.asarray(alpha, dtype=p.dtype if p.dtype.kind == "f" else float)
        if "logp" + suffix in self.maps:
            logp = self._vector("logp" + suffix)
            dtype = logp.dtype if logp.dtype.kind == "f" else np.float64
            return logp > -np.log10(np.asarray(alpha, dtype=dtype))
        raise DaskmetaError(
            f"no p or logp map of the correction of {name!r} (looked for 'p{suffix}' and "
            f"'logp{suffix}'); available: {', '.join(self.map_names)}"
        )

    def _corrected_names(self) -> list[str]:
        return [n for n in self.map_names if self.is_corrected(n)]

    def _volume(self, name: str) -> np.ndarray:
        vol = np.zeros(self.space.shape)
        vol[self.space.mask] = self._vector(name)
        return vol

    def get_table(self, name: str = "z", threshold: float | None = None, min_size: int = 0,
                  connectivity: int = DEFAULT_CONNECTIVITY, two_sided: bool = False,
                  peak_map: str | None = None, alpha: float | None = None,
                  return_labels: bool = False):
        """Cluster table of a map (see :func:`cluster_table`), or a stored table.

        A ``name`` of :attr:`tables` (e.g. a diagnostic's
        ``<map>_diag-Jackknife_tab-counts_tail-positive``) gives a copy of that table; the
        other parameters then do not apply. For a map, two rules decide which voxels form clusters:

        - ``threshold``: voxels whose value in ``name`` is > ``threshold`` (and
          < -``threshold`` when ``two_sided``); the default for uncorrected maps, at 3.1.
        - ``alpha``: voxels whose *corrected* p-value is < ``alpha`` (see
          :meth:`significant`), split by the sign of the map's ``z``; the default for
          corrected maps, at 0.05. The table of a cluster-level corrected map then lists
          exactly the clusters the correction tested and found significant (both use faces
          connectivity), and Bonferroni and FDR tables hold only voxels with corrected
          p < ``alpha``.

        Parameters
        ----------
        name : str
            The map.
        threshold : float, optional
            Value threshold (not with ``alpha``).
        min_size : int
            Smallest cluster kept, in voxels.
        connectivity : {6, 18, 26}
            Voxel neighbourhood (default faces, 6).
        two_sided : bool
            Also report negative clusters.
        peak_map : str, optional
            Map whose maximum in each cluster is its peak (default: the uncorrected ``z``
            for tables by ``alpha``, else ``name``).
        alpha : float, optional
            Corrected p-value threshold for a corrected map (not with ``threshold``).
        return_labels : bool
            Also return an in-mask vector of each voxel's ``cluster_id`` (0 outside the
            listed clusters).

        Returns
        -------
        pandas.DataFrame, or (DataFrame, ndarray) with ``return_labels``
        """
        if name in self.tables and name not in self.maps:
            if threshold is not None or alpha is not None or return_labels:
                raise DaskmetaError(f"{name!r} is a stored table; threshold, alpha and "
                                    "return_labels apply only to maps")
            return self.tables[name].copy()
        if threshold is not None and alpha is not None:
            raise DaskmetaError("give get_table a threshold or an alpha, not both")
        if threshold is None and alpha is None:
            if self.is_corrected(name):
                alpha = DEFAULT_ALPHA
            else:
                threshold = 3.1
        if alpha is None:
            vol = self._volume(name)
            peak_vol = None if peak_map is None else self._volume(peak_map)
            out = cluster_table(vol, self.space, threshold, min_size=min_size,
                                connectivity=connectivity, two_sided=two_sided,
                                peak_volume=peak_vol, return_labels=return_labels)
        else:
            keep = np.zeros(self.space.shape, dtype=bool)
            keep[self.space.mask] = self.significant(name, alpha)
            kind, suffix = _split_name(name)
            sign_name = next((n for n in ("z" + suffix, "z") if n in self.maps), None)
            if peak_map is None:
                peak_map = "z" if "z" in self.maps else sign_name or name
            sign_vol = np.ones(self.space.shape) if sign_name is None else self._volume(sign_name)
            supra = {1: keep & (sign_vol > 0)}
            if two_sided:
                supra[-1] = keep & (sign_vol < 0)
            out = _clusters(supra, self.space, self._volume(peak_map), min_size, connectivity,
                            return_labels)
        if not return_labels:
            return out
        table, labels = out
        return table, labels[self.space.mask]


def output_path(directory, name: str) -> Path:
    """``directory / name`` for a file name that stays in ``directory``.

    Raises
    ------
    DaskmetaError
        If ``name`` is empty, holds a path separator or a NUL, or is ``.`` / ``..`` (or
        starts with ``..``): such a name would write outside the folder, or nowhere.
    """
    import os

    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith("..")
            or any(sep in name for sep in seps) or "\0" in name):
        raise DaskmetaError(f"output file name {name!r} is not a plain file name (no path "
                            f"separators, no '..'): it would not be written inside "
                            f"{str(directory)!r}")
    return Path(directory) / name


def atomic_write(path, write) -> Path:
    """Write a file through a temporary file in its folder, renamed into place
    (:func:`os.replace`): a crash never leaves half a file under the final name, and an
    existing symbolic link at ``path`` is replaced, not followed.

    Parameters
    ----------
    path : path-like
        The final file.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path`` (which keeps ``path``'s
        suffixes, so writers that choose the format by extension still do).
    """
    import os
    import uuid

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    # A fresh name the writer creates itself (so the file gets the usual permissions).
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _nc_scalar(value) -> bool:
    """Whether an attribute value writes as itself to netCDF (classic, via scipy) and Zarr."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, float | np.floating):
        return True
    if isinstance(value, int | np.integer):
        return -(2**31) <= int(value) < 2**31
    return False


def _encode_attrs(attrs: dict) -> dict:
    out, encoded = {}, []
    for key, value in attrs.items():
        value = _jsonable(value)
        if _nc_scalar(value):
            out[key] = value
        else:
            out[key] = json.dumps(value)
            encoded.append(key)
    if encoded:
        out[JSON_ATTRS] = json.dumps(encoded)
    return out


def decode_attrs(attrs: dict) -> dict:
    """The attributes of an array from :meth:`MetaResult.to_xarray` (e.g. read back with
    ``xarray.open_dataarray`` or ``xarray.open_zarr``) as the result held them: the ones
    listed in ``daskmeta_json_attrs`` decoded from JSON."""
    attrs = dict(attrs)
    names = json.loads(attrs.pop(JSON_ATTRS, "[]"))
    for key in names:
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    return {k: _jsonable(v) for k, v in attrs.items()}


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
