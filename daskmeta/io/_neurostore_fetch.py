"""Download NeuroStore studyset releases: :func:`fetch_neurostore`, :func:`neurostore_releases`.

The release index and archives are the ones NiMARE 0.22.1's ``fetch_neurostore`` uses: the
index (``https://neurostore.org/api/neurostore-studyset-releases/``) lists releases, each
with ``version`` (``"2026-09"``, ``"nightly"``), ``release_type``, ``built_at``,
``download_path`` (or ``download_url``, relative to the index) and ``archive_checksum`` (the
archive's SHA-256); the archive is a ``.tar.gz`` of one parquet studyset folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from urllib.parse import urljoin

from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.io._archive import extract_safely
from daskmeta.io._fetch import check_url, fetch_url, get_json, is_sha256
from daskmeta.io.download import DEFAULT_TIMEOUT, _progress_reporter, default_data_dir

__all__ = ["NEUROSTORE_RELEASES_URL", "fetch_neurostore", "neurostore_releases"]

#: NeuroStore's release index (NiMARE's ``NEUROSTORE_RELEASES_URL``).
NEUROSTORE_RELEASES_URL = "https://neurostore.org/api/neurostore-studyset-releases/"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def neurostore_releases(url: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
    """The releases listed by a NeuroStore release index (a JSON list, or an object whose
    ``results`` is the list), each a dict with at least ``version``."""
    url = url or NEUROSTORE_RELEASES_URL
    payload = get_json(url, "the NeuroStore release index", timeout)
    releases = payload.get("results") if isinstance(payload, dict) else payload
    if not isinstance(releases, list) or not releases:
        raise DaskmetaError(f"the NeuroStore release index at {url} lists no releases (expected "
                            "a JSON list, or an object with a 'results' list)")
    for i, rel in enumerate(releases):
        if not isinstance(rel, dict) or not isinstance(rel.get("version"), (str, int)):
            raise DaskmetaError(f"the NeuroStore release index at {url}: release {i} is not an "
                                "object with a 'version'")
    return releases


def _select(releases: list[dict], version: str) -> dict:
    """NiMARE's choice: ``latest`` is the most recently built dated (non-nightly) release;
    otherwise the release of that version (the most recently built, if several)."""
    def key(rel):
        return (str(rel.get("built_at") or ""), str(rel.get("version") or ""))

    if version == "latest":
        dated = [r for r in releases if r.get("release_type") != "nightly"
                 and str(r.get("version")) != "nightly"]
        return max(dated or releases, key=key)
    matches = [r for r in releases if str(r.get("version")) == version]
    if not matches:
        have = ", ".join(sorted(str(r.get("version")) for r in releases))
        raise DaskmetaError(f"no NeuroStore release {version!r}; available: {have} (or "
                            "'latest')")
    return max(matches, key=key)


def check_version(version) -> str:
    if not isinstance(version, str) or not _SAFE.fullmatch(version):
        raise DaskmetaError(f"version must be 'latest', 'nightly' or a release name such as "
                            f"'2026-09' (letters, digits, '._-'); got {version!r}")
    return version


def _find_studyset(root: Path) -> Path:
    if (root / "studyset.json").is_file():
        return root
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "studyset.json").is_file()]
    if len(found) != 1:
        raise DaskmetaError(f"{str(root)!r} holds no parquet studyset (a folder with "
                            "studyset.json)")
    return found[0]


def fetch_neurostore(version: str = "latest", data_dir=None, url: str | None = None,
                     overwrite: bool = False, progress=None,
                     timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download a NeuroStore studyset release, verify and extract it, return its folder.

    Parameters
    ----------
    version : str
        ``"latest"`` (the most recently built dated release), ``"nightly"``, or a release's
        version (``"2026-09"``).
    data_dir : str or path-like, optional
        Parent folder; the release goes to ``data_dir/neurostore/<version>/`` (default:
        :func:`daskmeta.io.download.default_data_dir`).
    url : str, optional
        The release index (default: NeuroStore's, :data:`NEUROSTORE_RELEASES_URL`).
    overwrite : bool
        Download and extract again even if the release folder exists.
    progress : bool or callable, optional
        As for :func:`daskmeta.io.fetch`.
    timeout : float
        Seconds to wait for a connection or a chunk.

    Returns
    -------
    pathlib.Path
        The folder holding ``studyset.json`` (for :func:`daskmeta.io.read_neurostore`).

    Raises
    ------
    DaskmetaError
        An unknown version; an index without releases; a release without a download path;
        HTTP errors; an archive that fails its checksum (deleted), is truncated (kept as
        ``.part`` and resumed by the next call), is corrupt, or holds a member that would
        escape the folder or a link (nothing extracted). The release folder appears only
        complete (extracted under a temporary name and renamed).

    Warns
    -----
    DaskmetaWarning
        When the release publishes no ``archive_checksum`` (the archive is then checked by
        its own structure only).
    """
    version = check_version(version)
    url = check_url(url or NEUROSTORE_RELEASES_URL, "the release index URL")
    release = _select(neurostore_releases(url, timeout), version)
    name = check_version(str(release.get("version")))
    parent = (default_data_dir() if data_dir is None else Path(data_dir).expanduser())
    parent = parent / "neurostore"
    target = parent / name
    if target.exists() and not overwrite:
        return _find_studyset(target)
    link = release.get("download_url") or release.get("download_path")
    if not isinstance(link, str) or not link:
        raise DaskmetaError(f"NeuroStore release {name!r} gives no download_path")
    archive_url = check_url(urljoin(url, link), f"the download URL of release {name!r}")
    checksum = release.get("archive_checksum")
    if isinstance(checksum, str):
        checksum = checksum.lower().removeprefix("sha256:")
    if checksum is not None and not is_sha256(checksum):
        raise DaskmetaError(f"NeuroStore release {name!r}: archive_checksum must be a SHA-256 "
                            f"(64 hex digits); got {checksum!r}")
    if checksum is None:
        warnings.warn(f"NeuroStore release {name!r} publishes no archive_checksum; its archive "
                      "is checked by its structure only", DaskmetaWarning, stacklevel=2)
    archive_name = os.path.basename(str(release.get("archive_name") or ""))
    if not _SAFE.fullmatch(archive_name):
        archive_name = f"neurostore-studyset-{name}.tar.gz"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaskmetaError(f"cannot create the data directory {str(parent)!r}: {exc}") from exc
    archive = parent / archive_name
    fetch_url(archive_url, archive, sha256=checksum, overwrite=overwrite,
              report=_progress_reporter(progress), timeout=timeout)
    staged = parent / f".{name}.new"
    shutil.rmtree(staged, ignore_errors=True)
    extract_safely(archive, staged)
    try:
        studyset = _find_studyset(staged)
        (staged / "release.json").write_text(json.dumps(release, indent=1, default=str),
                                             encoding="utf-8")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if target.exists():
        old = parent / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staged, target)
    archive.unlink()  # the extracted tables are what is read; the archive was transport
    return target / studyset.relative_to(staged)
