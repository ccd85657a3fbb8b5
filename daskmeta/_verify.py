"""A collection store's integrity, for :mod:`daskmeta.collection`: the checks of opening a
store, and :func:`verify` (everything).

The manifest, the generation token and the build lock are :mod:`daskmeta._integrity`'s; the
build writes the manifest (:mod:`daskmeta._build`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from daskmeta import _fs, _integrity
from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.storage import ShardedRows, scratch_rows

__all__ = ["verify"]

FORMAT = "daskmeta-collection"
#: Sub-group of the store holding the Dataset file and the build's progress markers.
META = "daskmeta"
PROGRESS = f"{META}/progress"
DATASET_FILE = f"{META}/dataset.zip"
SHARDED = ("ma", "ma_hist")


def verifiable(attrs: dict) -> bool:
    """Whether a store's format has a manifest (format 4 on)."""
    return "generation" in attrs or int(attrs.get("format_version", 1)) >= 4


def read_root(path: Path) -> dict:
    """The store's attributes, read now (no cache).

    Raises
    ------
    DaskmetaError
        If there is no ``zarr.json``, or it is not valid Zarr group metadata.
    """
    file = _fs.as_location(path) / "zarr.json"
    try:
        meta = json.loads(file.read_bytes())
        attrs = meta.get("attributes", {})
        if meta.get("node_type") != "group" or not isinstance(attrs, dict):
            raise ValueError("not the metadata of a Zarr group")
    except FileNotFoundError:
        raise DaskmetaError(f"{path} is not a daskmeta collection store (no zarr.json)") from None
    except DaskmetaError:  # an object store that cannot be reached
        raise
    except (OSError, ValueError, AttributeError) as exc:
        raise DaskmetaError(f"{file}: not valid Zarr metadata ({exc})") from None
    return attrs


# -- opening ----------------------------------------------------------------------------------
def open_manifest(path: Path, attrs: dict) -> _integrity.Manifest:
    """The store's manifest, after the cheap checks of opening.

    Raises
    ------
    DaskmetaError
        If the manifest is missing or damaged, or the store is not what it records.
    """
    file = path / _integrity.MANIFEST
    if not file.exists():
        raise _integrity.damaged(file, "missing (this store's format has a manifest)", path)
    manifest = _integrity.current(path, fresh=True)
    problems = _integrity.check_open(path, attrs, manifest)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise DaskmetaError(f"{path} is not what its build wrote: " + "; ".join(problems[:3])
                            + more + f" (list every problem with `daskmeta verify {path}`; "
                            "rebuild the store with `daskmeta ingest --overwrite`)")
    return manifest


def open_zarr(path: Path):
    """``xarray.open_zarr`` of the store, its errors as one-line DaskmetaErrors naming the
    file at fault where one is."""
    import xarray as xr

    path = _fs.as_location(path)
    try:
        return xr.open_zarr(_fs.zarr_store(path), consolidated=False)
    except Exception as exc:
        for meta in sorted(path.glob("*/zarr.json"), key=str):
            try:
                json.loads(meta.read_bytes())
            except (OSError, ValueError) as bad:
                raise DaskmetaError(f"{meta}: not valid Zarr metadata ({bad})") from None
        text = " ".join(str(exc).split())
        raise DaskmetaError(f"{path}: cannot open the Zarr store ({type(exc).__name__}: "
                            f"{text})") from None


def load_dataset(path: Path, attrs: dict, check: bool) -> Dataset:
    """The store's Dataset; with ``check`` (stores without a manifest), its fingerprint
    must be the store's ``dataset_fingerprint``."""
    file = path / DATASET_FILE
    if not file.exists() and (path / "dataset.zip").exists():
        file = path / "dataset.zip"  # stores of daskmeta 0.1.0 before the sub-group
    try:
        if _fs.is_remote(file):  # Dataset.load reads a local zip
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "dataset.zip"
                local.write_bytes(file.read_bytes())
                dataset = Dataset.load(local)
        else:
            dataset = Dataset.load(file)
    except DaskmetaError:
        raise
    except Exception as exc:  # a damaged zip, ...
        raise DaskmetaError(f"{file}: cannot read the store's Dataset file "
                            f"({type(exc).__name__}: {exc})") from None
    if check and dataset.fingerprint() != attrs.get("dataset_fingerprint"):
        raise DaskmetaError(f"{file}: holds another dataset (fingerprint "
                            f"{dataset.fingerprint()[:12]}...) than the store was built from "
                            f"({str(attrs.get('dataset_fingerprint'))[:12]}...)")
    return dataset


