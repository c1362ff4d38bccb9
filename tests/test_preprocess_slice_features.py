"""N4 bias correction and the cached slice-feature pipeline of paper 002 on tiny seeded data."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from kneelib.data.dicom import Volume
from kneelib.preprocess.bias_field import BiasFieldInputError, coefficient_of_variation, n4_bias_correct
from kneelib.preprocess.slice_features import (SliceFeatureConfig, SliceInputError, central_window, label_slices,
                                               prepare_slices, series_slices)


def _biased_phantom(seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:16, 0:48, 0:48].astype(float)
    inside = ((y - 24) ** 2 + (x - 24) ** 2) < 20 ** 2
    truth = np.where(inside, 100.0, 5.0) + rng.normal(0, 1.0, inside.shape)
    bias = np.exp(0.4 * (x - 24) / 24)  # smooth multiplicative field
    return (truth * bias).astype(np.float32), inside


def test_n4_flattens_a_smooth_bias_field():
    volume, inside = _biased_phantom()
    result = n4_bias_correct(volume, shrink=2, iterations=(30, 30))
    assert result.corrected.shape == volume.shape and np.all(result.bias > 0)
    before = coefficient_of_variation(volume, inside)
    after = coefficient_of_variation(result.corrected, inside)
    assert after < 0.6 * before


@pytest.mark.parametrize("bad, message", [(np.zeros((4, 4)), "3-D"), (np.full((8, 8, 8), np.nan), "non-finite"),
                                          (-np.ones((8, 8, 8)), "negative"), (np.zeros((8, 8, 8)), "foreground")])
def test_n4_typed_errors(bad, message):
    with pytest.raises(BiasFieldInputError, match=message):
        n4_bias_correct(bad, shrink=1, iterations=(2,))


def test_cv_errors():
    with pytest.raises(BiasFieldInputError):
        coefficient_of_variation(np.ones((3, 3)), np.zeros((3, 3), bool))
    with pytest.raises(BiasFieldInputError):
        coefficient_of_variation(np.ones((3, 3)), np.ones((2, 2), bool))


def test_central_window():
    np.testing.assert_array_equal(central_window(35, 8), np.arange(13, 21))
    np.testing.assert_array_equal(central_window(5, 8), np.arange(5))
    np.testing.assert_array_equal(central_window(5, None), np.arange(5))
    with pytest.raises(SliceInputError):
        central_window(0, 4)


def test_config_rejects_bad_values():
    with pytest.raises(SliceInputError, match="unknown series"):
        SliceFeatureConfig(series="AX_T1")
    with pytest.raises(SliceInputError):
        SliceFeatureConfig(n_slices=0)
    with pytest.raises(SliceInputError):
        SliceFeatureConfig(image_size=8)
    with pytest.raises(SliceInputError):
        SliceFeatureConfig().description("X")


def _coronal_volume(side: str, marker_x: int):
    """A 20 x 10 x 24 (x, y, z) RAS volume with a bright column at x = marker_x and z >= 12."""
    array = np.full((20, 10, 24), 10, np.uint16)
    array[marker_x, :, 12:] = 1000
    affine = np.diag([1.0, 3.0, 1.0, 1.0])
    return Volume(array=array, affine=affine, laterality=side, series_description=f"COR_IW_TSE_{side}")


def test_series_slices_orientation_and_mirroring():
    right, _ = series_slices(_coronal_volume("R", 15), "COR_IW_TSE")
    left, spacing = series_slices(_coronal_volume("L", 4), "COR_IW_TSE")
    assert right.shape == (10, 24, 20) and spacing == (3.0, 1.0, 1.0)
    # superior (high z) first: the marker is in the top half of the rows
    assert right[0, :12, 15].mean() > 500 and right[0, 12:, 15].mean() < 50
    # a left knee at x=4 mirrored lands where the right knee's x=15 is
    np.testing.assert_array_equal(right, left)


def test_prepare_slices_and_labels_share_a_grid():
    volume = _coronal_volume("R", 15)
    config = SliceFeatureConfig(n_slices=4, image_size=32, n4_shrink=0)
    images, indices = prepare_slices(volume, config)
    assert images.shape == (4, 32, 32) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(indices, [3, 4, 5, 6])
    labels = np.transpose((volume.array > 500).astype(np.uint8), (2, 1, 0))  # (slices, rows, cols) DICOM order
    on_slices = label_slices(labels, volume, config)
    assert on_slices.shape == images.shape
    # the bright column (one pixel wide, blurred by the resize) lies under its label
    assert images[on_slices > 0].mean() > 4 * images[on_slices == 0].mean()
    assert on_slices[0, :12].sum() > 0 and on_slices[0, 20:].sum() == 0
    with pytest.raises(SliceInputError):
        label_slices(labels[:, :, :5], volume, config)


def test_exclusion_reason_names_the_error_without_local_paths(tmp_path):
    from kneelib.preprocess.slice_features import exclusion_reason

    root = tmp_path / "cohort"
    error = ValueError(f"uneven slice spacing in {root}/0.C.2/9000011/20050420/00011002: gap of 12 mm; more detail")
    reason = exclusion_reason(error, root)
    assert reason == "ValueError: uneven slice spacing in 0.C.2/9000011/20050420/00011002: gap of 12 mm"
    assert str(tmp_path) not in reason


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    """The COR IW TSE series of three participants of the smoke cohort, one with its middle slice deleted.

    Knees: six with a series (one unreadable: uneven slice spacing) and one participant without any.
    """
    import shutil

    from kneelib.synth.cohort import generate_cohort

    source = generate_cohort(preset="smoke", seed=3, n_subjects=24, progress=False)  # shared with the smoke chapter
    contents = pd.read_csv(source / "contents.csv", dtype=str, keep_default_na=False)
    participants = sorted(contents["ParticipantID"].unique())[:3]
    rows = contents[contents["ParticipantID"].isin(participants) & contents["SeriesDescription"].str.startswith("COR_IW_TSE")
                    & contents["Folder"].str.startswith("0.")]
    root = tmp_path_factory.mktemp("tiny_cohort")
    for folder in rows["Folder"]:
        shutil.copytree(source / folder, root / folder)
    rows.to_csv(root / "contents.csv", index=False, quoting=1)
    damaged = sorted((root / rows["Folder"].iloc[1]).iterdir())
    damaged[len(damaged) // 2].unlink()
    knees = pd.DataFrame({"participant_id": [p for p in participants for _ in "RL"] + ["9999999"],
                          "side": ["R", "L"] * len(participants) + ["R"]})
    return root, knees


_TINY = SliceFeatureConfig(n_slices=4, image_size=32)


def _entries(cache_dir):
    return sorted(p.relative_to(cache_dir) for p in cache_dir.rglob("*.npz"))


def test_workers_give_the_sequential_features_bitwise(tiny_cohort, tmp_path):
    """Two loky workers give the features, order and statuses of one in-process worker."""
    from kneelib.preprocess.slice_features import extract_cohort_features

    root, knees = tiny_cohort
    sequential = extract_cohort_features(root, knees, _TINY, cache_dir=tmp_path / "one", n_jobs=1)
    parallel = extract_cohort_features(root, knees, _TINY, cache_dir=tmp_path / "two", n_jobs=2)
    assert sequential.n_jobs == 1 and parallel.n_jobs == 2
    assert list(sequential.knees["status"]) == ["computed", "unreadable"] + ["computed"] * 4 + ["missing"]
    assert sequential.knees["reason"].iloc[1].startswith("SliceGapError: uneven slice spacing") and str(root) not in sequential.knees["reason"].iloc[1]
    assert sequential.knees["reason"].iloc[-1] == "no COR_IW_TSE_RIGHT series"
    pd.testing.assert_frame_equal(sequential.knees, parallel.knees)
    np.testing.assert_array_equal(sequential.features, parallel.features)  # bitwise: one thread per worker
    np.testing.assert_array_equal(sequential.mask, parallel.mask)
    np.testing.assert_array_equal(sequential.slice_index, parallel.slice_index)
    assert sequential.n_encoded == parallel.n_encoded == 5 * 4
    assert sequential.cache_bytes == parallel.cache_bytes > 0
    assert _entries(tmp_path / "one") == _entries(tmp_path / "two") and len(_entries(tmp_path / "one")) == 5
    assert parallel.seconds["encode"] > 0 and parallel.seconds["preprocess"] > 0


def test_an_interrupted_cache_is_completed_without_corrupt_entries(tiny_cohort, tmp_path, monkeypatch):
    """A run stopped while writing its third entry leaves two whole entries and no temporary file;
    the next run (two workers) takes those from the cache and computes the others."""
    from kneelib.preprocess.slice_features import extract_cohort_features

    root, knees = tiny_cohort
    reference = extract_cohort_features(root, knees, _TINY, cache_dir=tmp_path / "reference", n_jobs=1)
    cache = tmp_path / "interrupted"
    real_savez, written = np.savez, []

    def savez_then_stop(file, **arrays):
        if len(written) == 2:
            with open(file, "wb") as handle:  # half an entry, then the interruption
                handle.write(b"PK\x03\x04")
            raise KeyboardInterrupt("stopped while writing")
        written.append(file)
        real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez_then_stop)
    with pytest.raises(KeyboardInterrupt):
        extract_cohort_features(root, knees, _TINY, cache_dir=cache, n_jobs=1)
    monkeypatch.setattr(np, "savez", real_savez)
    assert len(_entries(cache)) == 2 and not [p for p in cache.rglob("*") if p.name.startswith(".")]

    resumed = extract_cohort_features(root, knees, _TINY, cache_dir=cache, n_jobs=2)
    assert list(resumed.knees["status"]).count("cached") == 2
    assert list(resumed.knees["status"]).count("computed") == 3
    np.testing.assert_array_equal(resumed.features, reference.features)
    assert _entries(cache) == _entries(tmp_path / "reference")
    for entry in _entries(cache):
        with np.load(cache / entry) as stored:
            assert stored["features"].shape == (4, 1280) and stored["indices"].dtype == np.int16


def test_n_jobs_zero_is_refused(tiny_cohort, tmp_path):
    from kneelib.preprocess.slice_features import extract_cohort_features

    root, knees = tiny_cohort
    with pytest.raises(SliceInputError, match="n_jobs"):
        extract_cohort_features(root, knees, _TINY, cache_dir=tmp_path, n_jobs=0)


@pytest.mark.parametrize("series", ["SAG_IW_TSE", "SAG_3D_DESS"])
def test_variant_series_of_the_paper_give_features(series, tmp_path):
    """Paper 002's SAG IW TSE and SAG 3D DESS variants (3.1) go through the same pipeline."""
    from kneelib.preprocess.slice_features import extract_cohort_features
    from kneelib.synth.cohort import generate_cohort

    if series == "SAG_3D_DESS":  # the book's series set holds the right DESS only: write the whole protocol
        root = generate_cohort(preset="smoke", seed=3, n_subjects=1, progress=False, mr_series="all")
    else:
        root = generate_cohort(preset="smoke", seed=3, n_subjects=24, progress=False)  # shared with the smoke chapter
    participant = sorted(pd.read_csv(root / "contents.csv", dtype=str)["ParticipantID"].unique())[0]
    knees = pd.DataFrame({"participant_id": [participant] * 2, "side": ["R", "L"]})
    result = extract_cohort_features(root, knees, replace(_TINY, series=series), cache_dir=tmp_path, n_jobs=1)
    assert list(result.knees["status"]) == ["computed", "computed"]
    assert result.features.shape == (2, 4, 1280) and np.isfinite(result.features).all()
    assert result.mask.all()
