"""Time reading a NeuroStore parquet studyset of the whole Neurosynth v7 database.

Writes Neurosynth v7 (14,371 studies, 507,891 foci, LDA50 topic weights as annotations) as a
NeuroStore parquet studyset into a temporary folder with ``daskmeta.io.write_neurostore``,
then reads it ``--repeat`` times with ``daskmeta.io.read_neurostore`` (median wall time, peak
RSS) and, side by side, with NiMARE 0.22.1's ``nimare.nimads.Studyset(folder)`` when it is
installed. Target: under 2 s for 500,000 foci. Run it under the heavy lock on a shared
machine::

    flock /tmp/daskmeta-heavy.lock python benchmarks/read_neurostore.py
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    from daskmeta.io import read_neurostore, read_neurosynth, write_neurostore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--no-nimare", action="store_true", help="skip NiMARE's reader")
    args = parser.parse_args(argv)

    ns = read_neurosynth(args.data / "neurosynth-v7")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "neurosynth-v7-studyset"
        t0 = time.perf_counter()
        write_neurostore(ns, folder)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(f"wrote {ns} as a parquet studyset ({size:.1f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ds = read_neurostore(folder)
            times.append(time.perf_counter() - t0)
        same = (ds.ids == ns.ids and np.array_equal(ds.foci[["x", "y", "z"]].to_numpy(),
                                                   ns.foci[["x", "y", "z"]].to_numpy()))
        diff = float(np.abs(ds.foci[["x", "y", "z"]].to_numpy()
                            - ns.foci[["x", "y", "z"]].to_numpy()).max())
        print(f"daskmeta read_neurostore: {ds}; median {statistics.median(times):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}); peak RSS {_peak_mib():.0f} "
              f"MiB; same ids and foci as read_neurosynth: {same} (max abs diff {diff:g})")
        if args.no_nimare:
            return
        try:
            from nimare.nimads import Studyset
        except ImportError:
            print("NiMARE not installed: no side-by-side figure")
            return
        logging.getLogger("nimare").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
        theirs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            s = Studyset(str(folder))
            n = s.store.n_points
            theirs.append(time.perf_counter() - t0)
        print(f"NiMARE Studyset(folder): {len(s.ids)} analyses, {n} foci; median "
              f"{statistics.median(theirs):.2f} s (runs {', '.join(f'{t:.2f}' for t in theirs)})"
              f"; ratio {statistics.median(theirs) / statistics.median(times):.1f}x; peak RSS "
              f"of the process {_peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
