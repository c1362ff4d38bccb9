"""Paper 004 -- Tiulpin & Saarakkala (2020), KL head on real knee radiographs (Chen et al. 2019 crops).

Composes the stage functions for ``notebooks/kl_real_radiographs.ipynb``; it holds no
algorithm:

- data: :mod:`kneelib.data.chen_kl` (subject-level train / internal validation / val;
  the subject is the OAI participant id of ``labels.csv``);
- preprocessing (*Data Pre-processing*): :func:`kneelib.preprocess.knee_crops.prepare_images`;
- training (*Training strategy*): :func:`kneelib.train.grading.train_kl_model`;
- statistics (*Test-set Performance*, Table 3): :func:`kneelib.train.grading_evaluation.evaluate_kl`,
  subject-level bootstrap CIs;
- the saved model and ``grade-kl``: :mod:`kneelib.grade_kl`;
- figures: :mod:`kneelib.figures.grading`;
- published values: ``book/published.yml`` (``values: kl_real_radiographs``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.chen_kl import KLCohort, cohort_summary, load_chen_kl_cohort
from kneelib.figures.grading import plot_confusion, plot_history, plot_kl_grad_cams, plot_metric_bars
from kneelib.grade_kl import grade_kl_folder, model_path_for, save_kl_model
from kneelib.preprocess.knee_crops import prepare_images
from kneelib.train.grading import set_determinism, train_kl_model
from kneelib.train.grading_evaluation import evaluate_kl, kl_grad_cams

__all__ = [
    "REAL_STUDY", "published", "KLCohort", "load_chen_kl_cohort", "cohort_summary", "prepare_images",
    "set_determinism", "train_kl_model", "evaluate_kl", "kl_grad_cams", "model_path_for", "save_kl_model",
    "grade_kl_folder", "plot_history", "plot_confusion", "plot_metric_bars", "plot_kl_grad_cams",
    "kl_comparisons",
]

#: Name of the real-data notebook (metrics file, model folder, published values).
REAL_STUDY = "kl_real_radiographs"

#: Reproduced metric -> quantity label of the comparison rows (paper's Table 3 metrics).
_TEST_QUANTITIES = {
    "quadratic_kappa": "KL quadratic kappa (test)",
    "balanced_accuracy": "KL balanced accuracy (test)",
    "f1_weighted": "KL F1, support-weighted (test)",
    "mse": "KL mean squared error (test)",
}


def published() -> dict:
    """The chapter's published values (``values: kl_real_radiographs`` of ``book/published.yml``)."""
    from kneelib.report import published_values

    return published_values(REAL_STUDY)


def kl_comparisons(table: pd.DataFrame, data: str, model_description: str = "single model",
                   study: str = REAL_STUDY) -> list:
    """Paper-vs-reproduced rows for the KL head (:class:`kneelib.report.Comparison`).

    Our held-out ``val`` numbers are set beside the paper's *test-set* numbers only
    (Table 3): the paper's OAI cross-validation kappa (Table 2) is out-of-fold on the
    training data, which this chapter does not compute, so no row compares with it.
    ``model_description`` says what was trained; it goes into each row's note.
    """
    from kneelib.report import Comparison

    test = published()["test"]
    model_rows = table[table["model"] == "model"].set_index("metric")
    note = (f"published on {test['measured_on']}; val is class-balanced (paper: MOST natural mix); "
            f"{model_description}, not the SE-ResNet/SE-ResNeXt ensemble")
    rows = []
    for metric, quantity in _TEST_QUANTITIES.items():
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=quantity, published=test[metric],
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source=test["source"], data=data, note=note))
    for metric, label in (("accuracy", "KL accuracy"), ("mae", "KL mean absolute error")):
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=label, published=None,
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source="not reported", data=data,
                               note="asked for by the issue; the paper gives no value"))
    return rows


