"""Evaluation of paper 004's grading networks: agreement tables, binary curves, Grad-CAM pointing game.

Tiulpin & Saarakkala (2020), *Test-set Performance* and Tables 2-3: quadratic kappa,
balanced accuracy, support-weighted F1 and MSE per head with stratified bootstrap 95%
CIs; ROC and precision-recall curves of KL >= 2, osteophyte >= 1 and JSN >= 1 (Fig. 3).
Every CI here resamples *subjects* (cluster bootstrap): a subject contributes two knees
and, in the synthetic cohort, two visits, which are not independent observations.
Kappa weights use each head's full grade scale (KL 0-4, OARSI features 0-3), not only
the grades that occur.

The osteophyte pointing game (not in the paper) asks whether each osteophyte head's
Grad-CAM (:mod:`kneelib.explain.gradcam`) peaks inside the approximate site box of
:func:`kneelib.preprocess.knee_crops.osteophyte_region_masks`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kneelib.data.knee_radiographs import GRADE_TASKS, TASK_GRADES, TASK_LABELS

__all__ = ["head_agreement", "table2", "table3", "wide_table", "evaluate_kl", "binary_curves",
           "BINARY_CURVES", "pointing_game_table", "kl_grad_cams"]

#: Curves of Fig. 3: name -> (head, lowest positive grade) pairs.
BINARY_CURVES: dict[str, list[tuple[str, int]]] = {
    "KL >= 2": [("kl", 2)],
    "osteophyte >= 1": [(t, 1) for t in ("osteophyte_fl", "osteophyte_fm", "osteophyte_tl", "osteophyte_tm")],
    "JSN >= 1": [("jsn_lateral", 1), ("jsn_medial", 1)],
}


def head_agreement(targets: np.ndarray, probabilities: dict, subjects, model: str, n_boot: int, seed: int,
                   metrics=("quadratic_kappa", "balanced_accuracy", "f1_weighted", "mse"),
                   cutpoints: dict | None = None) -> pd.DataFrame:
    """Agreement metrics per head, with subject-level stratified bootstrap 95% CIs.

    Parameters
    ----------
    targets : ndarray, (n, 7) int
        Reference grades (-1 missing), columns in :data:`GRADE_TASKS` order.
    probabilities : dict
        Head -> (n, n_grades) predicted probabilities; the predicted grade is the argmax,
        or the expected grade cut at ``cutpoints[head]`` when given
        (:func:`kneelib.stats.ordinal.decode_grades`).
    subjects : array-like, (n,)
        Subject of every row: the bootstrap resamples subjects.
    model : str
        Value of the ``model`` column.
    cutpoints : dict, optional
        Head -> cut-points or None (:attr:`kneelib.stats.ordinal.GradeDecoding.cutpoints`).

    Returns
    -------
    DataFrame
        ``metric, estimate, ci_low, ci_high, n, unit, task, model`` (heads with fewer
        than two known grades are left out).
    """
    from kneelib.stats.agreement import agreement_table
    from kneelib.stats.ordinal import decode_grades

    subjects = np.asarray(subjects)
    frames = []
    for index, task in enumerate(GRADE_TASKS):
        known = targets[:, index] >= 0
        if known.sum() < 2:
            continue
        predicted = decode_grades(probabilities[task][known], (cutpoints or {}).get(task))
        table = agreement_table(targets[known, index], predicted, metrics=list(metrics), n_boot=n_boot, seed=seed,
                                groups=subjects[known], grades=TASK_GRADES[task])
        frames.append(table.assign(task=task, model=model, n=int(known.sum())))
    return pd.concat(frames, ignore_index=True)


def table2(prepared, runs: list, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold kappa and balanced accuracy per head and backbone (Table 2 / Suppl. Table 1)."""
    return pd.concat([head_agreement(prepared.targets, run.oof, prepared.subjects, run.name, n_boot, seed,
                                     metrics=("quadratic_kappa", "balanced_accuracy")) for run in runs],
                     ignore_index=True)


def table3(prepared, probabilities: dict, n_boot: int = 200, seed: int = 0, model: str = "ensemble",
           cutpoints: dict | None = None) -> pd.DataFrame:
    """F1 (support-weighted), MSE, balanced accuracy, quadratic kappa with subject-bootstrap CIs (Table 3).

    ``cutpoints``: head -> cut-points on the expected grade, or None for arg-max (see
    :func:`head_agreement`).
    """
    return head_agreement(prepared.targets, probabilities, prepared.subjects, model, n_boot, seed,
                          cutpoints=cutpoints)


