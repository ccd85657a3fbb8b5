"""Download and cache the upstream Neurosynth and NeuroQuery release files.

:func:`fetch` downloads the files of one whole-database release into
``<data_dir>/<database>-v<version>/``, in the upstream file layout
(``data-<db>_version-<v>_*``, plus the release's license file), so that
:func:`daskmeta.io.read_neurosynth` / :func:`daskmeta.io.read_neuroquery` read the
directory it returns.

Every file's size and SHA-256 are recorded in :data:`RELEASES`; a download counts only
once it verifies. The steps for each file are:

1. A file already at its final path is verified (hashed); if it matches it is skipped
   without any request. If it does not match it is downloaded again (a
   :class:`~daskmeta.exceptions.DaskmetaWarning` says so) and the bad copy is replaced
   only once the new one verifies: the cache holds upstream files, never user edits.
2. The body is streamed in chunks to ``<name>.part``. If a ``.part`` is already there (an
   interrupted download), the request asks for the rest (``Range: bytes=N-``) and appends
   when the server answers ``206 Partial Content``; a server that answers ``200`` (ignoring
   the range) is read from the start, and the ``.part`` is rewritten.
3. The ``.part`` is verified (size, then SHA-256) and moved to the final path with
   :func:`os.replace` (atomic on one file system), so a final path only ever holds a
   verified file.

Failures raise :class:`~daskmeta.exceptions.DaskmetaError` naming the file and URL:

* HTTP errors (404, 500, ...), refused connections and timeouts name the URL and the status
  or reason. A connection lost in the middle of a body leaves the ``.part`` in place, and the
  next :func:`fetch` resumes it.
* A body shorter than the recorded size (truncated) keeps the ``.part`` as well, for the same
  reason.
* A body of the recorded size but the wrong SHA-256, or one longer than the recorded size, is
  corrupt: the ``.part`` is deleted (resuming it could never verify), and the next
  :func:`fetch` starts that file from scratch.

Only the standard library is used (:mod:`urllib.request`). Two processes fetching into the
same directory at once are not coordinated; give them different ``data_dir``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from daskmeta._version import __version__
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning

__all__ = [
    "RELEASES",
    "ReleaseFile",
    "Release",
    "default_data_dir",
    "fetch",
    "file_urls",
]

#: Bytes read from the network (and from disk, when hashing) at a time.
CHUNK_SIZE = 1 << 20

#: Seconds to wait for a connection or for the next chunk of a body.
DEFAULT_TIMEOUT = 60.0

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release, as published upstream.

    Parameters
    ----------
    name : str
        File name, both upstream and in the local directory.
    size : int
        Size in bytes.
    sha256 : str
        Hex SHA-256 of the file's bytes.
    upstream_path : str
        Path of the file relative to the release's default ``url_base`` (differs from ``name``
        where the upstream repository keeps it in a subfolder).
    """

    name: str
    size: int
    sha256: str
    upstream_path: str


@dataclass(frozen=True)
class Release:
    """A whole-database release that :func:`fetch` can download.

    Parameters
    ----------
    database : str
        Name passed to :func:`fetch` (``"neurosynth"``, ``"neuroquery"``).
    version : str
        Release version.
    url_base : str
        Upstream location; each file is at ``{url_base}/{file.upstream_path}``.
    license : str
        Name of the data license (the license text is one of the files).
    files : tuple of ReleaseFile
        The files, in download order.
    """

    database: str
    version: str
    url_base: str
    license: str
    files: tuple[ReleaseFile, ...]

    @property
    def dirname(self) -> str:
        """Name of the local directory, e.g. ``"neurosynth-v7"``."""
        return f"{self.database}-v{self.version}"


# Upstream locations are the commits NiMARE 0.22.1 pins in nimare.extract.fetch_neurosynth /
# fetch_neuroquery. ``/raw/<commit>/`` serves the bytes (following GitHub's redirect to
# raw.githubusercontent.com). Sizes and checksums are those of the upstream files, recorded
# from the copies in the project's shared data folder.
_NEUROSYNTH_URL = (
    "https://github.com/neurosynth/neurosynth-data/raw/209c33cd009d0b069398a802198b41b9c488b9b7"
)
_NEUROQUERY_URL = (
    "https://github.com/neuroquery/neuroquery_data/raw/4580f86267fb7c14ac1f601e298cbed898d79f2d"
)


def _ns(suffix: str, size: int, sha256: str) -> ReleaseFile:
    name = f"data-neurosynth_version-7_{suffix}"
    return ReleaseFile(name, size, sha256, name)


def _nq(suffix: str, size: int, sha256: str) -> ReleaseFile:
    name = f"data-neuroquery_version-1_{suffix}"
    return ReleaseFile(name, size, sha256, f"data/{name}")


