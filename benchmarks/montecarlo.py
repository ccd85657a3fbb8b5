"""Monte Carlo FWE correction, daskmeta against NiMARE 0.22.1, side by side.

Workloads:

* ``pain21``: NiMARE's 21-study pain test dataset (19 with foci, 243 foci), ALE with each
  experiment's sample size, NiMARE's 2 mm mask;
* ``ns-pain865``: the Neurosynth v7 studies whose LDA50 topic
  ``32_pain_somatosensory_stimulation`` weight is >= 0.05 (865 studies), ALE with a fixed
  kernel sample size of 20.

Each measurement runs in a fresh process (its whole process tree sampled for resident
memory): NiMARE's ``FWECorrector(method="montecarlo", voxel_thresh=0.001)`` with
``n_cores=1`` and ``2``; daskmeta's ``FWECorrector("montecarlo")`` on the embedded cluster of
:func:`daskmeta.cluster.get_client` with 1 and 2 cores, either as threads of one worker in the
process (what the ``daskmeta`` command uses) or as single-threaded worker processes (memory
sampled by :class:`_tree_memory.TreePeak`, cheap enough not to slow the 2-core runs). Times
exclude the fit and a warm-up run (numba compilation or cache loading, worker start), include everything else
of ``transform`` (cluster-forming threshold, observed clusters, maps). The measurements run in
``--repeats`` rounds, each program's 1- and 2-core runs one after the other in every round
(this machine's speed drifts by more than the effects measured): times are medians over the
rounds, and a speed-up from 1 to 2 cores is the median of the rounds' own speed-ups.

The arithmetic bound of an iteration is its kernel-voxel updates (``work_per_iteration()`` of
the null model: the sum over foci of their support sizes) at 1e9 updates per second per core
(what a compiled prototype reached on this machine); the table gives the updates per second
achieved and the share of the bound.

Run::

    .venv/bin/python benchmarks/montecarlo.py            # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/montecarlo.py --quick    # fewer iterations, one repeat
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _tree_memory import TreePeak

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
MASK = str(TESTDATA / "MNI152_2x2x2_brainmask.nii.gz")
TOPIC = "32_pain_somatosensory_stimulation"


# --------------------------------------------------------------------------------------------
# workloads (built identically for both programs)
# --------------------------------------------------------------------------------------------
def _quiet():
    warnings.filterwarnings("ignore")
    logging.getLogger("nimare").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")


def pain21():
    """(daskmeta Dataset, NiMARE Dataset, estimator kwargs) of the pain test data."""
    from nimare.dataset import Dataset as NDataset

    import daskmeta

    nd = NDataset(str(TESTDATA / "test_pain_dataset.json"), mask=MASK)
    ss = nd.metadata.set_index("id")["sample_sizes"].map(np.mean)
    foci = nd.coordinates[["id", "x", "y", "z"]].copy()
    foci["sample_size"] = foci["id"].map(ss)
    return daskmeta.Dataset.from_foci(foci), nd, {}


def ns_pain865():
    """The 865-study Neurosynth pain topic, with a fixed ALE kernel (sample size 20)."""
    from nimare.dataset import Dataset as NDataset

    from daskmeta.io import read_neurosynth

    ns = read_neurosynth(DATA / "neurosynth-v7")
    label = next(n for n in ns.label_names if n.endswith("__" + TOPIC))
    ds = ns.slice(ns.get_studies_by_label(label, label_threshold=0.05))
    assert ds.n_experiments == 865, ds
    source = {}
    for exp_id, g in ds.foci.groupby("id", sort=False):
        pmid, contrast = exp_id.rsplit("-", 1)
        coords = {"space": "MNI", "x": g["x"].tolist(), "y": g["y"].tolist(),
                  "z": g["z"].tolist()}
        source.setdefault(pmid, {"contrasts": {}})["contrasts"][contrast] = {"coords": coords}
    nd = NDataset(source, target="mni152_2mm", mask=MASK)
    return ds, nd, {"kernel__sample_size": 20}


WORKLOADS = {"pain21": pain21, "ns-pain865": ns_pain865}


# --------------------------------------------------------------------------------------------
# one measurement (runs in a child process)
# --------------------------------------------------------------------------------------------
def _cpu_snapshot():
    """(wall clock, machine busy CPU seconds, CPU seconds of this process tree)."""
    import psutil

    me = psutil.Process()
    tree = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            tree += t.user + t.system
        except psutil.Error:
            pass
    ct = psutil.cpu_times()
    busy = sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)
    return time.perf_counter(), busy, tree


def _timed(run, repeats):
    """Median wall time of ``repeats`` runs, and the other processes' share of the machine."""
    import psutil

    times, other = [], []
    for _ in range(repeats):
        t0, b0, c0 = _cpu_snapshot()
        out = run()
        t1, b1, c1 = _cpu_snapshot()
        times.append(t1 - t0)
        other.append(max(0.0, (b1 - b0) - (c1 - c0)) / ((t1 - t0) * psutil.cpu_count()))
    return float(np.median(times)), float(np.mean(other)), out


