"""One URL to one file, checked and resumable (:func:`fetch_url`), and small JSON documents
(:func:`get_json`): the NeuroStore and NeuroVault fetches share these with
:mod:`daskmeta.io.download` (whose HTTP helpers they reuse).

:func:`fetch_url` follows :mod:`daskmeta.io.download`'s rules: the body streams to
``<name>.part``; an interrupted or short body keeps the ``.part`` and the next call resumes it
(``Range: bytes=N-``); a body that fails its SHA-256 or is longer than announced is deleted;
only a verified file is renamed (atomically) to its final name. The size and checksum may be
unknown (a NeuroVault image): the server's ``Content-Length`` / ``Content-Range`` then tells
a truncated body.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.io.download import (
    DEFAULT_TIMEOUT,
    _hash_file,
    _open,
    _reason,
    _stream,
    _unlink,
)

__all__ = ["check_url", "fetch_url", "get_json", "is_sha256"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value) -> bool:
    return isinstance(value, str) and bool(_SHA256.fullmatch(value))


def check_url(url, what: str) -> str:
    """``url`` if it is an http(s) URL with a host, else a one-line error naming ``what``."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        shown = repr(url) if len(repr(url)) <= 80 else repr(url)[:77] + "..."
        raise DaskmetaError(f"{what} must be an http:// or https:// URL; got {shown}")
    return url


def get_json(url: str, what: str, timeout: float = DEFAULT_TIMEOUT, limit: int = 64 << 20):
    """GET ``url`` and parse it as JSON; errors name ``what`` and the URL."""
    check_url(url, what)
    response = _open(url, 0, timeout)
    try:
        body = response.read(limit + 1)
    except (http.client.HTTPException, OSError) as exc:
        raise DaskmetaError(f"cannot read {what} from {url} ({_reason(exc)})") from exc
    finally:
        response.close()
    if len(body) > limit:
        raise DaskmetaError(f"{what} at {url} is larger than {limit >> 20} MiB; refused")
    try:
        return json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DaskmetaError(f"{what} at {url} is not JSON ({str(exc)[:120]})") from None


def fetch_url(url: str, final: Path, *, size: int | None = None, sha256: str | None = None,
              overwrite: bool = False, report=None, timeout: float = DEFAULT_TIMEOUT,
              what: str | None = None) -> Path:
    """Download ``url`` to ``final``, resuming a ``.part`` left by an interrupted run.

    Parameters
    ----------
    url : str
        http(s) URL.
    final : pathlib.Path
        Where the verified file goes.
    size, sha256 : optional
        The file's size and SHA-256 (hex) when known; checked before the rename.
    overwrite : bool
        Download again even if ``final`` exists (it is replaced only by a verified copy).
    report : callable, optional
        ``report(name, done, total)`` after each chunk (total 0 when unknown).
    what : str, optional
        The name used in messages (default: the file name).

    Returns
    -------
    pathlib.Path
        ``final``.
    """
    final = Path(final)
    name = what or final.name
    part = final.with_name(final.name + ".part")
    if final.exists() and not overwrite:
        if sha256 is None:
            return final
        got_size, digest = _hash_file(final)
        if digest == sha256 and (size is None or got_size == size):
            return final
        warnings.warn(f"{str(final)!r} is present but does not match its sha256 {sha256} "
                      f"(got {digest}); downloading it again", DaskmetaWarning, stacklevel=2)
    if overwrite:
        _unlink(part)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        _unlink(part)
        offset = 0
    if size is not None and offset == size and sha256 is not None:
        if _hash_file(part)[1] == sha256:
            os.replace(part, final)
            return final
        _unlink(part)
        offset = 0

    total = _stream(url, part, offset, name, size, report, timeout)

    got_size, digest = _hash_file(part)
    if total is not None and got_size < total:
        raise DaskmetaError(f"download of {name} from {url} is truncated: expected {total} "
                            f"bytes, got {got_size}; the partial file {part.name} is kept and "
                            "the next fetch resumes it")
    if (total is not None and got_size > total) or (sha256 is not None and digest != sha256):
        _unlink(part)
        raise DaskmetaError(
            f"download of {name} from {url} failed its checksum: expected "
            f"{total if total is not None else '?'} bytes with sha256 {sha256 or '?'}, got "
            f"{got_size} bytes with sha256 {digest}; the download was deleted (fetch again, "
            "or check the server)")
    os.replace(part, final)
    return final

