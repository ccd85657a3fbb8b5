"""Image stacks: every experiment's statistical maps on one mask, as Zarr arrays.

An :class:`ImageStack` holds, per image type (NiMARE's names: ``z``, ``t``, ``beta``,
``varcope``, ``se``, ``p``), an ``(experiment, in-mask voxel)`` float32 Zarr array chunked over
both axes (blocks of experiments as they are written, runs of voxels as image-based
estimators read them), plus the experiments' ids, study ids and sample sizes and the mask.

:meth:`ImageStack.build` reads the images a Dataset references (``Dataset.images``: paths,
as NiMARE keeps them), resamples those on another grid to the mask (nilearn, with NiMARE's
settings: linear interpolation, clipped), converts types an experiment lacks from those it
has (NiMARE's rules: t -> z with ``sample_size - 1`` degrees of freedom, p -> z, z -> t,
se <-> varcope, t and beta -> varcope, t and varcope -> beta), and writes blocks of
experiments as Dask tasks. A block is marked done only once written, so a build that stops
resumes where it stopped. NaN and zero values are kept as they are: estimators leave them
out per voxel, as NiMARE does. An image that cannot be aligned stops the build with an
error naming the file: unreadable or corrupt, no affine (NIfTI qform and sform codes 0),
not 3-D, another grid when ``resample=False``, or no finite non-zero value in the mask.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from daskmeta._stats import t_to_z, z_to_nlogp
from daskmeta.cluster import compute
from daskmeta.exceptions import DaskmetaError, DatasetError, ParseError
from daskmeta.space import Space, resolve_space

__all__ = ["IMAGE_TYPES", "ImageStack", "load_masked", "read_image_table"]

#: Image types a stack can hold (NiMARE's names).
IMAGE_TYPES = ("z", "t", "beta", "varcope", "se", "p")
_FORMAT = "daskmeta-imagestack"
_FORMAT_VERSION = 1
#: Experiments per written block (one task, one row of chunks).
ROWS_PER_BLOCK = 64
#: In-mask voxels per chunk.
CHUNK_VOXELS = 4096
#: NiMARE's resampling settings (``IBMAEstimator._resample_kwargs``).
RESAMPLE_KWARGS = {"clip": True, "interpolation": "linear", "copy_header": True}


# --------------------------------------------------------------------------------------------
# reading one image
# --------------------------------------------------------------------------------------------
def load_masked(path, space: Space, resample: bool = True) -> np.ndarray:
    """The in-mask values (float32) of one image file, resampled to ``space`` if needed.

    Raises
    ------
    ParseError
        Naming the file: unreadable or corrupt, no affine, not 3-D, on another grid with
        ``resample=False``, or no finite non-zero value inside the mask.
    """
    import nibabel as nib

    path = str(path)
    if path.startswith(("http://", "https://", "s3://")):
        raise ParseError("image is a URL; download it first (e.g. daskmeta fetch neurovault) "
                         "and point the dataset at the local file", path=path)
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise ParseError("image file not found", path=path) from None
    except Exception as exc:  # nibabel, gzip and zlib raise many types for a bad file
        raise ParseError(f"cannot read image ({type(exc).__name__}: {exc}); is it a valid "
                         "NIfTI file?", path=path) from None
    header = img.header
    if (isinstance(img, nib.Nifti1Image | nib.Nifti2Image)
            and int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0):
        raise ParseError("image has no affine (NIfTI sform and qform codes are both 0), so "
                         "its voxels cannot be placed in the mask's space", path=path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ParseError(f"image must be 3-D; got shape {data.shape}", path=path)
    same = data.shape == space.shape and np.allclose(img.affine, space.affine, atol=1e-4)
    if not same:
        if not resample:
            raise ParseError(
                f"image grid (shape {data.shape}, affine {np.round(img.affine, 3).tolist()}) "
                f"differs from the mask's (shape {space.shape}) and resample=False",
                path=path)
        from nilearn.image import resample_to_img

        try:
            img = resample_to_img(nib.Nifti1Image(data, img.affine), space.mask_img,
                                  force_resample=True, **RESAMPLE_KWARGS)
        except Exception as exc:
            raise ParseError(f"cannot resample image to the mask: {exc}", path=path) from None
        data = np.asarray(img.dataobj, dtype=np.float32)
    values = data[space.mask]
    if not np.any(np.isfinite(values) & (values != 0)):
        raise ParseError("image has no finite non-zero value inside the mask (all NaN, "
                         "infinite or zero there" + ("" if same else " after resampling; is its "
                                                     "affine right?") + ")", path=path)
    return values


# --------------------------------------------------------------------------------------------
# NiMARE's conversions between image types (per experiment, over in-mask voxels)
# --------------------------------------------------------------------------------------------
def _z_to_t(z, dof):
    from scipy import special, stats

    z = np.asarray(z, dtype=float)
    nlogp = z_to_nlogp(np.abs(z), tail="one")
    log_c = (special.gammaln((dof + 1) / 2.0) - special.gammaln(dof / 2.0)
             - 0.5 * np.log(np.pi) + ((dof - 2) / 2.0) * np.log(dof))
    from daskmeta._stats import log_t_sf

    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        magnitude = np.exp((log_c - nlogp) / dof)
        from_p = stats.t.isf(np.exp(nlogp), dof)
        magnitude = np.where(np.abs(log_t_sf(from_p, dof) - nlogp)
                             <= np.abs(log_t_sf(magnitude, dof) - nlogp), from_p, magnitude)
    return np.sign(z) * magnitude + 0.0


def _p_to_z_two(p):
    from daskmeta._stats import p_to_z

    return p_to_z(p, tail="two")


def _z_to_p_two(z):
    return np.exp(z_to_nlogp(z, tail="two"))


def _derive(target: str, have: dict, n: float, trail: list):
    """``target`` from the arrays in ``have`` (computed ones are added), or None."""
    if target in have:
        return have[target]
    dof = n - 1 if np.isfinite(n) else None
    out = None
    if target == "z":
        if "t" in have and dof is not None:
            out = t_to_z(have["t"], dof)
        elif "p" in have:
            out = _p_to_z_two(have["p"])
            if "t" in have:
                out = np.sign(have["t"]) * out
    elif target == "t":
        z = _derive("z", have, n, trail) if "z" not in trail else None
        if z is not None and dof is not None:
            out = _z_to_t(z, dof)
    elif target == "varcope":
        if "se" in have:
            out = np.asarray(have["se"], float) ** 2
        elif "beta" in have and "t" in have:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = (np.asarray(have["beta"], float) / have["t"]) ** 2
    elif target == "se":
        if "varcope" in have:
            with np.errstate(invalid="ignore"):
                out = np.sqrt(np.asarray(have["varcope"], float))
    elif target == "beta":
        t = have.get("t")
        if t is None and "t" not in trail:
            t = _derive("t", have, n, trail + ["beta"])
        v = have.get("varcope")
        if v is None and "varcope" not in trail:
            v = _derive("varcope", have, n, trail + ["beta"])
        if t is not None and v is not None:
            with np.errstate(invalid="ignore"):
                out = t * np.sqrt(v)
    elif target == "p":
        z = have.get("z")
        if z is None and "t" in have and dof is not None:
            z = t_to_z(have["t"], dof)
        if z is not None:
            out = _z_to_p_two(z)
    if out is not None:
        have[target] = np.asarray(out, dtype=np.float64)
    return out


# What each target can be made from (for error messages).
_RECIPES = {
    "z": "t and a sample size, or p",
    "t": "z (or p) and a sample size",
    "varcope": "se, or beta and t",
    "se": "varcope (or what varcope is made from)",
    "beta": "t (or z and a sample size) and varcope (or se)",
    "p": "z, or t and a sample size",
}


def _experiment_rows(paths: dict, n: float, types, space, resample, eid) -> dict:
    """One experiment's stored rows: each of ``types``, read or converted."""
    have = {k: load_masked(p, space, resample) for k, p in paths.items()}
    out = {}
    for t in types:
        values = _derive(t, have, n, [])
        if values is None:
            raise DatasetError(
                f"experiment {eid}: no {t!r} image and none can be made from its images "
                f"({', '.join(sorted(paths)) or 'none'}; sample size "
                f"{'unknown' if not np.isfinite(n) else int(n) if n == int(n) else n}): a "
                f"{t!r} map needs {_RECIPES[t]}")
        out[t] = np.asarray(values, dtype=np.float32)
    return out


