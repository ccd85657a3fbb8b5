"""The image-based estimator base: no kernel, blockwise over voxel chunks of an image stack.

Every IBMA statistic of NiMARE 0.22.1 is a function of one voxel's values across
experiments (and, under NiMARE's liberal mask, of which experiments are usable there), so an
:class:`IBMAEstimator` maps its model over ``(experiment, voxel-chunk)`` blocks of an
:class:`~daskmeta.imagestack.ImageStack` with :func:`dask.array.map_blocks`: each block reads
every selected experiment's values at a run of voxels, groups the voxels by the set of
experiments usable there (NiMARE's ``_liberal_mask_bags``, per block, which gives the same
bags restricted to the block's voxels), and fits each bag with the estimator's
``_fit_model`` (PyMARE, as NiMARE). Voxels with fewer than two usable experiments are NaN.
A block larger than the memory budget is fitted in slices of voxels.
"""

from __future__ import annotations

import copy
import numbers

import dask
import numpy as np

from daskmeta._docs import fill_doc
from daskmeta._pass import describe_selection, selection_rows
from daskmeta.cluster import compute, scheduler_client
from daskmeta.estimators.base import Estimator
from daskmeta.exceptions import DaskmetaError, DatasetError
from daskmeta.imagestack import ImageStack
from daskmeta.space import resolve_space

__all__ = ["IBMAEstimator", "fit_bags", "liberal_bags", "usable"]

#: float64 cells a block's models hold at once (about 8 bytes each, a few copies each).
BLOCK_CELLS = 2_000_000
#: Voxels per dask chunk of a fit (a multiple of the stack's chunks is read best) ...
VOXELS_PER_TASK = 16384
#: ... at most as many as keep a task's float32 inputs within this many bytes.
TASK_INPUT_BYTES = 128 * 2**20
#: Below this NiMARE sets varcope to NaN (1 / sqrt of float32's max: masked images are float32).
MIN_VARCOPE = 1.0 / np.sqrt(np.finfo(np.float32).max)
#: Fewest experiments a bag needs (NiMARE's MIN_STUDY_THRESH and MIN_INDEPENDENT_UNITS).
MIN_STUDIES = 2


def usable(values: np.ndarray) -> np.ndarray:
    """Finite and non-zero (NiMARE's ``_usable``)."""
    return np.isfinite(values) & (values != 0)


def liberal_bags(valid: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(voxel_indices, study_indices)`` per set of voxels usable in the same experiments
    (NiMARE's liberal mask), bags of fewer than two experiments left out."""
    if valid.shape[1] == 0:
        return []
    keys = np.ascontiguousarray(np.packbits(valid, axis=0).T)
    if keys.shape[1] == 0:
        return []
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = np.reshape(inverse, -1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=first.size))))
    bags = []
    for g in range(first.size):
        voxels = order[bounds[g]:bounds[g + 1]]
        studies = np.flatnonzero(valid[:, voxels[0]])
        if studies.size >= MIN_STUDIES:
            bags.append((voxels, studies))
    return bags


def fit_bags(model, arrays: list, n_maps: int, aggressive: bool) -> np.ndarray:
    """``(n_maps, n_voxels)`` maps of ``model(arrays_of_bag, studies)`` over the bags."""
    n_vox = arrays[0].shape[1]
    out = np.full((n_maps, n_vox), np.nan)
    valid = np.logical_and.reduce([usable(a) for a in arrays])
    if aggressive:
        voxels = np.flatnonzero(valid.all(axis=0))
        studies = np.arange(arrays[0].shape[0])
        bags = [(voxels, studies)] if voxels.size and studies.size >= MIN_STUDIES else []
    else:
        bags = liberal_bags(valid)
    for voxels, studies in bags:
        sub = [a[np.ix_(studies, voxels)] for a in arrays]
        results = model(sub, studies)
        for m, values in enumerate(results):
            out[m, voxels] = np.reshape(np.asarray(values, dtype=float), -1) if np.ndim(
                values) else values
    return out


