"""Jackknife and FocusCounter on the Neurosynth pain topic's FWE-corrected ALE, side by side
with NiMARE 0.22.1.

daskmeta: ALE (sample size 20) of ``LDA50__32_pain_somatosensory_stimulation`` >= 0.05 (865
studies) fitted from a whole-Neurosynth ALE collection, Monte Carlo FWE correction
(``--n-iters``), then ``Jackknife`` (every leave-one-out fold in one pass over the store)
and ``FocusCounter`` on its voxel-level FWE z map at z > 1.65 (its cluster-size map has no
significant cluster, see ``TARGET``).

NiMARE: the same ALE on a NiMARE Dataset of the same studies and foci, same mask. Its
Jackknife refits the ALE once per experiment (865 refits); this script times NiMARE's own
leave-one-out refit (``Jackknife._leave_one_out_values``) for ``--nimare-folds`` experiments
and extrapolates to 865 (stated as such), and compares those folds' per-cluster
contributions, on daskmeta's clusters, with daskmeta's table (max abs difference).

Each tool runs in its own subprocess; peak RSS is that process tree's (psutil, every 20 ms).
The store is built with ``daskmeta ingest`` into ``--workdir`` unless ``--store`` names one
(an ALE store of Neurosynth v7 with sample size 20 on NiMARE's mask). Run under the heavy
lock on a shared machine::

    flock /tmp/daskmeta-heavy.lock python benchmarks/diagnostics.py --workdir /tmp/diag-bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from collection_store import (  # noqa: E402
    ALE_SAMPLE_SIZE,
    MASK,
    NEUROSYNTH,
    PAIN_THRESHOLD,
    PAIN_TOPIC,
    child_json,
    ingest_cmd,
    run_measured,
)

# The pain topic's cluster-size FWE map has no significant cluster: at the cluster-forming
# threshold (p < 0.001 under the approximate null, ALE 0.144) the Monte Carlo null's largest
# clusters have 32,000-38,000 voxels. So the target is the voxel-level FWE map, thresholded
# at z 1.65 (FWE p < 0.05), as NiMARE's workflow thresholds its diagnostics' targets.
TARGET = "z_level-voxel_corr-FWE_method-montecarlo"
TARGET_THRESHOLD = 1.65
GiB = 2**30


def child_ours(store: str, n_iters: int, out: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from daskmeta.collection import Collection
    from daskmeta.correct import FWECorrector
    from daskmeta.diagnostics import FocusCounter, Jackknife
    from daskmeta.estimators import ALE

    t = {}
    t0 = time.perf_counter()
    collection = Collection.open(store)
    res = ALE(kernel__sample_size=ALE_SAMPLE_SIZE).fit(collection, select=PAIN_TOPIC,
                                                       label_threshold=PAIN_THRESHOLD)
    t["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = FWECorrector("montecarlo", n_iters=n_iters, seed=0, progress=False).transform(res)
    t["fwe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jack = Jackknife(target_image=TARGET, target_threshold=TARGET_THRESHOLD).transform(res)
    t["jackknife"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    Jackknife(target_image=TARGET, target_threshold=TARGET_THRESHOLD).transform(res)
    t["jackknife_again"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    FocusCounter(target_image=TARGET, target_threshold=TARGET_THRESHOLD).transform(res)
    t["focuscounter"] = time.perf_counter() - t0
    # A cluster-level z map is negative where p is 1 (clusters smaller than every null
    # maximum): NiMARE's rule then makes two tails and one merged table; compare the
    # positive tail.
    name = next(t for t in jack.tables if t.startswith(f"{TARGET}_diag-Jackknife_tab-counts"))
    table = jack.tables[name]
    positive = [c for c in table.columns if c.startswith("PositiveTail")]
    labels = jack.get_map("label_level-voxel_corr-FWE_method-montecarlo_tail-positive",
                          "array")
    assert positive == [f"PositiveTail {c}" for c in range(1, labels.max() + 1)]
    np.savez(out, labels=labels, values=table[positive].to_numpy(float),
             ids=np.asarray(table["id"], dtype=str), stat=res.get_map("stat", "array"),
             target=res.get_map(TARGET, "array"))
    print(json.dumps({**t, "n": int(res.attrs["n_experiments"]), "table": name,
                      "n_clusters": int(table.shape[1] - 1), "n_positive": len(positive)}))


def child_nimare(ours_npz: str, n_folds: int) -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("nimare").setLevel(logging.ERROR)
    from nimare.diagnostics import Jackknife
    from nimare.meta.cbma import ALE
    from run import to_nimare_dataset

    from daskmeta.io import read_neurosynth

    ns = read_neurosynth(NEUROSYNTH)
    ds = ns.slice(ns.get_studies_by_label(PAIN_TOPIC, label_threshold=PAIN_THRESHOLD))
    data = to_nimare_dataset(ds, MASK)
    ours = np.load(ours_npz)
    t0 = time.perf_counter()
    res = ALE(kernel__sample_size=ALE_SAMPLE_SIZE).fit(data)
    t_fit = time.perf_counter() - t0
    stat_diff = float(np.abs(res.get_map("stat", return_type="array") - ours["stat"]).max())
    jk = Jackknife()
    jk._is_pairwaise_estimator = False
    labels = ours["labels"]
    ids = [str(i) for i in ours["ids"]]
    folds, diffs = [], []
    for k in np.linspace(0, len(ids) - 1, n_folds).astype(int):
        t0 = time.perf_counter()
        values, _ = jk._leave_one_out_values(ids[k], "PositiveTail", res, "stat")
        folds.append(time.perf_counter() - t0)
        means = [float(np.mean(values[labels == c])) for c in range(1, labels.max() + 1)]
        diffs.append(float(np.abs(np.asarray(means) - ours["values"][k]).max()))
    print(json.dumps({"fit": t_fit, "folds": folds, "fold_mean": float(np.mean(folds)),
                      "max_abs_diff": max(diffs), "stat_max_abs_diff": stat_diff}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/daskmeta-diag-bench")
    parser.add_argument("--store", help="an existing Neurosynth ALE store (sample size 20)")
    parser.add_argument("--n-iters", type=int, default=1000, help="Monte Carlo iterations")
    parser.add_argument("--nimare-folds", type=int, default=3)
    parser.add_argument("--no-nimare", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "ours":
            return child_ours(rest[0], int(rest[1]), rest[2])
        return child_nimare(rest[0], int(rest[1]))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = Path(args.store) if args.store else work / "ns-ale.zarr"
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    if not args.store:
        r = run_measured(ingest_cmd(NEUROSYNTH, "ale", store))
        print(f"ingest Neurosynth ALE store: {r['wall']:.1f} s, peak RSS "
              f"{r['peak'] / GiB:.2f} GiB")
    npz = work / "ours.npz"
    r = run_measured(me + ["ours", str(store), str(args.n_iters), str(npz)])
    ours = child_json(r)
    print(f"daskmeta (whole process, peak RSS {r['peak'] / GiB:.2f} GiB): "
          f"{ours['n']} experiments, {ours['n_clusters']} clusters ({ours['n_positive']} "
          f"positive) in {ours['table']}; fit from the store "
          f"{ours['fit']:.1f} s, Monte Carlo FWE ({args.n_iters} iterations) {ours['fwe']:.1f} "
          f"s, Jackknife {ours['jackknife']:.1f} s (again {ours['jackknife_again']:.1f} s), "
          f"FocusCounter {ours['focuscounter']:.1f} s")
    if args.no_nimare:
        return None
    r = run_measured(me + ["nimare", str(npz), str(args.nimare_folds)], timeout=4 * 3600)
    nim = child_json(r)
    extrapolated = nim["fold_mean"] * ours["n"]
    print(f"NiMARE 0.22.1 (peak RSS {r['peak'] / GiB:.2f} GiB): ALE fit {nim['fit']:.1f} s; "
          f"{len(nim['folds'])} leave-one-out refits "
          f"{', '.join(f'{f:.1f}' for f in nim['folds'])} s, so its Jackknife would take "
          f"about {nim['fold_mean']:.1f} s x {ours['n']} = {extrapolated / 3600:.2f} h "
          "(extrapolated, not run)")
    print(f"Jackknife: daskmeta {ours['jackknife']:.1f} s vs NiMARE ~{extrapolated:.0f} s "
          f"(extrapolated): {extrapolated / ours['jackknife']:.0f}x; max abs difference of the "
          f"{len(nim['folds'])} folds' contributions {nim['max_abs_diff']:.2g}; stat max abs "
          f"difference {nim['stat_max_abs_diff']:.2g}")
    return None


if __name__ == "__main__":
    main()
