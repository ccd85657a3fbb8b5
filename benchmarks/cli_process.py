"""Whole runs as users time them: the ``daskmeta`` command against a NiMARE script, from
process start to exit.

1. ``daskmeta ale test_pain_dataset.json --mask <NiMARE's mask> --out TMP --fwe montecarlo
   --n-iters 2000 --seed 1`` (21 pain studies; maps, cluster tables and figures written)
   against a NiMARE 0.22.1 script doing ``ALE().fit`` and ``FWECorrector(method=
   "montecarlo", n_iters=2000, n_cores=2, voxel_thresh=0.001)`` on the same inputs and mask,
   then ``save_maps`` (``--nimare-no-save`` leaves that out), as a whole process. daskmeta is
   run

   * warm: its compiled code already cached (a run before the timed ones);
   * first run after a fresh install: the package copied without ``__pycache__`` into a new
     directory for every run, its bytecode compiled as ``pip install`` does (an empty numba
     cache);
   * first run after ``python -m daskmeta.precompile`` (what ``make demo`` / ``make test``
     installs do): a fresh copy, precompiled (not timed), then timed.

2. ``daskmeta demo --out TMP``: its first run on a fresh copy, and its second run.

Every run is a fresh process, timed from start to exit, its process tree sampled for peak
resident memory; the table gives medians over ``--repeats`` runs and ratios. The package
under test is this checkout's (``PYTHONPATH``), run as the ``daskmeta`` command that
``pip install`` makes of this checkout's ``pyproject.toml`` (same entry point, this
interpreter).

Usage::

    .venv/bin/python benchmarks/cli_process.py               # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/cli_process.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _tree_memory import TreePeak

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE.parents[1] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN = TESTDATA / "test_pain_dataset.json"
N_ITERS = 2000

NIMARE_SCRIPT = """
import sys, warnings, logging
warnings.filterwarnings("ignore")
logging.getLogger("nimare").setLevel(logging.ERROR)
from nimare.correct import FWECorrector
from nimare.dataset import Dataset
from nimare.meta.cbma import ALE

mask, source, out, n_iters, save = sys.argv[1:6]
dset = Dataset(source, mask=mask)
res = ALE(mask=mask).fit(dset)
res = FWECorrector(method="montecarlo", n_iters=int(n_iters), n_cores=2,
                   voxel_thresh=0.001).transform(res)
if save == "1":
    res.save_maps(output_dir=out)
"""


def console_script(directory: Path) -> str:
    """The ``daskmeta`` command as pip installs it from this checkout's ``pyproject.toml``
    (the entry point named there, run by this interpreter), written into ``directory``: the
    command of this checkout even when the environment's own script was installed from
    another one."""
    import tomllib

    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = entry["daskmeta"].partition(":")
    script = directory / "daskmeta"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\n"
                      f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    script.chmod(0o755)
    return str(script)


def timed_process(command, env=None, cwd=None) -> dict:
    """Run ``command`` to exit; wall seconds and peak RSS (MiB) of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = TreePeak(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": seconds, "rss_mib": peak.tree / 2**20, "stderr": err}


def fresh_copy(root: Path) -> Path:
    """This checkout's package copied without compiled caches into ``root/site``, its Python
    bytecode then compiled as ``pip install`` does (so only numba's cache is empty)."""
    import compileall

    site = root / "site"
    shutil.copytree(REPO / "daskmeta", site / "daskmeta",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nb*"))
    compileall.compile_dir(str(site / "daskmeta"), quiet=1)
    return site


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "DASKMETA_"))}
    env["PYTHONPATH"] = str(site)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def ale_command(script: str, out: Path) -> list[str]:
    return [script, "ale", str(PAIN), "--mask", str(MASK), "--out", str(out),
            "--fwe", "montecarlo", "--n-iters", str(N_ITERS), "--seed", "1"]


