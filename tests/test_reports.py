"""HTML reports: the demo's page opened in headless Chromium (no console errors, figures,
viewer and cluster table, offline), atlas labels against the atlas image, the methods text,
reading an output folder back (``daskmeta report``), hostile text, and bad input."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK, PAIN_JSON

from daskmeta.cli import main
from daskmeta.exceptions import DaskmetaError

CHROMIUM = Path("/usr/bin/chromium")
HO_ATLAS = None
try:
    import nimare

    HO_ATLAS = (Path(nimare.__file__).parent / "resources" / "atlases"
                / "HarvardOxford-cort-maxprob-thr25-2mm.nii.gz")
except ImportError:  # the oracle is a test dependency; its absence fails the atlas tests
    pass
CHROME_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed when missing (the test machines run as root)."""
    if not CHROMIUM.exists():
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq",
                                                   "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env={"DEBIAN_FRONTEND": "noninteractive",
                                       "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            if proc.returncode != 0:
                pytest.fail(f"could not install chromium ({' '.join(cmd)}): "
                            f"{proc.stderr.strip()[-300:]}")
    assert CHROMIUM.exists()
    return CHROMIUM


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--out", str(out), "--n-iters", "200", "--n-experiments", "25"]) == 0
    return out


def test_demo_report_in_headless_chromium(demo_dir, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    page_path = demo_dir / "report.html"
    assert page_path.is_file()
    messages, errors, remote = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=CHROME_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            # The page must work offline: any request that is not the file itself or a
            # data: URI is recorded and refused.
            def route(r):
                url = r.request.url
                if url.startswith(("file://", "data:", "about:")):
                    return r.continue_()
                remote.append(url)
                return r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_timeout(500)
            widths = page.evaluate(
                "Array.from(document.querySelectorAll('#figures img'))"
                ".map(i => [i.complete, i.naturalWidth])")
            null_imgs = page.evaluate(
                "Array.from(document.querySelectorAll('#nulls img')).map(i => i.naturalWidth)")
            viewer = page.frame_locator("#interactive-viewer iframe")
            canvases = viewer.locator("canvas").count()
            canvas_size = viewer.locator("canvas").first.evaluate(
                "c => [c.width, c.height]")
            rows = page.locator("#clusters-0 tbody tr").count()
            first_peak = page.locator("#clusters-0 tbody tr").first.inner_text()
            headings = page.locator("h2").all_inner_texts()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert errors == []
    assert [m for m in messages if m[0] == "error"] == []
    assert remote == []
    assert len(widths) >= 3 and all(done and w > 300 for done, w in widths)
    assert len(null_imgs) == 4 and min(null_imgs) > 300  # 3 Monte Carlo nulls, 1 analytic
    assert canvases >= 1 and min(canvas_size) > 100
    table = pd.read_csv(demo_dir / "clusters.tsv", sep="\t")
    corrected = table[table["map"] == "z_desc-size_level-cluster_corr-FWE_method-montecarlo"]
    assert rows == len(corrected) >= 3
    x, y, z = corrected.iloc[0][["peak_x", "peak_y", "peak_z"]]
    assert first_peak.split()[2:5] == [f"{x:g}", f"{y:g}", f"{z:g}"]
    assert headings[:4] == ["Summary", "Methods", "Figures", "Interactive viewer"]
    assert (tmp_path / "report.png").stat().st_size > 50_000


def _ho_labels(path: Path) -> Path:
    """A label table for the Harvard-Oxford cortical atlas's 48 values (names made up: the
    test checks the lookup, not anatomy)."""
    table = pd.DataFrame({"index": np.arange(1, 49), "name": [f"HO region {i}"
                                                              for i in range(1, 49)]})
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def mkda_result(pain_dataset):
    from daskmeta import Space
    from daskmeta.correct import FWECorrector
    from daskmeta.estimators import MKDADensity

    res = MKDADensity(mask=Space(NIMARE_MASK)).fit(pain_dataset)
    return FWECorrector("bonferroni").transform(res)


def test_cluster_tables_name_atlas_regions(mkda_result, tmp_path):
    assert HO_ATLAS is not None and HO_ATLAS.is_file()
    labels = _ho_labels(tmp_path / "ho.tsv")
    page = mkda_result.report(tmp_path / "r", atlas=HO_ATLAS, atlas_labels=labels)
    text = page.read_text()
    from daskmeta.reports import Atlas

    atlas = Atlas(HO_ATLAS, labels, mkda_result.space)
    table, ids = mkda_result.get_table("z", threshold=3.09, return_labels=True)
    labelled = atlas.label_table(table, ids)
    assert len(labelled) > 3
    # Against the atlas image read directly (same grid as NiMARE's mask: no resampling).
    img = nib.load(HO_ATLAS)
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    n_named = 0
    for _, row in labelled.iterrows():
        ijk = np.round(inv @ [row.peak_x, row.peak_y, row.peak_z, 1.0])[:3].astype(int)
        value = int(data[tuple(ijk)])
        assert row.peak_region == ("" if value == 0 else f"HO region {value}")
        n_named += value > 0
        # The shares of the regions listed are those of the cluster's voxels.
        members = ids == row.cluster_id
        vals = atlas.values[members]
        top = np.bincount(vals[vals > 0], minlength=49)
        if top.any():
            best = int(np.argmax(top))
            share = 100 * top[best] / members.sum()
            assert row.regions.split("; ")[0] == f"HO region {best} ({share:.0f}%)"
    assert n_named >= 2
    assert "HO region" in text and "peak_region" in text


def test_methods_text_and_bibtex(mkda_result):
    text = mkda_result.description
    assert "MKDADensity" in text and "19 experiments with 243 foci" in text
    assert "radius 10 mm" in text and "Bonferroni correction over 228,483 voxels" in text
    keys = re.findall(r"@\w+\{(\w+),", mkda_result.bibtex)
    assert keys == ["wager2007meta", "bonferroni1936teoria", "lancaster2007bias", "Salo2023",
                    "rocklin2015dask"]


def _table(text: str, table_id: str):
    """The header and rows (cell texts) of the table ``table_id`` of a page."""
    from html.parser import HTMLParser

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.rows, self.cell = False, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table" and dict(attrs).get("id") == table_id:
                self.inside = True
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif self.inside and tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Parser()
    parser.feed(text)
    assert parser.rows, f"no table {table_id}"
    return parser.rows[0], parser.rows[1:]


def test_report_command_reads_an_output_folder(tmp_path, capsys):
    out = tmp_path / "mkda"
    assert main(["mkda", str(PAIN_JSON), "--out", str(out), "--fwe", "bonferroni",
                 "--mask", str(NIMARE_MASK), "--prefix", "pain", "--no-report"]) == 0
    assert not (out / "pain_report.html").exists()
    capsys.readouterr()
    labels = _ho_labels(tmp_path / "ho.tsv")
    assert main(["report", str(out), "--atlas", str(HO_ATLAS), "--atlas-labels",
                 str(labels)]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert page == (out / "pain_report.html").resolve()
    text = page.read_text()
    clusters = pd.read_csv(out / "pain_clusters.tsv", sep="\t")
    # The report's tables are the command's (same maps read back), plus the atlas columns.
    header, rows = _table(text, "clusters-0")
    col = header.index("n_voxels")
    assert [int(r[col]) for r in rows] == list(
        clusters[clusters["map"] == "z_corr-FWE_method-bonferroni"]["n_voxels"])
    assert header[-2:] == ["peak_region", "regions"]
    prov = json.loads((out / "pain_provenance.json").read_text())
    assert html.escape(prov["input_sha256"]) in text
    assert "Bonferroni correction over 228,483 voxels" in text
    # A later run into the same folder without correction: the report is of that run, not
    # of the maps the earlier one left there.
    assert main(["mkda", str(PAIN_JSON), "--out", str(out), "--fwe", "none",
                 "--mask", str(NIMARE_MASK), "--prefix", "pain", "--no-report"]) == 0
    assert (out / "pain_z_corr-FWE_method-bonferroni.nii.gz").exists()  # left over
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = page.read_text()
    assert "z_corr-FWE_method-bonferroni" not in text and "Bonferroni" not in text
    assert "Clusters of z &gt; 3.09" in text


def test_hostile_text_is_escaped_and_diagnostics_tables_render(mkda_result, tmp_path):
    res = mkda_result.copy()
    res.attrs["selection"] = "<script>alert(1)</script>"
    res.tables = {"jackknife <b>": pd.DataFrame({"experiment": ["<img src=x onerror=1>"],
                                                 "cluster 1": [0.25]})}
    text = res.report(tmp_path, filename="r.html").read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=1&gt;" in text
    assert 'id="diagnostics-0"' in text and "jackknife &lt;b&gt;" in text


def test_bad_report_input(mkda_result, tmp_path, capsys):
    with pytest.raises(DaskmetaError, match="give an atlas image and its labels together"):
        mkda_result.report(tmp_path, atlas=HO_ATLAS)
    with pytest.raises(DaskmetaError, match=r"name no region for image values 1, 2, 3"):
        mkda_result.report(tmp_path, atlas=HO_ATLAS, atlas_labels={48: "x"})
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\ty\n1\ta\n")
    with pytest.raises(DaskmetaError, match=r"bad.tsv: need an 'index' and a 'name' column"):
        mkda_result.report(tmp_path, atlas=HO_ATLAS, atlas_labels=bad)
    with pytest.raises(DaskmetaError, match="not a plain file name"):
        mkda_result.report(tmp_path, filename="../x.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "holds no provenance.json" in capsys.readouterr().err
    assert main(["report", str(empty), "--atlas", str(HO_ATLAS)]) == 2
    assert "give --atlas and --atlas-labels together" in capsys.readouterr().err
    assert main(["kda", str(PAIN_JSON), "--out", str(tmp_path / "k"), "--no-report",
                 "--atlas", str(HO_ATLAS), "--atlas-labels", str(bad)]) == 2
    assert "does not go with --no-report" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    # A folder whose mask is not the one its provenance records.
    out = tmp_path / "run"
    mkda_result.save_maps(out)
    prov = mkda_result.save_provenance(out / "provenance.json")
    attrs = json.loads(prov.read_text())
    attrs["mask_source"] = "nilearn:MNI152_2mm_brain_mask"
    prov.write_text(json.dumps(attrs))
    assert main(["report", str(out)]) == 2
    assert "is not the one the results in" in capsys.readouterr().err
    shutil.rmtree(out)
