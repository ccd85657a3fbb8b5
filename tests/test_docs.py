"""The documentation site builds with Sphinx with warnings as errors (``make docs``), its
gallery examples run, and its pages are there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index", "install", "api", "differences", "extending",
         "user_guide/datasets", "user_guide/kernels", "user_guide/estimators",
         "user_guide/corrections", "user_guide/collections", "user_guide/clusters",
         "user_guide/reports", "auto_examples/index", "auto_examples/plot_ale_simulated",
         "auto_examples/plot_mkda_pain"]


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # -q: only warnings and errors would print
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), page
    # The gallery ran its examples: their printed output and figures are in the pages.
    ale = (out / "auto_examples" / "plot_ale_simulated.html").read_text()
    assert "z_desc-size_level-cluster_corr-FWE_method-montecarlo" in ale
    assert "A coordinate-based meta-analysis (ALE) of 25 experiments" in ale
    assert list((out / "_images").glob("sphx_glr_plot_ale_simulated_*.png"))
    # The differences page is the README's list, included.
    readme = (ROOT / "README.md").read_text()
    first = readme.split("<!-- differences: start -->")[1].split("**")[1]
    assert first in (out / "differences.html").read_text()
    # The API reference is generated from the docstrings.
    api = (out / "api.html").read_text()
    for name in ("daskmeta.estimators.ALE", "daskmeta.correct.FWECorrector",
                 "daskmeta.reports.make_report", "daskmeta.progress.Progress"):
        assert f'id="{name}"' in api, name
