"""CorrelationDecoder on the whole Neurosynth v7 (14,371 studies) against NiMARE 0.22.1's, on
NiMARE's mask, for the LDA50 topics pain, motor (hand) and face: every label map within 1e-4
and each Pearson r of the same image within 1e-3. Heavy (NiMARE: about 30 s of set-up, 45 s a
label and 7 GB): marked slow. The Neurosynth collection and NiMARE's Dataset are the session
fixtures of ``conftest.py``, shared with ``test_contrasts_neurosynth.py``; NiMARE's decoder
is fitted once, over the three labels."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from test_decode import TOPICS, _test_image

from daskmeta.decode import CorrelationDecoder


@pytest.mark.slow
def test_correlation_decoder_on_whole_neurosynth_equals_nimare(neurosynth_mkda,
                                                               nimare_neurosynth, tmp_path,
                                                               monkeypatch):
    continuous = pytest.importorskip("nimare.decode.continuous")
    monkeypatch.setenv("DASKMETA_CACHE_DIR", str(tmp_path / "cache"))
    labels = [f"LDA50__{t}" for t in TOPICS]
    t0 = time.perf_counter()
    ours = CorrelationDecoder(labels=labels).fit(neurosynth_mkda, store=tmp_path / "m.zarr")
    t_ours = time.perf_counter() - t0
    img = _test_image(neurosynth_mkda.space)
    r_ours = ours.transform(img)
    theirs = continuous.CorrelationDecoder(feature_group="LDA50", features=TOPICS)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(nimare_neurosynth)
        t_theirs = time.perf_counter() - t0
        r_theirs = theirs.transform(img)
    assert sorted(r_theirs.index) == sorted(labels) == sorted(ours.features_)
    for label in labels:
        n = len(set(nimare_neurosynth.get_studies_by_label([label], 0.001))
                & set(theirs.inputs_["id"]))
        assert int(ours.model_.n_studies[ours.features_.index(label)]) == n, label
        a = ours.model_.get_map(label, return_type="array").astype(np.float64)
        b = np.asarray(theirs.results_.maps[label], dtype=np.float64)
        diff = float(np.max(np.abs(a - b)))
        r_diff = abs(float(r_ours.loc[label, "r"]) - float(r_theirs.loc[label, "r"]))
        print(f"{label} ({n} studies): map max abs diff {diff:.3g}, r {r_ours.loc[label, 'r']:.6f}"
              f" vs NiMARE {r_theirs.loc[label, 'r']:.6f} (diff {r_diff:.3g})")
        assert diff <= 1e-4, f"{label}: map max abs difference {diff:.3g}"
        assert r_diff <= 1e-3, f"{label}: r differs by {r_diff:.3g}"
    print(f"fit of 3 labels: daskmeta {t_ours:.1f} s, NiMARE {t_theirs:.1f} s")
