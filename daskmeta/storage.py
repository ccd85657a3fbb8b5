"""Whole-row reads from a 2-D Zarr v3 array stored as shards of one-row chunks.

A collection's ``ma`` array is written by zarr as shards of many rows (one file per shard, so
a build writes few files) whose inner chunks are single rows, so a selection of experiments
reads exactly its rows. zarr-python reads a scattered selection of inner chunks slowly (about
a millisecond per chunk and far more through orthogonal indexing), so :class:`RowReader`
reads them itself: per shard it reads and checks the shard index (offsets and sizes of the
rows, crc32c-protected), then reads each row's bytes and decompresses them straight into the
output. It understands exactly the layout daskmeta writes (sharding codec; inner ``bytes``
plus optional ``blosc``; index ``bytes`` plus ``crc32c``; a local directory store) and says
so with :meth:`RowReader.open` returning ``None`` for anything else, in which case callers
read through zarr.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from daskmeta.exceptions import DaskmetaError

__all__ = ["RowReader", "read_rows"]

_MISSING = np.uint64(2**64 - 1)
_INDEX_ENTRY_BYTES = 16  # (offset, nbytes) as two little-endian uint64
_CRC_BYTES = 4
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class RowReader:
    """Reads whole rows of one sharded 2-D Zarr v3 array in a local directory store.

    Use :meth:`open`; it returns ``None`` when the array is stored in another layout.
    """

    def __init__(self, path: Path, shape, dtype, rows_per_shard: int, key, blosc: bool,
                 index_at_end: bool, fill_value):
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.rows_per_shard = rows_per_shard
        self._key = key
        self._blosc = blosc
        self._index_at_end = index_at_end
        self.fill_value = fill_value
        self._index_nbytes = rows_per_shard * _INDEX_ENTRY_BYTES + _CRC_BYTES

    @classmethod
    def open(cls, path) -> RowReader | None:
        """A reader for the array in directory ``path``, or ``None`` if its layout differs."""
        path = Path(path)
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            return cls._from_metadata(path, meta)
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    @classmethod
    def _from_metadata(cls, path: Path, meta: dict) -> RowReader | None:
        shape = meta["shape"]
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or len(shape) != 2:
            return None
        if meta.get("storage_transformers"):
            return None
        grid = meta["chunk_grid"]
        if grid["name"] != "regular":
            return None
        rows_per_shard, n_cols = grid["configuration"]["chunk_shape"]
        if n_cols != shape[1]:
            return None
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        if list(conf["chunk_shape"]) != [1, shape[1]]:
            return None
        dtype = np.dtype(meta["data_type"])
        inner = conf["codecs"]
        if inner[0]["name"] != "bytes" or not _little_endian(inner[0], dtype):
            return None
        if len(inner) == 1:
            blosc = False
        elif len(inner) == 2 and inner[1]["name"] == "blosc":
            blosc = True
        else:
            return None
        index = conf.get("index_codecs", [])
        if ([c["name"] for c in index] != ["bytes", "crc32c"]
                or not _little_endian(index[0], np.dtype(np.uint64))):
            return None
        location = conf.get("index_location", "end")
        encoding = meta["chunk_key_encoding"]
        separator = encoding.get("configuration", {}).get("separator", "/")
        if encoding["name"] == "default":
            def key(shard, sep=separator):
                return f"c{sep}{shard}{sep}0"
        elif encoding["name"] == "v2":
            def key(shard, sep=separator):
                return f"{shard}{sep}0"
        else:
            return None
        fill = meta.get("fill_value", 0)
        if isinstance(fill, str) and dtype.kind == "f":
            fill = _SPECIAL_FLOATS.get(fill)  # Zarr v3 spells these as strings
        if not isinstance(fill, int | float) or isinstance(fill, bool):
            return None
        return cls(path, shape, dtype, int(rows_per_shard), key, blosc, location == "end",
                   fill)

    def _shard_index(self, fh, shard: int) -> np.ndarray:
        """(offset, nbytes) of each row of the open shard file, checked against its crc32c."""
        import google_crc32c

        size = os.fstat(fh.fileno()).st_size
        start = size - self._index_nbytes if self._index_at_end else 0
        raw = os.pread(fh.fileno(), self._index_nbytes, start)
        body, crc = raw[:-_CRC_BYTES], raw[-_CRC_BYTES:]
        if len(raw) != self._index_nbytes or (
                np.uint32(google_crc32c.value(body)).tobytes() != crc):
            raise DaskmetaError(f"{self.path / self._key(shard)}: corrupted shard (its index "
                                "does not match its checksum)")
        return np.frombuffer(body, dtype="<u8").reshape(self.rows_per_shard, 2)

    def read(self, rows, out: np.ndarray | None = None) -> np.ndarray:
        """The given rows (in the given order) as a ``(len(rows), n_cols)`` array.

        Raises
        ------
        DaskmetaError
            If a row is out of range, or a shard is truncated or corrupted.
        """
        from numcodecs import blosc

        rows = np.asarray(rows, dtype=np.int64).ravel()
        n_cols = self.shape[1]
        if out is None:
            out = np.empty((len(rows), n_cols), dtype=self.dtype)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise DaskmetaError(f"{self.path}: row index out of range 0..{self.shape[0] - 1}")
        row_nbytes = n_cols * self.dtype.itemsize
        order = np.argsort(rows, kind="stable")
        shards = rows[order] // self.rows_per_shard
        boundaries = np.flatnonzero(np.diff(shards)) + 1
        for group in np.split(order, boundaries):
            if group.size == 0:
                continue
            shard = int(rows[group[0]] // self.rows_per_shard)
            file = self.path / self._key(shard)
            try:
                fh = open(file, "rb")
            except FileNotFoundError:
                out[group] = self.fill_value  # an unwritten shard: zarr's fill value
                continue
            with fh:
                index = self._shard_index(fh, shard)
                for k in group:
                    offset, nbytes = index[rows[k] % self.rows_per_shard]
                    if offset == _MISSING:
                        out[k] = self.fill_value
                        continue
                    data = os.pread(fh.fileno(), int(nbytes), int(offset))
                    if len(data) != nbytes:
                        raise DaskmetaError(f"{file}: truncated shard")
                    dest = out[k]
                    if self._blosc:
                        # Blosc's header holds the decompressed size at bytes 4-8.
                        if len(data) < 16 or int.from_bytes(data[4:8], "little") != row_nbytes:
                            raise DaskmetaError(f"{file}: a row decompresses to the wrong "
                                                "size (corrupted shard)")
                        blosc.decompress(data, dest)
                    elif nbytes == row_nbytes:
                        dest.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
                    else:
                        raise DaskmetaError(f"{file}: a row has the wrong size (corrupted "
                                            "shard)")
        return out


def _little_endian(codec: dict, dtype: np.dtype) -> bool:
    endian = (codec.get("configuration") or {}).get("endian")
    if dtype.itemsize == 1:
        return endian in (None, "little", "big")
    return endian == "little" and np.little_endian


@functools.lru_cache(maxsize=32)
def _reader(path: str, stamp: float) -> RowReader | None:
    return RowReader.open(path)


def read_rows(array_path, rows) -> np.ndarray:
    """Rows of the 2-D Zarr array at ``array_path``: directly for daskmeta's sharded layout,
    through zarr (one read per run of consecutive rows) for any other layout."""
    array_path = str(array_path)
    try:
        stamp = os.stat(os.path.join(array_path, "zarr.json")).st_mtime_ns
    except OSError:
        stamp = None
    reader = _reader(array_path, stamp) if stamp is not None else None
    if reader is not None:
        return reader.read(rows)
    import zarr

    array = zarr.open_array(array_path, mode="r")
    rows = np.asarray(rows, dtype=np.int64).ravel()
    out = np.empty((len(rows), array.shape[1]), dtype=array.dtype)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        if run.size:
            a, b = int(sorted_rows[run[0]]), int(sorted_rows[run[-1]]) + 1
            out[order[run]] = array[a:b]
    return out
