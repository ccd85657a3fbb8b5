"""MKDAChi2 on the whole Neurosynth database against NiMARE 0.22.1: the pain topic
(``LDA50__32_pain_somatosensory_stimulation`` >= 0.05, 865 experiments) against the rest of
Neurosynth (13,506), from a collection store, every map within 1e-5 of NiMARE's on NiMARE's
mask. Heavy (NiMARE takes about a minute and several GB): marked slow. The Neurosynth
Dataset, its collection and NiMARE's Dataset are session fixtures (``conftest.py``), shared
with the whole-database decoder test (``test_decode_neurosynth.py``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from daskmeta.estimators import MKDAChi2

PAIN = "LDA50__32_pain_somatosensory_stimulation"


@pytest.mark.slow
def test_pain_topic_against_rest_of_neurosynth_equals_nimare(neurosynth, neurosynth_mkda,
                                                             nimare_neurosynth, tmp_path,
                                                             monkeypatch):
    mkda = pytest.importorskip("nimare.meta.cbma.mkda")
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))  # the totals' cache
    ours = MKDAChi2().fit(neurosynth_mkda, select=PAIN, label_threshold=0.05)
    assert (ours.attrs["n_experiments1"], ours.attrs["n_experiments2"]) == (865, 13506)
    selected = set(neurosynth.get_studies_by_label(PAIN, label_threshold=0.05))
    data = nimare_neurosynth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
