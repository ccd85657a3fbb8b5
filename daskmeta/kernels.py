"""Kernels: foci -> modeled-activation (MA) rows over the in-mask voxels.

A kernel's :meth:`~Kernel.transform` gives the experiment x voxel MA matrix as a lazy dask
array chunked by experiments; each chunk is filled by the compiled MA combine that fits and
Monte Carlo nulls use too (:mod:`daskmeta._combine`: supports stamped as runs of in-mask
voxels), so nothing loops in Python per focus or per voxel.

The values equal NiMARE 0.22.1's bit for bit (float32, NiMARE's ``DEFAULT_FLOAT_DTYPE``): the
ALE kernel is the same cropped Gaussian, the spheres the same voxel offsets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from daskmeta._rows import nearest_bin, row_histograms
from daskmeta.exceptions import DaskmetaWarning, DatasetError

__all__ = ["ALEKernel", "COMBINE_ADD", "COMBINE_MAX", "COMBINE_SET", "KDAKernel", "MKDAKernel",
           "Kernel", "KernelPlan", "ale_fwhm"]

MA_DTYPE = np.float32
#: Default number of experiments per chunk of the MA matrix.
DEFAULT_CHUNK_EXPERIMENTS = 64
#: The largest kernel FWHM or sphere radius (mm): ALE kernels are cut to a 31-voxel cube
#: anyway, and a sphere of 100 mm covers a whole brain.
MAX_KERNEL_MM = 100.0
#: Foci more than this many mm outside the mask are dropped (see :meth:`Kernel.plan`).
DEFAULT_MASK_MARGIN = 10.0
#: Inverse bin width of NiMARE's ALE null histogram (bins of 1e-5): 1 / (bins[1] - bins[0])
#: for its grid, which is not exactly 1e5 in float64.
ALE_HIST_INV_STEP = 1 / float(np.round(np.arange(0, 2.5e-5, 1 / 100000), 5)[1])

#: How a kernel combines the foci of one experiment (its ``_mode``): the maximum of their
#: supports (ALE), a set of voxels holding one value (MKDA), or their sum (KDA).
COMBINE_MAX, COMBINE_SET, COMBINE_ADD = 0, 1, 2
_MODE_MAX, _MODE_SET, _MODE_ADD = COMBINE_MAX, COMBINE_SET, COMBINE_ADD


def ale_fwhm(sample_size) -> np.ndarray:
    """FWHM (mm) of the ALE kernel for a sample size (Eickhoff et al., 2009; as NiMARE)."""
    n = np.asarray(sample_size, dtype=float)
    templates = 5.7 / (2.0 * np.sqrt(2.0 / np.pi)) * np.sqrt(8.0 * np.log(2.0))
    subjects = (11.6 / (2 * np.sqrt(2 / np.pi)) * np.sqrt(8 * np.log(2))) / np.sqrt(n)
    return np.sqrt(subjects**2 + templates**2)


@lru_cache(maxsize=256)
def _ale_support(fwhm_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n, 3) and float32 values of NiMARE's cropped ALE Gaussian for one FWHM in
    voxels (mm over the cube root of the voxel volume)."""
    sigma_vox = fwhm_vox * np.sqrt(2.0) / (np.sqrt(2.0 * np.log(2.0)) * 2.0)
    data = np.zeros((31, 31, 31))
    mid = 15
    data[mid, mid, mid] = 1.0
    kernel = ndimage.gaussian_filter(data, sigma_vox, mode="constant")
    nz = np.where(kernel > np.spacing(1))[0]
    mn, mx = nz.min(), nz.max()
    kernel = kernel[mn : mx + 1, mn : mx + 1, mn : mx + 1]
    idx = np.array(np.where(kernel > 0), dtype=np.int32)
    center = np.floor(np.array(kernel.shape) / 2.0).astype(np.int32)[:, None]
    offsets = np.ascontiguousarray((idx - center).T, dtype=np.int32)
    values = kernel[tuple(idx)].astype(MA_DTYPE)
    return offsets, values


