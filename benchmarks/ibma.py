"""Image-based meta-analysis: daskmeta side by side with NiMARE 0.22.1, and out of core.

Run under the heavy lock (it writes ~6 GB of temporary data and takes minutes)::

    flock /tmp/daskmeta-heavy.lock python benchmarks/ibma.py [--n-small 200] [--n-large 2000]

1. **Side by side** (the NIfTI path): ``--n-small`` simulated studies at 2 mm on NiMARE's
   FSL MNI152 mask (228,483 voxels), z, beta and varcope ``.nii.gz`` files. Each of
   Stouffers, DerSimonianLaird and WeightedLeastSquares is fitted from the files by NiMARE
   (as shipped, and with ``gc.freeze()`` first: nilearn collects garbage for every image it
   masks) and by daskmeta (``Estimator().fit(dataset)``: reads the images into a temporary image
   stack, then fits blockwise), each in a fresh process (its wall time and peak RSS), and
   by daskmeta from a prebuilt stack; the maps' maximum absolute differences are printed.
2. **Out of core**: ``--n-large`` simulated studies at 2 mm written straight into an image
   stack (z, beta, varcope: 2,000 x 228,483 x 3 float32 = 5.5 GB), then Stouffers,
   DerSimonianLaird and WeightedLeastSquares each fitted in a fresh process: wall time and
   peak RSS (target <= 2 GiB).

Every child runs on the machine's cores with dask's threaded scheduler (daskmeta) or
NiMARE's defaults; timings on a shared machine are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MASK = ROOT.parent / "shared" / "data" / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz"
ESTIMATORS = ["Stouffers", "DerSimonianLaird", "WeightedLeastSquares"]


def _child(kind: str, name: str, data: str, out: str) -> None:
    """One timed fit in this (fresh) process; prints a JSON line."""
    import warnings

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    if kind.startswith("nimare"):
        import gc
        import logging

        logging.getLogger("nimare").setLevel(logging.ERROR)
        import nimare.meta.ibma as nm
        from nimare.dataset import Dataset

        dset = Dataset(json.loads(Path(data).read_text()), mask=str(MASK))
        if kind == "nimare-gcfrozen":  # nilearn's gc.collect() per image scans nothing
            gc.freeze()
        t0 = time.perf_counter()
        res = getattr(nm, name)().fit(dset)
        maps = {k: np.asarray(res.get_map(k, return_type="array"), float) for k in res.maps}
    else:
        # What NiMARE imports before its fit starts (pymare, nilearn, scipy.stats) is imported
        # here too, so both fit times leave imports out (the process times include them).
        import nilearn.image  # noqa: F401
        import pymare  # noqa: F401
        import scipy.stats  # noqa: F401

        import daskmeta
        from daskmeta import estimators

        if kind == "daskmeta-files":
            import pickle

            ds = pickle.loads(Path(data).read_bytes())
            t0 = time.perf_counter()
            res = getattr(estimators, name)(mask=str(MASK)).fit(ds)
        else:
            stack = daskmeta.ImageStack.open(data)
            t0 = time.perf_counter()
            res = getattr(estimators, name)().fit(stack)
        maps = {k: np.asarray(res.get_map(k, "array"), float) for k in res.map_names}
    seconds = time.perf_counter() - t0
    if out:
        np.savez(out, **maps)
    print(json.dumps({"seconds": seconds, "peak_rss_gib": _peak_rss_gib()}))


def _peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM): unlike ``ru_maxrss``, which Linux carries
    across ``execve`` from the forked parent, it counts this program only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # KiB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _run(kind, name, data, out="") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, name, str(data), out],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{kind} {name} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]),
            "process_seconds": time.perf_counter() - t0}


def side_by_side(n: int, tmp: Path) -> None:
    import pickle

    import daskmeta
    from daskmeta import simulate
    from daskmeta.space import Space

    space = Space(str(MASK))
    t = time.perf_counter()
    sim = simulate.images(tmp / "images", n_studies=n, space=space,
                          image_types=("z", "beta", "varcope"), compress=True, seed=0)
    print(f"simulated {n} studies (z, beta, varcope .nii.gz, {space.n_voxels:,} voxels) in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    (tmp / "nimare.json").write_text(json.dumps(sim.nimare_dict()))
    (tmp / "dataset.pkl").write_bytes(pickle.dumps(sim.dataset))
    t = time.perf_counter()
    stack = daskmeta.ImageStack.build(sim.dataset, tmp / "stack.zarr", mask=space)
    build = time.perf_counter() - t
    print(f"daskmeta ImageStack.build of {n} x 3 images: {build:.1f} s\n")
    print("NiMARE: Estimator().fit(Dataset) as shipped; 'gc frozen': the same with gc.freeze() "
          "first (nilearn's gc.collect() per masked image then scans nothing)")
    print("fit s: the fit alone (imports and NiMARE's Dataset construction excluded); "
          "process s: the whole child process as a user times it")
    print(f"{'estimator':22s} {'NiMARE s':>9s} {'RSS GiB':>8s} {'gc frozen s':>11s} "
          f"{'daskmeta s':>11s} {'RSS GiB':>8s} {'speed-up':>9s} {'from stack s':>12s} "
          f"{'max |diff|':>11s} {'process s NiMARE/daskmeta':>26s}")
    for name in ESTIMATORS:
        a = _run("nimare", name, tmp / "nimare.json", str(tmp / f"n-{name}.npz"))
        f = _run("nimare-gcfrozen", name, tmp / "nimare.json")
        b = _run("daskmeta-files", name, tmp / "dataset.pkl", str(tmp / f"d-{name}.npz"))
        c = _run("daskmeta-stack", name, stack.path)
        na, nb = np.load(tmp / f"n-{name}.npz"), np.load(tmp / f"d-{name}.npz")
        diff = max(float(np.nanmax(np.abs(na[k] - nb[k]))) for k in nb.files)
        print(f"{name:22s} {a['seconds']:9.1f} {a['peak_rss_gib']:8.2f} {f['seconds']:11.1f} "
              f"{b['seconds']:11.1f} {b['peak_rss_gib']:8.2f} "
              f"{a['seconds'] / b['seconds']:4.1f}/{f['seconds'] / b['seconds']:.1f}x "
              f"{c['seconds']:12.1f} {diff:11.2g} "
              f"{a['process_seconds']:17.1f}/{b['process_seconds']:.1f}", flush=True)


def out_of_core(n: int, tmp: Path) -> None:
    import pandas as pd

    from daskmeta import simulate
    from daskmeta.imagestack import ROWS_PER_BLOCK, ImageStack
    from daskmeta.space import Space

    space = Space(str(MASK))
    t = time.perf_counter()
    truth = simulate.true_effect_map(space)
    rng = np.random.default_rng(1)
    sizes = rng.integers(12, 41, size=n)
    exp = pd.DataFrame({"id": [f"s{i:05d}" for i in range(n)], "sample_size": sizes})
    stack = ImageStack.create(tmp / "large.zarr", space, exp, ("z", "beta", "varcope"))
    for a in range(0, n, ROWS_PER_BLOCK):
        values = simulate.image_values(truth, sizes[a:a + ROWS_PER_BLOCK], rng)
        stack.write_rows(a, {k: values[k] for k in ("z", "beta", "varcope")})
    size = sum(f.stat().st_size for f in (tmp / "large.zarr").rglob("*") if f.is_file())
    print(f"\nwrote {n} simulated studies x {space.n_voxels:,} voxels x (z, beta, varcope) "
          f"straight into an image stack: {size / 2**30:.1f} GiB on disk, "
          f"{time.perf_counter() - t:.0f} s")
    print(f"{'estimator':22s} {'daskmeta s':>11s} {'process s':>10s} {'peak RSS GiB':>13s}")
    for name in ESTIMATORS:
        r = _run("daskmeta-stack", name, tmp / "large.zarr")
        ok = "ok" if r["peak_rss_gib"] <= 2 else "OVER 2 GiB"
        print(f"{name:22s} {r['seconds']:11.1f} {r['process_seconds']:10.1f} "
              f"{r['peak_rss_gib']:13.2f}  {ok}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-small", type=int, default=200)
    p.add_argument("--n-large", type=int, default=2000)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args()
    print(f"daskmeta IBMA benchmark, {os.cpu_count()} cores, mask {MASK.name}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="daskmeta-bench-ibma-", dir=args.tmp))
    try:
        side_by_side(args.n_small, tmp)
        if not args.skip_large:
            out_of_core(args.n_large, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
    else:
        main()
