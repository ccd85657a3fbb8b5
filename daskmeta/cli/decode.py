"""The decoding commands: ``decoder build``, ``decode`` and ``serve``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from daskmeta.cli._common import (
    _add_cluster_options,
    _bad,
    _check_dask_options,
    _check_int,
    _check_number,
    _client,
    _describe,
    _log,
)
from daskmeta.exceptions import DaskmetaError


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    d = sub.add_parser("decoder", help="build decoder models",
                       description="Decoder models: the meta-analytic map of every label.")
    dsub = d.add_subparsers(dest="decoder_command", metavar="COMMAND")
    dsub.required = True
    b = dsub.add_parser(
        "build", help="build a decoder model of every label of a collection",
        description="Compute the meta-analytic map of every label of a collection (by "
                    "default the MKDAChi2 association map, z_desc-association, of the label's "
                    "studies against all the others; or the ALE, MKDADensity or KDA map of "
                    "the label's studies), in passes over the store, and write them as a "
                    "decoder model (a Zarr store) for `daskmeta decode` and `daskmeta serve`.")
    b.add_argument("--collection", required=True, metavar="PATH",
                   help="a collection store (`daskmeta ingest SOURCE --kernel K`) of the "
                        "meta-estimator's kernel: mkda for mkdachi2 and mkdadensity, ale for "
                        "ale, kda for kda")
    b.add_argument("--meta-estimator", choices=list(META_ESTIMATORS), default="mkdachi2",
                   help="the meta-analysis of each label (default mkdachi2), with the "
                        "collection's kernel, mask and mask margin")
    b.add_argument("--labels", metavar="VOCAB|LABEL,...",
                   help="a vocabulary (e.g. LDA50: its every label) or comma-separated label "
                        "names (default: every label)")
    b.add_argument("--min-studies", type=int, default=1, metavar="N",
                   help="leave out labels holding for fewer than N studies (default 1)")
    b.add_argument("--frequency-threshold", type=float, default=0.001, metavar="F",
                   help="a label holds for a study whose weight is at least F (default 0.001)")
    b.add_argument("--target-image", default=None, metavar="MAP",
                   help="the map of each label: one of MKDAChi2's (default "
                        "z_desc-association), or stat, p, z (default) or logp of the others")
    b.add_argument("--fwe-iters", type=int, default=None, metavar="N",
                   help="also compute label-permutation FWE nulls of every label's map with N "
                        "iterations (the model then holds each label's threshold)")
    b.add_argument("--seed", type=int, default=0, help="seed of the FWE permutations")
    b.add_argument("--out", required=True, metavar="MODEL", help="the model store to write")
    b.add_argument("--overwrite", action="store_true", help="replace a model at MODEL")
    _add_cluster_options(b)
    b.set_defaults(handler=_run_build)

    p = sub.add_parser(
        "decode", help="decode images with a decoder model",
        description="Correlate images with every label's map of a decoder model and print "
                    "the best-correlated labels of each (images on another grid are "
                    "resampled to the model's mask).")
    p.add_argument("model", help="a decoder model (`daskmeta decoder build`)")
    p.add_argument("images", nargs="+", metavar="IMG", help="NIfTI images (3-D or 4-D)")
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="labels printed per image (default 20; 0 for all)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write every label's r with every image to FILE (CSV)")
    p.set_defaults(handler=_run_decode)

    s = sub.add_parser(
        "serve", help="serve a decoder model over HTTP",
        description="An HTTP decoding service (needs the `serve` extra: starlette, uvicorn): "
                    "POST /decode with a NIfTI upload returns the ranked labels as JSON; GET "
                    "/labels; GET /health.")
    s.add_argument("model", help="a decoder model")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                                                       "127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-upload-mb", type=float, default=64.0, metavar="MB",
                   help="largest accepted upload, also once decompressed (default 64)")
    s.set_defaults(handler=_run_serve)


#: ``--meta-estimator`` choices: the estimator class names in :mod:`daskmeta.estimators`.
META_ESTIMATORS = {"mkdachi2": "MKDAChi2", "ale": "ALE", "mkdadensity": "MKDADensity",
                   "kda": "KDA"}


def _run_build(args) -> None:
    from daskmeta import estimators
    from daskmeta.decode import CorrelationDecoder

    _check_int(args.min_studies, "--min-studies", 1)
    _check_int(args.fwe_iters, "--fwe-iters", 1, 10_000_000)
    _check_int(args.seed, "--seed", 0)
    _check_number(args.frequency_threshold, "--frequency-threshold", 0.0, float("inf"),
                  "a number > 0")
    _check_dask_options(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DaskmetaError(f"{out} exists; pass --overwrite to replace it, or another --out")
    labels = args.labels
    if labels is not None:
        parts = [x.strip() for x in labels.split(",")]
        if not all(parts):
            raise _bad("--labels", labels, "a vocabulary or comma-separated label names")
        labels = parts if len(parts) > 1 else parts[0]
    coll_path = Path(args.collection)
    if not (coll_path / "zarr.json").is_file():
        raise _bad("--collection", args.collection, "a collection store (a folder with "
                                                    "zarr.json; see `daskmeta ingest`)")
    from daskmeta.collection import Collection

    chi2 = args.meta_estimator == "mkdachi2"
    if args.fwe_iters is not None and not chi2:
        raise DaskmetaError(f"--fwe-iters needs --meta-estimator mkdachi2; got "
                            f"{args.meta_estimator!r}")
    target = args.target_image
    if target is None:
        target = "z_desc-association" if chi2 else "z"
    collection = Collection.open(coll_path)
    meta = getattr(estimators, META_ESTIMATORS[args.meta_estimator])(
        mask_margin=collection.mask_margin)
    decoder = CorrelationDecoder(labels=labels, frequency_threshold=args.frequency_threshold,
                                 meta_estimator=meta, target_image=target,
                                 min_studies=args.min_studies, fwe_iters=args.fwe_iters,
                                 seed=args.seed)
    decoder._validate_params()
    decoder._meta()[0]._source(collection)  # the map name and the kernel, before any work
    from daskmeta._pass import has_foci
    from daskmeta.decode.labels import select_labels

    # The labels are checked before a cluster starts (fit selects them again).
    select_labels(collection.dataset, has_foci(collection.dataset), labels,
                  args.frequency_threshold, args.min_studies)
    t0 = time.perf_counter()
    client = _client(args)
    _log(f"Dask: {_describe(client)}")

    def progress(done, total):
        _log(f"{done:,} of {total:,} label maps ({time.perf_counter() - t0:.1f} s)")

    decoder.fit(collection, store=out, overwrite=args.overwrite, progress=progress)
    _log(f"done in {time.perf_counter() - t0:.1f} s: {len(decoder.features_):,} labels")
    print(out.resolve())


def _run_decode(args) -> None:
    import numpy as np

    from daskmeta.decode.model import DecoderModel, images_to_matrix

    _check_int(args.top, "--top", 0)
    if args.csv is not None:
        csv = Path(args.csv)
        if csv.is_dir() or not csv.parent.is_dir():
            raise _bad("--csv", args.csv, "a file in an existing folder")
    model = DecoderModel.open(args.model)
    rows = []
    for path in args.images:
        matrix = images_to_matrix(path, model.space, path)
        rows.append((path, matrix))
    names = [f"{p}[{i}]" if len(m) > 1 else p for p, m in rows for i in range(len(m))]
    r = model.correlate(np.vstack([m for _, m in rows]))
    out = sys.stdout
    for j, name in enumerate(names):
        col = np.nan_to_num(r[:, j], nan=-np.inf)
        order = np.argsort(-col, kind="stable")
        if args.top:
            order = order[:args.top]
        out.write(f"# {name}\n")
        for rank, i in enumerate(order, start=1):
            out.write(f"{rank:4d}  {r[i, j]: .4f}  {model.labels[i]}\n")
    if args.csv is not None:
        import pandas as pd

        from daskmeta.results import atomic_write

        table = pd.DataFrame(r, index=pd.Index(model.labels, name="feature"), columns=names)
        atomic_write(args.csv, lambda tmp: table.to_csv(tmp))


def _run_serve(args) -> None:
    _check_int(args.port, "--port", 0, 65535)
    _check_number(args.max_upload_mb, "--max-upload-mb", 0.0, 1e6, "a size in MB > 0")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DaskmetaError("daskmeta serve needs starlette and uvicorn: pip install "
                            "'daskmeta[serve]'") from None
    from daskmeta.decode.model import DecoderModel
    from daskmeta.decode.serve import serve

    model = DecoderModel.open(args.model)
    _log(f"serving {model} on http://{args.host}:{args.port}")
    serve(model, host=args.host, port=args.port,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
