"""daskmeta vs NiMARE 0.22.1, side by side on the same inputs and mask, in one run.

Each (workload, tool) runs in a fresh subprocess, ``--repeat`` times, so peak memory is the
child's own (ru_maxrss, which includes the interpreter, imports and the input data). The table
gives median wall times, their ratio, peak RSS of each, and the largest absolute difference
between the two programs' maps.

Usage::

    python benchmarks/run.py                 # every workload
    python benchmarks/run.py --only ale-pain21 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MASK = DATA / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz"
PAIN = DATA / "nimare-testdata" / "test_pain_dataset.json"
PAIN_TOPIC = "LDA50__32_pain_somatosensory_stimulation"


def _ours_dataset(workload):
    from daskmeta.io import read_neurosynth, read_nimare_json

    if workload == "ale-pain21":
        return read_nimare_json(PAIN)
    if workload == "ale-sim100":
        from daskmeta import simulate
        from daskmeta.space import Space

        return simulate.coordinates(n_experiments=100, seed=0, space=Space(MASK)).dataset
    ds = read_neurosynth(DATA / "neurosynth-v7")
    return ds.slice(ds.get_studies_by_label(PAIN_TOPIC, label_threshold=0.05))


def to_nimare_dataset(dataset, mask):
    """A NiMARE Dataset holding exactly the experiments and MNI foci of a daskmeta Dataset."""
    from nimare.dataset import Dataset

    source = {}
    sizes = dataset.experiments.set_index("id")["sample_size"]
    for eid, foci in dataset.foci.groupby("id", sort=False):
        study, _, contrast = eid.rpartition("-")
        if not study:
            study, contrast = eid, "1"
        entry = {"coords": {"space": "MNI", "x": foci["x"].tolist(), "y": foci["y"].tolist(),
                            "z": foci["z"].tolist()}}
        if np.isfinite(sizes[eid]):
            entry["metadata"] = {"sample_sizes": [float(sizes[eid])]}
        source.setdefault(study, {"contrasts": {}})["contrasts"][contrast] = entry
    return Dataset(source, mask=str(mask))


WORKLOADS = {
    "ale-pain21": "ALE fit, pain (21 studies)",
    "ale-sim100": "ALE fit, simulated (100 experiments)",
    "mkda-ns-pain": f"MKDADensity fit, Neurosynth {PAIN_TOPIC} >= 0.05",
}


def run_one(workload, tool, repeat, out_npz):
    """Run one workload with one tool in this process; print JSON with the timings."""
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("nimare").setLevel(logging.ERROR)
    ds = _ours_dataset(workload)
    if tool == "nimare":
        from nimare.meta.cbma import ALE, MKDADensity

        data = to_nimare_dataset(ds, MASK)
        est = ALE if workload.startswith("ale") else MKDADensity

        def fit():
            return est().fit(data)
    else:
        from daskmeta.estimators import ALE, MKDADensity

        est = ALE if workload.startswith("ale") else MKDADensity

        def fit():
            return est(mask=str(MASK)).fit(ds)

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        res = fit()
        times.append(time.perf_counter() - t)
    maps = {m: np.asarray(res.get_map(m, return_type="array"), dtype=np.float64)
            for m in ("stat", "z")}
    np.savez(out_npz, **maps)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_mib": peak_mib, "n": ds.n_experiments}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("WORKLOAD", "TOOL", "NPZ"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one[0], args.one[1], args.repeat, args.one[2])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.only or WORKLOADS:
            stats = {}
            for tool in ("nimare", "daskmeta"):
                npz = os.path.join(tmp, f"{workload}-{tool}.npz")
                proc = subprocess.run(
                    [sys.executable, __file__, "--repeat", str(args.repeat), "--one", workload,
                     tool, npz], capture_output=True, text=True, check=False)
                if proc.returncode:
                    sys.exit(f"{workload}/{tool} failed:\n{proc.stderr[-3000:]}")
                stats[tool] = json.loads(proc.stdout.strip().splitlines()[-1])
                stats[tool]["maps"] = dict(np.load(npz))
            diff = max(np.abs(stats["nimare"]["maps"][m] - stats["daskmeta"]["maps"][m]).max()
                       for m in ("stat",))
            zdiff = np.abs(stats["nimare"]["maps"]["z"] - stats["daskmeta"]["maps"]["z"]).max()
            tn = statistics.median(stats["nimare"]["times"])
            td = statistics.median(stats["daskmeta"]["times"])
            first_n, first_d = stats["nimare"]["times"][0], stats["daskmeta"]["times"][0]
            rows.append((WORKLOADS[workload], stats["daskmeta"]["n"], tn, td, tn / td,
                         first_n, first_d, first_n / first_d,
                         stats["nimare"]["peak_mib"], stats["daskmeta"]["peak_mib"], diff, zdiff))
    header = ("workload", "n", "NiMARE s", "daskmeta s", "speed-up", "NiMARE 1st s",
              "daskmeta 1st s", "1st speed-up", "NiMARE MiB", "daskmeta MiB", "max|dstat|",
              "max|dz|")
    print(" | ".join(header))
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f}x | {r[5]:.3f} | "
              f"{r[6]:.3f} | {r[7]:.2f}x | {r[8]:.0f} | {r[9]:.0f} | {r[10]:.2e} | {r[11]:.2e}")
    print(f"(median of {args.repeat} fits each in one process, and its first fit; peak RSS of "
          f"each run's process; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
