"""HTML reports: daskmeta's ``MetaResult.report`` against NiMARE's ``run_reports``, side by
side on the same result.

Both programs fit MKDADensity on the 21 pain studies with NiMARE's mask and correct it
(Bonferroni), then write their report; each program runs in its own fresh process, which
times its report calls (the first one, which imports the plotting libraries, and the median
of the next ``--repeats``) and prints its peak resident memory (``ru_maxrss``). The fit is
not timed. Both reports hold glass-brain figures and an interactive viewer; NiMARE's is a
folder of files (a page with figures and iframes), daskmeta's one self-contained page.

Usage::

    .venv/bin/python benchmarks/reports.py              # about a minute on 2 cores
    .venv/bin/python benchmarks/reports.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTDATA = HERE.parents[1] / "shared" / "data" / "nimare-testdata"
MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN = TESTDATA / "test_pain_dataset.json"

COMMON = """
import json, resource, statistics, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.getLogger("nimare").setLevel(logging.ERROR)
out, repeats = sys.argv[1], int(sys.argv[2])
def timed(write):
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        path = write(f"{out}/run{i}")
        times.append(time.perf_counter() - t)
    return path, times
"""

NIMARE = COMMON + f"""
from nimare.correct import FWECorrector
from nimare.dataset import Dataset
from nimare.meta.cbma import MKDADensity
from nimare.reports.base import run_reports
ds = Dataset({str(PAIN)!r}, mask={str(MASK)!r})
res = FWECorrector(method="bonferroni").transform(MKDADensity().fit(ds))
def write(d):
    run_reports(res, d)
    return d
path, times = timed(write)
""" + """
import os
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
print(json.dumps({"times": times, "bytes": size,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

DASKMETA = COMMON + f"""
import daskmeta
from daskmeta.correct import FWECorrector
from daskmeta.estimators import MKDADensity
ds = daskmeta.io.read({str(PAIN)!r})
res = FWECorrector(method="bonferroni").transform(
    MKDADensity(mask={str(MASK)!r}).fit(ds))
path, times = timed(lambda d: res.report(d, progress=False))
""" + """
print(json.dumps({"times": times, "bytes": path.stat().st_size,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(script: str, out: str, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", script, out, str(repeats)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import statistics

    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, script in (("NiMARE run_reports", NIMARE),
                             ("daskmeta MetaResult.report", DASKMETA)):
            out = Path(tmp) / name.split()[0]
            out.mkdir()
            rows[name] = _run(script, str(out), args.repeats)
    print(f"report of MKDADensity + Bonferroni on the 21 pain studies ({args.repeats} "
          "repeats after the first)")
    print(f"{'':30s} {'first s':>8s} {'median s':>9s} {'MB written':>11s} {'peak RSS MB':>12s}")
    med = {}
    for name, r in rows.items():
        med[name] = statistics.median(r["times"][1:]) if len(r["times"]) > 1 else r["times"][0]
        print(f"{name:30s} {r['times'][0]:8.2f} {med[name]:9.2f} {r['bytes'] / 1e6:11.2f} "
              f"{r['rss_mb']:12.0f}")
    nim, ours = med["NiMARE run_reports"], med["daskmeta MetaResult.report"]
    print(f"ratio (NiMARE / daskmeta, median): {nim / ours:.1f}x")


if __name__ == "__main__":
    main()
