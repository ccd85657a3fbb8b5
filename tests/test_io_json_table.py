"""NiMARE JSON and foci-table readers, checked against NiMARE 0.22.1, and fuzzed."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskmeta
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io import read, read_nimare_json, read_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIN = DATA / "nimare-testdata" / "test_pain_dataset.json"

_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _nimare(path):
    from nimare.dataset import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dataset(str(path))


def _sorted(df):
    df = df[["id", "x", "y", "z"]].copy()
    df[["x", "y", "z"]] = df[["x", "y", "z"]].astype(float)
    return df.sort_values(["id", "x", "y", "z"]).reset_index(drop=True)


# -- NiMARE JSON -----------------------------------------------------------------------------


def test_pain_json_matches_nimare():
    ds = read_nimare_json(PAIN)
    assert ds.n_experiments == 21
    assert ds.foci["id"].nunique() == 19
    assert ds.n_foci == 243
    nds = _nimare(PAIN)
    assert ds.ids == [f"{study}-1" for study in json.loads(PAIN.read_text())]
    assert sorted(ds.ids) == sorted(nds.ids)  # NiMARE sorts; daskmeta keeps the file's order
    pd.testing.assert_frame_equal(_sorted(ds.foci), _sorted(nds.coordinates))
    nsizes = nds.metadata.set_index("id")["sample_sizes"]
    for exp_id, n in zip(ds.ids, ds.experiments["sample_size"], strict=True):
        assert n == np.mean(nsizes[exp_id])
    assert sorted(ds.experiments["study_id"]) == sorted(nds.metadata["study_id"])
    # Image paths by type, as written in the file.
    assert set(ds.images.columns) == {"id", "beta", "se", "t", "varcope", "z"}
    nimg = nds.images.set_index("id")
    assert ds.images.set_index("id").loc["pain_03.nidm-1", "z"] == nimg.loc[
        "pain_03.nidm-1", "z__relative"
    ]
    # Contrasts without coordinates are kept, without foci.
    no_foci = sorted(set(ds.ids) - set(ds.foci["id"]))
    assert no_foci == ["pain_01.nidm-1", "pain_02.nidm-1"]


def test_nidm_json_with_null_images():
    ds = read_nimare_json(DATA / "nimare-testdata" / "nidm_pain_dset.json")
    assert ds.n_experiments == 21
    images = ds.images.set_index("id")
    assert images.loc["pain_01.nidm-1", "beta"] == "pain_01.nidm/Contrast.nii.gz"
    assert pd.isna(images.loc["pain_01.nidm-1", "z"])


def _write_json(tmp_path, obj, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_json_spaces_sample_size_metadata_and_labels(tmp_path):
    obj = {
        "s1": {"contrasts": {
            "a": {"coords": {"space": "TAL", "x": [1, 2], "y": [3, 4], "z": [5, 6]},
                  "metadata": {"sample_sizes": [10, 20], "authors": "X"},
                  "labels": {"pain": 0.5, "heat": 0}},
            "b": {"coords": {"space": "ale_2mm", "x": [1], "y": [2], "z": [3]},
                  "metadata": {"sample_size": 7}, "labels": {"heat": 1}},
        }},
        "s2": {"contrasts": {"1": {"coords": {"x": [], "y": [], "z": []}}}},
    }
    ds = read_nimare_json(_write_json(tmp_path, obj))
    assert ds.ids == ["s1-a", "s1-b", "s2-1"]
    assert ds.experiments["study_id"].tolist() == ["s1", "s1", "s2"]
    np.testing.assert_array_equal(ds.experiments["sample_size"], [15.0, 7.0, np.nan])
    assert ds.experiments["space"].tolist() == ["TAL", "MNI", "UNKNOWN"]
    np.testing.assert_allclose(
        ds.foci[["x", "y", "z"]].to_numpy()[:2], daskmeta.tal2mni([[1, 3, 5], [2, 4, 6]])
    )
    assert ds.metadata.set_index("id").loc["s1-a", "authors"] == "X"
    assert ds.label_names == ["pain", "heat"]
    assert ds.get_studies_by_label("heat", label_threshold=0.5) == ["s1-b"]
    assert ds.get_studies_by_label("pain | heat") == ["s1-a", "s1-b"]


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2], r"expected a JSON object mapping study ids to studies; got list"),
        ({"s": 3}, r"study 's': expected an object with a 'contrasts' object"),
        ({"s": {"contrasts": {"c": []}}}, r"study 's', contrast 'c': expected an object"),
        ({"s": {"contrasts": {"c": {"coords": {"x": [1, 2], "y": [1], "z": [1, 2]}}}}},
         r"study 's', contrast 'c': coords x, y, z have different lengths \(2, 1, 2\)"),
        ({"s": {"contrasts": {"c": {"coords": {"x": [1, "dog"], "y": [1, 2], "z": [1, 2]}}}}},
         r"study 's', contrast 'c': coords.x holds values that are not finite numbers: 'dog'"),
        ({"s": {"contrasts": {"c": {"coords": {"x": [None], "y": [1], "z": [1]}}}}},
         r"coords.x holds values that are not finite numbers: None"),
        ({"s": {"contrasts": {"c": {"coords": {"x": {"a": 1}, "y": [1], "z": [1]}}}}},
         r"coords.x must be a list of numbers; got dict"),
        ({"s": {"contrasts": {"c": {"coords": {"space": "Dog", "x": [1], "y": [1], "z": [1]}}}}},
         r"contrast 'c': unknown coordinate space 'Dog'"),
        ({"s": {"contrasts": {"c": {"metadata": {"sample_sizes": ["ten"]}}}}},
         r"study 's', contrast 'c': metadata.sample_sizes must hold numbers"),
        ({"s": {"contrasts": {"c": {"metadata": {"sample_sizes": [0]}}}}},
         r"metadata.sample_sizes must be positive"),
        ({"s": {"contrasts": {"c": {"metadata": [1]}}}}, r"metadata must be an object; got list"),
        ({"s": {"contrasts": {"c": {"images": {"z": 3}}}}},
         r"images.z must be a path \(string\) or null; got 3"),
        ({"s": {"contrasts": {"c": {"labels": {"pain": "high"}}}}},
         r"label 'pain' must be a number; got 'high'"),
        ({"a-b": {"contrasts": {"c": {}}}, "a": {"contrasts": {"b-c": {}}}},
         r"study 'a', contrast 'b-c' and study 'a-b', contrast 'c' both give the experiment "
         r"id 'a-b-c'"),
    ],
)
def test_json_structure_errors(tmp_path, obj, message):
    path = _write_json(tmp_path, obj, name="broken.json")
    with pytest.raises(ParseError, match=f"^{re.escape(str(path))}: .*{message}") as info:
        read_nimare_json(path)
    if isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
        # Errors inside a contrast name the study and the contrast.
        assert "study '" in str(info.value) and "contrast '" in str(info.value)


def test_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "syntax.json"
    path.write_text('{\n  "s": {\n    "contrasts": {,}\n  }\n}\n')
    with pytest.raises(ParseError, match=r"syntax.json, line 3: invalid JSON: .*column 19"):
        read_nimare_json(path)


def test_registry_reads_json():
    assert read(PAIN).ids == read_nimare_json(PAIN).ids


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_SMALL = json.loads(PAIN.read_text())
_SMALL = {k: _SMALL[k] for k in list(_SMALL)[:4]}
_SMALL_PATHS = list(_paths(_SMALL))


def _check_parses_or_daskmeta_error(reader, path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = reader(path)
    except DaskmetaError as exc:
        assert path.name in str(exc)
        return None
    assert isinstance(ds, daskmeta.Dataset)
    assert np.isfinite(ds.foci[["x", "y", "z"]].to_numpy()).all()
    return ds


@_SETTINGS
@given(
    edits=st.lists(st.tuples(st.sampled_from(_SMALL_PATHS), _JSON_VALUES), min_size=1,
                   max_size=4)
)
def test_fuzz_json_structure(tmp_path, edits):
    obj = copy.deepcopy(_SMALL)
    for where, value in edits:
        if not where:
            obj = value
            continue
        node = obj
        try:
            for key in where[:-1]:
                node = node[key]
            node[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    path = tmp_path / "mutant.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    _check_parses_or_daskmeta_error(read_nimare_json, path)


_SMALL_TEXT = json.dumps(_SMALL, indent=1)


@_SETTINGS
@given(
    ops=st.lists(
        st.tuples(st.integers(0, len(_SMALL_TEXT)), st.integers(0, 8),
                  st.sampled_from(["", "{", "}", "[", "]", ",", '"', ":", "null", "1e999",
                                   "NaN", "-", "\n", "x", '"space": "TAL",'])),
        min_size=1, max_size=5)
)
def test_fuzz_json_text(tmp_path, ops):
    text = _SMALL_TEXT
    for pos, length, piece in ops:
        text = text[:pos] + piece + text[pos + length:]
    path = tmp_path / "mutant.json"
    path.write_text(text, encoding="utf-8")
    _check_parses_or_daskmeta_error(read_nimare_json, path)


# -- tables ----------------------------------------------------------------------------------

TABLE = """id,x,y,z,sample_size,space
exp-1,1,2,3,20,MNI
exp-1,4,5,6,20,MNI
exp-2,1,2,3,12,TAL
exp-2,-7.5,8,9,,talairach
exp-3,0,0,0,,
"""


def test_table_happy_path_with_sample_size_and_space(tmp_path):
    path = tmp_path / "foci.csv"
    path.write_text(TABLE)
    ds = read_table(path)
    assert ds.ids == ["exp-1", "exp-2", "exp-3"]
    np.testing.assert_array_equal(ds.experiments["sample_size"], [20, 12, np.nan])
    assert ds.experiments["space"].tolist() == ["MNI", "TAL", "MNI"]
    xyz = ds.foci[["x", "y", "z"]].to_numpy()
    np.testing.assert_array_equal(xyz[:2], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(xyz[2:4], daskmeta.tal2mni([[1, 2, 3], [-7.5, 8, 9]]))
    np.testing.assert_array_equal(xyz[4], [0, 0, 0])
    assert read(path).ids == ds.ids


@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".txt", "\t"), (".txt", ";"),
                                         (".csv", ","), (".dat", " ")])
def test_table_delimiters(tmp_path, suffix, sep):
    text = "# a comment\n\nID\tX\tY\tZ\n\na\t1\t2\t3\r\nb\t4\t5\t6\n".replace("\t", sep)
    path = tmp_path / f"foci{suffix}"
    path.write_text(text)
    ds = read_table(path)
    assert ds.ids == ["a", "b"]
    np.testing.assert_array_equal(ds.foci[["x", "y", "z"]].to_numpy(), [[1, 2, 3], [4, 5, 6]])


def test_table_without_optional_columns_defaults_to_mni(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("x\ty\tz\tid\tpeak_value\n1\t2\t3\ts1\t4.2\n")
    ds = read_table(path)
    assert ds.experiments["space"].tolist() == ["MNI"]
    assert np.isnan(ds.experiments["sample_size"][0])


def test_table_row_with_empty_coordinates_is_an_experiment_without_foci(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,x,y,z,sample_size\na,1,2,3,5\nb,,,,6\n")
    ds = read_table(path)
    assert ds.ids == ["a", "b"]
    assert ds.n_foci == 1
    assert ds.experiments["sample_size"].tolist() == [5, 6]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("id,x,y\na,1,2\n", 1, r"missing required column z; a foci table needs id, x, y, z"),
        ("name,x,y\na,1,2\n", 1, r"missing required columns id, z"),
        ("id,x,y,z\na,1,2,3\nb,1,dog,3\n", 3, r"y = 'dog' is not a finite number"),
        ("id,x,y,z\na,1,2,3\nb,1,2\n", 3, r"expected 4 fields \(as in the header\); found 3"),
        ("id,x,y,z\na,1,2,3,4\n", 2, r"expected 4 fields"),
        ("id,x,y,z\n,1,2,3\n", 2, r"empty id"),
        ("id,x,y,z\na,1,,3\n", 2, r"y = '' is not a finite number"),
        ("id,x,y,z\na,1,inf,3\n", 2, r"y = 'inf' is not a finite number"),
        ("id,x,y,z,sample_size\na,1,2,3,-2\n", 2, r"sample_size '-2' is not a positive number"),
        ("id,x,y,z,sample_size\na,1,2,3,2\na,1,2,3,3\n", 3,
         r"experiment 'a' has sample_size '3' here but '2' on line 2"),
        ("id,x,y,z,space\na,1,2,3,MNI\na,1,2,3,TAL\n", 3,
         r"experiment 'a' has space 'TAL' here but 'MNI' on line 2"),
        ("id,x,y,z,space\na,1,2,3,Dog\n", 2, r"unknown coordinate space 'Dog'"),
        ("id,x,y,z,x\na,1,2,3,4\n", 1, r"duplicate columns \['x'\]"),
    ],
)
def test_table_errors(tmp_path, text, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ParseError, match=f"^{re.escape(str(path))}, line {line}: {message}"):
        read_table(path)


def test_empty_table(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n# nothing\n")
    with pytest.raises(ParseError, match=r"empty.csv: the table is empty"):
        read_table(path)


_TABLE_PIECES = st.sampled_from(
    [",", "\t", "\n", "\r\n", '"', "#", "1", "-", ".", "e9", "nan", "inf", "TAL", "Dog", "0",
     "id", "x", " ", ";", "\x00", "1e400", ""]
)


@_SETTINGS
@given(ops=st.lists(st.tuples(st.integers(0, len(TABLE)), st.integers(0, 6), _TABLE_PIECES),
                    min_size=1, max_size=6))
def test_fuzz_table_mutations(tmp_path, ops):
    text = TABLE
    for pos, length, piece in ops:
        text = text[:pos] + piece + text[pos + length:]
    path = tmp_path / "mutant.csv"
    path.write_text(text, encoding="utf-8")
    _check_parses_or_daskmeta_error(read_table, path)


@_SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_fuzz_table_random_text(tmp_path, text):
    path = tmp_path / "random.tsv"
    path.write_text(text, encoding="utf-8")
    _check_parses_or_daskmeta_error(read_table, path)


# -- the registry --------------------------------------------------------------------------


def test_registry_unknown_format_lists_accepted(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(DaskmetaError, match=r"cannot tell the format of .*notes.txt.*"
                                            r"Accepted formats: sleuth: .*nimare-json"):
        read(path)
    with pytest.raises(DaskmetaError, match=r"does not exist\. Accepted formats"):
        read(tmp_path / "missing.csv")
    with pytest.raises(DaskmetaError, match=r"holds no data-neurosynth_\* or data-neuroquery_\*"):
        read(tmp_path)
    with pytest.raises(DaskmetaError, match=r"expects a path .* got int"):
        read(3)


def test_registry_reads_dataset_zip(tmp_path):
    ds = read_table_from_text(tmp_path, TABLE)
    saved = ds.save(tmp_path / "ds.zip")
    back = read(saved)
    assert back.ids == ds.ids
    pd.testing.assert_frame_equal(back.foci, ds.foci)


def read_table_from_text(tmp_path, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return read_table(path)
