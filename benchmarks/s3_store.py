"""A whole-database collection on S3 against the same collection on local disk.

An S3 server on loopback (moto in server mode, started here) stands in for object storage;
its latency is loopback's, so the figures measure daskmeta's requests, not a network.

1. ``daskmeta ingest`` of the whole Neurosynth v7 with MKDA (r = 10 mm) to a local store and
   to ``s3://bench/ns-mkda.zarr``: wall time and peak RSS of the process tree (the moto server
   is not counted); then whether both stores hold the same rows (every row's compressed size
   and crc32c, from the two manifests, and the row maxima and histograms).
2. MKDADensity and ALE (a store with sample size 20) on the Neurosynth pain topic
   (``LDA50__32_pain_somatosensory_stimulation`` >= 0.05) fitted from each store in a fresh
   process: open + first fit, and the median of 3 further fits; the largest absolute
   differences between the maps.

NiMARE has no store (nor S3 support) to compare with: ``benchmarks/collection_store.py``
compares fits from a local store with NiMARE. Run under the heavy lock on a shared machine:

    flock /tmp/daskmeta-heavy.lock python benchmarks/s3_store.py [--ale]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection_store import MASK, NEUROSYNTH, PAIN_THRESHOLD, PAIN_TOPIC, run_measured  # noqa: E402

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingest(store: str, kernel: str, source=NEUROSYNTH) -> dict:
    cmd = [sys.executable, "-m", "daskmeta.cli", "ingest", str(source), "--kernel",
           kernel, "--store", store, "--mask", str(MASK), "--overwrite"]
    if kernel == "ale":
        cmd += ["--sample-size", "20"]
    return run_measured(cmd)


def child_fit(estimator: str, store: str, out: str) -> None:
    import warnings

    from daskmeta.collection import Collection
    from daskmeta.estimators import ALE, MKDADensity

    warnings.simplefilter("ignore")
    cls = {"mkda": MKDADensity, "ale": ALE}[estimator]
    t0 = time.perf_counter()
    coll = Collection.open(store)
    res = cls().fit(coll, select=PAIN_TOPIC, label_threshold=PAIN_THRESHOLD)
    first = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t = time.perf_counter()
        res = cls().fit(coll, select=PAIN_TOPIC, label_threshold=PAIN_THRESHOLD)
        times.append(time.perf_counter() - t)
    np.savez(out, **{m: np.asarray(res.get_map(m, return_type="array"))
                     for m in ("stat", "p", "z")})
    print(json.dumps({"first": first, "median": float(np.median(times))}))


def same_rows(local: str, remote: str) -> dict:
    from daskmeta import _integrity
    from daskmeta.collection import Collection

    a, b = _integrity.current(local, fresh=True), _integrity.current(remote, fresh=True)
    out = {name: bool(np.array_equal(a.sharded[name].rows, b.sharded[name].rows))
           for name in a.sharded}
    ca, cb = Collection.open(local), Collection.open(remote)
    rows = np.arange(ca.n_experiments)
    out["ma_max"] = bool(np.array_equal(ca.row_maxima(rows), cb.row_maxima(rows)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ale", action="store_true", help="also the ALE store (~1.8 GB)")
    parser.add_argument("--studies", type=int, default=None,
                        help="only the first N Neurosynth studies (a light run)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_fit(*args.child)
        return
    port = _free_port()
    env = {"DASK_DASKMETA__S3__ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "DASK_DASKMETA__S3__KEY": "bench", "DASK_DASKMETA__S3__SECRET": "bench",
           "DASK_DASKMETA__S3__REGION": "us-east-1"}
    os.environ.update(env)
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import dask

        dask.config.refresh()
        from daskmeta import _fs

        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        _fs.as_location(f"s3://{BUCKET}/x").fs.call_s3("create_bucket", Bucket=BUCKET)
        with tempfile.TemporaryDirectory(prefix="daskmeta-s3-bench-") as work:
            source = NEUROSYNTH
            if args.studies:
                from daskmeta.io import read

                ns = read(NEUROSYNTH)
                source = ns.slice(ns.ids[:args.studies]).save(Path(work) / "subset.zip")
                print(f"the first {args.studies} Neurosynth studies", flush=True)
            kernels = ["mkda"] + (["ale"] if args.ale else [])
            for kernel in kernels:
                local = str(Path(work) / f"ns-{kernel}.zarr")
                remote = f"s3://{BUCKET}/ns-{kernel}.zarr"
                for where, store in (("local disk", local), ("S3 (moto, loopback)", remote)):
                    r = ingest(store, kernel, source)
                    print(f"ingest Neurosynth {kernel} to {where}: {r['wall']:.1f} s, peak "
                          f"RSS {r['peak'] / 2**20:.0f} MiB", flush=True)
                print(f"  same rows: {same_rows(local, remote)}", flush=True)
                maps = {}
                for where, store in (("local", local), ("s3", remote)):
                    out = str(Path(work) / f"{kernel}-{where}.npz")
                    r = run_measured([sys.executable, __file__, "--child", kernel, store, out])
                    t = json.loads(r["stdout"].strip().splitlines()[-1])
                    maps[where] = np.load(out)
                    print(f"  {kernel} pain topic from {where}: open + first fit "
                          f"{t['first']:.2f} s, then median {t['median']:.2f} s per fit; "
                          f"process {r['wall']:.1f} s, peak RSS {r['peak'] / 2**20:.0f} MiB",
                          flush=True)
                diffs = {m: float(np.abs(maps["local"][m].astype(float)
                                         - maps["s3"][m].astype(float)).max())
                         for m in ("stat", "p", "z")}
                print(f"  max abs difference local vs S3: {diffs}", flush=True)
    finally:
        moto.terminate()
        moto.wait(timeout=30)


if __name__ == "__main__":
    main()