def _write_block(path: str, block: int, rows: list, paths: list, sizes: list, ids: list,
                 types: tuple, space: Space, resample: bool) -> int:
    """Read, convert and write one block of experiments; mark it done."""
    import zarr

    n_vox = space.n_voxels
    arrays = {t: np.empty((len(rows), n_vox), dtype=np.float32) for t in types}
    for i, (p, n, eid) in enumerate(zip(paths, sizes, ids, strict=True)):
        got = _experiment_rows(p, n, types, space, resample, eid)
        for t in types:
            arrays[t][i] = got[t]
    a, b = rows[0], rows[-1] + 1
    for t in types:
        zarr.open_array(str(Path(path) / t), mode="r+")[a:b] = arrays[t]
    marker = Path(path) / ".blocks" / f"{block:06d}"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("done")
    return block


# --------------------------------------------------------------------------------------------
# the stack
# --------------------------------------------------------------------------------------------
class ImageStack:
    """Experiments' statistical maps on one mask, as ``(experiment, voxel)`` Zarr arrays.

    Build with :meth:`build` (from a Dataset's images) or :meth:`create` and
    :meth:`write_rows` (values computed elsewhere); open with :meth:`open`.

    Attributes
    ----------
    path : Path
    space : Space
    experiments : pandas.DataFrame
        ``id``, ``study_id``, ``sample_size`` in row order.
    image_types : tuple of str
    """

    def __init__(self, path, _check: bool = True):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise DaskmetaError(f"{str(self.path)!r} is not an image stack (no zarr.json)")
        attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        if attrs.get("format") != _FORMAT:
            raise DaskmetaError(f"{str(self.path)!r} is not a daskmeta image stack "
                                f"(format {attrs.get('format')!r})")
        self.attrs = attrs
        self.space = Space(str(self.path / "mask.nii.gz"))
        if self.space.mask_hash != attrs["mask_hash"]:
            raise DaskmetaError(f"{str(self.path)!r}: the stored mask does not match the "
                                "stack's mask hash")
        self.experiments = pd.DataFrame({
            "id": attrs["ids"], "study_id": attrs["study_ids"],
            "sample_size": np.asarray(attrs["sample_sizes"], dtype=float)})
        self.image_types = tuple(attrs["image_types"])
        self.rows_per_block = int(attrs["rows_per_block"])
        self.chunk_voxels = int(attrs["chunk_voxels"])
        self._tmp = None
        if _check:
            missing = self.missing_blocks()
            if missing:
                raise DaskmetaError(
                    f"image stack {str(self.path)!r} is incomplete ({len(missing)} of "
                    f"{self.n_blocks} blocks of experiments not written); run "
                    "ImageStack.build again with the same dataset to finish it")

    # -- opening and building ---------------------------------------------------------------
    @classmethod
    def open(cls, store) -> ImageStack:
        """Open a complete stack written by :meth:`build`.

        Raises
        ------
        DaskmetaError
            If ``store`` is not an image stack or its build did not finish.
        """
        return cls(store)

    @classmethod
    def create(cls, store, space: Space, experiments: pd.DataFrame, image_types,
               rows_per_block: int = ROWS_PER_BLOCK, chunk_voxels: int = CHUNK_VOXELS,
               sources: dict | None = None) -> ImageStack:
        """An empty stack (every block to be written) at ``store``; see :meth:`write_rows`."""
        import nibabel as nib
        import zarr
        from zarr.codecs import BloscCodec

        store = Path(store)
        types = tuple(image_types)
        bad = [t for t in types if t not in IMAGE_TYPES]
        if bad or not types:
            raise DaskmetaError(f"image types must be some of {', '.join(IMAGE_TYPES)}; got "
                                f"{list(types)!r}")
        n = len(experiments)
        if n == 0:
            raise DatasetError("an image stack needs at least one experiment")
        # Markers of an earlier stack at this path must not mark the new one's blocks done.
        shutil.rmtree(store / ".blocks", ignore_errors=True)
        group = zarr.open_group(str(store), mode="w")
        for t in types:
            group.create_array(t, shape=(n, space.n_voxels), dtype="float32",
                               chunks=(rows_per_block, chunk_voxels), fill_value=np.nan,
                               compressors=(BloscCodec(cname="lz4", clevel=1,
                                                       shuffle="shuffle"),))
        nib.save(space.mask_img, str(store / "mask.nii.gz"))
        sizes = pd.to_numeric(experiments["sample_size"], errors="coerce").astype(float)
        group.attrs.update({
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "ids": [str(i) for i in experiments["id"]],
            "study_ids": [str(i) for i in experiments.get("study_id", experiments["id"])],
            "sample_sizes": [None if not np.isfinite(s) else float(s) for s in sizes],
            "image_types": list(types), "rows_per_block": int(rows_per_block),
            "chunk_voxels": int(chunk_voxels), "mask_hash": space.mask_hash,
            "space": space.describe(), "sources": json.dumps(sources or {}),
        })
        return cls(store, _check=False)

    def write_rows(self, start: int, values: dict) -> None:
        """Write rows ``start:start + k`` of every image type (``values[type]`` of shape
        ``(k, n_voxels)``); ``start`` and ``k`` must cover whole blocks (the last block may
        be short). Marks the blocks done."""
        import zarr

        k = {np.shape(v)[0] for v in values.values()}
        if set(values) != set(self.image_types) or len(k) != 1:
            raise DaskmetaError(f"write_rows needs equal row counts of {self.image_types}")
        k = k.pop()
        if start % self.rows_per_block or (
                k % self.rows_per_block and start + k != self.n_experiments):
            raise DaskmetaError(f"write_rows must cover whole blocks of {self.rows_per_block}")
        for t, v in values.items():
            zarr.open_array(str(self.path / t), mode="r+")[start:start + k] = np.asarray(
                v, dtype=np.float32)
        (self.path / ".blocks").mkdir(exist_ok=True)
        for b in range(start // self.rows_per_block, -(-(start + k) // self.rows_per_block)):
            (self.path / ".blocks" / f"{b:06d}").write_text("done")

    @classmethod
    def build(cls, dataset, store=None, mask=None, image_types=None, resample: bool = True,
              rows_per_block: int = ROWS_PER_BLOCK, chunk_voxels: int = CHUNK_VOXELS,
              overwrite: bool = False, base_dir=None) -> ImageStack:
        """Read a Dataset's images into a stack (resumable).

        Parameters
        ----------
        dataset : Dataset
            ``dataset.images`` holds per experiment the path of each image type (NiMARE's
            layout); ``dataset.experiments["sample_size"]`` the sample sizes conversions
            need.
        store : path, optional
            Where to write the stack (a directory). None: a temporary directory removed
            when the stack object is garbage collected.
        mask : str, image or Space, optional
            The mask every image is resampled to (default: the package's default mask).
        image_types : sequence of str, optional
            Types to store (default: every type among :data:`IMAGE_TYPES` that
            ``dataset.images`` has a column for). A type an experiment lacks is converted
            from those it has, with NiMARE's rules; if it cannot be, the build stops naming
            the experiment.
        resample : bool
            Resample images on another grid to the mask (nilearn, NiMARE's settings); False
            refuses them, naming the file.
        rows_per_block, chunk_voxels : int
            Experiments per written block (one task) and voxels per chunk.
        overwrite : bool
            Rebuild an existing stack at ``store`` from scratch. Otherwise an existing
            stack of the same experiments, types and mask is completed (resumed) and one
            of anything else is refused.
        base_dir : path, optional
            Relative image paths are relative to this folder (e.g. the NiMARE JSON's);
            default: the working directory.

        Returns
        -------
        ImageStack
        """
        space = resolve_space(mask)
        images = dataset.images
        if image_types is None:
            image_types = [t for t in IMAGE_TYPES if t in images.columns
                           and images[t].notna().any()]
            if not image_types:
                raise DatasetError("the dataset has no images (Dataset.images has no column "
                                   f"among {', '.join(IMAGE_TYPES)})")
        types = tuple(dict.fromkeys(image_types))
        bad = [t for t in types if t not in IMAGE_TYPES]
        if bad:
            raise DaskmetaError(f"unknown image types {bad}; allowed: {', '.join(IMAGE_TYPES)}")
        for name, value in (("rows_per_block", rows_per_block), ("chunk_voxels", chunk_voxels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DaskmetaError(f"{name} must be a positive integer; got {value!r}")
        cols = [c for c in IMAGE_TYPES if c in images.columns]
        paths = []
        for row in images[["id", *cols]].itertuples(index=False):
            p = {}
            for c, v in zip(cols, row[1:], strict=True):
                if isinstance(v, str) and v:
                    p[c] = (v if base_dir is None or "://" in v
                            else str(Path(base_dir) / Path(v).expanduser()))
                elif v is not None and not (isinstance(v, float) and np.isnan(v)):
                    raise DatasetError(f"experiment {row[0]}: image {c!r} must be a path; got "
                                       f"{type(v).__name__}")
            if not p:
                raise DatasetError(f"experiment {row[0]} has no image; select experiments "
                                   "with images first")
            paths.append(p)
        if store is None:
            tmp = tempfile.mkdtemp(prefix="daskmeta-imagestack-")
            try:
                stack = cls._build(dataset, Path(tmp) / "stack.zarr", space, types, paths,
                                   rows_per_block, chunk_voxels, overwrite, resample)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            stack._tmp = weakref.finalize(stack, shutil.rmtree, tmp, True)
            return stack
        return cls._build(dataset, Path(store), space, types, paths, rows_per_block,
                          chunk_voxels, overwrite, resample)

    @classmethod
    def _build(cls, dataset, store: Path, space, types, paths, rows_per_block, chunk_voxels,
               overwrite, resample) -> ImageStack:
        exp = dataset.experiments
        sources = {"paths": paths}
        stack = None
        if store.exists() and not overwrite:
            try:
                stack = cls(store, _check=False)
            except DaskmetaError:
                raise DaskmetaError(f"{str(store)!r} exists and is not an image stack; choose "
                                    "another path or pass overwrite=True") from None
            same = (stack.attrs["ids"] == [str(i) for i in exp["id"]]
                    and tuple(stack.image_types) == types
                    and stack.attrs["mask_hash"] == space.mask_hash
                    and json.loads(stack.attrs.get("sources", "{}")) == sources)
            if not same:
                raise DaskmetaError(
                    f"{str(store)!r} holds another image stack (other experiments, image "
                    "types, mask or files); pass overwrite=True to rebuild it")
        if stack is None:
            if store.exists():
                shutil.rmtree(store)
            stack = cls.create(store, space, exp, types, rows_per_block, chunk_voxels,
                               sources=sources)
        todo = stack.missing_blocks()
        sizes = exp["sample_size"].to_numpy(float)
        ids = exp["id"].tolist()
        write = dask.delayed(_write_block, pure=False)
        space_d = dask.delayed(space, traverse=False)
        tasks = []
        per = stack.rows_per_block  # the stored stack's blocks, when resuming
        for b in todo:
            a, z = b * per, min((b + 1) * per, len(exp))
            rows = list(range(a, z))
            tasks.append(write(str(store), b, rows, paths[a:z], sizes[a:z].tolist(),
                               ids[a:z], types, space_d, resample))
        if len(tasks) == 1 and dask.config.get("scheduler", None) is None:
            tasks[0].compute(scheduler="sync")
        elif tasks:
            compute(*tasks)
        return cls(store)

    def __getstate__(self):
        # A copy in another process reads the store; it never owns a temporary one.
        state = dict(self.__dict__)
        state["_tmp"] = None
        return state

    # -- contents ---------------------------------------------------------------------------
    @property
    def n_experiments(self) -> int:
        return len(self.experiments)

    @property
    def n_voxels(self) -> int:
        return self.space.n_voxels

    @property
    def n_blocks(self) -> int:
        return -(-self.n_experiments // self.rows_per_block)

    def missing_blocks(self) -> list[int]:
        """Blocks of experiments not written yet."""
        done = {p.name for p in (self.path / ".blocks").glob("*")} if (
            self.path / ".blocks").exists() else set()
        return [b for b in range(self.n_blocks) if f"{b:06d}" not in done]

    def _check_type(self, image_type: str) -> None:
        if image_type not in self.image_types:
            raise DaskmetaError(f"the image stack {str(self.path)!r} has no {image_type!r} "
                                f"images; it has {', '.join(self.image_types)} (build it with "
                                f"image_types including {image_type!r})")

    def array(self, image_type: str, voxels_per_chunk: int | None = None):
        """A lazy ``(experiment, voxel)`` dask array of one image type, every experiment in
        each chunk, ``voxels_per_chunk`` voxels per chunk (a multiple of the stored chunk
        is read most efficiently)."""
        import dask.array as da
        import zarr

        self._check_type(image_type)
        z = zarr.open_array(str(self.path / image_type), mode="r")
        vpc = int(voxels_per_chunk or self.chunk_voxels)
        return da.from_zarr(z, chunks=(self.n_experiments, vpc))

    def values(self, image_type: str, voxels=None) -> np.ndarray:
        """Every experiment's values at ``voxels`` (in-mask indices or a boolean vector;
        default: all, which reads the whole array into memory)."""
        import zarr

        self._check_type(image_type)
        z = zarr.open_array(str(self.path / image_type), mode="r")
        if voxels is None:
            return z[:]
        voxels = np.asarray(voxels)
        if voxels.dtype == bool:
            voxels = np.flatnonzero(voxels)
        if voxels.size == 0:
            return np.zeros((self.n_experiments, 0), dtype=np.float32)
        a, b = int(voxels.min()), int(voxels.max()) + 1
        return z[:, a:b][:, voxels - a]

    def fingerprint(self) -> str:
        """Identifies the stack's contents (its path, experiments, types and build)."""
        return dask.base.tokenize(str(self.path.resolve()), self.attrs["ids"],
                                  self.image_types, self.attrs["mask_hash"],
                                  self.attrs.get("sources"))

    def __repr__(self) -> str:
        return (f"ImageStack({str(self.path)!r}, {self.n_experiments} experiments, "
                f"{self.n_voxels} voxels, types {', '.join(self.image_types)})")


def read_image_table(path):
    """A Dataset of images from a table (CSV or TSV) of paths.

    Columns: ``id``; optionally ``study_id`` and ``sample_size``; and one column per image
    type (:data:`IMAGE_TYPES`) holding paths, relative ones relative to the table's folder.

    Raises
    ------
    ParseError
        Naming the file, for a missing ``id`` column or no image column.
    """
    from daskmeta.dataset import Dataset

    path = Path(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ParseError(f"cannot read the image table: {exc}", path=str(path)) from None
    if "id" not in table.columns:
        raise ParseError("an image table needs an 'id' column", path=str(path))
    types = [t for t in IMAGE_TYPES if t in table.columns]
    if not types:
        raise ParseError(f"an image table needs a column per image type (some of "
                         f"{', '.join(IMAGE_TYPES)}); it has {', '.join(table.columns)}",
                         path=str(path))
    exp = pd.DataFrame({"id": table["id"]})
    if "study_id" in table.columns:
        exp["study_id"] = table["study_id"]
    if "sample_size" in table.columns:
        sizes = pd.to_numeric(table["sample_size"].replace("", np.nan), errors="coerce")
        bad = table["sample_size"].ne("") & sizes.isna()
        if bad.any():
            raise ParseError(f"sample_size must be a number; got "
                             f"{table['sample_size'][bad].iloc[0]!r} for "
                             f"{table['id'][bad].iloc[0]}", path=str(path))
        exp["sample_size"] = sizes
    images = pd.DataFrame({"id": table["id"]})
    for t in types:
        images[t] = [None if not v else str(path.parent / v) if not Path(v).is_absolute()
                     else v for v in table[t]]
    return Dataset(exp, pd.DataFrame(columns=["id", "x", "y", "z"]), images=images,
                   name=f"images of {path.name}")
