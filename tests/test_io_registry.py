"""The format registry: formats registered from outside the package, read by guessing and by
name; the registry's errors; the built-in formats guessed as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import daskmeta
from daskmeta.exceptions import DaskmetaError, ParseError
from daskmeta.io import FORMATS, read, read_sleuth, register_format, unregister_format

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLEUTH = DATA / "nimare-testdata" / "test_sleuth_file.txt"

BUILTIN = ["sleuth", "nimare-json", "table", "neurosynth", "neuroquery", "daskmeta",
           "neurostore", "nimads"]

FOCI = [
    {"id": "smith2010-1", "x": -16.0, "y": -58.0, "z": -22.0},
    {"id": "smith2010-1", "x": 26.0, "y": -64.0, "z": -50.0},
    {"id": "jones2012-a", "x": 12.0, "y": -70.0, "z": -42.0},
    {"id": "lee2015", "x": 0.5, "y": 2.25, "z": -8.0},
]


# -- a made-up format, defined here as a user would: foci as JSON lines ----------------------


def guess_foci_jsonl(path: Path) -> bool:
    """A .jsonl file whose first line is a JSON object with an "id"."""
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        return "id" in json.loads(first)
    except ValueError:
        return False


def read_foci_jsonl(path: Path, sample_size=None) -> daskmeta.Dataset:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ParseError(f"not a JSON object ({exc})", path=str(path), line=number) from exc
    foci = pd.DataFrame(rows, columns=["id", "x", "y", "z"])
    if sample_size is not None:
        foci["sample_size"] = sample_size
    return daskmeta.Dataset.from_foci(foci)


def write_foci_jsonl(path: Path, foci=FOCI) -> Path:
    path.write_text("".join(json.dumps(f) + "\n" for f in foci), encoding="utf-8")
    return path


@pytest.fixture
def register():
    """register_format, undone after the test (a replaced built-in comes back)."""
    names = []

    def _register(name, **kwargs):
        register_format(name, **kwargs)
        names.append(name)

    yield _register
    for name in reversed(dict.fromkeys(names)):
        unregister_format(name)
    assert list(FORMATS) == BUILTIN


@pytest.fixture
def jsonl(register):
    register("foci-jsonl", description="foci as JSON lines (a .jsonl file of {id, x, y, z})",
             guess=guess_foci_jsonl, reader=read_foci_jsonl)
    return "foci-jsonl"


def _check_foci(ds, foci=FOCI):
    assert isinstance(ds, daskmeta.Dataset)
    assert ds.ids == list(dict.fromkeys(f["id"] for f in foci))
    assert ds.foci["id"].tolist() == [f["id"] for f in foci]
    np.testing.assert_array_equal(ds.foci[["x", "y", "z"]].to_numpy(),
                                  [[f["x"], f["y"], f["z"]] for f in foci])


# -- registered formats ----------------------------------------------------------------------


def test_builtin_formats_in_order():
    assert list(FORMATS) == BUILTIN
    assert "Sleuth" in FORMATS["sleuth"]
    with pytest.raises(TypeError):
        FORMATS["mine"] = "read-only"  # type: ignore[index]


def test_registered_format_read_by_guessing(tmp_path, jsonl):
    assert list(FORMATS) == [*BUILTIN, jsonl]
    _check_foci(read(write_foci_jsonl(tmp_path / "foci.jsonl")))
    _check_foci(read(str(tmp_path / "foci.jsonl")))


def test_registered_format_read_by_name(tmp_path, jsonl):
    path = write_foci_jsonl(tmp_path / "foci.txt")  # a suffix its guesser does not claim
    with pytest.raises(DaskmetaError, match="cannot tell the format"):
        read(path)
    _check_foci(read(path, format=jsonl))


def test_keyword_arguments_reach_the_reader(tmp_path, jsonl):
    ds = read(write_foci_jsonl(tmp_path / "foci.jsonl"), sample_size=25)
    assert ds.experiments["sample_size"].tolist() == [25.0, 25.0, 25.0]
    with pytest.raises(TypeError, match="vocab"):
        read(tmp_path / "foci.jsonl", vocab=None)


def test_reader_errors_propagate(tmp_path, jsonl):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "x": 1, "y": 2, "z": 3}\n{oops\n')
    with pytest.raises(ParseError, match=r"bad\.jsonl, line 2: not a JSON object"):
        read(path)


def test_reader_must_return_a_dataset(tmp_path, register):
    register("listing", description="returns a list", guess=lambda p: p.suffix == ".lst",
             reader=lambda p, **kw: [1, 2])
    (tmp_path / "a.lst").write_text("x")
    with pytest.raises(DaskmetaError, match="the reader of format 'listing' returned list; "
                                            "expected a daskmeta.Dataset"):
        read(tmp_path / "a.lst")


def test_builtin_formats_are_guessed_first(tmp_path, register):
    register("greedy", description="claims every path", guess=lambda path: True,
             reader=lambda path, **kwargs: read_foci_jsonl(write_foci_jsonl(tmp_path / "g")))
    assert read(SLEUTH).ids == read_sleuth(SLEUTH).ids
    (tmp_path / "t.csv").write_text("id,x,y,z\na,1,2,3\n")
    assert read(tmp_path / "t.csv").ids == ["a"]
    _check_foci(read(tmp_path))  # a directory, which no built-in format claims


def test_explicit_builtin_format(tmp_path):
    expected = read_sleuth(SLEUTH)
    ds = read(SLEUTH, format="sleuth")
    assert ds.ids == expected.ids
    pd.testing.assert_frame_equal(ds.foci, expected.foci)
    # A Sleuth file named .json is guessed as NiMARE JSON; naming the format reads it.
    misnamed = shutil.copy(SLEUTH, tmp_path / "study.json")
    with pytest.raises(ParseError, match="study.json"):
        read(misnamed)
    assert read(misnamed, format="sleuth").ids == expected.ids
    # The reader named is used as is: its own error, not a guess.
    with pytest.raises(ParseError, match="test_sleuth_file.txt"):
        read(SLEUTH, format="nimare-json")


def test_format_without_guesser_is_read_by_name_only(tmp_path, register):
    register("by-name", description="foci as JSON lines, never guessed", guess=None,
             reader=read_foci_jsonl)
    path = write_foci_jsonl(tmp_path / "foci.jsonl")
    with pytest.raises(DaskmetaError, match="cannot tell the format"):
        read(path)
    _check_foci(read(path, format="by-name"))


def test_raising_guesser_is_no_match(tmp_path, register, jsonl):
    def broken(path):
        raise RuntimeError("guesser bug")

    register("broken", description="a guesser that raises", guess=broken,
             reader=read_foci_jsonl)
    _check_foci(read(write_foci_jsonl(tmp_path / "foci.jsonl")))  # registered before broken
    assert read(SLEUTH).ids == read_sleuth(SLEUTH).ids
    (tmp_path / "notes.dat").write_text("hello\n")
    with pytest.raises(DaskmetaError, match=r"cannot tell the format of .*notes\.dat.*"
                                            r"The guesser of broken raised RuntimeError: "
                                            r"guesser bug \(taken as no match\)"):
        read(tmp_path / "notes.dat")


# -- errors ----------------------------------------------------------------------------------


def test_unknown_format_lists_registered_formats(jsonl):
    expected = ("read() got format='nope', which is not a registered format; registered "
                "formats: sleuth, nimare-json, table, neurosynth, neuroquery, daskmeta, neurostore, "
                "nimads, foci-jsonl (add one with daskmeta.io.register_format)")
    with pytest.raises(DaskmetaError) as info:
        read(SLEUTH, format="nope")
    assert str(info.value) == expected
    with pytest.raises(DaskmetaError, match=r"got format=3, which is not a registered format"):
        read(SLEUTH, format=3)


def test_unguessable_file_lists_registered_formats(tmp_path, jsonl):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DaskmetaError, match=r"Accepted formats: sleuth: .*; daskmeta: .*; "
                                            r"foci-jsonl: foci as JSON lines \(a \.jsonl"):
        read(tmp_path / "notes.txt")
    with pytest.raises(DaskmetaError, match=r"holds no data-neurosynth_\* .*foci-jsonl: "):
        read(tmp_path)
    with pytest.raises(DaskmetaError, match=r"does not exist\. Accepted formats: .*foci-jsonl"):
        read(tmp_path / "missing.jsonl")


def test_duplicate_registration(tmp_path, register, jsonl):
    with pytest.raises(DaskmetaError, match=r"format 'foci-jsonl' is already registered "
                                            r"\(foci as JSON lines .*\); pass overwrite=True"):
        register_format(jsonl, description="again", guess=guess_foci_jsonl,
                        reader=read_foci_jsonl)
    with pytest.raises(DaskmetaError, match="format 'sleuth' is already registered"):
        register_format("sleuth", description="mine", guess=None, reader=read_foci_jsonl)
    # overwrite=True replaces the format in its place.
    register(jsonl, description="replaced", guess=guess_foci_jsonl,
             reader=lambda p, **kw: read_foci_jsonl(p, sample_size=7), overwrite=True)
    assert list(FORMATS) == [*BUILTIN, jsonl]
    assert FORMATS[jsonl] == "replaced"
    ds = read(write_foci_jsonl(tmp_path / "foci.jsonl"))
    assert set(ds.experiments["sample_size"]) == {7.0}


def test_replaced_builtin_comes_back(tmp_path, register):
    register("sleuth", description="not really Sleuth", guess=None, reader=read_foci_jsonl,
             overwrite=True)
    assert list(FORMATS) == BUILTIN
    _check_foci(read(write_foci_jsonl(tmp_path / "foci.txt"), format="sleuth"))
    unregister_format("sleuth")
    assert read(SLEUTH).ids == read_sleuth(SLEUTH).ids
    register("sleuth", description="again", guess=None, reader=read_foci_jsonl,
             overwrite=True)  # the fixture's teardown brings the built-in back


def test_unregister_errors():
    with pytest.raises(DaskmetaError, match=r"no format is registered under the name 'nope'; "
                                            r"registered formats: sleuth, nimare-json"):
        unregister_format("nope")
    with pytest.raises(DaskmetaError, match="'sleuth' is a built-in format and cannot be "
                                            "unregistered"):
        unregister_format("sleuth")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, r"a format's name must be a non-empty string .*; got ''"),
        ({"name": "  "}, r"a format's name must be a non-empty string"),
        ({"name": " x"}, r"without surrounding spaces; got ' x'"),
        ({"name": 3}, r"a format's name must be a non-empty string .*; got 3"),
        ({"description": ""}, r"description of format 'mine' must be a non-empty string"),
        ({"description": None}, r"description of format 'mine' must be a non-empty string"),
        ({"guess": ".jsonl"}, r"guess of format 'mine' must be a callable guess\(path\) -> "
                              r"bool, or None .*; got str"),
        ({"reader": None}, r"reader of format 'mine' must be a callable reader\(path, "
                           r"\*\*kwargs\) -> Dataset; got NoneType"),
    ],
)
def test_bad_registration_arguments(kwargs, message):
    arguments = {"name": "mine", "description": "my format", "guess": guess_foci_jsonl,
                 "reader": read_foci_jsonl, **kwargs}
    name = arguments.pop("name")
    with pytest.raises(DaskmetaError, match=message):
        register_format(name, **arguments)
    assert list(FORMATS) == BUILTIN
