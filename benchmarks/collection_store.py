"""Collections at whole-database scale: ingest, fit from a store, fit_many.

1. ``daskmeta ingest`` of the whole Neurosynth v7 with MKDA (r = 10 mm) and with ALE
   (sample size 20): wall time, peak RSS of the process tree, store size on disk.
2. ALE and MKDADensity on the Neurosynth pain topic (``LDA50__32_pain_somatosensory_stimulation``
   >= 0.05, 865 studies): fitted from the store, fitted in memory by daskmeta, and by NiMARE
   0.22.1 on a NiMARE Dataset of the same studies and foci; times, ratios, peak RSS and the
   largest absolute differences between the maps.
3. ``fit_many``: MKDADensity for all 50 LDA50 topics of Neurosynth (threshold 0.05) and for
   every NeuroQuery term used by >= 50 studies (count >= 1 in the abstract), from MKDA
   stores; time and peak RSS.

Every piece runs in its own subprocess; a thread of this process samples the RSS of that
subprocess and all its children (psutil) every 20 ms, so each peak is the piece's own
(interpreter, imports and input data included). Stores go to ``--workdir`` (default: a
temporary directory, removed at the end unless ``--keep``); the ALE store takes ~2 GB.

Usage::

    python benchmarks/collection_store.py
    python benchmarks/collection_store.py --only ingest fit --no-nimare
"""

from __future__ import annotations

import argparse
import json
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
DATA = HERE.parents[1] / "shared" / "data"
NEUROSYNTH = DATA / "neurosynth-v7"
NEUROQUERY = DATA / "neuroquery-v1"
MASK = DATA / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz"
PAIN_TOPIC = "LDA50__32_pain_somatosensory_stimulation"
PAIN_THRESHOLD = 0.05
TOPIC_THRESHOLD = 0.05
NQ_MIN_STUDIES = 50
NQ_THRESHOLD = 1.0
ALE_SAMPLE_SIZE = 20
GiB = 2**30
MiB = 2**20
TARGETS = {
    "ingest-ns-mkda": {"wall": 30, "rss": 3 * GiB, "store": 1 * GiB},
    "ingest-ns-ale": {"wall": 180, "rss": 3 * GiB},
}


