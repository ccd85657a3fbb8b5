"""Decoder models from the command line, the HTTP decoding service started for real on
loopback, and a model built by a real Dask cluster (scheduler + two workers)."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from daskmeta import Collection
from daskmeta.cli import main
from daskmeta.decode import CorrelationDecoder, DecoderModel, with_labels
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import MKDAKernel

N_LABELS = 40


@pytest.fixture(scope="module")
def toy_collection(tmp_path_factory, pain_dataset, nimare_mask):
    """The pain studies with 40 random labels, as an MKDA collection on NiMARE's mask."""
    rng = np.random.default_rng(7)
    held = rng.random((pain_dataset.n_experiments, N_LABELS)) < 0.4
    weights = sparse.csr_matrix(held * rng.uniform(0.01, 1, held.shape))
    ds = with_labels(pain_dataset, weights, [f"toy__t{i:02d}" for i in range(N_LABELS)])
    return Collection.build(ds, MKDAKernel(r=10), tmp_path_factory.mktemp("toy") / "toy.zarr",
                            mask=nimare_mask)


@pytest.fixture(scope="module")
def model_path(toy_collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "toy-model.zarr"
    code = main(["decoder", "build", "--collection", str(toy_collection.path), "--labels",
                 "toy", "--min-studies", "3", "--out", str(out)])
    assert code == 0
    return out


def _image(space, seed=0):
    rng = np.random.default_rng(seed)
    return space.to_img(rng.normal(size=space.n_voxels).astype(np.float32))


def _gz(img) -> bytes:
    return gzip.compress(img.to_bytes())


def test_cli_build_equals_python_and_decode_prints_ranked_labels(model_path, toy_collection,
                                                                  tmp_path, capsys):
    model = DecoderModel.open(model_path)
    py = CorrelationDecoder(labels="toy", min_studies=3).fit(toy_collection)
    assert model.labels == py.features_ and len(model.labels) > 20
    assert np.array_equal(model.to_xarray()["maps"].values, py.model_.to_xarray()["maps"].values)
    imgs = []
    for seed in range(2):
        path = tmp_path / f"img{seed}.nii.gz"
        _image(model.space, seed).to_filename(path)
        imgs.append(str(path))
    capsys.readouterr()
    csv = tmp_path / "r.csv"
    assert main(["decode", str(model_path), *imgs, "--top", "3", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = model.transform(imgs)
    assert printed[0] == f"# {imgs[0]}" and printed[4] == f"# {imgs[1]}"
    best = expected["r_0"].sort_values(ascending=False, kind="stable")
    for line, (label, r) in zip(printed[1:4], best.items()):
        rank, value, name = line.split()
        assert name == label and abs(float(value) - r) < 1e-4
    table = pd.read_csv(csv, index_col="feature")
    assert list(table.columns) == imgs
    assert np.allclose(table.to_numpy(), expected.to_numpy())


@pytest.fixture(scope="module")
def toy_collections(toy_collection, tmp_path_factory):
    """The toy labels' studies as collections of each meta-estimator's kernel."""
    from daskmeta.kernels import ALEKernel, KDAKernel

    root = tmp_path_factory.mktemp("toy-kernels")
    ds = toy_collection.dataset
    return {"mkda": toy_collection,
            "ale": Collection.build(ds, ALEKernel(fwhm=10), root / "ale.zarr",
                                    mask=toy_collection.attrs["mask_source"]),
            "kda": Collection.build(ds, KDAKernel(r=10), root / "kda.zarr",
                                    mask=toy_collection.attrs["mask_source"])}


@pytest.mark.parametrize("name, cls, kernel, flags, target", [
    ("ale", "ALE", "ale", [], "z"),
    ("mkdadensity", "MKDADensity", "mkda", ["--target-image", "stat"], "stat"),
    ("kda", "KDA", "kda", ["--target-image", "p"], "p"),
])
def test_cli_build_with_a_meta_estimator_equals_python(name, cls, kernel, flags, target,
                                                       toy_collections, tmp_path):
    from daskmeta import estimators

    coll = toy_collections[kernel]
    out = tmp_path / "model.zarr"
    assert main(["decoder", "build", "--collection", str(coll.path), "--labels", "toy",
                 "--min-studies", "3", "--meta-estimator", name, *flags,
                 "--out", str(out)]) == 0
    model = DecoderModel.open(out)
    py = CorrelationDecoder(labels="toy", min_studies=3, meta_estimator=getattr(
        estimators, cls)(), target_image=target).fit(coll)
    assert (model.attrs["meta_estimator"], model.attrs["target_image"]) == (cls, target)
    assert model.labels == py.features_ and len(model.labels) > 20
    got, want = model.to_xarray()["maps"].values, py.model_.to_xarray()["maps"].values
    assert np.array_equal(got, want)
    assert np.ptp(got) > 0


@pytest.mark.parametrize("argv, match", [
    (["decode", "MODEL", "IMG", "--top", "-1"], "--top must be an integer >= 0"),
    (["decoder", "build", "--collection", "MISSING", "--out", "x.zarr"],
     "--collection must be a collection store"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--min-studies", "0"],
     "--min-studies must be an integer >= 1"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--labels", "a,,b"],
     "--labels must be a vocabulary or comma-separated label names"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--labels", "nope"],
     "labels='nope' is neither a vocabulary"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--target-image", "z"],
     "target_image 'z' is not a map of MKDAChi2; allowed: z_desc-uniformity, "),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--meta-estimator",
      "ale"], "holds MA maps of MKDAKernel(r=10"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--meta-estimator",
      "kda", "--target-image", "z_desc-association"],
     "target_image 'z_desc-association' is not a map of KDA; allowed: stat, p, z, logp"),
    (["decoder", "build", "--collection", "COLL", "--out", "x.zarr", "--meta-estimator",
      "mkdadensity", "--fwe-iters", "10"],
     "--fwe-iters needs --meta-estimator mkdachi2; got 'mkdadensity'"),
    (["decode", "MODEL", "missing.nii.gz"], "cannot read missing.nii.gz"),
    (["serve", "MODEL", "--port", "70000"], "--port must be an integer from 0 to 65,535"),
])
def test_cli_errors_are_one_line(argv, match, model_path, toy_collection, tmp_path, capsys,
                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IMG").write_bytes(b"")
    argv = [str(model_path) if a == "MODEL" else str(toy_collection.path) if a == "COLL"
            else a for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("daskmeta: error:") and match in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_cli_meta_estimator_choices(toy_collection, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["decoder", "build", "--collection", str(toy_collection.path), "--out",
              str(tmp_path / "x.zarr"), "--meta-estimator", "mkda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "argument --meta-estimator: invalid choice: 'mkda' (choose from 'mkdachi2', " \
           "'ale', 'mkdadensity', 'kda')" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(model_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskmeta", "serve", str(model_path), "--port", str(port),
         "--max-upload-mb", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start: " + proc.stdout.read().decode())
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_service_decode_equals_transform(service, model_path):
    import httpx

    model = DecoderModel.open(model_path)
    img = _image(model.space, 3)
    expected = model.transform(img)["r"].sort_values(ascending=False, kind="stable")
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["n_labels"] == model.n_labels
    labels = httpx.get(f"{service}/labels").json()["labels"]
    assert [x["label"] for x in labels] == model.labels
    resp = httpx.post(f"{service}/decode?top=0", content=_gz(img))
    assert resp.status_code == 200, resp.text
    raw = resp.json()
    assert [x["label"] for x in raw["labels"]] == list(expected.index)
    assert np.allclose([x["r"] for x in raw["labels"]], expected.to_numpy(), atol=1e-6)
    form = httpx.post(f"{service}/decode?top=5",
                      files={"image": ("img.nii", img.to_bytes(),
                                       "application/octet-stream")}).json()
    assert [x["label"] for x in form["labels"]] == list(expected.index[:5])


def test_service_refuses_bad_uploads_with_4xx_and_a_message(service, model_path):
    import httpx

    space = DecoderModel.open(model_path).space
    bomb = gzip.compress(b"\0" * (24 * 1024 * 1024))  # 24 MiB once decompressed, 24 KiB sent
    two_d = nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4))
    vols = nib.concat_images([_image(space, 0), _image(space, 1)])
    cases = [
        (b"", 400, "empty upload"),
        (b"certainly not a NIfTI image" * 20, 400, "not a readable NIfTI image"),
        (b"\x1f\x8b" + b"broken gzip" * 10, 400, "not a valid gzip file"),
        (os.urandom(8 * 1024 * 1024 + 10), 413, "larger than the limit"),
        (bomb, 413, "once decompressed"),
        (_gz(two_d), 422, "expected one 3-D image"),
        (_gz(vols), 422, "expected one 3-D image"),
        (_gz(_image(space, 0))[:5000], 400, ""),
        (_gz(space.to_img(np.zeros(space.n_voxels, np.float32))), 422, "constant inside"),
    ]
    for body, status, message in cases:
        resp = httpx.post(f"{service}/decode", content=body)
        assert resp.status_code == status, (message, resp.text)
        assert message in resp.json()["error"]
    resp = httpx.post(f"{service}/decode?top=-2", content=_gz(_image(space, 0)))
    assert resp.status_code == 400 and "top must be" in resp.json()["error"]
    assert httpx.get(f"{service}/health").status_code == 200  # still serving


def test_service_answers_20_concurrent_requests(service, model_path):
    import httpx

    model = DecoderModel.open(model_path)
    bodies = [_gz(_image(model.space, seed)) for seed in range(20)]
    expected = [model.transform(nib.Nifti1Image.from_bytes(gzip.decompress(b)))["r"].max()
                for b in bodies]

    def post(body):
        with httpx.Client(timeout=60) as client:
            t0 = time.perf_counter()
            resp = client.post(f"{service}/decode?top=1", content=body)
            return resp, time.perf_counter() - t0

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, bodies))
    assert all(resp.status_code == 200 for resp, _ in answers)
    got = [resp.json()["labels"][0]["r"] for resp, _ in answers]
    assert np.allclose(got, expected, atol=1e-6)
    latency = np.percentile([t for _, t in answers], [50, 90, 100])
    print(f"20 concurrent decodes: latency p50 {latency[0]*1e3:.0f} ms, p90 "
          f"{latency[1]*1e3:.0f} ms, max {latency[2]*1e3:.0f} ms")


