"""What a collection store must hold, and who may write it: the manifest, the generation
token and the build lock.

**The manifest** (``daskmeta/manifest.json`` in the store, written atomically when a build
completes) records what the build wrote:

- ``generation``: a random token chosen when the store was created, also in the store's
  attributes. A rebuild (``overwrite``) makes a new one, so a reader that opened one build
  can tell that the store now holds another.
- ``identity``: the store's attributes as the build wrote them (kernel, kernel_params, dtype,
  rows_per_shard, mask_hash, dataset_fingerprint, n_experiments, n_voxels, ...): an edit of
  one of them is refused, naming it.
- ``files``: every other file of the store (array metadata, ``ma_max`` chunks, the mask and
  coordinates, ``dataset.zip``) with its size and crc32c, or ``absent`` for a chunk zarr
  left unwritten because it held only the fill value.
- ``sharded``: for ``ma`` and ``ma_hist`` (shards of one-row chunks), each shard file's size
  and each row's compressed size and crc32c (size 0: a row left out of its shard because it
  equals the fill value). A row read is checked against them, so a missing, truncated,
  swapped or corrupted shard is an error, never other numbers.

The manifest checks itself (a crc32c over its body). Opening a store checks the identity,
that every recorded file exists with its recorded size (one ``stat`` each, no reading),
and the metadata and Dataset files' checksums; reading a row checks that row's checksum;
``daskmeta verify`` checks everything.

**Readers** check the generation: :class:`~daskmeta.collection.Collection` before every fit
and read, and :func:`daskmeta.storage.read_rows` given ``generation=`` (or, in a process that
opened the store, the generation it opened: :func:`pin`) on every read, so a reader of a
store rebuilt under it gets "the store changed since it was opened" instead of the new
build's rows. One gap remains: the pass engine's reads on Dask worker processes
(``daskmeta._pass.StoredRows``) do not yet pass the generation, so there rows are checked
against the manifest in force; a fit whose store is rebuilt *and completed* while its pass
runs could read rows of both builds there (the threaded scheduler and a rebuild before the
pass starts are covered).

**The build lock** is an ``fcntl.flock`` on ``.NAME.lock`` next to the store, held for the
whole build (and removed at its end): a second build of the same path fails at once with
"another build of PATH is running" and touches nothing. ``flock`` works on local
filesystems; on network filesystems it may be unsupported (a warning says so, and the
build goes on unprotected) or local to one machine (NFS without lock support, some FUSE
filesystems): do not run two builds of one store at once there.

On S3 (``s3://bucket/NAME.zarr``) the lock is a *lease*: the object ``.NAME.lock`` next to
the store, created only if absent (a conditional PUT, ``If-None-Match: *``), holding its
owner's token and an expiry time ``daskmeta.s3.lock-lease`` seconds (default 60) ahead,
which the build renews every third of the lease by a PUT conditional on the lock's ETag
(``If-Match``). A second build finds the lock and fails at once ("another build ... is
running"), unless its lease has expired -- a killed build stops renewing it -- and then takes
it over with a PUT conditional on the ETag it read, so of two builds that race for an expired
lock exactly one wins. Guarantees: two live builds never both hold the lock, provided the
machines' clocks agree to well within the lease and a build is never stalled longer than the
lease. Should a build stall that long anyway, the build that takes its lease over resumes
the same store: both then write the same bytes (same dataset, kernel and generation) to the
shards they share, and the stalled build, finding at its next renewal that its lease is gone,
stops with an error before it writes the manifest or marks the store complete; a takeover
with ``overwrite`` makes a new generation, which the stalled build's tasks refuse to write
into. A killed build's store can be resumed once its lease expires. The lock is
deleted when the build ends. Needs an S3 server with conditional writes (AWS since 2024,
MinIO, moto); other fsspec protocols build without a lock, with a warning.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from daskmeta import _fs
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning

__all__ = ["MANIFEST", "DamagedStoreError", "Manifest", "build_lock", "crc32c", "file_entry", "pin",
           "store_changed", "table_for"]

MANIFEST = "daskmeta/manifest.json"
MANIFEST_VERSION = 1
_HEAD = b'{"crc32c":"%08x","body":'  # the manifest's fixed-length head, then its body, "}"
_HEAD_LEN = len(_HEAD % 0)


_crc32c_value = None


def crc32c(data: bytes) -> int:
    """The crc32c of bytes (Castagnoli; hardware-accelerated, ~30 GB/s)."""
    global _crc32c_value
    if _crc32c_value is None:
        import google_crc32c  # zarr's dependency, as its crc32c codec

        _crc32c_value = google_crc32c.value
    return _crc32c_value(data)


def file_entry(path) -> dict:
    """``{"size", "crc32c"}`` of a file, or ``{"absent": True}`` if there is none."""
    try:
        data = _fs.as_location(path).read_bytes()
    except FileNotFoundError:
        return {"absent": True}
    return {"size": len(data), "crc32c": crc32c(data)}


def store_changed(root) -> DaskmetaError:
    """The error of a reader whose store was rebuilt (or is being rebuilt) under it."""
    return DaskmetaError(f"{root}: the store changed since it was opened (it was rebuilt, or "
                         "is being rebuilt); reopen it (Collection.open) to read the new one")


class DamagedStoreError(DaskmetaError):
    """A store file is not what its build wrote; ``problem`` says which and how."""

    def __init__(self, problem: str, root):
        self.problem = problem
        super().__init__(f"{problem}; the store is damaged (list its problems with `daskmeta "
                         f"verify {root}`, then rebuild it with `daskmeta ingest --overwrite`)")


def damaged(file, what: str, root) -> DamagedStoreError:
    """The error of a store file that is not what its build wrote."""
    return DamagedStoreError(f"{file}: {what}", root)


class ShardTable:
    """What the build wrote of one sharded array: each shard file's size (-1: no file) and
    each row's ``(compressed size, crc32c)`` (size 0: the row is not stored)."""

    def __init__(self, rows_per_shard: int, n_rows: int, shard_size, rows):
        self.rows_per_shard = int(rows_per_shard)
        self.n_rows = int(n_rows)
        self.shard_size = np.asarray(shard_size, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.uint32).reshape(self.n_rows, 2)

    def to_json(self) -> dict:
        return {"rows_per_shard": self.rows_per_shard, "n_rows": self.n_rows,
                "shard_size": [int(s) for s in self.shard_size],
                "rows": base64.b64encode(self.rows.astype("<u4").tobytes()).decode()}

    @classmethod
    def from_json(cls, d: dict) -> ShardTable:
        rows = np.frombuffer(base64.b64decode(d["rows"]), dtype="<u4")
        table = cls(d["rows_per_shard"], d["n_rows"], d["shard_size"], rows)
        if len(table.shard_size) != -(-table.n_rows // table.rows_per_shard):
            raise ValueError("shard_size has the wrong length")
        return table

    @classmethod
    def from_entries(cls, rows_per_shard: int, n_rows: int, entries: list) -> ShardTable:
        """From each shard's entry (``ShardedRows.write_shard``'s), in shard order."""
        sizes = [e.get("size", -1) for e in entries]
        rows = np.concatenate([np.frombuffer(base64.b64decode(e["rows"]), dtype="<u4")
                               for e in entries])
        return cls(rows_per_shard, n_rows, sizes, rows)

    def shard(self, index: int):
        """``(file size or None, (rows, 2) array of (compressed size, crc32c))``."""
        a = index * self.rows_per_shard
        size = int(self.shard_size[index])
        return (None if size < 0 else size), self.rows[a:a + self.rows_per_shard]


class Manifest:
    """A store's manifest (see the module's description)."""

    def __init__(self, generation: str, identity: dict, files: dict, sharded: dict):
        self.generation = generation
        self.identity = identity
        self.files = files
        self.sharded = sharded

    def write(self, root) -> None:
        """Write it into the store at ``root``, replacing any manifest atomically."""
        body = json.dumps({"manifest_version": MANIFEST_VERSION, "generation": self.generation,
                           "identity": self.identity, "files": self.files,
                           "sharded": {k: t.to_json() for k, t in self.sharded.items()}},
                          sort_keys=True, separators=(",", ":")).encode()
        _fs.replace_bytes(_fs.as_location(root) / MANIFEST, _HEAD % crc32c(body) + body + b"}")

    @classmethod
    def read(cls, file) -> Manifest:
        """Read and check a manifest file.

        Raises
        ------
        DaskmetaError
            If it is unreadable or damaged (its checksum does not match its body).
        """
        try:
            raw = _fs.as_location(file).read_bytes()
        except OSError as exc:
            raise DaskmetaError(f"{file}: cannot read the store's manifest ({exc})") from None
        body = raw[_HEAD_LEN:-1]
        try:
            if raw[:_HEAD_LEN] != _HEAD % crc32c(body) or raw[-1:] != b"}":
                raise ValueError("its checksum does not match its contents")
            d = json.loads(body)
            if d["manifest_version"] != MANIFEST_VERSION:
                raise ValueError(f"manifest version {d['manifest_version']!r}, this daskmeta "
                                 f"reads {MANIFEST_VERSION}")
            return cls(str(d["generation"]), dict(d["identity"]), dict(d["files"]),
                       {k: ShardTable.from_json(t) for k, t in d["sharded"].items()})
        except (ValueError, KeyError, TypeError) as exc:
            raise DaskmetaError(f"{file}: the store's manifest is damaged ({exc}); rebuild "
                                "the store (`daskmeta ingest --overwrite`)") from None


# -- readers: the manifest in force, and the generation each store was opened at ---------------
_lock = threading.Lock()
_manifests: dict[str, tuple] = {}  # store root -> (stat key of its manifest, Manifest)
_root_attrs: dict[str, tuple] = {}  # store root -> (stat key of zarr.json, attributes)
_pinned: dict[str, str] = {}  # store root -> generation opened last in this process


def current(root, fresh: bool = False) -> Manifest | None:
    """The manifest of the store at ``root`` now (re-read only when its file changed, or
    with ``fresh``), or None if it has none."""
    root = _fs.as_location(root)
    file = root / MANIFEST
    key = _fs.stamp(file)
    if key is None:
        return None
    hit = _manifests.get(_fs.key(root))
    if hit is not None and hit[0] == key and not fresh:
        return hit[1]
    manifest = Manifest.read(file)
    with _lock:
        _manifests[_fs.key(root)] = (key, manifest)
    return manifest


def root_attributes(root) -> dict | None:
    """The attributes in the store's ``zarr.json`` (cached until it changes), or None."""
    root = _fs.as_location(root)
    file = root / "zarr.json"
    key = _fs.stamp(file)
    if key is None:
        return None
    hit = _root_attrs.get(_fs.key(root))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        attrs = json.loads(file.read_bytes()).get("attributes") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise DaskmetaError(f"{file}: not valid Zarr metadata ({exc})") from None
    with _lock:
        _root_attrs[_fs.key(root)] = (key, attrs)
    return attrs


def pin(root, generation: str | None) -> None:
    """Make ``generation`` the one reads of the store at ``root`` in this process expect
    (Collection.open does); None forgets it."""
    root = _fs.key(_fs.as_location(root))
    with _lock:
        if generation is None:
            _pinned.pop(root, None)
        else:
            _pinned[root] = generation


def table_for(array_path, generation: str | None = None):
    """``(manifest, array name)`` against which a read of the array at ``array_path`` is
    checked, or ``(None, name)`` for an array outside any manifest (a store of an earlier
    format, or not a collection).

    ``generation`` (default: the one this process opened the store at, if any) must be the
    manifest's.

    Raises
    ------
    DaskmetaError
        If the store changed since it was opened, or a store that should have a manifest has
        none.
    """
    location = _fs.as_location(array_path)
    root, name = location.parent, location.name
    expected = generation if generation is not None else _pinned.get(_fs.key(root))
    manifest = current(root)
    if manifest is None:
        if expected is not None:
            raise store_changed(root)
        attrs = root_attributes(root)
        if attrs and attrs.get("generation") and attrs.get("complete"):
            raise damaged(root / MANIFEST, "missing (this store's format has a "
                          "manifest)", root)
        return None, name
    if expected is not None and manifest.generation != expected:
        raise store_changed(root)
    return manifest, name


def check_open(root: Path, attrs: dict, manifest: Manifest) -> list[str]:
    """The cheap checks of opening a store: generation and identity against the manifest,
    every recorded file present with its recorded size, metadata and Dataset checksums."""
    problems = []
    if attrs.get("generation") != manifest.generation:
        problems.append(f"{root / MANIFEST}: belongs to another build (generation "
                        f"{manifest.generation}; the store's is {attrs.get('generation')})")
    problems += identity_problems(attrs, manifest)
    # On an object store, one listing gives every size (instead of a request per file).
    listed = _fs.sizes(root) if _fs.is_remote(root) else None

    def size_of(file):
        if listed is None:
            return None
        return listed.get(file.relative_to(root).as_posix(), -1)

    for rel, entry in manifest.files.items():
        file = root / rel
        problem = _size_problem(file, entry, size_of(file))
        if problem is None and (rel.endswith("zarr.json") or rel.endswith(".zip")):
            problem = _checksum_problem(file, entry)
        if problem is not None:
            problems.append(f"{file}: {problem}")
    for name, table in manifest.sharded.items():
        key = shard_key(root / name)
        for index in range(len(table.shard_size)):
            size, _ = table.shard(index)
            file = root / name / key(index)
            problem = _size_problem(file, {"absent": True} if size is None else {"size": size},
                                    size_of(file))
            if problem is not None:
                problems.append(f"{file}: shard {index} of array {name!r}: {problem}")
    return problems


def identity_problems(attrs: dict, manifest: Manifest) -> list[str]:
    """Attributes that differ from what the build recorded, one line each."""
    return [f"attribute {k!r} is {'missing' if k not in attrs else repr(attrs[k])}; the "
            f"build recorded {v!r} (edited after the build?)"
            for k, v in manifest.identity.items()
            if k not in attrs or not _same_value(attrs[k], v)]


def _same_value(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _size_problem(file: Path, entry: dict, size: int | None = None) -> str | None:
    """``size``: the file's size if known (-1: no such file), else it is asked for."""
    try:
        if size is None:
            size = os.stat(file).st_size if not _fs.is_remote(file) else file.stat().st_size
        if size < 0:
            raise FileNotFoundError(str(file))
    except FileNotFoundError:
        return None if entry.get("absent") else (
            f"missing (the build wrote {entry.get('size')} bytes)")
    except OSError as exc:
        return f"cannot be read ({exc})"
    if entry.get("absent"):
        return "should not exist (the build wrote no such file)"
    if size != entry["size"]:
        return f"{size} bytes; the build wrote {entry['size']} (truncated or replaced)"
    return None


def _checksum_problem(file: Path, entry: dict) -> str | None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc})"
    if crc32c(data) != entry["crc32c"]:
        return "its checksum differs from the build's (changed or replaced)"
    return None


