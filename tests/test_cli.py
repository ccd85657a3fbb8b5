"""The command line: the demo, analyses on real inputs, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK, PAIN_JSON, TESTDATA

from daskmeta.cli import main


def test_demo_writes_maps_table_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-iters", "300", "--workers", "1",
                 "--n-experiments", "25", "--mask", str(NIMARE_MASK)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out.resolve())
    for name in ("z", "logp", "stat", "p", "z_level-voxel_corr-FWE_method-montecarlo",
                 "z_desc-size_level-cluster_corr-FWE_method-montecarlo",
                 "logp_desc-mass_level-cluster_corr-FWE_method-montecarlo"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == (91, 109, 91)
    assert (out / "z.png").stat().st_size > 10_000
    assert (out / "z_montecarlo-FWE.png").stat().st_size > 10_000
    table = pd.read_csv(out / "clusters.tsv", sep="\t")
    corrected = table[table["map"] == "z_desc-size_level-cluster_corr-FWE_method-montecarlo"]
    sites = pd.read_csv(out / "true_sites.tsv", sep="\t").to_numpy()
    # Every surviving cluster peaks within 10 mm of a true site, and most sites are found.
    peaks = corrected[["peak_x", "peak_y", "peak_z"]].to_numpy()
    assert len(peaks) >= 3
    dists = np.linalg.norm(peaks[:, None, :] - sites[None], axis=2)
    assert (dists.min(axis=1) <= 10).all()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fwe_montecarlo_n_iters"] == 300 and prov["estimator"] == "ALE"


def test_default_cluster_is_threads_in_this_process(tmp_path, capsys):
    """Without --workers the embedded cluster is one worker in this process with a thread per
    core (<= 4); --workers N starts N processes; the seeded maps are the same."""
    argv = ["ale", str(TESTDATA / "test_pain_dataset.json"), "--mask", str(NIMARE_MASK),
            "--n-iters", "200", "--seed", "3", "--no-figures"]
    assert main(argv + ["--out", str(tmp_path / "threads")]) == 0
    err = capsys.readouterr().err
    cores = max(1, min(4, os.cpu_count() or 1))
    assert f"Dask: in this process, 1 worker(s), {cores} thread(s)" in err
    assert main(argv + ["--out", str(tmp_path / "procs"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "Dask: tcp://127.0.0.1:" in err and ", 2 worker(s), 2 thread(s)" in err
    names = sorted(p.name for p in (tmp_path / "threads").glob("*.nii.gz"))
    assert "z_desc-size_level-cluster_corr-FWE_method-montecarlo.nii.gz" in names
    assert names == sorted(p.name for p in (tmp_path / "procs").glob("*.nii.gz"))
    for name in names:
        np.testing.assert_array_equal(nib.load(tmp_path / "threads" / name).get_fdata(),
                                      nib.load(tmp_path / "procs" / name).get_fdata(), name)
    assert main(argv + ["--out", str(tmp_path / "x"), "--workers", "0"]) == 2
    assert re.search(r"--workers must be an integer from 1 to \d+; got 0$",
                     capsys.readouterr().err.strip())


def test_ale_on_sleuth_file_bonferroni(tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["ale", str(TESTDATA / "test_sleuth_file.txt"), "--out", str(out),
                 "--fwe", "bonferroni", "--mask", str(NIMARE_MASK), "--workers", "1",
                 "--prefix", "sleuth", "--no-figures"])
    assert code == 0
    assert (out / "sleuth_z_corr-FWE_method-bonferroni.nii.gz").exists()
    assert (out / "sleuth_clusters.tsv").exists()
    assert not list(out.glob("*.png"))


def test_mkda_on_nimare_json(tmp_path):
    out = tmp_path / "res"
    code = main(["mkda", str(TESTDATA / "test_pain_dataset.json"), "--out", str(out),
                 "--fwe", "none", "--mask", str(NIMARE_MASK), "--workers", "1",
                 "--no-figures", "--radius", "8"])
    assert code == 0
    z = nib.load(out / "z.nii.gz").get_fdata()
    assert z.max() > 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ale", "{tmp}/missing.txt", "--out", "{tmp}/o"], "daskmeta: error: "),
        (["ale", str(TESTDATA / "test_sleuth_file3.txt"), "--out", "{tmp}/o"],
         "test_sleuth_file3.txt, line 5"),
        (["ale", str(TESTDATA / "test_sleuth_file5.txt"), "--out", "{tmp}/o"],
         "test_sleuth_file5.txt, line 1: unknown reference space 'Dog'"),
        (["ale", "{csv}", "--out", "{tmp}/o", "--fwe", "none"],
         "the ALE kernel needs a sample size for every experiment"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, argv, message):
    csv = tmp_path / "foci.csv"
    csv.write_text("id,x,y,z\na,0,0,0\nb,10,10,10\n")
    argv = [a.format(tmp=tmp_path, csv=csv) for a in argv]
    assert main(argv + ["--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("daskmeta: error: ")
    assert message in err[-1]
    assert not any("Traceback" in line for line in err)


def _run_cli(*args):
    # In a fresh interpreter: pytest records warnings (and errors on DaskmetaWarning) in-process.
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ}, check=False)


def test_warnings_are_one_line(tmp_path):
    csv = tmp_path / "foci.csv"
    csv.write_text("id,x,y,z\na,0,0,0\na,-30,20,10\nb,10,10,10\nb,0,0,200\nc,20,-40,30\n")
    proc = _run_cli("-m", "daskmeta", "mkda", str(csv), "--out", str(tmp_path / "o"),
                    "--fwe", "none", "--no-figures", "--mask", str(NIMARE_MASK),
                    "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert ("daskmeta: warning: 1 of 5 foci (in 1 experiments) lie more than 10 mm outside "
            "the mask and were dropped") in err
    # Not Python's "file.py:123: DaskmetaWarning: ..." followed by the source line.
    assert not any("warnings.warn(" in line or "DaskmetaWarning" in line for line in err)
    assert not any(".py:" in line for line in err)


def test_command_exits_with_its_status_after_writing_everything(tmp_path):
    """``python -m daskmeta`` (as the ``daskmeta`` script) ends the process itself once the
    command is done: its status, its printed output and its files are all there."""
    out = tmp_path / "o"
    proc = _run_cli("-m", "daskmeta", "mkda", str(TESTDATA / "test_pain_dataset.json"),
                    "--out", str(out), "--fwe", "none", "--mask", str(NIMARE_MASK))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert nib.load(out / "z.nii.gz").get_fdata().max() > 3
    assert pd.read_csv(out / "clusters.tsv", sep="\t")["map"].eq("z").any()
    assert (out / "z.png").stat().st_size > 10_000
    proc = _run_cli("-m", "daskmeta", "ale", str(tmp_path / "missing.txt"), "--out",
                    str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("daskmeta: error: ")


def test_other_warnings_name_their_category():
    script = ("import sys, warnings\n"
              "from daskmeta import cli\n"
              "from daskmeta.cli import _common, data\n"
              "data._run_fetch = lambda args: warnings.warn('overflow in\\nexp', RuntimeWarning)\n"
              "code = cli.main(['fetch', 'neurosynth'])\n"
              "assert warnings.formatwarning is not _common._format_warning  # restored\n"
              "warnings.warn('after the run', UserWarning)\n"
              "sys.exit(code)\n")
    proc = _run_cli("-c", script)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert err[0] == "daskmeta: warning (RuntimeWarning): overflow in exp"
    assert "UserWarning: after the run" in err[1]  # Python's own format again


def test_warning_format_is_restored_after_errors(monkeypatch, capsys):
    from daskmeta import DaskmetaError, DaskmetaWarning, cli

    seen = []

    def fetch(args):
        seen.append(warnings.formatwarning("dropped", DaskmetaWarning, "x.py", 1))
        raise DaskmetaError("no network")

    original = warnings.formatwarning
    monkeypatch.setattr(cli.data, "_run_fetch", fetch)
    assert main(["fetch", "neurosynth"]) == 2
    assert seen == ["daskmeta: warning: dropped\n"]
    assert warnings.formatwarning is original
    assert capsys.readouterr().err.splitlines() == ["daskmeta: error: no network"]


def test_help_everywhere():
    for cmd in ([], ["ale"], ["mkda"], ["kda"], ["demo"], ["fetch"], ["ingest"]):
        proc = subprocess.run([sys.executable, "-m", "daskmeta", *cmd, "--help"],
                              capture_output=True, text=True, env={**os.environ}, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "usage: daskmeta" in proc.stdout


def test_mkda_on_neurosynth_topic(tmp_path, data_dir):
    from daskmeta import DaskmetaWarning

    out = tmp_path / "topic"
    with pytest.warns(DaskmetaWarning, match=r"134 of 35687 foci \(in 33 experiments\) lie "
                                             r"more than 10 mm outside the mask"):
        code = main(["mkda", str(data_dir / "neurosynth-v7"), "--out", str(out),
                     "--select", "LDA50__32_pain_somatosensory_stimulation", "--label-threshold",
                     "0.05", "--fwe", "none", "--no-figures", "--mask", str(NIMARE_MASK),
                     "--workers", "1"])
    assert code == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["estimator"] == "MKDADensity" and prov["n_experiments"] == 865


def _labelled_pain_json(path):
    """The pain studies with a label 'pain' of weight 0.1, 0.25 or 0.5 by contrast."""
    data = json.loads(PAIN_JSON.read_text())
    weights = {}
    for k, (study, sdata) in enumerate(sorted(data.items())):
        for contrast, cdata in sdata["contrasts"].items():
            w = (0.1, 0.25, 0.5)[k % 3]
            cdata["labels"] = {"pain": w}
            if "coords" in cdata:
                weights[f"{study}-{contrast}"] = w
    path.write_text(json.dumps(data))
    return weights


@pytest.mark.parametrize(("flags", "expected", "deprecated"),
                         [([], 0.001, False), (["--label-threshold", "0.2"], 0.2, False),
                          (["--threshold", "0.3"], 0.3, True)])
def test_label_threshold_and_its_deprecated_alias(tmp_path, capsys, flags, expected,
                                                  deprecated):
    weights = _labelled_pain_json(tmp_path / "pain.json")
    out = tmp_path / "o"
    argv = ["mkda", str(tmp_path / "pain.json"), "--out", str(out), "--select", "pain",
            "--fwe", "none", "--no-figures", "--mask", str(NIMARE_MASK), "--workers", "1",
            *flags]
    assert main(argv) == 0
    n = sum(w >= expected for w in weights.values())
    assert 0 < n < 19 or expected == 0.001
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["label_threshold"] == expected and prov["selection"] == "pain"
    assert prov["n_experiments"] == n
    err = capsys.readouterr().err.splitlines()
    # One number of experiments: the log says what the provenance says.
    assert any(f"fitting MKDADensity on {n} experiments (those of 21 with foci selected by "
               f"'pain', label threshold {expected:g})" in line for line in err), err
    warning = ("daskmeta: warning: --threshold is deprecated; use --label-threshold (the "
               "label weight threshold of --select)")
    assert (warning in err) is deprecated
    # Both at once is an error.
    assert main(["mkda", str(tmp_path / "pain.json"), "--out", str(tmp_path / "o2"),
                 "--threshold", "0.1", "--label-threshold", "0.1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "give --label-threshold only (--threshold is its deprecated name)")
    assert not (tmp_path / "o2").exists()


def test_help_names_label_threshold_only():
    from daskmeta.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["ale"].format_help()
    assert "--label-threshold" in text
    assert "--threshold" not in text.replace("--label-threshold", "")