def test_model_built_on_a_scheduler_and_two_workers_equals_local(
        scheduler_and_workers, toy_collection, monkeypatch, tmp_path):
    import daskmeta.decode._build as build

    client, _ = scheduler_and_workers
    from daskmeta.estimators import MKDAChi2

    # Rows of 4 per task and 16 labels per map task: several tasks for both workers.
    monkeypatch.setattr(build, "ROWS_PER_SUM_TASK", 4)
    coll = Collection.open(toy_collection.path)
    remote = CorrelationDecoder(labels="toy", meta_estimator=MKDAChi2(chunk_size=4),
                                fwe_iters=60, seed=3).fit(coll, store=tmp_path / "remote.zarr")
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and min(executed.values()) > 0, executed
    client.close()
    local = CorrelationDecoder(labels="toy", fwe_iters=60, seed=3).fit(
        coll, store=tmp_path / "local.zarr")
    a, b = remote.model_.to_xarray(), local.model_.to_xarray()
    for key in ("maps", "map_mean", "map_norm", "n_studies", "fwe_null", "fwe_threshold"):
        assert np.array_equal(a[key].values, b[key].values), key
    assert list(a["label"].values) == list(b["label"].values)


def test_service_module_in_process_rejects_bad_limit(model_path):
    from daskmeta.decode.serve import create_app
    from daskmeta.exceptions import DaskmetaError

    with pytest.raises(DaskmetaError, match="max_upload_bytes must be a positive integer"):
        create_app(model_path, max_upload_bytes=0)
    assert create_app(model_path).state.model.labels == DecoderModel.open(model_path).labels



