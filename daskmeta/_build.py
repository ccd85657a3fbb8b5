"""Building a collection store, for :mod:`daskmeta.collection`: its metadata (created aside
and renamed into place), its shards (Dask tasks, one per shard, each leaving a progress
marker that holds what the manifest will record of the shard), and its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskmeta import _fs, _integrity
from daskmeta._rows import nearest_bin
from daskmeta._verify import DATASET_FILE, META, PROGRESS, SHARDED, read_root
from daskmeta.cluster import compute, scheduler_client
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import ALEKernel, KDAKernel
from daskmeta.space import Space
from daskmeta.storage import ShardedRows, write_shard

__all__ = ["create_atomically", "fill", "hist_width", "storage_dtype", "write_manifest"]


def storage_dtype(kernel, plan) -> np.dtype:
    """The narrowest dtype that holds the kernel's MA values exactly."""
    if isinstance(kernel, ALEKernel):
        return np.dtype(np.float32)
    value = float(kernel.value)
    if value != int(value) or value <= 0:
        return np.dtype(np.float32)
    if isinstance(kernel, KDAKernel):
        max_count = int(np.diff(plan.row_start).max(initial=0)) * int(value)
        return np.dtype(np.uint16 if max_count <= np.iinfo(np.uint16).max else np.float32)
    return np.dtype(np.uint8 if value <= 255 else np.float32)


def hist_width(max_value: float, inv_step: float) -> int:
    """Bins that hold values up to ``max_value`` (the grid of :func:`_rows.nearest_bin`)."""
    return int(nearest_bin(float(max_value), float(inv_step))) + 1


def _write_shard(store, plan, index: int, rows_per_shard: int, dtype: str,
                 hist_grid, generation: str | None = None) -> int:
    """Fill and write shard ``index`` of ``ma`` (and, with ``hist_grid = (inv_step,
    width)``, its rows' maxima and value histograms), then leave its marker: what the
    manifest will record of the shards (runs on a worker)."""
    import zarr

    store = _fs.as_location(store)
    if generation is not None and (_integrity.root_attributes(store) or {}).get(
            "generation") != generation:
        raise DaskmetaError(f"{store}: the store was replaced during its build (another "
                            "build overwrote it); this build stops")
    start = index * rows_per_shard
    stop = min(start + rows_per_shard, plan.n_rows)
    block = plan.fill(start, stop)
    entries = {"generation": generation}
    if hist_grid is not None:
        row_max, hist, overflow = plan.value_histograms(block, *hist_grid)
        if overflow:
            raise DaskmetaError(f"{store}: MA values of shard {index} exceed the value "
                                "histogram's range (a kernel bound is wrong)")
        entries["ma_hist"] = write_shard(store / "ma_hist", index, hist)
        zarr.open_array(_fs.zarr_store(store), path="ma_max", mode="r+")[start:stop] = row_max
    entries["ma"] = write_shard(store / "ma", index, block.astype(dtype, copy=False))
    marker = store / PROGRESS / f"{index:08d}.done"
    _fs.replace_bytes(marker, (json.dumps(entries) if generation is not None else "").encode())
    return index



#: On an object store, the object a store's creation writes first and deletes last: a prefix
#: holding it but no ``zarr.json`` is a creation that was killed, which the next build (holding
#: the lock) deletes and starts again.
CREATING = f"{META}/.creating"


def create_atomically(path, dataset: Dataset, space: Space, attrs: dict) -> None:
    """Write the store's metadata, coordinates, mask and Dataset file next to ``path``,
    then rename the directory into place: a killed build never leaves half a store.

    On an object store (no renames): made in a local temporary folder, then uploaded with
    the root ``zarr.json`` last, between a :data:`CREATING` marker and its deletion.
    """
    if _fs.is_remote(path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="daskmeta-create-") as tmp:
            local = Path(tmp) / "store.zarr"
            create(local, dataset, space, attrs)
            ensure_dataset_file(local, dataset)
            (path / CREATING).write_bytes(b"")
            files = sorted(_fs.sizes(local))
            fs = path.fs
            fs.put([str(local / rel) for rel in files if rel != "zarr.json"],
                   [f"{path.path}/{rel}" for rel in files if rel != "zarr.json"])
            (path / "zarr.json").write_bytes((local / "zarr.json").read_bytes())
            (path / CREATING).unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.creating")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed build (we hold the lock)
    try:
        create(tmp, dataset, space, attrs)
        ensure_dataset_file(tmp, dataset)
        if path.exists():
            path.rmdir()  # an empty directory (checked by the caller)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

