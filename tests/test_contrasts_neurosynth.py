"""MKDAChi2 on the whole Neurosynth database against NiMARE 0.22.1: the pain topic
(``LDA50__32_pain_somatosensory_stimulation`` >= 0.05, 865 experiments) against the rest of
Neurosynth (13,506), from a collection store, every map within 1e-5 of NiMARE's on NiMARE's
mask. Heavy (NiMARE takes about a minute and several GB): marked slow."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, NIMARE_MASK

from daskmeta import Collection
from daskmeta.estimators import MKDAChi2
from daskmeta.io import read_neurosynth
from daskmeta.kernels import MKDAKernel

PAIN = "LDA50__32_pain_somatosensory_stimulation"


@pytest.mark.slow
def test_pain_topic_against_rest_of_neurosynth_equals_nimare(tmp_path, monkeypatch):
    mkda = pytest.importorskip("nimare.meta.cbma.mkda")
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from run import to_nimare_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the foci far outside the mask (counted elsewhere)
        ns = read_neurosynth(DATA / "neurosynth-v7")
        store = Collection.build(ns, MKDAKernel(r=10), tmp_path / "ns.zarr",
                                 mask=str(NIMARE_MASK))
    ours = MKDAChi2().fit(store, select=PAIN, label_threshold=0.05)
    assert (ours.attrs["n_experiments1"], ours.attrs["n_experiments2"]) == (865, 13506)
    selected = set(ns.get_studies_by_label(PAIN, label_threshold=0.05))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = to_nimare_dataset(ns, NIMARE_MASK)
        ids = list(data.coordinates["id"].unique())
        theirs = mkda.MKDAChi2().fit(data.slice([i for i in ids if i in selected]),
                                     data.slice([i for i in ids if i not in selected]))
    assert sorted(ours.map_names) == sorted(theirs.maps)
    worst = 0.0
    for name in theirs.maps:
        a = ours.get_map(name, "array")
        b = np.asarray(theirs.maps[name])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        ok = ~np.isnan(b)
        diff = float(np.max(np.abs(a[ok].astype(np.float64) - b[ok]))) if ok.any() else 0.0
        worst = max(worst, diff)
        assert diff <= 1e-5, f"{name}: max abs difference {diff:.3g}"
    print(f"MKDAChi2 pain topic vs rest of Neurosynth: max abs difference over "
          f"{len(theirs.maps)} maps {worst:.3g}")
