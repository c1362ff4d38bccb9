"""Radiograph figures of the data chapter: real OAI knee crops by KL grade
(:func:`plot_kl_montage`), a synthetic bilateral film with its ground-truth landmarks and
readings (:func:`plot_radiograph_truth`), and real next to synthetic knee crops by KL grade
(:func:`plot_radiograph_crops`).

The images are read with :mod:`kneelib.data` and :mod:`kneelib.preprocess.radiograph`;
the synthetic crops come from :func:`kneelib.synth.ground_truth.synthetic_knee_crops`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.inventory import sample_kl_images
from kneelib.data.qc import RADIOGRAPH_DESCRIPTION

__all__ = ["plot_kl_montage", "plot_radiograph_truth", "plot_radiograph_crops"]


def plot_kl_montage(dataset_dir: str | Path, per_grade: int = 4, split: str = "train",
                    image_size: int = 224, seed: int = 0):
    """A montage of real radiograph crops: one column per KL grade 0-4.

    Parameters
    ----------
    dataset_dir : path
        ``$KNEELIB_DATA/chen_kl_radiographs``.
    per_grade : int
        Images per grade (rows).
    split : str
        ``train`` or ``val``.
    image_size : int
        Display size in pixels (crops are 224x224).
    seed : int
        Sampling seed.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    sample = sample_kl_images(dataset_dir, per_grade, split=split, seed=seed)
    grades = sorted(sample["kl_grade"].unique())
    fig, axes = plt.subplots(per_grade, len(grades), figsize=(2.0 * len(grades), 2.0 * per_grade),
                             squeeze=False)
    for col, grade in enumerate(grades):
        rows = sample[sample["kl_grade"] == grade].reset_index(drop=True)
        for row in range(per_grade):
            ax = axes[row, col]
            ax.set_axis_off()
            if row >= len(rows):
                continue
            image = Image.open(Path(dataset_dir) / rows.loc[row, "relpath"]).convert("L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
            ax.text(3, 12, f"{rows.loc[row, 'oai_id']}{rows.loc[row, 'side']}", color="yellow",
                    fontsize=7)
        axes[0, col].set_title(f"KL {grade}")
    fig.suptitle(f"Real OAI knee radiograph crops by KL grade ({split} split, Chen et al. 2019)")
    fig.tight_layout()
    return fig


def plot_radiograph_truth(cohort_root: str | Path, participant_id: str, knees: pd.DataFrame,
                          visit_month: int = 0):
    """The bilateral PA radiograph with its landmarks and each knee's reading.

    ``knees`` is :func:`kneelib.papers.cohort.cohort_knee_table`: KL and JSN grades come from the written
    ``kXR_SQ_BU`` table as read back, landmarks from ``ground_truth/radiograph_landmarks.csv``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from kneelib.data import read_image_index, read_radiograph
    from kneelib.synth.ground_truth import radiograph_landmarks

    root = Path(cohort_root)
    index = read_image_index(root)
    folder = index.find_series(participant_id, visit_month, RADIOGRAPH_DESCRIPTION)
    film = read_radiograph(folder)
    marks = radiograph_landmarks(root)
    marks = marks[marks["folder"] == folder.relative_to(index.root).as_posix()]
    fig, ax = plt.subplots(figsize=(10, 10 * film.pixels.shape[0] / film.pixels.shape[1] + 0.6))
    low, high = np.percentile(film.pixels, [0.5, 99.8])
    ax.imshow(film.pixels, cmap="gray", vmin=low, vmax=high)
    for side, colour in (("R", "tab:orange"), ("L", "tab:cyan")):
        part = marks[marks["side"] == side]
        ax.plot(part["col_px"], part["row_px"], "+", color=colour, ms=8, mew=1.5)
        reading = knees[(knees["ID"] == participant_id) & (knees["SIDE"] == (1 if side == "R" else 2))
                        & (knees["VISIT"] == visit_month)]
        centre = part[part["landmark"] == "joint_centre"]
        if len(reading) and len(centre):
            r = reading.iloc[0]
            ax.text(float(centre["col_px"].iloc[0]), 0.06 * film.pixels.shape[0],
                    f"{'right' if side == 'R' else 'left'} knee: KL {r['kl_grade']:.0f}, JSN M{r['jsn_medial']:.0f} "
                    f"L{r['jsn_lateral']:.0f}, JSW {r['min_medial_jsw_mm']:.2f} mm",
                    color=colour, ha="center", va="top", fontsize=9,
                    bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
    ax.set_axis_off()
    ax.set_title(f"Bilateral PA fixed-flexion radiograph, participant {participant_id}, month {visit_month} "
                 f"({film.pixel_spacing_mm[0]:g} mm pixels); + ground-truth landmarks", fontsize=10)
    fig.tight_layout()
    return fig


def plot_radiograph_crops(real_dir: str | Path, synthetic: pd.DataFrame, per_grade: int = 2,
                          image_size: int = 224, split: str = "train", seed: int = 0):
    """Real OAI knee crops (Chen et al.) above synthetic crops, one column per KL grade.

    Both are prepared the same way (:func:`kneelib.preprocess.radiograph.prepare_knee_image`:
    percentile clipping to [0, 1], bilinear resize to ``image_size``), not mirrored.
    Synthetic crops are a seeded sample of :func:`kneelib.synth.ground_truth.synthetic_knee_crops` per grade; an
    empty cell means the cohort has fewer knees of that grade.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from kneelib.preprocess.radiograph import prepare_knee_image, read_knee_image

    real = sample_kl_images(real_dir, per_grade, split=split, seed=seed)
    rng = np.random.default_rng(seed)
    grades = range(5)
    fig, axes = plt.subplots(2 * per_grade, 5, figsize=(10, 4.1 * per_grade), squeeze=False)
    for col, grade in enumerate(grades):
        real_rows = real[real["kl_grade"] == grade].reset_index(drop=True)
        synth_rows = synthetic[synthetic["kl_grade"] == grade].reset_index(drop=True)
        if len(synth_rows) > per_grade:
            synth_rows = synth_rows.iloc[np.sort(rng.choice(len(synth_rows), per_grade, replace=False))]
            synth_rows = synth_rows.reset_index(drop=True)
        for row in range(per_grade):
            for ax, table, kind in ((axes[row, col], real_rows, "real"),
                                    (axes[per_grade + row, col], synth_rows, "synthetic")):
                ax.set_xticks([])
                ax.set_yticks([])
                if row >= len(table):
                    ax.set_facecolor("#f4f4f4")
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="#888888")
                    continue
                if kind == "real":
                    image = read_knee_image(Path(real_dir) / table.loc[row, "relpath"])
                    name = f"{table.loc[row, 'oai_id']}{table.loc[row, 'side']}"
                else:
                    image = table.loc[row, "crop"]
                    name = f"{table.loc[row, 'participant_id']}{table.loc[row, 'side']}"
                ax.imshow(prepare_knee_image(image, image_size), cmap="gray", vmin=0, vmax=1)
                ax.text(3, 3, name, color="yellow", fontsize=7, va="top")
        axes[0, col].set_title(f"KL {grade}")
    for row in range(per_grade):
        axes[row, 0].set_ylabel("real (Chen)", fontsize=9)
        axes[per_grade + row, 0].set_ylabel("synthetic", fontsize=9)
    fig.suptitle("Knee-joint crops by KL grade: real OAI (Chen et al. 2019, top) and synthetic (bottom)")
    fig.tight_layout()
    return fig
