"""Collections: MA matrices in Zarr stores, fitting from them, fit_many, the ingest command.

Everything runs on the 21 pain experiments with NiMARE's mask and 4 experiments per stored
chunk, so every store has several chunks.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from scipy import sparse

import daskmeta
from daskmeta import _build as build_mod
from daskmeta import collection as coll_mod
from daskmeta.cli import main
from daskmeta.collection import Collection
from daskmeta.estimators import ALE, KDA, MKDADensity
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning, DatasetError
from daskmeta.kernels import ALEKernel, KDAKernel, MKDAKernel

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nimare-testdata"
NIMARE_MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN_JSON = TESTDATA / "test_pain_dataset.json"
ROWS = 4
MASK = str(NIMARE_MASK)
KERNELS = {"mkda": MKDAKernel, "kda": KDAKernel, "ale": ALEKernel}
ESTIMATORS = {"mkda": MKDADensity, "kda": KDA, "ale": ALE}
DTYPES = {"mkda": np.uint8, "kda": np.uint16, "ale": np.float32}
MAPS = ("stat", "p", "z")


def _build(dataset, kernel, path, **kwargs):
    kwargs.setdefault("mask", MASK)
    kwargs.setdefault("rows_per_shard", ROWS)
    return Collection.build(dataset, kernel, path, **kwargs)


def _maps(result):
    return {m: np.asarray(result.get_map(m, return_type="array")) for m in MAPS}


def _assert_same_maps(a, b, what=""):
    for m in MAPS:
        assert np.array_equal(a[m], b[m]), f"{what}: map {m} differs"


@pytest.fixture(scope="module")
def stores(tmp_path_factory, pain_dataset):
    """A complete collection of the pain dataset under each kernel (module-wide, read-only)."""
    root = tmp_path_factory.mktemp("collections")
    return {name: _build(pain_dataset, cls(), root / f"pain-{name}.zarr",
                         sources=[PAIN_JSON] if name == "mkda" else ())
            for name, cls in KERNELS.items()}


@pytest.fixture(scope="module")
def labelled():
    """The pain dataset with two labels (deterministic weights) and its MKDA and ALE stores."""
    from daskmeta.io import read_nimare_json

    ds = read_nimare_json(PAIN_JSON)
    rng = np.random.default_rng(7)
    weights = rng.uniform(0, 1, size=(ds.n_experiments, 3)).round(2)
    weights[weights < 0.3] = 0
    return daskmeta.Dataset(ds.experiments, ds.foci, labels=sparse.csr_matrix(weights),
                            label_names=["topic_a", "topic_b", "topic_c"], name="labelled pain")


@pytest.fixture(scope="module")
def labelled_stores(tmp_path_factory, labelled):
    root = tmp_path_factory.mktemp("labelled")
    return {"mkda": _build(labelled, MKDAKernel(), root / "mkda.zarr"),
            "ale": _build(labelled, ALEKernel(), root / "ale.zarr")}


# -- fitting from a store equals fitting the Dataset --------------------------------------------
@pytest.mark.parametrize("name", list(KERNELS))
def test_fit_from_collection_equals_fit_from_dataset(stores, pain_dataset, name):
    est = ESTIMATORS[name]
    collection = stores[name]
    from_store = _maps(est().fit(collection))
    in_memory = _maps(est(mask=MASK).fit(pain_dataset))
    _assert_same_maps(from_store, in_memory, name)
    assert np.isfinite(from_store["z"]).all() and from_store["stat"].max() > 0


@pytest.mark.parametrize("name", list(KERNELS))
def test_fit_selection_from_collection_equals_fit_from_dataset(stores, pain_dataset, name):
    est = ESTIMATORS[name]
    # Out of order, with an experiment without foci (dropped by both, as NiMARE does).
    ids = pain_dataset.ids[::-2][:9] + ["pain_07.nidm-1"]
    result = est(mask=MASK).fit(stores[name], select=ids)
    assert result.attrs["collection"] == str(stores[name].path)
    _assert_same_maps(_maps(result), _maps(est(mask=MASK).fit(pain_dataset, select=ids)), name)
    # And the selection is really a selection: the full fit differs.
    assert not np.array_equal(_maps(result)["stat"], _maps(est().fit(stores[name]))["stat"])


@pytest.mark.parametrize("name", list(KERNELS))
def test_rows_equal_kernel_transform_and_dtype(stores, pain_dataset, nimare_space, name):
    collection = stores[name]
    expected = KERNELS[name]().transform(pain_dataset, nimare_space).compute()
    rows = collection.rows(collection.ids)
    assert isinstance(rows, da.Array) and rows.dtype == np.float32
    assert np.array_equal(rows.compute(), expected)
    pick = [collection.ids[i] for i in (17, 3, 9, 0)]
    assert np.array_equal(collection.rows(pick, chunk_size=3).compute(),
                          expected[[17, 3, 9, 0]])
    assert collection.ma.dtype == DTYPES[name]
    assert collection.attrs["dtype"] == np.dtype(DTYPES[name]).name
    assert collection.ma.data.chunks[0] == (4, 4, 4, 4, 4, 1)
    with pytest.raises(DaskmetaError, match="experiment 'nope' is not in the collection"):
        collection.rows(["nope"])


@pytest.mark.parametrize("name", list(KERNELS))
def test_stored_value_histograms_give_the_row_summaries(stores, name):
    # What a fit reads instead of summarising the rows equals what it would compute.
    collection = stores[name]
    est = ESTIMATORS[name]()
    est.kernel_ = collection.kernel
    rows = np.arange(collection.n_experiments)[::-1]
    inv_step = est._hist_inv_step(collection.kernel)
    hist = collection.value_histograms(rows, inv_step)
    row_max = collection.row_maxima(rows)
    block = collection.ma.values[rows]
    assert np.array_equal(row_max, block.max(axis=1).astype(np.float32))
    assert np.array_equal(hist.sum(axis=1), np.count_nonzero(block, axis=1))
    from_hist = est._summaries_from_hist(hist, row_max, collection.space.n_voxels)
    computed = est._row_summaries(block)
    assert len(from_hist) == len(computed) == len(rows)

    def same(a, b):  # summaries are numbers, or tuples of numbers and arrays
        if isinstance(a, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    assert all(same(a, b) for a, b in zip(from_hist, computed))
    assert collection.value_histograms(rows, inv_step * 2) is None


@pytest.mark.parametrize("name", list(KERNELS))
def test_plan_value_histograms_equal_the_general_kernel(pain_dataset, nimare_space, name):
    # Spheres are counted directly; the result is the compiled kernel's, bit for bit.
    from daskmeta._rows import row_histograms

    kernel = KERNELS[name]()
    plan = kernel.plan(pain_dataset, nimare_space)
    block = plan.fill(0, plan.n_rows)
    inv_step = kernel.hist_inv_step()
    width = build_mod.hist_width(plan.max_value(), inv_step)
    fast, general = plan.value_histograms(block, inv_step, width), row_histograms(
        block, inv_step, width)
    for a, b in zip(fast, general):
        assert np.array_equal(a, b)
    assert fast[2] == 0 and fast[1].sum() == np.count_nonzero(block)


def test_store_without_value_histograms_fits_the_same(tmp_path, labelled_stores):
    # Format-2 stores have no ma_hist: summaries come from the rows.
    import shutil

    for name in ("mkda", "ale"):
        path = tmp_path / f"{name}.zarr"
        shutil.copytree(labelled_stores[name].path, path)
        for node in ("ma_hist", "ma_max"):
            shutil.rmtree(path / node)
        group = zarr.open_group(path, mode="r+")
        for key in ("ma_hist_inv_step", "ma_hist_width", "generation"):
            del group.attrs[key]
        group.attrs["format_version"] = 2
        (path / "daskmeta" / "manifest.json").unlink()  # format 2 had none
        with pytest.warns(DaskmetaWarning, match="format 2 has no manifest, so its shards, "
                                                 "Dataset file and attributes cannot be "
                                                 "verified; rebuild it"):
            old = Collection.open(path)
        assert old.value_histograms(np.arange(3), 1.0) is None
        with pytest.raises(DaskmetaError, match="stores no row maxima"):
            old.row_maxima([0])
        est = ESTIMATORS[name]
        for select in SELECTIONS.values():
            _assert_same_maps(_maps(est().fit(old, select=select, label_threshold=0.5)),
                              _maps(est().fit(labelled_stores[name], select=select,
                                              label_threshold=0.5)), name)
        many_old = est().fit_many(old, SELECTIONS, label_threshold=0.5)
        many_new = est().fit_many(labelled_stores[name], SELECTIONS, label_threshold=0.5)
        for m in MAPS:
            assert np.array_equal(many_old[m].values, many_new[m].values), (name, m)


# -- the store: xarray, provenance, other processes ------------------------------------------
def test_open_zarr_lazily_with_provenance(stores, nimare_space):
    path = stores["mkda"].path
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not a component of a Zarr hierarchy" noise
        ds = xr.open_zarr(path, consolidated=False)
    assert isinstance(ds["ma"].data, da.Array)
    assert ds["ma"].dims == ("study", "voxel")
    assert ds["ma"].shape == (21, nimare_space.n_voxels)
    assert list(ds["study"].values) == stores["mkda"].ids
    attrs = ds.attrs
    assert attrs["complete"] is True
    assert attrs["kernel"] == "MKDAKernel"
    assert json.loads(attrs["kernel_params"]) == {"r": 10, "value": 1}
    assert attrs["mask_hash"] == nimare_space.mask_hash
    assert attrs["daskmeta_version"] == daskmeta.__version__
    assert attrs["mask_margin"] == 10.0
    sha = hashlib.sha256(PAIN_JSON.read_bytes()).hexdigest()
    assert json.loads(attrs["sources"]) == [{"file": PAIN_JSON.name, "sha256": sha}]
    assert json.loads(stores["ale"].attrs["sources"]) == []
    # The mask is in the store too: the voxel axis can be put back in 3-D without daskmeta.
    assert int(ds["mask"].sum()) == nimare_space.n_voxels


def test_second_process_reads_the_store(stores):
    collection = stores["kda"]
    script = (
        "import sys, json, numpy as np, xarray as xr\n"
        "from daskmeta.collection import Collection\n"
        "ds = xr.open_zarr(sys.argv[1], consolidated=False)\n"
        "c = Collection.open(sys.argv[1])\n"
        "ma = ds['ma'].values\n"
        "print(json.dumps({'sum': int(ma.astype(np.int64).sum()), 'max': int(ma.max()),\n"
        "                  'n': c.n_experiments, 'kernel': repr(c.kernel),\n"
        "                  'rows_equal': bool(np.array_equal(c.rows(c.ids).compute(), ma))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(collection.path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ma = collection.ma.values
    assert got == {"sum": int(ma.astype(np.int64).sum()), "max": int(ma.max()), "n": 21,
                   "kernel": "KDAKernel(r=10, value=1)", "rows_equal": True}
    assert got["max"] > 1  # counts, not a binary map


def test_mkda_fit_from_a_store_runs_no_compiled_code(stores):
    # numba's start-up (LLVM, loading cached code) costs ~0.25 s in a fresh process, longer
    # than the whole MKDA fit from a store: its sums (numpy's uint32 sum), null and maps use
    # numpy only. A fresh process fits, then lists daskmeta's compiled functions it loaded.
    script = (
        "import sys, json, numba, daskmeta\n"
        "from daskmeta.collection import Collection\n"
        "from daskmeta.estimators import MKDADensity\n"
        "res = MKDADensity().fit(Collection.open(sys.argv[1]))\n"
        "used = sorted(f'{m.__name__}.{k}' for m in list(sys.modules.values())\n"
        "              if getattr(m, '__name__', '').startswith('daskmeta')\n"
        "              for k, v in vars(m).items()\n"
        "              if isinstance(v, numba.core.dispatcher.Dispatcher) and v.signatures)\n"
        "print(json.dumps({'used': used, 'n': res.attrs['n_experiments']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(stores["mkda"].path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    n_fitted = MKDADensity().fit(stores["mkda"]).attrs["n_experiments"]  # those with foci
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"used": [], "n": n_fitted}


# -- refusing to mix -------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, field", [
    (KDAKernel(), "kernel: store has 'MKDAKernel', requested 'KDAKernel'"),
    (MKDAKernel(r=8), "kernel_params"),
    (MKDAKernel(value=2), "kernel_params"),
])
def test_refuses_another_kernel(stores, pain_dataset, kernel, field):
    path = stores["mkda"].path
    before = (path / "zarr.json").read_bytes()
    with pytest.raises(DaskmetaError, match="refusing to add to") as info:
        _build(pain_dataset, kernel, path)
    assert field in str(info.value)
    assert (path / "zarr.json").read_bytes() == before


def test_refuses_another_mask_margin_or_dataset(stores, pain_dataset):
    path = stores["mkda"].path
    with pytest.raises(DaskmetaError, match="refusing to add.*mask_hash"):
        _build(pain_dataset, MKDAKernel(), path, mask=None)
    # Refused before planning: no warning about the foci the refused margin would drop.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DaskmetaError, match="refusing to add.*mask_margin"):
            _build(pain_dataset, MKDAKernel(), path, mask_margin=5)
    with pytest.raises(DaskmetaError, match="refusing to add.*dataset_fingerprint"):
        _build(pain_dataset.slice(pain_dataset.ids[:10]), MKDAKernel(), path)


def test_another_shard_size_reuses_the_complete_store(stores, pain_dataset):
    # The shard size is layout, not content: the complete store is opened as it is.
    again = _build(pain_dataset, MKDAKernel(), stores["mkda"].path, rows_per_shard=8)
    assert again.attrs["rows_per_shard"] == ROWS
    assert np.array_equal(again.ma.values, stores["mkda"].ma.values)


def test_same_kernel_spelled_differently_reuses_the_store(stores, pain_dataset):
    # r=10.0 is r=10: the complete store is opened, not refused.
    again = _build(pain_dataset, MKDAKernel(r=10.0, value=1.0), stores["mkda"].path)
    assert again.attrs["complete"] is True
    assert np.array_equal(again.ma.values, stores["mkda"].ma.values)


def test_refuses_what_is_not_a_collection(tmp_path, pain_dataset):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(DaskmetaError, match="exists and is not a daskmeta collection store"):
        _build(pain_dataset, MKDAKernel(), other)
    with pytest.raises(DaskmetaError, match="is not a daskmeta collection store"):
        Collection.open(other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    plain = tmp_path / "plain.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(plain, consolidated=False)
    with pytest.raises(DaskmetaError, match="a Zarr store but not a daskmeta collection"):
        _build(pain_dataset, MKDAKernel(), plain)
    with pytest.raises(DaskmetaError, match="a Zarr store but not a daskmeta collection"):
        Collection.open(plain)
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(DaskmetaError, match="is a file, not a daskmeta collection store"):
        _build(pain_dataset, MKDAKernel(), a_file)
    with pytest.raises(DaskmetaError, match="rows_per_shard must be a positive integer"):
        _build(pain_dataset, MKDAKernel(), tmp_path / "x.zarr", rows_per_shard=0)


def test_empty_directory_becomes_a_store(tmp_path, pain_dataset):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    collection = _build(pain_dataset, MKDAKernel(), empty)
    assert collection.attrs["complete"] is True
    assert not any(p.name.endswith(".creating") for p in tmp_path.iterdir())


# -- incomplete stores and resuming ----------------------------------------------------------
def test_open_refuses_an_incomplete_store(tmp_path, stores, pain_dataset):
    path = tmp_path / "s.zarr"
    _build(pain_dataset, MKDAKernel(), path)
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with pytest.raises(DaskmetaError, match="incomplete collection"):
        Collection.open(path)
    assert Collection.open(path, allow_incomplete=True).n_experiments == 21
    del zarr.open_group(path, mode="r+").attrs["complete"]
    with pytest.raises(DaskmetaError, match="incomplete collection.*run the same build again"):
        Collection.open(path)
    # An estimator cannot get at it either, and building again finishes it.
    again = _build(pain_dataset, MKDAKernel(), path)
    assert np.array_equal(again.ma.values, stores["mkda"].ma.values)


def test_build_stopped_midway_then_resumed(tmp_path, monkeypatch, stores, pain_dataset):
    path = tmp_path / "s.zarr"
    real = build_mod._write_shard
    written = []

    def failing(store, plan, index, *args):
        if index == 3:
            raise RuntimeError("worker lost")
        written.append(index)
        return real(store, plan, index, *args)

    monkeypatch.setattr(build_mod, "_write_shard", failing)
    # One thread, so no task is still writing once the build has raised.
    with pytest.raises(RuntimeError, match="worker lost"), dask.config.set(num_workers=1):
        _build(pain_dataset, ALEKernel(), path)
    monkeypatch.setattr(build_mod, "_write_shard", real)
    assert zarr.open_group(path, mode="r").attrs["complete"] is False
    markers = sorted(int(p.stem) for p in (path / coll_mod._PROGRESS).glob("*.done"))
    assert 3 not in markers and set(markers) == set(written)
    with pytest.raises(DaskmetaError, match="incomplete collection"):
        Collection.open(path)
    resumed = _build(pain_dataset, ALEKernel(), path)
    assert resumed.attrs["complete"] is True
    assert not (path / coll_mod._PROGRESS).exists()
    assert np.array_equal(resumed.ma.values, stores["ale"].ma.values)
    _assert_same_maps(_maps(ALE().fit(resumed)), _maps(ALE().fit(stores["ale"])))


def test_resume_rewrites_only_unmarked_chunks(tmp_path, stores, pain_dataset):
    path = tmp_path / "s.zarr"
    _build(pain_dataset, KDAKernel(), path)
    clean = stores["kda"].ma.values
    # Turn it back into an interrupted build: chunks 0, 2, 4, 5 marked done; 1 and 3 lost.
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    progress = path / coll_mod._PROGRESS
    progress.mkdir(parents=True)
    for c in (0, 2, 4, 5):
        (progress / f"{c:08d}.done").touch()
    arr = zarr.open_array(path, path="ma", mode="r+")
    arr[4:8] = 0
    arr[12:16] = 0
    arr[0, :5] = 999  # a sentinel in a chunk marked done: resuming must not rewrite it
    assert not np.array_equal(arr[:], clean)
    # What a build killed while writing shard 1 leaves: its temporary file.
    leftover = path / "ma" / "c" / "1" / ".0.4242.77.tmp"
    leftover.write_bytes(b"half a shard")
    resumed = _build(pain_dataset, KDAKernel(), path)
    assert not leftover.exists()
    got = resumed.ma.values
    assert np.array_equal(got[4:8], clean[4:8]) and np.array_equal(got[12:16], clean[12:16])
    assert (got[0, :5] == 999).all()
    got[0, :5] = clean[0, :5]
    assert np.array_equal(got, clean)


# -- estimator and collection must agree ------------------------------------------------------
def test_estimator_kernel_must_match_the_collection(stores):
    with pytest.raises(DaskmetaError, match=r"holds MA maps of ALEKernel\(fwhm=None, sample_size="
                                            r"None\); this ALE asks for ALEKernel\(fwhm=12"):
        ALE(kernel__fwhm=12).fit(stores["ale"])
    with pytest.raises(DaskmetaError, match=r"holds MA maps of MKDAKernel\(r=10.*asks for "
                                            r"MKDAKernel\(r=8"):
        MKDADensity(kernel__r=8).fit(stores["mkda"])
    with pytest.raises(DaskmetaError, match="MKDADensity needs MKDAKernel maps"):
        MKDADensity().fit(stores["ale"])
    with pytest.raises(DaskmetaError, match="KDA needs KDAKernel maps"):
        KDA().fit(stores["mkda"])
    with pytest.raises(DaskmetaError, match="ALE needs ALEKernel maps"):
        ALE().fit_many(stores["kda"], {"all": stores["kda"].ids})
    # Saying the collection's own kernel explicitly is fine.
    ALE(kernel_transformer=ALEKernel()).fit(stores["ale"])


def test_estimator_mask_and_margin_must_match_the_collection(stores):
    with pytest.raises(DaskmetaError, match="was built on another mask"):
        MKDADensity(mask=daskmeta.Space(None)).fit(stores["mkda"])
    with pytest.raises(DaskmetaError, match="built with mask_margin=10; this estimator has 5"):
        MKDADensity(mask_margin=5).fit(stores["mkda"])
    MKDADensity(mask=MASK).fit(stores["mkda"])  # the same mask by path: fine


# -- reductions ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mkda", "ale"])
@pytest.mark.parametrize("rows_per_task", [1024, 7])
def test_reduce_equals_dense_product(monkeypatch, stores, forbid_compute, name, rows_per_task):
    import daskmeta.collection

    # 7 rows per task, 5 per read: several tasks and partial reads.
    monkeypatch.setattr(daskmeta.collection, "ROWS_PER_SUM_TASK", rows_per_task)
    collection = stores[name]
    rng = np.random.default_rng(0)
    dense_w = (rng.uniform(size=(5, 21)) < 0.4).astype(float)
    dense_w[4] = 0  # an empty selection
    w = sparse.csr_matrix(dense_w)
    ma = collection.ma.values.astype(np.float32)
    # ALE's reduction; for binary spheres, a function that is finite at 1.
    func = (lambda b: np.log1p(-b)) if name == "ale" else (lambda b: np.sqrt(b + 1))
    with forbid_compute():
        lazy = collection.reduce(w, chunk_size=5)
        lazy_f = collection.reduce(w, func=func, chunk_size=5)
    assert lazy.dims == ("selection", "voxel") and lazy.shape == (5, ma.shape[1])
    expected = dense_w @ ma.astype(np.float64)
    if name == "mkda":  # integer sums: exact whatever the order
        assert np.array_equal(lazy.values, expected)
    else:
        np.testing.assert_allclose(lazy.values, expected, rtol=1e-12, atol=0)
    expected_f = dense_w @ func(ma).astype(np.float64)
    np.testing.assert_allclose(lazy_f.values, expected_f, rtol=1e-12, atol=1e-15)
    assert not np.array_equal(lazy_f.values[:4], lazy.values[:4])
    assert (lazy.values[4] == 0).all() and (lazy_f.values[4] == 0).all()
    # Dense weights are accepted too.
    assert np.array_equal(collection.reduce(w.toarray()).values,
                          collection.reduce(w).values)


def test_reduce_bad_or_empty_weights(stores):
    collection = stores["mkda"]
    with pytest.raises(DaskmetaError, match="weights have 5 columns; the collection has 21"):
        collection.reduce(np.ones((2, 5)))
    zeros = collection.reduce(sparse.csr_matrix((3, 21)))
    assert zeros.shape == (3, collection.space.n_voxels) and not zeros.values.any()


def test_selection_weights(labelled_stores, labelled):
    """The estimators' selection rule: experiments without foci are left out, and an empty
    selection is an error naming it."""
    from daskmeta._pass import has_foci

    collection = labelled_stores["mkda"]
    w, names = collection.selection_weights(
        {"a": "topic_a", "ids": labelled.ids[:3], "a_not_b": "topic_a & ~topic_b"},
        label_threshold=0.5)
    assert names == ["a", "ids", "a_not_b"] and w.shape == (3, 21)
    dense = w.toarray()
    foci = has_foci(labelled)
    assert not foci.all()  # the case exercises the rule
    assert np.array_equal(dense[0].astype(bool), labelled.label_mask("topic_a", 0.5) & foci)
    assert np.array_equal(np.flatnonzero(dense[1]), np.flatnonzero(foci[:3]))
    assert np.array_equal(dense[2].astype(bool),
                          labelled.label_mask("topic_a & ~topic_b", 0.5) & foci)
    no_foci = [i for i, f in zip(labelled.ids, foci) if not f]
    with pytest.raises(DatasetError, match="selection 'x': empty selection: none of the 1 "):
        collection.selection_weights({"x": no_foci[:1]})


# -- fit_many --------------------------------------------------------------------------------
SELECTIONS = {
    "some ids": ["pain_02.nidm-1", "pain_05.nidm-1", "pain_09.nidm-1", "pain_11.nidm-1",
                 "pain_14.nidm-1", "pain_20.nidm-1"],
    "topic a": "topic_a",
    "b but not c": "topic_b & ~topic_c",
}


@pytest.mark.parametrize("name", ["mkda", "ale"])
def test_fit_many_equals_separate_fits(labelled_stores, name):
    collection = labelled_stores[name]
    est = ESTIMATORS[name]
    many = est().fit_many(collection, SELECTIONS, label_threshold=0.5)
    assert list(many["selection"].values) == list(SELECTIONS)
    assert many["stat"].dims == ("selection", "voxel")
    for k, (label, select) in enumerate(SELECTIONS.items()):
        one = est().fit(collection, select=select, label_threshold=0.5)
        maps = _maps(one)
        for m in MAPS:
            assert np.array_equal(many[m].values[k], maps[m]), (label, m)
        assert int(many["n_experiments"].values[k]) == one.attrs["n_experiments"]
    # The three selections really differ.
    assert len({many["stat"].values[k].tobytes() for k in range(3)}) == 3


@pytest.mark.parametrize("name", ["mkda", "ale"])
def test_fit_many_in_several_tasks_equals_separate_fits(monkeypatch, labelled_stores, name):
    # Tasks of 4 rows read 2 at a time: several partial sums per task and per pass.
    from daskmeta.estimators import _many

    monkeypatch.setattr(_many, "ROWS_PER_SUM_TASK", 4)
    collection = labelled_stores[name]
    est = ESTIMATORS[name]
    many = est(chunk_size=2).fit_many(collection, SELECTIONS, label_threshold=0.5)
    for k, select in enumerate(SELECTIONS.values()):
        maps = _maps(est(chunk_size=2).fit(collection, select=select, label_threshold=0.5))
        if name == "mkda":  # integer counts: the order of additions cannot matter
            for m in MAPS:
                assert np.array_equal(many[m].values[k], maps[m]), m
        else:  # float64 sums added in another order
            for m in MAPS:
                np.testing.assert_allclose(many[m].values[k], maps[m], rtol=1e-6, atol=1e-9)


def test_fit_many_with_store_and_group_size(tmp_path, labelled_stores):
    collection = labelled_stores["mkda"]
    default = MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5)
    calls = []
    stored = MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5,
                                    store=tmp_path / "maps.zarr", group_size=1,
                                    progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    reopened = xr.open_zarr(tmp_path / "maps.zarr", consolidated=False)
    assert reopened.attrs["complete"] is True
    assert reopened.attrs["estimator"] == "MKDADensity"
    assert isinstance(reopened["stat"].data, da.Array)
    for m in MAPS:
        assert np.array_equal(reopened[m].values, default[m].values), m
        assert np.array_equal(stored[m].values, default[m].values), m
    assert list(reopened["selection"].values) == list(SELECTIONS)
    assert np.array_equal(reopened["n_experiments"].values, default["n_experiments"].values)
    with pytest.raises(DaskmetaError, match="maps.zarr exists; pass overwrite=True"):
        MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5,
                               store=tmp_path / "maps.zarr")
    again = MKDADensity().fit_many(collection, {"topic a": "topic_a"}, label_threshold=0.5,
                                   store=tmp_path / "maps.zarr", overwrite=True)
    assert list(again["selection"].values) == ["topic a"]
    assert np.array_equal(again["z"].values[0], default["z"].values[1])
    one_by_one = MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5, group_size=1)
    for m in MAPS:
        assert np.array_equal(one_by_one[m].values, default[m].values), m


def test_fit_many_groups_follow_the_memory_setting(labelled_stores):
    import dask

    collection = labelled_stores["mkda"]
    n_vox = collection.space.n_voxels
    # Unweighted MKDA sums of a few rows are uint16; a pass budgets 6 sums per selection.
    for memory, expected in [(f"{2 * 6 * 2 * n_vox}B", [(2, 3), (3, 3)]),
                             (6 * 2 * n_vox, [(1, 3), (2, 3), (3, 3)])]:
        calls = []
        with dask.config.set({"daskmeta.fit-many.memory": memory}):
            MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5,
                                   progress=lambda done, total, seen=calls: seen.append(
                                       (done, total)))
        assert calls == expected
    with dask.config.set({"daskmeta.fit-many.memory": "lots"}):
        with pytest.raises(DaskmetaError, match="daskmeta.fit-many.memory='lots' is not a "
                                                "byte count"):
            MKDADensity().fit_many(collection, SELECTIONS, label_threshold=0.5)


def test_fit_many_counts_in_uint16_only_when_they_fit(monkeypatch, labelled_stores):
    collection = labelled_stores["mkda"]
    every_row = [np.arange(collection.n_experiments)]
    assert MKDADensity._count_dtype(collection, every_row) == np.uint16  # 21 rows of 0/1
    monkeypatch.setattr(Collection, "row_maxima",
                        lambda self, rows: np.full(len(rows), 4000, dtype=np.float32))
    assert MKDADensity._count_dtype(collection, every_row) == np.uint32  # 21 x 4000 > 65535
    assert MKDADensity._count_dtype(collection, [np.arange(16)]) == np.uint16  # 64,000


def test_fit_many_label_list_and_errors(labelled_stores, labelled):
    collection = labelled_stores["mkda"]
    many = MKDADensity().fit_many(collection, ["topic_a", "topic_c"], label_threshold=0.5)
    one = MKDADensity().fit(collection, select="topic_c", label_threshold=0.5)
    assert np.array_equal(many["z"].values[1], _maps(one)["z"])
    with pytest.raises(DaskmetaError, match="fit_many needs a Collection; got Dataset"):
        MKDADensity().fit_many(labelled, ["topic_a"])
    with pytest.raises(DaskmetaError, match="fit_many needs at least one selection"):
        MKDADensity().fit_many(collection, {})
    with pytest.raises(DaskmetaError, match="selection 'none': empty selection"):
        MKDADensity().fit_many(collection, {"none": "topic_a & ~topic_a"})


# -- the ingest command ----------------------------------------------------------------------
def test_cli_ingest(tmp_path, capsys, stores):
    store = tmp_path / "s.zarr"
    assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--store", str(store),
                 "--mask", MASK, "--rows-per-shard", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(store.resolve())
    assert "21 experiments (243 foci) x 228483 voxels, uint8" in err
    collection = Collection.open(store)
    assert np.array_equal(collection.ma.values, stores["mkda"].ma.values)
    sources = json.loads(collection.attrs["sources"])
    assert sources == [{"file": PAIN_JSON.name,
                        "sha256": hashlib.sha256(PAIN_JSON.read_bytes()).hexdigest()}]
    # The CLI's --radius 10 is the Python API's r=10: running it again reuses the store.
    assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--store", str(store),
                 "--mask", MASK, "--rows-per-shard", "4", "--radius", "10"]) == 0
    capsys.readouterr()
    # Another kernel into the same store: one line, exit status 2, nothing changed.
    before = (store / "zarr.json").read_bytes()
    assert main(["ingest", str(PAIN_JSON), "--kernel", "kda", "--store", str(store),
                 "--mask", MASK, "--rows-per-shard", "4"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("daskmeta: error:")]
    assert len(lines) == 1
    assert lines[0].startswith(f"daskmeta: error: refusing to add to {store}")
    assert "kernel: store has 'MKDAKernel', requested 'KDAKernel'" in lines[0]
    assert "Traceback" not in err
    assert (store / "zarr.json").read_bytes() == before
    # --overwrite rebuilds it with the new kernel.
    assert main(["ingest", str(PAIN_JSON), "--kernel", "kda", "--store", str(store),
                 "--mask", MASK, "--overwrite"]) == 0
    assert Collection.open(store).kernel.__class__ is KDAKernel


def test_cli_ingest_ale_options(tmp_path, capsys):
    store = tmp_path / "ale.zarr"
    with pytest.warns(DaskmetaWarning, match="more than 5 mm outside the mask"):
        assert main(["ingest", str(PAIN_JSON), "--kernel", "ale", "--sample-size", "20",
                     "--store", str(store), "--mask", MASK, "--mask-margin", "5"]) == 0
    collection = Collection.open(store)
    assert json.loads(collection.attrs["kernel_params"]) == {"fwhm": None, "sample_size": 20}
    assert collection.mask_margin == 5.0 and collection.ma.dtype == np.float32
    capsys.readouterr()
    assert main(["ingest", str(PAIN_JSON), "--kernel", "ale", "--radius", "8",
                 "--store", str(tmp_path / "x.zarr")]) == 2
    assert "daskmeta: error: --radius applies to --kernel mkda or kda" in capsys.readouterr().err
    assert main(["ingest", str(PAIN_JSON), "--kernel", "mkda", "--fwhm", "8",
                 "--store", str(tmp_path / "x.zarr")]) == 2
    assert "daskmeta: error: --fwhm and --sample-size apply to --kernel ale" in (
        capsys.readouterr().err)
    assert main(["ingest", str(tmp_path / "missing.json"), "--kernel", "ale",
                 "--store", str(tmp_path / "x.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_cli_ingest_bad_kernel_exits(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(PAIN_JSON), "--kernel", "gauss", "--store", str(tmp_path / "s")])
    assert info.value.code == 2
    assert "invalid choice: 'gauss'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", str(PAIN_JSON), "--kernel", "mkda"])  # --store is required


def _write_tiny_neurosynth(folder):
    """Three studies in Neurosynth's release layout (LDA50 with two topics)."""
    folder.mkdir()
    prefix = "data-neurosynth_version-7_"
    pd.DataFrame({"id": ["11", "11", "12", "13", "13", "13"],
                  "x": [40, -40, 0, 20, 22, -30], "y": [-20, -20, 10, -60, 30, 4],
                  "z": [50, 50, 40, 10, 0, -8]}).to_csv(
        folder / f"{prefix}coordinates.tsv.gz", sep="\t", index=False)
    pd.DataFrame({"id": ["11", "12", "13"], "space": ["MNI", "TAL", "UNKNOWN"],
                  "title": ["a", "b", "c"]}).to_csv(
        folder / f"{prefix}metadata.tsv.gz", sep="\t", index=False)
    sparse.save_npz(folder / f"{prefix}vocab-LDA50_source-abstract_type-weight_features.npz",
                    sparse.csr_matrix(np.array([[0.2, 0.0], [0.0, 0.5], [0.1, 0.1]])))
    (folder / f"{prefix}vocab-LDA50_vocabulary.txt").write_text("0_pain\n1_memory\n")
    (folder / "LICENSE.txt").write_text("not a data file")