def check_file(file: Path, entry: dict) -> str | None:
    """A problem with ``file`` against its manifest entry (size, then checksum), as a line
    naming the file, or None."""
    problem = _size_problem(file, entry)
    if problem is None and not entry.get("absent"):
        problem = _checksum_problem(file, entry)
    return None if problem is None else f"{file}: {problem}"


def shard_key(array_path: Path):
    """The chunk key ``i -> 'c/i/0...'`` of an array from its zarr.json (daskmeta's own
    arrays use the default encoding)."""
    try:
        meta = json.loads((_fs.as_location(array_path) / "zarr.json").read_text())
        encoding = meta["chunk_key_encoding"]
        sep = encoding.get("configuration", {}).get("separator", "/")
        prefix = f"c{sep}" if encoding["name"] == "default" else ""
        suffix = f"{sep}0" * (len(meta["shape"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        prefix, suffix = "c/", "/0"
    return lambda i: f"{prefix}{i}{suffix}"


# -- writers: the build lock --------------------------------------------------------------------
def _held() -> None:
    """A lock that cannot be lost while held (``flock``)."""


@contextlib.contextmanager
def build_lock(path: Path):
    """Hold the build lock of the store at ``path`` (``.NAME.lock`` next to it) for the
    block; the lock file is removed at its end. Yields ``check()``, which raises if the lock
    was lost (an S3 lease taken over after a stall): call it before completing the store.

    Raises
    ------
    DaskmetaError
        If another build of the store holds it.
    """
    if _fs.is_remote(path):
        with _object_store_lock(_fs.as_location(path)) as check:
            yield check
        return
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaskmetaError(f"{lock.parent}: cannot create the store's folder ({exc})") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DaskmetaError(f"{lock}: cannot create the build lock ({exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaskmetaError(f"another build of {path} is running (it holds {lock}); wait "
                                "for it to finish, or stop it") from None
        except OSError as exc:  # a filesystem without flock (some network filesystems)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            warnings.warn(f"{lock}: cannot lock ({exc}); a concurrent build of {path} would "
                          "not be detected", DaskmetaWarning, stacklevel=3)
            fd = None
            break
        # The file may have been removed (by the build that held it) between our open and
        # lock: then we locked an orphan; start again on the file now at that path.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield _held
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield _held
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while holding it: a build that locked it then starts again
        os.close(fd)


def _s3_put(lock, body: bytes, **condition) -> str:
    """PUT ``body`` as the lock object under an ``If-None-Match`` / ``If-Match`` condition;
    its new ETag, or None if the condition failed."""
    fs = lock.fs
    bucket, key, _ = fs.split_path(lock.path)
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
    except (FileExistsError, OSError) as exc:
        text = str(exc)
        if isinstance(exc, FileExistsError) or "pre-condition" in text or "Precondition" in text \
                or "412" in text or "ConditionalRequestConflict" in text:
            return None
        raise DaskmetaError(f"{lock}: cannot write the build lock ({exc})") from None
    return response.get("ETag")


@contextlib.contextmanager
def _object_store_lock(path):
    """The build lock of a store on S3: a lease (see the module's description)."""
    import secrets
    import socket
    import time

    from daskmeta.config import lock_lease

    lock = path.with_name(f".{path.name}.lock")
    if lock.protocol not in ("s3", "s3a"):
        warnings.warn(f"{lock}: builds on {lock.protocol}:// are not locked; a concurrent "
                      f"build of {path} would not be detected", DaskmetaWarning, stacklevel=4)
        yield _held
        return
    lease = lock_lease()
    owner = secrets.token_hex(8)

    def body() -> bytes:
        return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + lease}).encode()

    def busy(until: float) -> DaskmetaError:
        left = max(0.0, until - time.time())
        return DaskmetaError(f"another build of {path} is running (it holds {lock}, its lease "
                             f"runs {left:.0f} s more); wait for it to finish, or stop it (a "
                             "killed build's lock can be taken over when its lease ends)")

    etag = _s3_put(lock, body(), IfNoneMatch="*")
    if etag is None:  # held: by a live build, or by a killed one whose lease ran out
        try:
            info = lock.fs.info(lock.path)
            held = json.loads(lock.fs.cat_file(lock.path))
            until = float(held["expires"])
        except FileNotFoundError:  # released meanwhile: try once more
            etag, until, info = _s3_put(lock, body(), IfNoneMatch="*"), time.time(), {}
        except (ValueError, KeyError, TypeError):
            until, info = 0.0, lock.fs.info(lock.path)  # unreadable: treat as expired
        if etag is None:
            if until > time.time():
                raise busy(until)
            etag = _s3_put(lock, body(), IfMatch=info.get("ETag"))
            if etag is None:  # another build took it over first
                raise busy(time.time() + lease)
    state = {"etag": etag, "lost": False}
    stop = threading.Event()

    def renew():
        while not stop.wait(lease / 3):
            new = _s3_put(lock, body(), IfMatch=state["etag"])
            if new is None:
                state["lost"] = True
                return
            state["etag"] = new

    thread = threading.Thread(target=renew, name=f"daskmeta-lease-{path.name}", daemon=True)
    thread.start()

    def check() -> None:
        if state["lost"]:
            raise DaskmetaError(f"{path}: this build lost its lock {lock} (its lease was not "
                                "renewed in time and another build took it over); that "
                                "build finishes the store")

    try:
        yield check
        check()
    finally:
        stop.set()
        thread.join()
        if not state["lost"]:
            with contextlib.suppress(FileNotFoundError, OSError):
                held = json.loads(lock.fs.cat_file(lock.path))
                if held.get("owner") == owner:
                    lock.fs.rm_file(lock.path)