@lru_cache(maxsize=64)
def _sphere_offsets(r: float, zooms: tuple) -> np.ndarray:
    """Voxel offsets of a sphere of radius ``r`` mm (NiMARE's ``sphere_kernel_offsets``)."""
    vox = np.asarray(zooms, dtype=np.float64)
    slices = [slice(-r // vox[i], r // vox[i] + 0.01, 1) for i in range(3)]
    cube = np.vstack([row.ravel() for row in np.mgrid[tuple(slices)].astype(np.int32)])
    inside = np.sum(np.dot(np.diag(vox), cube) ** 2, axis=0) ** 0.5 <= r
    return np.ascontiguousarray(cube[:, inside].T, dtype=np.int32)


@dataclass
class KernelPlan:
    """Everything a chunk task needs to fill MA rows: foci as voxel indices and supports.

    Attributes
    ----------
    ids : list of str
        Experiment ids, one per MA row.
    focus_row : (n_foci,) int64
        Row of each focus (foci sorted by row).
    focus_ijk : (n_foci, 3) int32
    focus_kernel : (n_foci,) int32
        Which support each focus uses.
    row_start : (n_rows + 1,) int64
        Foci of row r are ``row_start[r]:row_start[r+1]``.
    k_start, k_offsets, k_values
        Concatenated supports: support s is ``k_start[s]:k_start[s+1]``.
    mode : int
        Combination rule inside an experiment (max / set / add).
    n_voxels : int
    """

    ids: list
    focus_row: np.ndarray
    focus_ijk: np.ndarray
    focus_kernel: np.ndarray
    row_start: np.ndarray
    k_start: np.ndarray
    k_offsets: np.ndarray
    k_values: np.ndarray
    mode: int
    shape: np.ndarray
    flat_to_masked: np.ndarray
    n_voxels: int
    row_kernel: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def n_foci(self) -> int:
        return int(self.row_start[-1])

    @property
    def mask(self) -> np.ndarray:
        """The mask on the grid (bool, ``shape``)."""
        return (self.flat_to_masked >= 0).reshape(tuple(int(s) for s in self.shape))

    @property
    def support_token(self) -> str:
        """A token naming the mask and the supports (not the foci)."""
        if "_support_token" not in self.__dict__:
            self._support_token = dask.base.tokenize(
                self.k_start, self.k_offsets, self.k_values, self.flat_to_masked,
                tuple(int(s) for s in self.shape))
        return self._support_token

    @property
    def token(self) -> str:
        """A token naming the plan's contents (foci, supports, mask, combination rule)."""
        if "_token" not in self.__dict__:
            self._token = dask.base.tokenize(self.support_token, self.focus_row,
                                             self.focus_ijk, self.row_start, self.row_kernel,
                                             self.mode)
        return self._token

    def freeze(self) -> KernelPlan:
        """Make the plan's arrays read-only (results keep plans as snapshots)."""
        for value in self.__dict__.values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        return self

    def value_histograms(self, block: np.ndarray, inv_step: float, width: int):
        """Each row's maximum and the histogram of its non-zero values on the grid of
        :func:`daskmeta._rows.row_histograms` (whose results this returns), for a block of
        this plan's rows: counted directly for spheres, whose non-zeros all hold the
        sphere's value."""
        if (self.mode != _MODE_SET or len(self.k_values) == 0
                or np.any(self.k_values != self.k_values[0])):
            return row_histograms(block, inv_step, width)
        value = np.float32(self.k_values[0])
        n_nonzero = np.count_nonzero(block, axis=1)
        at = nearest_bin(float(value), float(inv_step))
        hist = np.zeros((len(block), width), dtype=np.int32)
        hist[:, min(at, width - 1)] = n_nonzero
        row_max = np.where(n_nonzero > 0, value, np.float32(0)).astype(np.float32)
        return row_max, hist, int(n_nonzero.sum()) if at >= width else 0

    def max_value(self) -> float:
        """An upper bound of the MA values of the plan's rows."""
        if len(self.k_values) == 0 or self.n_rows == 0:
            return 0.0
        top = float(self.k_values.max())
        if self.mode == _MODE_ADD:  # sums over an experiment's foci
            top *= float(np.diff(self.row_start).max())
        return top

    def fill(self, start: int, stop: int) -> np.ndarray:
        """Dense float32 MA rows ``start:stop`` (one chunk), by the compiled combine that fits
        and Monte Carlo nulls use (:mod:`daskmeta._combine`)."""
        from scipy import sparse

        from daskmeta._combine import combine_rows, identity

        n = stop - start
        each = sparse.csc_matrix((np.ones(n), (np.arange(n), np.arange(n))), shape=(n, n))
        out, _, _ = combine_rows(self, np.arange(start, stop), identity, "identity", each,
                                 MA_DTYPE)
        return out


class Kernel:
    """Base class of kernels. Subclasses define the support and the combination rule."""

    _mode = _MODE_SET
    _needs_sample_size = False

    def get_params(self) -> dict:
        """The kernel's parameters (the ``kernel__*`` of estimators)."""
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._param_names:
                raise DatasetError(
                    f"{type(self).__name__} has no parameter {k!r}; "
                    f"parameters: {', '.join(self._param_names)}"
                )
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def describe(self) -> dict:
        """Kernel name and parameters, for provenance."""
        return {"kernel": type(self).__name__, **{f"kernel__{k}": v for k, v in
                                                  self.get_params().items() if v is not None}}

    def _validate(self):
        pass

    def hist_inv_step(self) -> float:
        """Inverse bin width of the grid on which collections store the histograms of this
        kernel's MA values (multiples of ``value`` for spheres)."""
        return 1.0 / float(self.value)

    def _supports(self, dataset, space, rows):
        """Per-experiment support index and the list of (offsets, values) supports."""
        raise NotImplementedError

    def plan(self, dataset, space, mask_margin: float = DEFAULT_MASK_MARGIN,
             warn: bool = True) -> KernelPlan:
        """Voxel indices of the foci and the kernel supports for ``dataset`` in ``space``.

        Parameters
        ----------
        dataset : Dataset
        space : Space
        mask_margin : float
            Foci whose nearest voxel lies more than this many mm from the nearest in-mask
            voxel (on or off the image grid) are dropped, with one
            :class:`~daskmeta.DaskmetaWarning` counting them. Foci closer than that (cortical
            peaks just past the mask's edge) are kept, as NiMARE keeps every focus: their
            kernels still reach in-mask voxels. ``float("inf")`` keeps every focus; ``0``
            drops every focus outside the mask.
        warn : bool
            Warn about dropped foci.
        """
        self._validate()
        ids = dataset.ids
        n_rows = len(ids)
        foci = dataset.foci
        row_of = {i: r for r, i in enumerate(ids)}
        focus_row = foci["id"].map(row_of).to_numpy(dtype=np.int64)
        ijk = space.mm_to_ijk(foci[["x", "y", "z"]].to_numpy())
        keep = space.near_mask(ijk, mask_margin)
        if warn and not keep.all():
            n_out = int((~keep).sum())
            n_exp = len(set(foci["id"].to_numpy()[~keep]))
            warnings.warn(
                f"{n_out} of {len(ijk)} foci (in {n_exp} experiments) lie more than "
                f"{mask_margin:g} mm outside the mask and were dropped",
                DaskmetaWarning,
                stacklevel=3,
            )
        focus_row, ijk = focus_row[keep], ijk[keep]
        order = np.argsort(focus_row, kind="stable")
        focus_row, ijk = focus_row[order], ijk[order].astype(np.int32)
        row_kernel, supports = self._supports(dataset, space)
        k_start = np.zeros(len(supports) + 1, dtype=np.int64)
        k_start[1:] = np.cumsum([len(v) for _, v in supports])
        k_offsets = np.ascontiguousarray(np.concatenate([o for o, _ in supports]), np.int32)
        k_values = np.ascontiguousarray(np.concatenate([v for _, v in supports]), MA_DTYPE)
        row_start = np.searchsorted(focus_row, np.arange(n_rows + 1)).astype(np.int64)
        return KernelPlan(
            ids=list(ids), focus_row=focus_row, focus_ijk=ijk,
            focus_kernel=row_kernel[focus_row].astype(np.int32), row_start=row_start,
            k_start=k_start, k_offsets=k_offsets, k_values=k_values, mode=self._mode,
            shape=np.asarray(space.shape, dtype=np.int64), flat_to_masked=space.flat_to_masked,
            n_voxels=space.n_voxels, row_kernel=row_kernel,
        )

    def transform(self, dataset, space, chunk_size: int = DEFAULT_CHUNK_EXPERIMENTS,
                  mask_margin: float = DEFAULT_MASK_MARGIN) -> da.Array:
        """The MA matrix (experiments x in-mask voxels) as a lazy dask array.

        Parameters
        ----------
        dataset : Dataset
        space : Space
        chunk_size : int
            Experiments per chunk.
        mask_margin : float
            See :meth:`plan`.

        Returns
        -------
        dask.array.Array
            float32, shape ``(n_experiments, space.n_voxels)``, chunked by experiments.
        """
        return plan_to_dask(self.plan(dataset, space, mask_margin), chunk_size)


def _fill_rows(plan: KernelPlan, start: int, stop: int) -> np.ndarray:
    return plan.fill(start, stop)


def plan_to_dask(plan: KernelPlan, chunk_size: int = DEFAULT_CHUNK_EXPERIMENTS) -> da.Array:
    """A lazy dask array of the MA rows of a plan, one task per chunk of experiments.

    The plan is one node of the graph that every chunk task depends on, so it is shipped to
    a worker once, not once per task; task names derive from the plan's content.
    """
    n = plan.n_rows
    chunk_size = max(1, int(chunk_size))
    bounds = list(range(0, n, chunk_size)) + [n]
    token = dask.base.tokenize(plan.focus_row, plan.focus_ijk, plan.focus_kernel,
                               plan.k_offsets, plan.k_values, plan.k_start, plan.mode,
                               plan.flat_to_masked, plan.n_voxels)
    plan_d = dask.delayed(plan, name=f"ma-plan-{token}", traverse=False)
    fill = dask.delayed(_fill_rows, pure=True)
    blocks = [
        da.from_delayed(fill(plan_d, a, b, dask_key_name=f"ma-{token}-{a}"),
                        shape=(b - a, plan.n_voxels), dtype=MA_DTYPE,
                        meta=np.empty((0, 0), dtype=MA_DTYPE))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    if not blocks:
        return da.zeros((0, plan.n_voxels), dtype=MA_DTYPE)
    return da.concatenate(blocks, axis=0)


class ALEKernel(Kernel):
    """Gaussian ALE kernel, combined by maximum within an experiment.

    Parameters
    ----------
    fwhm : float, optional
        A fixed FWHM in mm for every experiment.
    sample_size : int, optional
        A fixed sample size for every experiment (FWHM from Eickhoff et al., 2009).
        With neither, each experiment's own sample size sets its FWHM, as in NiMARE.
    """

    _mode = _MODE_MAX
    _param_names = ("fwhm", "sample_size")

    def hist_inv_step(self) -> float:
        """NiMARE's ALE null grid (bins of 1e-5)."""
        return ALE_HIST_INV_STEP

    def __init__(self, fwhm=None, sample_size=None):
        self.fwhm = fwhm
        self.sample_size = sample_size

    def _validate(self):
        if self.fwhm is not None and self.sample_size is not None:
            raise DatasetError('ALEKernel: only one of "fwhm" and "sample_size" may be given')
        if self.fwhm is not None and not (np.isfinite(self.fwhm) and 0 < self.fwhm
                                          <= MAX_KERNEL_MM):
            raise DatasetError(f"ALEKernel: fwhm must be a number of mm in (0, "
                               f"{MAX_KERNEL_MM:g}]; got {self.fwhm!r}")
        if self.sample_size is not None and not (
            np.isfinite(self.sample_size) and self.sample_size > 0
        ):
            raise DatasetError(
                f"ALEKernel: sample_size must be a positive number; got {self.sample_size!r}"
            )

    def experiment_fwhm(self, dataset) -> np.ndarray:
        """FWHM (mm) of each experiment's kernel."""
        n = dataset.n_experiments
        if self.fwhm is not None:
            return np.full(n, float(self.fwhm))
        if self.sample_size is not None:
            return np.full(n, float(ale_fwhm(self.sample_size)))
        sizes = dataset.experiments["sample_size"].to_numpy(dtype=float)
        has_foci = dataset.experiments["id"].isin(dataset.foci["id"].unique()).to_numpy()
        bad = has_foci & ~(np.isfinite(sizes) & (sizes > 0))
        if bad.any():
            ids = dataset.experiments["id"][bad].tolist()
            shown = ", ".join(ids[:25]) + (f", ... (+{len(ids) - 25} more)" if len(ids) > 25
                                           else "")
            raise DatasetError(
                f"the ALE kernel needs a sample size for every experiment, but {len(ids)} "
                f"have none: {shown}. Add sample sizes to the input (e.g. '// Subjects=N' in "
                "Sleuth, a sample_size column in a table), or give a constant kernel: "
                "ALEKernel(sample_size=N) / ALEKernel(fwhm=F) (CLI: --sample-size N or --fwhm F)"
            )
        return np.where(has_foci, ale_fwhm(np.where(has_foci, sizes, 1.0)), np.nan)

    def _supports(self, dataset, space):
        # float32 like nibabel's header zooms, which NiMARE's kernel is computed from.
        root = np.sqrt(np.prod(space.mask_img.header.get_zooms()[:3]))
        if self.fwhm is not None:
            # NiMARE divides the FWHM as given by this float32: a Python number is then
            # divided in float32 (NumPy 2's promotion rules), an np.float64 in float64. The
            # same division here, so that the kernel is NiMARE's to the last bit (the float32
            # width moves MA values by up to 5e-10, enough to move a tie of the null's grid).
            width = np.full(dataset.n_experiments, float(self.fwhm / root))
        else:
            # A computed FWHM is float64 in NiMARE: so is its width.
            fwhm = (np.full(dataset.n_experiments, float(ale_fwhm(self.sample_size)))
                    if self.sample_size is not None else self.experiment_fwhm(dataset))
            width = fwhm / float(root)
        # One support per distinct FWHM (NiMARE: one per distinct sample size).
        width = np.where(np.isfinite(width), width, -1.0)
        uniq, row_kernel = np.unique(width, return_inverse=True)
        supports = [
            _ale_support(float(f)) if f > 0
            else (np.zeros((0, 3), np.int32), np.zeros(0, MA_DTYPE))
            for f in uniq
        ]
        return row_kernel.astype(np.int64), supports


class MKDAKernel(Kernel):
    """Binary sphere: 1 (``value``) within ``r`` mm of any focus of the experiment.

    Parameters
    ----------
    r : float
        Sphere radius in mm (default 10).
    value : float
        Value inside the sphere (default 1).
    """

    _mode = _MODE_SET
    _param_names = ("r", "value")

    def __init__(self, r=10, value=1):
        self.r = r
        self.value = value

    def _validate(self):
        if not (np.isfinite(self.r) and 0 < self.r <= MAX_KERNEL_MM):
            raise DatasetError(f"{type(self).__name__}: r must be a number of mm in (0, "
                               f"{MAX_KERNEL_MM:g}]; got {self.r!r}")

    def _supports(self, dataset, space):
        offsets = _sphere_offsets(float(self.r), space.zooms)
        values = np.full(len(offsets), self.value, dtype=MA_DTYPE)
        return np.zeros(dataset.n_experiments, dtype=np.int64), [(offsets, values)]


class KDAKernel(MKDAKernel):
    """Sphere counts: ``value`` times the number of the experiment's foci within ``r`` mm.

    Parameters
    ----------
    r : float
        Sphere radius in mm (default 10).
    value : float
        Value added per focus (default 1).
    """

    _mode = _MODE_ADD
