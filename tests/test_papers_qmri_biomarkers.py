"""Tests of the qMRI-biomarker chapter's own pieces (issue 11) on tiny seeded data.

kneelib.data.qmri_cohort (knee selection, subject splits, real readers), the Table 4 tests of
kneelib.stats.group_tests, kneelib.papers.qmri_biomarkers (Table S1, comparisons, relaxation maps,
Fig. S3 pairs) and kneelib.figures.qmri.
"""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from kneelib.data.errors import KneelibDataError  # noqa: E402
from kneelib.data.qmri_cohort import (PYMSKT_LABELS, qmri_knee_table, read_pymskt_segmentation,  # noqa: E402
                                      segmentation_splits)
from kneelib.papers import qmri_biomarkers as study  # noqa: E402
from kneelib.stats.group_tests import one_way_manova, pearson_chi_square_test, split_independence  # noqa: E402


def _demographics(n=90, seed=0, age_shift=0.0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"split": np.repeat(["train", "valid", "test"], n // 3), "sex": rng.integers(1, 3, n),
                          "age": rng.normal(60, 9, n), "bmi": rng.normal(28, 4, n)})
    frame.loc[frame.split == "test", "age"] += age_shift
    return frame


# ------------------------------------------------------------------ Table 4 independence tests
def test_pearson_chi_square_matches_scipy_without_continuity_correction():
    sex = np.array([1, 1, 2, 2, 2, 1, 2, 2, 1, 2, 1, 1])
    split = np.array(["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "c"])
    statistic, p, dof = pearson_chi_square_test(sex, split)
    table = pd.crosstab(split, sex).to_numpy()
    expected = stats.chi2_contingency(table, correction=False)
    assert dof == 2 and statistic == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    # two splits (1 degree of freedom): Pearson's statistic, no Yates correction
    _, p_two, _ = pearson_chi_square_test(sex[:8], split[:8])
    observed = pd.crosstab(split[:8], sex[:8]).to_numpy()
    expected_counts = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    pearson = ((observed - expected_counts) ** 2 / expected_counts).sum()
    assert p_two == pytest.approx(stats.chi2.sf(pearson, 1))


def test_pearson_chi_square_without_variation_is_nan_and_bad_lengths_raise():
    assert np.isnan(pearson_chi_square_test([1, 1, 1, 1], ["a", "a", "b", "b"])[1])
    with pytest.raises(ValueError):
        pearson_chi_square_test([1, 2], ["a"])


def test_manova_finds_an_age_shift_and_not_a_null():
    assert one_way_manova(_demographics(), ["age", "bmi"], "split")[1] > 0.05
    assert one_way_manova(_demographics(age_shift=15.0), ["age", "bmi"], "split")[1] < 1e-3


def test_manova_two_groups_equals_hotelling_and_too_few_rows_raise():
    frame = _demographics(60)
    two = frame[frame.split != "valid"]
    _, p = one_way_manova(two, ["age", "bmi"], "split")
    # with two groups Wilks' F test is exact: it equals Hotelling's T^2 test
    a, b = (two[two.split == s][["age", "bmi"]].to_numpy() for s in ("train", "test"))
    n1, n2, k = len(a), len(b), 2
    pooled = ((n1 - 1) * np.cov(a.T) + (n2 - 1) * np.cov(b.T)) / (n1 + n2 - 2)
    diff = a.mean(0) - b.mean(0)
    t2 = n1 * n2 / (n1 + n2) * diff @ np.linalg.solve(pooled, diff)
    f = (n1 + n2 - k - 1) / (k * (n1 + n2 - 2)) * t2
    assert p == pytest.approx(stats.f.sf(f, k, n1 + n2 - k - 1), rel=1e-6)
    with pytest.raises(ValueError):
        one_way_manova(frame.head(3), ["age", "bmi"], "split")


def test_split_independence_gives_both_p_values():
    values = split_independence(_demographics())
    assert set(values) == {"chi_square_sex_p", "manova_age_bmi_p"}
    assert all(0 <= v <= 1 for v in values.values())


# ------------------------------------------------------------------ cohort and splits
def _knees(n_subjects=10, visits=(0, 12)):
    rows = [{"participant_id": f"90{i:05d}", "visit_month": v, "kl_grade": i % 5, "age": 50.0 + i, "bmi": 25.0,
             "sex": 1 + i % 2} for i in range(n_subjects) for v in visits]
    return pd.DataFrame(rows)


def test_segmentation_splits_are_disjoint_in_subjects_and_sized_as_asked():
    splits = segmentation_splits(_knees(), {"train": 5, "valid": 2, "test": 3}, seed=1)
    subjects = splits.groupby("split")["participant_id"].unique()
    assert {k: len(v) for k, v in subjects.items()} == {"train": 5, "valid": 2, "test": 3}
    assert splits.groupby("participant_id")["split"].nunique().max() == 1
    assert len(splits) == 20  # both visits of every chosen subject
    assert len(segmentation_splits(_knees(), {"train": 5, "valid": 2, "test": 3}, seed=1, visits=[0])) == 10
    with pytest.raises(KneelibDataError):
        segmentation_splits(_knees(), {"train": 9, "valid": 2, "test": 3})


def test_qmri_knee_table_keeps_right_knees_with_dess_msme_and_kl():
    from kneelib.data import read_image_index
    from kneelib.synth.cohort import generate_cohort

    root = generate_cohort("smoke", seed=0, progress=False)
    knees = qmri_knee_table(root, visits=(0, 12))
    index = read_image_index(root).table
    dess = index[index.SeriesDescription == "SAG_3D_DESS_RIGHT"]
    assert len(knees) == len(dess) and knees["kl_grade"].notna().all()
    assert set(knees.columns) >= {"participant_id", "visit_month", "kl_grade", "age", "bmi", "sex"}
    assert set(knees.visit_month) <= {0, 12}


def test_read_pymskt_segmentation_maps_codes_and_rejects_unknown_ones(tmp_path):
    import SimpleITK as sitk

    from kneelib.synth.spec import TISSUE_LABELS

    codes = np.zeros((4, 5, 6), np.uint8)
    codes[1, 2, 3], codes[2, 2, 2], codes[3, 1, 1] = 1, 5, 10
    image = sitk.GetImageFromArray(codes)
    image.SetSpacing((0.4, 0.5, 0.7))
    sitk.WriteImage(image, str(tmp_path / "seg.nrrd"))
    labels, spacing = read_pymskt_segmentation(tmp_path / "seg.nrrd")
    assert spacing == pytest.approx((0.7, 0.5, 0.4))
    assert labels[1, 2, 3] == TISSUE_LABELS[PYMSKT_LABELS[1]] == TISSUE_LABELS["femoral_cartilage"]
    assert labels[2, 2, 2] == TISSUE_LABELS["femur"] and labels[3, 1, 1] == TISSUE_LABELS["meniscus_medial"]
    codes[0, 0, 0] = 42
    sitk.WriteImage(sitk.GetImageFromArray(codes), str(tmp_path / "bad.nrrd"))
    with pytest.raises(KneelibDataError, match="42"):
        read_pymskt_segmentation(tmp_path / "bad.nrrd")
    with pytest.raises(KneelibDataError):
        read_pymskt_segmentation(tmp_path / "missing.nrrd")


# ------------------------------------------------------------------ paper composition
def _structure_table():
    names = list(study.published()["table_s1"]["structures"])
    return pd.DataFrame({"structure": names, "n_volumes": 4, "n_subjects": 4, "dsc": 0.9, "dsc_low": 0.85,
                         "dsc_high": 0.95, "mpts_mm": 0.5, "mpts_low": 0.4, "mpts_high": 0.6, "unit": "subjects"})


def test_table_s1_and_comparisons_give_every_published_value_a_reproduction():
    s1 = study.table_s1(_structure_table())
    assert s1.loc["femur", "DSC %"] == pytest.approx(90.0) and s1.loc["femur", "paper DSC %"] == 98.0
    rows = study.comparisons(s1, {"chi_square_sex_p": 0.5, "manova_age_bmi_p": 0.4},
                             {"femoral_thickness_mm": 2.1, "t1rho_femoral_ms": 50.0}, "synthetic", 4)
    missing = [r.quantity for r in rows if r.published not in (None, "") and r.reproduced is None]
    assert missing == []
    femur = next(r for r in rows if r.quantity == "DSC (%), femur")
    assert (femur.ci_low, femur.ci_high) == pytest.approx((85.0, 95.0))


def test_real_relaxation_map_recovers_a_known_t2_phantom():
    rng = np.random.default_rng(0)
    te = np.arange(1, 9) * 6.312
    t2 = np.full((2, 6, 6), 40.0)
    t2[:, :3] = 25.0
    signal = 1000 * np.exp(-te / t2[..., None]) + 20 + rng.normal(0, 2, t2.shape + (8,))
    fitted = study.real_relaxation_map(signal, te)
    assert np.isfinite(fitted).all() and np.median(np.abs(fitted - t2)) < 0.5 and np.max(np.abs(fitted - t2)) < 3.0
    regions = np.zeros(t2.shape, bool)
    regions[1, 0, 0] = True
    partial = study.real_relaxation_map(signal, te, shown_slices=[0], regions=regions)
    assert np.isfinite(partial[0]).all() and np.isfinite(partial[1]).sum() == 1
    assert partial[0] == pytest.approx(fitted[0])


def test_roi_statistics_and_mese_regions():
    values = np.arange(100, dtype=float).reshape(10, 10)
    rois = study.mese_regions((10, 10))
    table = study.roi_statistics(values, rois)
    assert list(table.index) == list(rois) and (table["voxels"] > 0).all()
    mask = np.zeros((10, 10), bool)
    mask[0, :4] = True
    assert study.roi_statistics(values, {"row": mask}).loc["row", "median ms"] == pytest.approx(1.5)


def _fake_knee(offset):
    maps = {"thickness": np.full((8, 8), 2.0 + offset), "t2_total": np.full((8, 8), 40.0 + offset)}
    values = {"thickness": np.array([2.0, np.nan, 2.2]) + offset, "t2_total": np.array([39.0, 41.0, np.nan]) + offset}
    bone = SimpleNamespace(maps=maps, vertex_values=values)
    return SimpleNamespace(bones={"femur": bone})


def test_spherical_vs_surface_pairs_and_bland_altman_rows():
    knees = [_fake_knee(o) for o in (0.0, 0.5, 1.0)]
    pairs, summary = study.spherical_vs_surface(knees, ["a/0", "b/0", "c/0"], n_boot=50)
    assert len(pairs) == 6
    thickness = summary.set_index("biomarker").loc["thickness"]
    assert thickness["bias"] == pytest.approx(2.0 - 2.1) and thickness["knees"] == 3
    fig = __import__("kneelib.figures.qmri", fromlist=["plot_bland_altman"]).plot_bland_altman(pairs, summary)
    plt.close(fig)


# ------------------------------------------------------------------ figures
def test_figures_draw_on_tiny_arrays():
    from kneelib.figures import qmri as figures

    rng = np.random.default_rng(0)
    image = rng.random((6, 16, 16)).astype(np.float32)
    truth = np.zeros((6, 16, 16), np.uint8)
    truth[:, 4:10, 4:10] = 1
    prediction = np.roll(truth, 1, axis=2)
    for fig in (figures.plot_segmentation_overlay(image, {"truth": truth, "pred": prediction}, [1, 3], (2, 1, 1),
                                                  legend={0: "bg", 1: "femur"}),
                figures.plot_error_maps(image, {"bone": prediction}, {"bone": truth}, [2]),
                figures.plot_relaxation_map(image[0], image[0] * 50, {"box": truth[0] > 0}, (1, 1))):
        assert fig.axes
        plt.close(fig)
    overlay = figures.overlay_rgba(truth[0])
    assert overlay.shape == (16, 16, 4) and overlay[0, 0, 3] == 0 and overlay[5, 5, 3] > 0


def test_region_mean_fits_recover_a_known_relaxation_time_of_a_region():
    rng = np.random.default_rng(0)
    times = (1.0, 10.0, 30.0, 60.0)
    signal = 500.0 * np.exp(-np.asarray(times) / 55.0) + rng.normal(0, 5.0, size=(2, 6, 6, 4))
    region = np.zeros((2, 6, 6), bool)
    region[:, 1:4, 1:4] = True
    signal[~region] = 100.0  # outside the region: flat, no decay
    table = study.region_mean_fits(signal, times, {"region": region})
    assert table.loc["region", "voxels"] == 18
    assert abs(table.loc["region", "2-parameter fit of the mean signal, ms"] - 55.0) < 2.0
    assert abs(table.loc["region", "3-parameter fit of the mean signal, ms"] - 55.0) < 10.0
    # a region without decay: no relaxation time inside the range, so blank, not a runaway value
    flat = study.region_mean_fits(signal, times, {"flat": ~region})
    assert np.isnan(flat.loc["flat", "3-parameter fit of the mean signal, ms"])
    assert np.isnan(flat.loc["flat", "2-parameter fit of the mean signal, ms"])


def test_t1rho_cartilage_region_is_a_thin_band_on_the_drawn_slices_only():
    region = study.t1rho_cartilage_region((12, 512, 512), slices=(8, 9, 10), radius_px=3.0)
    assert set(np.flatnonzero(region.any(axis=(1, 2)))) == {8, 9, 10}
    # a band of width 2 x 3 px along a line about 60 px long: a few hundred pixels per slice
    assert 200 < region[9].sum() < 600
    assert region[9, 270, 172] and not region[9, 270, 185]


def test_qc_sentence_counts_knees_and_sides():
    from kneelib.papers.qmri_biomarkers import qc_sentence

    qc = pd.DataFrame({"subject_id": ["a", "a", "b", "b", "c", "c"], "task": ["bone", "cartilage"] * 3,
                       "excluded": [False, True, False, False, True, False],
                       "z_femur": [0.5, np.nan, 1.0, np.nan, -3.5, np.nan],
                       "z_femoral_cartilage": [np.nan, 4.2, np.nan, 0.1, np.nan, 2.0]})
    sentence = qc_sentence(qc)
    assert sentence.startswith("1 of 3 segmented test knees pass the 3-SD volume rule")
    assert "femoral cartilage in 1 (all above)" in sentence and "femur in 1 (all below)" in sentence
    assert qc_sentence(qc.assign(excluded=False, z_femur=0.0, z_femoral_cartilage=0.0)) == \
        "3 of 3 segmented test knees pass the 3-SD volume rule."
    assert "No segmentation goes on to the biomarkers" in qc_sentence(qc.assign(excluded=True))


def test_segmentation_in_worker_processes_and_on_a_local_cluster_equals_the_in_process_run():
    """Issue 15, part 3: segmentation inference is an executor task, one thread per volume, so the
    labels do not depend on who computes them."""
    import torch

    from kneelib.models.segmentation import build_segmentation_network

    distributed = pytest.importorskip("distributed")
    torch.manual_seed(0)
    ensembles = {task: [build_segmentation_network(task, "unet").eval() for _ in range(2)]
                 for task in ("bone", "cartilage")}
    rng = np.random.default_rng(0)
    images = [rng.normal(1.0, 0.3, (16, 20, 20)).astype(np.float32) + 1 for _ in range(3)]
    settings = study.SegmentationSettings(grid_mm={"bone": 2.0, "cartilage": None}, keep_components=False)
    threads = torch.get_num_threads()
    here, seconds = study.segment_knees(ensembles, images, (1.0, 1.0, 1.0), settings, n_jobs=1)
    assert torch.get_num_threads() == threads  # one thread inside each task, restored after
    processes, _ = study.segment_knees(ensembles, images, (1.0, 1.0, 1.0), settings, n_jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        there, _ = study.segment_knees(ensembles, images, (1.0, 1.0, 1.0), settings, scheduler=cluster)
    assert seconds > 0 and len(here) == 3
    assert all(labels["bone"].shape == image.shape for labels, image in zip(here, images))
    assert len({labels["cartilage"].tobytes() for labels in here}) == 3  # the volumes differ, so do the labels
    for other in (processes, there):
        for mine, theirs in zip(here, other):
            for task in ("bone", "cartilage"):
                np.testing.assert_array_equal(mine[task], theirs[task])
