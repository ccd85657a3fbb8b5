"""A bad option or a hostile name never gives a hang, a traceback or a file outside --out;
results describe themselves (input path and sha256, command line, selection, counts).

Bad options are checked before any input is read, any cluster starts or any file is
written: the error is one line naming the option, the value and what is allowed, with exit
status 2. Every run compares the listing of a temporary parent folder before and after.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA, NIMARE_MASK, PAIN_JSON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskmeta
from daskmeta.cli import main
from daskmeta.cli._common import MAX_N_ITERS
from daskmeta.exceptions import DatasetError

NS = DATA / "neurosynth-v7"
BASE = ["--mask", str(NIMARE_MASK), "--no-figures"]


def _listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _call(argv) -> tuple[int, list[str]]:
    """``daskmeta.cli.main(argv)`` in this process: (exit status, standard error lines).
    Errors of the option parser (argparse) exit through SystemExit, as argparse does."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue().splitlines()


def _one_line_error(code, err, *needles, status=2):
    assert code == status, err
    assert err, "nothing on standard error"
    assert err[-1].startswith("daskmeta: error: "), err
    assert not any("Traceback" in line or line.startswith("  File ") for line in err), err
    for needle in needles:
        assert needle in err[-1], err[-1]
    # Checked before any work: no cluster started, nothing fitted.
    assert not any("Dask:" in line or "fitting" in line for line in err), err


def _run_cli(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "daskmeta", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          check=False)


