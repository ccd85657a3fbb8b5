"""Coordinate space names: every one is recognised as Talairach or MNI, or refused (or, as
the user chooses, warned about and recorded), never silently read as MNI; NiMARE JSON
spellings, parity with NiMARE where it knows the name, the command's --unknown-space, and
hypothesis fuzzing of space strings alone and inside NiMARE JSON files."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import NIMARE_MASK, PAIN_JSON
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_trust import BASE, _call, _one_line_error, _run_cli

import daskmeta


# --------------------------------------------------------------------------------------------
# coordinate spaces: Talairach or MNI, or refused (or warned about and recorded)
# --------------------------------------------------------------------------------------------
def _json_with_space(path: Path, space) -> Path:
    path.write_text(json.dumps({"s": {"contrasts": {"c": {
        "coords": {"space": space, "x": [30.0, -20.0], "y": [-10.0, 12.0], "z": [40.0, 8.0]},
        "metadata": {"sample_sizes": [20]}}}}}))
    return path


# The spellings NiMARE writes or reads: its dataset JSON (MNI, TAL, Talairach), its template
# names (mni152_2mm, ale_2mm), NeuroStore / NIMADS and Sleuth spellings, and variants that
# are Talairach although NiMARE's dataset JSON reader takes them as MNI with a warning.
SPELLINGS = {
    "MNI": "MNI", "mni": "MNI", "MNI152": "MNI", "mni152_2mm": "MNI", "ale_2mm": "MNI",
    "ICBM": "MNI", "MNI 152 2mm": "MNI", "MNI (converted from Talairach)": "MNI",
    "TAL": "TAL", "Talairach": "TAL", "talairach": "TAL", "TAL_male": "TAL",
    "talairach_scaled": "TAL", "tal (from mni)": "TAL", "Talairach-Tournoux 1988": "TAL",
    "UNKNOWN": "UNKNOWN",
    "mni2tal": None, "MNI to TAL": None, "tal/mni": None, "ICBM452": None, "Dog": None,
    "": None, "male": None, "SPM": None, "MNI;rm -rf": None, "mnî": None,
}


@pytest.mark.parametrize(("space", "expected"), SPELLINGS.items())
def test_nimare_json_space_spellings(tmp_path, space, expected):
    path = _json_with_space(tmp_path / "s.json", space)
    if expected is None:
        with pytest.raises(daskmeta.DaskmetaError,
                           match=r"s\.json: study 's', contrast 'c': unknown coordinate space "
                                 + re.escape(repr(space)) + "; allowed: MNI"):
            daskmeta.io.read_nimare_json(path)
        return
    ds = daskmeta.io.read_nimare_json(path)
    assert ds.experiments["space"].tolist() == [expected]
    assert ds.metadata["reported_space"].tolist() == [space]
    xyz = np.array([[30.0, -10.0, 40.0], [-20.0, 12.0, 8.0]])
    want = daskmeta.tal2mni(xyz) if expected == "TAL" else xyz
    assert np.allclose(ds.foci[["x", "y", "z"]].to_numpy(), want)


@pytest.mark.parametrize("space", ["MNI", "TAL", "Talairach", "Dog", "TAL_male"])
def test_spaces_agree_with_nimare_where_it_recognises_them(tmp_path, space):
    """Coordinates as NiMARE's dataset JSON reader gives them; where NiMARE does not know a
    space (it warns and leaves the coordinates as they are), --unknown-space warn does the
    same, and a Talairach variant NiMARE does not know is converted (a documented
    difference)."""
    nimare_dataset = pytest.importorskip("nimare.dataset")
    path = _json_with_space(tmp_path / "s.json", space)
    theirs = nimare_dataset.Dataset(str(path), mask=str(NIMARE_MASK)).coordinates
    with contextlib.ExitStack() as stack:
        if space == "Dog":
            stack.enter_context(pytest.warns(daskmeta.DaskmetaWarning,
                                             match="coordinate space 'Dog' is neither MNI "
                                                   "nor Talairach"))
        ours = daskmeta.io.read_nimare_json(path, unknown_space="warn")
    got = ours.foci[["x", "y", "z"]].to_numpy()
    if space == "TAL_male":
        assert np.allclose(got, daskmeta.tal2mni(theirs[["x", "y", "z"]].to_numpy()))
    else:
        assert np.allclose(got, theirs[["x", "y", "z"]].to_numpy())
    assert ours.metadata["reported_space"].tolist() == [space]


def test_unknown_space_option_of_the_command(tmp_path):
    path = _json_with_space(tmp_path / "dog.json", "Dog")
    code, err = _call(["ale", str(path), "--out", str(tmp_path / "o"), *BASE, "--fwe", "none"])
    _one_line_error(code, err, "dog.json: study 's', contrast 'c': unknown coordinate space "
                               "'Dog'; allowed: MNI")
    proc = _run_cli("ale", str(path), "--out", str(tmp_path / "o"), *BASE, "--fwe", "none",
                    "--workers", "1", "--unknown-space", "warn")
    assert proc.returncode == 0, proc.stderr
    assert ("daskmeta: warning: study 's', contrast 'c': coordinate space 'Dog' is neither MNI "
            "nor Talairach; its coordinates are taken as MNI (recorded as UNKNOWN)"
            in proc.stderr.splitlines())
    code, err = _call(["ale", str(PAIN_JSON.parent / "test_sleuth_file.txt"), "--out",
                       str(tmp_path / "o2"), *BASE, "--unknown-space", "warn"])
    _one_line_error(code, err, "--unknown-space warn applies to NiMARE JSON, NIMADS and NeuroStore input")


_SPACE_WORDS = ["mni", "MNI152", "icbm", "ale", "tal", "Talairach", "unknown", "from",
                "converted", "to", "2mm", "male", "scaled", "space", "dog", "mni2tal", "152"]
_space_strings = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(_SPACE_WORDS), min_size=1, max_size=5).flatmap(
        lambda words: st.lists(st.sampled_from([" ", "_", "-", " (", ") ", ", ", "/"]),
                               min_size=len(words), max_size=len(words)).map(
            lambda seps: "".join(w + s for w, s in zip(words, seps, strict=True)))),
)


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


@settings(max_examples=400, deadline=None)
@given(space=_space_strings)
def test_fuzzed_space_strings_are_recognised_or_refused(space):
    from daskmeta.space import normalize_space_name, parse_space_name

    got = parse_space_name(space)
    assert got in ("MNI", "TAL", "UNKNOWN", None)
    words = _words(space)
    before_from = words[: words.index("from")] if "from" in words else words
    if got == "UNKNOWN":
        assert space.strip().lower() == "unknown"
    if got == "MNI":  # never silently MNI: an MNI name, no Talairach word but after "from"
        assert words[0] in {"mni", "mni152", "mni305", "icbm", "icbm152", "ale"}
        assert not {"tal", "talairach"} & set(before_from)
    if got == "TAL":
        assert words[0] in {"tal", "talairach", "talairach88", "tt88"}
        assert not {"mni", "mni152", "icbm", "ale"} & set(before_from)
    if got is None:
        with pytest.raises(daskmeta.DaskmetaError, match="unknown coordinate space"):
            normalize_space_name(space)
        with pytest.warns(daskmeta.DaskmetaWarning, match="is neither MNI nor Talairach"):
            assert normalize_space_name(space, unknown="warn") == "UNKNOWN"
    else:
        assert normalize_space_name(space) == got
        if space.isascii():
            assert parse_space_name(space.upper()) == got


@settings(max_examples=60, deadline=None)
@given(space=_space_strings)
def test_fuzzed_spaces_in_nimare_json(space):
    from daskmeta.space import parse_space_name

    with tempfile.TemporaryDirectory() as tmp:
        path = _json_with_space(Path(tmp) / "f.json", space)
        want = parse_space_name(space)
        if want is None:
            with pytest.raises(daskmeta.DaskmetaError, match=r"f\.json: study 's', contrast "
                                                             r"'c': unknown coordinate space"):
                daskmeta.io.read_nimare_json(path)
            with pytest.warns(daskmeta.DaskmetaWarning):
                ds = daskmeta.io.read_nimare_json(path, unknown_space="warn")
            want = "UNKNOWN"
        else:
            ds = daskmeta.io.read_nimare_json(path)
        assert ds.experiments["space"].tolist() == [want]
        assert ds.metadata["reported_space"].tolist() == [space]
