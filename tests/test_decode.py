"""Decoders against NiMARE 0.22.1 on a Neurosynth selection (same mask), the decoder model
store, label handling and bad input."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, NIMARE_MASK, TESTDATA
from scipy import sparse

from daskmeta import Collection
from daskmeta.decode import (
    BrainMapDecoder,
    CorrelationDecoder,
    CorrelationDistributionDecoder,
    DecoderModel,
    NeurosynthDecoder,
    ROIAssociationDecoder,
    tfidf,
)
from daskmeta.estimators import ALE, KDA, ALESubtraction, MKDADensity
from daskmeta.exceptions import DaskmetaError
from daskmeta.io import read_neurosynth
from daskmeta.kernels import MKDAKernel

NS = DATA / "neurosynth-v7"
PREFIX = "data-neurosynth_version-7_"
FEATURES = f"{PREFIX}vocab-LDA50_source-abstract_type-weight_features.npz"
VOCAB = f"{PREFIX}vocab-LDA50_vocabulary.txt"
ROI = TESTDATA / "amygdala_roi.nii.gz"
TOPICS = ["32_pain_somatosensory_stimulation", "17_motor_cortex_hand", "40_face_faces_facial"]
NIMARE_GROUP = "LDA50_abstract_weight"
#: Studies of the Neurosynth selection (its first ones, in metadata order).
N_STUDIES = 600


def write_neurosynth_subset(folder: Path, n: int) -> Path:
    """The first ``n`` studies of Neurosynth v7 in the release's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = pd.read_csv(NS / f"{PREFIX}metadata.tsv.gz", sep="\t", dtype=str,
                       keep_default_na=False).iloc[:n]
    coords = pd.read_csv(NS / f"{PREFIX}coordinates.tsv.gz", sep="\t", dtype={"id": str})
    coords = coords[coords["id"].isin(meta["id"])]
    meta.to_csv(folder / f"{PREFIX}metadata.tsv.gz", sep="\t", index=False)
    coords.to_csv(folder / f"{PREFIX}coordinates.tsv.gz", sep="\t", index=False)
    sparse.save_npz(folder / FEATURES, sparse.load_npz(NS / FEATURES).tocsr()[:n])
    shutil.copy(NS / VOCAB, folder / VOCAB)
    return folder


