"""fetch_neurostore, read_neurovault and `daskmeta fetch` / `ingest` against a real HTTP server
on the loopback interface serving an index, archives and images built here from NiMARE's
fixture."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from test_download import _Handler, _start, _stop

import daskmeta
from daskmeta.cli import main
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.io import fetch_neurostore, read_neurostore, read_neurovault

nimare = pytest.importorskip("nimare")
pytest.importorskip("pyarrow")
PARQUET = Path(nimare.__file__).parent / "resources" / "neurostore_parquet_studyset"


def _tar(members) -> bytes:
    """A .tar.gz of (name, bytes or TarInfo-tweak) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _release_members(prefix="release-2026-09/"):
    return [(prefix + p.name, p.read_bytes(), "file") for p in sorted(PARQUET.iterdir())]


@pytest.fixture
def site(tmp_path):
    """A served folder; ``publish(archive_bytes, checksum=...)`` writes an archive and the
    index listing it (and a nightly)."""
    root = tmp_path / "site"
    root.mkdir()
    srv, thread = _start(root)

    def publish(data: bytes, checksum="auto", name="a.tar.gz"):
        (root / name).write_bytes(data)
        rel = {"version": "2026-09", "release_type": "monthly", "built_at": "2026-09-01",
               "download_path": f"/{name}", "archive_name": name, "study_count": 4}
        if checksum == "auto":
            rel["archive_checksum"] = hashlib.sha256(data).hexdigest()
        elif checksum is not None:
            rel["archive_checksum"] = checksum
        nightly = {"version": "nightly", "release_type": "nightly", "built_at": "2026-10-02",
                   "download_path": f"/{name}", "archive_name": name,
                   "archive_checksum": hashlib.sha256(data).hexdigest()}
        (root / "index.json").write_text(json.dumps({"results": [rel, nightly]}))
        return f"{srv.url}/index.json"

    srv.publish = publish
    yield srv
    _stop(srv, thread)


def test_good_archive(site, tmp_path):
    url = site.publish(_tar(_release_members()))
    path = fetch_neurostore("latest", data_dir=tmp_path / "d", url=url)
    assert path == tmp_path / "d" / "neurostore" / "2026-09" / "release-2026-09"
    assert read_neurostore(path).n_foci == 47
    assert not (tmp_path / "d" / "neurostore" / "a.tar.gz").exists()  # transport only
    assert json.loads((path.parent / "release.json").read_text())["version"] == "2026-09"
    n = len(site.requests)
    assert fetch_neurostore("2026-09", data_dir=tmp_path / "d", url=url) == path
    assert [r for r, _ in site.requests[n:]] == ["index.json"]  # cached: no archive request
    with pytest.raises(DaskmetaError, match=r"no NeuroStore release '1999-01'; available: "
                                            r"2026-09, nightly"):
        fetch_neurostore("1999-01", data_dir=tmp_path / "d", url=url)


def test_corrupt_archive_fails_its_checksum(site, tmp_path):
    data = _tar(_release_members())
    url = site.publish(data)
    site.set("corrupt", only={"a.tar.gz"})
    with pytest.raises(DaskmetaError, match=r"download of a.tar.gz from .* failed its "
                                            r"checksum: .*the download was deleted"):
        fetch_neurostore(data_dir=tmp_path, url=url)
    assert not list((tmp_path / "neurostore").iterdir())
    # an archive whose bytes match its checksum but are not a valid archive
    bad = data[: len(data) // 2]
    url = site.publish(bad)
    site.set(None)
    with pytest.raises(DaskmetaError, match=r"archive a.tar.gz is corrupt or truncated .*"
                                            r"nothing was extracted"):
        fetch_neurostore(data_dir=tmp_path, url=url)
    assert not (tmp_path / "neurostore" / "2026-09").exists()
    assert [p.name for p in (tmp_path / "neurostore").iterdir()] == ["a.tar.gz"]


def test_truncated_archive_is_resumed(site, tmp_path):
    data = _tar(_release_members())
    url = site.publish(data)
    site.set("truncate", only={"a.tar.gz"})
    with pytest.raises(DaskmetaError, match=r"download of a.tar.gz from .* was interrupted "
                                            r"after \d+ of \? bytes.*next fetch resumes it|"
                                            r"is truncated: expected \d+ bytes"):
        fetch_neurostore(data_dir=tmp_path, url=url)
    part = tmp_path / "neurostore" / "a.tar.gz.part"
    assert 0 < part.stat().st_size < len(data)
    assert not (tmp_path / "neurostore" / "2026-09").exists()
    site.set(None)
    path = fetch_neurostore(data_dir=tmp_path, url=url)
    ranged = [r for name, r in site.requests if name == "a.tar.gz"]
    assert ranged[-1] == f"bytes={part.stat().st_size if part.exists() else len(data) // 2}-"
    assert read_neurostore(path).n_experiments == 8


@pytest.mark.parametrize(("member", "message"), [
    (("../escape.txt", b"x", "file"), r"member '\.\./escape\.txt' would be written outside "
                                      r"the target folder"),
    (("/etc/evil", b"x", "file"), r"member '/etc/evil' would be written outside"),
    (("release/link", "/etc/passwd", "sym"), r"member 'release/link' is a symbolic link "
                                             r"\(to '/etc/passwd'\); links are refused"),
    (("release/hard", "release/studyset.json", "hard"), r"member 'release/hard' is a hard "
                                                        r"link"),
])
def test_unsafe_members_refused(site, tmp_path, member, message):
    url = site.publish(_tar([*_release_members("release/"), member]))
    with pytest.raises(DaskmetaError, match=r"archive a\.tar\.gz: " + message +
                       r".*nothing was extracted"):
        fetch_neurostore(data_dir=tmp_path / "d", url=url)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "d" / "escape.txt").exists()
    assert not (tmp_path / "d" / "neurostore" / "2026-09").exists()
    assert [p.name for p in (tmp_path / "d" / "neurostore").iterdir()] == ["a.tar.gz"]


