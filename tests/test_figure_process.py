"""The figure process of analysis commands (``daskmeta.reports._render``): the same figures as
drawing them in the command's own process, byte for byte; a child that dies, hangs or fails
changes nothing but where the figure is drawn; drawing errors and warnings reach the caller;
the child never outlives its owner."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
from conftest import NIMARE_MASK, PAIN_JSON

from daskmeta.exceptions import DaskmetaError
from daskmeta.reports import _render
from daskmeta.reports._render import FigureDrawer, FigureProcess, figure_drawer
from daskmeta.space import resolve_space


@pytest.fixture(scope="module")
def images():
    """A smooth in-mask map with a blob above 3.09, its image, and a null sample."""
    space = resolve_space(str(NIMARE_MASK))
    xyz = space.ijk_to_mm(np.argwhere(space.mask))
    z = (4.0 * np.exp(-np.sum((xyz - [40.0, -20.0, 50.0]) ** 2, axis=1) / 200.0)
         - 0.5).astype(np.float32)
    null = np.random.default_rng(0).gamma(3.0, 1.0, 500)
    return space.to_img(z), null


def _ask_all(drawer, img, null):
    return [drawer.submit("glass_brain", img=img, threshold=3.09, title="z", dpi=110),
            drawer.submit("slices", img=img, threshold=3.09, title=""),
            drawer.submit("viewer", img=img, threshold=3.09, title="v", vmin=0.0),
            drawer.submit("null_histogram", values=null, observed=np.float64(9.5),
                          title="Voxel-level FWE", xlabel="maximum statistic"),
            drawer.submit("approximate_null", bins=np.linspace(0, 1, 50),
                          weights=np.arange(50.0)[::-1], observed=None)]


DRAW_HERE = """
import json, sys
import nibabel as nib
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_figure_process import _ask_all
from daskmeta.reports._render import FigureDrawer
img, null = nib.load(sys.argv[2]), np.load(sys.argv[3])
drawn = [p.result() for p in _ask_all(FigureDrawer(), img, null)]
for i, d in enumerate(drawn):
    with open(f"{sys.argv[4]}.{i}", "wb") as f:
        f.write(d if isinstance(d, bytes) else d.encode())
"""


def test_the_child_draws_the_same_bytes(images, tmp_path):
    """The same bytes as drawing in a command's own (fresh) process: this test process's
    matplotlib state, changed by other tests, is not a command's."""
    img, null = images
    with FigureProcess() as child:
        drawn = [p.result() for p in _ask_all(child, img, null)]
        assert child._proc.poll() is None  # it answered: nothing was drawn here instead
        assert not child._broken
    img.to_filename(tmp_path / "z.nii")
    np.save(tmp_path / "null.npy", null)
    subprocess.run([sys.executable, "-c", DRAW_HERE, str(Path(__file__).parent),
                    str(tmp_path / "z.nii"), str(tmp_path / "null.npy"),
                    str(tmp_path / "fig")], check=True, timeout=300)
    here = [(tmp_path / f"fig.{i}").read_bytes() for i in range(len(drawn))]
    assert [type(d) for d in drawn] == [bytes, bytes, str, bytes, bytes]
    assert [d if isinstance(d, bytes) else d.encode() for d in drawn] == here
    assert drawn[0][:8] == b"\x89PNG\r\n\x1a\n" and "<iframe" in drawn[2]


def test_a_dead_child_changes_nothing_but_where(images):
    img, null = images
    child = FigureProcess()
    child._proc.kill()
    child._proc.wait()
    try:
        drawn = [p.result() for p in _ask_all(child, img, null)]
    finally:
        child.close()
    assert child._broken
    assert drawn == [p.result() for p in _ask_all(FigureDrawer(), img, null)]


def test_a_hung_child_is_killed_and_the_figure_drawn_here(images, monkeypatch):
    img, _ = images
    monkeypatch.setattr(_render, "_TIMEOUT", 0.5)
    child = FigureProcess()
    child._proc.send_signal(19)  # SIGSTOP: the child never answers
    try:
        png = child.submit("glass_brain", img=img, threshold=3.09, title="z").result()
        assert child._proc is None  # closed (killed) on the timeout
        later = child.submit("slices", img=img, threshold=3.09, title="")
        assert later._future is None  # drawn here from now on
    finally:
        child.close()
    assert png == FigureDrawer().submit("glass_brain", img=img, threshold=3.09,
                                        title="z").result()


def test_drawing_errors_are_raised_here(images):
    img, _ = images
    with FigureProcess() as child:
        pending = child.submit("glass_brain", img=img, threshold=3.09, title="z",
                               display_mode="nonsense")
        with pytest.raises(ValueError, match="nonsense"):
            pending.result()
        # the child is still serving
        assert child.submit("null_histogram", values=np.arange(10.0), observed=None,
                            title="t", xlabel="x").result()[:4] == b"\x89PNG"
        assert not child._broken
    with pytest.raises(ValueError, match="no figure function 'plot'"):
        FigureDrawer().submit("plot")


