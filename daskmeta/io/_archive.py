"""Safe extraction of a downloaded archive (tar, gzipped or not, or zip).

Every member is checked before anything is written: a member whose path is absolute or
leads out of the target folder (``..``), a symbolic or hard link, a device or a FIFO refuses
the whole archive. Members are extracted into a temporary folder next to the target, which
is renamed to the target only once every member is out: a corrupt or truncated archive
leaves nothing that looks complete.
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


def _extract_into(archive: Path, tmp: Path) -> None:
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
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive, "r:*") as tf:
        members = _members_tar(tf, archive)  # reads the whole archive: truncation shows here
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
                shutil.copyfileobj(src, dst)


def extract_safely(archive, target) -> Path:
    """Extract ``archive`` into the folder ``target`` (which must not exist), safely.

    Raises
    ------
    DaskmetaError
        Naming the archive and the member: an unsafe member, or a corrupt or truncated
        archive. Nothing is left at ``target`` then.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DaskmetaError(f"{str(target)!r} exists; not extracting over it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        _extract_into(archive, tmp)
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