def run_all(repeats: int, nimare: bool, nimare_save: bool, log) -> dict:
    results: dict[str, list] = {}

    def add(name, rec):
        results.setdefault(name, []).append(rec)
        log(f"  {name}: {rec['seconds']:.2f} s, {rec['rss_mib']:.0f} MiB")

    with tempfile.TemporaryDirectory(prefix="daskmeta-cli-bench-") as tmp:
        tmp = Path(tmp)
        script = console_script(tmp)
        warm_env = _env(REPO)
        log("warming daskmeta's cache (not timed)")
        timed_process(ale_command(script, tmp / "warmup"), env=warm_env)
        for r in range(repeats):
            log(f"repeat {r + 1} of {repeats}")
            if nimare:
                nimare_script = tmp / "nimare_ale.py"
                nimare_script.write_text(NIMARE_SCRIPT)
                add("nimare", timed_process(
                    [sys.executable, str(nimare_script), str(MASK), str(PAIN),
                     str(tmp / f"n{r}"), str(N_ITERS), "1" if nimare_save else "0"],
                    env=_env(REPO)))
            add("warm", timed_process(ale_command(script, tmp / f"w{r}"), env=warm_env))
            site = fresh_copy(tmp / f"first{r}")
            add("first", timed_process(ale_command(script, tmp / f"f{r}"), env=_env(site)))
            site = fresh_copy(tmp / f"pre{r}")
            # Not from this checkout's directory: "-m" puts the working directory first on
            # sys.path, which would compile this checkout instead of the copy.
            timed_process([sys.executable, "-m", "daskmeta.precompile"], env=_env(site),
                          cwd=str(tmp))
            add("precompiled",
                timed_process(ale_command(script, tmp / f"p{r}"), env=_env(site)))
            site = fresh_copy(tmp / f"demo{r}")
            demo = [script, "demo", "--out", str(tmp / f"d{r}")]
            add("demo first", timed_process(demo, env=_env(site)))
            add("demo second", timed_process(demo, env=_env(site)))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each; medians are reported (default 3)")
    parser.add_argument("--no-nimare", action="store_true", help="daskmeta only")
    parser.add_argument("--nimare-no-save", action="store_true",
                        help="the NiMARE script does not save its maps")
    args = parser.parse_args(argv)
    import psutil

    busy = psutil.cpu_percent(interval=2.0)
    print(f"{psutil.cpu_count()} CPUs; {busy:.0f}% busy before the benchmark"
          + (" -- other work is running, timings will suffer" if busy > 15 else ""),
          flush=True)
    results = run_all(max(1, args.repeats), not args.no_nimare, not args.nimare_no_save,
                      log=lambda m: print(m, flush=True))
    med = {k: float(np.median([r["seconds"] for r in v])) for k, v in results.items()}
    rss = {k: float(np.median([r["rss_mib"] for r in v])) for k, v in results.items()}
    print()
    print(f"{'run':<38} {'median s':>9} {'peak RSS':>9} {'vs NiMARE':>10}")
    labels = {
        "nimare": "NiMARE fit + FWE (n_cores=2)" + ("" if not args.nimare_no_save
                                                     else ", no save"),
        "warm": "daskmeta ale, warm",
        "first": "daskmeta ale, first run (empty cache)",
        "precompiled": "daskmeta ale, first after precompile",
        "demo first": "daskmeta demo, first run",
        "demo second": "daskmeta demo, second run",
    }
    for key, label in labels.items():
        if key not in med:
            continue
        ratio = ""
        if "nimare" in med and key in ("warm", "first", "precompiled"):
            ratio = f"{med['nimare'] / med[key]:>9.2f}x"
        print(f"{label:<38} {med[key]:>9.2f} {rss[key]:>7.0f}Mi {ratio:>10}")
    if "demo first" in med:
        print(f"demo: first run / second run = {med['demo first'] / med['demo second']:.2f}")
    print(f"\nmedians of {args.repeats} run(s); each run a fresh process timed from start to "
          "exit; peak RSS of its process tree.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