def test_the_childs_warnings_reach_the_caller(images):
    img, _ = images
    empty = type(img)(np.zeros(img.shape, np.float32), img.affine)
    with FigureDrawer() as here:
        with warnings.catch_warnings(record=True) as caught_here:
            warnings.simplefilter("always")
            here.submit("viewer", img=empty, threshold=None, title="").result()
    with FigureProcess() as child:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            child.submit("viewer", img=empty, threshold=None, title="").result()
    assert any("img is empty" in str(w.message) for w in caught_here)
    assert ({(w.category, str(w.message)) for w in caught}
            == {(w.category, str(w.message)) for w in caught_here})


def test_stealing_draws_here_what_the_child_has_not_started(images):
    img, null = images
    with FigureProcess() as child:
        first = child.submit("glass_brain", img=img, threshold=3.09, title="z")
        last = child.submit("null_histogram", values=null, observed=None, title="t",
                            xlabel="x")
        png = last.result(steal=True)  # the child is still warming up or on the first
        assert last._future is None or last._future.cancelled()
        assert first.result()[:4] == b"\x89PNG"
    assert png == FigureDrawer().submit("null_histogram", values=null, observed=None,
                                        title="t", xlabel="x").result()


def test_close_ends_the_child_at_once():
    child = FigureProcess()
    proc = child._proc
    child.close()
    assert proc.poll() is not None
    child.close()  # twice is fine


def test_the_setting(monkeypatch):
    with dask.config.set({"daskmeta.figure-process": False}):
        assert type(figure_drawer()) is FigureDrawer
    assert type(figure_drawer(needed=False)) is FigureDrawer
    with figure_drawer() as drawer:
        assert isinstance(drawer, FigureProcess)
    with dask.config.set({"daskmeta.figure-process": "maybe"}):
        with pytest.raises(DaskmetaError, match="daskmeta.figure-process must be true or "
                                                "false; got 'maybe'"):
            figure_drawer()


def test_a_run_writes_the_same_files_either_way(tmp_path):
    """``daskmeta ale`` with and without the figure process (fresh processes, as users run
    it): the same files, figures and report byte for byte (but the report's time stamp)."""
    import os
    import re

    for setting in ("true", "false"):
        env = dict(os.environ, DASK_DASKMETA__FIGURE_PROCESS=setting)
        subprocess.run([sys.executable, "-m", "daskmeta", "ale", str(PAIN_JSON), "--mask",
                        str(NIMARE_MASK), "--out", str(tmp_path / setting), "--n-iters", "60",
                        "--seed", "3"], check=True, env=env, timeout=600,
                       capture_output=True)
    names = sorted(p.name for p in (tmp_path / "true").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "false").iterdir())
    assert {"z.png", "z_montecarlo-FWE.png", "report.html", "clusters.tsv"} <= set(names)
    for name in names:
        if name not in ("report.html", "provenance.json"):
            assert ((tmp_path / "true" / name).read_bytes()
                    == (tmp_path / "false" / name).read_bytes()), name
    stamp = r"written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+"
    pages = [re.sub(stamp, "", (tmp_path / s / "report.html").read_text())
             for s in ("true", "false")]
    # The report's parameters include the output folder given on the command line.
    assert pages[0].replace(str(tmp_path / "true"), "OUT") == pages[1].replace(
        str(tmp_path / "false"), "OUT")


def test_a_library_run_lists_the_files_in_order(tmp_path):
    from daskmeta.io import read
    from daskmeta.workflows import run_cbma

    out = run_cbma("ale", read(PAIN_JSON), tmp_path, mask=str(NIMARE_MASK), n_iters=20,
                   seed=3, report=True, log=lambda msg: None)
    names = [p.name for p in out["paths"]]
    assert names.index("z.png") == names.index("clusters.tsv") + 1
    assert names.index("z_montecarlo-FWE.png") == names.index("z.png") + 1
    assert names[-1] == "report.html" and all(p.exists() for p in out["paths"])


def test_what_the_child_prints_does_not_mix_with_its_answers(tmp_path):
    fake = tmp_path / "fake_render.py"
    fake.write_text("import os\n"
                    "def serve(stdin, answers):\n"
                    "    print('noise')\n"
                    "    os.write(1, b'more noise\\n')\n"
                    "    answers.write(b'answer\\n')\n"
                    "    answers.flush()\n")
    out = subprocess.run([sys.executable, "-c", _render._BOOT, str(fake)], capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=60, check=True)
    assert out.stdout == b"answer\n"
    assert b"noise" in out.stderr and b"more noise" in out.stderr