def test_label_fwe_equals_brute_force_permutations(toy_collection, tmp_path):
    from daskmeta._pass import has_foci
    from daskmeta.decode._build import target_map
    from daskmeta.montecarlo.runner import batch_seed

    dec = CorrelationDecoder(labels="toy", min_studies=3, fwe_iters=12, seed=5)
    dec.fit(toy_collection, store=tmp_path / "fwe.zarr")
    model = dec.model_
    null = model.to_xarray()["fwe_null"].values
    assert null.shape == (model.n_labels, 12)
    # By hand: batches of 25 iterations (one here), seeded as the Monte Carlo batches;
    # each label's null maximum is the largest z of the first n studies of a permutation.
    rows = np.flatnonzero(has_foci(toy_collection.dataset))
    ma = toy_collection.rows([toy_collection.ids[r] for r in rows]).compute()
    binary = (ma > 0).astype(np.int64)
    totals = binary.sum(axis=0)
    rng = np.random.default_rng(batch_seed(5, 0))
    for it in range(12):
        perm = rng.permutation(len(rows))
        for lab, n in enumerate(model.n_studies):
            counts = binary[perm[:n]].sum(axis=0)[None, :]
            z = target_map("z_desc-association", counts, [n], totals[None, :] - counts,
                           [len(rows) - n])
            assert z.max() == null[lab, it]
    thresholds = model.fwe_thresholds
    assert np.allclose(thresholds.to_numpy(), np.quantile(null.astype(float), 0.95, axis=1))
    logp = model.fwe_logp(model.labels[0], return_type="array")
    z0 = model.get_map(model.labels[0], return_type="array")
    top = int(np.argmax(z0))
    expected = -np.log10(max(int((null[0] >= z0[top]).sum()), 1) / 12)
    assert np.isclose(logp[top], expected)
    with pytest.raises(DaskmetaError, match="fwe_iters must be None or an integer >= 1"):
        CorrelationDecoder(labels="toy", fwe_iters=0).fit(toy_collection)


