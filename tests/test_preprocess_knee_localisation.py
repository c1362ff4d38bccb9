"""Knee localisation and the 140 mm knee crop (paper 004, Data Pre-processing) on tiny synthetic images."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kneelib.preprocess import knee_localisation as kl

torch.set_num_threads(1)


def test_crop_points_centre_and_plateau_become_horizontal():
    centre = (100.0, 120.0)
    lateral, medial = np.array([95.0, 90.0]), np.array([105.0, 150.0])  # R knee, plateau slopes down to the right
    angle = kl.plateau_angle_deg(lateral, medial, "R")
    assert angle == pytest.approx(np.degrees(np.arctan2(10, 60)))
    crop = kl.crop_points([centre, lateral, medial], centre, angle, "R", pixel_spacing_mm=0.5, size_mm=140,
                          out_size=101, mirror_side="L")
    assert crop[0] == pytest.approx([50.0, 50.0])
    assert crop[1, 0] == pytest.approx(crop[2, 0])          # plateau horizontal in the crop
    assert crop[1, 1] < crop[2, 1]                          # lateral stays on the left for a right knee
    # 60.8 mm between the points -> 60.8 * 101 / 140 crop pixels
    assert crop[2, 1] - crop[1, 1] == pytest.approx(np.hypot(10, 60) * 0.5 * 101 / 140)


def test_left_knee_is_mirrored_so_lateral_is_on_the_left():
    centre = (100.0, 300.0)
    lateral, medial = np.array([100.0, 330.0]), np.array([100.0, 270.0])  # L knee: lateral on the image right
    angle = kl.plateau_angle_deg(lateral, medial, "L")
    assert angle == pytest.approx(0.0)
    crop = kl.crop_points([lateral, medial], centre, angle, "L", 0.5, out_size=101, mirror_side="L")
    assert crop[0, 1] < crop[1, 1]
    unmirrored = kl.crop_points([lateral, medial], centre, angle, "L", 0.5, out_size=101, mirror_side=None)
    assert unmirrored[0, 1] > unmirrored[1, 1]


def test_knee_crop_resamples_where_crop_points_says():
    image = np.zeros((300, 400), dtype=np.float32)
    image[148:153, 218:223] = 1.0                           # a bright dot at (150, 220)
    geometry = dict(centre_rc=(140.0, 200.0), angle_deg=12.0, side="R", pixel_spacing_mm=0.5,
                    size_mm=140.0, out_size=140, mirror_side="L")
    crop = kl.knee_crop(image, **geometry)
    assert crop.shape == (140, 140) and crop.dtype == np.float32
    expected = kl.crop_points([(150.0, 220.0)], **geometry)[0]
    found = np.unravel_index(np.argmax(crop), crop.shape)
    assert np.hypot(*(np.array(found) - expected)) <= 1.5


def test_half_image_grid_mirrors_the_left_knee():
    image = np.zeros((100, 200), dtype=np.float32)
    image[:, 100:110] = 1.0                                 # a band at the inner edge of the left half
    right, left = kl.half_image_on_grid(image, "R", 1.0, 1.0, (100, 100)), \
        kl.half_image_on_grid(image, "L", 1.0, 1.0, (100, 100))
    assert left[:, 95:].mean() > 0.9 and left[:, :80].mean() == 0   # mirrored: inner edge on the grid's right
    assert right.max() == 0
    with pytest.raises(ValueError, match="side"):
        kl.half_image_on_grid(image, "X", 1.0)


def _blob_images(n, seed):
    """Bilateral images with one bright horizontal 'joint line' per knee at a random height."""
    rng = np.random.default_rng(seed)
    images, spacings, sides, points = [], [], [], []
    for _ in range(n):
        image = rng.normal(0, 0.05, size=(96, 192)).astype(np.float32)
        for side, offset in (("R", 0), ("L", 96)):
            row, col = rng.uniform(30, 66), offset + rng.uniform(35, 61)
            image[int(row) - 2:int(row) + 3, int(col) - 20:int(col) + 21] += 1.0
            images.append(image)
            spacings.append(2.0)
            sides.append(side)
            points.append([[row, col], [row, col - 20], [row, col + 20]] if side == "R"
                          else [[row, col], [row, col + 20], [row, col - 20]])
    return images, spacings, sides, np.array(points)


def test_localiser_learns_better_than_the_mean_position():
    images, spacings, sides, points = _blob_images(16, seed=0)
    localiser = kl.train_knee_localiser(images, spacings, sides, points, grid_mm=4.0, grid_shape=(48, 48),
                                        n_epochs=20, batch_size=16, max_shift_px=2, seed=0, progress=False)
    test_images, test_spacings, test_sides, test_points = _blob_images(6, seed=1)
    errors = kl.localisation_errors_mm(localiser, test_images, test_spacings, test_sides, test_points)
    assert {"joint_centre_error_mm", "plateau_angle_error_deg"} <= set(errors.columns)
    # the joint-line height varies by +-36 mm: a constant guess is off by ~18 mm on average
    mean_row = points[:, 0, 0].mean()
    constant_error = np.abs(test_points[:, 0, 0] - mean_row).mean() * 2.0
    assert errors["joint_centre_error_mm"].median() < 0.6 * constant_error
    again = kl.train_knee_localiser(images[:8], spacings[:8], sides[:8], points[:8], grid_mm=4.0, grid_shape=(48, 48),
                                    n_epochs=1, batch_size=16, seed=0, progress=False)
    twice = kl.train_knee_localiser(images[:8], spacings[:8], sides[:8], points[:8], grid_mm=4.0, grid_shape=(48, 48),
                                    n_epochs=1, batch_size=16, seed=0, progress=False)
    assert again.history.equals(twice.history)              # same seed, same training


def test_landmark_table_to_points_and_bad_input():
    rows = [{"participant_id": 1, "visit_month": 0, "side": "R", "folder": "f", "pixel_spacing_mm": 0.7,
             "landmark": name, "row_px": float(i), "col_px": float(10 * i)}
            for i, name in enumerate(kl.LOCALISER_LANDMARKS)]
    wide = kl.landmark_table_to_points(pd.DataFrame(rows))
    assert len(wide) == 1 and wide.loc[0, "plateau_medial_col"] == 20.0
    with pytest.raises(KeyError, match="columns"):
        kl.landmark_table_to_points(pd.DataFrame(rows).drop(columns="row_px"))
    with pytest.raises(KeyError, match="plateau_medial"):
        kl.landmark_table_to_points(pd.DataFrame(rows[:2]))
    with pytest.raises(ValueError, match="points_rc"):
        kl.train_knee_localiser([np.zeros((10, 20))], [1.0], ["R"], np.zeros((2, 3, 2)), progress=False)


def _blob_knees(n_subjects, seed, prefix="S"):
    """A knee table (2 knees per subject) over blob radiographs, as the chapter's knee table has it."""
    images, spacings, sides, points = _blob_images(n_subjects, seed)
    rows, radiographs = [], {}
    for i, (image, spacing, side, p) in enumerate(zip(images, spacings, sides, points)):
        path = f"{prefix}{i // 2}/xr"
        radiographs[path] = (image, spacing)
        row = {"participant_id": f"{prefix}{i // 2}", "visit_month": 0, "side": side, "path": path,
               "kl_grade": (i // 2) % 3, "kl": (i // 2) % 3, "osteophyte_fl": 0, "osteophyte_fm": 0,
               "osteophyte_tl": 0, "osteophyte_tm": 0, "jsn_lateral": 0, "jsn_medial": 0}
        for name, (r, c) in zip(kl.LOCALISER_LANDMARKS, p):
            row[f"{name}_row"], row[f"{name}_col"] = r, c
        for compartment, (r, c) in zip(("lateral", "medial"), p[1:]):
            row[f"plateau_margin_{compartment}_row"], row[f"plateau_margin_{compartment}_col"] = r, c
        rows.append(row)
    return pd.DataFrame(rows), radiographs


def test_localisation_split_is_disjoint_in_subjects_and_covers_every_knee():
    knees, _ = _blob_knees(20, seed=2)
    localisation, grading = kl.localisation_split(knees, 0.25, seed=0)
    assert not set(localisation["participant_id"]) & set(grading["participant_id"])
    assert len(localisation) + len(grading) == len(knees)
    assert localisation["participant_id"].nunique() == 5
    again, _ = kl.localisation_split(knees, 0.25, seed=0)
    assert again.equals(localisation)
    for fraction in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match="localisation"):
            kl.localisation_split(knees, fraction)