def wide_table(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model x head table of ``estimate [ci_low, ci_high]`` for one metric (paper's layout)."""
    part = long[long["metric"] == metric]
    cells = part.assign(cell=[f"{e:.2f} [{lo:.2f}, {hi:.2f}]" for e, lo, hi in
                              zip(part["estimate"], part["ci_low"], part["ci_high"])])
    wide = cells.pivot(index="model", columns="task", values="cell")
    return wide.reindex(columns=[t for t in TASK_LABELS if t in wide.columns]).rename(columns=TASK_LABELS)


def evaluate_kl(y_true, kl_probabilities: np.ndarray, y_train, subjects, n_boot: int = 1000, seed: int = 0,
                cutpoints=None):
    """Agreement of predicted KL grades with the reference, beside majority-grade and chance.

    Parameters
    ----------
    y_true : array-like of int
        Reference KL grades (0-4).
    kl_probabilities : ndarray, (n, 5)
    y_train : array-like of int
        Training grades (majority grade and the chance predictor's grade mix).
    subjects : array-like
        Subject of each row (both knees of a person): every CI resamples subjects.
    cutpoints : sequence of 4 floats, optional
        Grade by cutting the expected grade (:func:`kneelib.stats.ordinal.decode_grades`);
        ``None``: the arg-max.

    Returns
    -------
    dict
        ``predicted`` (grades), ``table`` (model, majority grade, chance x metrics with
        subject-level stratified bootstrap 95% CIs; kappa on the full KL scale 0-4),
        ``confusion`` (counts), ``confusion_percent``, ``confusion_low``,
        ``confusion_high`` (per-cell 95% CI in row percent).
    """
    from kneelib.stats.agreement import (agreement_table, chance_predictions, confusion,
                                         confusion_with_ci, majority_grade_predictions)
    from kneelib.stats.ordinal import decode_grades

    y_true = np.asarray(y_true).astype(int)
    subjects = np.asarray(subjects)
    predicted = decode_grades(kl_probabilities, cutpoints)
    prior = np.bincount(np.asarray(y_train).astype(int), minlength=5)
    common = dict(n_boot=n_boot, seed=seed, groups=subjects, grades=TASK_GRADES["kl"])
    tables = [
        agreement_table(y_true, predicted, label="model", **common),
        agreement_table(y_true, majority_grade_predictions(y_train, len(y_true)), label="majority grade", **common),
        agreement_table(y_true, chance_predictions(len(y_true), 5, seed=seed, prior=prior),
                        label="chance (training grade mix)", **common),
    ]
    percent, low, high = confusion_with_ci(y_true, predicted, 5, n_boot=n_boot, seed=seed, groups=subjects)
    return {"predicted": predicted, "table": pd.concat(tables, ignore_index=True),
            "confusion": confusion(y_true, predicted, 5), "confusion_percent": percent,
            "confusion_low": low, "confusion_high": high}


def binary_curves(prepared, probabilities: dict, n_boot: int = 200, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """ROC and precision-recall of KL >= 2, osteophyte >= 1 and JSN >= 1 (Fig. 3).

    The score of "grade >= g" is the summed probability of grades g and above. The AUC's
    95% CI is a subject-level bootstrap (a subject has several knee images, so DeLong's
    independent-rows interval does not apply).

    Returns
    -------
    table : DataFrame
        Per curve and head: positives, n, AUC with its CI and unit, average precision.
    curves : dict
        ``(curve, head label)`` -> dict of ``fpr, tpr, precision, recall, auc, ap, prevalence``
        for :func:`kneelib.figures.grading.plot_binary_curves`.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    from kneelib.stats.roc import auc_with_ci

    rows, curves = [], {}
    subjects = prepared.subjects
    for group, members in BINARY_CURVES.items():
        for task, threshold in members:
            index = GRADE_TASKS.index(task)
            known = prepared.targets[:, index] >= 0
            y = (prepared.targets[known, index] >= threshold).astype(int)
            score = probabilities[task][known][:, threshold:].sum(axis=1)
            label = TASK_LABELS[task]
            row = {"curve": group, "head": label, "positives": int(y.sum()), "n": len(y), "auc": np.nan,
                   "auc_ci_low": np.nan, "auc_ci_high": np.nan, "unit": "subjects", "average_precision": np.nan}
            if y.min() != y.max():
                auc = auc_with_ci(y, score, method="bootstrap", n_boot=n_boot, seed=seed, groups=subjects[known])
                ap = float(average_precision_score(y, score))
                fpr, tpr, _ = roc_curve(y, score)
                precision, recall, _ = precision_recall_curve(y, score)
                row.update(auc=auc.auc, auc_ci_low=auc.ci_low, auc_ci_high=auc.ci_high, unit=auc.unit,
                           average_precision=ap)
                curves[(group, label)] = {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall,
                                          "auc": auc.auc, "ap": ap, "prevalence": float(y.mean())}
            rows.append(row)
    return pd.DataFrame(rows), curves


def _network_inputs(images: np.ndarray, targets, image_size: int):
    """Central crops as the network sees them (global contrast normalised), a torch batch."""
    import torch

    from kneelib.train.multitask import RadiographDataset

    dataset = RadiographDataset(images, targets, image_size, augment=False)
    return torch.stack([dataset.image_tensor(i) for i in range(len(dataset))])


def pointing_game_table(model, prepared, image_size: int, tolerance_px: int = 0) -> tuple:
    """Osteophyte pointing game: does each osteophyte head's Grad-CAM peak fall in its site?

    For knees with grade >= 1 at a site, the Grad-CAM of that site's head (predicted
    grade) is computed on the network input (central crop) and its maximum tested
    against the approximate site box (``prepared.masks``, cropped like the input).
    Chance is the mean share of the input covered by the box (a uniformly random hot
    spot). Because a small input gives a coarse map (2 x 2 for ResNet-18 at 64 px),
    the test is also made at the map's own resolution
    (:func:`kneelib.explain.pointing.cell_pointing_hit`: the hottest cell overlaps the
    box), with its own chance (share of cells overlapping).

    Returns
    -------
    table : DataFrame
        Per head: knees, hits, pointing accuracy, chance, map cells, cell-level accuracy and chance.
    examples : dict
        Head -> (inputs, cams, masks, titles) of up to 4 knees for
        :func:`kneelib.figures.grading.plot_pointing_examples`.
    """
    from kneelib.explain.gradcam import grad_cam
    from kneelib.explain.pointing import cell_pointing_hit, mask_on_grid, pointing_hit

    size = prepared.images.shape[1]
    top = (size - image_size) // 2
    rows, examples = [], {}
    for task, masks in prepared.masks.items():
        index = GRADE_TASKS.index(task)
        chosen = np.flatnonzero(prepared.targets[:, index] >= 1)
        if len(chosen) == 0:
            rows.append({"head": TASK_LABELS[task], "knees": 0, "hits": 0, "pointing_accuracy": np.nan,
                         "chance": np.nan, "map_cells": "", "cell_pointing_accuracy": np.nan,
                         "cell_chance": np.nan})
            continue
        batch = _network_inputs(prepared.images[chosen], prepared.targets[chosen], image_size)
        cams, predicted = grad_cam(model, batch, task)
        cropped = masks[chosen][:, top:top + image_size, top:top + image_size]
        hits = [pointing_hit(cam, mask, tolerance_px) for cam, mask in zip(cams, cropped)]
        cell_hits = [cell_pointing_hit(cam, mask) for cam, mask in zip(cams, cropped)]
        cell_chance = np.mean([mask_on_grid(mask, cams.shape[1:]).mean() for mask in cropped])
        rows.append({"head": TASK_LABELS[task], "knees": len(chosen), "hits": int(np.sum(hits)),
                     "pointing_accuracy": float(np.mean(hits)), "chance": float(cropped.mean()),
                     "map_cells": f"{cams.shape[1]}x{cams.shape[2]}",
                     "cell_pointing_accuracy": float(np.mean(cell_hits)), "cell_chance": float(cell_chance)})
        titles = [f"{TASK_LABELS[task]} {prepared.targets[k, index]} -> {p} ({'hit' if h else 'miss'})"
                  for k, p, h in zip(chosen, predicted, hits)]
        keep = slice(0, 4)
        examples[task] = (batch[keep, 0].numpy(), cams[keep], cropped[keep], titles[keep])
    return pd.DataFrame(rows), examples


def kl_grad_cams(model, images: np.ndarray, grades, image_size: int, per_grade: int = 1, seed: int = 0):
    """Grad-CAM of the KL head for ``per_grade`` knees of every grade.

    Returns
    -------
    inputs : ndarray, (k, image_size, image_size)
        Network inputs.
    cams : ndarray
        Grad-CAM maps of the predicted grade.
    titles : list of str
        ``"KL <reference> -> predicted <grade>"``.
    """
    from kneelib.explain.gradcam import grad_cam

    grades = np.asarray(grades).astype(int)
    rng = np.random.default_rng(seed)
    chosen = []
    for grade in range(5):
        candidates = np.flatnonzero(grades == grade)
        if len(candidates):
            chosen.extend(rng.choice(candidates, size=min(per_grade, len(candidates)), replace=False))
    batch = _network_inputs(images[chosen], grades[chosen], image_size)
    cams, predicted = grad_cam(model, batch, "kl")
    titles = [f"KL {grades[i]} -> predicted {p}" for i, p in zip(chosen, predicted)]
    return batch[:, 0].numpy(), cams, titles
