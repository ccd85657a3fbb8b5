"""Tests of daskmeta.io.download against a real HTTP server on the loopback interface."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.io import download
from daskmeta.io.download import RELEASES, default_data_dir, fetch, file_urls

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NS_DIR = SHARED / "neurosynth-v7"
NQ_DIR = SHARED / "neuroquery-v1"
COORDS = "data-neurosynth_version-7_coordinates.tsv.gz"
SMALL = "data-neurosynth_version-7_vocab-LDA50_vocabulary.txt"

pytestmark = pytest.mark.skipif(
    not NS_DIR.is_dir() or not NQ_DIR.is_dir(), reason=f"shared data not found at {SHARED}"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# the server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serve files of one directory, with Range support and switchable misbehaviours.

    The server object carries ``root`` (directory served), ``mode`` (None or one of
    "truncate", "stall", "short-file", "too-long", "corrupt", "404", "500", "ignore-range",
    "wrong-range", "hang"); ``/r/<name>`` redirects to ``/<name>``.
    ``only`` (None, or the set of file names the mode applies to) and ``requests`` (a list of
    (path, Range header) received).
    """

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        name = self.path.lstrip("/").split("?")[0]
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((name, rng))
        if name.startswith("r/"):  # a redirect, like GitHub's /raw/ to its CDN
            self.send_response(302)
            self.send_header("Location", f"/{name[2:]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        mode = srv.mode if (srv.only is None or name in srv.only) else None
        path = srv.root / name
        if mode == "404" or not name or "/" in name or not path.is_file():
            self.send_error(404, "Not Found")
            return
        if mode == "500":
            self.send_error(500, "Internal Server Error")
            return
        if mode == "hang":
            time.sleep(srv.hang_seconds)
            return
        data = path.read_bytes()
        if mode == "short-file":
            # The server holds a shorter copy (honest Content-Length, short body).
            data = data[: len(data) // 2]
        if mode == "too-long":
            data = data + b"trailing garbage"
        if mode == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and mode == "wrong-range":
            # 206, but from byte 0 instead of the byte asked for.
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        elif m and mode != "ignore-range":
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("truncate", "stall"):
            # Promise the whole body, send half, then close the connection ("truncate") or
            # stop sending ("stall").
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(srv.hang_seconds)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.mode: str | None = None
        self.only: set[str] | None = None
        self.hang_seconds = 2.0
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def set(self, mode: str | None, only: set[str] | None = None) -> None:
        self.mode, self.only = mode, only

    def names_requested(self) -> list[str]:
        return [name for name, _ in self.requests]


def _start(root: Path):
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return srv, thread


def _stop(srv, thread):
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def server():
    srv, thread = _start(NS_DIR)
    yield srv
    _stop(srv, thread)


@pytest.fixture
def nq_server():
    srv, thread = _start(NQ_DIR)
    yield srv
    _stop(srv, thread)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything connects beyond the loopback interface."""
    real = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network access to {address!r} in a test")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def _guard(no_network):
    yield


# --------------------------------------------------------------------------------------------
# the checksum table


@pytest.mark.parametrize("database,root", [("neurosynth", NS_DIR), ("neuroquery", NQ_DIR)])
def test_checksum_table_matches_the_upstream_files(database, root):
    release = RELEASES[database]
    assert sorted(f.name for f in release.files) == sorted(p.name for p in root.iterdir())
    for f in release.files:
        assert (root / f.name).stat().st_size == f.size, f.name
        assert _sha256(root / f.name) == f.sha256, f.name


def test_default_urls_are_upstream_https():
    ns = file_urls("neurosynth")
    nq = file_urls("neuroquery")
    assert ns[COORDS] == (
        "https://github.com/neurosynth/neurosynth-data/raw/"
        "209c33cd009d0b069398a802198b41b9c488b9b7/" + COORDS
    )
    assert nq["data-neuroquery_version-1_coordinates.tsv.gz"] == (
        "https://github.com/neuroquery/neuroquery_data/raw/"
        "4580f86267fb7c14ac1f601e298cbed898d79f2d/data/data-neuroquery_version-1_coordinates.tsv.gz"
    )
    assert nq["LICENSE"].endswith("4580f86267fb7c14ac1f601e298cbed898d79f2d/LICENSE")
    assert all(u.startswith("https://") for u in [*ns.values(), *nq.values()])
    assert file_urls("neurosynth", "http://mirror/x/")[COORDS] == f"http://mirror/x/{COORDS}"


# --------------------------------------------------------------------------------------------
# full fetches


def test_fetch_neurosynth(server, tmp_path):
    out = fetch("neurosynth", tmp_path, url_base=server.url)
    assert out == tmp_path / "neurosynth-v7"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in NS_DIR.iterdir())
    for p in NS_DIR.iterdir():
        assert _sha256(out / p.name) == _sha256(p), p.name
    coords = pd.read_csv(out / COORDS, sep="\t")
    assert len(coords) == 507_891
    assert {"id", "x", "y", "z"} <= set(coords.columns)
    assert not any(out.glob("*.part"))
    assert all(rng is None for _, rng in server.requests)


def test_fetch_neuroquery(nq_server, tmp_path):
    out = fetch("NeuroQuery", tmp_path, url_base=nq_server.url + "/")
    assert out == tmp_path / "neuroquery-v1"
    for p in NQ_DIR.iterdir():
        assert _sha256(out / p.name) == _sha256(p), p.name
    assert len(nq_server.requests) == len(RELEASES["neuroquery"].files)


def test_second_fetch_makes_no_request(server, tmp_path):
    fetch("neurosynth", tmp_path, url_base=server.url)
    n = len(server.requests)
    calls = []
    out = fetch("neurosynth", tmp_path, url_base=server.url, progress=lambda *a: calls.append(a))
    assert len(server.requests) == n
    assert sorted(c[0] for c in calls) == sorted(f.name for f in RELEASES["neurosynth"].files)
    assert all(done == total for _, done, total in calls)
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)


def test_overwrite_downloads_again(server, tmp_path):
    fetch("neurosynth", tmp_path, url_base=server.url)
    n = len(server.requests)
    fetch("neurosynth", tmp_path, url_base=server.url, overwrite=True)
    assert len(server.requests) == 2 * n


def test_default_data_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DASKMETA_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    out = fetch("neurosynth", url_base=server.url)
    assert out == tmp_path / "env" / "neurosynth-v7"
    assert (out / COORDS).is_file()


def test_default_data_dir_is_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("DASKMETA_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert default_data_dir() == tmp_path / "daskmeta"
    else:  # pragma: no cover
        assert default_data_dir().name in ("daskmeta", "Cache")


# --------------------------------------------------------------------------------------------
# corrupted, truncated, resumed


def test_corrupted_body_raises_and_leaves_no_file(server, tmp_path):
    server.set("corrupt", only={COORDS})
    with pytest.raises(DaskmetaError, match="checksum") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    msg = str(info.value)
    assert COORDS in msg
    assert RELEASES["neurosynth"].files[0].sha256 in msg  # expected
    assert "got 3587167 bytes with sha256" in msg  # got
    out = tmp_path / "neurosynth-v7"
    assert not (out / COORDS).exists()
    # A corrupt body cannot be resumed into a good one: its .part is gone too.
    assert not (out / (COORDS + ".part")).exists()
    # The next fetch (server healed) starts from scratch and succeeds.
    server.set(None)
    server.requests.clear()
    fetch("neurosynth", tmp_path, url_base=server.url)
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)
    assert dict(server.requests)[COORDS] is None


def test_corrupt_present_file_is_downloaded_again_with_warning(server, tmp_path):
    out = fetch("neurosynth", tmp_path, url_base=server.url)
    (out / SMALL).write_text("edited\n")
    server.requests.clear()
    with pytest.warns(DaskmetaWarning, match="does not match the release"):
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert server.names_requested() == [SMALL]
    assert _sha256(out / SMALL) == _sha256(NS_DIR / SMALL)


def test_truncated_body_raises_and_keeps_part_for_resume(server, tmp_path):
    server.set("truncate", only={COORDS})
    with pytest.raises(DaskmetaError, match="truncated") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert COORDS in str(info.value)
    assert "expected 3587167 bytes, got 1793583" in str(info.value)
    assert f"{server.url}/{COORDS}" in str(info.value)
    out = tmp_path / "neurosynth-v7"
    assert not (out / COORDS).exists()
    part = out / (COORDS + ".part")
    size = RELEASES["neurosynth"].files[0].size
    assert 0 < part.stat().st_size < size
    server.set(None)
    server.requests.clear()
    fetch("neurosynth", tmp_path, url_base=server.url)
    assert dict(server.requests)[COORDS] == f"bytes={size // 2}-"
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)
    assert not part.exists()


def test_stalled_body_times_out_and_keeps_part(server, tmp_path):
    server.set("stall", only={COORDS})
    server.hang_seconds = 1.5
    with pytest.raises(DaskmetaError, match="interrupted after 1793583 of 3587167 bytes") as info:
        fetch("neurosynth", tmp_path, url_base=server.url, timeout=0.3)
    msg = str(info.value)
    assert "timed out" in msg and f"{server.url}/{COORDS}" in msg
    out = tmp_path / "neurosynth-v7"
    assert not (out / COORDS).exists()
    assert (out / (COORDS + ".part")).stat().st_size == 1793583


def test_short_body_with_honest_length_is_truncated_error(server, tmp_path):
    server.set("short-file", only={SMALL})
    with pytest.raises(DaskmetaError, match="truncated") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    msg = str(info.value)
    assert SMALL in msg and "expected 1275 bytes, got 637" in msg
    assert not (tmp_path / "neurosynth-v7" / SMALL).exists()


def test_resume_from_part_uses_range(server, tmp_path):
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    data = (NS_DIR / COORDS).read_bytes()
    half = len(data) // 2
    (out / (COORDS + ".part")).write_bytes(data[:half])
    calls = []
    fetch("neurosynth", tmp_path, url_base=server.url, progress=lambda *a: calls.append(a))
    assert dict(server.requests)[COORDS] == f"bytes={half}-"
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)
    assert not (out / (COORDS + ".part")).exists()
    coords_calls = [c for c in calls if c[0] == COORDS]
    assert coords_calls[0][1] > half and coords_calls[-1][1:] == (len(data), len(data))


def test_server_ignoring_range_still_correct(server, tmp_path):
    server.set("ignore-range")
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    data = (NS_DIR / COORDS).read_bytes()
    (out / (COORDS + ".part")).write_bytes(data[: len(data) // 3])
    fetch("neurosynth", tmp_path, url_base=server.url)
    assert dict(server.requests)[COORDS] is not None  # asked for a range, got everything
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)


def test_wrong_content_range_restarts(server, tmp_path):
    server.set("wrong-range", only={COORDS})
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    data = (NS_DIR / COORDS).read_bytes()
    (out / (COORDS + ".part")).write_bytes(data[:1000])
    fetch("neurosynth", tmp_path, url_base=server.url)
    assert [r for n, r in server.requests if n == COORDS] == ["bytes=1000-", None]
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)


def test_range_survives_redirect(server, tmp_path):
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    data = (NS_DIR / COORDS).read_bytes()
    (out / (COORDS + ".part")).write_bytes(data[:1000])
    fetch("neurosynth", tmp_path, url_base=server.url + "/r")
    assert ("r/" + COORDS, "bytes=1000-") in server.requests
    assert (COORDS, "bytes=1000-") in server.requests
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)


def test_too_long_body_is_corrupt(server, tmp_path):
    server.set("too-long", only={SMALL})
    with pytest.raises(DaskmetaError, match="checksum") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert SMALL in str(info.value) and "expected 1275 bytes" in str(info.value)
    out = tmp_path / "neurosynth-v7"
    assert not (out / SMALL).exists() and not (out / (SMALL + ".part")).exists()


def test_file_url_mirror(tmp_path):
    out = fetch("neuroquery", tmp_path, url_base=NQ_DIR.as_uri())
    for p in NQ_DIR.iterdir():
        assert _sha256(out / p.name) == _sha256(p), p.name


def test_bad_part_is_restarted(server, tmp_path):
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    size = RELEASES["neurosynth"].files[0].size
    # Full-size but wrong: discarded without a request for a range.
    (out / (COORDS + ".part")).write_bytes(b"\0" * size)
    # Longer than the file: discarded.
    (out / (SMALL + ".part")).write_bytes(b"\0" * 5000)
    fetch("neurosynth", tmp_path, url_base=server.url)
    req = dict(server.requests)
    assert req[COORDS] is None and req[SMALL] is None
    assert _sha256(out / COORDS) == _sha256(NS_DIR / COORDS)
    assert _sha256(out / SMALL) == _sha256(NS_DIR / SMALL)


def test_complete_verified_part_is_renamed_without_request(server, tmp_path):
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    (out / (SMALL + ".part")).write_bytes((NS_DIR / SMALL).read_bytes())
    fetch("neurosynth", tmp_path, url_base=server.url)
    assert SMALL not in server.names_requested()
    assert _sha256(out / SMALL) == _sha256(NS_DIR / SMALL)


def test_range_not_satisfiable_restarts(server, tmp_path):
    # A .part that the server's (here: smaller) file cannot continue: 416 -> from scratch.
    out = tmp_path / "neurosynth-v7"
    out.mkdir()
    (out / (SMALL + ".part")).write_bytes(b"x" * 1000)
    server.set("short-file", only={SMALL})  # the server's copy ends at 637 bytes
    with pytest.raises(DaskmetaError, match="truncated"):
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert [r for n, r in server.requests if n == SMALL] == ["bytes=1000-", None]


# --------------------------------------------------------------------------------------------
# HTTP errors


def test_404_names_url_and_status(server, tmp_path):
    server.set("404", only={COORDS})
    with pytest.raises(DaskmetaError, match="404") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert f"{server.url}/{COORDS}" in str(info.value)
    assert not (tmp_path / "neurosynth-v7" / COORDS).exists()
    assert not (tmp_path / "neurosynth-v7" / (COORDS + ".part")).exists()


def test_500_names_url_and_status(server, tmp_path):
    server.set("500")
    with pytest.raises(DaskmetaError, match=r"HTTP 500") as info:
        fetch("neurosynth", tmp_path, url_base=server.url)
    assert server.url in str(info.value)


def test_connection_refused(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DaskmetaError, match="cannot reach") as info:
        fetch("neurosynth", tmp_path, url_base=url, timeout=2)
    assert f"{url}/" in str(info.value)
    assert "refused" in str(info.value).lower()


def test_timeout(server, tmp_path):
    server.set("hang", only={COORDS})
    server.hang_seconds = 1.5
    t0 = time.monotonic()
    with pytest.raises(DaskmetaError, match="timed out") as info:
        fetch("neurosynth", tmp_path, url_base=server.url, timeout=0.3)
    assert time.monotonic() - t0 < 1.5
    assert f"{server.url}/{COORDS}" in str(info.value)


# --------------------------------------------------------------------------------------------
# arguments and progress


def test_unknown_database_lists_allowed(tmp_path):
    with pytest.raises(DaskmetaError, match="unknown database 'brainmap'") as info:
        fetch("brainmap", tmp_path)
    assert "'neurosynth'" in str(info.value) and "'neuroquery'" in str(info.value)
    assert not any(tmp_path.iterdir())


def test_bad_progress_argument(tmp_path, server):
    with pytest.raises(DaskmetaError, match="progress must be"):
        fetch("neurosynth", tmp_path, url_base=server.url, progress="yes")


def test_progress_true_prints_to_stderr(server, tmp_path, capsys):
    fetch("neurosynth", tmp_path, url_base=server.url, progress=True)
    err = capsys.readouterr().err
    assert COORDS in err and "100%" in err


def test_streams_in_chunks(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CHUNK_SIZE", 64 * 1024)
    calls = []
    fetch("neurosynth", tmp_path, url_base=server.url, progress=lambda *a: calls.append(a))
    n_coords = sum(1 for c in calls if c[0] == COORDS)
    assert n_coords >= RELEASES["neurosynth"].files[0].size // (64 * 1024)