def _block(*blocks, model, n_maps: int, aggressive: bool, varcope_index):
    """The maps of one voxel chunk (every selected experiment), in slices of voxels."""
    k, n_vox = blocks[0].shape
    out = np.empty((n_maps, n_vox))
    step = max(64, BLOCK_CELLS // max(1, k))
    for a in range(0, n_vox, step):
        arrays = [np.asarray(b[:, a:a + step], dtype=np.float64) for b in blocks]
        if varcope_index is not None:
            v = arrays[varcope_index]
            v[~np.isfinite(v) | (v <= MIN_VARCOPE)] = np.nan
        out[:, a:a + step] = fit_bags(model, arrays, n_maps, aggressive)
    return out


def _is_bool(value) -> bool:
    return isinstance(value, bool | np.bool_)


@fill_doc
class IBMAEstimator(Estimator):
    """Base class of image-based estimators (no kernel; blockwise over voxel chunks).

    Subclasses set ``_inputs`` (image types their model reads, in order), ``_map_names``,
    ``_needs_sample_size`` and implement ``_model(arrays, studies)``, which fits one bag
    (arrays ``(n_studies, n_voxels)`` of float64 with NaN for NiMARE's invalid varcopes;
    ``studies`` indexes the fit's experiments, whose sample sizes are
    ``self._sizes[studies]``) and returns one value or array per map. The parameters below
    are those of every image-based estimator.

    Parameters
    ----------
    aggressive_mask : bool
        True: only voxels usable in every experiment are analysed. False (NiMARE's
        default): each voxel with the experiments usable there (at least two).
    groupby : None or False
        None (NiMARE's default): experiments of one study would be dependent; daskmeta
        refuses them (see README, Differences). False: every image independent.
    %(mask)s
    """

    _inputs: tuple = ("z",)
    _map_names: tuple = ("z", "p", "logp", "dof")
    _needs_sample_size = False
    _fitted_marker = "space_"
    _parameter_constraints = {
        "aggressive_mask": (_is_bool, "True or False"),
        "groupby": (lambda v: v is None or v is False, "None or False (dependence groups of "
                    "images are not supported; see README)"),
    }

    # -- what subclasses provide ------------------------------------------------------------
    def _model(self, arrays, studies):
        raise NotImplementedError

    def _uses_sample_size(self) -> bool:
        return bool(self._needs_sample_size)

    def _block_model(self):
        """The model of a block: a copy of this estimator holding only its parameters and
        the selection's sample sizes (small, picklable; no fitted state, no stack)."""
        model = copy.copy(self)
        model.__dict__ = {**self.get_params(deep=False), "_sizes": self._sizes}
        return model._model

    # -- fit --------------------------------------------------------------------------------
    def fit(self, data, select=None, label_threshold: float = 0.001, store=None,
            voxels_per_task: int | None = None):
        """Fit the estimator to images.

        Parameters
        ----------
        data : Dataset or ImageStack
            A Dataset whose ``images`` reference the image files (they are read into a
            temporary :class:`~daskmeta.imagestack.ImageStack`, or into ``store``), or a
            built stack.
        select : str or sequence of str, optional
            Experiments to analyse: a label expression (Dataset only) or experiment ids.
        label_threshold : float
            Label weight threshold of a ``select`` expression.
        store : path, optional
            Where to build the stack of a Dataset's images (kept, resumable).
        voxels_per_task : int, optional
            Voxels per task (default 16,384, fewer when the selected experiments' inputs
            would exceed 128 MiB a task; a multiple of the stack's voxel chunks).

        Returns
        -------
        MetaResult
            NiMARE's maps for this estimator over the mask's voxels (NaN where fewer than two
            experiments are usable).
        """
        self._validate_params()
        if voxels_per_task is not None and (not isinstance(voxels_per_task, numbers.Integral)
                                            or isinstance(voxels_per_task, bool)
                                            or voxels_per_task < 1):
            raise DaskmetaError(f"voxels_per_task must be a positive integer; got "
                                f"{voxels_per_task!r}")
        stack, rows = self._stack_and_rows(data, select, label_threshold, store)
        sizes = stack.experiments["sample_size"].to_numpy(float)[rows]
        ids = stack.experiments["id"].to_numpy()[rows]
        if len(rows) < MIN_STUDIES:
            raise DatasetError(f"{type(self).__name__} needs at least {MIN_STUDIES} "
                               f"experiments; the selection has {len(rows)}")
        if self._uses_sample_size():
            bad = ~(np.isfinite(sizes) & (sizes > 0))
            if bad.any():
                raise DatasetError(
                    f"{type(self).__name__} needs a positive sample size for every "
                    f"experiment; missing or invalid for {', '.join(map(str, ids[bad][:10]))}")
        if self.groupby is None:
            studies = stack.experiments["study_id"].to_numpy()[rows]
            uniq, counts = np.unique(studies, return_counts=True)
            if (counts > 1).any():
                raise DatasetError(
                    f"images of one study are dependent, and daskmeta does not model "
                    f"dependence groups: study {uniq[counts > 1][0]} has {counts.max()} "
                    "selected images; select one image per study, or pass groupby=False to "
                    "treat every image as independent")
        self._sizes = sizes
        maps = self._compute(stack, rows, voxels_per_task or VOXELS_PER_TASK)
        self.stack_ = stack
        self.rows_ = np.asarray(rows)
        self.ids_ = np.asarray(ids, dtype=object)
        self.sample_sizes_ = sizes
        self.space_ = stack.space
        attrs = {"n_experiments": int(len(rows)), "input": str(stack.path),
                 "input_hash": stack.fingerprint(), "image_types": list(self._inputs),
                 **self._selection_attrs}
        return self._make_result(maps, attrs=attrs)

    def _stack_and_rows(self, data, select, label_threshold, store):
        from daskmeta.dataset import Dataset

        if isinstance(data, ImageStack):
            if self.mask is not None and resolve_space(self.mask) != data.space:
                raise DaskmetaError("the estimator's mask differs from the image stack's; "
                                    "rebuild the stack with that mask or drop mask=")
            if select is not None and isinstance(select, str):
                raise DaskmetaError("an image stack has no labels: select experiments by "
                                    "ids (a list), or fit the Dataset")
            rows = (np.arange(data.n_experiments) if select is None
                    else self._rows_of_ids(data, select))
            self._selection_attrs = describe_selection(select, label_threshold)
            return data, rows
        if not isinstance(data, Dataset):
            raise DaskmetaError(f"{type(self).__name__}.fit expects a Dataset or an "
                                f"ImageStack; got {type(data).__name__}")
        rows = selection_rows(data, select, label_threshold)
        self._selection_attrs = describe_selection(select, label_threshold)
        sub = data if len(rows) == data.n_experiments else data.slice(
            data.experiments["id"].to_numpy()[rows])
        missing = [t for t in self._inputs if t not in sub.images.columns]
        derivable = {"z": {"t", "p"}, "t": {"z", "p"}, "beta": {"t", "z", "p"},
                     "varcope": {"se", "beta"}, "se": {"varcope"}, "p": {"z", "t"}}
        for t in missing:
            if not derivable.get(t, set()) & set(sub.images.columns):
                raise DatasetError(
                    f"{type(self).__name__} needs {t!r} images; the dataset's images are "
                    f"{', '.join(c for c in sub.images.columns if c != 'id') or 'none'}")
        stack = ImageStack.build(sub, store=store, mask=self.mask,
                                 image_types=list(self._inputs))
        return stack, np.arange(stack.n_experiments)

    @staticmethod
    def _rows_of_ids(stack, select):
        if isinstance(select, bytes | bytearray):
            raise DatasetError("select must be a sequence of experiment ids")
        ids = [str(i) for i in select]
        where = {e: i for i, e in enumerate(stack.experiments["id"])}
        unknown = [i for i in ids if i not in where]
        if unknown:
            raise DatasetError(f"unknown experiment ids: {', '.join(unknown[:10])}")
        return np.array(sorted({where[i] for i in ids}), dtype=np.int64)

    def _compute(self, stack, rows, voxels_per_task: int) -> dict:
        import dask.array as da

        fits = TASK_INPUT_BYTES // (4 * len(rows) * len(self._inputs))
        vpt = max(stack.chunk_voxels, min(voxels_per_task, fits) // stack.chunk_voxels
                  * stack.chunk_voxels)
        arrays = [stack.array(t, vpt) for t in self._inputs]
        if len(rows) != stack.n_experiments or np.any(np.diff(rows) != 1):
            arrays = [a[rows] for a in arrays]
        varcope_index = self._inputs.index("varcope") if "varcope" in self._inputs else None
        n_maps = len(self._map_names)
        kwargs = dict(model=self._block_model(), n_maps=n_maps,
                      aggressive=bool(self.aggressive_mask), varcope_index=varcope_index)
        if (arrays[0].numblocks[1] == 1 and dask.config.get("scheduler", None) is None
                and scheduler_client() is None):
            out = _block(*[np.asarray(a) for a in arrays], **kwargs)
        else:
            graph = da.map_blocks(
                _block, *arrays, **kwargs, dtype=np.float64,
                chunks=((n_maps,), arrays[0].chunks[1]), meta=np.empty((0, 0)),
                name=f"ibma-{type(self).__name__.lower()}-" + dask.base.tokenize(
                    stack.fingerprint(), rows, self.get_params(deep=False),
                    self._sizes, vpt))
            (out,) = compute(graph)
        return self._finish_maps({name: out[i] for i, name in enumerate(self._map_names)})

    def _finish_maps(self, maps: dict) -> dict:
        from daskmeta._stats import nlogp_to_logp

        if "logp" in maps:  # carried as ln(p) through the blocks; NiMARE's float32 -log10(p)
            logp = maps["logp"]
            out = nlogp_to_logp(logp)
            out[np.isnan(logp)] = np.nan
            maps["logp"] = out
        return maps

    def describe(self) -> dict:
        out = super().describe()
        out.pop("groupby", None)
        out["groupby"] = "none" if self.groupby is None else "false"
        return out