def test_bad_index(site, tmp_path):
    (Path(site.root) / "index.json").write_text(json.dumps({"results": []}))
    with pytest.raises(DaskmetaError, match=r"lists no releases"):
        fetch_neurostore(data_dir=tmp_path, url=f"{site.url}/index.json")
    url = site.publish(_tar(_release_members()), checksum="abc")
    with pytest.raises(DaskmetaError, match=r"archive_checksum must be a SHA-256"):
        fetch_neurostore(data_dir=tmp_path, url=url)
    url = site.publish(_tar(_release_members()), checksum=None)
    with pytest.warns(DaskmetaWarning, match=r"publishes no archive_checksum"):
        fetch_neurostore(data_dir=tmp_path, url=url)
    with pytest.raises(DaskmetaError, match=r"version must be 'latest', 'nightly' or a release"):
        fetch_neurostore("../x", data_dir=tmp_path, url=url)


def test_cli_fetch_and_ingest_a_release(site, tmp_path, capsys):
    url = site.publish(_tar(_release_members()))
    assert main(["fetch", "neurostore", "--version", "nightly", "--data-dir", str(tmp_path),
                 "--url", url]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == tmp_path / "neurostore" / "nightly" / "release-2026-09"
    assert main(["fetch", "neurostore", "--url-base", url]) == 2
    assert "--url-base applies to neurosynth and neuroquery, not neurostore" in \
        capsys.readouterr().err
    store = tmp_path / "ns.zarr"
    assert main(["ingest", str(folder), "--kernel", "mkda", "--store", str(store)]) == 0
    collection = daskmeta.Collection.open(store)
    ds = read_neurostore(folder)
    assert collection.n_experiments == ds.n_experiments == 8
    assert collection.dataset.label_names == ds.label_names
    assert (collection.dataset.labels != ds.labels).nnz == 0


# -- NeuroVault ----------------------------------------------------------------------------------


class _VaultHandler(_Handler):
    """NeuroVault's listing route, served from the flat folder's ``page1``."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/api/collections/77/images/?format=json":
            self.path = "/page1"
        super().do_GET()


@pytest.fixture
def vault(tmp_path):
    root = tmp_path / "vault"
    root.mkdir()
    srv, thread = _start(root)
    srv.RequestHandlerClass = _VaultHandler
    images = {1: ("faces T", "T map", 20, b"t" * 5000), 2: ("faces var", "variance", 20,
                                                            b"v" * 4000),
              3: ("houses Z", "Z map", 18, b"z" * 3000), 4: ("mask", "ROI/mask", 20, b"m"),
              5: ("subject", "T map", 1, b"s")}
    results = []
    for i, (name, kind, n, body) in images.items():
        fname = f"img{i}.nii.gz"
        (root / fname).write_bytes(gzip.compress(body, mtime=0))
        results.append({"id": i, "name": name, "map_type": kind, "number_of_subjects": n,
                        "analysis_level": "single-subject" if i == 5 else "group",
                        "file": f"{srv.url}/{fname}"})
    # two pages, as NeuroVault's API pages its listings
    (root / "page1").write_text(json.dumps({"count": 5, "next": f"{srv.url}/page2",
                                            "results": results[:3]}))
    (root / "page2").write_text(json.dumps({"count": 5, "next": None, "results": results[3:]}))
    srv.images = images
    yield srv
    _stop(srv, thread)


def test_read_neurovault(vault, tmp_path):
    ds = read_neurovault(77, data_dir=tmp_path, url=vault.url)
    assert ds.ids == ["77-1", "77-2", "77-3"]
    assert ds.experiments["sample_size"].tolist() == [20.0, 20.0, 18.0]
    paths = ds.images.set_index("id")
    assert Path(paths.loc["77-1", "t"]).read_bytes() == (Path(vault.root) / "img1.nii.gz"
                                                         ).read_bytes()
    assert Path(paths.loc["77-2", "varcope"]).name == "collection-77_id-2_img2.nii.gz"
    grouped = read_neurovault(77, data_dir=tmp_path, url=vault.url,
                              contrasts={"faces": "faces", "houses": "houses"})
    assert grouped.ids == ["77-faces", "77-houses"]
    assert grouped.images.set_index("id").loc["77-faces", ["t", "varcope"]].notna().all()
    with pytest.raises(DaskmetaError, match=r"no image of NeuroVault collection 77 matches "
                                            r"contrast 'cars'"):
        read_neurovault(77, data_dir=tmp_path, url=vault.url, contrasts={"cars": "cars"})
    with pytest.raises(DaskmetaError, match=r"collection must be a NeuroVault collection "
                                            r"number"):
        read_neurovault("../77", data_dir=tmp_path, url=vault.url)


def test_cli_fetch_neurovault(vault, tmp_path, capsys):
    assert main(["fetch", "neurovault", "77", "--data-dir", str(tmp_path), "--url",
                 vault.url]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == (tmp_path / "neurovault" / "collection-77").resolve()
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == [
        f"collection-77_id-{i}_img{i}.nii.gz" for i in (1, 2, 3)]
    assert main(["fetch", "neurovault", "x7", "--data-dir", str(tmp_path)]) == 2
    assert "COLLECTION must be a NeuroVault collection number; got 'x7'" in \
        capsys.readouterr().err
    assert main(["fetch", "neurosynth", "77"]) == 2
    assert "a collection number applies to `fetch neurovault`, not neurosynth" in \
        capsys.readouterr().err


def test_neurovault_truncated_image_resumed_and_corrupt_cache_refetched(vault, tmp_path):
    vault.set("truncate", only={"img1.nii.gz"})
    with pytest.raises(DaskmetaError, match=r"img1.nii.gz .*(interrupted|truncated)"):
        read_neurovault(77, data_dir=tmp_path, url=vault.url)
    folder = tmp_path / "neurovault" / "collection-77"
    assert (folder / "collection-77_id-1_img1.nii.gz.part").exists()
    vault.set(None)
    ds = read_neurovault(77, data_dir=tmp_path, url=vault.url)
    assert any(r and r.startswith("bytes=") for name, r in vault.requests
               if name == "img1.nii.gz")
    target = Path(ds.images.set_index("id").loc["77-1", "t"])
    assert gzip.decompress(target.read_bytes()) == vault.images[1][3]
    target.write_bytes(b"changed")  # a damaged cache is noticed (sha256 manifest)
    with pytest.warns(DaskmetaWarning, match=r"does not match its sha256"):
        read_neurovault(77, data_dir=tmp_path, url=vault.url)
    assert gzip.decompress(target.read_bytes()) == vault.images[1][3]


def test_decompression_bomb_refused(site, tmp_path):
    """An archive that extracts to more than the configured cap is refused before anything is
    written (from its members' declared sizes), and the config setting sets the cap."""
    import dask

    from daskmeta.io._archive import extract_safely

    zeros = b"\0" * 3_000_000
    url = site.publish(_tar([*_release_members(), ("release-2026-09/zeros.bin", zeros, "file")]))
    with dask.config.set({"daskmeta.fetch.max-extracted-bytes": "2MB"}), pytest.raises(
            DaskmetaError, match=r"archive a\.tar\.gz: extracting it \(at member "
                                 r"'release-2026-09/zeros\.bin'\) would write more than "
                                 r"2,000,000 bytes .*decompression bomb, nothing was extracted"):
        fetch_neurostore(data_dir=tmp_path / "d", url=url)
    assert not (tmp_path / "d" / "neurostore" / "2026-09").exists()
    path = fetch_neurostore(data_dir=tmp_path / "d", url=url)  # the default cap lets it by
    assert (path / "zeros.bin").stat().st_size == len(zeros)
    # A zip: refused from its members' declared sizes too.
    import zipfile

    zpath = tmp_path / "zeros.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", zeros)
    with pytest.raises(DaskmetaError, match=r"archive zeros\.zip: extracting it \(at member "
                                            r"'big\.bin'\) would write more than 2,000,000"):
        extract_safely(zpath, tmp_path / "out", max_bytes="2MB")
    assert not (tmp_path / "out").exists()
    assert (extract_safely(zpath, tmp_path / "out", max_bytes=len(zeros)) / "big.bin"
            ).stat().st_size == len(zeros)
