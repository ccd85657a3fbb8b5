"""Shared fixtures: paths to ../shared/data, the pain dataset, NiMARE's mask, no-early-compute."""

from __future__ import annotations

import contextlib
from pathlib import Path

import dask
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTDATA = DATA / "nimare-testdata"
NIMARE_MASK = TESTDATA / "MNI152_2x2x2_brainmask.nii.gz"
PAIN_JSON = TESTDATA / "test_pain_dataset.json"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def nimare_mask() -> str:
    return str(NIMARE_MASK)


@pytest.fixture(scope="session")
def nimare_space():
    import daskmeta

    return daskmeta.Space(NIMARE_MASK)


@pytest.fixture(scope="session")
def pain_dataset():
    """The 21 pain experiments (19 with foci) read by daskmeta's NiMARE-JSON reader."""
    from daskmeta.io import read_nimare_json

    return read_nimare_json(PAIN_JSON)


@pytest.fixture(scope="session")
def nimare_pain():
    """NiMARE's Dataset of the same file, with NiMARE's default mask."""
    nimare_dataset = pytest.importorskip("nimare.dataset")
    return nimare_dataset.Dataset(str(PAIN_JSON), mask=str(NIMARE_MASK))


def _refuse_compute(*args, **kwargs):
    raise AssertionError("something computed a dask graph before the documented boundary")


@contextlib.contextmanager
def no_compute():
    """Fail if anything computes a dask collection inside the block."""
    with dask.config.set(scheduler=_refuse_compute):
        yield


@pytest.fixture
def forbid_compute():
    return no_compute


def assert_close(a, b, atol, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = np.abs(a - b).max()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"
