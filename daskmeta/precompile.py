"""Compile daskmeta's numba code ahead of time: ``python -m daskmeta.precompile``.

daskmeta's loops are compiled by numba on first use and cached (see
:mod:`daskmeta._numba_cache` for where), so only the first run of each analysis pays for
compilation. Running this module once after installing (``make demo`` and ``make test`` do;
a Dockerfile can add ``RUN python -m daskmeta.precompile`` after ``pip install``) makes that
first run fast too: it runs tiny analyses that go through every compiled function with the
argument types real runs use (fits of ALE, MKDA and KDA from a dataset, their Monte Carlo
nulls, and collections: build, fit from the store), on a simulated dataset, without a Dask
cluster, writing nothing but the cache (and a temporary store, deleted).

:func:`warm_up` compiles just what a coordinate-based fit and its Monte Carlo run first;
the ``daskmeta`` fit commands run it in a background thread as they start
(:func:`start_warm_up`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

__all__ = ["main", "precompile", "start_warm_up", "warm_up"]


def precompile(log=None) -> float:
    """Compile (or load from the cache) every compiled function of daskmeta's analyses.

    Parameters
    ----------
    log : callable, optional
        Receives a line per step.

    Returns
    -------
    float
        Seconds taken.
    """
    import dask

    from daskmeta import simulate
    from daskmeta.collection import Collection
    from daskmeta.correct import FWECorrector
    from daskmeta.estimators import ALE, KDA, MKDADensity
    from daskmeta.exceptions import DaskmetaWarning
    from daskmeta.kernels import ALEKernel, MKDAKernel

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    sim = simulate.coordinates(n_experiments=6, seed=0)
    dataset = sim.dataset
    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DaskmetaWarning)
        for cls in (ALE, MKDADensity, KDA):
            t = time.perf_counter()
            res = cls().fit(dataset)
            FWECorrector("montecarlo", n_iters=2, seed=0, progress=False).transform(res)
            log(f"{cls.__name__}: fit and Monte Carlo ({time.perf_counter() - t:.1f} s)")
        with tempfile.TemporaryDirectory(prefix="daskmeta-precompile-") as tmp:
            for name, kernel, cls in (("ale", ALEKernel(sample_size=20), ALE),
                                      ("mkda", MKDAKernel(), MKDADensity)):
                t = time.perf_counter()
                coll = Collection.build(dataset, kernel, Path(tmp) / f"{name}.zarr")
                cls(kernel_transformer=kernel).fit(coll, select=dataset.ids[:4])
                log(f"{cls.__name__}: collection build and fit ({time.perf_counter() - t:.1f} s)")
            import numpy as np

            from daskmeta.decode import CorrelationDecoder

            t = time.perf_counter()
            held = np.zeros((dataset.n_experiments, 1))
            held[: dataset.n_experiments // 2] = 1.0
            CorrelationDecoder(fwe_iters=2).fit(coll, label_matrix=held,
                                                label_names=["precompile__half"])
            log(f"CorrelationDecoder: model and FWE ({time.perf_counter() - t:.1f} s)")
    return time.perf_counter() - t0


def warm_up(estimator: str = "ale") -> float:
    """Compile (or load from the cache) what a coordinate-based fit and its Monte Carlo
    nulls run first, on tiny inputs, without Dask (no config or scheduler is touched): the
    MA combine (fits and nulls share its one specialisation) and, for ALE, the convolution
    of its null histogram. The argument types are those of real runs, so nothing is
    compiled twice.

    Parameters
    ----------
    estimator : {"ale", "mkda", "kda"}

    Returns
    -------
    float
        Seconds taken.
    """
    import numpy as np

    from daskmeta._combine import _build_context, identity

    t0 = time.perf_counter()
    ctx = _build_context(np.ones((3, 3, 3), dtype=bool), np.array([0, 1], dtype=np.int64),
                         np.zeros((1, 3), dtype=np.int32), np.ones(1, dtype=np.float32),
                         identity)
    row_start, row_kernel = np.array([0, 1], dtype=np.int64), np.zeros(1, dtype=np.int64)
    sel = (np.array([0, 1]), np.array([0]), np.array([1.0]))
    ctx.run(ctx.focus_base([[1, 1, 1]]), row_start, row_kernel, False, sel,
            np.zeros((1, 27)), ctx.scratch(row_start, row_kernel))
    if estimator == "ale":
        from daskmeta.estimators.ale import ale_null_histogram

        hists = [(np.array([1, 2]), np.array([3.0, 1.0])), (np.array([1]), np.array([2.0]))]
        ale_null_histogram(hists, 10, np.linspace(0.0, 1.0, 11))
    return time.perf_counter() - t0


def start_warm_up(estimator: str = "ale") -> threading.Thread:
    """Run :func:`warm_up` in a daemon thread (what the ``daskmeta`` fit commands do as they
    start): on a first run, the compiler's work that releases the GIL (LLVM's) overlaps the
    command's imports, input reading and cluster start. numba's compiler lock makes the
    run's own first call wait for a compilation under way, never compile again. An error
    here is kept on the thread (``thread.error``) and otherwise ignored: the run's own call
    compiles and reports it."""

    def target():
        try:
            warm_up(estimator)
        except Exception as exc:  # the run's own first call raises it where it matters
            thread.error = exc

    thread = threading.Thread(target=target, name="daskmeta-warm-up", daemon=True)
    thread.error = None
    thread.start()
    return thread


def main(argv=None) -> int:
    """Entry point of ``python -m daskmeta.precompile``."""
    parser = argparse.ArgumentParser(prog="python -m daskmeta.precompile",
                                     description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    from daskmeta import _numba_cache

    where = _numba_cache.cache_dir() or "the package's __pycache__ directories"
    print(f"daskmeta: compiling into {where}", file=sys.stderr, flush=True)
    seconds = precompile(log=lambda msg: print(f"daskmeta:   {msg}", file=sys.stderr,
                                               flush=True))
    print(f"daskmeta: compiled in {seconds:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
