"""Knee pain from paired knee MRI with a convolutional Siamese network (paper 000, Chang et al. 2020).

Composes the stage modules for the chapter ``notebooks/siamese_pain.ipynb``; it holds no
algorithm of its own:

1. cohort -- :func:`kneelib.data.labels.unilateral_pain_cohort` (Methods "Data"; Model B:
   WOMAC difference above 2), :func:`table1` (Table 1) and :func:`paper_fisher_check`;
2. preprocessing -- :func:`kneelib.preprocess.siamese_inputs.preprocess_cohort` (Methods
   "Image pre-processing" / "Image registration and quality check", Fig. 1; subjects
   missing a covariate are excluded there with their reason);
3. model -- :func:`kneelib.models.siamese.model_factory` (Fig. 2);
4. cross-validation -- :func:`kneelib.train.siamese_cv.cross_validated_auc` (Fig. 4A-C);
5. saliency -- :func:`kneelib.train.siamese_cv.saliency_study` and
   :mod:`kneelib.explain.siamese_hot_spots` (Fig. 3);
6. figures -- :mod:`kneelib.figures.siamese`;
7. :func:`comparisons` -- the paper-vs-reproduced rows saved with
   :func:`kneelib.report.save_metrics`.

Published values are read once from ``book/published.yml`` (``values: siamese_pain:``)
by :func:`published`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.labels import exclude_missing_covariates, unilateral_pain_cohort, womac_difference_exceeds
from kneelib.explain.siamese_hot_spots import (LESION_LABELS, hot_spot_rows, out_of_fold_hot_spots,
                                               pointing_table)
from kneelib.explain.siamese_hot_spots import lesion_table as _lesion_table
from kneelib.figures.siamese import plot_cam_comparison, plot_roc_panels
from kneelib.models.siamese import model_factory
from kneelib.preprocess.siamese_inputs import (LESION_NAMES, PreprocessConfig, PreprocessedCohort,
                                               center_slice_accuracy, preprocess_cohort)
from kneelib.train.siamese_cv import (CrossValidatedModel, SaliencyStudy, cross_validated_auc, saliency_study,
                                      train_val_test_split)

__all__ = [
    "STUDY", "LESION_NAMES", "LESION_LABELS", "published",
    "cohort_root", "unilateral_pain_cohort", "exclude_missing_covariates", "womac_difference_exceeds",
    "table1", "paper_fisher_check",
    "PreprocessConfig", "PreprocessedCohort", "preprocess_cohort", "center_slice_accuracy",
    "model_factory", "cross_validated_auc", "CrossValidatedModel", "train_val_test_split",
    "SaliencyStudy", "saliency_study", "hot_spot_rows", "out_of_fold_hot_spots",
    "lesion_table", "pointing_table", "comparisons", "plot_cam_comparison", "plot_roc_panels",
]

STUDY = "siamese_pain"


def published() -> dict:
    """The paper's values (``values: siamese_pain:`` of ``book/published.yml``)."""
    from kneelib.report import published_values

    return published_values(STUDY)


def cohort_root(preset: str = "default", seed: int = 0, n_subjects: int | None = None,
                progress: bool = True) -> tuple[Path, str]:
    """The OAI root to read: a real download when ``KNEELIB_DATA`` holds one, else the synthetic cohort.

    Returns
    -------
    root : Path
    description : str
        ``"real OAI"`` or ``"synthetic <preset>, seed <seed>"``.
    """
    from kneelib.config import oai_root
    from kneelib.synth.cohort import generate_cohort

    real = oai_root()
    if real is not None:
        return real, "real OAI"
    root = generate_cohort(preset=preset, seed=seed, n_subjects=n_subjects, progress=progress)
    return root, f"synthetic {preset}, seed {seed}"


def table1(cohort: pd.DataFrame) -> pd.DataFrame:
    """Table 1b-d: subjects, percent female, age and BMI by painful side, with t-test / Fisher p-values.

    scipy's "Precision loss occurred in moment calculation" warning is silenced here: it
    fires when one side's values are all equal (two subjects of the same age in the
    ``smoke`` cohort's Model B), a legal input for the pooled-variance t-test, whose
    p-value stays exact.
    """
    import warnings

    from kneelib.stats.group_tests import table1_by_group

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        return table1_by_group(cohort, "label", continuous=("age", "bmi"), sex="sex",
                               group_labels={0: "Left knee pain", 1: "Right knee pain"},
                               names={"age": "Age (years)", "bmi": "BMI"})


def paper_fisher_check() -> pd.DataFrame:
    """Fisher's exact test recomputed from the paper's own Table 1 counts and percentages.

    The printed p-values for percent female (0.700 Model A, 0.854 Model B) are checked
    against counts rebuilt as ``round(n * percent / 100)`` per side.
    """
    from scipy.stats import fisher_exact

    rows = []
    for model, values in published()["table1"].items():
        left, right = values["left"], values["right"]
        female_left = round(left["n"] * left["female_percent"] / 100)
        female_right = round(right["n"] * right["female_percent"] / 100)
        table = [[female_left, left["n"] - female_left], [female_right, right["n"] - female_right]]
        rows.append({"model": model, "female left": f"{female_left}/{left['n']}",
                     "female right": f"{female_right}/{right['n']}",
                     "printed p": values["p"]["female"], "recomputed p": float(fisher_exact(table)[1])})
    return pd.DataFrame(rows)


