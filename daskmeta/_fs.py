"""Where a collection store lives: a local path (:class:`pathlib.Path`) or an fsspec URL
such as ``s3://bucket/ns-mkda.zarr`` (:class:`RemotePath`).

The store code (:mod:`daskmeta.storage`, :mod:`daskmeta._integrity`, :mod:`daskmeta._build`,
:mod:`daskmeta._verify`, :mod:`daskmeta.collection`) works on either through the few
operations here: a :class:`RemotePath` answers the parts of :class:`pathlib.Path` they use
(``/``, ``name``, ``parent``, ``exists``, ``read_bytes``, ``glob``, ...) with fsspec calls,
and the functions below do what has no pathlib spelling (ranged reads, atomic replacement,
a change stamp, a listing with sizes, a Zarr store object). A :class:`RemotePath` has no
``__fspath__``: handing one to ``open`` or ``os`` fails loudly instead of writing a local
folder named ``s3:``.

Object stores write an object whole or not at all, so an "atomic replace" is one PUT; a
"directory" is a key prefix (``mkdir`` does nothing). Options for the filesystem
(endpoint, credentials) come from ``storage_options`` or the ``daskmeta.s3`` settings
(:func:`daskmeta.config.storage_options`) and travel with the path, so Dask workers that
read a store reach it the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

__all__ = ["RemotePath", "as_location", "is_remote", "key", "open_ranged", "portable",
           "replace_bytes", "rmtree", "sizes", "stamp", "zarr_store"]


class RemotePath:
    """An fsspec URL with the parts of :class:`pathlib.Path` the store code uses."""

    def __init__(self, url: str, storage_options: dict | None = None):
        protocol, sep, rest = str(url).partition("://")
        if not sep or not rest.strip("/"):
            raise ValueError(f"not a URL with a path: {url!r}")
        self.protocol = protocol
        self.path = rest.strip("/")
        if storage_options is None:
            from daskmeta.config import storage_options as configured

            storage_options = configured(f"{protocol}://")
        self.options = dict(storage_options)

    # -- naming --------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __dask_tokenize__(self):
        return ("RemotePath", str(self))

    def _with_path(self, path: str) -> RemotePath:
        return RemotePath(f"{self.protocol}://{path}", self.options)

    def __truediv__(self, other) -> RemotePath:
        return self._with_path(f"{self.path}/{str(other).strip('/')}")

    joinpath = __truediv__

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        name = self.name
        return name.rsplit(".", 1)[0] if "." in name[1:] else name

    @property
    def suffix(self) -> str:
        name = self.name
        return "." + name.rsplit(".", 1)[1] if "." in name[1:] else ""

    @property
    def parent(self) -> RemotePath:
        head = self.path.rsplit("/", 1)[0] if "/" in self.path else self.path
        return self._with_path(head)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def relative_to(self, other) -> Path:
        prefix = str(other).rstrip("/") + "/"
        if not str(self).startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return Path(str(self)[len(prefix):])

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> RemotePath:
        return self

    def expanduser(self) -> RemotePath:
        return self

    # -- the filesystem --------------------------------------------------------------------------
    @property
    def fs(self):
        import fsspec

        # No listing cache: a store's files change under a reader (a rebuild), and a reader
        # must see it. fsspec keeps one instance per set of arguments.
        try:
            return fsspec.filesystem(self.protocol, use_listings_cache=False, **self.options)
        except (ImportError, ValueError) as exc:
            from daskmeta.exceptions import DaskmetaError

            extra = " (pip install 'daskmeta[s3]', which installs s3fs)" \
                if self.protocol in ("s3", "s3a") else ""
            raise DaskmetaError(f"{self}: cannot reach {self.protocol}:// stores: "
                                f"{' '.join(str(exc).split())}{extra}") from None

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self.fs.pipe_file(self.path, bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: an object store has no directories."""

    def iterdir(self):
        for p in self.fs.ls(self.path, detail=False):
            yield self._with_path(p.rstrip("/"))

    def glob(self, pattern: str):
        for p in sorted(self.fs.glob(f"{self.path}/{pattern}")):
            yield self._with_path(p)

    def rglob(self, pattern: str):
        for p in sorted(self.fs.glob(f"{self.path}/**/{pattern}")):
            yield self._with_path(p)

    def stat(self):
        info = self.fs.info(self.path)
        return SimpleNamespace(st_size=int(info.get("size") or 0),
                               st_mtime_ns=_mtime_ns(info), st_ino=_etag(info))


def _etag(info: dict):
    return info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime")


def _mtime_ns(info: dict) -> int:
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if hasattr(modified, "timestamp"):
        return int(modified.timestamp() * 1e9)
    try:
        return int(float(modified) * 1e9)
    except (TypeError, ValueError):
        return 0