@pytest.fixture(scope="module")
def ns_subset(tmp_path_factory):
    """(folder, Dataset, MKDA Collection on NiMARE's mask) of the Neurosynth selection."""
    root = tmp_path_factory.mktemp("ns-subset")
    folder = write_neurosynth_subset(root / "neurosynth", N_STUDIES)
    ds = read_neurosynth(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # foci far outside the mask are dropped
        coll = Collection.build(ds, MKDAKernel(r=10), root / "ns-mkda.zarr",
                                mask=str(NIMARE_MASK))
    return folder, ds, coll


@pytest.fixture(scope="module")
def nimare_subset(ns_subset):
    from nimare.io import convert_neurosynth_to_dataset

    folder = ns_subset[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nds = convert_neurosynth_to_dataset(
            str(folder / f"{PREFIX}coordinates.tsv.gz"), str(folder / f"{PREFIX}metadata.tsv.gz"),
            annotations_files={"features": str(folder / FEATURES),
                               "vocabulary": str(folder / VOCAB)})
        nds.masker = str(NIMARE_MASK)
    return nds


@pytest.fixture(scope="module")
def fitted(ns_subset, tmp_path_factory):
    coll = ns_subset[2]
    store = tmp_path_factory.mktemp("model") / "topics.zarr"
    return CorrelationDecoder(labels=TOPICS).fit(coll, store=store)


def _ours(name: str) -> str:
    return name.replace(f"{NIMARE_GROUP}__", "LDA50__")


def _test_image(space, seed=0):
    rng = np.random.default_rng(seed)
    ijk = space.voxel_ijk.astype(float)
    blob = np.exp(-((ijk - ijk.mean(axis=0) - [12, -8, 4]) ** 2).sum(axis=1) / 60.0)
    return space.to_img((blob + 0.1 * rng.normal(size=space.n_voxels)).astype(np.float32))


def test_correlation_decoder_equals_nimare_on_three_topics(fitted, ns_subset, nimare_subset):
    from nimare.decode.continuous import CorrelationDecoder as NiMARECorrelationDecoder

    img = _test_image(ns_subset[2].space)
    theirs = NiMARECorrelationDecoder(feature_group=NIMARE_GROUP, features=TOPICS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(nimare_subset)
        r_theirs = theirs.transform(img)
    r_ours = fitted.transform(img)
    assert list(r_ours.columns) == ["r"] and r_ours.index.name == "feature"
    assert len(r_theirs) == 3
    for name, row in r_theirs.iterrows():
        ours_map = fitted.model_.get_map(_ours(name), return_type="array")
        diff = np.abs(ours_map - theirs.results_.maps[name]).max()
        print(f"{name}: map max abs diff {diff:.3g}, r {row['r']:.6f} vs "
              f"{r_ours.loc[_ours(name), 'r']:.6f}")
        assert diff <= 1e-4
        assert abs(r_ours.loc[_ours(name), "r"] - row["r"]) <= 1e-3


@pytest.mark.parametrize("ours_cls, name", [(NeurosynthDecoder, "NeurosynthDecoder"),
                                            (BrainMapDecoder, "BrainMapDecoder")])
def test_selection_decoders_equal_nimare_on_the_amygdala(ns_subset, nimare_subset, ours_cls,
                                                         name):
    import nimare.decode.discrete as nimare_discrete

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = nimare_subset.get_studies_by_mask(str(ROI))
        theirs_dec = getattr(nimare_discrete, name)(feature_group=NIMARE_GROUP)
        theirs_dec.fit(nimare_subset)
        theirs = theirs_dec.transform(ids)
    assert sorted(ids) == sorted(ns_subset[1].get_studies_by_mask(ROI, ns_subset[2].space))
    ours = ours_cls().fit(ns_subset[2]).transform(ids)
    theirs.index = [_ours(i) for i in theirs.index]
    assert list(ours.columns) == list(theirs.columns) and ours.index.name == "Term"
    assert len(ours) == len(theirs) == 50
    diff = (ours.loc[theirs.index] - theirs).abs().max()
    print(name, diff.to_dict())
    assert (diff <= 1e-6).all()


def test_roi_association_equals_nimare_on_the_amygdala(ns_subset, nimare_subset):
    from nimare.decode.discrete import ROIAssociationDecoder as NiMAREROI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_dec = NiMAREROI(str(ROI), feature_group=NIMARE_GROUP)
        theirs_dec.fit(nimare_subset)
        theirs = theirs_dec.transform()
    ours = ROIAssociationDecoder(str(ROI)).fit(ns_subset[2]).transform()
    theirs.index = [_ours(i) for i in theirs.index]
    assert list(ours.columns) == ["r"] and len(ours) == len(theirs) == 50
    diff = float((ours.loc[theirs.index, "r"] - theirs["r"]).abs().max())
    print("ROIAssociationDecoder max abs diff", diff)
    assert diff <= 1e-6


def test_model_store_opens_lazily_and_with_xarray(fitted):
    import xarray as xr

    model = DecoderModel.open(fitted.model_.path)
    assert model.labels == [f"LDA50__{t}" for t in TOPICS]
    assert model.attrs["target_image"] == "z_desc-association"
    assert model.space == fitted.model_.space
    ds = xr.open_zarr(model.path, consolidated=False)
    assert ds["maps"].dims == ("label", "voxel") and ds["maps"].dtype == np.float32
    assert list(ds["label"].values) == model.labels
    assert np.array_equal(ds["maps"].sel(label=model.labels[1]).values,
                          model.get_map(model.labels[1], return_type="array"))
    assert (ds["n_studies"].values > 0).all()
    # Every map's stored moments are its own.
    maps = ds["maps"].values.astype(np.float64)
    assert np.allclose(ds["map_mean"].values, maps.mean(axis=1))
    assert np.allclose(ds["map_norm"].values,
                       np.linalg.norm(maps - maps.mean(axis=1, keepdims=True), axis=1))


def test_transform_many_images_4d_and_other_grids(fitted, tmp_path):
    from nilearn.image import resample_img

    space = fitted.model_.space
    imgs = [_test_image(space, seed) for seed in range(3)]
    one_by_one = [fitted.transform(img)["r"].to_numpy() for img in imgs]
    together = fitted.transform(imgs)
    assert list(together.columns) == ["r_0", "r_1", "r_2"]
    four_d = nib.concat_images(imgs)
    path = tmp_path / "four_d.nii.gz"
    four_d.to_filename(path)
    from_file = fitted.model_.transform(str(path))
    for i in range(3):
        assert np.allclose(together[f"r_{i}"], one_by_one[i], atol=1e-6)
        assert np.allclose(from_file[f"r_{i}"], one_by_one[i], atol=1e-6)
    # Against a direct Pearson r in float64.
    x = space.from_img(imgs[0]).astype(np.float64)
    for label in fitted.model_.labels:
        y = fitted.model_.get_map(label, return_type="array").astype(np.float64)
        assert abs(np.corrcoef(x, y)[0, 1] - together.loc[label, "r_0"]) < 1e-5
    # A 3 mm image is resampled to the model's mask.
    coarse = resample_img(imgs[0], target_affine=np.diag([3.0, 3.0, 3.0]),
                          interpolation="continuous", force_resample=True, copy_header=True)
    r = fitted.transform(coarse)["r"]
    assert np.all(np.abs(r - one_by_one[0]) < 0.1)


def test_fit_from_a_dataset_equals_fit_from_its_collection(ns_subset, tmp_path):
    ds = ns_subset[1].slice(ns_subset[1].ids[:80])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll = Collection.build(ds, MKDAKernel(r=10), tmp_path / "small.zarr")
        from_dataset = CorrelationDecoder(labels="LDA50", min_studies=40).fit(ds)
    from_store = CorrelationDecoder(labels="LDA50", min_studies=40).fit(coll)
    assert from_dataset.features_ == from_store.features_
    assert 0 < len(from_store.features_) < 50
    a = from_dataset.model_.to_xarray()["maps"].values
    b = from_store.model_.to_xarray()["maps"].values
    assert np.array_equal(a, b)
    assert (from_store.model_.n_studies >= 40).all()


@pytest.mark.parametrize("name, ours_est, theirs_kw, target, source", [
    ("MKDADensity", MKDADensity(), {}, "z", "collection"),
    # (a margin keeping every focus: NiMARE keeps the far ones, whose kernels reach inside;
    # z: the null convolves the experiments in NiMARE's order, not the Neurosynth order)
    ("ALE", ALE(kernel__fwhm=10, mask=str(NIMARE_MASK), mask_margin=100),
     {"kernel__fwhm": 10}, "z", "dataset"),
    ("KDA", KDA(mask=str(NIMARE_MASK)), {}, "p", "dataset"),
])
def test_correlation_decoder_with_a_cbma_estimator_equals_nimare(
        ns_subset, nimare_subset, name, ours_est, theirs_kw, target, source):
    """Each label's map is the estimator's fit on the label's studies (fit_many's passes),
    from a collection's store or from a Dataset's foci."""
    import nimare.meta.cbma as nimare_cbma
    from nimare.decode.continuous import CorrelationDecoder as NiMARECorrelationDecoder

    data = ns_subset[2] if source == "collection" else ns_subset[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a Dataset's foci far outside the mask are dropped
        ours = CorrelationDecoder(labels=TOPICS, frequency_threshold=0.05,
                                  meta_estimator=ours_est, target_image=target).fit(data)
    attrs = ours.model_.attrs
    assert (attrs["meta_estimator"], attrs["target_image"]) == (name, target)
    assert attrs["meta_estimator_params"]["kernel__r" if name != "ALE" else "kernel__fwhm"] == 10
    assert ours_est.__dict__.get("kernel_") is None  # the user's estimator is not fitted
    theirs = NiMARECorrelationDecoder(feature_group=NIMARE_GROUP, features=TOPICS,
                                      frequency_threshold=0.05,
                                      meta_estimator=getattr(nimare_cbma, name)(**theirs_kw),
                                      target_image=target)
    img = _test_image(ns_subset[2].space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(nimare_subset)
        r_theirs = theirs.transform(img)
    r_ours = ours.transform(img)
    assert len(r_theirs) == 3
    for label, row in r_theirs.iterrows():
        n = len(set(nimare_subset.get_studies_by_label([label], 0.05))
                & set(theirs.inputs_["id"]))
        assert ours.model_.n_studies[ours.features_.index(_ours(label))] == n
        a = ours.model_.get_map(_ours(label), return_type="array").astype(np.float64)
        b = np.asarray(theirs.results_.maps[label], dtype=np.float64)
        tol = 1e-6 * max(1.0, float(np.abs(b).max()))  # float32 maps in the model
        diff = float(np.abs(a - b).max())
        assert diff <= tol, f"{name} {label}: map max abs difference {diff:.3g}"
        assert abs(r_ours.loc[_ours(label), "r"] - row["r"]) <= 1e-6


def test_save_and_store_refuse_to_overwrite(fitted, tmp_path, ns_subset):
    saved = fitted.save(tmp_path / "copy.zarr")
    assert saved.labels == fitted.model_.labels
    with pytest.raises(DaskmetaError, match="exists; pass overwrite=True"):
        fitted.save(tmp_path / "copy.zarr")
    other = tmp_path / "not-a-model"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(DaskmetaError, match="not a daskmeta decoder model"):
        fitted.save(other, overwrite=True)
    assert (other / "precious.txt").exists()
    with pytest.raises(DaskmetaError, match="exists; pass overwrite=True"):
        CorrelationDecoder(labels=TOPICS[:1]).fit(ns_subset[2], store=tmp_path / "copy.zarr")
    with pytest.raises(DaskmetaError, match="is not a daskmeta decoder model"):
        DecoderModel.open(other)


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": "LDA400"}, r"labels='LDA400' is neither a vocabulary \(LDA50\)"),
    ({"labels": ["no_such_topic"]}, r"label 'no_such_topic' is not a label of the data"),
    ({"labels": 3}, r"labels must be None, a vocabulary name or a list"),
    ({"frequency_threshold": 0}, r"frequency_threshold must be a number > 0"),
    ({"min_studies": 0}, r"min_studies must be an integer >= 1"),
    ({"min_studies": 10**6}, r"no label is left to decode"),
    ({"target_image": "stat"}, r"target_image 'stat' is not a map of MKDAChi2; allowed: "
                               r"z_desc-uniformity, z_desc-association, "),
    ({"target_image": 3}, r"target_image must be a map name"),
    ({"meta_estimator": object()}, r"meta_estimator must be one of MKDAChi2, ALE, "
                                   r"MKDADensity, KDA \(an instance\); got object"),
    ({"meta_estimator": ALE}, r"meta_estimator must be one of .*; got ALE"),
    ({"meta_estimator": ALESubtraction()}, r"meta_estimator must be one of .*; got "
                                           r"ALESubtraction"),
    ({"meta_estimator": MKDADensity()}, r"target_image 'z_desc-association' is not a map of "
                                        r"MKDADensity; allowed: stat, p, z, logp$"),
    ({"meta_estimator": MKDADensity(), "target_image": "z", "fwe_iters": 10},
     r"fwe_iters needs meta_estimator MKDAChi2, target_image 'z_desc-association'"),
    ({"meta_estimator": KDA(), "target_image": "z"}, r"holds MA maps of MKDAKernel.*KDA needs "
                                                     r"KDAKernel maps"),
])
def test_bad_decoder_parameters(ns_subset, kwargs, match):
    with pytest.raises(DaskmetaError, match=match):
        CorrelationDecoder(**kwargs).fit(ns_subset[2])


def test_bad_images_are_refused(fitted, tmp_path):
    space = fitted.model_.space
    flat = space.to_img(np.ones(space.n_voxels, dtype=np.float32))
    with pytest.raises(DaskmetaError, match="constant inside the mask"):
        fitted.transform(flat)
    values = np.random.default_rng(0).normal(size=space.n_voxels).astype(np.float32)
    values[5] = np.nan
    with pytest.raises(DaskmetaError, match="1 non-finite values inside the mask"):
        fitted.transform(space.to_img(values))
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(DaskmetaError, match="cannot read .*junk.nii.gz"):
        fitted.transform(str(junk))
    with pytest.raises(DaskmetaError, match="must be a 3-D or 4-D image"):
        fitted.transform(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)))


def test_selection_decoders_refuse_unknown_ids(ns_subset):
    dec = NeurosynthDecoder().fit(ns_subset[2])
    with pytest.raises(DaskmetaError, match=r"ids: 1 ids are not studies with foci"):
        dec.transform(["not-a-study"])
    with pytest.raises(DaskmetaError, match="ids must be a list of study ids"):
        dec.transform("12345")


def test_correlation_distribution_decoder_from_ma_maps(ns_subset):
    coll = ns_subset[2]
    dec = CorrelationDistributionDecoder(labels=TOPICS[:2], frequency_threshold=0.1).fit(coll)
    img = _test_image(coll.space)
    out = dec.transform(img)
    assert list(out.columns) == ["mean", "std"]
    # By hand for the first label: Fisher z of r with each of its studies' MA maps.
    ds = coll.dataset
    held = ds.label_mask(f"LDA50__{TOPICS[0]}", 0.1)
    from daskmeta._pass import has_foci

    ids = [i for i, h, f in zip(ds.ids, held, has_foci(ds)) if h and f]
    maps = coll.rows(ids).compute().astype(np.float64)
    x = coll.space.from_img(img).astype(np.float64)
    z = np.arctanh([np.corrcoef(x, m)[0, 1] for m in maps])
    assert np.isclose(out.iloc[0]["mean"], z.mean()) and np.isclose(out.iloc[0]["std"], z.std())


def test_tfidf_by_hand():
    counts = sparse.csr_matrix(np.array([[3, 0, 1], [0, 0, 2], [1, 1, 0]], dtype=float))
    out = tfidf(counts).toarray()
    idf = np.log(4 / np.array([3, 2, 3])) + 1
    raw = counts.toarray() * idf
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(out, expected)
    with pytest.raises(DaskmetaError, match="non-negative counts"):
        tfidf(-counts)


def test_user_label_matrix(ns_subset):
    coll = ns_subset[2]
    n = coll.n_experiments
    rng = np.random.default_rng(1)
    matrix = sparse.csr_matrix((rng.random((n, 2)) < 0.3).astype(float))
    dec = CorrelationDecoder().fit(coll, label_matrix=matrix, label_names=["mine__a", "mine__b"])
    assert dec.features_ == ["mine__a", "mine__b"]
    with pytest.raises(DaskmetaError, match="label_names has 1 names for the 2 columns"):
        CorrelationDecoder().fit(coll, label_matrix=matrix, label_names=["x"])