# -- verify -----------------------------------------------------------------------------------
def verify(store) -> list[str]:
    """Check a whole collection store: every file and every stored row against the manifest,
    the attributes, the Dataset file's fingerprint, the mask's hash, completeness.

    Reads the whole store (unlike opening, which only checks that the files are there).

    Parameters
    ----------
    store : path-like

    Returns
    -------
    list of str
        One line per problem, each naming the file or attribute; empty if the store is
        sound.
    """
    path = _fs.as_location(store)
    try:
        attrs = read_root(path)
    except DaskmetaError as exc:
        return [str(exc)]
    if attrs.get("format") != FORMAT:
        return [f"{path} is a Zarr store but not a daskmeta collection"]
    problems = []
    if not attrs.get("complete"):
        problems.append(f"{path}: incomplete (its build was interrupted, or is running)")
    if not verifiable(attrs):
        problems.append(f"{path}: a store of format {attrs.get('format_version', 1)} has no "
                        "manifest, so its shards cannot be verified (rebuild it to make it "
                        "verifiable)")
        return problems + _dataset_problems(path, attrs)
    try:
        manifest = _integrity.Manifest.read(path / _integrity.MANIFEST)
    except DaskmetaError as exc:
        return problems + [str(exc) if (path / _integrity.MANIFEST).exists() else
                           f"{path / _integrity.MANIFEST}: missing (this store's format has "
                           "a manifest)"]
    if attrs.get("generation") != manifest.generation:
        problems.append(f"{path / _integrity.MANIFEST}: belongs to another build (generation "
                        f"{manifest.generation}; the store's is {attrs.get('generation')})")
    problems += [f"{path}: {p}" for p in _integrity.identity_problems(attrs, manifest)]
    for rel, entry in manifest.files.items():
        problem = _integrity.check_file(path / rel, entry)
        if problem is not None:
            problems.append(problem)
    for name, table in manifest.sharded.items():
        problems += _shard_problems(path / name, table)
    if not any(DATASET_FILE in p for p in problems):
        problems += _dataset_problems(path, attrs)
    problems += _mask_problems(path, attrs)
    return problems


def _shard_problems(array: Path, table) -> list[str]:
    """Every shard of a sharded array read whole and checked against the manifest."""
    reader = ShardedRows.open(array)
    if reader is None:
        return [f"{array / 'zarr.json'}: not daskmeta's sharded layout"]
    if reader.shape[0] != table.n_rows or reader.rows_per_shard != table.rows_per_shard:
        return [f"{array / 'zarr.json'}: {reader.shape[0]} rows in shards of "
                f"{reader.rows_per_shard}; the build wrote {table.n_rows} in shards of "
                f"{table.rows_per_shard}"]
    problems = []
    for shard in range(len(table.shard_size)):
        rows = np.arange(shard * table.rows_per_shard,
                         min((shard + 1) * table.rows_per_shard, table.n_rows))
        try:
            reader.read(rows, out=scratch_rows(len(rows), reader.shape[1], reader.dtype),
                        expect=table)
        except DaskmetaError as exc:
            problems.append(getattr(exc, "problem", str(exc)))
    return problems


def _dataset_problems(path: Path, attrs: dict) -> list[str]:
    try:
        load_dataset(path, attrs, check=True)
    except DaskmetaError as exc:
        return [str(exc)]
    return []


def _mask_problems(path: Path, attrs: dict) -> list[str]:
    import nibabel as nib
    import zarr

    from daskmeta.space import Space

    try:
        mask = np.asarray(zarr.open_array(_fs.zarr_store(path / "mask"), mode="r")[:],
                          dtype=np.uint8)
        space = Space(nib.Nifti1Image(mask, np.asarray(attrs["affine"], dtype=float)))
    except Exception as exc:  # zarr's errors, a missing or wrong affine
        return [f"{path / 'mask'}: cannot read the stored mask ({type(exc).__name__}: {exc})"]
    if space.mask_hash != attrs.get("mask_hash"):
        return [f"{path / 'mask'}: the stored mask does not match the recorded mask_hash"]
    return []
