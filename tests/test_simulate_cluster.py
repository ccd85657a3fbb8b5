"""The simulator (seeded, known truth) and the Dask client helpers."""

from __future__ import annotations

import numpy as np
import pytest

from daskmeta import DaskmetaError, simulate
from daskmeta.cluster import active_client, compute, get_client
from daskmeta.estimators import ALE


def test_simulation_is_seeded_and_finds_truth(nimare_space):
    a = simulate.coordinates(n_experiments=25, seed=7, space=nimare_space)
    b = simulate.coordinates(n_experiments=25, seed=7, space=nimare_space)
    c = simulate.coordinates(n_experiments=25, seed=8, space=nimare_space)
    assert a.dataset.foci.equals(b.dataset.foci)
    assert not a.dataset.foci.equals(c.dataset.foci)
    assert a.dataset.n_experiments == 25
    assert len(a.is_true_focus) == a.dataset.n_foci
    assert a.dataset.experiments["sample_size"].between(12, 40).all()
    res = ALE(mask=nimare_space).fit(a.dataset)
    # Every true site lies within 6 mm of a voxel with z > 3.09 (p < 0.001, uncorrected).
    z = res.get_map("z", "array")
    sig = nimare_space.voxel_xyz[z > 3.09]
    for site in a.true_sites:
        assert np.min(np.linalg.norm(sig - site, axis=1)) <= 6.0
    peak = nimare_space.voxel_xyz[np.argmax(z)]
    assert np.min(np.linalg.norm(a.true_sites - peak, axis=1)) <= 8.0


def test_simulation_argument_errors():
    with pytest.raises(DaskmetaError, match="n_experiments must be >= 1; got 0"):
        simulate.coordinates(n_experiments=0)
    with pytest.raises(DaskmetaError, match=r"p_activation must be in \[0, 1\]; got 2"):
        simulate.coordinates(p_activation=2)


def test_no_client_means_local_threads():
    import dask.array as da

    assert active_client() is None
    (total,) = compute(da.ones(10, chunks=3).sum())
    assert total == 10


def test_unreachable_scheduler_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    with pytest.raises(DaskmetaError, match=r"cannot reach the Dask scheduler at "
                                            r"tcp://127.0.0.1:1"):
        get_client(timeout="1s")
