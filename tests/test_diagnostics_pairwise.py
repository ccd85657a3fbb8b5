"""Jackknife and FocusCounter on pairwise results (MKDAChi2, ALESubtraction): NiMARE
0.22.1's tables (the positive tail by group 1, the negative tail by group 2 with
display_second_group, a one-tailed target by its tail's group) on two halves of pain21,
from Datasets and from a Collection, and errors."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import NIMARE_MASK, assert_tables_match

from daskmeta.collection import Collection
from daskmeta.diagnostics import FocusCounter, Jackknife
from daskmeta.estimators import ALESubtraction, MKDAChi2
from daskmeta.exceptions import DaskmetaError
from daskmeta.kernels import MKDAKernel

logging.getLogger("nimare").setLevel(logging.ERROR)

MASK = str(NIMARE_MASK)
TARGET = "z_desc-association_corr-FWE_method-manual"
COUNTS = TARGET + "_diag-{}_tab-counts_tail-{}"
CLUST = f"{TARGET}_tab-clust"
LABEL = "label_desc-association_corr-FWE_method-manual_tail-{}"
#: The map each estimator's clusters are cut from, and its threshold.
SOURCE = {"MKDAChi2": ("z_desc-association", 2.0),
          "ALESubtraction": ("stat_desc-group1MinusGroup2", 0.01)}


def _target(result, name, tails="both"):
    source, thr = SOURCE[name]
    values = result.get_map(source, "array")
    keep = np.abs(values) > thr if tails == "both" else values < -thr
    return np.where(keep, values, 0).astype(np.float32)


@pytest.fixture(scope="module")
def fits(pain_halves, nimare_pain):
    """Ours and NiMARE's fits of each contrast, with the same thresholded target map."""
    from nimare.meta.cbma import ALESubtraction as NiSubtraction
    from nimare.meta.cbma import MKDAChi2 as NiChi2

    ids = list(nimare_pain.coordinates["id"].unique())
    assert ids[:9] == list(pain_halves[0].ids)
    theirs_halves = nimare_pain.slice(ids[:9]), nimare_pain.slice(ids[9:])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ours_est, theirs_est in (
                ("MKDAChi2", MKDAChi2(mask=MASK), NiChi2()),
                # NiMARE refits (with its permutations) once per experiment: few iterations.
                ("ALESubtraction", ALESubtraction(mask=MASK, n_iters=20, seed=1),
                 NiSubtraction(n_iters=5))):
            ours = ours_est.fit(*pain_halves)
            theirs = theirs_est.fit(*theirs_halves)
            out[name] = (ours, theirs)
    return out


def _with_target(ours, theirs, target):
    ours = ours.copy()
    ours.add_maps({TARGET: target})
    theirs = theirs.copy()
    theirs.maps[TARGET] = target
    return ours, theirs


def _assert_same(got, want, atol):
    names = {k for k, v in want.tables.items() if v is not None}
    assert set(got.tables) == names
    assert_tables_match(got, want, names, atol)
    labels = sorted(k for k in want.maps if k.startswith("label_"))
    assert labels == sorted(k for k in got.map_names if k.startswith("label_"))
    for name in labels:
        assert np.array_equal(got.get_map(name, "array"), np.asarray(want.maps[name]))


@pytest.mark.parametrize("name", ["MKDAChi2", "ALESubtraction"])
def test_both_tails_match_nimare(name, fits, pain_halves):
    nd = pytest.importorskip("nimare.diagnostics")
    ours, theirs = _with_target(*fits[name], _target(fits[name][0], name))
    for ours_cls, theirs_cls, atol in ((Jackknife, nd.Jackknife, 1e-6),
                                       (FocusCounter, nd.FocusCounter, 0)):
        diag = ours_cls.__name__
        got = ours_cls(target_image=TARGET, display_second_group=True).transform(ours)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = theirs_cls(target_image=TARGET, display_second_group=True).transform(
                theirs.copy())
        _assert_same(got, want, atol)
        pos, neg = (got.tables[COUNTS.format(diag, t)] for t in ("positive", "negative"))
        assert list(pos["id"]) == list(pain_halves[0].ids)
        assert list(neg["id"]) == list(pain_halves[1].ids)
        assert pos.columns[1].startswith("PositiveTail ")
        assert neg.columns[1].startswith("NegativeTail ")
        assert np.abs(pos.iloc[:, 1:].to_numpy(float)).sum() > 0
        # Without display_second_group: the positive tail only (both label maps kept).
        first = ours_cls(target_image=TARGET).transform(ours)
        assert set(first.tables) == {CLUST, COUNTS.format(diag, "positive")}
        pd.testing.assert_frame_equal(first.tables[COUNTS.format(diag, "positive")], pos)
        assert {LABEL.format("positive"), LABEL.format("negative")} <= set(first.map_names)