#: Development records: the recipe comparison by subject-level cross-validation on ``train``
#: (written by :func:`compare_recipes`; ``val`` never enters it).
DEVELOPMENT_CV = Path(__file__).resolve().parents[2] / "params" / REAL_STUDY / "development_cv.csv"


def training_knees(cohort: KLCohort) -> pd.DataFrame:
    """Every knee of the ``train`` split: the training part and the internal validation part, in that order."""
    parts = []
    for part in (cohort.train, cohort.internal_val):
        part = part.copy()
        part.attrs = {}
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cv_metrics(grades, probabilities, folds) -> dict:
    """Out-of-fold agreement of one set of probabilities: kappa (arg-max and cross-fitted cut-points) and more."""
    from kneelib.stats.agreement import balanced_accuracy, quadratic_kappa
    from kneelib.stats.calibration import expected_calibration_error, negative_log_likelihood
    from kneelib.stats.ordinal import cross_fitted_grades

    grades = np.asarray(grades).astype(int)
    predicted = probabilities.argmax(axis=1)
    crossed = cross_fitted_grades(probabilities, grades, folds)
    return {"kappa": quadratic_kappa(grades, predicted, grades=range(5)),
            "kappa_cutpoints": quadratic_kappa(grades, crossed, grades=range(5)),
            "balanced_accuracy": balanced_accuracy(grades, predicted),
            "accuracy": float(np.mean(predicted == grades)), "mae": float(np.mean(np.abs(predicted - grades))),
            "nll": negative_log_likelihood(probabilities, grades),
            "ece": expected_calibration_error(probabilities, grades)}


def compare_recipes(recipes: dict, n_folds: int = 3, seed: int = 0, out_csv=None, mirror_side: str | None = "L",
                    n_subjects: int | None = None) -> pd.DataFrame:
    """Subject-level K-fold cross-validation of KL recipes on the ``train`` split only.

    Every recipe is trained on the same folds (:func:`kneelib.train.grading.kl_subject_folds`)
    and scored on its out-of-fold predictions, with and without flip TTA; a row is
    appended to ``out_csv`` as soon as a recipe finishes.

    Parameters
    ----------
    recipes : dict
        Name -> :class:`kneelib.train.grading.KLRecipe`.
    """
    from dataclasses import asdict

    from kneelib.train.grading import kl_subject_folds, train_kl_folds

    train = training_knees(load_chen_kl_cohort(internal_fraction=0.15, n_subjects=n_subjects, seed=seed))
    grades = train["kl_grade"].to_numpy()
    folds = kl_subject_folds(grades, train["subject_id"].to_numpy(), n_folds, seed)
    prepared = {}
    rows = []
    for name, recipe in recipes.items():
        if recipe.image_size not in prepared:
            prepared[recipe.image_size] = prepare_images(train, recipe.image_size, mirror_side, progress=False)
        result = train_kl_folds(prepared[recipe.image_size], grades, folds, recipe, seed=seed)
        for tta, p in (("plain", result.held_out), ("flip TTA", result.held_out_flip)):
            row = {"recipe": name, "inference": tta, **cv_metrics(grades, p, folds), "n_folds": n_folds,
                   "n_knees": len(grades), "mirror_side": mirror_side, "train_seconds": round(result.seconds, 1),
                   **{k: v for k, v in asdict(recipe).items() if k != "gamma_range"}}
            rows.append(row)
        if out_csv is not None:
            table = pd.DataFrame(rows)
            if Path(out_csv).is_file():
                old = pd.read_csv(out_csv)
                table = pd.concat([old[~old["recipe"].isin(table["recipe"])], table], ignore_index=True)
            table.to_csv(out_csv, index=False, float_format="%.4f")
    return pd.DataFrame(rows)


def development_cv() -> pd.DataFrame:
    """The committed recipe comparison (:data:`DEVELOPMENT_CV`)."""
    return pd.read_csv(DEVELOPMENT_CV)
