"""Family-wise error thresholds of every label's association map, by label permutation.

Under the null a label's studies are a random group of its size. A prefix of one random
permutation of all the studies is a random group of every size at once, so one ordered pass
per iteration serves every label: the active counts of the first ``n`` studies are added up
row by row, and at every size ``n`` some label has, the maximum over voxels of the
association z of that group is recorded (the same compiled arithmetic as the maps). That
maximum needs only the largest count among the voxels of each whole-collection total
(:func:`total_classes`), so each size costs a few thousand chi2 values, not one per voxel. Batches
of iterations are the Monte Carlo runner's seeded Dask tasks
(:func:`daskmeta.montecarlo.run_montecarlo` with :class:`PrefixPermutationNull`), so the
nulls are the same on any number of workers. Each worker process reads the binary MA rows
once into a compressed sparse row matrix (about 4 bytes per active voxel of a study).

The model then holds ``fwe_null`` (label x iteration: the null maxima of the label's size)
and ``fwe_threshold`` (each label's 95th percentile), and
:meth:`DecoderModel.fwe_logp` gives a label's voxel-wise corrected ``-log10 p``.
"""

from __future__ import annotations

import threading

import dask
import numpy as np

from daskmeta._numba_cache import compiled
from daskmeta.decode._kernels import association_z_at
from daskmeta.exceptions import DaskmetaError
from daskmeta.montecarlo import NullModel, Summary, run_montecarlo

__all__ = ["PrefixPermutationNull", "SizeMaxima", "binary_rows", "label_fwe", "null_maxima",
           "total_classes"]

_CACHE: dict = {}
_LOCK = threading.Lock()


def binary_rows(store, rows, generation=None):
    """``(indptr, indices)`` of the active voxels of the given rows of an MKDA collection's
    store (a path or an ``s3://`` location; ``generation``: the build's token, checked by
    every read), read once per process."""
    from daskmeta import _fs
    from daskmeta.storage import read_rows

    location = _fs.as_location(store)
    rows = np.asarray(rows, dtype=np.int64)
    key = (_fs.key(location), generation, rows.tobytes())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    parts, counts = [], []
    for a in range(0, len(rows), 256):
        block = read_rows(location / "ma", rows[a:a + 256], generation=generation)
        r, c = np.nonzero(block)
        parts.append(c.astype(np.int32))
        counts.append(np.bincount(r, minlength=len(block)))
    indices = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    with _LOCK:
        _CACHE.clear()  # one matrix per process
        _CACHE[key] = (indptr, indices)
    return indptr, indices


@compiled(nogil=True, fastmath={"nnan", "ninf"})
def _max_positive_chi2(counts, totals, n_selected, n_total):
    """The largest association chi2 over the entries where the group is more often active
    than the rest (``a n2 > b n1``, exact in float64 for counts below 2**26: the sign of
    NiMARE's ``p(A|F) - p(A|U)``), or -1 if there is none. The chi2 is
    :func:`association_z_at`'s, operation for operation."""
    n1 = np.float64(n_selected)
    n2 = np.float64(n_total) - n1
    total = n1 + n2
    best = -1.0
    for v in range(counts.shape[0]):
        a = np.float64(counts[v])
        b = np.float64(totals[v]) - a
        row0 = a + b
        row1 = total - row0
        d = a * n2 - b * n1
        denominator = row0 * row1 * n1 * n2
        chi2 = total * (d * d) / denominator if denominator != 0.0 else 2.0
        if d > 0.0 and chi2 > best:
            best = chi2
    return best


def total_classes(totals):
    """``(klass, class_totals)``: the voxels grouped by their whole-collection active count.

    For a group of ``n1`` of ``N`` studies, a voxel active in ``a`` of the group's studies
    and ``T`` of all has ``d = a n2 - (T - a) n1 = a N - T n1`` (exact integers in float64)
    and chi2 ``N d**2 / (T (N - T) n1 n2)``: among voxels of one ``T`` the chi2 of a positive
    ``d`` rises with ``a`` (each rounding step is monotone), so the largest is that of the
    voxel with the largest count. The null thus needs, per class of ``T``, only the largest
    count, and the chi2 of a few thousand classes instead of every voxel, with the same
    float64 operations on the same numbers: the same maxima to the last bit.
    """
    class_totals, klass = np.unique(np.asarray(totals, dtype=np.int64), return_inverse=True)
    return klass.astype(np.int32), class_totals.astype(np.int64)


@compiled(nogil=True)
def null_maxima(indptr, indices, perms, sizes, klass, class_totals, totals, n_total, out):
    """``out[i, s]``: the largest association z over voxels of the first ``sizes[s]`` studies
    of permutation ``perms[i]`` (sizes ascending): ``sqrt`` of the largest chi2 of a positive
    z in float32 (sqrt and rounding keep the order), else (no positive z) the largest z of
    all voxels by :func:`association_z_at`. The largest chi2 is taken over the classes of
    :func:`total_classes` (``klass[v]``: voxel ``v``'s class, whose total is
    ``class_totals[klass[v]]``), from the largest count of each class."""
    n_vox = totals.shape[0]
    counts = np.zeros(n_vox, dtype=np.int32)
    top = np.zeros(class_totals.shape[0], dtype=np.int32)
    for it in range(perms.shape[0]):
        counts[:] = 0
        top[:] = 0
        s = 0
        for k in range(perms.shape[1]):
            if s >= sizes.shape[0]:
                break
            r = perms[it, k]
            for p in range(indptr[r], indptr[r + 1]):
                v = indices[p]
                c = counts[v] + 1
                counts[v] = c
                g = klass[v]
                if c > top[g]:
                    top[g] = c
            while s < sizes.shape[0] and sizes[s] == k + 1:
                chi2 = _max_positive_chi2(top, class_totals, k + 1, n_total)
                if chi2 >= 0.0:
                    out[it, s] = np.float32(np.sqrt(chi2))
                else:
                    best = np.float32(-np.inf)
                    for v in range(n_vox):
                        z = association_z_at(counts[v], totals[v], k + 1, n_total)
                        if z > best:
                            best = z
                    out[it, s] = best
                s += 1


