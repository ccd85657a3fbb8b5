"""A read-only install caches its compiled code in a per-version directory of its own: the
first run compiles and writes there, the second loads from there (nothing compiles)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NIMARE_MASK, PAIN_JSON

import daskmeta

CHILD = f"""
import json, dask
import daskmeta
from daskmeta import _combine, _numba_cache
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE

with dask.config.set(scheduler="synchronous"):
    res = ALE(mask={str(NIMARE_MASK)!r}).fit(daskmeta.io.read({str(PAIN_JSON)!r}))
    res = FWECorrector("montecarlo", n_iters=4, seed=1).transform(res)
stats = [f.stats for f in (_combine.combine, _combine._segments_of_lines)]
print(json.dumps({{
    "package": daskmeta.__file__,
    "cache_dir": str(_numba_cache.cache_dir()),
    "hits": sum(sum(s.cache_hits.values()) for s in stats),
    "misses": sum(sum(s.cache_misses.values()) for s in stats),
    "max_stat": float(res.get_map("stat", "array").max()),
}}))
"""


def _run(site: Path, home: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_", "DASKMETA_", "XDG_"))}
    env.update(PYTHONPATH=str(site), HOME=str(home))
    command = [sys.executable, *(args or ("-c", CHILD))]
    if os.geteuid() == 0:
        # root writes through file modes: drop that capability so the package is read-only.
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps", "-dac_override,-dac_read_search", "--", *command]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if args:
        return {"stderr": proc.stderr}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="as root, a read-only directory needs setpriv (util-linux)")
def test_read_only_install_caches_in_a_per_version_directory(tmp_path):
    source = Path(daskmeta.__file__).parent
    site, home = tmp_path / "site", tmp_path / "home"
    shutil.copytree(source, site / "daskmeta",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nb*"))
    home.mkdir()
    package = [site / "daskmeta", *(site / "daskmeta").rglob("*")]
    for path in package:
        path.chmod(0o555 if path.is_dir() else 0o444)
    want = home / ".cache" / "daskmeta" / f"numba-{daskmeta.__version__}"
    try:
        first = _run(site, home)
        assert first["package"] == str(site / "daskmeta" / "__init__.py")
        assert first["cache_dir"] == str(want)
        assert first["misses"] > 0 and first["hits"] == 0
        assert list(want.rglob("*.nbi")), "nothing was cached"
        assert not list((site / "daskmeta").rglob("*.nb*"))  # the package is untouched
        second = _run(site, home)
        assert second["cache_dir"] == str(want)
        assert second["misses"] == 0 and second["hits"] >= 2
        assert second["max_stat"] == first["max_stat"]
    finally:
        for path in package:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_precompile_leaves_nothing_to_compile(tmp_path):
    """After ``python -m daskmeta.precompile`` (on simulated data, default mask) an analysis
    of real data with another mask compiles nothing."""
    site, home = tmp_path / "site", tmp_path / "home"
    shutil.copytree(Path(daskmeta.__file__).parent, site / "daskmeta",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nb*"))
    home.mkdir()
    err = _run(site, home, "-m", "daskmeta.precompile")["stderr"]
    assert "daskmeta: compiling into the package's __pycache__ directories" in err
    assert list((site / "daskmeta").rglob("*.nbi"))
    out = _run(site, home)
    assert out["cache_dir"] == "None"  # a writable install caches in the package
    assert out["misses"] == 0 and out["hits"] >= 2


def test_writable_install_keeps_numba_default():
    from daskmeta import _numba_cache

    # This checkout is writable: numba caches next to the sources, as it always did.
    if os.access(Path(daskmeta.__file__).parent, os.W_OK) and not os.environ.get(
            "NUMBA_CACHE_DIR"):
        assert _numba_cache.cache_dir() is None
    else:
        pytest.skip("the package under test is not writable or NUMBA_CACHE_DIR is set")


def test_cache_directory_choice(monkeypatch, tmp_path):
    from daskmeta._numba_cache import default_dir

    version = daskmeta.__version__
    monkeypatch.delenv("DASKMETA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_dir() == tmp_path / "h" / ".cache" / "daskmeta" / f"numba-{version}"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "daskmeta" / f"numba-{version}"
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "mine"))
    assert default_dir() == tmp_path / "mine"


WARM_UP_CHILD = f"""
import json, dask
import daskmeta
from daskmeta import precompile
from daskmeta._combine_kernels import _segments_of_lines, combine
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.estimators.ale import _convolve_step

functions = (combine, _segments_of_lines, _convolve_step)
thread = precompile.start_warm_up("ale")
thread.join()
warmed = [len(f.signatures) for f in functions]
data = daskmeta.io.read({str(PAIN_JSON)!r})
with dask.config.set(scheduler="synchronous"):
    for cls in (ALE, MKDADensity):
        res = cls(mask={str(NIMARE_MASK)!r}).fit(data)
        FWECorrector("montecarlo", n_iters=4, seed=1, progress=False).transform(res)
print(json.dumps({{"error": repr(thread.error), "warmed": warmed,
                  "after": [len(f.signatures) for f in functions]}}))
"""


def test_warm_up_compiles_what_fits_and_nulls_run():
    """The fit commands' background warm-up compiles (or loads) the combine and ALE's null
    convolution with the argument types of real runs: fits and Monte Carlo nulls of ALE and
    MKDA on real data then add no specialisation (a first run never compiles twice)."""
    proc = subprocess.run([sys.executable, "-c", WARM_UP_CHILD], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"error": "None", "warmed": [1, 1, 1], "after": [1, 1, 1]}
