"""Cross-validation and the saliency split of the Siamese knee-pain study (paper 000, Fig. 3-4).

Paper 000 (Chang et al. 2020), Methods (cross-validation paragraph): subject-level 10-fold
cross-validation stratified on the risk factors of OA (sex, age, BMI), "every subject in
the entire selected dataset appeared in the testing set exactly once"; the AUC of the
pooled out-of-fold ROC (Fig. 4A-B) and by subgroup (Fig. 4C). Methods "Class activation
mapping and radiologist review": a stratified 70:15:15 split on which the Siamese network
and the VGG16-CAM network are trained and their CAMs read on the test part (Fig. 3).

Every subject contributes one prediction, so the CIs are over subjects: the pooled AUC is
computed with ``groups`` = participant id (:func:`kneelib.stats.roc.auc_with_ci`), and the
per-fold and subgroup tables carry a ``unit`` column.

Strata are built so that every stratum holds at least as many subjects as the split has
folds (:func:`strata_for_folds`); scikit-learn's stratified splitters then never see a
class too small for the requested folds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kneelib.preprocess.siamese_inputs import PreprocessedCohort

__all__ = ["strata_for_folds", "CrossValidatedModel", "cross_validated_auc", "train_val_test_split",
           "SaliencyStudy", "saliency_study"]

#: Folds of the 70:15:15 split (:func:`kneelib.train.splits.stratified_train_val_test_split`
#: takes whole folds of a 20-fold split: 14 + 3 + 3).
_SPLIT_FOLDS = 20


def strata_for_folds(cohort: pd.DataFrame, n_splits: int) -> np.ndarray:
    """Strata (side x sex x age >= 60 x BMI >= 30) in which every stratum has ``n_splits`` subjects.

    :func:`kneelib.train.splits.make_strata` drops the least important factor of a stratum
    smaller than ``n_splits``; what is still too small is merged into the largest stratum
    of the same label (:func:`kneelib.train.siamese.merge_small_strata`), so no stratum
    has fewer members than folds.

    Parameters
    ----------
    cohort : DataFrame
        ``label``, ``sex``, ``age``, ``bmi`` per subject (no missing values: see
        :func:`kneelib.data.labels.exclude_missing_covariates`).
    n_splits : int

    Returns
    -------
    ndarray of str

    Raises
    ------
    ValueError
        When a label class has fewer than ``n_splits`` subjects.
    """
    from kneelib.train.siamese import merge_small_strata
    from kneelib.train.splits import make_strata

    labels = cohort["label"].to_numpy()
    strata = make_strata(labels, sex=cohort["sex"], age=cohort["age"], bmi=cohort["bmi"], min_count=n_splits)
    return merge_small_strata(strata, labels, n_splits)


@dataclass
class CrossValidatedModel:
    """Out-of-fold results of one model (A or B).

    Attributes
    ----------
    name : str
    cohort : DataFrame
        The subjects cross-validated, in the order of the predictions.
    result : kneelib.train.siamese.CrossValidationResult
    auc : kneelib.stats.roc.AucResult
        Pooled out-of-fold AUC, DeLong CI, ``unit == "subjects"``.
    per_fold, subgroups : DataFrame
        :func:`kneelib.stats.roc.per_fold_auc` and
        :func:`~kneelib.stats.roc.subgroup_auc_table`, with a ``unit`` column.
    subjects : ndarray of int or None
        Rows of the :class:`PreprocessedCohort`, in ``cohort`` order.
    """

    name: str
    cohort: pd.DataFrame
    result: object
    auc: object
    per_fold: pd.DataFrame
    subgroups: pd.DataFrame
    subjects: np.ndarray | None = None


def cross_validated_auc(name: str, data: PreprocessedCohort, subjects: np.ndarray, n_folds: int, config,
                        widths=None, seed: int = 0, show_progress: bool = True,
                        keep_models: bool = False) -> CrossValidatedModel:
    """Subject-level stratified k-fold CV, pooled, per-fold and subgroup AUC (paper 000, Fig. 4).

    Parameters
    ----------
    name : str
        ``"Model A"`` or ``"Model B"``.
    data : PreprocessedCohort
    subjects : array-like of int
        Rows of ``data`` to cross-validate (Model B: WOMAC difference above 2).
    n_folds : int
        10 in the paper.
    config : kneelib.train.siamese.TrainConfig
    widths : sequence of int or None
        Branch widths (:func:`kneelib.models.siamese.model_factory`).
    seed : int
    show_progress : bool
    keep_models : bool
        Keep each fold's network (for out-of-fold CAMs).

    Returns
    -------
    CrossValidatedModel
    """
    from kneelib.models.siamese import model_factory
    from kneelib.stats.roc import auc_with_ci, per_fold_auc, subgroup_auc_table
    from kneelib.train.siamese import cross_validate
    from kneelib.train.splits import stratified_kfold

    subjects = np.asarray(subjects, dtype=int)
    cohort = data.cohort.iloc[subjects].reset_index(drop=True)
    labels = cohort["label"].to_numpy()
    participant = cohort["participant_id"].astype(str).to_numpy()
    if len(np.unique(participant)) < len(participant):
        raise ValueError(f"{name}: a participant appears more than once; the CV predicts one row per subject")
    strata = strata_for_folds(cohort, n_folds)
    fold = stratified_kfold(labels, n_folds, strata=strata, seed=seed)
    images = data.images[subjects]
    result = cross_validate(images, labels, fold, model_factory(images.shape[2], widths), config, strata=strata,
                            show_progress=show_progress, keep_models=keep_models)
    auc = auc_with_ci(labels, result.probability, groups=participant)
    # one prediction per subject: the DeLong CIs of the tables are over subjects as well
    per_fold = per_fold_auc(labels, result.probability, fold).assign(unit=auc.unit)
    subgroups = subgroup_auc_table(labels, result.probability, cohort).assign(unit=auc.unit)
    return CrossValidatedModel(name, cohort, result, auc, per_fold, subgroups, subjects)


def train_val_test_split(cohort: pd.DataFrame, seed: int = 0):
    """The paper's stratified 70:15:15 subject split (Methods "Class activation mapping").

    Stratified like the folds (:func:`strata_for_folds` with the split's 20 folds). A cohort
    with fewer than 20 subjects of a side (the ``smoke`` run) gets a per-class shuffled
    70:15:15 split that keeps each class in every part of three or more subjects.

    Returns
    -------
    kneelib.train.splits.TrainValTestSplit
    """
    from kneelib.train.splits import TrainValTestSplit, stratified_train_val_test_split

    labels = cohort["label"].to_numpy()
    if np.bincount(labels.astype(int), minlength=2).min() >= _SPLIT_FOLDS:
        strata = strata_for_folds(cohort, _SPLIT_FOLDS)
        return stratified_train_val_test_split(labels, (0.70, 0.15, 0.15), strata=strata, seed=seed)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_test = max(1, int(round(0.15 * len(members))))
        n_val = max(1, int(round(0.15 * len(members)))) if len(members) > 2 else 0
        parts[2] += members[:n_test].tolist()
        parts[1] += members[n_test:n_test + n_val].tolist()
        parts[0] += members[n_test + n_val:].tolist()
    return TrainValTestSplit(*(np.sort(np.asarray(p, dtype=int)) for p in parts))


@dataclass
class SaliencyStudy:
    """CAMs of the test part of a 70:15:15 split, for the Siamese and the VGG16-CAM model.

    Attributes
    ----------
    test : ndarray of int
        Subjects (rows of the :class:`PreprocessedCohort`) in the test part.
    probability : dict of str to ndarray
        P(right knee painful) per model on ``test``.
    cams : dict of str to ndarray, shape (n_test, 2, n_slices, h, w)
        Maps explaining the knee with confirmed pain (the label), as in Fig. 3I.
    top_slice : dict of str to ndarray of int
        Slice with the highest mean CAM on the painful knee.
    hits : DataFrame
        One row per test subject and model (:func:`kneelib.explain.siamese_hot_spots.hot_spot_rows`).
    validation_auc : dict of str to AucResult
        AUC on the 15% validation part (over subjects).
    """

    test: np.ndarray
    probability: dict
    cams: dict
    top_slice: dict
    hits: pd.DataFrame
    validation_auc: dict = field(default_factory=dict)


def saliency_study(data: PreprocessedCohort, config, widths=None, seed: int = 0, show_progress: bool = True,
                   models=("siamese", "vgg16_cam")) -> SaliencyStudy:
    """Train each model on 70%, monitor on 15%, and score the CAMs of the 15% test part (Fig. 3).

    The radiologist review of Fig. 3I becomes: on the painful knee's top-CAM slice, which
    planted lesion holds the CAM maximum (:mod:`kneelib.explain.siamese_hot_spots`).
    """
    from kneelib.explain.cam import painful_knee_cams, siamese_cams, top_cam_slice
    from kneelib.explain.siamese_hot_spots import hot_spot_rows
    from kneelib.models.siamese import model_factory
    from kneelib.stats.roc import auc_with_ci
    from kneelib.train.siamese import predict_probability, train_siamese

    cohort = data.cohort
    labels = cohort["label"].to_numpy()
    participant = cohort["participant_id"].astype(str).to_numpy()
    split = train_val_test_split(cohort, seed)
    rng = np.random.default_rng(seed)
    probability, cams, top, validation_auc, rows = {}, {}, {}, {}, []
    for architecture in models:
        learner = train_siamese(data.images, labels, split.train,
                                model_factory(data.images.shape[2], widths, architecture),
                                config, valid_indices=split.val, show_progress=show_progress)
        standardization = learner.dls.standardization
        valid_probability = predict_probability(learner.model, data.images, split.val, standardization)
        if len(np.unique(labels[split.val])) == 2:
            validation_auc[architecture] = auc_with_ci(labels[split.val], valid_probability,
                                                       groups=participant[split.val])
        maps = siamese_cams(learner.model, data.images[split.test], target_class=labels[split.test],
                            standardization=standardization)
        probability[architecture] = maps.probability_right
        cams[architecture] = maps.cams
        painful = painful_knee_cams(maps.cams, labels[split.test])
        top[architecture] = top_cam_slice(painful)
        rows += hot_spot_rows(architecture, data, split.test, painful, top[architecture], maps.probability_right,
                              rng)
    return SaliencyStudy(split.test, probability, cams, top, pd.DataFrame(rows), validation_auc)
