"""Clinical baselines on the folds of the image model (paper 002; OAI progression practice).

The paper compares its model with radiologists only. Whether images add anything is measured
here: logistic regressions (scikit-learn, L2 with C=1 on standardised inputs) on the baseline
clinical variables, on the baseline KL grade alone and on the baseline JSW alone, trained on
``fold != k`` and predicting ``fold == k`` with exactly the folds of the image model, as the
Oulu group's OAI progression studies (OAProgression, OAProgressionMR) do.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["cross_validated_logistic"]


def cross_validated_logistic(table: pd.DataFrame, columns, labels, fold) -> np.ndarray:
    """Out-of-fold probability of class 1 from a logistic regression on ``columns``.

    Parameters
    ----------
    table : DataFrame
        One row per knee.
    columns : sequence of str
        Predictors (numeric, no missing values).
    labels : array-like of {0, 1}
    fold : array-like of int
        Test fold per row (subject-level).

    Returns
    -------
    ndarray of float

    Raises
    ------
    ValueError
        For missing predictors, missing values or a training fold with one class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = list(columns)
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise ValueError(f"table lacks predictor columns {absent}")
    x = table[columns].to_numpy(float)
    y = np.asarray(labels).astype(int)
    fold = np.asarray(fold)
    if not (len(x) == len(y) == len(fold)):
        raise ValueError(f"table ({len(x)}), labels ({len(y)}) and fold ({len(fold)}) differ in length")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"predictors {columns} hold missing values")
    out = np.full(len(y), np.nan)
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        if len(np.unique(y[train])) < 2:
            raise ValueError(f"training part of fold {k} holds one class only")
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        model.fit(x[train], y[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return out
