"""Decoder models: the map of every label, in a Zarr store, decoded against in blocks.

A model is a Zarr v3 group that plain ``xarray.open_zarr(path, consolidated=False)`` opens:

- ``maps`` (``label`` x ``voxel``, float32, uncompressed chunks of
  :data:`LABELS_PER_CHUNK` whole maps): the label maps (NiMARE's ``target_image`` of each
  label's meta-analysis);
- ``label`` (the names), ``n_studies`` (studies each label holds for), ``map_mean`` and
  ``map_norm`` (each map's mean and the l2 norm of its deviations from it, float64: what a
  Pearson correlation needs besides one dot product);
- ``mask`` (the mask volume) and, in the attributes, the mask's affine and hash, the decoder
  and its parameters, the input's provenance, and ``complete``.

A model is written under a temporary name next to its final path and renamed into place
once complete, so a path never holds half a model. :meth:`DecoderModel.transform`
correlates any number of images with every map as one matrix product over blocks of maps
read in turn (two threads), never holding the model in memory.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from daskmeta.exceptions import DaskmetaError

__all__ = ["LABELS_PER_CHUNK", "DecoderModel", "images_to_matrix"]

#: Label maps per chunk of ``maps`` (one file; the unit builds write and decoding reads).
LABELS_PER_CHUNK = 16
MODEL_FORMAT = "daskmeta-decoder-model"
MODEL_VERSION = 1


def images_to_matrix(imgs, space, name: str = "image") -> np.ndarray:
    """``(n_images, n_voxels)`` float32 in-mask values of images (a path, an image, a list of
    them, or a 4-D image), resampled (continuous interpolation, nilearn) to the mask's grid
    when on another grid.

    Raises
    ------
    DaskmetaError
        For an unreadable file, an image that is not 3-D or 4-D, non-finite values inside
        the mask, or an image constant inside the mask (its correlation is undefined).
    """
    import nibabel as nib

    items = imgs if isinstance(imgs, list | tuple) else [imgs]
    if not items:
        raise DaskmetaError("no image to decode")
    vectors = []
    for pos, item in enumerate(items):
        label = f"{name} {pos}" if len(items) > 1 else name
        if not isinstance(item, nib.spatialimages.SpatialImage):
            label = str(item)
            try:
                item = nib.load(str(item))
            except Exception as exc:  # nibabel raises many types for bad files
                raise DaskmetaError(f"cannot read {label}: {exc}") from None
        shape = item.shape
        if len(shape) == 4 and shape[3] >= 1:
            vols = [item.slicer[..., t] for t in range(shape[3])]
        elif len(shape) == 3:
            vols = [item]
        else:
            raise DaskmetaError(f"{label} must be a 3-D or 4-D image; got shape {tuple(shape)}")
        for t, vol in enumerate(vols):
            what = label if len(vols) == 1 else f"{label} volume {t}"
            vectors.append(_vector(vol, space, what))
    return np.vstack(vectors)


def _vector(img, space, what: str) -> np.ndarray:
    try:
        if tuple(img.shape[:3]) != space.shape or not np.allclose(img.affine, space.affine,
                                                                   atol=1e-4):
            from nilearn.image import resample_to_img

            img = resample_to_img(img, space.mask_img, interpolation="continuous",
                                  force_resample=True, copy_header=True)
        data = np.asanyarray(img.dataobj)
    except DaskmetaError:
        raise
    except Exception as exc:  # a corrupt payload fails here, when the data are read
        raise DaskmetaError(f"cannot read the data of {what}: {exc}") from None
    if data.dtype.kind not in "biuf":
        raise DaskmetaError(f"{what} holds {data.dtype} values, not numbers")
    vec = np.asarray(data.reshape(space.shape)[space.mask], dtype=np.float32)
    bad = ~np.isfinite(vec)
    if bad.any():
        raise DaskmetaError(f"{what} has {int(bad.sum())} non-finite values inside the mask")
    if vec.size and vec.max() == vec.min():
        raise DaskmetaError(f"{what} is constant inside the mask: its correlation with a map "
                            "is undefined")
    return vec


class _Writer:
    """Writes a model under a temporary name; :meth:`finish` renames it into place."""

    def __init__(self, path: Path, names, n_studies, space, attrs: dict):
        import xarray as xr
        import zarr

        self.path = path
        self.tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        n, n_vox = len(names), space.n_voxels
        coords = xr.Dataset(coords={"label": np.asarray(list(names), dtype=object)})
        coords.to_zarr(self.tmp, mode="w", consolidated=False, zarr_format=3)
        root = zarr.open_group(self.tmp, mode="r+")
        root.attrs.update({"format": MODEL_FORMAT, "format_version": MODEL_VERSION,
                           "complete": False, **space.describe(),
                           **{k: _jsonable(v) for k, v in attrs.items()}})
        root.create_array("maps", shape=(n, n_vox), chunks=(LABELS_PER_CHUNK, n_vox),
                          dtype="float32", compressors=None, fill_value=np.nan,
                          dimension_names=("label", "voxel"))
        for key in ("map_mean", "map_norm"):
            root.create_array(key, shape=(n,), chunks=(max(n, 1),), dtype="float64",
                              fill_value=np.nan, dimension_names=("label",))
        root.create_array("n_studies", data=np.asarray(n_studies, dtype=np.int64),
                          dimension_names=("label",))
        root.create_array("mask", data=space.mask.astype(np.uint8),
                          dimension_names=("i", "j", "k"))
        self.n_labels = n

    @property
    def maps_path(self) -> str:
        return str(self.tmp)

    def finish(self, mean, norm, extra_attrs: dict | None = None, overwrite=False):
        import zarr

        root = zarr.open_group(self.tmp, mode="r+")
        root["map_mean"][:] = np.asarray(mean, dtype=np.float64)
        root["map_norm"][:] = np.asarray(norm, dtype=np.float64)
        root.attrs.update({**{k: _jsonable(v) for k, v in (extra_attrs or {}).items()},
                           "complete": True})
        if self.path.exists():
            if not overwrite:
                self.abort()
                raise DaskmetaError(f"{self.path} exists; pass overwrite=True (CLI "
                                    "--overwrite) to replace it, or another path")
            _remove_model(self.path)
        os.replace(self.tmp, self.path)
        return DecoderModel.open(self.path)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _remove_model(path: Path) -> None:
    """Remove what is at ``path``, only if it is a decoder model (never another folder)."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        ok = attrs.get("format") == MODEL_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DaskmetaError(f"refusing to replace {path}: it is not a daskmeta decoder model")
    shutil.rmtree(path)