# --------------------------------------------------------------------------------------------
# bad options: one line, exit 2, before any work, nothing written
# --------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    (["--workers", "0"], "--workers must be an integer from 1 to"),
    (["--workers", "-1"], "--workers must be an integer from 1 to"),
    (["--prefix", "../escaped"], "--prefix must be a plain file-name prefix"),
    (["--prefix", "sub/run"], "--prefix must be a plain file-name prefix"),
    (["--prefix", ".."], "got '..'"),
    (["--prefix", "a..b"], "no '..'"),
    (["--prefix", "/abs"], "--prefix must be a plain file-name prefix"),
    (["--prefix", "back\\slash"], "--prefix must be a plain file-name prefix"),
    (["--prefix", ".hidden"], "starting with a letter, digit or '_'"),
    (["--prefix", "x" * 101], "at most 100 characters"),
    (["--prefix", ""], "--prefix must be a non-empty file-name prefix when given; got ''"),
    (["--prefix", "new\nline"], "--prefix must be a plain file-name prefix"),
    (["--n-iters", "0"], "--n-iters must be an integer from 1 to 10,000,000; got 0"),
    (["--n-iters", "1000000000"], "--n-iters must be an integer from 1 to 10,000,000; got "
                                  "1000000000"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 9,223,372,036,854,775,807; got -1"),
    (["--seed", str(2**63)], "--seed must be an integer from 0"),
    (["--voxel-thresh", "5"], "--voxel-thresh must be a p-value strictly between 0 and 1; got 5.0"),
    (["--voxel-thresh", "0"], "--voxel-thresh must be a p-value strictly between 0 and 1"),
    (["--voxel-thresh", "nan"], "--voxel-thresh must be a p-value strictly between 0 and 1"),
    (["--scheduler", "bogus://x"], "--scheduler must be a Dask scheduler address such as "
                                   "tcp://host:8786 (scheme 'bogus' is not one of"),
    (["--scheduler", "tcp://127.0.0.1:notaport"], "got 'tcp://127.0.0.1:notaport'"),
    (["--scheduler", "tcp://127.0.0.1"], "missing port number"),
    (["--scheduler", "tcp://127.0.0.1:99999"], "a port from 1 to 65535"),
    (["--fwhm", "1e6"], "--fwhm must be a number of mm in (0, 100]; got 1000000.0"),
    (["--fwhm", "0"], "--fwhm must be a number of mm in (0, 100]; got 0.0"),
    (["--fwhm", "inf"], "--fwhm must be a number of mm in (0, 100]; got inf"),
    (["--fwhm", "1e400"], "--fwhm must be a number of mm in (0, 100]; got inf"),
    (["--sample-size", "nan"], "--sample-size must be a positive number; got nan"),
    (["--fwhm", "8", "--sample-size", "20"], "give --fwhm or --sample-size, not both"),
    (["--label-threshold", "nan"], "--label-threshold must be a finite number; got nan"),
    (["--n-iters", "ten"], "argument --n-iters: invalid int value: 'ten'"),
    (["--seed", "1" * 5000], "argument --seed: invalid int value"),
    (["--fwe", "holm"], "argument --fwe: invalid choice: 'holm'"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_OPTIONS,
                         ids=[" ".join(f)[:40] for f, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_before_any_work(tmp_path, flags, message):
    parent = tmp_path / "parent"
    parent.mkdir()
    before = _listing(tmp_path)
    code, err = _call(["ale", str(PAIN_JSON), "--out", str(parent / "out"), *BASE, *flags])
    _one_line_error(code, err, message)
    # Before the input was read, and nothing was written anywhere.
    assert not any(line.startswith("[daskmeta") for line in err), err
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(("flags", "message"), [
    (["--radius", "1e9"], "--radius must be a number of mm in (0, 100]; got 1000000000.0"),
    (["--radius", "-3"], "--radius must be a number of mm in (0, 100]; got -3.0"),
    (["--weighting", "n"], "argument --weighting: invalid choice: 'n'"),
])
def test_bad_mkda_option(tmp_path, flags, message):
    before = _listing(tmp_path)
    code, err = _call(["mkda", str(PAIN_JSON), "--out", str(tmp_path / "out"), *BASE, *flags])
    _one_line_error(code, err, message)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(("flags", "message"), [
    (["--kernel", "mkda", "--workers", "0"], "--workers must be an integer from 1 to"),
    (["--kernel", "mkda", "--radius", "1e9"], "--radius must be a number of mm in (0, 100]"),
    (["--kernel", "ale", "--fwhm", "-2"], "--fwhm must be a number of mm in (0, 100]"),
    (["--kernel", "mkda", "--rows-per-shard", "0"], "--rows-per-shard must be a positive integer; got 0"),
    (["--kernel", "mkda", "--mask-margin", "nan"], "--mask-margin must be a number of mm >= 0"),
    (["--kernel", "mkda", "--scheduler", "bogus://x"], "--scheduler must be a Dask scheduler"),
])
def test_bad_ingest_option(tmp_path, flags, message):
    before = _listing(tmp_path)
    code, err = _call(["ingest", str(PAIN_JSON), "--store", str(tmp_path / "s.zarr"), *flags])
    _one_line_error(code, err, message)
    assert _listing(tmp_path) == before


def test_scheduler_from_the_environment_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "bogus://x")
    code, err = _call(["ale", str(PAIN_JSON), "--out", str(tmp_path / "o"), *BASE])
    _one_line_error(code, err, "DASK_SCHEDULER_ADDRESS must be a Dask scheduler address")


def test_out_that_is_a_file_and_demo_options(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    code, err = _call(["ale", str(PAIN_JSON), "--out", str(f), *BASE])
    _one_line_error(code, err, "--out must be a folder (created if needed), not a file")
    assert f.read_text() == "keep"
    for flags, message in ((["--n-experiments", "0"], "--n-experiments must be an integer"),
                           (["--workers", "0"], "--workers must be an integer from 1"),
                           (["--n-iters", "-5"], "--n-iters must be an integer from 1")):
        code, err = _call(["demo", "--out", str(tmp_path / "demo"), *flags])
        _one_line_error(code, err, message)
    assert not (tmp_path / "demo").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(daskmeta.DaskmetaError, match="--workers must be an integer"):
        main(["--debug", "ale", str(PAIN_JSON), "--out", str(tmp_path / "o"), "--workers",
              "0"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--scheduler", "bogus://x"], "--scheduler must be a Dask scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:notaport"], "invalid literal for int()"),
    (["--workers", "0"], "--workers must be an integer from 1 to"),
    (["--fwhm", "1e6"], "--fwhm must be a number of mm in (0, 100]"),
    (["--n-iters", "1000000000"], "--n-iters must be an integer from 1 to 10,000,000"),
])
def test_bad_options_in_a_real_process(tmp_path, flags, message):
    """A fresh interpreter, as users run it: no hang (the timeout), no traceback, exit 2."""
    before = _listing(tmp_path)
    proc = _run_cli("ale", str(PAIN_JSON), "--out", str(tmp_path / "o"), *BASE, *flags,
                    timeout=120)
    _one_line_error(proc.returncode, proc.stderr.splitlines(), message)
    assert proc.stdout == ""
    assert _listing(tmp_path) == before


# --------------------------------------------------------------------------------------------
# hostile inputs: numeric overflow, every focus outside the mask
# --------------------------------------------------------------------------------------------
def _neurosynth_with(folder: Path, value: str, rows=range(1, 4)) -> Path:
    """The Neurosynth release files, linked, with x replaced by ``value`` on ``rows``."""
    folder.mkdir()
    for f in NS.iterdir():
        if "coordinates" not in f.name:
            (folder / f.name).symlink_to(f)
    name = "data-neurosynth_version-7_coordinates.tsv.gz"
    with gzip.open(NS / name, "rt") as src:
        lines = [next(src) for _ in range(200)]
    header = lines[0].rstrip("\n").split("\t")
    for r in rows:
        parts = lines[r].rstrip("\n").split("\t")
        parts[header.index("x")] = value
        lines[r] = "\t".join(parts) + "\n"
    with gzip.open(folder / name, "wt") as dst:
        dst.writelines(lines)
    return folder


@pytest.mark.parametrize("rows", [range(1, 4), range(1, 200)], ids=["some rows", "all rows"])
def test_thousand_digit_coordinate_in_neurosynth(tmp_path, rows):
    ns = _neurosynth_with(tmp_path / "ns", "9" * 1000, rows)
    proc = _run_cli("mkda", str(ns), "--out", str(tmp_path / "o"), "--fwe", "none",
                    "--workers", "1")
    _one_line_error(proc.returncode, proc.stderr.splitlines(),
                    "data-neurosynth_version-7_coordinates.tsv.gz, line 2: missing or "
                    "non-finite coordinate")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("digits", [1000, 5000])
def test_huge_integer_in_nimare_json(tmp_path, digits):
    big = "9" * digits
    path = tmp_path / "big.json"
    path.write_text('{"s": {"contrasts": {"c": {"coords": {"space": "MNI", "x": [' + big
                    + '], "y": [0], "z": [0]}}}}}')
    code, err = _call(["mkda", str(path), "--out", str(tmp_path / "o"), "--fwe", "none"])
    expected = ("coords.x holds values that are not finite numbers: 99999" if digits == 1000
                else "invalid JSON: Exceeds the limit (4300 digits)")
    _one_line_error(code, err, f"big.json: {'' if digits == 5000 else 'study'}", expected)
    assert len(err[-1]) < 300  # the value is cut, the line stays short


def test_every_focus_outside_the_mask_is_an_error(tmp_path):
    csv = tmp_path / "far.csv"
    csv.write_text("id,x,y,z,sample_size\na,500,0,0,20\nb,0,900,0,20\nb,0,0,-400,20\n")
    code, err = _call(["ale", str(csv), "--out", str(tmp_path / "o"), "--fwe", "none", *BASE])
    assert code == 2 and err[-1] == (
        "daskmeta: error: all 3 foci of the 2 experiments to analyse lie more than 10 mm "
        "outside the mask (mask_margin=10) and would be dropped: nothing to analyse (are the "
        "coordinates MNI or Talairach mm? is the mask right?)")
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("id,x,y,z,sample_size\n")
    code, err = _call(["ale", str(empty), "--out", str(tmp_path / "o"), "--fwe", "none", *BASE])
    assert code == 2 and "none of the 0 experiments has foci" in err[-1]


def test_select_of_a_wrong_type_in_python(pain_dataset, nimare_mask):
    from daskmeta.estimators import MKDADensity

    for select in (123, 1.5):
        with pytest.raises(DatasetError, match=r"^select must be a label expression \(str\) or "
                                               r"a sequence of experiment ids; got "):
            MKDADensity(mask=nimare_mask).fit(pain_dataset, select=select)


# --------------------------------------------------------------------------------------------
# outputs: only inside --out, atomically, summary.json follows the prefix
# --------------------------------------------------------------------------------------------
def test_outputs_stay_inside_out_and_follow_the_prefix(tmp_path):
    parent = tmp_path / "parent"
    out = parent / "out"
    out.mkdir(parents=True)
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"not to be touched")
    # A hostile link where a map will be written: replaced, never followed.
    (out / "a_z.nii.gz").symlink_to(victim)
    before = _listing(tmp_path)
    for prefix in ("a", "b"):
        code, err = _call(["mkda", str(PAIN_JSON), "--out", str(out), "--fwe", "bonferroni",
                           "--prefix", prefix, "--workers", "1", "--mask", str(NIMARE_MASK)])
        assert code == 0, err
    after = _listing(tmp_path)
    assert {p for p in after - before if not p.startswith("parent/out/")} == set()
    assert victim.read_bytes() == b"not to be touched"
    assert not (out / "a_z.nii.gz").is_symlink()
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".") or ".tmp" in n]  # no temp files left
    for prefix in ("a", "b"):
        assert all(n.startswith(("a_", "b_")) for n in names)
        summary = json.loads((out / f"{prefix}_summary.json").read_text())
        assert summary["n_experiments"] == 19 and summary["n_foci"] == 243
        assert f"{prefix}_z.png" in names and f"{prefix}_clusters.tsv" in names
        prov = json.loads((out / f"{prefix}_provenance.json").read_text())
        assert prov["prefix"] == prefix
    assert np.array_equal(nib.load(out / "a_z.nii.gz").get_fdata(),
                          nib.load(out / "b_z.nii.gz").get_fdata())


