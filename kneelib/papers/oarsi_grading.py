"""Paper 004 -- Tiulpin & Saarakkala (2020), KL and OARSI grading of synthetic knee radiographs.

Composes the stage functions for ``notebooks/oarsi_grading.ipynb`` (all 7 heads on
synthetic OAI-format radiographs with an independent MOST-role cohort); it holds no
algorithm. The steps of the paper and where they live:

- data: :mod:`kneelib.data.knee_radiographs` (knee table, grades, landmarks, radiographs);
- knee localisation (*Data Pre-processing*, BoneFinder's role):
  :mod:`kneelib.preprocess.knee_localisation`, trained on a localisation split of
  subjects that takes no part in the grading cross-validation (:func:`localise_and_crop`);
- crops: :mod:`kneelib.preprocess.knee_crops`;
- training, CV, ensemble (*Training strategy*): :mod:`kneelib.train.grading`;
- Tables 2-3, Fig. 3, pointing game: :mod:`kneelib.train.grading_evaluation`;
- figures: :mod:`kneelib.figures.grading`;
- published values: ``book/published.yml`` (``values: oarsi_grading``).

The real-radiograph KL chapter is :mod:`kneelib.papers.kl_real_radiographs`; the
``grade-kl`` command is :mod:`kneelib.grade_kl`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import TASK_LABELS, load_synthetic_knees, read_radiographs
from kneelib.figures.grading import (plot_binary_curves, plot_confusions, plot_localisation,
                                     plot_pointing_examples)
from kneelib.preprocess.knee_crops import PreparedKnees, osteophyte_region_masks, prepare_knees
from kneelib.preprocess.knee_localisation import (fit_localiser, localisation_error_table, localisation_split,
                                                  save_knee_localiser)
from kneelib.train.grading import (BackboneRun, best_runs, cross_validate_backbone, ensemble_probabilities,
                                   set_determinism, subject_folds)
from kneelib.train.grading_evaluation import binary_curves, pointing_game_table, table2, table3, wide_table

__all__ = [
    "SYNTH_STUDY", "TASK_LABELS", "published", "load_synthetic_knees", "read_radiographs", "LocalisedKnees",
    "localise_and_crop", "PreparedKnees", "osteophyte_region_masks", "prepare_knees", "set_determinism",
    "subject_folds", "BackboneRun", "cross_validate_backbone", "table2", "table3", "wide_table", "best_runs",
    "ensemble_probabilities", "grade_decoding", "table3_beside_paper", "paper_table2", "first_visit_table", "binary_curves",
    "pointing_game_table", "plot_confusions", "plot_binary_curves", "plot_pointing_examples",
    "plot_localisation", "save_knee_localiser", "localiser_file_for", "fit_localiser", "localisation_error_table",
    "localisation_split",
    "synthetic_comparisons",
]

#: Name of the synthetic-radiograph notebook (metrics file, figures, published values).
SYNTH_STUDY = "oarsi_grading"


def published() -> dict:
    """The chapter's published values (``values: oarsi_grading`` of ``book/published.yml``)."""
    from kneelib.report import published_values

    return published_values(SYNTH_STUDY)


@dataclass
class LocalisedKnees:
    """Result of :func:`localise_and_crop`.

    Attributes
    ----------
    localiser : KneeLocaliser
        Trained on ``localisation_knees`` only.
    localisation_knees : DataFrame
        Knees of the localisation split (never graded).
    grading : PreparedKnees
        Crops of the remaining training-cohort knees (the cross-validation set).
    test : PreparedKnees
        Crops of the independent cohort.
    errors : DataFrame
        Per-knee localisation errors on the grading set and the independent cohort
        (``evaluated_on``), none of whose subjects trained the localiser.
    """

    localiser: object
    localisation_knees: pd.DataFrame
    grading: PreparedKnees
    test: PreparedKnees
    errors: pd.DataFrame


def localise_and_crop(knees: pd.DataFrame, test_knees: pd.DataFrame, radiographs: dict, image_size: int,
                      localisation_fraction: float = 0.2, localiser_epochs: int = 20, seed: int = 0,
                      progress: bool = True) -> LocalisedKnees:
    """Localisation split, localiser training, errors and 140 mm crops of every graded knee.

    A grade-stratified ``localisation_fraction`` of the training cohort's subjects
    trains the localiser and is then left out; every knee of the cross-validation set
    and of the independent cohort is cropped by that one localiser, which saw none of
    their subjects, so all folds are cropped alike (the crops refuse a subject the
    localiser trained on).
    """
    localisation_knees, grading_knees = localisation_split(knees, localisation_fraction, seed=seed)
    localiser = fit_localiser(localisation_knees, radiographs, n_epochs=localiser_epochs, seed=seed,
                              progress=progress)
    errors = pd.concat([
        localisation_error_table(localiser, grading_knees, radiographs)
        .assign(evaluated_on="training cohort, cross-validation subjects"),
        localisation_error_table(localiser, test_knees, radiographs).assign(evaluated_on="independent cohort"),
    ], ignore_index=True)
    grading = prepare_knees(grading_knees, radiographs, localiser, image_size, progress=progress)
    test = prepare_knees(test_knees, radiographs, localiser, image_size, progress=progress)
    return LocalisedKnees(localiser, localisation_knees, grading, test, errors)