def write_maps_block(maps_path: str, start: int, values: np.ndarray):
    """Write label maps ``start:start + len(values)`` (whole chunks; runs in a task) and
    return their means and deviation norms (float64)."""
    import zarr

    values = np.asarray(values, dtype=np.float32)
    zarr.open_array(maps_path, path="maps", mode="r+")[start:start + len(values)] = values
    return _moments(values)


def _moments(values: np.ndarray):
    mean = values.mean(axis=1, dtype=np.float64)
    norm = np.empty(len(values))
    for i, row in enumerate(values):  # one label at a time: no float64 copy of the block
        dev = row.astype(np.float64) - mean[i]
        # numpy's pairwise sum, not BLAS's dot: the same bits whatever BLAS's thread count
        # (a worker process may run BLAS on one thread, this process on several).
        norm[i] = np.sqrt(np.sum(dev * dev))
    return mean, norm


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class DecoderModel:
    """A decoder model opened lazily: label maps in a Zarr store (see the module's notes).

    Use :meth:`open`; fitted decoders return one as ``model_``.

    Attributes
    ----------
    path : pathlib.Path
    labels : list of str
    n_studies : (n_labels,) int64 ndarray
    space : Space
        The mask of the maps.
    attrs : dict
        Provenance: decoder, parameters, input, mask.
    """

    def __init__(self, path: Path, attrs: dict, labels, n_studies, space, mean, norm):
        self.path = path
        self.attrs = attrs
        self.labels = list(labels)
        self.n_studies = np.asarray(n_studies)
        self.space = space
        self._mean = np.asarray(mean, dtype=np.float64)
        self._norm = np.asarray(norm, dtype=np.float64)

    @classmethod
    def open(cls, path) -> DecoderModel:
        """Open a model (reads its labels, mask and per-label moments; maps stay on disk).

        Raises
        ------
        DaskmetaError
            If ``path`` is not a complete daskmeta decoder model.
        """
        import nibabel as nib
        import zarr

        from daskmeta.space import Space

        path = Path(path)
        try:
            root = zarr.open_group(path, mode="r")
            attrs = dict(root.attrs)
        except Exception:
            raise DaskmetaError(f"{path} is not a daskmeta decoder model (no Zarr group "
                                "there)") from None
        if attrs.get("format") != MODEL_FORMAT:
            raise DaskmetaError(f"{path} is a Zarr store but not a daskmeta decoder model")
        if attrs.get("format_version", 0) > MODEL_VERSION:
            raise DaskmetaError(f"{path} was written by a newer daskmeta")
        if not attrs.get("complete"):
            raise DaskmetaError(f"{path} is an incomplete decoder model (its build did not "
                                "finish); build it again")
        try:
            labels = [str(x) for x in root["label"][:]]
            n_studies = root["n_studies"][:]
            mean, norm = root["map_mean"][:], root["map_norm"][:]
            mask = np.asarray(root["mask"][:], dtype=np.uint8)
            shape = root["maps"].shape
        except Exception as exc:
            raise DaskmetaError(f"{path}: cannot read the model ({type(exc).__name__}: "
                                f"{exc})") from None
        space = Space(nib.Nifti1Image(mask, np.asarray(attrs["affine"], dtype=float)))
        space.source = attrs.get("mask_source", "model")
        if space.mask_hash != attrs.get("mask_hash") or shape != (len(labels),
                                                                  space.n_voxels):
            raise DaskmetaError(f"{path}: the maps, labels and mask do not agree")
        return cls(path, attrs, labels, n_studies, space, mean, norm)

    def __repr__(self) -> str:
        return (f"DecoderModel({self.path}, {len(self.labels)} labels x "
                f"{self.space.n_voxels} voxels, {self.attrs.get('target_image')})")

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def to_xarray(self):
        """The store as a lazy ``xarray.Dataset`` (``xarray.open_zarr``)."""
        import xarray as xr

        return xr.open_zarr(self.path, consolidated=False)

    def _maps_array(self):
        import zarr

        return zarr.open_array(self.path, path="maps", mode="r")

    def _raw_chunks(self):
        """Paths of the ``maps`` chunk files when they hold raw little-endian float32 (the
        layout daskmeta writes: read them directly, mapped into memory), else None."""
        if "_raw" in self.__dict__:
            return self._raw
        self._raw = None
        try:
            meta = json.loads((self.path / "maps" / "zarr.json").read_text())
            chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
            ok = (meta["data_type"] == "float32"
                  and meta["codecs"] == [{"name": "bytes",
                                          "configuration": {"endian": "little"}}]
                  and meta["chunk_key_encoding"] == {"name": "default",
                                                     "configuration": {"separator": "/"}}
                  and chunk == [LABELS_PER_CHUNK, self.space.n_voxels]
                  and not meta.get("storage_transformers"))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            n_chunks = -(-self.n_labels // LABELS_PER_CHUNK)
            size = LABELS_PER_CHUNK * self.space.n_voxels * 4
            paths = [self.path / "maps" / "c" / str(c) / "0" for c in range(n_chunks)]
            try:
                if all(p.stat().st_size == size for p in paths):
                    self._raw = paths
            except OSError:
                self._raw = None
        return self._raw

    @property
    def fwe_thresholds(self):
        """Each label's FWE threshold of its association z (``pandas.Series``), or None if the
        model holds no FWE nulls (:func:`daskmeta.decode.fwe.label_fwe`)."""
        import zarr

        root = zarr.open_group(self.path, mode="r")
        if "fwe_threshold" not in root:
            return None
        return pd.Series(root["fwe_threshold"][:], index=pd.Index(self.labels, name="feature"),
                         name=f"z_fwe_{self.attrs.get('fwe_alpha', 0.05):g}")

    def fwe_logp(self, label: str, return_type: str = "image"):
        """A label's voxel-wise FWE-corrected ``-log10 p``: p is the fraction of the label's
        null maxima at least the voxel's z (at least ``1 / n_iters``)."""
        import zarr

        root = zarr.open_group(self.path, mode="r")
        if "fwe_null" not in root:
            raise DaskmetaError(f"the model {self.path} holds no FWE nulls; build it with "
                                "fwe_iters (CLI --fwe-iters)")
        z = self.get_map(label, return_type="array")
        null = np.sort(root["fwe_null"][self.labels.index(label)])
        n = len(null)
        exceed = n - np.searchsorted(null, z, side="left")
        logp = (-np.log10(np.maximum(exceed, 1) / n)).astype(np.float32)
        return logp if return_type == "array" else self.space.to_img(logp)

    def get_map(self, label: str, return_type: str = "image"):
        """One label's map, as a NIfTI image (``"image"``) or in-mask vector (``"array"``)."""
        try:
            i = self.labels.index(label)
        except ValueError:
            raise DaskmetaError(f"{label!r} is not a label of the model {self.path}") from None
        vec = np.asarray(self._maps_array()[i], dtype=np.float32)
        if return_type == "array":
            return vec
        if return_type != "image":
            raise DaskmetaError(f"return_type must be 'image' or 'array'; got {return_type!r}")
        return self.space.to_img(vec)

    def correlate(self, matrix: np.ndarray, threads: int = 2) -> np.ndarray:
        """Pearson r of each row of ``matrix`` (``(n_images, n_voxels)``) with every map:
        ``(n_labels, n_images)`` float64, one matrix product over blocks of maps."""
        x = np.asarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.space.n_voxels:
            raise DaskmetaError(f"expected images of {self.space.n_voxels} in-mask voxels; "
                                f"got shape {x.shape}")
        xc = x - x.mean(axis=1, keepdims=True)
        x_norm = np.sqrt((xc * xc).sum(axis=1))
        xc32 = np.ascontiguousarray(xc.T, dtype=np.float32)
        if xc32.shape[1] == 1:
            xc32 = xc32[:, 0]  # a matrix-vector product
        n = self.n_labels
        dots = np.empty((n, x.shape[0]), dtype=np.float64)
        raw = self._raw_chunks()
        if raw is not None and x.shape[0] > 1:
            # Many images: blocks of GROUP chunks read into a buffer per thread, so the
            # images' matrix is streamed once per GROUP * 16 labels, not per 16.
            group = 8
            buffers = threading.local()

            def block(g):
                a, b = g * LABELS_PER_CHUNK, min((g + group) * LABELS_PER_CHUNK, n)
                buf = getattr(buffers, "buf", None)
                if buf is None:
                    buf = buffers.buf = np.empty((group * LABELS_PER_CHUNK,
                                                  self.space.n_voxels), dtype="<f4")
                for c in range(g, min(g + group, len(raw))):
                    row = (c - g) * LABELS_PER_CHUNK
                    k = min(LABELS_PER_CHUNK, n - c * LABELS_PER_CHUNK)
                    with open(raw[c], "rb", buffering=0) as fh:
                        view = memoryview(buf[row:row + k].reshape(-1)).cast("B")
                        if fh.readinto(view) != view.nbytes:
                            raise DaskmetaError(f"{raw[c]}: a truncated chunk file")
                dots[a:b] = buf[:b - a] @ xc32
            starts = range(0, len(raw), group)
        elif raw is not None:
            def block(c):
                a, b = c * LABELS_PER_CHUNK, min((c + 1) * LABELS_PER_CHUNK, n)
                with open(raw[c], "rb") as fh, mmap.mmap(
                        fh.fileno(), 0, prot=mmap.PROT_READ,
                        flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)) as mm:
                    maps = np.frombuffer(mm, dtype="<f4", count=(b - a) * self.space.n_voxels)
                    dots[a:b] = (maps.reshape(b - a, -1) @ xc32).reshape(b - a, -1)
                    del maps
            starts = range(len(raw))
        else:
            arr = self._maps_array()
            step = LABELS_PER_CHUNK * 4

            def block(a):
                b = min(a + step, n)
                dots[a:b] = (np.asarray(arr[a:b], dtype=np.float32) @ xc32).reshape(b - a, -1)
            starts = range(0, n, step)
        from threadpoolctl import threadpool_limits

        # One BLAS thread per block and blocks in parallel: no BLAS threads spinning while
        # a partner waits for a core (a busy machine), and reading overlaps computing.
        with threadpool_limits(1, user_api="blas"):
            if threads > 1 and len(starts) > 1:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(block, starts))
            else:
                for a in starts:
                    block(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return dots / (self._norm[:, None] * x_norm[None, :])

    def transform(self, imgs, names=None) -> pd.DataFrame:
        """Correlate images with every label's map (NiMARE's ``CorrelationDecoder.transform``).

        Parameters
        ----------
        imgs : image, path, list of them, or a 4-D image
            Images on any grid (resampled to the model's mask with nilearn when needed).
        names : list of str, optional
            Column names (default: ``r`` for one image, else ``r_0``, ``r_1``, ...).

        Returns
        -------
        pandas.DataFrame
            One row per label (index named ``feature``), one column of Pearson r per image.
        """
        matrix = images_to_matrix(imgs, self.space)
        r = self.correlate(matrix)
        if names is None:
            names = ["r"] if r.shape[1] == 1 else [f"r_{i}" for i in range(r.shape[1])]
        elif len(names) != r.shape[1]:
            raise DaskmetaError(f"{len(names)} names for {r.shape[1]} images")
        out = pd.DataFrame(r, index=pd.Index(self.labels, name="feature"), columns=list(names))
        return out
