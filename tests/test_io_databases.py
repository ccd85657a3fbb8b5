"""Whole-database readers: Neurosynth v7 and NeuroQuery v1, checked against NiMARE on subsets."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import daskmeta
from daskmeta.exceptions import DaskmetaError
from daskmeta.io import read, read_neuroquery, read_neurosynth

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NS = DATA / "neurosynth-v7"
NQ = DATA / "neuroquery-v1"
NS_PREFIX = "data-neurosynth_version-7_"
NQ_PREFIX = "data-neuroquery_version-1_"
PAIN = "LDA50__32_pain_somatosensory_stimulation"


@pytest.fixture(scope="module")
def neurosynth():
    t0 = time.perf_counter()
    ds = read_neurosynth(NS)
    print(f"\nread_neurosynth: {time.perf_counter() - t0:.2f} s ({ds})")
    return ds


@pytest.fixture(scope="module")
def neuroquery():
    t0 = time.perf_counter()
    ds = read_neuroquery(NQ)
    print(f"\nread_neuroquery: {time.perf_counter() - t0:.2f} s ({ds})")
    return ds


def test_neurosynth_counts(neurosynth):
    ds = neurosynth
    assert ds.n_experiments == 14371
    assert ds.n_foci == 507891
    assert len(ds.label_names) == 50
    assert sparse.issparse(ds.labels)
    assert ds.labels.shape == (14371, 50)
    assert ds.ids[0] == "9065511-1"
    assert ds.experiments["study_id"].iloc[0] == "9065511"
    assert ds.experiments["space"].value_counts().to_dict() == {
        "MNI": 10204, "TAL": 2335, "UNKNOWN": 1832,
    }
    assert np.isnan(ds.experiments["sample_size"]).all()
    assert {"title", "authors", "year", "journal", "doi"} <= set(ds.metadata.columns)


def test_neurosynth_pain_topic(neurosynth):
    assert PAIN in neurosynth.label_names
    assert len(neurosynth.get_studies_by_label(PAIN, label_threshold=0.05)) == 865


def test_neurosynth_talairach_converted_unknown_kept(neurosynth):
    meta = pd.read_csv(NS / f"{NS_PREFIX}metadata.tsv.gz", sep="\t", dtype={"id": str})
    coords = pd.read_csv(NS / f"{NS_PREFIX}coordinates.tsv.gz", sep="\t", dtype={"id": str})
    foci = neurosynth.foci
    for space in ("TAL", "UNKNOWN", "MNI"):
        pmid = meta.loc[meta["space"] == space, "id"].iloc[0]
        raw = coords.loc[coords["id"] == pmid, ["x", "y", "z"]].to_numpy()[0]
        ours = foci.loc[foci["id"] == f"{pmid}-1", ["x", "y", "z"]].to_numpy()[0]
        expected = daskmeta.tal2mni(raw)[0] if space == "TAL" else raw
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    # Every focus of a TAL study is converted; MNI and UNKNOWN foci are kept as they are.
    raw = coords.set_index("id").loc[meta["id"]]
    xyz = raw[["x", "y", "z"]].to_numpy()
    is_tal = raw.index.map(meta.set_index("id")["space"]).to_numpy() == "TAL"
    expected = np.where(is_tal[:, None], daskmeta.tal2mni(xyz), xyz)
    assert is_tal.sum() > 50000
    np.testing.assert_allclose(foci[["x", "y", "z"]].to_numpy(), expected, rtol=0, atol=1e-9)
    assert (foci["id"].to_numpy() == (raw.index + "-1").to_numpy()).all()


def test_neuroquery_counts(neuroquery):
    ds = neuroquery
    assert ds.n_experiments == 13459
    assert ds.n_foci == 469260
    assert len(ds.label_names) == 7547
    assert sparse.issparse(ds.labels)
    assert ds.labels.shape == (13459, 7547)
    assert set(ds.experiments["space"]) == {"MNI"}
    assert ds.label_names[0].startswith("neuroquery7547__")
    assert "neuroquery7547__pain" in ds.label_names
    assert len(ds.get_studies_by_label("neuroquery7547__pain", 1)) > 500


def test_neuroquery_other_sources_and_no_labels():
    title = read_neuroquery(NQ, source="title", label_prefix="nimare")
    assert title.label_names[0].startswith("neuroquery7547_title_count__")
    bare = read_neuroquery(NQ, vocab=None)
    assert bare.labels.shape == (13459, 0)
    assert bare.n_foci == 469260


def test_label_prefix_option():
    ds = read_neurosynth(NS, label_prefix="nimare")
    assert ds.label_names[32] == "LDA50_abstract_weight__32_pain_somatosensory_stimulation"
    assert len(ds.get_studies_by_label(ds.label_names[32], 0.05)) == 865
    custom = read_neurosynth(NS, label_prefix="topic:")
    assert custom.label_names[32] == "topic:32_pain_somatosensory_stimulation"


def test_registry_reads_database_directories(neurosynth):
    ds = read(NS, vocab=None)
    assert ds.ids == neurosynth.ids
    assert read(NQ, vocab=None).n_experiments == 13459


def _subset(tmp_path, src, prefix, features, vocabulary, n=150):
    meta = pd.read_csv(src / f"{prefix}metadata.tsv.gz", sep="\t", dtype=str,
                       keep_default_na=False)
    coords = pd.read_csv(src / f"{prefix}coordinates.tsv.gz", sep="\t", dtype={"id": str})
    meta = meta.iloc[:n]
    coords = coords[coords["id"].isin(meta["id"])]
    meta.to_csv(tmp_path / f"{prefix}metadata.tsv.gz", sep="\t", index=False)
    coords.to_csv(tmp_path / f"{prefix}coordinates.tsv.gz", sep="\t", index=False)
    sparse.save_npz(tmp_path / features, sparse.load_npz(src / features).tocsr()[:n])
    shutil.copy(src / vocabulary, tmp_path / vocabulary)
    return tmp_path


@pytest.mark.parametrize(
    "db, src, prefix, features, vocabulary, reader",
    [
        ("neurosynth", NS, NS_PREFIX,
         f"{NS_PREFIX}vocab-LDA50_source-abstract_type-weight_features.npz",
         f"{NS_PREFIX}vocab-LDA50_vocabulary.txt", read_neurosynth),
        ("neuroquery", NQ, NQ_PREFIX,
         f"{NQ_PREFIX}vocab-neuroquery7547_source-abstract_type-count_features.npz",
         f"{NQ_PREFIX}vocab-neuroquery7547_vocabulary.txt", read_neuroquery),
    ],
    ids=["neurosynth", "neuroquery"],
)
def test_ids_labels_and_coordinates_match_nimare(tmp_path, db, src, prefix, features,
                                                 vocabulary, reader):
    from nimare.io import convert_neurosynth_to_dataset

    sub = _subset(tmp_path, src, prefix, features, vocabulary)
    ds = reader(sub, label_prefix="nimare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nds = convert_neurosynth_to_dataset(
            str(sub / f"{prefix}coordinates.tsv.gz"),
            str(sub / f"{prefix}metadata.tsv.gz"),
            annotations_files={"features": str(sub / features),
                               "vocabulary": str(sub / vocabulary)},
        )
    # NiMARE sorts its ids; daskmeta keeps the metadata (and feature-row) order.
    assert sorted(ds.ids) == sorted(nds.ids)
    label_cols = [c for c in nds.annotations.columns if "__" in c]
    assert ds.label_names == label_cols
    np.testing.assert_allclose(
        ds.labels.toarray(), nds.annotations.set_index("id").loc[ds.ids, label_cols].to_numpy()
    )
    cols = ["id", "x", "y", "z"]
    ours = ds.foci[cols].sort_values(cols).reset_index(drop=True)
    theirs = nds.coordinates[cols].astype({"x": float, "y": float, "z": float})
    theirs = theirs.sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False, atol=1e-9)


def test_missing_files_error(tmp_path):
    shutil.copy(NS / f"{NS_PREFIX}metadata.tsv.gz", tmp_path)
    with pytest.raises(
        DaskmetaError,
        match=r"cannot read the neurosynth database from .*: expected "
        r"data-neurosynth_version-7_coordinates\.tsv\.gz, "
        r"data-neurosynth_version-7_metadata\.tsv\.gz, "
        r"data-neurosynth_version-7_vocab-LDA50_source-abstract_type-\*_features\.npz, "
        r"data-neurosynth_version-7_vocab-LDA50_vocabulary\.txt; "
        r"it holds data-neurosynth_version-7_metadata\.tsv\.gz",
    ):
        read_neurosynth(tmp_path)
    with pytest.raises(DaskmetaError, match=r"neuroquery database .* it holds no "
                                            r"data-neuroquery_\* files"):
        read_neuroquery(tmp_path)
    with pytest.raises(DaskmetaError, match=r"does not exist or is not a directory"):
        read_neurosynth(tmp_path / "nowhere")


def test_unavailable_vocabulary_lists_the_ones_present():
    with pytest.raises(DaskmetaError, match=r"vocab-terms_source-abstract_type-\*_features"
                                            r".*Vocabularies with features here: LDA50 "
                                            r"\(source abstract\)"):
        read_neurosynth(NS, vocab="terms")


def test_feature_matrix_shape_mismatch(tmp_path):
    features = f"{NS_PREFIX}vocab-LDA50_source-abstract_type-weight_features.npz"
    vocabulary = f"{NS_PREFIX}vocab-LDA50_vocabulary.txt"
    sub = _subset(tmp_path, NS, NS_PREFIX, features, vocabulary, n=20)
    sparse.save_npz(sub / features, sparse.random(21, 50, format="csr"))
    with pytest.raises(daskmeta.ParseError, match=r"feature matrix is 21 x 50; expected 20 "
                                                  r"studies"):
        read_neurosynth(sub)