# -- measuring ------------------------------------------------------------------------------
def run_measured(cmd: list[str], timeout: float = 3600) -> dict:
    """Run a command; return its wall time, peak tree RSS, stdout and exit status."""
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    rss = TreePeak(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peak = rss.stop().tree
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return {"wall": wall, "peak": peak, "stdout": out, "stderr": err}


def child_json(result: dict) -> dict:
    return json.loads(result["stdout"].strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def me(*args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, args)]


# -- the pieces, each run as a child process -----------------------------------------------------
def ingest_cmd(source: Path, kernel: str, store: Path) -> list[str]:
    cmd = [sys.executable, "-m", "daskmeta.cli", "ingest", str(source), "--kernel", kernel,
           "--store", str(store), "--mask", str(MASK), "--overwrite"]
    if kernel == "ale":
        cmd += ["--sample-size", str(ALE_SAMPLE_SIZE)]
    return cmd


def child_fit(tool: str, estimator: str, store: str, out_npz: str) -> None:
    """Fit one estimator on the pain topic with one tool; print JSON, save stat and z."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("nimare").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    if tool == "store":
        from daskmeta.collection import Collection
        from daskmeta.estimators import ALE, MKDADensity

        collection = Collection.open(store)
        est = ALE(kernel__sample_size=ALE_SAMPLE_SIZE) if estimator == "ALE" else MKDADensity()
        t_load = time.perf_counter() - t0

        def fit():
            return est.fit(collection, select=PAIN_TOPIC, label_threshold=PAIN_THRESHOLD)
    else:
        from daskmeta.io import read_neurosynth

        ns = read_neurosynth(NEUROSYNTH)
        ds = ns.slice(ns.get_studies_by_label(PAIN_TOPIC, label_threshold=PAIN_THRESHOLD))
        n = ds.n_experiments
        if tool == "memory":
            from daskmeta.estimators import ALE, MKDADensity

            if estimator == "ALE":
                est = ALE(kernel__sample_size=ALE_SAMPLE_SIZE, mask=str(MASK))
            else:
                est = MKDADensity(mask=str(MASK))
            data = ds
        else:
            sys.path.append(str(HERE))
            from nimare.meta.cbma import ALE, MKDADensity
            from run import to_nimare_dataset

            data = to_nimare_dataset(ds, MASK)
            est = ALE(kernel__sample_size=ALE_SAMPLE_SIZE) if estimator == "ALE" else (
                MKDADensity())
        t_load = time.perf_counter() - t0

        def fit():
            return est.fit(data)
    t1 = time.perf_counter()
    res = fit()
    t_fit = time.perf_counter() - t1
    if tool == "store":
        n = res.attrs["n_experiments"]
    # A second fit in the same process: imports warm, compiled code loaded (both tools).
    t1 = time.perf_counter()
    fit()
    t_refit = time.perf_counter() - t1
    maps = {m: np.asarray(res.get_map(m, return_type="array"), dtype=np.float64)
            for m in ("stat", "z")}
    np.savez(out_npz, **maps)
    print(json.dumps({"fit": t_fit, "refit": t_refit, "load": t_load, "n": int(n)}))


def child_fit_many(which: str, store: str, out_store: str) -> None:
    """MKDADensity.fit_many over Neurosynth's topics or NeuroQuery's common terms."""
    import warnings

    warnings.simplefilter("ignore")
    from daskmeta.collection import Collection
    from daskmeta.estimators import MKDADensity

    t0 = time.perf_counter()
    collection = Collection.open(store)
    ds = collection.dataset
    if which == "topics":
        names, threshold = list(ds.label_names), TOPIC_THRESHOLD
    else:
        counts = np.asarray((ds.labels >= NQ_THRESHOLD).sum(axis=0)).ravel()
        names = [n for n, c in zip(ds.label_names, counts) if c >= NQ_MIN_STUDIES]
        threshold = NQ_THRESHOLD
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    groups = []
    res = MKDADensity().fit_many(collection, names, label_threshold=threshold, store=out_store,
                                 overwrite=True, progress=lambda done, total: groups.append(
                                     (done, time.perf_counter() - t1)))
    t_fit = time.perf_counter() - t1
    n_exp = res["n_experiments"].values
    print(json.dumps({"fit": t_fit, "load": t_load, "n_selections": len(names),
                      "mean_experiments": float(n_exp.mean()), "passes": len(groups),
                      "complete": bool(res.attrs.get("complete"))}))


# -- the parent ---------------------------------------------------------------------------------
def fmt_bytes(n) -> str:
    return f"{n / MiB:,.0f}"


def verdict(value, target) -> str:
    return "" if target is None else ("ok" if value <= target else "MISS")


def bench_ingest(work: Path, rows: list, stores: dict, which=("ns-mkda", "ns-ale")) -> None:
    sources = {"ns": NEUROSYNTH, "nq": NEUROQUERY}
    for key in which:
        db, kernel = key.split("-")
        store = work / f"{key}.zarr"
        r = run_measured(ingest_cmd(sources[db], kernel, store))
        size = du(store)
        stores[key] = store
        t = TARGETS.get(f"ingest-{key}", {})
        notes = []
        for what, value in (("wall", r["wall"]), ("rss", r["peak"]), ("store", size)):
            if what in t:
                shown = f"{t[what]:g} s" if what == "wall" else f"{t[what] / GiB:g} GiB"
                notes.append(f"{what} <= {shown}: {verdict(value, t[what])}")
        name = {"ns": "Neurosynth v7", "nq": "NeuroQuery v1"}[db]
        kdesc = "MKDA r=10" if kernel == "mkda" else f"ALE sample_size={ALE_SAMPLE_SIZE}"
        rows.append((f"ingest {name}, {kdesc}", r["wall"], r["peak"], size, "; ".join(notes)))
        print(f"  {rows[-1][0]}: {r['wall']:.1f} s, {fmt_bytes(r['peak'])} MiB peak, "
              f"{fmt_bytes(size)} MiB store", flush=True)


def bench_fit(work: Path, stores: dict, nimare: bool) -> list:
    out = []
    for estimator, key in (("MKDADensity", "ns-mkda"), ("ALE", "ns-ale")):
        results = {}
        for tool in ("store", "memory") + (("nimare",) if nimare else ()):
            npz = work / f"fit-{estimator}-{tool}.npz"
            r = run_measured(me("fit", tool, estimator, stores[key], npz))
            info = child_json(r)
            info.update(wall=r["wall"], peak=r["peak"], maps=dict(np.load(npz)))
            results[tool] = info
            print(f"  {estimator} {tool}: fit {info['fit']:.2f} s, again {info['refit']:.2f} s "
                  f"(process {r['wall']:.1f} s, "
                  f"{fmt_bytes(r['peak'])} MiB peak)", flush=True)
        out.append((estimator, results))
    return out


def bench_fit_many(work: Path, stores: dict, rows: list) -> list:
    out = []
    for which, key, label in (("topics", "ns-mkda", "Neurosynth LDA50 topics >= 0.05"),
                              ("terms", "nq-mkda",
                               f"NeuroQuery terms in >= {NQ_MIN_STUDIES} abstracts")):
        maps = work / f"fit-many-{which}.zarr"
        r = run_measured(me("fit_many", which, stores[key], maps))
        info = child_json(r)
        info.update(wall=r["wall"], peak=r["peak"], size=du(maps))
        out.append((label, info))
        print(f"  fit_many {label}: {info['n_selections']} selections in {info['fit']:.1f} s "
              f"({fmt_bytes(r['peak'])} MiB peak)", flush=True)
        shutil.rmtree(maps, ignore_errors=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=["ingest", "fit", "fit_many"],
                        help="pieces to run (default: all; fit and fit_many need the stores "
                             "ingest builds, and build them if missing)")
    parser.add_argument("--workdir", type=Path, help="where the stores go (default: a "
                                                     "temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--no-nimare", action="store_true", help="skip NiMARE's fits")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        {"fit": child_fit, "fit_many": child_fit_many}[args.child[0]](*args.child[1:])
        return
    pieces = args.only or ["ingest", "fit", "fit_many"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="daskmeta-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ingest_rows, stores = [], {}
    try:
        print(f"stores in {work}; {os.cpu_count()} cores", flush=True)
        if "ingest" in pieces:
            bench_ingest(work, ingest_rows, stores, ("ns-mkda", "ns-ale"))
        for key in ("ns-mkda", "ns-ale"):
            if key not in stores and ("fit" in pieces or
                                      ("fit_many" in pieces and key == "ns-mkda")):
                if (work / f"{key}.zarr" / "zarr.json").exists():
                    stores[key] = work / f"{key}.zarr"
                else:
                    bench_ingest(work, ingest_rows, stores, (key,))
        fits = bench_fit(work, stores, not args.no_nimare) if "fit" in pieces else []
        many = []
        if "fit_many" in pieces:
            bench_ingest(work, ingest_rows, stores, ("nq-mkda",))
            many = bench_fit_many(work, stores, ingest_rows)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    if ingest_rows:
        print("## Ingest (daskmeta ingest, threaded scheduler, one process)")
        print(f"{'what':<42} {'wall s':>8} {'peak MiB':>9} {'store MiB':>10}  targets")
        for what, wall, peak, size, notes in ingest_rows:
            print(f"{what:<42} {wall:>8.1f} {fmt_bytes(peak):>9} {fmt_bytes(size):>10}  {notes}")
        print()
    if fits:
        print(f"## Fit on {PAIN_TOPIC} >= {PAIN_THRESHOLD} (fit time only; peak RSS of the "
              "whole process)")
        print(f"{'estimator':<12} {'tool':<22} {'n':>4} {'fit s':>7} {'vs NiMARE':>9} "
              f"{'again s':>8} {'vs NiMARE':>9} {'load s':>7} {'peak MiB':>9} "
              f"{'max|dstat|':>11} {'max|dz|':>9}")
        names = {"store": "daskmeta, from store", "memory": "daskmeta, in memory",
                 "nimare": "NiMARE 0.22.1"}
        for estimator, results in fits:
            ref = results["memory"]["maps"]
            t_ref = results["nimare"]["fit"] if "nimare" in results else None
            t_ref2 = results["nimare"]["refit"] if "nimare" in results else None
            for tool, info in results.items():
                against = ref if tool != "memory" else results.get("nimare", {}).get("maps")
                if against is None:
                    dstat = dz = "-"
                else:
                    dstat = f"{np.abs(info['maps']['stat'] - against['stat']).max():.2e}"
                    dz = f"{np.abs(info['maps']['z'] - against['z']).max():.2e}"
                ratio = f"{t_ref / info['fit']:.2f}x" if t_ref and tool != "nimare" else "-"
                ratio2 = (f"{t_ref2 / info['refit']:.2f}x" if t_ref2 and tool != "nimare"
                          else "-")
                print(f"{estimator:<12} {names[tool]:<22} {info['n']:>4} {info['fit']:>7.2f} "
                      f"{ratio:>9} {info['refit']:>8.2f} {ratio2:>9} {info['load']:>7.2f} "
                      f"{fmt_bytes(info['peak']):>9} {dstat:>11} {dz:>9}")
        print("(max|d|: from store and NiMARE against daskmeta in memory; in memory against "
              "NiMARE. 'fit': the first fit in a fresh process; 'again': a second fit in the "
              "same process. 'vs NiMARE': NiMARE's time / this one)")
        print("(daskmeta drops foci more than mask_margin = 10 mm from the mask, NiMARE keeps "
              "them: MKDA (r = 10) is unaffected, ALE differs by the tails of their kernels)")
        print()
    if many:
        print("## fit_many, MKDADensity from MKDA stores (maps written to a Zarr store)")
        print(f"{'selections':<36} {'n':>5} {'mean exp':>9} {'passes':>7} {'fit s':>8} "
              f"{'s/sel':>6} {'peak MiB':>9} {'maps MiB':>9}")
        for label, info in many:
            print(f"{label:<36} {info['n_selections']:>5} {info['mean_experiments']:>9.0f} "
                  f"{info['passes']:>7} {info['fit']:>8.1f} "
                  f"{info['fit'] / info['n_selections']:>6.2f} {fmt_bytes(info['peak']):>9} "
                  f"{fmt_bytes(info['size']):>9}")
        print()
    print(f"({os.cpu_count()} cores; one run of each; other work on the machine adds noise)")


if __name__ == "__main__":
    main()
