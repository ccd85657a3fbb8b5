"""BalancedALESubtraction: daskmeta vs NiMARE 0.22.1 side by side, same inputs, mask, seed and
``n_subsamples`` / ``difference_iterations`` / ``n_iters``, in one run.

Each (workload, tool) runs in a fresh subprocess (peak RSS is the child's own ru_maxrss,
interpreter and imports included); the table gives wall times (whole fit, and the process),
their ratio, peak RSS, and the largest absolute difference between the two programs' maps
(both follow the same random draws, so the maps agree, not only in distribution).

Workloads: ``pain21`` (NiMARE's pain studies, 9 vs 10 experiments) and ``sim30`` (two
simulated groups of 30 experiments).

Usage (under the machine's heavy-work lock)::

    flock /tmp/daskmeta-heavy.lock python benchmarks/balanced_subtraction.py
    python benchmarks/balanced_subtraction.py --only pain21 --n-iters 200 --n-subsamples 200
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
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
WORKLOADS = ("pain21", "sim30")


def _groups(workload):
    """Two daskmeta Datasets."""
    from daskmeta._pass import has_foci
    from daskmeta.io import read_nimare_json

    if workload == "pain21":
        ds = read_nimare_json(PAIN)
        ids = [i for i, h in zip(ds.ids, has_foci(ds), strict=True) if h]
        return ds.slice(ids[:9]), ds.slice(ids[9:])
    from daskmeta import simulate
    from daskmeta.space import Space

    space = Space(MASK)
    from daskmeta import Dataset

    a = simulate.coordinates(n_experiments=30, seed=1, space=space).dataset
    b = simulate.coordinates(n_experiments=30, seed=2, space=space).dataset
    exp, foci = b.experiments.copy(), b.foci.copy()
    exp["id"] = "b" + exp["id"]
    exp["study_id"] = "b" + exp["study_id"]
    foci["id"] = "b" + foci["id"]
    return a, Dataset(exp, foci)


def _to_nimare(dataset):
    from nimare.dataset import Dataset

    source = {}
    sizes = dataset.experiments.set_index("id")["sample_size"]
    for eid, foci in dataset.foci.groupby("id", sort=False):
        source[eid] = {"contrasts": {"1": {
            "coords": {"space": "MNI", "x": foci["x"].tolist(), "y": foci["y"].tolist(),
                       "z": foci["z"].tolist()},
            "metadata": {"sample_sizes": [int(sizes[eid])]}}}}
    return Dataset(source, mask=str(MASK))


def run_one(workload, tool, params, out_npz):
    t_start = time.perf_counter()
    a, b = _groups(workload)
    if tool == "daskmeta":
        from daskmeta.estimators import BalancedALESubtraction

        est = BalancedALESubtraction(mask=str(MASK), **params)
        t0 = time.perf_counter()
        res = est.fit(a, b)
        fit_s = time.perf_counter() - t0
        maps = {k: res.get_map(k, "array") for k in res.map_names}
    else:
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")
        from nimare.meta.cbma.ale import BalancedALESubtraction

        na, nb = _to_nimare(a), _to_nimare(b)
        t0 = time.perf_counter()
        res = BalancedALESubtraction(**params).fit(na, nb)
        fit_s = time.perf_counter() - t0
        maps = {k: np.asarray(res.get_map(k, return_type="array")) for k in res.maps}
    np.savez(out_npz, **maps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"fit_s": fit_s, "process_s": time.perf_counter() - t_start,
                      "peak_mib": peak}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=WORKLOADS, action="append")
    ap.add_argument("--n-subsamples", type=int, default=100)
    ap.add_argument("--difference-iterations", type=int, default=100)
    ap.add_argument("--n-iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_one(args.child[0], args.child[1], json.loads(args.params), args.child[2])
        return
    params = {"n_subsamples": args.n_subsamples,
              "difference_iterations": args.difference_iterations,
              "n_iters": args.n_iters, "random_state": args.seed}
    print(f"BalancedALESubtraction, {params}; each run a fresh process")
    print(f"{'workload':8} {'tool':9} {'fit s':>8} {'process s':>10} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.only or WORKLOADS:
            figures = {}
            for tool in ("daskmeta", "nimare"):
                npz = Path(tmp) / f"{workload}-{tool}.npz"
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", workload, tool, str(npz),
                     "--params", json.dumps(params)],
                    capture_output=True, text=True, check=False)
                if proc.returncode:
                    print(proc.stderr[-3000:])
                    raise SystemExit(f"{workload}/{tool} failed")
                fig = json.loads(proc.stdout.strip().splitlines()[-1])
                figures[tool] = (fig, np.load(npz))
                print(f"{workload:8} {tool:9} {fig['fit_s']:8.2f} {fig['process_s']:10.2f} "
                      f"{fig['peak_mib']:9.0f}")
            ours, theirs = figures["daskmeta"], figures["nimare"]
            print(f"{workload:8} ratio     {theirs[0]['fit_s'] / ours[0]['fit_s']:7.1f}x "
                  f"{theirs[0]['process_s'] / ours[0]['process_s']:9.1f}x")
            for name in sorted(ours[1].files):
                diff = float(np.abs(ours[1][name].astype(float)
                                    - theirs[1][name].astype(float)).max())
                print(f"    max |daskmeta - NiMARE| {name}: {diff:.3g}")


if __name__ == "__main__":
    main()