#: The releases :func:`fetch` knows, by database name.
RELEASES: Mapping[str, Release] = {
    "neurosynth": Release(
        database="neurosynth",
        version="7",
        url_base=_NEUROSYNTH_URL,
        license="Open Database License (ODbL) 1.0",
        files=(
            _ns(
                "coordinates.tsv.gz",
                3587167,
                "17135be3e08a0ab045896c77217e8463086543a0817d52a6a88c8e32c1161616",
            ),
            _ns(
                "metadata.tsv.gz",
                1175486,
                "8acde7de2a14ee2a12b406e50a8805e83288b0bc78924ddb36879d496dfb757b",
            ),
            _ns(
                "vocab-LDA50_keys.tsv",
                42996,
                "7d2c872af784eb0bb96e7f2d63ba5c699cd002d3f58baa60353d9450c9431bac",
            ),
            _ns(
                "vocab-LDA50_metadata.json",
                193,
                "d803b63c1b9afa4e65503b07c087f16304147cb236c8d82e7d79e4e2339e308f",
            ),
            _ns(
                "vocab-LDA50_source-abstract_type-weight_features.npz",
                2720104,
                "dff7606079404b8496be4baca35c0d261e91d4ac6ff5c5595e1ef519e598a571",
            ),
            _ns(
                "vocab-LDA50_vocabulary.txt",
                1275,
                "57a5fba4d3ee97cfcbf73a13d0631a1d9709a53c5a1fdf6d173f04ac8bb8f302",
            ),
            _ns(
                "vocab-terms_vocabulary.txt",
                33799,
                "71c1858c5eb1bcc79854198bbca234569731efdc382c6205a9e46495379614af",
            ),
            ReleaseFile(
                "LICENSE.txt",
                25312,
                "54e5da85f76242bab005c8a5e6792468aa53498e417b0557801fcdd9c87e8074",
                "LICENSE.txt",
            ),
        ),
    ),
    "neuroquery": Release(
        database="neuroquery",
        version="1",
        url_base=_NEUROQUERY_URL,
        license="BSD 3-Clause",
        files=(
            _nq(
                "coordinates.tsv.gz",
                2758923,
                "b97cf50346dc8a6f78b3c02c8a19680679d7dbdf35f760a1032e46c2cad3666c",
            ),
            _nq(
                "metadata.tsv.gz",
                495821,
                "d84d2c7b2e2ca1692381419833fde043fb42d279014104c3c957feeeece140ea",
            ),
            _nq(
                "vocab-neuroquery7547_source-abstract_type-count_features.npz",
                1380908,
                "79c38b2515a316b711eef1ef1737ba57ce720d79d8506b7a08da6639418cf60a",
            ),
            _nq(
                "vocab-neuroquery7547_source-keywords_type-count_features.npz",
                124114,
                "01c51de4b0f58194725c0c160e529c1c59cd812b83e51a693924be824f0e9c1b",
            ),
            _nq(
                "vocab-neuroquery7547_source-title_type-count_features.npz",
                172601,
                "c8243762f0f4c705c7ec60246c25e36785f0ea555dc914f85ede08a623afec74",
            ),
            _nq(
                "vocab-neuroquery7547_vocabulary.txt",
                92093,
                "ae4a13380451797735d3df142fb8b4b3792056fbf79471454aa40e12bec7717b",
            ),
            ReleaseFile(
                "LICENSE",
                1520,
                "f2448f4467b33827570df47be6173d64bca5c8a45c1b1815793321f47571fd3d",
                "LICENSE",
            ),
        ),
    ),
}


def _release(database: str) -> Release:
    if not isinstance(database, str) or database.strip().lower() not in RELEASES:
        allowed = ", ".join(repr(k) for k in RELEASES)
        raise DaskmetaError(f"unknown database {database!r}; allowed: {allowed}")
    return RELEASES[database.strip().lower()]


def default_data_dir() -> Path:
    """Directory under which :func:`fetch` stores releases by default.

    Returns
    -------
    pathlib.Path
        ``$DASKMETA_DATA`` if that environment variable is set and not empty; else the dask
        config setting ``daskmeta.data-dir`` (``DASK_DASKMETA__DATA_DIR``); otherwise the
        platform's user cache directory: ``$XDG_CACHE_HOME/daskmeta`` (default
        ``~/.cache/daskmeta``) on Linux and other POSIX systems,
        ``~/Library/Caches/daskmeta`` on macOS, ``%LOCALAPPDATA%\\daskmeta\\Cache`` on
        Windows.
    """
    env = os.environ.get("DASKMETA_DATA")
    if env:
        return Path(env).expanduser()
    import dask.config

    configured = dask.config.get("daskmeta.data-dir", None)
    if configured:
        return Path(str(configured)).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "daskmeta" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "daskmeta"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "daskmeta"