def test_temporary_model_lives_as_long_as_its_reader(toy_collection):
    import gc

    model = CorrelationDecoder(labels="toy", min_studies=3).fit(toy_collection).model_
    gc.collect()
    path = model.path
    assert path.exists() and model.transform(_image(model.space)).shape[1] == 1
    del model
    gc.collect()
    assert not path.parent.exists()


def test_model_maps_equal_mkdachi2_fits_of_each_label(toy_collection, model_path):
    from daskmeta.estimators import MKDAChi2

    model = DecoderModel.open(model_path)
    for label in model.labels[:3]:
        res = MKDAChi2().fit(toy_collection, select=label, label_threshold=0.001)
        assert np.array_equal(model.get_map(label, return_type="array"),
                              res.get_map("z_desc-association", return_type="array"))


@pytest.mark.parametrize("seed", [0, 1])
def test_null_maxima_by_classes_equal_every_voxel(seed):
    """The null's per-class shortcut gives the maximum over every voxel, bit for bit: random
    binary rows with voxels no study activates, voxels every study activates, studies with
    no active voxel, and sizes from 1 to all the studies but one; a group of one study
    without active voxels has no positive z (the scan of every voxel then)."""
    from daskmeta.decode._build import target_map
    from daskmeta.decode.fwe import null_maxima, total_classes

    rng = np.random.default_rng(seed)
    n_studies, n_vox = 40, 300
    binary = (rng.random((n_studies, n_vox)) < rng.uniform(0.02, 0.6, n_vox)).astype(np.int64)
    binary[:, :7] = 0
    binary[:, 7:11] = 1
    binary[3] = 0
    totals = binary.sum(axis=0)
    m = sparse.csr_matrix(binary)
    indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int32)
    sizes = np.array([1, 2, 3, 5, 13, 20, 39], dtype=np.int64)
    perms = np.stack([rng.permutation(n_studies) for _ in range(6)])
    i = int(np.flatnonzero(perms[0] == 3)[0])
    perms[0, [0, i]] = perms[0, [i, 0]]  # the study without active voxels first
    klass, class_totals = total_classes(totals)
    out = np.empty((len(perms), len(sizes)), dtype=np.float32)
    null_maxima(indptr, indices, perms, sizes, klass, class_totals, totals, n_studies, out)
    for it, perm in enumerate(perms):
        for s, n in enumerate(sizes):
            counts = binary[perm[:n]].sum(axis=0)[None, :]
            z = target_map("z_desc-association", counts, [n], totals[None, :] - counts,
                           [n_studies - n])
            assert z.max() == out[it, s], (it, n)
    assert perms[0, 0] == 3 and out[0, 0] == 0.0
