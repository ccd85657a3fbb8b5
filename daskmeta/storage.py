"""Whole-row reads and whole-shard writes of a 2-D Zarr v3 array stored as shards of one-row
chunks.

A collection's ``ma`` array is written as shards of many rows (one file per shard, so a build
writes few files) whose inner chunks are single rows, so a selection of experiments reads
exactly its rows. zarr-python reads a scattered selection of inner chunks slowly (about a
millisecond per chunk and far more through orthogonal indexing) and writes a shard at ~0.3 ms
per inner chunk, so :class:`ShardedRows` does both itself: per shard, an index of the rows'
(offset, size) pairs, crc32c-protected, after the rows' compressed bytes. It understands
exactly the layout daskmeta writes (sharding codec; inner ``bytes`` plus optional ``blosc``;
index ``bytes`` plus ``crc32c``; a local directory or an fsspec URL such as
``s3://bucket/store.zarr/ma``, read with ranged requests) and says so with
:meth:`ShardedRows.open` returning ``None`` for anything else, in which case callers go
through zarr. What it writes, zarr reads (tested).

In a collection store, reads are checked against the store's manifest
(:mod:`daskmeta._integrity`): each shard file's size and each row's compressed size and
crc32c, so a missing, truncated, swapped or corrupted shard is a :class:`DaskmetaError`
naming the array, the shard and the file, never other numbers. Every storage and
decompression error is one too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from pathlib import Path

import numpy as np

from daskmeta import _fs, _integrity
from daskmeta.exceptions import DaskmetaError

__all__ = ["ShardedRows", "read_rows", "read_vector", "scratch_rows", "write_shard"]

_MISSING = 2**64 - 1  # an unstored row's offset and size in a shard index
_INDEX_ENTRY_BYTES = 16  # (offset, nbytes) as two little-endian uint64
_CRC_BYTES = 4
_SPECIAL_FLOATS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class ShardedRows:
    """Reads whole rows, and writes whole shards, of one sharded 2-D Zarr v3 array in a local
    directory store.

    Use :meth:`open`; it returns ``None`` when the array is stored in another layout.
    """

    def __init__(self, path: Path, shape, dtype, rows_per_shard: int, key, blosc: dict | None,
                 index_at_end: bool, fill_value):
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.rows_per_shard = rows_per_shard
        self._key = key
        self._blosc = blosc  # the blosc codec's configuration, or None (uncompressed rows)
        self._index_at_end = index_at_end
        self.fill_value = fill_value
        self._index_nbytes = rows_per_shard * _INDEX_ENTRY_BYTES + _CRC_BYTES

    @classmethod
    def open(cls, path) -> ShardedRows | None:
        """A reader for the array in directory ``path``, or ``None`` if its layout differs."""
        path = _fs.as_location(path)
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            return cls._from_metadata(path, meta)
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    @classmethod
    def _from_metadata(cls, path: Path, meta: dict) -> ShardedRows | None:
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
            blosc = None
        elif len(inner) == 2 and inner[1]["name"] == "blosc":
            blosc = dict(inner[1].get("configuration") or {})
        else:
            return None
        index = conf.get("index_codecs", [])
        if ([c["name"] for c in index] != ["bytes", "crc32c"]
                or not _little_endian(index[0], np.dtype(np.uint64))):
            return None
        location = conf.get("index_location", "end")
        key = _chunk_key(meta, 2)
        fill = _fill_value(meta, dtype)
        if key is None or fill is None:
            return None
        return cls(path, shape, dtype, int(rows_per_shard), key, blosc, location == "end",
                   fill)

    def _damaged(self, shard: int, what: str) -> DaskmetaError:
        """The error of a shard that is not what was written: names file, shard, array."""
        file = self.path / self._key(shard)
        what = f"shard {shard} of array {self.path.name!r}: {what}"
        root = self.path.parent
        attrs = None
        with contextlib.suppress(DaskmetaError):
            attrs = _integrity.root_attributes(root)
        if (attrs or {}).get("format") == "daskmeta-collection":
            return _integrity.damaged(file, what, root)
        return DaskmetaError(f"{file}: {what}")

    def _shard_index(self, fh, shard: int, size: int) -> np.ndarray:
        """(offset, nbytes) of each row of the open shard file, checked against its crc32c."""
        if size < self._index_nbytes:
            raise self._damaged(shard, f"truncated ({size} bytes, shorter than its index of "
                                f"{self._index_nbytes})")
        start = size - self._index_nbytes if self._index_at_end else 0
        raw = fh.pread(self._index_nbytes, start)
        body, crc = raw[:-_CRC_BYTES], raw[-_CRC_BYTES:]
        if len(raw) != self._index_nbytes or (
                np.uint32(_integrity.crc32c(body)).tobytes() != crc):
            raise self._damaged(shard, "corrupted (its index does not match its checksum)")
        return np.frombuffer(body, dtype="<u8").reshape(self.rows_per_shard, 2)

    def read(self, rows, out: np.ndarray | None = None, expect=None) -> np.ndarray:
        """The given rows (in the given order) as a ``(len(rows), n_cols)`` array.

        ``expect``, the array's :class:`daskmeta._integrity.ShardTable`, checks every shard
        file's size and every row's compressed size and crc32c against what the build wrote.

        Raises
        ------
        DaskmetaError
            If a row is out of range, or a shard is missing, truncated, corrupted or (with
            ``expect``) not the one the build wrote; the message names the file, the shard
            and the array.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        n_cols = self.shape[1]
        if out is None:
            out = np.empty((len(rows), n_cols), dtype=self.dtype)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise DaskmetaError(f"{self.path}: row index out of range 0..{self.shape[0] - 1}")
        order = np.argsort(rows, kind="stable")
        shards = rows[order] // self.rows_per_shard
        boundaries = np.flatnonzero(np.diff(shards)) + 1
        for group in np.split(order, boundaries):
            if group.size == 0:
                continue
            shard = int(rows[group[0]] // self.rows_per_shard)
            size, written = (None, None) if expect is None else expect.shard(shard)
            try:
                fh = _fs.open_ranged(self.path / self._key(shard))
            except FileNotFoundError:
                if expect is not None and size is not None:
                    raise self._damaged(shard, f"missing (the build wrote {size} bytes)"
                                        ) from None
                out[group] = self.fill_value  # an unwritten shard: zarr's fill value
                continue
            except OSError as exc:
                raise self._damaged(shard, f"unreadable ({exc})") from None
            with fh:
                try:
                    self._read_shard(fh, shard, rows, group, out, size, written, expect)
                except OSError as exc:
                    raise self._damaged(shard, f"unreadable ({exc})") from None
        return out

    def _read_shard(self, fh, shard, rows, group, out, size, written, expect) -> None:
        from numcodecs import blosc

        actual = fh.size
        if expect is not None and actual != size:
            what = ("should not exist (the build wrote no such shard)" if size is None else
                    f"{actual} bytes; the build wrote {size} (truncated, replaced or swapped)")
            raise self._damaged(shard, what)
        index = self._shard_index(fh, shard, actual).tolist()
        written = None if expect is None else written.tolist()
        row_nbytes = self.shape[1] * self.dtype.itemsize
        wanted = []  # (k, offset, nbytes, crc) of the stored rows to read
        for k in group:
            r = int(rows[k] % self.rows_per_shard)
            offset, nbytes = index[r]
            crc = None
            if expect is not None:
                n_written, crc = written[r]
                stored = offset != _MISSING
                if stored != (n_written > 0) or (stored and nbytes != n_written):
                    raise self._damaged(shard, f"row {rows[k]} is not the one the build "
                                        "wrote (replaced or swapped)")
            if offset == _MISSING:
                out[k] = self.fill_value
                continue
            wanted.append((k, offset, nbytes, crc))
        # One read per row (concurrent requests on an object store).
        datas = fh.preads([(offset, nbytes) for _, offset, nbytes, _ in wanted])
        for (k, _, nbytes, crc), data in zip(wanted, datas):
            if len(data) != nbytes:
                raise self._damaged(shard, "truncated")
            if expect is not None and _integrity.crc32c(data) != crc:
                raise self._damaged(shard, f"row {rows[k]} does not match its checksum "
                                    "(corrupted)")
            dest = out[k]
            if self._blosc is not None:
                # Blosc's header holds the decompressed size at bytes 4-8.
                if len(data) < 16 or int.from_bytes(data[4:8], "little") != row_nbytes:
                    raise self._damaged(shard, "a row decompresses to the wrong size "
                                        "(corrupted)")
                try:
                    blosc.decompress(data, dest)
                except Exception as exc:  # numcodecs raises RuntimeError on bad input
                    raise self._damaged(shard, f"a row does not decompress ({exc}; "
                                        "corrupted)") from None
            elif nbytes == row_nbytes:
                dest.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
            else:
                raise self._damaged(shard, "a row has the wrong size (corrupted)")

    def shard_entry(self, shard: int) -> dict:
        """What the manifest records of a shard as it is on disk: ``{"size", "rows"}`` (each
        row's compressed size and crc32c, base64 ``<u4`` pairs), or ``{"absent": True}``."""
        file = self.path / self._key(shard)
        n_rows = min(self.rows_per_shard, self.shape[0] - shard * self.rows_per_shard)
        table = np.zeros((n_rows, 2), dtype="<u4")
        try:
            fh = _fs.open_ranged(file)
        except FileNotFoundError:
            return {"absent": True, "rows": _b64(table)}
        with fh:
            size = fh.size
            index = self._shard_index(fh, shard, size)
            stored = [r for r in range(n_rows) if index[r][0] != _MISSING]
            datas = fh.preads([(int(index[r][0]), int(index[r][1])) for r in stored])
            for r, data in zip(stored, datas):
                table[r] = index[r][1], _integrity.crc32c(data)
        return {"size": size, "rows": _b64(table)}

    def write_shard(self, shard: int, block: np.ndarray) -> dict:
        """Write ``block`` (the shard's rows, all of them: ``rows_per_shard`` or up to the
        last row) as shard ``shard``, replacing the file atomically, and return what the
        manifest records of it (:meth:`shard_entry`).

        Rows equal to the fill value everywhere are left out, as zarr leaves them out.
        """
        from numcodecs import blosc as _blosc

        start = shard * self.rows_per_shard
        n_rows = min(self.rows_per_shard, self.shape[0] - start)
        if block.shape != (n_rows, self.shape[1]) or n_rows <= 0:
            raise DaskmetaError(f"{self.path}: shard {shard} holds {max(n_rows, 0)} rows of "
                                f"{self.shape[1]}; got a block of shape {block.shape}")
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if self._blosc is not None:
            conf = self._blosc
            shuffle = {"noshuffle": _blosc.NOSHUFFLE, "shuffle": _blosc.SHUFFLE,
                       "bitshuffle": _blosc.BITSHUFFLE}[conf.get("shuffle", "noshuffle")]
            cname = conf.get("cname", "lz4").encode()
            clevel = int(conf.get("clevel", 5))
            blocksize = int(conf.get("blocksize", 0))
            typesize = int(conf.get("typesize") or self.dtype.itemsize)
        index = np.full((self.rows_per_shard, 2), _MISSING, dtype="<u8")
        empty = ((block == self.fill_value) if self.fill_value == self.fill_value
                 else np.isnan(block)).all(axis=1)
        parts, offset = [], 0 if self._index_at_end else self._index_nbytes
        table = np.zeros((n_rows, 2), dtype="<u4")
        for r in np.flatnonzero(~empty):
            if self._blosc is None:
                data = block[r].tobytes()
            else:
                data = _blosc.compress(block[r], cname, clevel, shuffle, blocksize, typesize)
            index[r] = offset, len(data)
            table[r] = len(data), _integrity.crc32c(data)
            parts.append(data)
            offset += len(data)
        body = index.tobytes()
        index_bytes = body + np.uint32(_integrity.crc32c(body)).astype("<u4").tobytes()
        parts = parts + [index_bytes] if self._index_at_end else [index_bytes] + parts
        _fs.replace_bytes(self.path / self._key(shard), parts)
        return {"size": sum(len(p) for p in parts), "rows": _b64(table)}


def _b64(table: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(table, dtype="<u4").tobytes()).decode()


def _chunk_key(meta: dict, ndim: int):
    """The file name (relative to the array) of the chunk ``(i, 0, ...)`` as a function of
    ``i``, or None for an unknown key encoding."""
    encoding = meta["chunk_key_encoding"]
    separator = encoding.get("configuration", {}).get("separator", "/")
    if encoding["name"] == "default":
        prefix = f"c{separator}"
    elif encoding["name"] == "v2":
        prefix = ""
    else:
        return None
    suffix = f"{separator}0" * (ndim - 1)
    return lambda i: f"{prefix}{i}{suffix}"


def _fill_value(meta: dict, dtype: np.dtype):
    """The array's fill value as a Python number, or None if it is not a plain one."""
    fill = meta.get("fill_value", 0)
    if isinstance(fill, str) and dtype.kind == "f":
        fill = _SPECIAL_FLOATS.get(fill)  # Zarr v3 spells these as strings
    if not isinstance(fill, int | float) or isinstance(fill, bool):
        return None
    return fill


def _little_endian(codec: dict, dtype: np.dtype) -> bool:
    endian = (codec.get("configuration") or {}).get("endian")
    if dtype.itemsize == 1:
        return endian in (None, "little", "big")
    return endian == "little" and np.little_endian


@functools.lru_cache(maxsize=32)
def _cached_layout(path, stamp) -> ShardedRows | None:
    return ShardedRows.open(path)


def _layout(array_path) -> ShardedRows | None:
    """The :class:`ShardedRows` of an array (cached until its metadata changes), or None
    (another layout, or no metadata: go through zarr)."""
    location = _fs.as_location(array_path)
    try:
        stamp = _fs.stamp(location / "zarr.json")
    except OSError:
        return None
    if stamp is None:
        return None
    return _cached_layout(location, stamp)


def write_shard(array_path, shard: int, block: np.ndarray) -> dict | None:
    """Write ``block`` as shard ``shard`` of the sharded 2-D Zarr array at ``array_path``:
    directly in daskmeta's layout (:meth:`ShardedRows.write_shard`, returning what a
    manifest records of it), through zarr for any other (returning None)."""
    layout = _layout(array_path)
    if layout is not None:
        return layout.write_shard(shard, block)
    import zarr

    array = zarr.open_array(_fs.zarr_store(_fs.as_location(array_path)), mode="r+")
    rows = array.shards[0] if array.shards is not None else array.chunks[0]
    array[shard * rows:shard * rows + len(block)] = block
    return None


def _through_zarr(array_path, read):
    """``read(zarr array)``, its errors as one-line DaskmetaErrors naming the array."""
    import zarr

    try:
        return read(zarr.open_array(_fs.zarr_store(_fs.as_location(array_path)), mode="r"))
    except DaskmetaError:
        raise
    except Exception as exc:  # zarr's errors: JSON, codecs, missing metadata, ...
        text = " ".join(str(exc).split())
        raise DaskmetaError(f"{array_path}: cannot read the Zarr array ({type(exc).__name__}: "
                            f"{text})") from None


@contextlib.contextmanager
def _rebuilt_is_changed(array_path, manifest):
    """A read's error, as "the store changed" if the store now holds another build (its
    files vanish or change while it is rebuilt)."""
    try:
        yield
    except DaskmetaError:
        if manifest is not None:
            root = _fs.as_location(array_path).parent
            try:
                now = _integrity.current(root)
            except DaskmetaError:
                now = None
            if now is None or now.generation != manifest.generation:
                raise _integrity.store_changed(root) from None
        raise


def _unverifiable(array_path) -> DaskmetaError:
    location = _fs.as_location(array_path)
    return _integrity.damaged(location / "zarr.json", "not the layout the build "
                              "wrote (its rows cannot be checked)", location.parent)


def read_rows(array_path, rows, out: np.ndarray | None = None, *,
              generation: str | None = None) -> np.ndarray:
    """Rows of the 2-D Zarr array at ``array_path``: directly for daskmeta's sharded layout,
    through zarr (one read per run of consecutive rows) for any other layout. ``out``, if
    given, receives them (shape ``(len(rows), n_cols)``, the array's dtype).

    In a collection store, rows are checked against the store's manifest, and the manifest's
    generation must be ``generation`` (default: the one this process opened the store at).

    Raises
    ------
    DaskmetaError
        If the store changed since it was opened, or a row is not what the build wrote.
    """
    array_path = _fs.as_location(array_path)
    manifest, name = _integrity.table_for(array_path, generation)
    expect = None if manifest is None else manifest.sharded.get(name)
    reader = _layout(array_path)
    if reader is not None and (expect is None or (
            expect.n_rows, expect.rows_per_shard) == (reader.shape[0], reader.rows_per_shard)):
        with _rebuilt_is_changed(array_path, manifest):
            return reader.read(rows, out=out, expect=expect)
    if expect is not None:
        with _rebuilt_is_changed(array_path, manifest):
            raise _unverifiable(array_path)
    rows = np.asarray(rows, dtype=np.int64).ravel()

    def read(array):
        target = out
        if target is None:
            target = np.empty((len(rows), array.shape[1]), dtype=array.dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            if run.size:
                a, b = int(sorted_rows[run[0]]), int(sorted_rows[run[-1]]) + 1
                target[order[run]] = array[a:b]
        return target

    return _through_zarr(array_path, read)


def read_vector(array_path, *, generation: str | None = None) -> np.ndarray:
    """The whole 1-D Zarr v3 array at ``array_path``.

    A store's per-experiment vectors (``ma_max``) are written in chunks of a shard's rows,
    hundreds of small files; zarr reads them at ~0.4 ms each, so this reads and decodes them
    directly when they are plain chunks (``bytes`` then at most one of zstd, blosc or gzip)
    in a local directory, and through zarr otherwise. In a collection store each chunk file
    is checked against the manifest (as :func:`read_rows`).
    """
    path = _fs.as_location(array_path)
    manifest, name = _integrity.table_for(path, generation)
    try:
        meta = json.loads((path / "zarr.json").read_text())
        layout = _vector_layout(meta)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        layout = None
    recorded = None if manifest is None else {
        rel[len(name) + 1:]: e for rel, e in manifest.files.items()
        if rel.startswith(f"{name}/") and rel != f"{name}/zarr.json"}
    if layout is None:
        if recorded:
            with _rebuilt_is_changed(path, manifest):
                raise _unverifiable(path)
        return _through_zarr(path, lambda array: array[:])
    with _rebuilt_is_changed(path, manifest):
        return _read_chunks(path, name, layout, recorded)


def _read_chunks(path: Path, name: str, layout, recorded) -> np.ndarray:
    n, chunk, dtype, codec, key, fill = layout
    out = np.empty(-(-n // chunk) * chunk, dtype=dtype)
    fetched = None
    if isinstance(path, _fs.RemotePath):  # every chunk in concurrent requests
        names = [f"{path.path}/{key(i)}" for i in range(len(out) // chunk)]
        fetched = path.fs.cat(names, on_error="omit")
    for i in range(len(out) // chunk):
        file = path / key(i)
        entry = None if recorded is None else recorded.get(key(i), {"absent": True})
        try:
            if fetched is None:
                raw = file.read_bytes()
            elif f"{path.path}/{key(i)}" in fetched:
                raw = fetched[f"{path.path}/{key(i)}"]
            else:
                raise FileNotFoundError(str(file))
        except FileNotFoundError:
            if entry is not None and not entry.get("absent"):
                raise _integrity.damaged(file, f"chunk {i} of array {name!r}: missing",
                                         path.parent) from None
            out[i * chunk:(i + 1) * chunk] = fill
            continue
        except OSError as exc:
            raise DaskmetaError(f"{file}: unreadable chunk ({exc})") from None
        if entry is not None and (entry.get("absent") or len(raw) != entry["size"]
                                  or _integrity.crc32c(raw) != entry["crc32c"]):
            raise _integrity.damaged(file, f"chunk {i} of array {name!r}: not the one the "
                                     "build wrote (corrupted or replaced)", path.parent)
        try:
            data = raw if codec is None else codec.decode(raw)
        except Exception as exc:  # the codecs' own errors on bad input
            raise DaskmetaError(f"{file}: a chunk does not decode ({exc}; corrupted)") from None
        if len(data) != chunk * dtype.itemsize:
            raise DaskmetaError(f"{file}: a chunk decodes to the wrong size (corrupted)")
        out[i * chunk:(i + 1) * chunk] = np.frombuffer(data, dtype=dtype)
    return out[:n]


def _vector_layout(meta: dict):
    """(length, chunk length, dtype, decoder or None, chunk key, fill) of a plain 1-D array,
    or None."""
    if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array"
            or len(meta["shape"]) != 1 or meta.get("storage_transformers")
            or meta["chunk_grid"]["name"] != "regular"):
        return None
    dtype = np.dtype(meta["data_type"])
    codecs = meta["codecs"]
    if codecs[0]["name"] != "bytes" or not _little_endian(codecs[0], dtype) or len(codecs) > 2:
        return None
    codec = None
    if len(codecs) == 2:
        from numcodecs import Blosc, GZip, Zstd

        decoders = {"zstd": Zstd, "blosc": Blosc, "gzip": GZip}
        if codecs[1]["name"] not in decoders:
            return None
        codec = decoders[codecs[1]["name"]]()  # all three decode without their settings
    key, fill = _chunk_key(meta, 1), _fill_value(meta, dtype)
    if key is None or fill is None:
        return None
    (n,), (chunk,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    return int(n), int(chunk), dtype, codec, key, fill


_scratch = threading.local()


def scratch_rows(n_rows: int, n_cols: int, dtype) -> np.ndarray:
    """An uninitialised ``(n_rows, n_cols)`` array owned by the calling thread, for blocks of
    rows that are read, reduced and dropped within one task.

    The memory is reused by the thread's next call (it grows to the largest block asked for
    and is kept): tasks that read many blocks of tens of MB then allocate, and first touch,
    that memory once per thread instead of once per block. Nothing may keep a reference to
    the array past the task, nor call this again while it is in use.
    """
    dtype = np.dtype(dtype)
    nbytes = n_rows * n_cols * dtype.itemsize
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        _scratch.buffer = buffer = np.empty(max(nbytes, 1), dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(n_rows, n_cols)
