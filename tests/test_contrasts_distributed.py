"""A real ``dask scheduler`` and two ``dask worker`` processes on loopback give the same
MKDAChi2 and ALESubtraction label-permutation nulls as the local scheduler, for one seed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NIMARE_MASK

from daskmeta import montecarlo
from daskmeta.cluster import active_client
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALESubtraction, MKDAChi2
from daskmeta.montecarlo.permutation import PerMap

pytest.importorskip("distributed")
MASK = str(NIMARE_MASK)
SEED, N_ITERS, BATCH = 11, 60, 10
SUMMARY = PerMap(montecarlo.ClusterMaxima(10.83), ("uniformity", "group2", "association"))


def _runs(pain_halves):
    chi2 = MKDAChi2(mask=MASK).fit(*pain_halves)
    nulls = montecarlo.run_montecarlo(chi2.estimator._null_model(), SUMMARY, N_ITERS, BATCH,
                                      SEED, progress=False)
    fwe = FWECorrector("montecarlo", n_iters=N_ITERS, seed=SEED, batch_size=BATCH,
                       vfwe_only=True).transform(chi2)
    sub = ALESubtraction(mask=MASK, n_iters=N_ITERS, seed=SEED, batch_size=BATCH).fit(*pain_halves)
    return nulls, fwe, sub


@pytest.fixture(scope="module")
def local(pain_halves):
    """The runs with no client: dask's local threaded scheduler."""
    assert active_client() is None
    return _runs(pain_halves)


def test_nulls_on_scheduler_and_two_workers_equal_local(pain_halves, local, scheduler_and_workers):
    client, workers = scheduler_and_workers
    assert active_client() is client
    remote_chi2, remote_fwe, remote_sub = _runs(pain_halves)
    # both worker processes ran batches (each packed the pooled rows once)
    ran = client.run(lambda: __import__("daskmeta.montecarlo.permutation",
                                        fromlist=["x"]).loaded_pools())
    assert len(ran) == 2 and all(ran.values())
    assert all(w.running() for w in workers)
    local_chi2, local_fwe, local_sub = local
    for key in SUMMARY.keys:
        np.testing.assert_array_equal(remote_chi2.values[key], local_chi2.values[key],
                                      err_msg=key)
    assert np.ptp(local_chi2.values["association:max_stat"]) > 0
    assert len(local_fwe.null_distributions) == 4  # pAgF (= group1), group2, pFgA
    for name in local_fwe.null_distributions:
        np.testing.assert_array_equal(remote_fwe.null_distributions[name],
                                      local_fwe.null_distributions[name], err_msg=name)
    for name in ("p_desc-group1MinusGroup2", "z_desc-group1MinusGroup2"):
        np.testing.assert_array_equal(remote_sub.get_map(name, "array"),
                                      local_sub.get_map(name, "array"), err_msg=name)
    np.testing.assert_array_equal(
        remote_sub.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"],
        local_sub.null_distributions["values_level-voxel_corr-fwe_method-montecarlo"])