def file_urls(database: str, url_base: str | None = None) -> dict[str, str]:
    """URL of every file of a release.

    Parameters
    ----------
    database : {"neurosynth", "neuroquery"}
        The release.
    url_base : str or None, optional
        A mirror: every file is then ``{url_base}/{file name}`` (a flat directory). None (the
        default) gives the upstream locations.

    Returns
    -------
    dict of str to str
        File name to URL, in download order.
    """
    release = _release(database)
    if url_base is None:
        return {f.name: f"{release.url_base}/{f.upstream_path}" for f in release.files}
    base = str(url_base).rstrip("/")
    return {f.name: f"{base}/{f.name}" for f in release.files}


def fetch(
    database: str,
    data_dir: str | os.PathLike[str] | None = None,
    url_base: str | None = None,
    overwrite: bool = False,
    progress: bool | ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download a whole-database release, verify it, and return its directory.

    Parameters
    ----------
    database : {"neurosynth", "neuroquery"}
        ``"neurosynth"`` is Neurosynth release 7 (July 2018), ``"neuroquery"`` is NeuroQuery
        release 1. The files are those listed in :data:`RELEASES`, including the license.
    data_dir : str, path-like or None, optional
        Parent directory; the release goes to ``data_dir/neurosynth-v7/`` or
        ``data_dir/neuroquery-v1/`` (created if needed). None (the default) means
        :func:`default_data_dir`: ``$DASKMETA_DATA``, else the user cache directory.
    url_base : str or None, optional
        A mirror holding the files flat, fetched as ``{url_base}/{file name}``. None (the
        default) fetches from the upstream repositories (the commits NiMARE pins).
    overwrite : bool, optional
        Download every file again, discarding any present copy or ``.part`` (a present copy is
        replaced only once the new one verifies). Default False: verified files are kept and
        ``.part`` files resumed.
    progress : bool, callable or None, optional
        True prints a progress line per file to standard error. A callable is called as
        ``progress(file_name, bytes_done, bytes_total)`` after every chunk, and once with
        ``bytes_done == bytes_total`` for a file that was already present. None or False (the
        default): silent.
    timeout : float, optional
        Seconds to wait for a connection, and for each chunk of a body. Default 60.

    Returns
    -------
    pathlib.Path
        The release directory, holding every file of the release, all verified.

    Raises
    ------
    DaskmetaError
        For an unknown ``database``; for an HTTP error, a refused connection or a timeout
        (naming the URL and the status or reason); for a body that is truncated or fails its
        checksum (naming the file, the expected and the received size or SHA-256). No
        unverified file is ever left at a final path; see the module documentation for what
        happens to ``.part`` files.

    Warns
    -----
    DaskmetaWarning
        When a file already present fails its checksum and is downloaded again.
    """
    release = _release(database)
    urls = file_urls(release.database, url_base)
    parent = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    out_dir = parent / release.dirname
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DaskmetaError(f"cannot create the data directory {str(out_dir)!r}: {exc}") from exc

    report = _progress_reporter(progress)
    for rfile in release.files:
        _fetch_file(rfile, urls[rfile.name], out_dir, overwrite, report, timeout)
    return out_dir


# --------------------------------------------------------------------------------------------
# one file


def _fetch_file(
    rfile: ReleaseFile,
    url: str,
    out_dir: Path,
    overwrite: bool,
    report: ProgressCallback | None,
    timeout: float,
) -> None:
    final = out_dir / rfile.name
    part = out_dir / (rfile.name + ".part")

    if final.exists() and not overwrite:
        size, digest = _hash_file(final)
        if size == rfile.size and digest == rfile.sha256:
            if report is not None:
                report(rfile.name, rfile.size, rfile.size)
            return
        warnings.warn(
            f"{str(final)!r} is present but does not match the release "
            f"(expected {rfile.size} bytes, sha256 {rfile.sha256}; "
            f"got {size} bytes, sha256 {digest}); downloading it again",
            DaskmetaWarning,
            stacklevel=3,
        )

    if overwrite:
        _unlink(part)

    # A complete .part left by an earlier run (e.g. interrupted between write and rename).
    offset = part.stat().st_size if part.exists() else 0
    if offset > rfile.size:
        _unlink(part)
        offset = 0
    if offset == rfile.size:
        _, digest = _hash_file(part)
        if digest == rfile.sha256:
            os.replace(part, final)
            if report is not None:
                report(rfile.name, rfile.size, rfile.size)
            return
        _unlink(part)
        offset = 0

    _stream(url, part, offset, rfile.name, rfile.size, report, timeout)
    _verify_part(rfile, url, part)
    os.replace(part, final)


def _stream(url: str, part: Path, offset: int, name: str, size: int | None,
            report: ProgressCallback | None, timeout: float) -> int | None:
    """Stream ``url`` into ``part``, resuming at ``offset`` when the server allows it.

    Returns the file's full size: ``size`` when known, else what the server says, else None.
    """
    response = _open(url, offset, timeout)
    try:
        status = response.status
        if offset and status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                # A range other than the one asked for: do not guess, start again.
                response.close()
                response = _open(url, 0, timeout)
                offset = 0
        elif offset:
            offset = 0  # 200: the server ignored the Range header and sends everything.

        total = size if size is not None else _total_from(response, offset)
        done = offset
        # read1 returns what has arrived (up to CHUNK_SIZE) without waiting for a full chunk,
        # so a stall loses nothing already received, and progress is reported as bytes come.
        read = getattr(response, "read1", response.read)
        with open(part, "ab" if offset else "wb") as out:
            # A longer body than the size is corrupt: the caller's verification rejects it.
            while total is None or done <= total:
                try:
                    chunk = read(CHUNK_SIZE)
                except (http.client.HTTPException, OSError) as exc:
                    # Connection lost mid-body, or a timeout (an OSError). The bytes received
                    # so far stay in the .part for the next fetch to resume.
                    raise DaskmetaError(
                        f"download of {name} from {url} was interrupted after {done} of "
                        f"{total if total is not None else '?'} bytes ({_reason(exc)}); the "
                        f"partial file {part.name} is kept and the next fetch resumes it"
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if report is not None and (total is None or done <= total):
                    report(name, done, total or 0)
    finally:
        response.close()
    return total


def _total_from(response, offset: int) -> int | None:
    """The full size of the file the response is part of, if the server says it."""
    if response.status == 206:
        value = response.headers.get("Content-Range") or ""
        total = value.rpartition("/")[2].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return int(length) + (offset if response.status == 206 else 0)
    return None


def _verify_part(rfile: ReleaseFile, url: str, part: Path) -> None:
    size, digest = _hash_file(part)
    if size < rfile.size:
        raise DaskmetaError(
            f"download of {rfile.name} from {url} is truncated: expected {rfile.size} bytes, "
            f"got {size}; the partial file {part.name} is kept and the next fetch resumes it"
        )
    if size > rfile.size or digest != rfile.sha256:
        _unlink(part)
        raise DaskmetaError(
            f"download of {rfile.name} from {url} failed its checksum: expected "
            f"{rfile.size} bytes with sha256 {rfile.sha256}, got {size} bytes with sha256 "
            f"{digest}; the download was deleted (fetch again, or check the mirror)"
        )


# --------------------------------------------------------------------------------------------
# HTTP


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": f"daskmeta/{__version__}"})
    if offset:
        # add_header (not unredirected) so the range survives GitHub's redirect to its CDN.
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Range not satisfiable (the .part does not fit the server's file): start again.
            return _open(url, 0, timeout)
        raise DaskmetaError(
            f"download failed: {url} answered HTTP {exc.code} {exc.reason}"
        ) from exc
    except urllib.error.URLError as exc:
        raise DaskmetaError(
            f"download failed: cannot reach {url} ({_reason(exc.reason)})"
        ) from exc
    except (http.client.HTTPException, OSError) as exc:
        raise DaskmetaError(f"download failed: {url} ({_reason(exc)})") from exc
    status = getattr(response, "status", None) or 200
    if status not in (200, 206):
        response.close()
        raise DaskmetaError(f"download failed: {url} answered HTTP {status}")
    return response


def _content_range_start(value: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not value:
        return None
    unit, _, rest = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    start, _, _ = rest.partition("-")
    try:
        return int(start)
    except ValueError:
        return None


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the end of the body"
    text = str(exc)
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------
# files and progress


def _hash_into(path: Path, digest: hashlib._Hash) -> int:
    """Feed the bytes of ``path`` into ``digest`` chunk by chunk; return the size."""
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = _hash_into(path, digest)
    return size, digest.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _progress_reporter(progress: bool | ProgressCallback | None) -> ProgressCallback | None:
    if progress is None or progress is False:
        return None
    if progress is True:
        return _StderrProgress()
    if callable(progress):
        return progress
    raise DaskmetaError(
        f"progress must be True, False, None or a callable(name, done, total); "
        f"got {type(progress).__name__}"
    )


class _StderrProgress:
    """Print ``name  done/total MB  pct%`` on one line per file, updated in place."""

    def __init__(self) -> None:
        self._last: tuple[str, int] | None = None

    def __call__(self, name: str, done: int, total: int) -> None:
        pct = 100 if total == 0 else int(100 * done / total)
        if self._last == (name, pct) and done < total:
            return
        self._last = (name, pct)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{name}  {_fmt_bytes(done)}/{_fmt_bytes(total)}  {pct:3d}%{end}")
        sys.stderr.flush()


def _fmt_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB"
