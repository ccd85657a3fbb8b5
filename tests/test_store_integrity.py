"""Fault injection on real collection stores: a damaged or concurrently rewritten store gives
exactly the maps of the undamaged store, or a clear error, never other numbers.

The stores are built by ``daskmeta ingest`` from NiMARE's 21 pain experiments with NiMARE's
mask, 4 experiments per shard (6 shards; experiments 0 and 1 have no foci), under the MKDA
and the ALE kernels. Every damage is applied to a copy; the copy is then opened and fitted
on all experiments and on the experiments of the damaged shard, and checked with
``daskmeta verify``. Concurrency is tested with real processes running ``daskmeta ingest``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import sparse

from daskmeta import _integrity
from daskmeta.cli import main
from daskmeta.collection import Collection, verify
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning
from daskmeta.kernels import MKDAKernel
from daskmeta.storage import read_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
MASK = str(TESTDATA / "MNI152_2x2x2_brainmask.nii.gz")
PAIN_JSON = TESTDATA / "test_pain_dataset.json"
ROWS = 4
ESTIMATORS = {"mkda": MKDADensity, "ale": ALE}
MAPS = ("stat", "p", "z")
#: Selections fitted on every damaged copy: all experiments, those of shard 1 (rows 4-7),
#: those of shard 0 that have foci (rows 2-3: untouched by the damage).
SELECTIONS = {"all": None, "shard 1": slice(4, 8), "shard 0": slice(2, 4)}
#: What an error about a damaged or changed store may say (anything else fails the test).
CLEAR = re.compile(r"missing|bytes; the build wrote|not the one the build wrote|does not match "
                   r"its checksum|corrupted|its checksum differs|attribute '|another build|"
                   r"not valid Zarr metadata|manifest is damaged|store changed since it was "
                   r"opened|should not exist")


def _ingest(source, store, kernel="mkda", *extra):
    code = main(["ingest", str(source), "--kernel", kernel, "--store", str(store),
                 "--rows-per-shard", str(ROWS), "--mask", MASK, *extra])
    assert code == 0


def _ingest_cmd(source, store, *extra):
    return [sys.executable, "-m", "daskmeta.cli", "ingest", str(source), "--kernel", "mkda",
            "--store", str(store), "--rows-per-shard", str(ROWS), "--mask", MASK, *extra]


def _env():
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def _maps(result):
    return {m: np.asarray(result.get_map(m, return_type="array")) for m in MAPS}


def _select(ids, which):
    return None if SELECTIONS[which] is None else ids[SELECTIONS[which]]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, pain_dataset):
    """The undamaged stores (built by the ingest command) and their maps, which equal the
    in-memory fits."""
    root = tmp_path_factory.mktemp("pristine")
    out = {}
    for kernel, est in ESTIMATORS.items():
        store = root / f"pain-{kernel}.zarr"
        _ingest(PAIN_JSON, store, kernel)
        coll = Collection.open(store)
        maps = {}
        for which in SELECTIONS:
            maps[which] = _maps(est().fit(coll, select=_select(coll.ids, which)))
            memory = _maps(est(mask=MASK).fit(pain_dataset,
                                              select=_select(pain_dataset.ids, which)))
            for m in MAPS:
                assert np.array_equal(maps[which][m], memory[m]), (kernel, which, m)
        assert maps["shard 1"]["stat"].max() > 0  # real maps, not empty ones
        out[kernel] = (store, maps)
    return out


def _copy(pristine, kernel, tmp_path) -> Path:
    store = tmp_path / f"copy-{kernel}.zarr"
    shutil.copytree(pristine[kernel][0], store)
    return store


def _outcomes(store, kernel):
    """``{selection: maps or the DaskmetaError's message}``, or ``{"open": message}``."""
    try:
        coll = Collection.open(store)
    except DaskmetaError as exc:
        return {"open": str(exc)}
    out = {}
    for which in SELECTIONS:
        try:
            out[which] = _maps(ESTIMATORS[kernel]().fit(coll, select=_select(coll.ids, which)))
        except DaskmetaError as exc:
            out[which] = str(exc)
    return out


def _check(outcomes, expected_maps, must_fail, pattern):
    """Every outcome is the undamaged store's maps or a clear one-line error; those of
    ``must_fail`` (selections, or "open") are errors matching ``pattern``."""
    for which, got in outcomes.items():
        if isinstance(got, str):
            assert "\n" not in got and CLEAR.search(got), got
            continue
        for m in MAPS:
            assert np.array_equal(got[m], expected_maps[which][m]), (
                f"{which}: map {m} differs from the undamaged store's")
    failed = {k for k, v in outcomes.items() if isinstance(v, str)}
    if "open" in must_fail:
        assert "open" in failed, outcomes.keys()
        assert re.search(pattern, outcomes["open"]), outcomes["open"]
        return
    assert "open" not in failed, outcomes.get("open")
    for which in must_fail:
        assert which in failed, f"{which}: fitted despite the damage"
        assert re.search(pattern, outcomes[which]), outcomes[which]


# -- damage -------------------------------------------------------------------------------------
def _flip(file: Path, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 0x5A
    file.write_bytes(bytes(data))


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _shard(store, array, index):
    return store / array / "c" / str(index) / "0" if array != "ma_max" else (
        store / array / "c" / str(index))


DAMAGE = {
    "missing": lambda f: f.unlink(),
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),
    "empty": lambda f: f.write_bytes(b""),
    # Rows come first, the shard index last. Byte 3 of a row is its blosc header's type
    # size: blosc decodes the flipped row without complaint, to other values.
    "corrupt row": lambda f: _flip(f, 3),
    "corrupt index": lambda f: _flip(f, f.stat().st_size - 10),
    "swapped": lambda f: _swap(f, Path(str(f).replace("/c/1", "/c/2"))),
}
# (damage, where it must be refused, what the error says) for the sharded arrays.
SHARDED = [
    ("missing", {"open"}, r"c/1/0: shard 1 of array 'ARRAY': missing \(the build wrote \d+ "
                          r"bytes\)"),
    ("truncated", {"open"}, r"c/1/0: shard 1 of array 'ARRAY': \d+ bytes; the build wrote \d+ "
                            r"\(truncated or replaced\)"),
    ("empty", {"open"}, r"c/1/0: shard 1 of array 'ARRAY': 0 bytes; the build wrote \d+"),
    ("corrupt row", {"all", "shard 1"},
     r"c/1/0: shard 1 of array 'ARRAY': row 4 does not match its checksum \(corrupted\); the "
     r"store is damaged \(list its problems with `daskmeta verify .*`, then rebuild it"),
    ("corrupt index", {"all", "shard 1"},
     r"c/1/0: shard 1 of array 'ARRAY': corrupted \(its index does not match its checksum\)"),
    # Shards 1 and 2 of ma have different sizes (refused at open); those of ma_hist have
    # the same size, so the swap shows when their rows are read.
    ("swapped", {"all", "shard 1"},
     r"c/1/0: shard 1 of array 'ARRAY': (\d+ bytes; the build wrote|row [4-7] is not the one "
     r"the build wrote|row [4-7] does not match its checksum)"),
]


@pytest.mark.parametrize("kernel", list(ESTIMATORS))
@pytest.mark.parametrize("array", ["ma", "ma_hist"])
@pytest.mark.parametrize(("damage", "must_fail", "pattern"), SHARDED, ids=[d[0] for d in SHARDED])
def test_damaged_shards(pristine, tmp_path, kernel, array, damage, must_fail, pattern):
    store = _copy(pristine, kernel, tmp_path)
    file = _shard(store, array, 1)
    DAMAGE[damage](file)
    outcomes = _outcomes(store, kernel)
    pattern = pattern.replace("ARRAY", array)
    if damage == "swapped" and "open" in outcomes:
        must_fail = {"open"}
    _check(outcomes, pristine[kernel][1], must_fail, pattern)
    problems = verify(store)
    assert problems and all("\n" not in p for p in problems)
    assert any(str(file) in p for p in problems), problems


MA_MAX = [
    ("missing", {"open"}, r"ma_max/c/1: missing \(the build wrote \d+ bytes\)"),
    ("truncated", {"open"}, r"ma_max/c/1: \d+ bytes; the build wrote \d+"),
    ("empty", {"open"}, r"ma_max/c/1: 0 bytes; the build wrote \d+"),
    ("corrupt row", {"all", "shard 1", "shard 0"},
     r"ma_max/c/1: chunk 1 of array 'ma_max': not the one the build wrote"),
    ("swapped", {"all", "shard 1", "shard 0"},
     r"ma_max/c/1: chunk 1 of array 'ma_max': not the one the build wrote"),
]


@pytest.mark.parametrize(("damage", "must_fail", "pattern"), MA_MAX, ids=[d[0] for d in MA_MAX])
def test_damaged_row_maxima(pristine, tmp_path, damage, must_fail, pattern):
    # ALE: every row maximum differs, so swapped chunks of equal size differ in content.
    store = _copy(pristine, "ale", tmp_path)
    file = _shard(store, "ma_max", 1)
    if damage == "corrupt row":
        _flip(file, len(file.read_bytes()) - 3)
    else:
        DAMAGE[damage](file)
    _check(_outcomes(store, "ale"), pristine["ale"][1], must_fail, pattern)
    assert any(str(file) in p for p in verify(store))


def test_identical_swapped_row_maxima_give_the_same_maps(pristine, tmp_path):
    # MKDA's row maxima are 1 for every experiment with foci: chunks 1 and 2 hold the same
    # bytes, so exchanging them changes nothing, and nothing is refused.
    store = _copy(pristine, "mkda", tmp_path)
    a, b = _shard(store, "ma_max", 1), _shard(store, "ma_max", 2)
    assert a.read_bytes() == b.read_bytes()
    _swap(a, b)
    outcomes = _outcomes(store, "mkda")
    assert not any(isinstance(v, str) for v in outcomes.values()), outcomes
    _check(outcomes, pristine["mkda"][1], set(), "")
    assert verify(store) == []


# -- identity, Dataset file, metadata, manifest ------------------------------------------------
def _edit_attrs(store, **changes):
    group = zarr.open_group(store, mode="r+")
    for key, value in changes.items():
        group.attrs[key] = value


EDITS = [
    ({"dtype": "float32"}, r"attribute 'dtype' is 'float32'; the build recorded 'uint8' "
                           r"\(edited after the build\?\)"),
    ({"kernel_params": '{"r": 8, "value": 1}'}, r"attribute 'kernel_params' is '\{\"r\": 8"),
    ({"mask_hash": "0" * 64}, r"attribute 'mask_hash' is '0000"),
    ({"n_experiments": 20}, r"attribute 'n_experiments' is 20; the build recorded 21"),
    ({"rows_per_shard": 8}, r"attribute 'rows_per_shard' is 8; the build recorded 4"),
    ({"generation": "0123456789abcdef"}, r"manifest.json: belongs to another build"),
]


@pytest.mark.parametrize(("changes", "pattern"), EDITS, ids=[next(iter(e[0])) for e in EDITS])
def test_edited_attributes_are_refused(pristine, tmp_path, changes, pattern):
    store = _copy(pristine, "mkda", tmp_path)
    _edit_attrs(store, **changes)
    _check(_outcomes(store, "mkda"), pristine["mkda"][1], {"open"}, pattern)
    key = next(iter(changes))
    assert any(f"attribute '{key}'" in p or "another build" in p for p in verify(store))


def test_replaced_dataset_file_is_refused(pristine, tmp_path, pain_dataset):
    store = _copy(pristine, "mkda", tmp_path)
    other = pain_dataset.slice(pain_dataset.ids[:20])  # one experiment fewer
    other.save(store / "daskmeta" / "dataset.zip")
    pattern = r"daskmeta/dataset.zip: (\d+ bytes; the build wrote|its checksum differs)"
    _check(_outcomes(store, "mkda"), pristine["mkda"][1], {"open"}, pattern)
    problems = verify(store)
    assert any("dataset.zip" in p for p in problems), problems
    # Another file of exactly the same size is caught by its checksum.
    store2 = _copy(pristine, "mkda", tmp_path / "b")
    _flip(store2 / "daskmeta" / "dataset.zip", 100)
    _check(_outcomes(store2, "mkda"), pristine["mkda"][1], {"open"},
           r"dataset.zip: its checksum differs from the build's")


@pytest.mark.parametrize(("file", "change", "pattern"), [
    ("zarr.json", lambda t: t[:-20], r"/zarr.json: not valid Zarr metadata"),
    ("ma/zarr.json", lambda t: t[:-20], r"ma/zarr.json: \d+ bytes; the build wrote"),
    ("ma/zarr.json", lambda t: t.replace('"clevel": 5', '"clevel": 4'),
     r"ma/zarr.json: its checksum differs from the build's"),
    ("daskmeta/manifest.json", None, r"manifest.json: missing \(this store's format has a "
                                     r"manifest\)"),
    ("daskmeta/manifest.json", lambda t: t.replace('"n_rows":21', '"n_rows":22'),
     r"manifest.json: the store's manifest is damaged \(its checksum does not match"),
])
def test_damaged_metadata_and_manifest(pristine, tmp_path, file, change, pattern):
    store = _copy(pristine, "mkda", tmp_path)
    target = store / file
    if change is None:
        target.unlink()
    else:
        text = target.read_text()
        assert change(text) != text
        target.write_text(change(text))
    _check(_outcomes(store, "mkda"), pristine["mkda"][1], {"open"}, pattern)
    problems = verify(store)
    assert any(re.search(pattern, p) for p in problems), problems


def test_another_builds_manifest_is_refused(pristine, tmp_path):
    # A rebuild of the same inputs writes the same shards but draws a new generation.
    store = _copy(pristine, "mkda", tmp_path)
    again = tmp_path / "again.zarr"
    _ingest(PAIN_JSON, again)
    shutil.copy(again / _integrity.MANIFEST, store / _integrity.MANIFEST)
    _check(_outcomes(store, "mkda"), pristine["mkda"][1], {"open"},
           r"manifest.json: belongs to another build \(generation [0-9a-f]{16}; the store's "
           r"is [0-9a-f]{16}\)")


def test_incomplete_store_is_refused(pristine, tmp_path):
    store = _copy(pristine, "mkda", tmp_path)
    _edit_attrs(store, complete=False)
    with pytest.raises(DaskmetaError, match="incomplete collection"):
        Collection.open(store)
    assert any("incomplete" in p for p in verify(store))


# -- errors name the file, in Python and on the command line ---------------------------------
def test_read_errors_name_the_file(pristine, tmp_path):
    store = _copy(pristine, "mkda", tmp_path)
    coll = Collection.open(store)
    ids = coll.ids[4:8]
    file = _shard(store, "ma", 1)
    data = file.read_bytes()
    DAMAGE["corrupt row"](file)
    with pytest.raises(DaskmetaError, match=rf"^{re.escape(str(file))}: shard 1 of array 'ma': "
                                            "row 4 does not match its checksum"):
        coll.rows(ids).compute()
    with pytest.raises(DaskmetaError, match=re.escape(str(file))):
        read_rows(store / "ma", [4])  # the first row of shard 1, which holds byte 3
    assert coll.rows(coll.ids[:4]).compute().shape == (4, coll.space.n_voxels)  # others read
    file.write_bytes(b"")  # after opening: caught when read
    with pytest.raises(DaskmetaError, match=rf"^{re.escape(str(file))}: shard 1 of array 'ma': "
                                            rf"0 bytes; the build wrote {len(data)}"):
        coll.rows(ids).compute()
    assert any(str(file) in p for p in coll.verify())


def _legacy(store):
    """Make a store what a format-3 build wrote: no manifest, no generation."""
    (store / _integrity.MANIFEST).unlink()
    group = zarr.open_group(store, mode="r+")
    del group.attrs["generation"]
    group.attrs["format_version"] = 3


def test_store_of_an_earlier_format_warns_fits_and_names_bad_files(pristine, tmp_path,
                                                                   pain_dataset):
    store = _copy(pristine, "mkda", tmp_path)
    _legacy(store)
    with pytest.warns(DaskmetaWarning, match=r"format 3 has no manifest, so its shards, Dataset "
                                             r"file and attributes cannot be verified"):
        coll = Collection.open(store)
    for which in SELECTIONS:
        maps = _maps(MKDADensity().fit(coll, select=_select(coll.ids, which)))
        for m in MAPS:
            assert np.array_equal(maps[m], pristine["mkda"][1][which][m])
    problems = verify(store)
    assert len(problems) == 1 and "has no manifest" in problems[0]
    # Without a manifest, damage that breaks decoding is still an error naming the file.
    file = _shard(store, "ma", 1)
    size = file.stat().st_size
    _flip(file, 20)  # inside row 4's compressed bytes
    with pytest.raises(DaskmetaError, match=rf"^{re.escape(str(file))}: shard 1 of array 'ma': "
                                            "a row does not decompress"):
        coll.rows(coll.ids[4:5]).compute()
    file.write_bytes(b"")
    with pytest.raises(DaskmetaError, match=rf"^{re.escape(str(file))}: shard 1 of array 'ma': "
                                            r"truncated \(0 bytes, shorter than its index"):
        coll.rows(coll.ids[4:5]).compute()
    assert size > 0
    # Its Dataset file's fingerprint is still checked.
    pain_dataset.slice(pain_dataset.ids[:20]).save(store / "daskmeta" / "dataset.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)
        with pytest.raises(DaskmetaError, match=r"dataset.zip: holds another dataset "
                                                r"\(fingerprint [0-9a-f]{12}\.\.\.\) than the "
                                                r"store was built from"):
            Collection.open(store)


def test_cli_verify(pristine, tmp_path, capsys):
    store = _copy(pristine, "ale", tmp_path)
    assert main(["verify", str(store)]) == 0
    assert capsys.readouterr().out.strip() == f"{store}: sound"
    DAMAGE["corrupt row"](_shard(store, "ma", 2))
    _shard(store, "ma_hist", 4).unlink()
    _edit_attrs(store, dtype="uint8")
    assert main(["verify", str(store)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines == [
        f"{store}: attribute 'dtype' is 'uint8'; the build recorded 'float32' (edited after the "
        "build?)",
        f"{_shard(store, 'ma', 2)}: shard 2 of array 'ma': row 8 does not match its checksum "
        "(corrupted)",
        f"{_shard(store, 'ma_hist', 4)}: shard 4 of array 'ma_hist': missing (the build wrote "
        f"{_shard(pristine['ale'][0], 'ma_hist', 4).stat().st_size} bytes)"]
    assert captured.err.strip().endswith(f"daskmeta: error: {store}: 3 problems found")
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().out.strip() == (f"{tmp_path / 'nothing'} is not a daskmeta "
                                               "collection store (no zarr.json)")
    (store / "zarr.json").write_text("{")
    assert main(["verify", str(store)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{store / 'zarr.json'}: not valid Zarr metadata")
    with pytest.raises(DaskmetaError, match=rf"^{re.escape(str(store / 'zarr.json'))}: not valid "
                                            "Zarr metadata"):
        Collection.open(store)


# -- concurrency: a reader while the store is rebuilt; two builds at once ----------------------
def test_reader_of_a_rebuilt_store_is_told_to_reopen(pristine, tmp_path, pain_dataset):
    store = _copy(pristine, "mkda", tmp_path)
    coll = Collection.open(store)
    assert np.array_equal(_maps(MKDADensity().fit(coll))["stat"],
                          pristine["mkda"][1]["all"]["stat"])
    from daskmeta import _integrity
    from daskmeta._pass import StoredRows

    source_rows = StoredRows(coll)  # as a pass ships it to workers
    other = pain_dataset.slice(pain_dataset.ids[2:15])
    source = other.save(tmp_path / "other.zip")
    proc = subprocess.run(_ingest_cmd(source, store, "--overwrite"), env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    changed = r"the store changed since it was opened \(it was rebuilt, or is being rebuilt\); " \
              r"reopen it"
    with pytest.raises(DaskmetaError, match=changed):
        MKDADensity().fit(coll)
    with pytest.raises(DaskmetaError, match=changed):
        MKDADensity().fit(coll, select=coll.ids[4:8])
    with pytest.raises(DaskmetaError, match=changed):
        MKDADensity().fit_many(coll, {"a": coll.ids[2:9], "b": coll.ids[9:]})
    with pytest.raises(DaskmetaError, match=changed):
        coll.rows(coll.ids[:3]).compute()
    with pytest.raises(DaskmetaError, match=changed):
        coll.value_histograms([0, 1], 1.0)
    with pytest.raises(DaskmetaError, match=changed):
        read_rows(store / "ma", [0])  # this process opened the store at the old build
    assert re.search(changed, coll.verify()[0])
    # A worker process never opened the store: the pass's rows carry the generation the
    # collection was opened at, so the worker refuses the rebuilt rows too.
    pinned = dict(_integrity._pinned)
    _integrity._pinned.clear()
    try:
        with pytest.raises(DaskmetaError, match=changed):
            source_rows.reduce(np.arange(3), sparse.csr_matrix(np.ones((1, 3))).tocsc(),
                               MKDADensity(), np.float64, False)
    finally:
        _integrity._pinned.update(pinned)
    reopened = Collection.open(store)
    assert reopened.n_experiments == 13
    got = _maps(MKDADensity().fit(reopened))
    expected = _maps(MKDADensity(mask=MASK).fit(other))
    for m in MAPS:
        assert np.array_equal(got[m], expected[m])
    assert verify(store) == []


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two simulated datasets of 3,000 experiments with the same ids and different foci, as
    saved files: ingesting one takes seconds."""
    from daskmeta import simulate
    from daskmeta.space import Space

    root = tmp_path_factory.mktemp("simulated")
    space = Space(MASK)
    return [simulate.coordinates(n_experiments=3000, seed=seed, space=space).dataset.save(
        root / f"sim-{seed}.zip") for seed in (1, 2)]


def test_fits_while_another_process_rebuilds_the_store(tmp_path, simulated):
    from daskmeta.dataset import Dataset

    store = tmp_path / "sim.zarr"
    first, second = (Dataset.load(f) for f in simulated)
    assert first.ids == second.ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)  # foci dropped outside the mask
        coll = Collection.build(first, MKDAKernel(), store, mask=MASK, rows_per_shard=ROWS)
    select = coll.ids[::60]
    expected = _maps(MKDADensity().fit(coll, select=select))
    proc = subprocess.Popen(_ingest_cmd(simulated[1], store, "--overwrite"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    outcomes = []
    try:
        while proc.poll() is None:
            try:
                got = _maps(MKDADensity().fit(coll, select=select))
                outcomes.append(all(np.array_equal(got[m], expected[m]) for m in MAPS))
            except DaskmetaError as exc:
                outcomes.append(str(exc))
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert outcomes and outcomes[0] is True  # fitted before the rebuild began
    for outcome in outcomes:
        assert outcome is True or CLEAR.search(outcome), outcome  # never other maps
    errors = [o for o in outcomes if isinstance(o, str)]
    assert errors, "no fit saw the rebuild"
    with pytest.raises(DaskmetaError, match="the store changed since it was opened"):
        MKDADensity().fit(coll, select=select)
    reopened = Collection.open(store)
    got = _maps(MKDADensity().fit(reopened, select=select))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)
        new = _maps(MKDADensity(mask=MASK).fit(second, select=select))
    assert all(np.array_equal(got[m], new[m]) for m in MAPS)
    assert not all(np.array_equal(got[m], expected[m]) for m in MAPS)  # really another store


def test_two_builds_of_one_new_store_at_once(tmp_path, simulated):
    from daskmeta.dataset import Dataset

    store = tmp_path / "sim.zarr"
    procs = [subprocess.Popen(_ingest_cmd(simulated[0], store), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    loser = next(r for r in results if r[0] == 2)
    error_lines = [line for line in loser[2].splitlines() if "error" in line]
    assert error_lines == [f"daskmeta: error: another build of {store} is running (it holds "
                           f"{tmp_path / '.sim.zarr.lock'}); wait for it to finish, or stop it"]
    winner = next(r for r in results if r[0] == 0)
    assert winner[1].strip() == str(store.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.zarr"]  # no .creating, no lock
    assert verify(store) == []
    coll = Collection.open(store)
    select = coll.ids[::100]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)
        memory = _maps(MKDADensity(mask=MASK).fit(Dataset.load(simulated[0]), select=select))
    got = _maps(MKDADensity().fit(coll, select=select))
    assert all(np.array_equal(got[m], memory[m]) for m in MAPS)


def test_a_build_of_a_locked_store_fails_at_once_and_touches_nothing(tmp_path, pain_dataset):
    store = tmp_path / "s.zarr"
    with _integrity.build_lock(store):
        assert (tmp_path / ".s.zarr.lock").read_text().strip() == str(os.getpid())
        t0 = time.monotonic()
        for overwrite in (False, True):
            with pytest.raises(DaskmetaError, match=rf"^another build of {re.escape(str(store))} "
                                                    "is running"):
                Collection.build(pain_dataset, MKDAKernel(), store, mask=MASK,
                                 overwrite=overwrite)
        assert time.monotonic() - t0 < 5
        assert sorted(p.name for p in tmp_path.iterdir()) == [".s.zarr.lock"]
    assert list(tmp_path.iterdir()) == []  # the lock file goes with the lock
    coll = Collection.build(pain_dataset, MKDAKernel(), store, mask=MASK, rows_per_shard=ROWS)
    assert coll.n_experiments == 21 and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    assert json.loads((store / "zarr.json").read_text())["attributes"]["complete"] is True
    # A complete store as requested is opened without the lock (it may be read-only);
    # rebuilding it needs the lock.
    with _integrity.build_lock(store):
        again = Collection.build(pain_dataset, MKDAKernel(), store, mask=MASK)
        assert again.generation == coll.generation
        with pytest.raises(DaskmetaError, match="another build of"):
            Collection.build(pain_dataset, MKDAKernel(), store, mask=MASK, overwrite=True)
        with pytest.raises(DaskmetaError, match="another build of"):  # it would be refused
            Collection.build(pain_dataset, MKDAKernel(r=8), store, mask=MASK)
    assert Collection.open(store).generation == coll.generation  # untouched
