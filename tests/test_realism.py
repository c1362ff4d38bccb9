"""Realism measures of issue 10, item 4 (:mod:`kneelib.train.realism`): no real image in synthetic training,
subject-level splits, a discriminator that separates what differs, and the entry point on a smoke cohort."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kneelib.train import realism  # noqa: E402

TINY = dict(image_size=48, transfer_epochs=1, disc_epochs=1, n_real_subjects=8, mri_subjects=3,
            mri_slices_per_exam=2, mri_image_size=40, mri_pixel_mm=3.0, n_boot=30, n_cam=3, batch_size=16)


@pytest.fixture(scope="module")
def smoke_cohort():
    from kneelib.synth.cohort import generate_cohort

    return generate_cohort("smoke", seed=0, n_workers=1, progress=False)


def test_refuse_real_images_names_the_file(tmp_path):
    real = tmp_path / "real"
    (real / "chen").mkdir(parents=True)
    realism.refuse_real_images([tmp_path / "synthetic" / "a.dcm"], real)
    with pytest.raises(realism.RealImageLeakError, match="a.png"):
        realism.refuse_real_images([tmp_path / "synthetic" / "b.dcm", real / "chen" / "a.png"], real)


def test_synthetic_training_sets_refuse_images_under_the_real_root(smoke_cohort):
    # a "real root" that contains the cohort: every synthetic file now counts as real and must be refused
    with pytest.raises(realism.RealImageLeakError):
        realism.synthetic_knee_crops(smoke_cohort, 48, real_root=smoke_cohort.parent)
    with pytest.raises(realism.RealImageLeakError):
        realism.dess_slices(smoke_cohort, 2, 2, real_root=smoke_cohort.parent)
    crops = realism.synthetic_knee_crops(smoke_cohort, 48)
    with pytest.raises(realism.RealImageLeakError):
        realism.sim_to_real_transfer(smoke_cohort, smoke_cohort.parent, image_size=48, crops=crops)


def test_ground_truth_crops_cover_every_knee(smoke_cohort):
    from kneelib.data.knee_radiographs import load_synthetic_knees
    from kneelib.train.multitask import resize_for_crop

    crops = realism.synthetic_knee_crops(smoke_cohort, 48, crop_mm=90.0)
    knees = load_synthetic_knees(smoke_cohort)
    assert crops.images.shape == (len(knees), resize_for_crop(48), resize_for_crop(48))
    assert crops.images.dtype == np.uint8
    assert (crops.images.reshape(len(knees), -1).std(axis=1) > 10).all()  # real content, not blank crops
    # the crop centre is the planted joint centre
    np.testing.assert_allclose(crops.knees["centre_row"], knees["joint_centre_row"])


def test_crops_are_framed_on_each_knee_like_the_real_crops(smoke_cohort):
    from kneelib.data.knee_radiographs import load_synthetic_knees, read_radiographs

    knees = load_synthetic_knees(smoke_cohort)
    radiographs = read_radiographs(knees, progress=False)
    sizes_mm = realism.plateau_framed_crop_mm(knees, radiographs, 1.15)
    spacing = np.array([radiographs[path][1] for path in knees["path"]])
    plateau_mm = spacing * np.hypot(knees["plateau_margin_lateral_col"] - knees["plateau_margin_medial_col"],
                                    knees["plateau_margin_lateral_row"] - knees["plateau_margin_medial_row"])
    np.testing.assert_allclose(sizes_mm, 1.15 * plateau_mm)
    assert 50 < np.median(plateau_mm) < 100          # a tibial plateau, in mm
    assert np.ptp(sizes_mm) > 0                        # each knee its own frame
    with pytest.raises(ValueError):
        realism.plateau_framed_crop_mm(knees, radiographs, 0.0)
    framed = realism.synthetic_knee_crops(smoke_cohort, 48)  # the default framing
    fixed = realism.synthetic_knee_crops(smoke_cohort, 48, crop_mm=90.0)
    assert framed.images.shape == fixed.images.shape
    assert not np.array_equal(framed.images, fixed.images)


def test_subject_split_keeps_every_subject_on_one_side():
    subjects = np.repeat([f"s{i}" for i in range(10)], 3)
    test = realism.subject_split(subjects, 0.3, seed=1)
    assert test.sum() == 9
    for s in np.unique(subjects):
        assert len(set(test[subjects == s])) == 1
    with pytest.raises(ValueError):
        realism.subject_split(["a", "a"], 0.5)


def _two_kinds(n_subjects=12, per_subject=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    n = n_subjects * per_subject
    synthetic = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    synthetic[:, 12:28, 12:28] = 220  # a bright block the real images lack
    real = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    subjects = np.repeat([f"p{i}" for i in range(n_subjects)], per_subject)
    return synthetic, subjects, real, subjects.copy()


def test_discriminator_separates_what_differs_and_reports_subject_level_auc(capsys):
    synthetic, s_subjects, real, r_subjects = _two_kinds(n_subjects=20, per_subject=3)
    result = realism.discriminability(synthetic, s_subjects, real, r_subjects, image_size=32,
                                      max_epochs=4, batch_size=8, n_boot=50, n_cam=4, seed=0)
    # progress=False (the default): no fastai epoch table lands on a book page
    assert "train_loss" not in capsys.readouterr().out
    assert result["auc"] > 0.85  # a bright block vs none: chance would be 0.5
    assert result["unit"] == "subjects"
    assert result["ci_low"] <= result["auc"] <= result["ci_high"]
    assert result["n_test_real_subjects"] == 6 and result["n_test_synthetic_subjects"] == 6
    cams = result["gradcam"]
    assert set(cams["mean_cam"]) == {"real", "synthetic"}
    assert cams["mean_cam"]["real"].shape == (32, 32)
    fig = __import__("kneelib.figures.realism", fromlist=["x"]).plot_discriminator_gradcam(cams, title="t")
    assert len(fig.axes) == 10  # per class: mean, SD, mean Grad-CAM, two examples
    plt.close(fig)


def test_discriminator_summary_says_how_alike_each_class_is():
    rng = np.random.default_rng(3)
    n, size = 36, 40
    yy, xx = np.mgrid[:size, :size]

    def blob(row, col):
        return 40 + 180 * np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / 60.0)

    # synthetic: one knee-like blob always in the same place; real: the blob anywhere
    synthetic = np.stack([blob(20, 20) + rng.normal(0, 3, (size, size)) for _ in range(n)])
    real = np.stack([blob(*rng.uniform(8, 32, 2)) + rng.normal(0, 3, (size, size)) for _ in range(n)])
    subjects = np.repeat([f"p{i}" for i in range(n // 2)], 2)
    result = realism.discriminability(synthetic.clip(0, 255).astype(np.uint8), subjects,
                                      real.clip(0, 255).astype(np.uint8), subjects.copy(), image_size=32,
                                      max_epochs=1, batch_size=8, n_boot=20, n_cam=3, seed=0)
    summary = result["gradcam"]
    assert summary["sd_image"]["real"].shape == (32, 32)
    assert summary["spread"]["synthetic"] < 0.5 * summary["spread"]["real"]
    assert summary["spread"]["real"] == pytest.approx(float(summary["sd_image"]["real"].mean()))


def test_discriminator_refuses_a_subject_on_both_sides():
    synthetic, s_subjects, real, r_subjects = _two_kinds(n_subjects=4, per_subject=2)
    leaky = np.zeros(len(real), bool)
    leaky[0] = True  # subject p0: one image in test, the other in training
    with pytest.raises(ValueError, match="both sides"):
        realism.discriminability(synthetic, s_subjects, real, r_subjects, image_size=32, real_test=leaky,
                                 max_epochs=1, n_boot=10)


@pytest.mark.realdata
def test_transfer_trains_and_selects_on_synthetic_crops_only(smoke_cohort, real_data_root, monkeypatch):
    from kneelib.train import grading

    crops = realism.synthetic_knee_crops(smoke_cohort, 48, real_root=real_data_root)
    seen = {}
    original = grading.train_kl_model

    def recording(train_images, train_grades, internal_images, internal_grades, *args, **kwargs):
        seen["train"], seen["internal"] = train_images, internal_images
        seen["schedule"] = kwargs["transfer_schedule"]
        return original(train_images, train_grades, internal_images, internal_grades, *args, **kwargs)

    monkeypatch.setattr(grading, "train_kl_model", recording)
    result = realism.sim_to_real_transfer(smoke_cohort, real_data_root, image_size=48, max_epochs=1,
                                          batch_size=16, n_boot=30, crops=crops)
    synthetic_rows = {row.tobytes() for row in crops.images}
    for part in ("train", "internal"):
        assert all(image.tobytes() in synthetic_rows for image in seen[part]), part
    assert len(seen["train"]) + len(seen["internal"]) == len(crops.images)
    assert seen["schedule"] == realism.TRANSFER_SCHEDULE  # the schedule chosen on real-to-real learning
    assert result["n_test_crops"] == 186 and result["unit"] == "subjects"
    assert -1 <= result["ci_low"] <= result["kappa"] <= result["ci_high"] <= 1


@pytest.mark.realdata
def test_real_dess_slabs_alternate_with_gaps(real_data_root):
    images, slabs, test = realism.real_dess_slices(real_data_root, n_slabs=4, gap_slices=2, pixel_mm=3.0)
    assert images.dtype == np.uint8 and images.shape[1:] == (41, 41)
    assert list(dict.fromkeys(slabs)) == ["slab0", "slab1", "slab2", "slab3"]
    assert (test == np.isin(slabs, ["slab1", "slab3"])).all()
    # 80 slices, central 70% = 56, minus 2 x 2 slices at each of 3 borders
    assert len(images) == 56 - 12


@pytest.mark.realdata
def test_measure_realism_returns_both_numbers_on_a_smoke_cohort(smoke_cohort, real_data_root):
    with pytest.raises(ValueError, match="unknown realism setting"):
        realism.measure_realism(smoke_cohort, real_data_root, {"epochs": 1})
    result = realism.measure_realism(smoke_cohort, real_data_root, TINY, seed=0)
    assert -1 <= result["transfer"]["kappa"] <= 1
    for part in ("radiograph_discriminability", "mri_discriminability"):
        assert 0 <= result[part]["auc"] <= 1
        assert result[part]["unit"] == "subjects"
        assert "caveat" in result[part]
    assert "one real DESS exam" in result["mri_discriminability"]["caveat"]
    reference, transfer = result["real_reference"], result["transfer"]
    assert reference["n_train_crops"] + reference["n_internal_crops"] >= transfer["n_train_crops"] + transfer[
        "n_internal_crops"]
    assert reference["n_test_crops"] == transfer["n_test_crops"] == 186
    graded = reference["real_to_synthetic"]                 # the real-trained grader on every synthetic crop
    assert graded["n_crops"] == transfer["n_train_crops"] + transfer["n_internal_crops"]
    assert int(graded["confusion"].to_numpy().sum()) == graded["n_crops"] and -1 <= graded["kappa"] <= 1
    assert transfer["real_to_synthetic"] is None             # a synthetic-trained grader does not grade them
    assert result["settings"]["image_size"] == 48
    assert result["seconds"]["total"] > 0


def test_dess_slices_pass_over_a_series_the_reader_refuses(smoke_cohort, monkeypatch):
    from kneelib.data import dicom
    from kneelib.data.errors import KneelibDataError

    original = dicom.read_dicom_series
    refused = []

    def refuse_first(path, **kwargs):
        if not refused:
            refused.append(str(path))
            raise KneelibDataError(f"{path}: uneven slice spacing", path=path, reason="uneven slice spacing")
        return original(path, **kwargs)

    monkeypatch.setattr(dicom, "read_dicom_series", refuse_first)
    images, subjects = realism.dess_slices(smoke_cohort, n_subjects=2, slices_per_exam=2, pixel_mm=3.0)
    assert len(refused) == 1
    assert len(set(subjects)) == 2 and len(images) == 4
    assert images.dtype == np.uint8


@pytest.mark.realdata
def test_real_knee_crops_by_crop_count_takes_whole_subjects_from_one_split(real_data_root):
    images, table = realism.real_knee_crops(real_data_root, "train", 32, seed=3, n_crops=25)
    again, table_again = realism.real_knee_crops(real_data_root, "train", 32, seed=3, n_crops=25)
    assert np.array_equal(images, again) and table["relpath"].tolist() == table_again["relpath"].tolist()
    assert len(images) == len(table) >= 25 and (table["split"] == "train").all()
    per_subject = table.groupby("oai_id").size()
    from kneelib.data.chen_kl import CHEN_KL_FOLDER, read_chen_kl
    full = read_chen_kl(real_data_root / CHEN_KL_FOLDER)
    full = full[full["split"] == "train"]
    assert (full[full["oai_id"].isin(per_subject.index)].groupby("oai_id").size() == per_subject).all()  # whole
    with pytest.raises(ValueError, match="not both"):
        realism.real_knee_crops(real_data_root, "train", 32, n_subjects=5, n_crops=25)


@pytest.mark.realdata
def test_real_reference_trains_on_real_train_crops_with_the_measure_recipe(real_data_root, monkeypatch):
    from kneelib.train import grading

    seen = {}
    original = grading.train_kl_model

    def recording(train_images, train_grades, internal_images, internal_grades, *args, **kwargs):
        seen["train"], seen["internal"], seen["schedule"] = train_images, internal_images, kwargs["transfer_schedule"]
        return original(train_images, train_grades, internal_images, internal_grades, *args, **kwargs)

    monkeypatch.setattr(grading, "train_kl_model", recording)
    result = realism.real_reference_transfer(real_data_root, 40, image_size=48, max_epochs=1, batch_size=16,
                                             n_boot=30, seed=2)
    train_crops, train_table = realism.real_knee_crops(real_data_root, "train", 48, seed=2, n_crops=40)
    val_crops, _ = realism.real_knee_crops(real_data_root, "val", 48)
    drawn = {image.tobytes() for image in train_crops}
    val = {image.tobytes() for image in val_crops}
    for part in ("train", "internal"):
        assert all(image.tobytes() in drawn and image.tobytes() not in val for image in seen[part]), part
    assert len(seen["train"]) + len(seen["internal"]) == len(train_crops) >= 40
    assert seen["schedule"] == realism.TRANSFER_SCHEDULE
    assert result["n_test_crops"] == 186 and result["n_train_crops"] == len(seen["train"])
    assert result["n_train_subjects"] < train_table["oai_id"].nunique()  # the internal subjects are apart
    assert -1 <= result["ci_low"] <= result["kappa"] <= result["ci_high"] <= 1


def test_grade_synthetic_crops_reads_the_planted_grade_against_the_prediction(monkeypatch):
    """A stand-in grader whose answers are known: kappa, confusion and expected grade follow them."""
    import pandas as pd
    from sklearn.metrics import cohen_kappa_score

    import kneelib.train.multitask as multitask
    from kneelib.preprocess.knee_crops import PreparedKnees

    planted = np.array([0, 0, 1, 2, 3, 4, 4, 2])
    shown = np.array([0, 1, 1, 2, 3, 4, 3, 2])               # two knees read one grade off
    images = np.stack([np.full((36, 36), 40 * g + 20, np.uint8) for g in shown])
    crops = PreparedKnees(images=images, targets=planted[:, None],
                          knees=pd.DataFrame({"participant_id": [f"p{i // 2}" for i in range(8)]}), masks=None)
    # the grader reads the grade written in each image's grey level
    monkeypatch.setattr(multitask, "predict_probabilities", lambda model, imgs, size, **kw: {
        "kl": np.eye(5)[((imgs.reshape(len(imgs), -1).max(axis=1).astype(int) - 20) // 40)]})
    result = realism.grade_synthetic_crops(object(), crops, 32, n_boot=50, seed=0)
    assert result["kappa"] == pytest.approx(cohen_kappa_score(planted, shown, weights="quadratic"))
    assert result["ci_low"] <= result["kappa"] <= result["ci_high"] and result["unit"] == "subjects"
    assert result["confusion"].loc[0, 1] == 1 and result["confusion"].loc[4, 3] == 1
    assert np.trace(result["confusion"].to_numpy()) == 6
    assert result["expected_grade"].tolist() == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.5])
    assert result["planted_counts"] == [2, 1, 2, 1, 2] and result["predicted_counts"] == [1, 2, 2, 2, 1]
    assert result["n_subjects"] == 4 and result["n_crops"] == 8
    assert result["kappa_per_grader"] == pytest.approx([result["kappa"]])
    # two graders: graded by their mean probabilities, each one's kappa kept
    answers = iter([np.eye(5)[shown], np.eye(5)[planted]])
    monkeypatch.setattr(multitask, "predict_probabilities", lambda model, imgs, size, **kw: {"kl": next(answers)})
    pair = realism.grade_synthetic_crops([object(), object()], crops, 32, n_boot=50, seed=0)
    assert pair["kappa_per_grader"] == pytest.approx([result["kappa"], 1.0])
    assert pair["mean_probabilities"].loc[0, 0] == pytest.approx(0.75)   # (1 + 0.5) / 2 over the two KL 0 knees