def _run_nimare(workload, n_cores, n_iters, warmup, repeats):
    from nimare.correct import FWECorrector
    from nimare.meta.cbma import ALE

    _, nd, kwargs = WORKLOADS[workload]()
    res = ALE(mask=MASK, random_state=0, **kwargs).fit(nd)
    FWECorrector(method="montecarlo", n_iters=warmup, voxel_thresh=0.001,
                 n_cores=n_cores).transform(res)
    seconds, other, _ = _timed(
        lambda: FWECorrector(method="montecarlo", n_iters=n_iters, voxel_thresh=0.001,
                             n_cores=n_cores).transform(res), repeats)
    return {"seconds": seconds, "n_iters": n_iters, "other_load": other}


def _run_daskmeta(workload, n_cores, mode, n_iters, warmup, batch_size, repeats):
    from daskmeta import montecarlo
    from daskmeta.cluster import close_client, get_client
    from daskmeta.correct import FWECorrector
    from daskmeta.estimators import ALE

    ds, _, kwargs = WORKLOADS[workload]()
    est = ALE(mask=MASK, **kwargs)
    res = est.fit(ds)  # on the local threaded scheduler, before the cluster starts
    model = est._null_model()
    threshold = FWECorrector("montecarlo")._cluster_threshold(res, est)
    summary = montecarlo.ClusterMaxima(threshold)
    processes = mode == "processes"
    # The embedded cluster the daskmeta command starts (daskmeta.cluster.get_client).
    client = get_client(n_workers=n_cores if processes else 1,
                        threads_per_worker=1 if processes else n_cores, processes=processes)
    try:
        # Warm every worker (numba cache, lookup tables), then the client's code paths.
        client.run(montecarlo.run_batch, model, summary, 0, 0, 1)
        FWECorrector("montecarlo", n_iters=warmup, batch_size=max(1, warmup // n_cores),
                     seed=0, progress=False).transform(res)
        seconds, other, out = _timed(
            lambda: FWECorrector("montecarlo", n_iters=n_iters, batch_size=batch_size, seed=1,
                                 progress=False).transform(res), repeats)
    finally:
        close_client()
    return {"seconds": seconds, "n_iters": out.attrs["fwe_montecarlo_n_iters_run"],
            "work": model.work_per_iteration(), "n_foci": model.n_foci,
            "other_load": other}


def _child(argv):
    _quiet()
    spec = json.loads(argv)
    if spec["program"] == "nimare":
        out = _run_nimare(spec["workload"], spec["cores"], spec["n_iters"], spec["warmup"],
                          spec["repeats"])
    else:
        out = _run_daskmeta(spec["workload"], spec["cores"], spec["mode"], spec["n_iters"],
                            spec["warmup"], spec["batch_size"], spec["repeats"])
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------
# the parent: run children, sample their process trees' memory, print the table
# --------------------------------------------------------------------------------------------
def _measure(spec: dict) -> dict:
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    peak = TreePeak(proc.pid)
    out, _ = proc.communicate()
    peak.stop()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    errors.seek(0)
    err = errors.read()
    errors.close()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child failed ({spec}):\n{out}\n{err[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res["peak_tree_mib"] = peak.tree / 2**20
    res["peak_child_mib"] = peak.one / 2**20
    res["ms_per_iter"] = 1e3 * res["seconds"] / res["n_iters"]
    return res


def _merge_rounds(runs: list[dict]) -> dict:
    """One measurement from several rounds': median times, largest memory, mean load."""
    out = dict(runs[0])
    for key in ("seconds", "ms_per_iter"):
        out[key] = float(np.median([r[key] for r in runs]))
    for key in ("peak_tree_mib", "peak_child_mib"):
        out[key] = max(r[key] for r in runs)
    out["other_load"] = float(np.mean([r["other_load"] for r in runs]))
    return out


#: Kernel-voxel updates per second per core of a compiled prototype on this machine.
BOUND_UPDATES_PER_S = 1e9
MODES = ("threads", "processes")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, one repeat")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of measurements (each program's 1- and 2-core runs one "
                             "after the other); medians are reported (default 3)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        choices=list(WORKLOADS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="daskmeta's workers: threads of one worker, or processes")
    parser.add_argument("--no-nimare", action="store_true", help="daskmeta only")
    args = parser.parse_args(argv)
    q = 0.25 if args.quick else 1.0
    repeats = 1 if args.quick else max(1, args.repeats)
    plans = {
        # (NiMARE iterations, daskmeta iterations, daskmeta batch size)
        "pain21": (int(250 * q), int(4000 * q), 100),
        "ns-pain865": (max(2, int(6 * q)), max(4, int(40 * q)), max(1, int(5 * q))),
    }
    import psutil

    busy = psutil.cpu_percent(interval=2.0)
    print(f"{psutil.cpu_count()} CPUs; {busy:.0f}% busy before the benchmark"
          + (" -- other work is running, timings (and the 1 -> 2 speed-up) will suffer"
             if busy > 15 else ""), flush=True)
    rows = []
    programs = ([] if args.no_nimare else ["nimare"]) + list(args.modes)
    for workload in args.workloads:
        n_nimare, n_ours, batch = plans[workload]
        runs: dict = {}
        for r in range(repeats):
            for program in programs:
                for cores in (1, 2):
                    if program == "nimare":
                        spec = {"program": "nimare", "workload": workload, "cores": cores,
                                "n_iters": n_nimare, "warmup": 2, "repeats": 1}
                        what = f"NiMARE n_cores={cores}: {n_nimare} iterations"
                    else:
                        spec = {"program": "daskmeta", "workload": workload, "cores": cores,
                                "mode": program, "n_iters": n_ours, "warmup": 2 * cores,
                                "batch_size": batch, "repeats": 1}
                        what = f"daskmeta {cores} {program}: {n_ours} iterations"
                    print(f"[{workload}] round {r + 1}/{repeats}, {what} ...", flush=True)
                    runs.setdefault((program, cores), []).append(_measure(spec))
        rows.append((workload, {key: _merge_rounds(v) for key, v in runs.items()},
                     {p: float(np.median([a["ms_per_iter"] / b["ms_per_iter"] for a, b in
                                          zip(runs[p, 1], runs[p, 2], strict=True)]))
                      for p in programs}))

    print()
    head = (f"{'workload':<11} {'cores':>5} {'daskmeta':<9} {'NiMARE ms/it':>12} "
            f"{'dm ms/it':>9} {'ratio':>6} {'NiMARE RSS':>10} {'dm RSS':>8} "
            f"{'dm RSS/proc':>11} {'updates/it':>10} {'bound ms/it':>11} {'Mupd/s':>7} "
            f"{'of bound':>8} {'other load':>10}")
    print(head)
    print("-" * len(head))
    for workload, res, speedup in rows:
        for cores in (1, 2):
            n = res.get(("nimare", cores))
            for mode in args.modes:
                d = res[mode, cores]
                bound_ms = 1e3 * d["work"] / (BOUND_UPDATES_PER_S * cores)
                rate = d["work"] / d["ms_per_iter"] / 1e3
                nim = (f"{n['ms_per_iter']:>12.1f}" if n else f"{'-':>12}")
                ratio = (f"{n['ms_per_iter'] / d['ms_per_iter']:>5.1f}x" if n else f"{'-':>6}")
                nrss = f"{n['peak_tree_mib']:>8.0f}Mi" if n else f"{'-':>10}"
                load = (f"{100 * n['other_load']:>4.0f}%/" if n else "    -/") + \
                    f"{100 * d['other_load']:>3.0f}%"
                print(f"{workload:<11} {cores:>5} {mode:<9} {nim} {d['ms_per_iter']:>9.2f} "
                      f"{ratio} {nrss} {d['peak_tree_mib']:>6.0f}Mi "
                      f"{d['peak_child_mib']:>9.0f}Mi {d['work']:>10.3g} {bound_ms:>11.2f} "
                      f"{rate:>7.0f} {100 * bound_ms / d['ms_per_iter']:>7.0f}% {load:>10}")
        for mode in args.modes:
            line = f"{'':<11} speed-up 1 -> 2 cores: daskmeta ({mode}) {speedup[mode]:.2f}x"
            if "nimare" in speedup:
                line += f", NiMARE {speedup['nimare']:.2f}x"
            print(line)
        d1 = res[args.modes[0], 1]
        counts = f"daskmeta {d1['n_iters']}"
        if ("nimare", 1) in res:
            counts = f"NiMARE {res['nimare', 1]['n_iters']} / " + counts
        print(f"{'':<11} {d1['n_foci']} foci; iterations {counts}")
    print("\nupdates/it: kernel support voxels visited per iteration (sum over foci of the "
          "support size); bound ms/it: those updates at 1e9 per second per core; Mupd/s: "
          "achieved\nmillions of updates per second (all cores); of bound: bound time / "
          "achieved time. RSS: peak resident memory of the measuring process tree; RSS/proc: "
          "the\nlargest single worker or nanny process (0 with threads). other load: share of "
          "the machine's CPU used by other processes while NiMARE / daskmeta were timed\n(the "
          f"machine may be shared). Times are medians of {repeats} round(s); a speed-up is "
          "the median of the rounds' own.")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()
