"""Collections on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 build, reduce and fit exactly what the local threaded scheduler does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import daskmeta
from daskmeta.cluster import active_client
from daskmeta.collection import Collection
from daskmeta.estimators import ALE, MKDADensity
from daskmeta.kernels import ALEKernel, MKDAKernel

pytest.importorskip("distributed")

MAPS = ("stat", "p", "z", "logp")


def _maps(result):
    return {m: np.asarray(result.get_map(m, return_type="array")) for m in MAPS}


def test_build_reduce_fit_and_fit_many_on_workers_equal_local(scheduler_and_workers, tmp_path,
                                                              pain_dataset, nimare_mask):
    client, _ = scheduler_and_workers
    ids = pain_dataset.ids
    selections = {"first": ids[:9], "last": ids[8:], "odd": ids[1::2]}
    weights = sparse.random(4, pain_dataset.n_experiments, density=0.5, random_state=3,
                            format="csr")
    on_cluster = {}
    assert active_client() is client
    for name, kernel in (("ale", ALEKernel()), ("mkda", MKDAKernel())):
        # 3 experiments per shard: 7 build tasks, spread over both workers.
        coll = Collection.build(pain_dataset, kernel, tmp_path / f"remote-{name}.zarr",
                                mask=nimare_mask, rows_per_shard=3)
        est = ALE if name == "ale" else MKDADensity
        on_cluster[name] = (coll, _maps(est().fit(coll, select=ids[2:17])),
                            est().fit_many(coll, selections), coll.reduce(weights).values)
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and min(executed.values()) > 10, executed  # both did work
    client.close()
    assert active_client() is None

    for name, kernel in (("ale", ALEKernel()), ("mkda", MKDAKernel())):
        coll, maps, many, reduced = on_cluster[name]
        local = Collection.build(pain_dataset, kernel, tmp_path / f"local-{name}.zarr",
                                 mask=nimare_mask, rows_per_shard=3)
        for array in ("ma", "ma_max", "ma_hist"):
            assert np.array_equal(coll.data[array].values, local.data[array].values), array
        est = ALE if name == "ale" else MKDADensity
        local_maps = _maps(est().fit(local, select=ids[2:17]))
        for m in MAPS:
            assert np.array_equal(maps[m], local_maps[m]), (name, m)
        local_many = est().fit_many(local, selections)
        for m in MAPS:
            assert np.array_equal(many[m].values, local_many[m].values), (name, m)
        assert np.array_equal(reduced, local.reduce(weights).values)
        # And the in-memory fit, for good measure.
        memory = _maps(est(mask=nimare_mask).fit(pain_dataset.slice(ids[2:17])))
        for m in MAPS:
            assert np.array_equal(maps[m], memory[m]), (name, m)
    assert isinstance(daskmeta.Collection.open(tmp_path / "remote-ale.zarr"), Collection)
