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