def create(path: Path, dataset: Dataset, space: Space, attrs: dict) -> None:
    """The store's metadata, coordinates and mask (shards are written by the build's tasks)."""
    import zarr
    from zarr.codecs import BloscCodec

    n, v = dataset.n_experiments, space.n_voxels
    rows = int(attrs["rows_per_shard"])
    dtype = np.dtype(attrs["dtype"])
    ma = da.zeros((n, v), chunks=(rows, v), dtype=dtype)
    width = int(attrs["ma_hist_width"])
    ds = xr.Dataset(
        {"ma": (("study", "voxel"), ma),
         "ma_max": (("study",), da.zeros(n, chunks=rows, dtype=np.float32)),
         "ma_hist": (("study", "ma_bin"), da.zeros((n, width), chunks=(rows, width),
                                                   dtype=np.int32)),
         "mask": (("i", "j", "k"), space.mask.astype(np.uint8))},
        coords={"study": np.asarray(dataset.ids, dtype=object), "voxel": np.arange(v)},
        attrs=attrs,
    )
    shuffle = "bitshuffle" if dtype.itemsize == 1 else "shuffle"
    encoding = {"ma": {"chunks": (1, v), "shards": (rows, v), "compressors": (
        BloscCodec(cname="lz4", clevel=5, shuffle=shuffle),)},
        "ma_hist": {"chunks": (1, width), "shards": (rows, width), "compressors": (
            BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)},
        "ma_max": {"chunks": (rows,)}}
    # Metadata and coordinates only; shards are written by the build's tasks.
    ds.to_zarr(path, compute=False, consolidated=False, mode="w-", encoding=encoding)
    zarr.open_group(path, mode="r+").create_group(META, attributes={
        "description": "daskmeta's files: dataset.zip (Dataset.save) and, while a build "
                       "runs, progress/ (one marker per written shard of ma)"})

def ensure_dataset_file(path, dataset: Dataset, replace: bool = False) -> None:
    """Write the Dataset file (atomically) if it is missing, or with ``replace``."""
    target = path / DATASET_FILE
    if _fs.is_remote(path):
        if replace or not target.exists():
            import tempfile

            with tempfile.TemporaryDirectory(prefix="daskmeta-dataset-") as tmp:
                dataset.save(Path(tmp) / "dataset.zip")
                target.write_bytes((Path(tmp) / "dataset.zip").read_bytes())
        return
    if replace or not target.exists():
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name("dataset.zip.tmp")
        dataset.save(tmp)
        os.replace(tmp, target)

def fill(path: Path, plan, n_rows: int, rows_per_unit: int, dtype: str, hist_grid,
         progress: bool, generation: str | None = None) -> None:
    """Write every shard without a progress marker, as Dask tasks."""
    n_chunks = -(-n_rows // rows_per_unit)
    marker_dir = path / PROGRESS
    marker_dir.mkdir(parents=True, exist_ok=True)
    done = markers(path, generation)
    todo = [c for c in range(n_chunks) if c not in done]
    # Shards half-written by a killed build (never renamed into place; an object store
    # writes whole objects).
    for array in ("ma", "ma_hist") if not _fs.is_remote(path) else ():
        for tmp in (path / array).rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    if not todo:
        return
    plan_d = dask.delayed(plan, traverse=False)
    write = dask.delayed(_write_shard, pure=True)
    # Keys unique per store path: two builds on one cluster must not share tasks.
    tag = hashlib.sha1(f"{path.resolve()} {generation}".encode()).hexdigest()[:10]
    tasks = [write(_fs.portable(path), plan_d, c, rows_per_unit, dtype, hist_grid, generation,
                   dask_key_name=f"write-{path.name}-{tag}-{c}") for c in todo]
    client = scheduler_client()
    if client is not None and progress:
        from distributed import progress as show_progress

        futures = client.compute(tasks)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for results
            show_progress(futures)
        client.gather(futures)
    elif client is None and progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, dt=0.5, out=sys.stderr):
            compute(*tasks)
    else:
        compute(*tasks)


def markers(path: Path, generation: str | None) -> dict:
    """The build's progress markers: shard -> what the manifest records of it (None: an
    empty marker, of a build of an earlier format). Markers of another generation are
    removed (their shards are written again)."""
    done = {}
    for marker in (_fs.as_location(path) / PROGRESS).glob("*.done"):
        try:
            shard = int(marker.stem)
            text = marker.read_text()
            entries = json.loads(text) if text.strip() else None
            if entries is not None and (not isinstance(entries, dict)
                                        or entries.get("generation") != generation):
                raise ValueError("another build's marker")
        except (OSError, ValueError):  # unreadable, or another build's: write it again
            marker.unlink(missing_ok=True)
            continue
        done[shard] = entries
    return done


def write_manifest(path: Path, n_rows: int, rows_per_shard: int, generation: str) -> None:
    """Record what the build wrote (every file, every shard's rows) in the store's manifest.

    Shards come from the markers the build's tasks left; a shard with an empty marker (or
    none) is read from disk.
    """
    path = _fs.as_location(path)
    done = markers(path, generation)
    n_shards = -(-n_rows // rows_per_shard)
    sharded = {}
    for name in SHARDED:
        reader = ShardedRows.open(path / name)
        if reader is None:
            raise DaskmetaError(f"{path / name}: not daskmeta's sharded layout")
        entries = [(done.get(c) or {}).get(name) or reader.shard_entry(c)
                   for c in range(n_shards)]
        sharded[name] = _integrity.ShardTable.from_entries(rows_per_shard, n_rows, entries)
    files = {}
    for rel in sorted(_fs.sizes(path)):
        name = rel.rsplit("/", 1)[-1]
        top, _, rest = rel.partition("/")
        if (rel.startswith(PROGRESS + "/") or name.startswith(".")
                or rel in ("zarr.json", _integrity.MANIFEST)
                or (top in sharded and rest != "zarr.json")):
            continue
        files[rel] = _integrity.file_entry(path / rel)
    key = _integrity.shard_key(path / "ma_max")
    for c in range(n_shards):  # chunks zarr left unwritten (all fill value)
        files.setdefault(f"ma_max/{key(c)}", {"absent": True})
    identity = {k: v for k, v in read_root(path).items() if k != "complete"}
    _integrity.Manifest(generation, identity, files, sharded).write(path)
