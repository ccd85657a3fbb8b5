"""The in-memory Dataset: construction, selection, label expressions, persistence."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import daskmeta
from daskmeta import Dataset
from daskmeta.exceptions import DaskmetaError, DatasetError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AMYGDALA = DATA / "nimare-testdata" / "amygdala_roi.nii.gz"


def _foci(rows):
    return pd.DataFrame(rows, columns=["id", "x", "y", "z"])


@pytest.fixture
def small():
    experiments = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "study_id": ["s1", "s1", "s2", "s3"],
         "sample_size": [10, 20, np.nan, 40], "space": ["MNI", "TAL", "MNI", "UNKNOWN"]}
    )
    foci = _foci([("a", 0, 0, 0), ("b", 10, 0, 0), ("a", 1, 1, 1), ("d", -30, 20, 10)])
    labels = sparse.csr_matrix(
        np.array([[0.5, 0.0, 0.2], [0.0, 0.3, 0.0], [0.06, 0.06, 0.0], [0.0, 0.0, 0.9]])
    )
    metadata = pd.DataFrame({"id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "NA"],
                             "year": [2001, 2002, 2003, 2004]})
    return Dataset(experiments, foci, labels=labels, label_names=["pain", "heat", "itch"],
                   metadata=metadata, name="small")


# -- construction ----------------------------------------------------------------------------


def test_construction_basics(small):
    assert small.ids == ["a", "b", "c", "d"]
    assert small.n_foci == 4
    # Foci grouped by experiment, keeping their order within each.
    assert small.foci["id"].tolist() == ["a", "a", "b", "d"]
    assert small.foci[["x", "y", "z"]].to_numpy()[:2].tolist() == [[0, 0, 0], [1, 1, 1]]
    assert repr(small) == "Dataset(4 experiments, 4 foci, 3 labels, small)"
    assert len(small) == 4
    assert small.experiments["space"].tolist() == ["MNI", "TAL", "MNI", "UNKNOWN"]


def test_nan_coordinates_name_the_experiments():
    exp = pd.DataFrame({"id": ["e1", "e2", "e3"]})
    foci = _foci([("e1", 1, 2, 3), ("e2", np.nan, 2, 3), ("e3", 1, "x", 3), ("e3", 1, 2, 3)])
    with pytest.raises(DatasetError, match=r"2 foci have NaN or non-numeric coordinates, in "
                                           r"experiments e2, e3"):
        Dataset(exp, foci)


def test_unknown_space():
    exp = pd.DataFrame({"id": ["e1"], "space": ["Dog"]})
    with pytest.raises(DaskmetaError, match=r"experiment e1: unknown coordinate space 'Dog'; "
                                            r"allowed: MNI"):
        Dataset(exp, _foci([]))
    with pytest.raises(DaskmetaError, match=r"experiment e1: unknown coordinate space 'Cat'"):
        Dataset.from_foci(
            pd.DataFrame({"id": ["e1"], "x": [1], "y": [2], "z": [3], "space": ["Cat"]})
        )


def test_duplicate_ids():
    with pytest.raises(DatasetError, match=r"duplicate experiment ids: a"):
        Dataset(pd.DataFrame({"id": ["a", "b", "a"]}), _foci([]))


def test_foci_of_unknown_experiments():
    with pytest.raises(DatasetError, match=r"foci refer to experiments not in the dataset: "
                                           r"ghost"):
        Dataset(pd.DataFrame({"id": ["a"]}), _foci([("a", 1, 2, 3), ("ghost", 1, 2, 3)]))


def test_other_construction_errors():
    with pytest.raises(DatasetError, match=r"experiments need an 'id' column"):
        Dataset(pd.DataFrame({"name": ["a"]}), _foci([]))
    with pytest.raises(DatasetError, match=r"foci need columns id, x, y, z; missing \['z'\]"):
        Dataset(pd.DataFrame({"id": ["a"]}), pd.DataFrame({"id": ["a"], "x": [1], "y": [2]}))
    with pytest.raises(DatasetError, match=r"labels have shape \(1, 2\); expected \(1, 1\)"):
        Dataset(pd.DataFrame({"id": ["a"]}), _foci([]), labels=np.ones((1, 2)),
                label_names=["x"])
    with pytest.raises(DatasetError, match=r"label names must be unique"):
        Dataset(pd.DataFrame({"id": ["a"]}), _foci([]), labels=np.ones((1, 2)),
                label_names=["x", "x"])


def test_from_foci_converts_talairach():
    foci = pd.DataFrame({"id": ["t", "m", "u"], "x": [10.0] * 3, "y": [20.0] * 3,
                         "z": [30.0] * 3, "space": ["Talairach", "mni", "UNKNOWN"],
                         "sample_size": [5, 6, 7]})
    ds = Dataset.from_foci(foci)
    assert ds.ids == ["t", "m", "u"]
    assert ds.experiments["space"].tolist() == ["TAL", "MNI", "UNKNOWN"]
    assert ds.experiments["sample_size"].tolist() == [5, 6, 7]
    xyz = ds.foci[["x", "y", "z"]].to_numpy()
    np.testing.assert_allclose(xyz[0], daskmeta.tal2mni([10, 20, 30])[0])
    np.testing.assert_array_equal(xyz[1:], [[10, 20, 30], [10, 20, 30]])
    np.testing.assert_allclose(daskmeta.mni2tal(xyz[:1]), [[10, 20, 30]])


# -- slice and merge -------------------------------------------------------------------------


def test_slice(small):
    sub = small.slice(["d", "a"])
    assert sub.ids == ["a", "d"]  # the Dataset's order
    assert sub.foci["id"].tolist() == ["a", "a", "d"]
    np.testing.assert_array_equal(sub.labels.toarray(), [[0.5, 0, 0.2], [0, 0, 0.9]])
    assert sub.label_names == small.label_names
    assert sub.metadata["title"].tolist() == ["A", "NA"]
    assert sub.experiments["sample_size"].tolist() == [10, 40]
    with pytest.raises(DatasetError, match=r"unknown experiment ids: zz"):
        small.slice(["a", "zz"])


def test_merge_unites_labels_by_name(small):
    other = Dataset(
        pd.DataFrame({"id": ["x", "y"]}),
        _foci([("y", 5, 5, 5)]),
        labels=sparse.csr_matrix(np.array([[0.7, 0.0], [0.0, 0.4]])),
        label_names=["itch", "touch"],
        name="other",
    )
    merged = small.merge(other)
    assert merged.ids == ["a", "b", "c", "d", "x", "y"]
    assert merged.label_names == ["pain", "heat", "itch", "touch"]
    dense = merged.labels.toarray()
    np.testing.assert_array_equal(dense[:4, :3], small.labels.toarray())
    np.testing.assert_array_equal(dense[4:], [[0, 0, 0.7, 0], [0, 0, 0, 0.4]])
    assert merged.n_foci == 5
    assert merged.name == "small + other"
    assert merged.get_studies_by_label("itch", label_threshold=0.5) == ["d", "x"]
    assert merged.get_studies_by_label("touch") == ["y"]
    with pytest.raises(DatasetError, match=r"cannot merge: both datasets hold ids a, b"):
        small.merge(small.slice(["a", "b"]))


# -- label expressions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, threshold, expected",
    [
        ("pain", 0.001, ["a", "c"]),
        ("pain", 0.1, ["a"]),
        ("pain", 0.5, ["a"]),
        ("pain", 0.51, []),
        ("pain & heat", 0.001, ["c"]),
        ("pain | heat", 0.001, ["a", "b", "c"]),
        ("~pain", 0.001, ["b", "d"]),
        ("pain & ~heat", 0.001, ["a"]),
        ("~(pain | heat)", 0.001, ["d"]),
        ("(pain | itch) & ~heat", 0.001, ["a", "d"]),
        ("pain | heat & itch", 0.001, ["a", "c"]),  # & binds tighter than |
        ("  heat   ", 0.3, ["b"]),
        ("~~heat", 0.3, ["b"]),
    ],
)
def test_label_expressions(small, expr, threshold, expected):
    assert small.get_studies_by_label(expr, label_threshold=threshold) == expected
    assert small.label_mask(expr, threshold).tolist() == [i in expected for i in small.ids]


def test_label_threshold_old_keyword_is_deprecated(small):
    # NiMARE's Dataset.get_studies_by_label calls it label_threshold; "threshold" still works.
    with pytest.warns(DeprecationWarning, match=r"Dataset.get_studies_by_label\(\.\.\., "
                                                r"threshold=\.\.\.\) is deprecated; use "
                                                r"label_threshold"):
        assert small.get_studies_by_label("pain", threshold=0.1) == ["a"]
    with pytest.warns(DeprecationWarning, match="Dataset.label_mask"):
        assert small.label_mask("pain", threshold=0.1).tolist() == [True, False, False, False]
    with pytest.raises(DatasetError, match="give label_threshold only"):
        small.get_studies_by_label("pain", label_threshold=0.2, threshold=0.1)


def test_label_matches_nimare_semantics(small):
    # NiMARE: every requested label >= threshold.
    dense = small.labels.toarray()
    for t in (0.001, 0.06, 0.2):
        keep = (dense[:, 0] >= t) & (dense[:, 1] >= t)
        expected = [i for i, k in zip(small.ids, keep, strict=True) if k]
        assert small.get_studies_by_label("pain & heat", label_threshold=t) == expected


def test_unknown_label_suggests(small):
    with pytest.raises(DaskmetaError, match=r"unknown label 'pian' in expression 'pian & heat' "
                                            r"\(3 labels available\); did you mean pain\?"):
        small.get_studies_by_label("pian & heat")
    with pytest.raises(DaskmetaError, match=r"unknown label 'zzzzzz'.*available\)$"):
        small.get_studies_by_label("zzzzzz")


@pytest.mark.parametrize(
    "expr, message",
    [
        ("pain &", r"malformed label expression 'pain &': expected a label, '~' or '\(' but "
                   r"found end of expression"),
        ("(pain | heat", r"unbalanced parenthesis in label expression"),
        ("pain )", r"malformed label expression 'pain \)': unexpected '\)'"),
        ("| heat", r"expected a label, '~' or '\(' but found '\|'"),
        ("", r"a label expression must be a non-empty string; got ''"),
        ("   ", r"must be a non-empty string"),
        ("()", r"but found '\)'"),
    ],
)
def test_malformed_label_expressions(small, expr, message):
    with pytest.raises(DaskmetaError, match=message):
        small.get_studies_by_label(expr)


def test_label_expression_not_a_string(small):
    with pytest.raises(DaskmetaError, match=r"must be a non-empty string; got \['pain'\]"):
        small.get_studies_by_label(["pain"])


# -- spatial queries -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scattered():
    rng = np.random.default_rng(0)
    n_exp = 60
    ids = [f"e{i}" for i in range(n_exp)]
    rows = []
    for i in ids:
        for _ in range(rng.integers(0, 6)):
            rows.append((i, *rng.uniform([-70, -100, -50], [70, 70, 80])))
    # A few foci on the amygdalae, and some near its edge.
    for k, i in enumerate(ids[:8]):
        rows.append((i, (-1) ** k * 22 + rng.normal(0, 3), -4 + rng.normal(0, 3),
                     -18 + rng.normal(0, 3)))
    return Dataset(pd.DataFrame({"id": ids}), _foci(rows))


def test_get_studies_by_mask_brute_force(scattered):
    img = nib.load(str(AMYGDALA))
    data = np.asanyarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    hits = set()
    for i, x, y, z in scattered.foci.itertuples(index=False):
        ijk = np.round(inv @ [x, y, z, 1])[:3].astype(int)
        if np.all(ijk >= 0) and np.all(ijk < data.shape[:3]) and data[tuple(ijk)] != 0:
            hits.add(i)
    expected = [i for i in scattered.ids if i in hits]
    assert len(expected) >= 3
    assert scattered.get_studies_by_mask(AMYGDALA) == expected
    assert scattered.get_studies_by_mask(img) == expected


def test_get_studies_by_coordinate_brute_force(scattered):
    xyz = scattered.foci[["x", "y", "z"]].to_numpy()
    ids = scattered.foci["id"].to_numpy()
    cases = [([[22, -4, -18]], 10), ([[0, 0, 0], [-40, 20, 30]], 25), ([[0, 0, 0]], 0.1)]
    for centers, r in cases:
        d = np.linalg.norm(xyz[:, None, :] - np.asarray(centers, float)[None], axis=2)
        near = set(ids[(d <= r).any(axis=1)])
        expected = [i for i in scattered.ids if i in near]
        assert scattered.get_studies_by_coordinate(centers, r=r) == expected
    assert scattered.get_studies_by_coordinate([22, -4, -18], r=10) == \
        scattered.get_studies_by_coordinate([[22, -4, -18]], r=10)


# -- save and load -----------------------------------------------------------------------------


def _assert_same(a, b):
    assert a.ids == b.ids
    assert a.experiments["study_id"].tolist() == b.experiments["study_id"].tolist()
    np.testing.assert_array_equal(a.experiments["sample_size"], b.experiments["sample_size"])
    assert a.experiments["space"].tolist() == b.experiments["space"].tolist()
    pd.testing.assert_frame_equal(a.foci, b.foci)
    assert a.label_names == b.label_names
    assert (a.labels != b.labels).nnz == 0
    assert a.labels.shape == b.labels.shape
    assert a.name == b.name


def test_save_load_round_trip(tmp_path, small):
    path = small.save(tmp_path / "small.zip")
    back = Dataset.load(path)
    _assert_same(small, back)
    pd.testing.assert_frame_equal(back.metadata, small.metadata, check_dtype=False)
    assert back.metadata["title"].tolist() == ["A", "B", "C", "NA"]
    assert back.fingerprint() == small.fingerprint()


@pytest.fixture
def typed():
    """A Dataset whose metadata columns pandas would re-type if it inferred them from text."""
    ids = ["a", "b", "c"]
    metadata = pd.DataFrame({
        "id": ids,
        "pmid": ["00123", "2011", "0"],  # text of digits, with leading zeros
        "year": [2001, 2002, 2003],
        "score": [0.1, np.nan, 1e-300],
        "included": [True, False, True],
        "note": pd.Series(["x", "1.5", None], dtype=object),
    })
    return Dataset(pd.DataFrame({"id": ids, "sample_size": [10, np.nan, 12]}),
                   _foci([("a", 0.1, -2.5, 3), ("c", 1 / 3, 0, 0)]), metadata=metadata,
                   name="typed")


def test_save_load_keeps_column_dtypes(tmp_path, typed):
    back = Dataset.load(typed.save(tmp_path / "typed.zip"))
    _assert_same(typed, back)
    meta = back.metadata
    assert meta.dtypes.to_dict() == typed.metadata.dtypes.to_dict()
    assert meta["pmid"].tolist() == ["00123", "2011", "0"]
    assert meta["year"].tolist() == [2001, 2002, 2003]
    np.testing.assert_array_equal(meta["score"], [0.1, np.nan, 1e-300])
    assert meta["included"].tolist() == [True, False, True]
    # Missing stays missing (NaN in an object column, as before).
    assert meta["note"].tolist()[:2] == ["x", "1.5"] and pd.isna(meta["note"][2])
    pd.testing.assert_frame_equal(meta.drop(columns="note"), typed.metadata.drop(columns="note"))
    for key in ("experiments", "foci", "images"):
        pd.testing.assert_frame_equal(getattr(back, key), getattr(typed, key))


def test_load_file_without_dtypes(tmp_path, typed):
    # A file written before save recorded the dtypes: column types are inferred, as before.
    new = typed.save(tmp_path / "new.zip")
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                assert set(manifest["dtypes"]) == {"experiments", "foci", "metadata", "images"}
                assert manifest["dtypes"]["metadata"]["pmid"] in ("object", "str")
                del manifest["dtypes"]
                data = json.dumps(manifest)
            dst.writestr(info, data)
    back = Dataset.load(old)
    _assert_same(typed, back)
    meta = back.metadata
    assert meta["pmid"].tolist() == [123, 2011, 0]  # pandas' inference, as before
    assert meta["year"].tolist() == [2001, 2002, 2003]
    np.testing.assert_array_equal(meta["score"], [0.1, np.nan, 1e-300])
    assert meta["included"].tolist() == [True, False, True]
    assert meta["note"].tolist()[:2] == ["x", "1.5"] and pd.isna(meta["note"][2])


def test_save_load_real_dataset(tmp_path):
    from daskmeta.io import read_nimare_json

    ds = read_nimare_json(DATA / "nimare-testdata" / "test_pain_dataset.json")
    back = Dataset.load(ds.save(tmp_path / "pain.zip"))
    _assert_same(ds, back)
    pd.testing.assert_frame_equal(back.images, ds.images)


def test_load_corrupt_files(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match=r"junk.zip: not a daskmeta dataset file"):
        Dataset.load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(DatasetError, match=r"other.zip: missing or invalid manifest.json"):
        Dataset.load(other)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("manifest.json", '{"format": "something-else"}')
    with pytest.raises(DatasetError, match=r"wrong.zip: not a daskmeta dataset file"):
        Dataset.load(wrong)
    newer = tmp_path / "newer.zip"
    with zipfile.ZipFile(newer, "w") as zf:
        zf.writestr("manifest.json", '{"format": "daskmeta-dataset", "version": 99}')
    with pytest.raises(DatasetError, match=r"written by a newer daskmeta \(format 99\)"):
        Dataset.load(newer)
    truncated = tmp_path / "truncated.zip"
    full = Dataset(pd.DataFrame({"id": ["a"]}), _foci([("a", 1, 2, 3)])).save(
        tmp_path / "full.zip").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError, match=r"truncated.zip: not a daskmeta dataset file"):
        Dataset.load(truncated)
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as zf:
        zf.writestr("manifest.json", '{"format": "daskmeta-dataset", "version": 1, '
                                     '"label_names": []}')
    with pytest.raises(DatasetError, match=r"partial.zip: damaged daskmeta dataset file "
                                           r"\(.*labels.npz"):
        Dataset.load(partial)


_ID = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.one_of(_ID, st.sampled_from(["NA", "nan", "null", "None", "-1", "1.0",
                                                   " x ", "a\tb", 'q"q', "l1\nl2", "c\rd"])),
                 min_size=1, max_size=6, unique=True),
    data=st.data(),
)
def test_save_load_round_trip_hypothesis(tmp_path, ids, data):
    coord = st.floats(-1e4, 1e4, allow_nan=False)
    rows = [(i, data.draw(coord), data.draw(coord), data.draw(coord))
            for i in ids for _ in range(data.draw(st.integers(0, 3)))]
    sizes = [data.draw(st.one_of(st.just(np.nan), st.floats(1, 1e4))) for _ in ids]
    weights = np.asarray([[data.draw(st.sampled_from([0.0, 0.25, 1e-8])) for _ in range(2)]
                          for _ in ids])
    ds = Dataset(pd.DataFrame({"id": ids, "sample_size": sizes}), _foci(rows),
                 labels=sparse.csr_matrix(weights), label_names=["l a", "l&b"],
                 metadata=pd.DataFrame({"id": ids, "note": [f"note {i}" for i in ids],
                                        "code": ids}))
    back = Dataset.load(ds.save(tmp_path / "h.zip"))
    _assert_same(ds, back)
    assert back.metadata["note"].tolist() == [f"note {i}" for i in ids]
    assert back.metadata["code"].tolist() == ids  # text, even where it reads as a number
