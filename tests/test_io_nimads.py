"""NIMADS and NeuroStore parquet studysets: counts and ALE against NiMARE 0.22.1 on its own
fixtures (read from the installed package), round trips, bad input, fuzzing."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK, TESTDATA, assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskmeta
from daskmeta.estimators import ALE
from daskmeta.exceptions import DaskmetaError, DaskmetaWarning, ParseError
from daskmeta.io import read, read_neurostore, read_nimads, write_neurostore, write_nimads

nimare = pytest.importorskip("nimare")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from nimare.nimads import Studyset  # noqa: E402

logging.getLogger("nimare").setLevel(logging.CRITICAL)
NIMARE_DIR = Path(nimare.__file__).parent
DATA = NIMARE_DIR / "tests" / "data"
PARQUET = NIMARE_DIR / "resources" / "neurostore_parquet_studyset"
NIMADS = DATA / "nimads_studyset.json"
ANNOTATION = DATA / "nimads_annotation.json"
NIDM = DATA / "nidm_pain_studyset.json"
SIZES = DATA / "sample_size_nimads_studyset.json"


def _studyset(source, annotation=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = json.loads(Path(annotation).read_text()) if annotation else None
        return Studyset(str(source), annotations=ann, mask=str(NIMARE_MASK))


def _n_images(ds):
    return int(ds.images.drop(columns="id").notna().to_numpy().sum())


# -- must show 1: counts and ALE equal to NiMARE's --------------------------------------------


@pytest.mark.parametrize(("source", "annotation"), [(NIMADS, ANNOTATION), (NIDM, None),
                                                    (SIZES, None), (PARQUET, None)],
                         ids=["nimads+annotation", "nidm_pain", "sample_sizes", "parquet"])
def test_counts_sample_sizes_and_labels_equal_nimare(source, annotation):
    theirs = _studyset(source, annotation)
    ours = (read_neurostore(source) if source.is_dir()
            else read_nimads(source, annotation))
    assert ours.n_experiments == len(theirs.ids)
    assert ours.experiments["study_id"].nunique() == len(theirs.study_ids)
    assert ours.n_foci == theirs.store.n_points
    assert _n_images(ours) == theirs.store.n_images
    assert sorted(ours.ids) == sorted(theirs.ids.tolist())
    # sample sizes, per analysis id
    expected = pd.Series(theirs.sample_sizes(), index=theirs.ids)
    got = ours.experiments.set_index("id")["sample_size"].reindex(expected.index)
    assert np.allclose(got, expected, equal_nan=True)
    # foci in MNI, per analysis, in NiMARE's order within it
    coords = theirs.coordinates
    a = ours.foci.iloc[np.argsort(ours.foci["id"].to_numpy(dtype=str), kind="stable")]
    b = coords.iloc[np.argsort(coords["id"].to_numpy(dtype=str), kind="stable")]
    assert a["id"].tolist() == b["id"].tolist()
    assert np.abs(a[["x", "y", "z"]].to_numpy() - b[["x", "y", "z"]].to_numpy()).max() < 1e-9
    # labels: NiMARE's label matrix, column by column
    if theirs.store.annotations:
        block = theirs.label_block()
        rows = pd.Index(ours.ids).get_indexer(theirs.ids)
        names = list(block.labels)
        numeric = [n for n in names if n in ours.label_names]
        theirs_m = block.values.tocsc()
        assert numeric, "no labels read"
        for name in numeric:
            col = theirs_m[:, names.index(name)].toarray().ravel()
            mine_col = ours.labels[:, ours.label_names.index(name)].toarray().ravel()[rows]
            assert np.allclose(mine_col, col), name
        # the labels NiMARE's matrix holds any value for are all ours
        held = {names[j] for j in np.unique(theirs_m.nonzero()[1])}
        assert held <= set(ours.label_names)


@pytest.mark.parametrize(("source", "kwargs"), [(SIZES, {}),
                                                (PARQUET, {"kernel__sample_size": 20})],
                         ids=["nimads", "parquet"])
def test_ale_equals_nimare_on_the_same_mask(source, kwargs):
    from nimare.meta.cbma import ALE as NiMAREALE

    theirs = NiMAREALE(**kwargs).fit(_studyset(source))
    ds = read(source)
    with warnings.catch_warnings():  # one focus of SIZES lies > 10 mm outside the mask
        warnings.simplefilter("ignore", DaskmetaWarning)
        ours = ALE(mask=str(NIMARE_MASK), **kwargs).fit(ds)
    assert_close(ours.get_map("stat", "array"), theirs.get_map("stat", return_type="array"),
                 1e-6, "stat")
    assert_close(ours.get_map("p", "array"), theirs.get_map("p", return_type="array"), 1e-4,
                 "p")
    assert_close(ours.get_map("z", "array"), theirs.get_map("z", return_type="array"), 1e-3,
                 "z")


# -- must show 2: round trips -------------------------------------------------------------------


def _assert_same(a, b, labels=True):
    assert a.ids == b.ids
    assert a.experiments["study_id"].tolist() == b.experiments["study_id"].tolist()
    assert np.allclose(a.experiments["sample_size"], b.experiments["sample_size"],
                       equal_nan=True)
    assert a.foci["id"].tolist() == b.foci["id"].tolist()
    assert np.array_equal(a.foci[["x", "y", "z"]].to_numpy(), b.foci[["x", "y", "z"]].to_numpy())
    cols = sorted(c for c in a.images.columns if c != "id")
    assert cols == sorted(c for c in b.images.columns if c != "id")
    if cols:
        assert a.images[cols].fillna("").equals(b.images[cols].fillna(""))
    if labels:
        assert a.label_names == b.label_names
        assert (a.labels != b.labels).nnz == 0


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_dataset_nimads_dataset_round_trip(tmp_path, suffix):
    for source, ann in ((NIDM, None), (NIMADS, ANNOTATION), (SIZES, None)):
        ds = read_nimads(source, ann)
        out = write_nimads(ds, tmp_path / f"out{suffix}")
        assert read(out).n_experiments == ds.n_experiments  # the registry recognises it
        _assert_same(ds, read_nimads(out))
    # labels with several names and weights, sample sizes and images, from a NiMARE JSON
    pain = daskmeta.io.read_nimare_json(TESTDATA / "nidm_pain_dset.json")
    rng = np.random.default_rng(0)
    from scipy import sparse
    weights = sparse.random(pain.n_experiments, 3, density=0.5, random_state=rng,
                            format="csr")
    pain = daskmeta.Dataset(pain.experiments, pain.foci, labels=weights,
                            label_names=["a", "b c", "d"], images=pain.images)
    _assert_same(pain, read_nimads(write_nimads(pain, tmp_path / f"pain{suffix}")))


def test_sleuth_nimads_round_trip(tmp_path):
    ds = daskmeta.io.read_sleuth(TESTDATA / "test_sleuth_file2.txt")
    assert (ds.experiments["space"] == "TAL").all()
    back = read_nimads(write_nimads(ds, tmp_path / "sleuth.json"))
    _assert_same(ds, back)


def test_neurostore_round_trip(tmp_path):
    ds = read_nimads(NIDM)
    out = write_neurostore(ds, tmp_path / "release")
    _assert_same(ds, read(out))
    based = read_neurostore(out, basepath=tmp_path / "images")
    assert based.images["t"].iloc[0] == str(tmp_path / "images" / ds.images["t"].iloc[0])
    empty = read_nimads({"studies": []})
    assert read(write_neurostore(empty, tmp_path / "empty")).n_experiments == 0
    assert read_nimads(write_nimads(empty, tmp_path / "empty.json")).n_experiments == 0
    # NiMARE reads what daskmeta writes, with the same counts
    theirs = _studyset(out)
    assert (len(theirs.ids), theirs.store.n_points) == (ds.n_experiments, ds.n_foci)
    with pytest.raises(DaskmetaError, match="exists; pass overwrite=True"):
        write_neurostore(ds, out)


def test_registry_tells_nimads_from_nimare_json(tmp_path):
    nimare_json = {"s1": {"metadata": {"studies": [1, 2]}, "contrasts": {"c": {"coords": {
        "space": "MNI", "x": [0], "y": [0], "z": [0]}}}}}
    path = tmp_path / "nimare.json"
    path.write_text(json.dumps(nimare_json))
    assert read(path).ids == ["s1-c"]
    nimads = tmp_path / "nimads.json"
    nimads.write_text(json.dumps({"id": "x", "studies": [{"id": "s1", "analyses": [
        {"id": "c", "points": [{"coordinates": [0, 0, 0], "space": "MNI"}]}]}]}))
    assert read(nimads).ids == ["s1-c"]
    from daskmeta.io._registry import _guess_format
    assert (_guess_format(path).name, _guess_format(nimads).name) == ("nimare-json", "nimads")
    assert _guess_format(PARQUET).name == "neurostore"


# -- bad input --------------------------------------------------------------------------------


def _copy_release(tmp_path) -> Path:
    folder = tmp_path / "release"
    shutil.copytree(PARQUET, folder)
    return folder


def _rewrite(folder, table, change):
    path = folder / f"{table}.parquet"
    frame = pq.read_table(path).to_pandas()
    pq.write_table(pa.Table.from_pandas(change(frame), preserve_index=False), path)


def test_neurostore_bad_input(tmp_path):
    folder = _copy_release(tmp_path)
    (folder / "studyset.json").unlink()
    with pytest.raises(ParseError, match=r"release: no studyset.json here"):
        read_neurostore(folder)
    folder = _copy_release(tmp_path / "b")
    manifest = json.loads((folder / "studyset.json").read_text())
    for key, value, message in (("format", "csv", r"key 'format' is 'csv'"),
                                ("version", 2, r"key 'version' is 2; this reader reads "
                                               r"version 1"),
                                ("tables", {"studies": "../studies.parquet"},
                                 r"tables.studies must be a file name")):
        (folder / "studyset.json").write_text(json.dumps(manifest | {key: value}))
        with pytest.raises(ParseError, match=r"studyset\.json: " + message):
            read_neurostore(folder)
    (folder / "studyset.json").write_text(json.dumps(manifest))
    _rewrite(folder, "coordinates", lambda f: f.drop(columns="space"))
    with pytest.raises(ParseError, match=r"coordinates\.parquet: the coordinates table has "
                                         r"no column 'space'"):
        read_neurostore(folder)
    folder = _copy_release(tmp_path / "c")
    _rewrite(folder, "analyses", lambda f: pd.concat([f, f.iloc[:1]]))
    with pytest.raises(ParseError, match=r"analyses\.parquet: duplicate analysis ids in the "
                                         r"analyses table: '22XctM7fX2Dw-D68jH5p6HXSj'"):
        read_neurostore(folder)
    folder = _copy_release(tmp_path / "d")
    (folder / "analyses.parquet").unlink()
    with pytest.raises(ParseError, match=r"the analyses table is missing"):
        read_neurostore(folder)
    folder = _copy_release(tmp_path / "e")
    _rewrite(folder, "coordinates", lambda f: f.assign(x=f["x"].astype(str)))
    with pytest.raises(ParseError, match=r"column 'x' must be numeric"):
        read_neurostore(folder)
    folder = _copy_release(tmp_path / "f")
    _rewrite(folder, "coordinates", lambda f: f.assign(space="Dog"))
    with pytest.raises(ParseError, match=r"unknown coordinate space 'Dog'"):
        read_neurostore(folder)


@pytest.mark.parametrize(("doc", "message"), [
    ([], r"a NIMADS studyset is a JSON object with a 'studies' list; got list"),
    ({"name": "x"}, r"a NIMADS studyset needs a 'studies' key"),
    ({"studies": {}}, r"studyset: studies must be a list or null; got dict"),
    ({"studies": [3]}, r"studies\[0\] must be an object; got int"),
    ({"studies": [{"id": "s", "analyses": [{"id": "a", "points": [
        {"coordinates": [1, 2]}]}]}]},
     r"study 's', analysis 'a', points\[0\]: coordinates must be three finite numbers"),
    ({"studies": [{"id": "s", "analyses": [{"id": "a"}, {"id": "a"}]}]},
     r"study 's', analysis 'a': duplicate analysis"),
    ({"studies": [{"id": "s", "analyses": [{"id": "a", "points": [
        {"coordinates": [1, 2, 3], "space": "Dog"}]}]}]},
     r"study 's', analysis 'a', points\[0\]: unknown coordinate space 'Dog'"),
    ({"studies": [{"id": "s", "metadata": {"sample_size": -3}, "analyses": [{"id": "a"}]}]},
     r"study 's', analysis 'a': sample_size must be positive"),
])
def test_nimads_wrong_shape(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ParseError, match=r"bad\.json: " + message):
        read_nimads(path)


def test_nimads_huge_numbers_are_errors_or_ignored():
    big = 10 ** 400  # JSON integers have no size limit; float() of this overflows
    doc = {"studies": [{"id": "s", "analyses": [{"id": "a", "points": [
        {"coordinates": [big, 0, 0]}]}]}]}
    with pytest.raises(ParseError, match=r"points\[0\]: coordinates must be three finite "
                                         r"numbers"):
        read_nimads(doc)
    doc = {"studies": [{"id": "s", "analyses": [{"id": "a", "weights": [big],
                                                  "conditions": ["c"]}]}],
           "annotations": [{"id": "n", "notes": [{"analysis": "a", "note": {"w": big}}]}]}
    ds = read_nimads(doc)
    assert ds.metadata["weights"].tolist() == [[1.0]] and ds.labels.nnz == 0


def test_nimads_tolerance():
    doc = {"studies": [{"id": "s", "metadata": {"sample_sizes": ["12", 14]}, "analyses": [
        {"id": "a", "points": [{"coordinates": [1, 2, 3], "space": "TAL",
                                "value": [{"kind": "Z", "value": 3}]},
                               {"coordinates": [4, 5, 6], "space": None,
                                "values": [{"kind": "t", "value": 2}]}],
         "conditions": [{"name": "c1"}, "c2"], "weights": [-1],
         "images": [{"url": "https://x/page", "filename": "t.nii.gz", "value_type": "T map"},
                    {"url": "v.nii.gz", "value_type": "variance"},
                    {"url": "f.nii.gz", "value_type": "F map"}]},
        {"id": "b", "metadata": {"sample_size": 30}}]}]}
    ann = {"id": "n", "note_keys": {"inc": {"type": "boolean"}, "w": "number"},
           "notes": [{"study": "s", "analysis": "a", "note": {"inc": True, "w": 0.5}},
                     {"analysis": "s-b", "note": {"inc": "false", "w": "x"}},
                     {"analysis": "nowhere", "note": {"inc": True}}]}
    ds = read_nimads(doc, ann)
    assert ds.ids == ["s-a", "s-b"]
    assert ds.experiments["sample_size"].tolist() == [13.0, 30.0]
    assert ds.experiments["space"].tolist() == ["TAL", "UNKNOWN"]
    assert ds.images.set_index("id").loc["s-a", "t"] == "t.nii.gz"
    assert ds.images.set_index("id").loc["s-a", "varcope"] == "v.nii.gz"
    assert "f" not in ds.images.columns
    assert ds.metadata.set_index("id").loc["s-a", "weights"] == [-1.0, 1.0]
    assert ds.label_names == ["inc", "w"]
    assert ds.labels.toarray().tolist() == [[1.0, 0.5], [0.0, 0.0]]


# -- fuzzing: only the package's own errors ------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                     st.text(max_size=4))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["id", "studies", "analyses", "points", "coordinates", "space", "images", "metadata",
         "sample_size", "sample_sizes", "value_type", "url", "values", "notes", "note",
         "analysis", "study", "annotations", "weights", "conditions", "texts"]), inner,
        max_size=4)), max_leaves=12)


def _mutate(doc, path, value):
    """Set ``value`` at ``path``, if an earlier mutation left that path in place."""
    node = doc
    try:
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    except (IndexError, KeyError, TypeError):
        pass
    return doc


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_nimads_raises_only_daskmeta_errors(data):
    base = {"studies": [{"id": "s", "metadata": {"sample_size": 3}, "analyses": [
        {"id": "a", "metadata": {}, "points": [{"coordinates": [1.0, 2.0, 3.0],
                                                "space": "MNI", "values": []}],
         "images": [{"url": "z.nii.gz", "value_type": "Z map"}], "weights": [],
         "conditions": []}]}],
        "annotations": [{"id": "n", "notes": [{"analysis": "a", "note": {"x": 1}}]}]}
    paths = [("studies",), ("studies", 0), ("studies", 0, "id"), ("studies", 0, "metadata"),
             ("studies", 0, "analyses"), ("studies", 0, "analyses", 0),
             ("studies", 0, "analyses", 0, "points"),
             ("studies", 0, "analyses", 0, "points", 0),
             ("studies", 0, "analyses", 0, "points", 0, "coordinates"),
             ("studies", 0, "analyses", 0, "points", 0, "space"),
             ("studies", 0, "analyses", 0, "points", 0, "values"),
             ("studies", 0, "analyses", 0, "images", 0),
             ("studies", 0, "analyses", 0, "metadata"), ("studies", 0, "metadata", "sample_size"),
             ("studies", 0, "analyses", 0, "weights"), ("annotations",),
             ("annotations", 0, "notes"), ("annotations", 0, "notes", 0, "note")]
    doc = base
    for _ in range(data.draw(st.integers(1, 3))):
        doc = _mutate(doc, data.draw(st.sampled_from(paths)), data.draw(_json))
        try:
            json.dumps(doc)
        except (TypeError, ValueError):
            return
        try:
            read_nimads(json.loads(json.dumps(doc)))
        except DaskmetaError:
            return
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{type(exc).__name__}: {exc} for {doc!r}") from exc


@settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_parquet_tables_raise_only_daskmeta_errors(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz") / "release"
    shutil.copytree(PARQUET, folder)
    for _ in range(data.draw(st.integers(1, 3))):
        table = data.draw(st.sampled_from(["studies", "analyses", "coordinates", "metadata",
                                           "annotations", "images"]))
        frame = pq.read_table(folder / f"{table}.parquet").to_pandas()
        action = data.draw(st.sampled_from(["drop_column", "drop_rows", "retype", "nulls",
                                            "duplicate"]))
        col = data.draw(st.sampled_from(list(frame.columns[:8])))
        if action == "drop_column":
            frame = frame.drop(columns=col)
        elif action == "drop_rows":
            frame = frame.iloc[data.draw(st.integers(0, len(frame))):]
        elif action == "retype":
            frame[col] = data.draw(st.sampled_from([
                frame[col].astype(str), pd.Series([1.5] * len(frame)),
                pd.Series([True] * len(frame)), pd.Series([None] * len(frame), dtype=object)]))
        elif action == "nulls":
            frame.loc[frame.index[:1], col] = None
        else:
            frame = pd.concat([frame, frame.iloc[:1]])
        try:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                           folder / f"{table}.parquet")
        except (pa.ArrowException, TypeError, ValueError):
            continue
    try:
        ds = read_neurostore(folder)
    except DaskmetaError:
        return
    assert ds.n_experiments <= 8
