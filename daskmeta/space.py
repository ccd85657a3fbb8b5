"""The analysis space: a mask image, its voxel grid, and coordinate transforms.

Everything downstream of :class:`Space` is a vector over the in-mask voxels, in the mask's C
order (the order :func:`numpy.nonzero` gives), the same order NiMARE and nilearn use.
"""

from __future__ import annotations

import hashlib
import re
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np

from daskmeta.exceptions import DaskmetaError

__all__ = ["Space", "mni2tal", "tal2mni", "normalize_space_name", "parse_space_name",
           "resolve_space", "TAL2MNI_METHOD"]

#: Lancaster et al. (2007) ``tal2icbm_other`` (the transform for data normalized with
#: templates other than SPM's or FSL's), inverted to go from Talairach to MNI. This is the
#: variant BrainMap's GingerALE and NiMARE use, so coordinates agree with theirs.
_ICBM_OTHER = np.array(
    [
        [0.9357, 0.0029, -0.0072, -1.0423],
        [-0.0065, 0.9396, -0.0726, -1.3940],
        [0.0103, 0.0752, 0.8967, 3.6475],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
TAL2MNI_METHOD = "lancaster2007_icbm_other"

# Space names are read word by word (lower case; words are runs of letters and digits):
# the first word names the space, the others may only qualify it (a resolution, a template
# variant, filler words) or say where the coordinates came from ("tal (from mni)" is
# Talairach, "MNI, converted from Talairach" is MNI). A name that mentions the other space
# in any other way ("mni2tal", "MNI to TAL"), or holds a word not listed here, is not
# recognised: guessing would put coordinates in the wrong space without a word.
_SPACE_WORDS = {
    "MNI": {"mni", "mni152", "mni305", "icbm", "icbm152", "ale"},  # ale_2mm: NiMARE's template
    "TAL": {"tal", "talairach", "talairach88", "tt88"},
}
_QUALIFIERS = {
    "MNI": {"nlin", "lin", "linear", "nonlinear", "asym", "sym", "template", "152", "2009a",
            "2009c", "6asym", "2009casym", "colin27", "avg152", "t1"},
    "TAL": {"male", "female", "scaled", "88", "1988", "tournoux", "daemon"},
}
_FILLERS = {"space", "coordinates", "coordinate", "coords", "standard", "stereotaxic",
            "stereotactic", "atlas", "brain", "the", "and", "mm"}
_DERIVATION = {"from", "converted", "transformed", "transform", "transformation", "via",
               "using", "with", "by", "lancaster", "brett", "icbm2tal", "mni2tal", "tal2icbm",
               "tal2mni", "other"}
_RESOLUTION = re.compile(r"\d+(mm)?")
_UNKNOWN_NAMES = {"unknown"}
_ALLOWED_TEXT = ("MNI (e.g. MNI, MNI152, mni152_2mm, ale_2mm, ICBM), TAL (e.g. TAL, "
                 "Talairach, TAL_male, talairach_scaled, 'tal (from mni)'), UNKNOWN (treated "
                 "as MNI)")


def parse_space_name(name: object) -> str | None:
    """The canonical name (``"MNI"``, ``"TAL"`` or ``"UNKNOWN"``) of a space label, or None
    if it is not recognised.

    The first word names the space (``mni``, ``mni152``, ``icbm``, ``ale`` as in NiMARE's
    ``ale_2mm``; ``tal``, ``talairach``); the other words may give a resolution (``2mm``),
    a template variant (``TAL_male``, ``talairach_scaled``, ``MNI152NLin`` written apart),
    filler words (``space``, ``coordinates``) or an origin after ``from`` (``tal (from
    mni)`` is Talairach). Anything else, including a name that mentions the other space
    without ``from`` (``mni2tal``), is not recognised. ``unknown`` is ``"UNKNOWN"``.
    """
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in _UNKNOWN_NAMES:
        return "UNKNOWN"
    if key.upper() in ("MNI", "TAL"):
        return key.upper()
    words = re.findall(r"[a-z0-9]+", key)
    if not words or not key.isascii():
        return None
    space = next((s for s, first in _SPACE_WORDS.items() if words[0] in first), None)
    if space is None:
        return None
    other = "TAL" if space == "MNI" else "MNI"
    seen_from = False
    for word in words[1:]:
        if word == "from":
            seen_from = True
        if (word in _SPACE_WORDS[space] or word in _QUALIFIERS[space] or word in _FILLERS
                or word in _DERIVATION or _RESOLUTION.fullmatch(word)):
            continue
        if word in _SPACE_WORDS[other] and seen_from:
            continue
        return None
    return space


def normalize_space_name(name: object, where: str = "", unknown: str = "error") -> str:
    """Return the canonical name (``"MNI"``, ``"TAL"`` or ``"UNKNOWN"``) of a space label.

    Parameters
    ----------
    name : object
        A space label such as ``"MNI"``, ``"Talairach"``, ``"tal"``, ``"mni152_2mm"`` or
        ``"TAL_male"`` (see :func:`parse_space_name` for the names recognised).
    where : str
        Context for the error message (file, line, experiment).
    unknown : {"error", "warn"}
        What to do with a label that is not recognised: raise, or warn (one
        :class:`~daskmeta.DaskmetaWarning`) and return ``"UNKNOWN"`` (coordinates taken as
        MNI, as NiMARE leaves coordinates of spaces it does not recognise).

    Raises
    ------
    DaskmetaError
        If the label is not a known space (with ``unknown="error"``).
    """
    if unknown not in ("error", "warn"):
        raise DaskmetaError(f"unknown must be 'error' or 'warn'; got {unknown!r}")
    canon = parse_space_name(name)
    if canon is not None:
        return canon
    prefix = f"{where}: " if where else ""
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    if unknown == "warn":
        import warnings

        from daskmeta.exceptions import DaskmetaWarning

        warnings.warn(f"{prefix}coordinate space {shown} is neither MNI nor Talairach; its "
                      "coordinates are taken as MNI (recorded as UNKNOWN)", DaskmetaWarning,
                      stacklevel=2)
        return "UNKNOWN"
    raise DaskmetaError(f"{prefix}unknown coordinate space {shown}; allowed: {_ALLOWED_TEXT}")


def tal2mni(xyz: np.ndarray) -> np.ndarray:
    """Convert Talairach coordinates to MNI with Lancaster's ``icbm_other`` transform.

    Parameters
    ----------
    xyz : (N, 3) array
        Talairach coordinates in mm.

    Returns
    -------
    (N, 3) ndarray
        MNI coordinates in mm.
    """
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    inv = np.linalg.inv(_ICBM_OTHER)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def mni2tal(xyz: np.ndarray) -> np.ndarray:
    """Convert MNI coordinates to Talairach (the inverse of :func:`tal2mni`)."""
    xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
    return xyz @ _ICBM_OTHER[:3, :3].T + _ICBM_OTHER[:3, 3]


def _default_mask_img() -> nib.Nifti1Image:
    # nilearn ships this MNI152 2 mm brain mask (99 x 117 x 95, 235,375 voxels) and loads it
    # offline; NiMARE's FSL mask is not redistributable with the package. For parity with
    # NiMARE pass its mask explicitly (``Space(mask=...)``).
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=2)
    data = np.asarray(img.dataobj).astype(np.uint8)
    return nib.Nifti1Image(data, img.affine)


#: :meth:`Space.near_mask` looks the mask up within this many voxels of a point; wider
#: margins use :meth:`Space.distance_to_mask`.
_NEAR_MASK_MAX_VOXELS = 12


class Space:
    """A mask image and its voxel grid: the space every map lives in.

    Parameters
    ----------
    mask : str, path-like, nibabel image or None
        A 3-D mask image; non-zero voxels are in the mask. ``None`` uses nilearn's MNI152
        2 mm brain mask, which the package can load offline.

    Attributes
    ----------
    mask_img : nibabel.Nifti1Image
        The mask as a uint8 image.
    affine : (4, 4) ndarray
    shape : tuple of int
    n_voxels : int
        Number of in-mask voxels.
    """

    def __init__(self, mask=None):
        if mask is None:
            img = _default_mask_img()
            self.source = "nilearn:MNI152_2mm_brain_mask"
        elif isinstance(mask, Space):
            img = mask.mask_img
            self.source = mask.source
        elif isinstance(mask, nib.spatialimages.SpatialImage):
            img = mask
            self.source = "image"
        else:
            path = Path(mask)
            if not path.exists():
                raise DaskmetaError(f"mask image {str(path)!r} does not exist")
            try:
                img = nib.load(str(path))
            except Exception as exc:  # nibabel raises many types for bad files
                raise DaskmetaError(f"cannot read mask image {str(path)!r}: {exc}") from exc
            self.source = str(path)
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise DaskmetaError(f"a mask must be a 3-D image; got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise DaskmetaError("the mask image contains NaN or infinite values")
        mask_bool = data.astype(bool)
        if not mask_bool.any():
            raise DaskmetaError("the mask image has no non-zero voxel")
        self.mask = mask_bool
        self.affine = np.asarray(img.affine, dtype=float)
        self.shape = tuple(int(s) for s in mask_bool.shape)
        self.mask_img = nib.Nifti1Image(mask_bool.astype(np.uint8), self.affine)
        self.n_voxels = int(mask_bool.sum())

    # -- the voxel grid -------------------------------------------------------------------
    @cached_property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes in mm."""
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @cached_property
    def flat_to_masked(self) -> np.ndarray:
        """int32 array over the flattened (C order) volume: in-mask index, or -1 outside."""
        lut = np.full(self.mask.size, -1, dtype=np.int32)
        lut[self.mask.reshape(-1)] = np.arange(self.n_voxels, dtype=np.int32)
        return lut

    @cached_property
    def voxel_ijk(self) -> np.ndarray:
        """(n_voxels, 3) int array: voxel indices of the in-mask voxels."""
        return np.argwhere(self.mask).astype(np.int32)

    @cached_property
    def voxel_xyz(self) -> np.ndarray:
        """(n_voxels, 3) float array: mm coordinates of the in-mask voxels."""
        return self.ijk_to_mm(self.voxel_ijk)

    @cached_property
    def mask_hash(self) -> str:
        """sha256 of the mask's voxels and affine: identifies the space in provenance."""
        h = hashlib.sha256()
        h.update(np.asarray(self.shape, dtype=np.int64).tobytes())
        h.update(np.round(self.affine, 6).astype(np.float64).tobytes())
        h.update(np.packbits(self.mask.reshape(-1)).tobytes())
        return h.hexdigest()

    def mm_to_ijk(self, xyz) -> np.ndarray:
        """Nearest voxel indices of mm coordinates (rounded as NiMARE's ``mm2vox``)."""
        xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
        ijk = nib.affines.apply_affine(np.linalg.inv(self.affine), xyz)
        return np.round(ijk).astype(np.int64)

    def ijk_to_mm(self, ijk) -> np.ndarray:
        """mm coordinates of voxel indices."""
        return nib.affines.apply_affine(self.affine, np.asarray(ijk, dtype=float).reshape(-1, 3))

    def in_bounds(self, ijk) -> np.ndarray:
        """Whether voxel indices fall inside the image grid."""
        ijk = np.asarray(ijk).reshape(-1, 3)
        return np.all((ijk >= 0) & (ijk < np.asarray(self.shape)), axis=1)

    def in_mask(self, ijk) -> np.ndarray:
        """Whether voxel indices fall inside the mask."""
        ijk = np.asarray(ijk).reshape(-1, 3)
        ok = self.in_bounds(ijk)
        out = np.zeros(len(ijk), dtype=bool)
        good = ijk[ok]
        out[ok] = self.mask[good[:, 0], good[:, 1], good[:, 2]]
        return out

    @cached_property
    def _mask_surface(self):
        """KD-tree of the mask's surface voxels (in mm along the grid axes): the nearest mask
        voxel to any point outside the mask lies on the surface."""
        from scipy import ndimage
        from scipy.spatial import cKDTree

        inner = ndimage.binary_erosion(self.mask, structure=np.ones((3, 3, 3), bool),
                                       border_value=0)
        surface = np.argwhere(self.mask & ~inner)
        return cKDTree(surface * np.asarray(self.zooms, dtype=float))

    def distance_to_mask(self, ijk) -> np.ndarray:
        """Distance in mm from voxel indices (on or off the grid) to the nearest in-mask voxel,
        0 inside the mask."""
        ijk = np.asarray(ijk).reshape(-1, 3)
        out = np.zeros(len(ijk))
        outside = ~self.in_mask(ijk)
        if outside.any():
            points = ijk[outside] * np.asarray(self.zooms, dtype=float)
            out[outside] = self._mask_surface.query(points)[0]
        return out.astype(np.float32)

    def near_mask(self, ijk, margin: float) -> np.ndarray:
        """Whether voxel indices (on or off the grid) lie within ``margin`` mm of an in-mask
        voxel: ``distance_to_mask(ijk) <= margin``, decided by looking the mask up around
        each point outside it (no KD-tree for margins up to
        ``_NEAR_MASK_MAX_VOXELS`` voxels).

        Parameters
        ----------
        ijk : (N, 3) array of int
        margin : float
            mm; ``inf`` accepts every point, ``0`` only in-mask ones.

        Returns
        -------
        (N,) bool ndarray
        """
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        out = self.in_mask(ijk)
        outside = np.flatnonzero(~out)
        if len(outside) == 0 or margin <= 0:
            return out
        if np.isinf(margin):
            return np.ones(len(ijk), dtype=bool)
        zooms = np.asarray(self.zooms, dtype=float)
        radius = int(margin // zooms.min())
        if radius > _NEAR_MASK_MAX_VOXELS:
            return self.distance_to_mask(ijk) <= margin
        # The offsets of the ball (rounded as distance_to_mask rounds), looked up in a mask
        # padded so that every point within `radius` voxels of the grid stays inside it.
        steps = np.arange(-radius, radius + 1)
        offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        length = np.sqrt(((offsets * zooms) ** 2).sum(axis=1)).astype(np.float32)
        offsets = offsets[length <= margin]
        pad = 2 * radius
        padded = np.zeros(tuple(np.asarray(self.shape) + 2 * pad), dtype=bool)
        padded[pad:-pad, pad:-pad, pad:-pad] = self.mask
        strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
        points = ijk[outside]
        close = np.all((points >= -radius) & (points < np.asarray(self.shape) + radius), 1)
        rows = outside[close]
        base = (points[close] + pad) @ strides
        shifts = offsets @ strides
        flat = padded.reshape(-1)
        step = max(1, (1 << 20) // len(shifts))  # bounded memory
        for a in range(0, len(rows), step):
            out[rows[a:a + step]] = flat[base[a:a + step, None] + shifts].any(axis=1)
        return out

    # -- vectors <-> images ---------------------------------------------------------------
    def to_img(self, vector, dtype=None) -> nib.Nifti1Image:
        """A NIfTI image of an in-mask vector (zeros outside the mask)."""
        vector = np.asarray(vector)
        if vector.shape != (self.n_voxels,):
            raise DaskmetaError(
                f"expected a vector of {self.n_voxels} in-mask voxels; got shape {vector.shape}"
            )
        dtype = dtype or (np.float32 if vector.dtype.kind == "f" else vector.dtype)
        data = np.zeros(self.shape, dtype=dtype)
        data[self.mask] = vector
        return nib.Nifti1Image(data, self.affine)

    def from_img(self, img, name: str = "image") -> np.ndarray:
        """The in-mask vector of an image on this space's grid.

        Raises
        ------
        DaskmetaError
            If the image's shape or affine differ from the mask's (resample it first).
        """
        if not isinstance(img, nib.spatialimages.SpatialImage):
            img = nib.load(str(img))
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.shape != self.shape or not np.allclose(img.affine, self.affine, atol=1e-4):
            raise DaskmetaError(
                f"{name} does not match the mask: shape {data.shape} vs {self.shape}, "
                "or a different affine; resample it to the mask first "
                "(nilearn.image.resample_to_img)"
            )
        return data[self.mask]

    def resample_mask(self, img) -> np.ndarray:
        """Boolean in-mask vector of another mask image, resampled (nearest) onto this grid."""
        from nilearn.image import resample_to_img

        if not isinstance(img, nib.spatialimages.SpatialImage):
            img = nib.load(str(img))
        data = np.asanyarray(img.dataobj)
        if data.shape[:3] != self.shape or not np.allclose(img.affine, self.affine, atol=1e-4):
            img = resample_to_img(
                img, self.mask_img, interpolation="nearest", force_resample=True,
                copy_header=True,
            )
            data = np.asanyarray(img.dataobj)
        return data.astype(bool).reshape(self.shape)[self.mask]

    def describe(self) -> dict:
        """Provenance of the space, for result and store attributes."""
        return {
            "mask_source": self.source,
            "mask_hash": self.mask_hash,
            "mask_shape": list(self.shape),
            "mask_n_voxels": self.n_voxels,
            "affine": np.round(self.affine, 6).tolist(),
        }

    def __repr__(self) -> str:
        return f"Space(shape={self.shape}, n_voxels={self.n_voxels}, source={self.source!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Space) and self.mask_hash == other.mask_hash

    def __hash__(self) -> int:
        return hash(self.mask_hash)


_SPACES: dict = {}


def resolve_space(mask) -> Space:
    """A :class:`Space` from a mask argument (None: the package default), cached by path.

    Parameters
    ----------
    mask : None, str, path-like, nibabel image or Space
    """
    if isinstance(mask, Space):
        return mask
    if mask is None or isinstance(mask, str | bytes) or hasattr(mask, "__fspath__"):
        import os

        key = None
        if mask is not None:
            p = os.path.abspath(os.fspath(mask))
            key = (p, os.path.getmtime(p)) if os.path.exists(p) else None
        if mask is None or key is not None:
            if key not in _SPACES:
                _SPACES[key] = Space(mask)
            return _SPACES[key]
    return Space(mask)
