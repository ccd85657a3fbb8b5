"""Time the whole-database readers: Neurosynth v7 and NeuroQuery v1.

Reads each database ``--repeat`` times (3 by default) in this process and prints its counts
and the median wall time. The data are the upstream release files in ``../shared/data``.

Usage::

    python benchmarks/read_databases.py
    python benchmarks/read_databases.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def time_read(reader, path, repeat):
    """Median wall time of ``reader(path)`` over ``repeat`` runs, and the last Dataset."""
    times, ds = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        ds = reader(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, ds


def main(argv=None):
    from daskmeta.io import read_neuroquery, read_neurosynth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per database (default 3)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    args = parser.parse_args(argv)

    rows = []
    for name, reader, folder in (
        ("neurosynth-v7", read_neurosynth, "neurosynth-v7"),
        ("neuroquery-v1", read_neuroquery, "neuroquery-v1"),
    ):
        median, times, ds = time_read(reader, args.data / folder, args.repeat)
        rows.append((name, ds.n_experiments, ds.n_foci, len(ds.label_names), median, times))

    print(f"{'database':<15}{'experiments':>12}{'foci':>10}{'labels':>8}{'median s':>10}  runs")
    for name, n_exp, n_foci, n_labels, median, times in rows:
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name:<15}{n_exp:>12,}{n_foci:>10,}{n_labels:>8,}{median:>10.2f}  [{runs}]")


if __name__ == "__main__":
    main()
