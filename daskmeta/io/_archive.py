"""Safe extraction of a downloaded archive (tar, gzipped or not, or zip).

Every member is checked before anything is written: a member whose path is absolute or
leads out of the target folder (``..``), a symbolic or hard link, a device or a FIFO refuses
the whole archive. Members are extracted into a temporary folder next to the target, which
is renamed to the target only once every member is out: a corrupt or truncated archive
leaves nothing that looks complete. The bytes extracted are capped (the dask config
``daskmeta.fetch.max-extracted-bytes``, 64 GB by default): a decompression bomb is refused
from its members' declared sizes before anything is written, and by counting the bytes
written in case a member's header understates them.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from daskmeta.exceptions import DaskmetaError

__all__ = ["extract_safely"]


def _check_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    parts = path.parts
    if (path.is_absolute() or name.startswith(("/", "\\")) or ".." in parts
            or (parts and ":" in parts[0])):
        raise DaskmetaError(f"archive {archive.name}: member {name!r} would be written outside "
                            "the target folder; refused, nothing was extracted")
    return path


class _Budget:
    """The bytes an extraction may still write."""

    def __init__(self, archive: Path, limit: int):
        self.archive, self.limit, self.left = archive, limit, limit

    def refuse(self, name: str):
        raise DaskmetaError(
            f"archive {self.archive.name}: extracting it (at member {name!r}) would write more "
            f"than {self.limit:,} bytes (dask config daskmeta.fetch.max-extracted-bytes); "
            "refused as a possible decompression bomb, nothing was extracted")

    def check_declared(self, sizes) -> None:
        total = 0
        for name, size in sizes:
            total += size
            if total > self.limit:
                self.refuse(name)

    def copy(self, src, dst, name: str) -> None:
        while True:
            block = src.read(1 << 20)
            if not block:
                return
            self.left -= len(block)
            if self.left < 0:
                self.refuse(name)
            dst.write(block)


def _members_tar(tf: tarfile.TarFile, archive: Path):
    members = []
    for m in tf.getmembers():
        _check_name(m.name, archive)
        if m.issym() or m.islnk():
            raise DaskmetaError(f"archive {archive.name}: member {m.name!r} is a "
                                f"{'symbolic' if m.issym() else 'hard'} link (to "
                                f"{m.linkname!r}); links are refused, nothing was extracted")
        if not (m.isfile() or m.isdir()):
            raise DaskmetaError(f"archive {archive.name}: member {m.name!r} is not a file or "
                                "a folder (a device or FIFO); refused, nothing was extracted")
        members.append(m)
    return members


def _extract_into(archive: Path, tmp: Path, budget: _Budget) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(info.filename, archive)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise DaskmetaError(f"archive {archive.name}: member {info.filename!r} is a "
                                        "symbolic link; links are refused, nothing was "
                                        "extracted")
            budget.check_declared((i.filename, i.file_size) for i in infos)
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad!r} fails its CRC")
            for info in infos:
                target = tmp.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    budget.copy(src, dst, info.filename)
        return
    with tarfile.open(archive, "r:*") as tf:
        members = _members_tar(tf, archive)  # reads the whole archive: truncation shows here
        budget.check_declared((m.name, m.size) for m in members if m.isfile())
        for m in members:
            target = tmp.joinpath(*PurePosixPath(m.name.replace("\\", "/")).parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise tarfile.ReadError(f"member {m.name!r} has no data")
            with src, open(target, "xb") as dst:
                budget.copy(src, dst, m.name)


def extract_safely(archive, target, max_bytes: int | None = None) -> Path:
    """Extract ``archive`` into the folder ``target`` (which must not exist), safely.

    Parameters
    ----------
    archive, target : path
    max_bytes : int, optional
        The most bytes the members may hold together (default: the dask config
        ``daskmeta.fetch.max-extracted-bytes``).

    Raises
    ------
    DaskmetaError
        Naming the archive and the member: an unsafe member, a corrupt or truncated archive,
        or more than ``max_bytes`` to write. Nothing is left at ``target`` then.
    """
    from daskmeta import config

    archive, target = Path(archive), Path(target)
    limit = (config.get_bytes("fetch.max-extracted-bytes") if max_bytes is None
             else config.parse_bytes(max_bytes))
    if target.exists():
        raise DaskmetaError(f"{str(target)!r} exists; not extracting over it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        _extract_into(archive, tmp, _Budget(archive, limit))
        os.replace(tmp, target)
    except DaskmetaError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError,
            ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise DaskmetaError(f"archive {archive.name} is corrupt or truncated ({detail}); "
                            "nothing was extracted") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