def test_negative_tail_only_is_the_second_groups(fits, pain_halves):
    """A target with only negative clusters is characterised by group 2's experiments,
    whatever display_second_group says (NiMARE's rule)."""
    nd = pytest.importorskip("nimare.diagnostics")
    name = "MKDAChi2"
    ours, theirs = _with_target(*fits[name], _target(fits[name][0], name, tails="negative"))
    for ours_cls, theirs_cls, atol in ((FocusCounter, nd.FocusCounter, 0),
                                       (Jackknife, nd.Jackknife, 1e-6)):
        got = ours_cls(target_image=TARGET).transform(ours)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = theirs_cls(target_image=TARGET).transform(theirs.copy())
        _assert_same(got, want, atol)
        table = got.tables[COUNTS.format(ours_cls.__name__, "negative")]
        assert list(table["id"]) == list(pain_halves[1].ids)


def test_chi2_jackknife_by_hand(fits, pain_halves):
    """A fold of MKDAChi2 is the contrast refitted without the experiment: its
    z_desc-association over a cluster, against the full fit's."""
    ours = fits["MKDAChi2"][0].copy()
    ours.add_maps({TARGET: _target(ours, "MKDAChi2")})
    got = Jackknife(target_image=TARGET, display_second_group=True).transform(ours)
    z = ours.get_map("z_desc-association", "array")
    for tail, group in (("positive", 0), ("negative", 1)):
        table = got.tables[COUNTS.format("Jackknife", tail)]
        labels = got.get_map(LABEL.format(tail), "array")
        for row in (0, len(table) - 1):
            left_out = table["id"].iloc[row]
            keep = pain_halves[group].slice([i for i in pain_halves[group].ids if i != left_out])
            pair = (keep, pain_halves[1]) if group == 0 else (pain_halves[0], keep)
            z_without = MKDAChi2(mask=MASK).fit(*pair).get_map("z_desc-association", "array")
            with np.errstate(divide="ignore", invalid="ignore"):
                prop = np.nan_to_num(z_without / z)
            for col in table.columns[1:]:
                inside = labels == int(col.split()[1])
                want = float(np.mean(1 - prop[inside]))
                assert abs(table[col].iloc[row] - want) <= 1e-6, (tail, row, col)


def test_from_a_collection_equals_from_the_datasets(fits, pain_halves, tmp_path):
    """MKDAChi2 of a selection against the rest of a store: the same tables as from the two
    Datasets (the groups' rows read from the store)."""
    merged = pain_halves[0].merge(pain_halves[1])
    store = Collection.build(merged, MKDAKernel(), tmp_path / "mkda.zarr", mask=MASK)
    from_store = MKDAChi2(chunk_size=4).fit(store, select=list(pain_halves[0].ids))
    from_datasets = fits["MKDAChi2"][0]
    target = _target(from_datasets, "MKDAChi2")
    np.testing.assert_array_equal(_target(from_store, "MKDAChi2"), target)
    a, b = from_store.copy(), from_datasets.copy()
    a.add_maps({TARGET: target})
    b.add_maps({TARGET: target})
    for cls in (Jackknife, FocusCounter):
        diag = cls(target_image=TARGET, display_second_group=True)
        x, y = diag.transform(a), diag.transform(b)
        for tail in ("positive", "negative"):
            name = COUNTS.format(cls.__name__, tail)
            pd.testing.assert_frame_equal(x.tables[name], y.tables[name], atol=1e-12, rtol=0)


def test_pairwise_errors(pain_halves, fits):
    ours = fits["MKDAChi2"][0].copy()
    ours.add_maps({TARGET: _target(ours, "MKDAChi2")})
    with pytest.raises(DaskmetaError, match="display_second_group must be True or False"):
        Jackknife(target_image=TARGET, display_second_group="yes").transform(ours)
    lone = MKDAChi2(mask=MASK).fit(pain_halves[0].slice(list(pain_halves[0].ids)[:1]), pain_halves[1])
    z = lone.get_map("z_desc-association", "array")
    lone.add_maps({TARGET: np.where(z > 0, z, 0).astype(np.float32)})
    with pytest.raises(DaskmetaError, match="Jackknife needs at least 2 experiments in "
                                            "group 1 to leave one out; this MKDAChi2 "
                                            "result has 1"):
        Jackknife(target_image=TARGET).transform(lone)
    counts = FocusCounter(target_image=TARGET).transform(lone)  # counting needs no fold
    table = counts.tables[COUNTS.format("FocusCounter", "positive")]
    assert list(table["id"]) == list(pain_halves[0].ids)[:1]
    assert table.iloc[0, 1:].sum() > 0
    no_prob = ours.copy()
    no_prob.maps = no_prob.maps.drop_vars("prob_desc-AgU")
    with pytest.raises(DaskmetaError, match="Jackknife needs the result's 'prob_desc-AgU' "
                                            "map; available: "):
        Jackknife(target_image=TARGET).transform(no_prob)
