"""Sleuth / GingerALE reading and writing, checked against NiMARE 0.22.1."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskmeta
from daskmeta.exceptions import DaskmetaError, DatasetError, ParseError
from daskmeta.io import read, read_sleuth, write_sleuth

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"

GOOD = {
    # file: (experiments, foci, sample sizes in file order)
    "test_sleuth_file.txt": (3, 7, [50, 46, 20]),
    "test_sleuth_file2.txt": (2, 4, [25, 20]),
}
BAD = {
    "test_sleuth_file3.txt": (5, r"coordinate 'dog' is not a number"),
    "test_sleuth_file4.txt": (5, r"expected 3 coordinates .* found 2 values"),
    "test_sleuth_file5.txt": (1, r"unknown reference space 'Dog'"),
}

VALID = """// Reference=MNI
// Smith et al., 2010: pain > rest
// Subjects=20
-16\t-58\t-22
26\t-64\t-50

// Jones, 2012; heat
// Subjects=15
12 -70 -42
"""


def _nimare_dataset(path):
    from nimare.io import convert_sleuth_to_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_sleuth_to_dataset(str(path))


def _sorted_coords(ids, xyz):
    df = pd.DataFrame({"id": ids, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    return df.sort_values(["id", "x", "y", "z"]).reset_index(drop=True)


def test_fixture_files_present():
    names = sorted(p.name for p in TESTDATA.glob("test_sleuth_file*.txt"))
    assert names == sorted(list(GOOD) + list(BAD))


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_fixture_matches_nimare(name):
    path = TESTDATA / name
    n_exp, n_foci, sizes = GOOD[name]
    ds = read_sleuth(path)
    assert ds.n_experiments == n_exp
    assert ds.n_foci == n_foci
    assert ds.experiments["sample_size"].tolist() == sizes

    nds = _nimare_dataset(path)
    # Same ids (NiMARE sorts its ids; daskmeta keeps the file's order).
    assert sorted(ds.ids) == sorted(nds.ids)
    # Same sample sizes per id.
    nmeta = nds.metadata.set_index("id")["sample_sizes"]
    for i, n in zip(ds.ids, ds.experiments["sample_size"], strict=True):
        assert nmeta[i] == [int(n)]
    # NiMARE's default target (ale_2mm) converts Talairach foci with the same Lancaster
    # icbm_other transform; daskmeta stores MNI, so both hold MNI here.
    ours = _sorted_coords(ds.foci["id"].to_numpy(), ds.foci[["x", "y", "z"]].to_numpy())
    theirs = _sorted_coords(
        nds.coordinates["id"].to_numpy(), nds.coordinates[["x", "y", "z"]].to_numpy(float)
    )
    assert ours["id"].tolist() == theirs["id"].tolist()
    np.testing.assert_allclose(
        ours[["x", "y", "z"]].to_numpy(), theirs[["x", "y", "z"]].to_numpy(), atol=1e-9
    )


def test_talairach_file_converted_and_space_kept():
    ds = read_sleuth(TESTDATA / "test_sleuth_file2.txt")
    assert set(ds.experiments["space"]) == {"TAL"}
    first = ds.foci[["x", "y", "z"]].to_numpy()[0]
    np.testing.assert_allclose(first, daskmeta.tal2mni([-18, -58, -24])[0])


def test_several_name_lines_share_one_block_like_nimare():
    ds = read_sleuth(TESTDATA / "test_sleuth_file.txt")
    third = ds.experiments.iloc[2]
    assert third["study_id"] == "StudyName3"
    assert third["id"] == (
        "StudyName3-ExperimentName StudyName3: ExperimentName2 StudyName3: ExperimentName3"
    )
    assert ds.foci[ds.foci["id"] == third["id"]].shape[0] == 1


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_raises_parse_error_with_file_and_line(name):
    line, message = BAD[name]
    path = TESTDATA / name
    with pytest.raises(ParseError, match=rf"{re.escape(name)}, line {line}: {message}") as info:
        read_sleuth(path)
    assert info.value.line == line
    assert info.value.path == str(path)
    # NiMARE refuses these files too.
    with pytest.raises(ValueError):
        _nimare_dataset(path)


def _write(tmp_path, text, name="in.txt", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_ends(tmp_path, newline):
    ds = read_sleuth(_write(tmp_path, VALID, newline=newline))
    assert ds.ids == ["Smith et al., 2010-pain > rest", "Jones, 2012-heat"]
    assert ds.experiments["sample_size"].tolist() == [20, 15]
    assert ds.n_foci == 3


def test_tolerant_spellings_blank_lines_and_comments(tmp_path):
    text = (
        "\ufeff\n\n  //reference = talairach  \n\n"
        "// Study A: cond 1\n//Subjects=12\n\n"
        "1,  2,  3   // a trailing comment\n\n\n"
        "   4\t 5    6\n"
        "//    StudyB ; cond 2\n// SUBJECTS = 7\n"
        "+7.5e0 -8. .9\n"
    )
    ds = read_sleuth(_write(tmp_path, text))
    assert ds.ids == ["Study A-cond 1", "StudyB-cond 2"]
    assert ds.experiments["sample_size"].tolist() == [12, 7]
    assert set(ds.experiments["space"]) == {"TAL"}
    raw = np.array([[1, 2, 3], [4, 5, 6], [7.5, -8, 0.9]])
    np.testing.assert_allclose(ds.foci[["x", "y", "z"]].to_numpy(), daskmeta.tal2mni(raw))


def test_reference_without_spaces_and_mni(tmp_path):
    ds = read_sleuth(_write(tmp_path, "//Reference=MNI\n//S: c\n//Subjects=3\n1 2 3\n"))
    np.testing.assert_array_equal(ds.foci[["x", "y", "z"]].to_numpy(), [[1, 2, 3]])
    assert ds.experiments["space"].tolist() == ["MNI"]


def test_name_without_separator_and_without_name(tmp_path):
    ds = read_sleuth(
        _write(tmp_path, "// Reference=MNI\n// Only a study\n// Subjects=3\n1 2 3\n"
               "// Subjects=4\n4 5 6\n")
    )
    assert ds.ids == ["Only a study-analysis_1", "-analysis_1"]


def test_latin1_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("// Reference=MNI\n// Müller, 2001: ça\n// Subjects=9\n1 2 3\n"
                     .encode("latin-1"))
    assert read_sleuth(path).ids == ["Müller, 2001-ça"]


def test_duplicate_names_keep_every_block(tmp_path):
    text = "// Reference=MNI\n// A: b\n// Subjects=3\n1 2 3\n// A: b\n// Subjects=4\n4 5 6\n"
    ds = read_sleuth(_write(tmp_path, text))
    assert ds.ids == ["A-b", "A-b (2)"]
    assert ds.experiments["sample_size"].tolist() == [3, 4]


def test_header_without_foci_is_an_empty_experiment(tmp_path):
    text = "// Reference=MNI\n// A: b\n// Subjects=3\n// C: d\n// Subjects=4\n4 5 6\n"
    ds = read_sleuth(_write(tmp_path, text))
    # NiMARE would fold both headers into one name; a Subjects line ends a header here.
    assert ds.ids == ["A-b", "C-d"]
    assert ds.experiments["sample_size"].tolist() == [3, 4]
    assert ds.foci["id"].tolist() == ["C-d"]


def test_later_reference_line_switches_space(tmp_path):
    text = ("// Reference=MNI\n// A: b\n// Subjects=3\n1 2 3\n"
            "// Reference=Talairach\n// C: d\n// Subjects=4\n1 2 3\n")
    ds = read_sleuth(_write(tmp_path, text))
    assert ds.experiments["space"].tolist() == ["MNI", "TAL"]
    np.testing.assert_allclose(ds.foci[["x", "y", "z"]].to_numpy()[1],
                               daskmeta.tal2mni([1, 2, 3])[0])


def test_reference_line_inside_a_header(tmp_path):
    ok = read_sleuth(_write(tmp_path, "// Reference=MNI\n// A: b\n// Subjects=3\n"
                                      "// Reference=TAL\n// C: d\n// Subjects=4\n1 2 3\n"))
    assert ok.ids == ["A-b", "C-d"]
    assert ok.experiments["space"].tolist() == ["MNI", "TAL"]
    path = _write(tmp_path, "// Reference=MNI\n// A: b\n// Reference=TAL\n// Subjects=3\n")
    with pytest.raises(ParseError, match=r"in.txt, line 3: a '// Reference=' line inside an "
                                         r"experiment's header"):
        read_sleuth(path)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("", None, r"the file is empty"),
        ("// A: b\n// Subjects=3\n1 2 3\n", 1, r"expected the reference space first"),
        ("// Reference=MNI\n1 2 3\n// A: b\n// Subjects=3\n", 2,
         r"coordinates '1 2 3' before any experiment header"),
        ("// Reference=MNI\n// A: b\n1 2 3\n", 2, r"experiment '// A: b' has no "
                                                  r"'// Subjects=N' line"),
        ("// Reference=MNI\n// A: b\n// Subjects=0\n1 2 3\n", 3,
         r"the subject count must be a positive whole number; got '0'"),
        ("// Reference=MNI\n// A: b\n// Subjects=-4\n1 2 3\n", 3, r"positive whole number"),
        ("// Reference=MNI\n// A: b\n// Subjects=12.5\n1 2 3\n", 3, r"positive whole number"),
        ("// Reference=MNI\n// A: b\n// Subjects=\n1 2 3\n", 3, r"the subject count '' is not a "
                                                                r"number"),
        ("// Reference=MNI\n// A: b\n// Subjects=ten\n1 2 3\n", 3, r"'ten' is not a number"),
        ("// Reference=MNI\n// A: b\n// Subjects=3\n1 2 3 4\n", 4, r"found 4 values"),
        ("// Reference=MNI\n// A: b\n// Subjects=3\n1 2 nan\n", 4, r"'nan' is not a number"),
        ("// Reference=MNI\n// A: b\n// Subjects=3\n1 2 1e999\n", 4, r"'1e999' is not finite"),
        ("// Reference=\n// A: b\n// Subjects=3\n1 2 3\n", 1, r"unknown reference space ''"),
        ("// Reference=Unknown\n// A: b\n// Subjects=3\n", 1, r"unknown reference space"),
    ],
)
def test_malformed_text_raises_parse_error(tmp_path, text, line, message):
    path = _write(tmp_path, text, name="bad file.txt")
    where = f"{re.escape(str(path))}, line {line}" if line else re.escape(str(path))
    with pytest.raises(ParseError, match=f"^{where}: .*{message}"):
        read_sleuth(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ParseError, match="nope.txt: no such file"):
        read_sleuth(tmp_path / "nope.txt")
    with pytest.raises(ParseError, match="is a directory"):
        read_sleuth(tmp_path)


def test_registry_recognizes_sleuth(tmp_path):
    path = _write(tmp_path, VALID, name="file.ale")
    assert read(path).ids == read_sleuth(path).ids


# -- writing ---------------------------------------------------------------------------------


def _example_dataset():
    foci = pd.DataFrame(
        {
            "id": ["A 2001-x", "A 2001-x", "B-y", "C: odd-name; z"],
            "x": [1.25, -3.0, 0.1, 1e-7],
            "y": [2.0, 4.5, 0.2, -123456.789],
            "z": [3.0, 5.0, 1 / 3, 7.0],
            "space": ["MNI", "MNI", "TAL", "MNI"],
        }
    )
    experiments = pd.DataFrame(
        {
            "id": ["A 2001-x", "B-y", "C: odd-name; z", "D-empty"],
            "study_id": ["A 2001", "B", "C: odd", "D"],
            "sample_size": [10, 20, 30, 40],
            "space": ["MNI", "TAL", "MNI", "MNI"],
        }
    )
    return daskmeta.Dataset.from_foci(foci, experiments=experiments)


def test_write_read_round_trip(tmp_path):
    ds = _example_dataset()
    path = write_sleuth(ds, tmp_path / "out.txt")
    text = path.read_text()
    assert text.startswith("// Reference=MNI\n")
    assert "// A 2001: x\n// Subjects=10\n1.25\t2\t3\n" in text
    back = read_sleuth(path)
    assert back.ids == ds.ids
    assert back.experiments["study_id"].tolist() == ["A 2001", "B", "C: odd", "D"]
    assert back.experiments["sample_size"].tolist() == [10, 20, 30, 40]
    assert set(back.experiments["space"]) == {"MNI"}
    pd.testing.assert_frame_equal(back.foci, ds.foci)


def test_write_requires_sample_sizes(tmp_path):
    ds = daskmeta.Dataset(
        pd.DataFrame({"id": ["a-1", "b-1", "c-1"], "sample_size": [5, np.nan, 0]}),
        pd.DataFrame({"id": ["a-1"], "x": [1.0], "y": [2.0], "z": [3.0]}),
    )
    with pytest.raises(DatasetError, match=r"2 experiments lack one: 'b-1', 'c-1'"):
        write_sleuth(ds, tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_write_unrepresentable_id_still_keeps_everything(tmp_path):
    ds = daskmeta.Dataset(
        pd.DataFrame({"id": ["a;b-c", "Subjects=4"], "study_id": ["a;b", "Subjects=4"],
                      "sample_size": [5, 6]}),
        pd.DataFrame({"id": ["a;b-c", "Subjects=4"], "x": [1.0, 2], "y": [2.0, 3],
                      "z": [3.0, 4]}),
    )
    back = read_sleuth(write_sleuth(ds, tmp_path / "x.txt"))
    assert back.n_experiments == 2
    assert back.experiments["sample_size"].tolist() == [5, 6]
    np.testing.assert_array_equal(back.foci[["x", "y", "z"]].to_numpy(),
                                  ds.foci[["x", "y", "z"]].to_numpy())


# -- hypothesis ------------------------------------------------------------------------------

_STUDY_CHARS = st.sampled_from(list("abcXYZ019 -,.()'&"))
_CONTRAST_CHARS = st.sampled_from(list("abcXYZ -,.()'&:;><"))
_ANY_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))


def _clean(s):
    return " ".join(s.split())


@st.composite
def _experiments(draw, study_chars, contrast_chars, exact):
    n = draw(st.integers(1, 6))
    names = draw(
        st.lists(
            st.tuples(
                st.text(study_chars, min_size=1, max_size=12).map(_clean).filter(bool),
                st.text(contrast_chars, min_size=1, max_size=12).map(_clean).filter(bool),
            ),
            min_size=n,
            max_size=n,
            unique_by=lambda t: f"{t[0]}-{t[1]}",
        )
    )
    if not exact:
        names = [(s.replace("//", "/"), c.replace("//", "/")) for s, c in names]
        if len({f"{s}-{c}" for s, c in names}) != len(names):
            names = names[:1]
    coord = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    rows, exps = [], []
    for s, c in names:
        k = draw(st.integers(0, 5))
        for _ in range(k):
            rows.append((f"{s}-{c}", draw(coord), draw(coord), draw(coord)))
        exps.append((f"{s}-{c}", s, draw(st.integers(1, 5000))))
    foci = pd.DataFrame(rows, columns=["id", "x", "y", "z"])
    experiments = pd.DataFrame(exps, columns=["id", "study_id", "sample_size"])
    return daskmeta.Dataset(experiments, foci)


_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(ds=_experiments(_STUDY_CHARS, _CONTRAST_CHARS, exact=True))
def test_round_trip_hypothesis_exact_ids(tmp_path, ds):
    back = read_sleuth(write_sleuth(ds, tmp_path / "rt.txt"))
    assert back.ids == ds.ids
    assert back.experiments["study_id"].tolist() == ds.experiments["study_id"].tolist()
    np.testing.assert_array_equal(back.experiments["sample_size"], ds.experiments["sample_size"])
    pd.testing.assert_frame_equal(back.foci, ds.foci)


@_SETTINGS
@given(ds=_experiments(_ANY_CHARS, _ANY_CHARS, exact=False))
def test_round_trip_hypothesis_any_printable_ids(tmp_path, ds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = read_sleuth(write_sleuth(ds, tmp_path / "rt.txt"))
    assert back.n_experiments == ds.n_experiments
    np.testing.assert_array_equal(back.experiments["sample_size"], ds.experiments["sample_size"])
    # Foci come back exactly, experiment by experiment, in order.
    np.testing.assert_array_equal(back.foci[["x", "y", "z"]].to_numpy(),
                                  ds.foci[["x", "y", "z"]].to_numpy())
    counts = ds.foci.groupby("id", sort=False).size().reindex(ds.ids, fill_value=0)
    back_counts = back.foci.groupby("id", sort=False).size().reindex(back.ids, fill_value=0)
    assert counts.tolist() == back_counts.tolist()


def _check_parses_or_parse_error(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_sleuth(path)
    except DaskmetaError as exc:
        assert path.name in str(exc)
        return None
    assert isinstance(ds, daskmeta.Dataset)
    return ds


@_SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_fuzz_random_text(tmp_path, text):
    path = tmp_path / "fuzz.txt"
    path.write_text(text, encoding="utf-8")
    _check_parses_or_parse_error(path)


@_SETTINGS
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    _check_parses_or_parse_error(path)


_PIECES = st.sampled_from(
    ["//", "// Subjects=", "// Reference=", "\n", "\r\n", "\t", " ", "-", ".", "e", "nan",
     "1", "0", "-3", "Talairach", ":", ";", "2010", "1e400", ",", "\x00", "\ufeff", "x"]
)


@st.composite
def _mutated(draw):
    text = VALID
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup_line", "swap_lines"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            piece = draw(st.one_of(_PIECES, st.text(max_size=5).filter(
                lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))))
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            end = draw(st.integers(pos, min(len(text), pos + 10)))
            text = text[:pos] + text[end:]
        elif op == "replace" and text:
            pos = min(pos, len(text) - 1)
            text = text[:pos] + draw(_PIECES) + text[pos + 1 :]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@_SETTINGS
@given(text=_mutated())
def test_fuzz_mutations_of_a_valid_file(tmp_path, text):
    path = tmp_path / "mutant.txt"
    path.write_text(text, encoding="utf-8")
    ds = _check_parses_or_parse_error(path)
    if ds is not None:
        assert np.isfinite(ds.foci[["x", "y", "z"]].to_numpy()).all()
        assert (ds.experiments["sample_size"] > 0).all()