class PrefixPermutationNull(NullModel):
    """The decoder's label-permutation null as a Monte Carlo null model: each iteration is
    one random permutation of the studies, and records, for every group size of
    ``sizes``, the largest association z of the permutation's first ``size`` studies
    (:func:`null_maxima`). The binary rows are read once per process (:func:`binary_rows`);
    the model itself carries only the row indices, sizes and totals."""

    def __init__(self, store, generation, rows, sizes, totals, token):
        from daskmeta import _fs

        # A local path as a string, an S3 store as its RemotePath (with its options).
        self.store, self.generation = _fs.portable(_fs.as_location(store)), generation
        self.rows = np.asarray(rows, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.totals = np.asarray(totals, dtype=np.int64)
        self.token = token

    def run_batch(self, summary, rng, n_iters: int) -> dict:
        indptr, indices = binary_rows(self.store, self.rows, self.generation)
        perms = np.empty((n_iters, len(self.rows)), dtype=np.int64)
        for i in range(n_iters):
            perms[i] = rng.permutation(len(self.rows))
        out = np.empty((n_iters, len(self.sizes)), dtype=np.float32)
        klass, class_totals = total_classes(self.totals)
        null_maxima(indptr, indices, perms, self.sizes, klass, class_totals, self.totals,
                    len(self.rows), out)
        return {"max_z": out}


class SizeMaxima(Summary):
    """Per iteration, the null maxima of every group size (an iterations x sizes array)."""

    keys = ("max_z",)


def label_fwe(model, collection, n_iters: int, seed: int = 0, batch_size: int = 25,
              alpha: float = 0.05, progress=None):
    """Label-permutation FWE nulls of a model's association maps, written into the model.

    Parameters
    ----------
    model : DecoderModel
        Built from ``collection`` with ``target_image="z_desc-association"``.
    collection : Collection
    n_iters : int
    seed : int
    batch_size : int
        Iterations per seeded batch.
    alpha : float
        Level of the stored thresholds (``fwe_threshold``).

    Returns
    -------
    DecoderModel
        The model reopened, with ``fwe_null`` and ``fwe_threshold``.
    """
    import zarr

    from daskmeta._pass import has_foci

    if not (isinstance(n_iters, int) and n_iters > 0):
        raise DaskmetaError(f"fwe_iters must be a positive integer; got {n_iters!r}")
    if model.attrs.get("target_image") != "z_desc-association":
        raise DaskmetaError("FWE thresholds are computed for z_desc-association models; this "
                            f"model holds {model.attrs.get('target_image')}")
    if model.attrs.get("dataset_fingerprint") != collection.dataset.fingerprint() or (
            model.space != collection.space):
        raise DaskmetaError(f"the model {model.path} was not built from the collection "
                            f"{collection.path}")
    rows = np.flatnonzero(has_foci(collection.dataset))
    if len(rows) != int(model.attrs.get("n_total_studies", -1)):
        raise DaskmetaError("the model's studies are not the collection's studies with foci")
    indptr, indices = binary_rows(collection.path, rows, collection.generation)
    totals = np.bincount(indices, minlength=collection.space.n_voxels).astype(np.int64)
    sizes = np.unique(model.n_studies).astype(np.int64)
    token = dask.base.tokenize("decode-fwe", collection.content_token(), rows, sizes)
    null_model = PrefixPermutationNull(collection.path, collection.generation, rows, sizes,
                                       totals, token)
    on_batch = None
    if progress is not None:
        def on_batch(_batch, n_done):
            progress(min(n_iters, n_done * batch_size), n_iters)
    nulls = run_montecarlo(null_model, SizeMaxima(), n_iters, batch_size=batch_size,
                           seed=seed, on_batch=on_batch)
    by_size = nulls.values["max_z"]  # iterations x sizes
    where = np.searchsorted(sizes, model.n_studies)
    null = np.ascontiguousarray(by_size[:, where].T)  # labels x iterations
    threshold = np.quantile(null.astype(np.float64), 1 - alpha, axis=1)
    root = zarr.open_group(model.path, mode="r+")
    for key in ("fwe_null", "fwe_threshold"):
        if key in root:
            del root[key]
    root.create_array("fwe_null", data=null, dimension_names=("label", "iteration"))
    root.create_array("fwe_threshold", data=threshold, dimension_names=("label",))
    root.attrs.update({"fwe_iters": int(n_iters), "fwe_seed": int(seed),
                       "fwe_alpha": float(alpha), "fwe_batch_size": int(batch_size)})
    from daskmeta.decode.model import DecoderModel

    return DecoderModel.open(model.path)