def is_remote(location) -> bool:
    """Whether a store location is a URL (not a local path)."""
    if isinstance(location, RemotePath):
        return True
    text = os.fspath(location) if isinstance(location, os.PathLike) else location
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def as_location(store, storage_options: dict | None = None):
    """A :class:`RemotePath` for a URL (``s3://...``), else a :class:`pathlib.Path`."""
    if isinstance(store, RemotePath):
        return store if storage_options is None else RemotePath(str(store), storage_options)
    if isinstance(store, str) and store.startswith("file://"):
        return Path(store[len("file://"):])
    if is_remote(store):
        return RemotePath(str(store), storage_options)
    return Path(store)


def portable(location):
    """What tasks get: a local path as a string, a URL as its :class:`RemotePath` (with its
    options)."""
    return location if isinstance(location, RemotePath) else str(location)


def key(location) -> str:
    """A string naming a location in caches: the absolute path, or the URL."""
    return str(location) if isinstance(location, RemotePath) else os.path.abspath(location)


def stamp(location):
    """A token that changes when the file at ``location`` is replaced (local: inode, size,
    mtime; remote: ETag and size), or None if there is no such file."""
    if isinstance(location, RemotePath):
        try:
            info = location.fs.info(location.path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        return _etag(info), int(info.get("size") or 0)
    try:
        st = os.stat(location)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def replace_bytes(location, parts) -> None:
    """Write ``parts`` (bytes, or a list of them) as the file at ``location``, replacing
    any file there atomically (local: a temporary name, then a rename; remote: one PUT)."""
    if isinstance(parts, bytes | bytearray | memoryview):
        parts = [parts]
    if isinstance(location, RemotePath):
        location.write_bytes(b"".join(parts))
        return
    import threading

    location = Path(location)
    location.parent.mkdir(parents=True, exist_ok=True)
    tmp = location.with_name(f".{location.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.writelines(parts)
        os.replace(tmp, location)
    finally:
        tmp.unlink(missing_ok=True)


def rmtree(location) -> None:
    """Delete a folder (or key prefix) and everything in it, if there is one."""
    if isinstance(location, RemotePath):
        fs = location.fs
        files = fs.find(location.path)
        if files:
            fs.rm(files)
        return
    shutil.rmtree(location, ignore_errors=True)


def sizes(root) -> dict[str, int]:
    """Every file under ``root``: relative path (with ``/``) -> size in bytes."""
    if isinstance(root, RemotePath):
        found = root.fs.find(root.path, detail=True)
        prefix = root.path + "/"
        return {name[len(prefix):]: int(info.get("size") or 0)
                for name, info in found.items() if name.startswith(prefix)}
    out = {}
    root = Path(root)
    for folder, _, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in names:
            with _suppress_missing():
                out[(rel / name).as_posix()] = os.stat(os.path.join(folder, name)).st_size
    return out


class _suppress_missing:
    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        return typ is not None and issubclass(typ, FileNotFoundError)


def zarr_store(location):
    """What ``zarr`` and ``xarray.open_zarr`` are given for a location: the local path as a
    string, or an fsspec store of the URL with its options."""
    if isinstance(location, RemotePath):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(location), storage_options=location.options)
    return str(location)


class _LocalRanged:
    def __init__(self, path):
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by __exit__)
        self.size = os.fstat(self._fh.fileno()).st_size

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fh.fileno(), n, offset)

    def preads(self, ranges) -> list[bytes]:
        return [os.pread(self._fh.fileno(), n, offset) for offset, n in ranges]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


class _RemoteRanged:
    def __init__(self, location: RemotePath):
        self._fs, self._path = location.fs, location.path
        info = self._fs.info(self._path)
        if info.get("type") == "directory":
            raise FileNotFoundError(str(location))
        self.size = int(info["size"])

    def pread(self, n: int, offset: int) -> bytes:
        if n <= 0:
            return b""
        return self._fs.cat_file(self._path, start=offset, end=min(offset + n, self.size))

    def preads(self, ranges) -> list[bytes]:
        """Many ranges in concurrent requests."""
        ranges = [(o, n) for o, n in ranges]
        if not ranges:
            return []
        return self._fs.cat_ranges([self._path] * len(ranges), [o for o, _ in ranges],
                                   [min(o + n, self.size) for o, n in ranges])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def open_ranged(location):
    """A file opened for ranged reads: ``.size``, ``.pread(n, offset)``, ``.preads([(offset,
    n), ...])`` (one request each, concurrent on object stores); a context manager.

    Raises FileNotFoundError if there is no such file.
    """
    if isinstance(location, RemotePath):
        return _RemoteRanged(location)
    return _LocalRanged(location)