def localiser_file_for(cohort_preset: str, n_subjects, localiser_epochs: int, seed: int):
    """Where the chapter keeps its knee localiser for ``grade-kl --localiser`` (in the cache's ``models``)."""
    from kneelib.config import cache_root

    subjects = "all" if n_subjects is None else f"{int(n_subjects)}subj"
    return (cache_root() / "models" / "oarsi_grading"
            / f"knee_localiser_{cohort_preset}_{subjects}_{int(localiser_epochs)}ep_seed{int(seed)}.pt")


def table3_beside_paper(test_long: pd.DataFrame) -> pd.DataFrame:
    """Head x metric estimates of the independent cohort beside the paper's Table 3 kappa and balanced accuracy."""
    paper = published()["table3"]["metrics"]
    table = test_long.pivot(index="task", columns="metric", values="estimate").reindex(list(TASK_LABELS))
    table["paper kappa"] = [paper[t]["quadratic_kappa"] for t in table.index]
    table["paper balanced accuracy"] = [paper[t]["balanced_accuracy"] for t in table.index]
    return table.rename(index=TASK_LABELS)


def paper_table2() -> pd.DataFrame:
    """The paper's Table 2 (out-of-fold kappa) in the layout of :func:`wide_table`."""
    return pd.DataFrame(published()["table2"]["kappa"]).T.rename(columns=TASK_LABELS).rename_axis("paper, Table 2")


def first_visit_table(test: PreparedKnees, probabilities: dict, n_boot: int, seed: int,
                      visit_month: int = 0, cutpoints: dict | None = None) -> pd.DataFrame:
    """Table 3 metrics on the first visit of the independent cohort only (paper: MOST first follow-up)."""
    first = (test.knees["visit_month"] == visit_month).to_numpy()
    return table3(test.subset(first), {task: p[first] for task, p in probabilities.items()}, n_boot=n_boot,
                  seed=seed, model="baseline only", cutpoints=cutpoints)


def grade_decoding(runs: list, prepared: PreparedKnees, folds: np.ndarray, method: str = "oof_cutpoints"):
    """How the ensemble turns probabilities into grades, chosen on out-of-fold predictions only.

    ``"argmax"``: the paper's arg-max for every head. ``"oof_cutpoints"``: per head, the
    expected grade cut at thresholds fitted on the ensemble members' mean out-of-fold
    probabilities, used only where cut-points cross-fitted over the CV folds beat arg-max
    (:func:`kneelib.stats.ordinal.choose_decoding`). The independent cohort is not read.
    """
    from kneelib.data.knee_radiographs import GRADE_TASKS
    from kneelib.stats.ordinal import GradeDecoding, choose_decoding
    from kneelib.train.grading import ensemble_out_of_fold

    if method not in ("argmax", "oof_cutpoints"):
        raise ValueError(f"unknown grade decoding {method!r}; expected 'argmax' or 'oof_cutpoints'")
    oof = ensemble_out_of_fold(runs)
    targets = {task: prepared.targets[:, i] for i, task in enumerate(GRADE_TASKS)}
    decoding = choose_decoding(oof, targets, folds)
    if method == "argmax":
        table = decoding.table.assign(decoding="arg-max", cutpoints="")
        return GradeDecoding({task: None for task in decoding.cutpoints}, table)
    return decoding


def synthetic_comparisons(long_table2: pd.DataFrame, long_table3: pd.DataFrame, ensemble_name: str,
                          data_cv: str, data_test: str, first_visit: pd.DataFrame | None = None) -> list:
    """Paper-vs-reproduced rows: Table 2 (best backbone's kappa), Table 3 (all metrics), first visit.

    Published values come from ``book/published.yml``; the CIs are subject-level bootstraps.
    """
    from kneelib.report import Comparison

    paper = published()
    paper_cv = paper["table2"]["kappa"][paper["table2"]["compared_row"]]
    rows = []
    best_cv = long_table2[long_table2["metric"] == "quadratic_kappa"].sort_values("estimate", ascending=False)
    for task in TASK_LABELS:
        part = best_cv[best_cv["task"] == task]
        if len(part):
            top = part.iloc[0]
            rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} kappa, out-of-fold (best backbone)",
                                   paper_cv[task], float(top["estimate"]), float(top["ci_low"]),
                                   float(top["ci_high"]), paper["table2"]["source"], data_cv,
                                   f"ours: {top['model']}; paper: {paper['table2']['compared_row']}"))
    for task, published_metrics in paper["table3"]["metrics"].items():
        part = long_table3[long_table3["task"] == task].set_index("metric")
        for metric, value in published_metrics.items():
            if metric not in part.index:
                continue
            est = part.loc[metric]
            rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} {metric.replace('_', ' ')} (test)", value,
                                   float(est["estimate"]), float(est["ci_low"]), float(est["ci_high"]),
                                   paper["table3"]["source"], data_test, f"ours: {ensemble_name}"))
    if first_visit is not None:
        for task, value in paper["first_visit"]["kappa"].items():
            part = first_visit[(first_visit["task"] == task) & (first_visit["metric"] == "quadratic_kappa")]
            if len(part):
                est = part.iloc[0]
                rows.append(Comparison(SYNTH_STUDY, f"{TASK_LABELS[task]} kappa (test, first visit only)", value,
                                       float(est["estimate"]), float(est["ci_low"]), float(est["ci_high"]),
                                       paper["first_visit"]["source"], data_test + ", baseline visit",
                                       f"ours: {ensemble_name}"))
    return rows