def test_cli_ingest_directory_records_its_data_files(tmp_path, capsys):
    folder = tmp_path / "ns"
    _write_tiny_neurosynth(folder)
    store = tmp_path / "ns.zarr"
    assert main(["ingest", str(folder), "--kernel", "mkda", "--store", str(store),
                 "--mask", MASK]) == 0
    collection = Collection.open(store)
    sources = json.loads(collection.attrs["sources"])
    expected = sorted(p.name for p in folder.iterdir() if p.name.startswith("data-"))
    assert [s["file"] for s in sources] == expected and len(expected) == 4
    for s in sources:
        assert s["sha256"] == hashlib.sha256((folder / s["file"]).read_bytes()).hexdigest()
    assert collection.dataset.label_names == ["LDA50__0_pain", "LDA50__1_memory"]
    many = MKDADensity().fit_many(collection, ["LDA50__0_pain", "LDA50__1_memory"],
                                  label_threshold=0.1)
    assert list(many["n_experiments"].values) == [2, 2]
    # ALE needs sample sizes Neurosynth does not have: the error says how to give one.
    capsys.readouterr()
    assert main(["ingest", str(folder), "--kernel", "ale", "--store",
                 str(tmp_path / "ale.zarr"), "--mask", MASK]) == 2
    err = capsys.readouterr().err
    assert "needs a sample size for every experiment" in err and "--sample-size N" in err