def test_provenance_describes_the_run(tmp_path):
    out = tmp_path / "o"
    argv = ["ale", str(PAIN_JSON), "--out", str(out), "--fwe", "none", *BASE, "--workers", "1"]
    code, err = _call(argv)
    assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["input_path"] == str(PAIN_JSON.resolve())
    assert prov["input_sha256"] == hashlib.sha256(PAIN_JSON.read_bytes()).hexdigest()
    assert prov["input_sha256_of"] == "the file"
    assert prov["command_line"] == "daskmeta " + " ".join(argv)
    assert prov["selection"] == "all"
    assert (prov["n_experiments"], prov["n_experiments_input"], prov["n_foci"],
            prov["n_foci_dropped"]) == (19, 21, 243, 0)
    assert any("fitting ALE on 19 experiments (of 21 in the input, those with foci), 243 "
               "foci" in line for line in err), err


# --------------------------------------------------------------------------------------------
# a collection store as the input
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The pain studies with a label 'pain' (0.1, 0.25 or 0.5), and their MKDA store."""
    folder = tmp_path_factory.mktemp("labelled")
    data = json.loads(PAIN_JSON.read_text())
    for k, (_, sdata) in enumerate(sorted(data.items())):
        for cdata in sdata["contrasts"].values():
            cdata["labels"] = {"pain": (0.1, 0.25, 0.5)[k % 3]}
    source = folder / "pain.json"
    source.write_text(json.dumps(data))
    store = folder / "pain-mkda.zarr"
    code, err = _call(["ingest", str(source), "--kernel", "mkda", "--store", str(store),
                       "--mask", str(NIMARE_MASK)])
    assert code == 0, err
    return source, store


def test_fit_from_a_collection_equals_the_dataset(tmp_path, labelled):
    source, store = labelled
    runs = {}
    for name, path in (("store", store), ("json", source)):
        out = tmp_path / name
        code, err = _call(["mkda", str(path), "--select", "pain", "--label-threshold", "0.2",
                           "--out", str(out), "--fwe", "none", "--no-figures",
                           "--workers", "1"] + ([] if name == "store" else
                                                ["--mask", str(NIMARE_MASK)]))
        assert code == 0, err
        runs[name] = (out, err, json.loads((out / "provenance.json").read_text()))
    (out_s, err_s, prov_s), (out_j, _, prov_j) = runs["store"], runs["json"]
    assert np.array_equal(nib.load(out_s / "z.nii.gz").get_fdata(),
                          nib.load(out_j / "z.nii.gz").get_fdata())
    n = prov_s["n_experiments"]
    assert n == prov_j["n_experiments"] and 0 < n < 19
    assert prov_s["collection"] == str(store)
    assert prov_s["input_path"] == str(store.resolve())
    assert prov_s["input_sha256"] == hashlib.sha256(
        (store / "zarr.json").read_bytes()).hexdigest()
    assert (prov_s["selection"], prov_s["label_threshold"]) == ("pain", 0.2)
    assert any(f"fitting MKDADensity on {n} experiments (those of 21 with foci selected by "
               "'pain', label threshold 0.2)" in line for line in err_s)


@pytest.mark.parametrize(("command", "flags", "message"), [
    ("mkda", ["--radius", "8"], "--radius 8 does not match the kernel of the collection"),
    ("ale", [], "holds MA maps of MKDAKernel(r=10, value=1); ale needs ALEKernel maps"),
    ("kda", [], "kda needs KDAKernel maps (build one with: daskmeta ingest SOURCE --kernel kda"),
    ("mkda", ["--mask", str(DATA / "nimare-testdata" / "amygdala_roi.nii.gz")],
     "is not the mask the collection"),
    ("mkda", ["--select", "nope"], "unknown label 'nope'"),
    ("mkda", ["--select", "(" * 3000 + "pain"], "the label expression is nested too deeply"),
])
def test_collection_mismatch_is_one_line_before_the_cluster(tmp_path, labelled, command,
                                                             flags, message):
    _, store = labelled
    code, err = _call([command, str(store), "--out", str(tmp_path / "o"), "--fwe", "none",
                       *flags])
    _one_line_error(code, err, message)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# fuzzing the options: a clean one-line error before any work, or accepted
# --------------------------------------------------------------------------------------------
def _as_int(text):
    try:
        return int(text)
    except ValueError:
        return None


def _as_float(text):
    try:
        return float(text)
    except ValueError:
        return None


_CORES = os.cpu_count() or 1
_PREFIX_RULE = re.compile(r"\w[\w.+=-]*")
# What each option accepts, as the help and the README state it.
VALID = {
    "--n-iters": lambda t: (v := _as_int(t)) is not None and 1 <= v <= MAX_N_ITERS,
    "--seed": lambda t: (v := _as_int(t)) is not None and 0 <= v < 2**63,
    "--voxel-thresh": lambda t: (v := _as_float(t)) is not None and 0 < v < 1,
    "--workers": lambda t: (v := _as_int(t)) is not None and 1 <= v <= max(4, 4 * _CORES),
    "--prefix": lambda t: (bool(_PREFIX_RULE.fullmatch(t)) and ".." not in t
                           and len(t) <= 100),
    "--fwhm": lambda t: (v := _as_float(t)) is not None and math.isfinite(v) and 0 < v <= 100,
    "--radius": lambda t: (v := _as_float(t)) is not None and math.isfinite(v) and 0 < v <= 100,
}

_numbers = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.integers(min_value=-3, max_value=12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0, max_value=200).map(repr),
    st.sampled_from(["0", "-0", "1e6", "1e-400", "1e400", "nan", "inf", "0x10", "1_0", " 5",
                     "", "٣", "²"]),
)
_values = st.one_of(_numbers, st.text(max_size=12),
                    st.sampled_from(["../x", "a/b", "..", ".", "ok_run-1", "x..y", "..\\x"]),
                    st.sampled_from(["1", "2", "20", "0.01", "8.5", "run_1", "A.b-c"]))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(["ale", "mkda"]),
       options=st.dictionaries(st.sampled_from(sorted(VALID)), _values, min_size=1,
                               max_size=4))
def test_fuzzed_options_fail_cleanly_or_are_accepted(command, options):
    options = {k: v for k, v in options.items()
               if (k, command) not in (("--fwhm", "mkda"), ("--radius", "ale"))}
    if not options or "\x00" in "".join(options.values()):
        return  # an option this command does not take / a value no OS passes in argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        before = _listing(root)
        missing = root / "missing.json"  # accepted options reach the input: it is missing
        argv = [command, str(missing), "--out", str(root / "out"), "--no-figures"]
        argv += [f"{k}={v}" for k, v in options.items()]
        code, err = _call(argv)
        _one_line_error(code, err)
        bad = [k for k, v in options.items() if not VALID[k](v)]
        if bad:
            assert any(k in err[-1] for k in bad), (options, err[-1])
            assert "does not exist" not in err[-1]
        else:
            assert "missing.json' does not exist" in err[-1], (options, err[-1])
        assert _listing(root) == before