def test_localiser_refuses_to_crop_or_score_the_subjects_it_trained_on():
    from kneelib.preprocess.knee_crops import prepare_knees

    knees, radiographs = _blob_knees(6, seed=3)
    localisation, grading = kl.localisation_split(knees, 0.34, seed=0)
    localiser = kl.fit_localiser(localisation, radiographs, n_epochs=1, seed=0, progress=False)
    assert localiser.trained_on == set(localisation["participant_id"])
    for table in (localisation, knees):                      # any trained-on subject is refused
        with pytest.raises(kl.LocaliserLeakError, match="trained the localiser"):
            kl.localisation_error_table(localiser, table, radiographs)
        with pytest.raises(kl.LocaliserLeakError, match="trained the localiser"):
            prepare_knees(table, radiographs, localiser, image_size=32, progress=False)
    errors = kl.localisation_error_table(localiser, grading, radiographs)
    assert len(errors) == len(grading) and errors["joint_centre_error_mm"].notna().all()
    prepared = prepare_knees(grading, radiographs, localiser, image_size=32, progress=False)
    assert prepared.images.shape[0] == len(grading)


def test_localisation_split_of_a_long_table_carrying_attrs():
    """A default-size knee table with a QC DataFrame in ``attrs`` splits (it crashed pandas' repr)."""
    import numpy as np
    import pandas as pd

    from kneelib.preprocess.knee_localisation import localisation_split

    n_subjects = 200
    knees = pd.DataFrame({"participant_id": np.repeat([f"9{i:06d}" for i in range(n_subjects)], 2),
                          "kl_grade": np.random.default_rng(0).integers(0, 5, 2 * n_subjects)})
    knees.attrs["qc"] = pd.DataFrame({"participant_id": ["9999999"], "reason": ["no radiograph"]})
    localisation, grading = localisation_split(knees, 0.2, seed=0)
    assert len(localisation) == 80 and len(grading) == 320
    assert not set(localisation["participant_id"]) & set(grading["participant_id"])