def lesion_table(hits: pd.DataFrame, model: str = "siamese") -> pd.DataFrame:
    """Fig. 3I: subjects by the lesion under the hot spot beside the paper's counts
    (:func:`kneelib.explain.siamese_hot_spots.lesion_table` with the published values)."""
    paper = published()
    counts = {name: value["subjects"] for name, value in paper["lesions"].items()}
    return _lesion_table(hits, model, paper_counts=counts, paper_total=paper["lesions_reviewed"])


def comparisons(models: dict, saliency: SaliencyStudy | None, pointing: pd.DataFrame | None,
                table1_by_model: dict, data_label: str, out_of_fold_hits: pd.DataFrame | None = None) -> list:
    """The :class:`kneelib.report.Comparison` rows of the chapter, the paper's values from :func:`published`.

    ``pointing`` may hold test-split and out-of-fold rows (:func:`pointing_table` of both);
    ``out_of_fold_hits`` (:func:`out_of_fold_hot_spots`) adds the lesion-under-hot-spot
    percentages over the whole cross-validated cohort. Every CI is over subjects (the
    note says so).
    """
    from kneelib.report import Comparison

    paper_values = published()
    rows = []
    for name, model in models.items():
        n = len(model.cohort)
        unit = getattr(model.auc, "unit", "observations")
        rows.append(Comparison(STUDY, f"ROC AUC, {name} (pooled out-of-fold)", paper_values["auc"][name],
                               model.auc.auc, model.auc.ci_low, model.auc.ci_high,
                               "Abstract; Fig. 4" + ("A" if name == "Model A" else "B"),
                               f"{data_label}, n={n}", f"DeLong 95% CI over {unit}"))
        for _, row in model.subgroups.iterrows():
            if row["subgroup"] == "Overall":
                continue
            rows.append(Comparison(STUDY, f"ROC AUC, {name}, {row['subgroup']}",
                                   paper_values["subgroup_auc"][name].get(row["subgroup"]),
                                   (f"not estimable ({int(row['n_positive'])} right / "
                                    f"{int(row['n']) - int(row['n_positive'])} left)")
                                   if pd.isna(row["auc"]) else float(row["auc"]),
                                   None if pd.isna(row["ci_low"]) else float(row["ci_low"]),
                                   None if pd.isna(row["ci_high"]) else float(row["ci_high"]),
                                   "Fig. 4C", f"{data_label}, n={int(row['n'])}",
                                   f"DeLong 95% CI over {row.get('unit', unit)}"))
        values = table1_by_model[name].attrs["values"]
        left, right = paper_values["table1"][name]["left"], paper_values["table1"][name]["right"]
        rows.append(Comparison(STUDY, f"Table 1, {name}: percent female, left / right pain",
                               f"{left['female_percent']} / {right['female_percent']}",
                               f"{values['female_percent'][0]:.1f} / {values['female_percent'][1]:.1f}",
                               source="Table 1", data=f"{data_label}, n={n}"))
        rows.append(Comparison(STUDY, f"Table 1, {name}: age (years), left / right pain",
                               f"{left['age_mean']} / {right['age_mean']}",
                               f"{values['age'][0]:.2f} / {values['age'][1]:.2f}", source="Table 1",
                               data=f"{data_label}, n={n}"))
        rows.append(Comparison(STUDY, f"Table 1, {name}: BMI, left / right pain",
                               f"{left['bmi_mean']} / {right['bmi_mean']}",
                               f"{values['bmi'][0]:.2f} / {values['bmi'][1]:.2f}", source="Table 1",
                               data=f"{data_label}, n={n}"))
    lesion_sources = []
    if saliency is not None:
        lesion_sources.append(("Test subjects", "test", lesion_table(saliency.hits)))
    if out_of_fold_hits is not None and len(out_of_fold_hits):
        lesion_sources.append(("Subjects (out-of-fold)", "out-of-fold",
                               lesion_table(out_of_fold_hits, model=out_of_fold_hits["model"].iloc[0])))
    for who, where, table in lesion_sources:
        n_scored = int(table["subjects"].sum())
        for _, row in table.iterrows():
            paper_percent = row["paper percent"]
            rows.append(Comparison(STUDY, f"{who} with {row['lesion']} under the Siamese CAM hot spot (%)",
                                   None if paper_percent == "" else float(paper_percent),
                                   float(row["percent"]), source="Fig. 3I",
                                   data=f"{data_label}, {where} n={n_scored}",
                                   note="planted masks instead of a radiologist review"))
    if pointing is not None:
        for _, row in pointing.iterrows():
            if not row.get("n scored"):
                continue
            rows.append(Comparison(STUDY, f"Pointing game, {row['model']} CAM (hot spot in a planted lesion)", None,
                                   float(row["pointing game"]), float(row["ci_low"]), float(row["ci_high"]),
                                   "(not in the paper)",
                                   f"{data_label}, {'out-of-fold' if 'out-of-fold' in row['model'] else 'test'} "
                                   f"n={int(row['n scored'])}",
                                   f"bootstrap 95% CI over {row['unit']}; "
                                   f"chance {row['chance (lesion area fraction)']:.3f} (lesion area), "
                                   f"random map {row['random 8x8 map']:.3f}"))
    return rows
