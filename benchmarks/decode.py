"""Decoding at whole-database scale, side by side with NiMARE 0.22.1 where it can finish.

1. Decoder models from MKDA collections (NiMARE's mask, built first if absent):
   every LDA50 topic of Neurosynth v7 and every NeuroQuery term used by >= 5 studies
   (count >= 1, 4,111 terms): wall time and peak RSS of the process (collections exist).
2. Decoding against the 4,111-term model on disk, in a fresh process: 1 image and 100
   images, timed from the call (after imports); and ``daskmeta decode MODEL IMG`` as a whole
   process against Python's own start-up of the package (``python -c "import daskmeta"``),
   medians of 3.
3. The HTTP service (``daskmeta serve``) on loopback: 5 rounds of 20 concurrent requests,
   latency percentiles.
4. FWE of all 4,111 terms: seconds per label-permutation iteration (``--fwe-iters``
   iterations, 200 by default, after a compiling run), and the time of 10,000 iterations:
   measured when ``--fwe-iters 10000``, else extrapolated (stated as such).
5. NiMARE's ``CorrelationDecoder`` (MKDAChi2) on the whole Neurosynth for ONE label (the
   pain topic): its set-up and per-label times, measured, then extrapolated per label to
   the 50 topics and the 4,111 terms (stated as such), its peak RSS, and the largest
   absolute difference between its map and daskmeta's, and between the r of a test image.
6. ``cbma``: a decoder model of the LDA50 topics with ``meta_estimator=MKDADensity()``,
   ``target_image="z"`` (each topic's own fit, fit_many's passes), and NiMARE's
   ``CorrelationDecoder`` with the same estimator on three topics (measured, extrapolated
   to 50), with the map and r differences of each.

Each piece runs in its own subprocess whose process tree's RSS is sampled (psutil). Run it
under the heavy lock: ``flock /tmp/daskmeta-heavy.lock python benchmarks/decode.py``.

Usage::

    python benchmarks/decode.py --workdir /tmp/decode-bench [--no-nimare] [--only ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collection_store import child_json, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
NEUROSYNTH = DATA / "neurosynth-v7"
NEUROQUERY = DATA / "neuroquery-v1"
MASK = DATA / "nimare-testdata" / "MNI152_2x2x2_brainmask.nii.gz"
PAIN = "32_pain_somatosensory_stimulation"
GiB, MiB = 2**30, 2**20


def me(*args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, args)]


# -- children --------------------------------------------------------------------------------
def child_build(store: str, labels: str, min_studies: str, out: str) -> None:
    from daskmeta import Collection
    from daskmeta.decode import CorrelationDecoder

    coll = Collection.open(store)
    t0 = time.perf_counter()
    dec = CorrelationDecoder(labels=labels, min_studies=int(min_studies)).fit(
        coll, store=out, overwrite=True)
    print(json.dumps({"time": time.perf_counter() - t0, "n_labels": len(dec.features_)}))


def child_decode(model: str, n: str) -> None:
    from daskmeta.decode import DecoderModel

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    m = DecoderModel.open(model)
    imgs = [m.space.to_img(rng.normal(size=m.space.n_voxels).astype(np.float32))
            for _ in range(int(n))]
    t1 = time.perf_counter()
    m.transform(imgs)
    t2 = time.perf_counter()
    print(json.dumps({"open": t1 - t0, "transform": t2 - t1}))


def child_fwe(store: str, model: str, n_iters: str) -> None:
    import dask

    from daskmeta import Collection
    from daskmeta._pass import has_foci
    from daskmeta.decode import DecoderModel
    from daskmeta.decode.fwe import binary_rows, label_fwe

    coll = Collection.open(store)
    m = DecoderModel.open(model)
    t0 = time.perf_counter()
    indptr, indices = binary_rows(coll.path, np.flatnonzero(has_foci(coll.dataset)),
                                  coll.generation)
    t_load = time.perf_counter() - t0
    label_fwe(m, coll, 2, seed=0, batch_size=1)  # compiles
    n = int(n_iters)
    t1 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        label_fwe(m, coll, n, seed=1, batch_size=max(1, n // 2))
    per_iter = (time.perf_counter() - t1) / n
    print(json.dumps({"load": t_load, "nnz": int(len(indices)), "per_iter": per_iter,
                      "n_sizes": int(len(np.unique(m.n_studies)))}))


def _nimare_against_model(model_path: str, img_path: str, topics, **decoder_kwargs) -> dict:
    """NiMARE's CorrelationDecoder on the whole Neurosynth for ``topics`` (its read, set-up
    and per-label times) and, per topic, the largest map difference from a daskmeta model
    and the difference of the r of an image."""
    import warnings

    import nibabel as nib
    from nimare.decode.continuous import CorrelationDecoder as NiMARE
    from nimare.io import convert_neurosynth_to_dataset

    from daskmeta.decode import DecoderModel

    p = "data-neurosynth_version-7_"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nds = convert_neurosynth_to_dataset(
            str(NEUROSYNTH / f"{p}coordinates.tsv.gz"), str(NEUROSYNTH / f"{p}metadata.tsv.gz"),
            annotations_files={
                "features": str(NEUROSYNTH / f"{p}vocab-LDA50_source-abstract_type-weight_"
                                             "features.npz"),
                "vocabulary": str(NEUROSYNTH / f"{p}vocab-LDA50_vocabulary.txt")})
        nds.masker = str(MASK)
    t_read = time.perf_counter() - t0
    per_label = []
    original = NiMARE._run_fit

    def timed(self, feature, dataset):
        t = time.perf_counter()
        out = original(self, feature, dataset)
        per_label.append(time.perf_counter() - t)
        return out

    NiMARE._run_fit = timed
    dec = NiMARE(feature_group="LDA50_abstract_weight", features=list(topics), **decoder_kwargs)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec.fit(nds)
        fit = time.perf_counter() - t1
        r_theirs = dec.transform(nib.load(img_path))["r"]
    model = DecoderModel.open(model_path)
    r_ours = model.transform(img_path)["r"]
    diffs = {}
    for t in topics:
        theirs = dec.results_.maps[f"LDA50_abstract_weight__{t}"]
        ours = model.get_map(f"LDA50__{t}", return_type="array")
        diffs[t] = [float(np.abs(ours - theirs).max()),
                    abs(float(r_ours[f"LDA50__{t}"]) - float(r_theirs[
                        f"LDA50_abstract_weight__{t}"]))]
    return {"read": t_read, "fit": fit, "per_label": per_label,
            "setup": fit - sum(per_label), "diffs": diffs}


def child_nimare(ns_model: str, img_path: str) -> None:
    out = _nimare_against_model(ns_model, img_path, [PAIN])
    out["map_diff"], out["r_diff"] = out.pop("diffs")[PAIN]
    print(json.dumps(out))


TOPICS = ["32_pain_somatosensory_stimulation", "17_motor_cortex_hand", "40_face_faces_facial"]


def child_cbma_build(store: str, out: str) -> None:
    from daskmeta import Collection
    from daskmeta.decode import CorrelationDecoder
    from daskmeta.estimators import MKDADensity

    coll = Collection.open(store)
    t0 = time.perf_counter()
    dec = CorrelationDecoder(labels="LDA50", meta_estimator=MKDADensity(),
                             target_image="z").fit(coll, store=out, overwrite=True)
    print(json.dumps({"time": time.perf_counter() - t0, "n_labels": len(dec.features_)}))


def child_cbma_nimare(model_path: str, img_path: str) -> None:
    from nimare.meta.cbma import MKDADensity

    print(json.dumps(_nimare_against_model(model_path, img_path, TOPICS,
                                           meta_estimator=MKDADensity(), target_image="z")))


# -- the benchmark ------------------------------------------------------------------------------
def ensure_collection(source: Path, store: Path) -> None:
    if (store / "zarr.json").exists():
        return
    res = run_measured([sys.executable, "-m", "daskmeta.cli", "ingest", str(source),
                        "--kernel", "mkda", "--store", str(store), "--mask", str(MASK)])
    print(f"ingest {source.name}: {res['wall']:.1f} s, peak RSS {res['peak'] / MiB:.0f} MiB")


def median_wall(cmd, n=3, env=None) -> float:
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def service_latency(model: Path, img_bytes: bytes, rounds: int = 5) -> list[float]:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "daskmeta", "serve", str(model), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        def post(_):
            with httpx.Client(timeout=600) as client:
                t0 = time.perf_counter()
                resp = client.post(f"{base}/decode", content=img_bytes)
                resp.raise_for_status()
                return time.perf_counter() - t0

        latencies = []
        with ThreadPoolExecutor(20) as pool:
            for _ in range(rounds):
                latencies += list(pool.map(post, range(20)))
        return latencies
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/daskmeta-decode-bench")
    ap.add_argument("--no-nimare", action="store_true")
    ap.add_argument("--fwe-iters", type=int, default=200)
    ap.add_argument("--only", nargs="*",
                    default=["build", "decode", "serve", "fwe", "nimare", "cbma"])
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ns_store, nq_store = work / "ns-mkda.zarr", work / "nq-mkda.zarr"
    ns_model, nq_model = work / "ns-lda50.zarr", work / "nq-4111.zarr"
    ensure_collection(NEUROSYNTH, ns_store)
    ensure_collection(NEUROQUERY, nq_store)
    print("(a shared 2-core machine: other sessions' work runs alongside)")
    if "build" in args.only:
        for what, store, labels, k, out, target in (
                ("LDA50 topics", ns_store, "LDA50", 1, ns_model, "<= 15 s; NiMARE ~38 min"),
                ("NeuroQuery terms >= 5 studies", nq_store, "neuroquery7547", 5, nq_model,
                 "<= 60 s, <= 3 GiB")):
            res = run_measured(me("build", store, labels, k, out))
            info = child_json(res)
            print(f"model of {info['n_labels']:,} {what}: fit {info['time']:.1f} s, process "
                  f"{res['wall']:.1f} s, peak RSS {res['peak'] / MiB:.0f} MiB (target "
                  f"{target})")
    if "decode" in args.only:
        for n in (1, 100):
            res = run_measured(me("decode", nq_model, n))
            info = child_json(res)
            print(f"decode {n} image(s) against the 4,111-term model, fresh process: "
                  f"{info['transform']:.2f} s from the call (open {info['open']:.2f} s)")
        import nibabel as nib

        from daskmeta.decode import DecoderModel

        m = DecoderModel.open(nq_model)
        img = m.space.to_img(np.random.default_rng(1).normal(size=m.space.n_voxels)
                             .astype(np.float32))
        img_path = work / "image.nii.gz"
        nib.save(img, img_path)
        t_import = median_wall([sys.executable, "-c", "import daskmeta"])
        t_cli = median_wall([sys.executable, "-m", "daskmeta", "decode", str(nq_model),
                             str(img_path), "--top", "20"])
        print(f"`daskmeta decode` whole process {t_cli:.2f} s vs `import daskmeta` "
              f"{t_import:.2f} s: {t_cli - t_import:.2f} s more (median of 3)")
    if "serve" in args.only:
        import gzip

        from daskmeta.decode import DecoderModel

        m = DecoderModel.open(nq_model)
        img = m.space.to_img(np.random.default_rng(2).normal(size=m.space.n_voxels)
                             .astype(np.float32))
        lat = service_latency(nq_model, gzip.compress(img.to_bytes()))
        p = np.percentile(lat, [50, 90, 99, 100])
        print(f"service, 4,111-term model, {len(lat)} requests in rounds of 20 concurrent: "
              f"latency p50 {p[0]:.2f} s, p90 {p[1]:.2f} s, p99 {p[2]:.2f} s, max {p[3]:.2f} s")
    if "fwe" in args.only:
        res = run_measured(me("fwe", nq_store, nq_model, args.fwe_iters), timeout=4 * 3600)
        info = child_json(res)
        total = info["per_iter"] * 10_000
        how = "MEASURED" if args.fwe_iters == 10_000 else "EXTRAPOLATED"
        print(f"FWE of all 4,111 terms: {info['per_iter']:.3f} s per iteration on 2 threads "
              f"over {args.fwe_iters:,} iterations ({info['n_sizes']} group sizes, "
              f"{info['nnz'] / 1e6:.0f} M active voxels read in {info['load']:.1f} s), peak "
              f"RSS {res['peak'] / MiB:.0f} MiB: 10,000 iterations {how} "
              f"{total / 60:.1f} min here (target <= 2 h); "
              f"{info['per_iter'] * 2:.3f} core-seconds per iteration on a cluster")
    if "nimare" in args.only and not args.no_nimare:
        import nibabel as nib

        from daskmeta.decode import DecoderModel

        m = DecoderModel.open(ns_model)
        img_path = work / "ns-image.nii.gz"
        nib.save(m.space.to_img(m.get_map(f"LDA50__{PAIN}", "array")
                                + np.random.default_rng(3).normal(size=m.space.n_voxels)
                                .astype(np.float32)), img_path)
        res = run_measured(me("nimare", ns_model, img_path), timeout=7200)
        info = child_json(res)
        per = info["per_label"][0]
        print(f"NiMARE CorrelationDecoder, whole Neurosynth, 1 label MEASURED: dataset "
              f"{info['read']:.1f} s, set-up {info['setup']:.1f} s, {per:.1f} s per label, "
              f"peak RSS {res['peak'] / GiB:.1f} GiB; map max abs diff vs daskmeta "
              f"{info['map_diff']:.3g}, r diff {info['r_diff']:.3g}")
        for n, what in ((47, "LDA50 topics decoded"), (4111, "NeuroQuery terms")):
            total = info["setup"] + n * per
            print(f"  EXTRAPOLATED for {n:,} {what}: {total / 60:.0f} min "
                  f"({total / 3600:.1f} h) on 1 core")
    if "cbma" in args.only:
        cbma_model = work / "ns-lda50-mkdadensity.zarr"
        res = run_measured(me("cbma_build", ns_store, cbma_model))
        info = child_json(res)
        print(f"model of {info['n_labels']} LDA50 topics with MKDADensity (z of each topic's "
              f"studies, fit_many's passes): fit {info['time']:.1f} s, process "
              f"{res['wall']:.1f} s, peak RSS {res['peak'] / MiB:.0f} MiB")
        if not args.no_nimare:
            import nibabel as nib

            from daskmeta.decode import DecoderModel

            m = DecoderModel.open(cbma_model)
            img_path = work / "ns-image-cbma.nii.gz"
            nib.save(m.space.to_img(np.random.default_rng(4).normal(size=m.space.n_voxels)
                                    .astype(np.float32)
                                    + m.get_map(f"LDA50__{PAIN}", "array")), img_path)
            res = run_measured(me("cbma_nimare", cbma_model, img_path), timeout=7200)
            info = child_json(res)
            per = statistics.median(info["per_label"])
            print(f"NiMARE CorrelationDecoder(MKDADensity, z), whole Neurosynth, 3 topics "
                  f"MEASURED: dataset {info['read']:.1f} s, set-up {info['setup']:.1f} s, "
                  f"{per:.1f} s per label (median), peak RSS {res['peak'] / GiB:.1f} GiB; "
                  f"EXTRAPOLATED to the 50 topics {(info['setup'] + 50 * per) / 60:.1f} min")
            for t, (d_map, d_r) in info["diffs"].items():
                print(f"  {t}: map max abs diff vs daskmeta {d_map:.3g}, r diff {d_r:.3g}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        {"build": child_build, "decode": child_decode, "fwe": child_fwe,
         "nimare": child_nimare, "cbma_build": child_cbma_build,
         "cbma_nimare": child_cbma_nimare}[sys.argv[2]](
            *sys.argv[3:])
    else:
        main()
