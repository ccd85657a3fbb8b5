"""BalancedALESubtraction: daskmeta vs NiMARE 0.22.1 side by side, same inputs, mask, seed and
``n_subsamples`` / ``difference_iterations`` / ``n_iters``, in one run.

Each (workload, tool, n_iters) runs in a fresh subprocess (peak RSS is the child's own
ru_maxrss, interpreter and imports included); the table gives wall times (whole fit, and the
process), their ratio, peak RSS, and the largest absolute difference between the two
programs' maps at equal parameters (both follow the same random draws, so the maps agree,
not only in distribution).

The default parameters are NiMARE's (``n_subsamples=2500``, ``difference_iterations=1000``,
``n_iters=1000``). NiMARE's fit is linear in ``n_iters`` (each null iteration is one
random-foci cluster-size draw per group and one mean balanced difference of
``difference_iterations`` subsample pairs per null data set) and takes hours there, so with
``--nimare-n-iters A B`` NiMARE runs at ``n_iters`` A and B and its time at ``--n-iters`` is
extrapolated from the line through the two (stated as such); daskmeta runs the whole
``--n-iters``, and also ``n_iters=A``, whose maps are compared with NiMARE's at A. NiMARE
runs with ``n_cores=2`` (it only parallelises its one-sample ALE fits); daskmeta on Dask's
threaded scheduler (a thread per core).

Workloads: ``pain21`` (NiMARE's pain studies, 9 vs 10 experiments) and ``sim30`` (two
simulated groups of 30 experiments).

Usage (under the machine's heavy-work lock)::

    flock /tmp/daskmeta-heavy.lock python benchmarks/balanced_subtraction.py \
        --nimare-n-iters 3 6
    python benchmarks/balanced_subtraction.py --only pain21 --n-iters 30 --n-subsamples 30 \
        --difference-iterations 30
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
        res = BalancedALESubtraction(n_cores=2, **params).fit(na, nb)
        fit_s = time.perf_counter() - t0
        maps = {k: np.asarray(res.get_map(k, return_type="array")) for k in res.maps}
    np.savez(out_npz, **maps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"fit_s": fit_s, "process_s": time.perf_counter() - t_start,
                      "peak_mib": peak}))


def _child(workload, tool, params, npz):
    proc = subprocess.run([sys.executable, __file__, "--child", workload, tool, str(npz),
                           "--params", json.dumps(params)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{workload}/{tool} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(npz)


def _max_diffs(ours, theirs):
    for name in sorted(ours.files):
        diff = float(np.abs(ours[name].astype(float) - theirs[name].astype(float)).max())
        print(f"    max |daskmeta - NiMARE| {name}: {diff:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=WORKLOADS, action="append")
    ap.add_argument("--n-subsamples", type=int, default=2500)
    ap.add_argument("--difference-iterations", type=int, default=1000)
    ap.add_argument("--n-iters", type=int, default=1000)
    ap.add_argument("--nimare-n-iters", type=int, nargs=2, metavar=("A", "B"),
                    help="run NiMARE at these n_iters and extrapolate to --n-iters")
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
    few = args.nimare_n_iters
    if few and not (0 < few[0] < few[1] < args.n_iters):
        raise SystemExit("--nimare-n-iters A B needs 0 < A < B < --n-iters")
    print(f"BalancedALESubtraction, {params}; each run a fresh process; machine shared")
    if few:
        print(f"NiMARE at n_iters {few[0]} and {few[1]}, its time at {args.n_iters} "
              "extrapolated linearly (a + b * n_iters)")
    print(f"{'workload':8} {'tool':9} {'n_iters':>7} {'fit s':>9} {'process s':>10} "
          f"{'peak MiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.only or WORKLOADS:
            def run(tool, n_iters, workload=workload):
                fig, maps = _child(workload, tool, dict(params, n_iters=n_iters),
                                   Path(tmp) / f"{workload}-{tool}-{n_iters}.npz")
                print(f"{workload:8} {tool:9} {n_iters:7d} {fig['fit_s']:9.2f} "
                      f"{fig['process_s']:10.2f} {fig['peak_mib']:9.0f}", flush=True)
                return fig, maps

            ours, ours_maps = run("daskmeta", args.n_iters)
            if not few:
                theirs, theirs_maps = run("nimare", args.n_iters)
                fit_n, proc_n = theirs["fit_s"], theirs["process_s"]
                label = "measured"
            else:
                small, small_maps = run("daskmeta", few[0])
                (ta, ma), (tb, _) = run("nimare", few[0]), run("nimare", few[1])
                slope = (tb["fit_s"] - ta["fit_s"]) / (few[1] - few[0])
                fit_n = ta["fit_s"] + slope * (args.n_iters - few[0])
                proc_n = ta["process_s"] + (tb["process_s"] - ta["process_s"]) / (
                    few[1] - few[0]) * (args.n_iters - few[0])
                label = (f"extrapolated: {slope:.2f} s per null iteration + "
                         f"{ta['fit_s'] - slope * few[0]:.1f} s")
                theirs = {"peak_mib": max(ta["peak_mib"], tb["peak_mib"])}
                print(f"{workload:8} nimare    {args.n_iters:7d} {fit_n:9.0f} {proc_n:10.0f} "
                      f"{theirs['peak_mib']:9.0f}  ({label}; peak of the measured runs)")
            print(f"{workload:8} ratio     {args.n_iters:7d} {fit_n / ours['fit_s']:8.1f}x "
                  f"{proc_n / ours['process_s']:9.1f}x   (NiMARE {label})")
            if few:
                print(f"  maps at n_iters={few[0]} (daskmeta fit {small['fit_s']:.1f} s vs "
                      f"NiMARE {ta['fit_s']:.1f} s):")
                _max_diffs(small_maps, ma)
            else:
                _max_diffs(ours_maps, theirs_maps)


if __name__ == "__main__":
    main()
