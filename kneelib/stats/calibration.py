"""Calibration of class probabilities: reliability table, expected calibration error, temperature scaling.

A grader's softmax is *calibrated* when, among the knees given a top probability of
about 0.7, about 70% get that grade right. The expected calibration error (ECE;
Guo et al. 2017, "On calibration of modern neural networks") bins the top-class
confidence into equal-width bins and averages ``|accuracy - confidence|`` weighted by
the share of rows in each bin. Temperature scaling divides the logits by one scalar
``T`` fitted to minimise the negative log-likelihood on held-out rows; it never changes
the arg-max grade, only how sure the model says it is. Here the logits are the log
probabilities (softmax is invariant to a constant per row), so saved probabilities
can be rescaled without the network.

The temperature must be fitted on rows the model did not train on and that are not the
reported test rows (out-of-fold or internal-validation predictions of the training set).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["apply_temperature", "fit_temperature", "reliability_table", "expected_calibration_error",
           "negative_log_likelihood"]


def _check(probabilities, y_true=None):
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (n, n_classes >= 2), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    if y_true is None:
        return p
    y = np.asarray(y_true).astype(int)
    if y.shape != (len(p),):
        raise ValueError(f"y_true has shape {y.shape}, expected ({len(p)},)")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"y_true must lie in 0..{p.shape[1] - 1}")
    return p, y


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Softmax of ``log(p) / temperature`` per row (``temperature`` 1 returns ``p`` renormalised)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = _check(probabilities)
    logits = np.log(np.clip(p, 1e-12, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities, y_true) -> float:
    """Mean negative log-likelihood of the reference classes."""
    p, y = _check(probabilities, y_true)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(probabilities, y_true, bounds=(0.05, 20.0)) -> float:
    """Temperature minimising the negative log-likelihood of ``y_true`` (bounded scalar search on log T)."""
    from scipy.optimize import minimize_scalar

    p, y = _check(probabilities, y_true)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one row")
    result = minimize_scalar(lambda log_t: negative_log_likelihood(apply_temperature(p, np.exp(log_t)), y),
                             bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def reliability_table(probabilities, y_true, n_bins: int = 10) -> pd.DataFrame:
    """Top-class confidence against accuracy in ``n_bins`` equal-width bins of (0, 1].

    Returns
    -------
    DataFrame
        One row per non-empty bin: ``bin_low, bin_high, n, confidence`` (mean top
        probability), ``accuracy`` (share whose arg-max is the reference), ``gap``
        (accuracy - confidence).
    """
    p, y = _check(probabilities, y_true)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        members = index == b
        if members.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": int(members.sum()),
                         "confidence": float(confidence[members].mean()),
                         "accuracy": float(correct[members].mean())})
    table = pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "confidence", "accuracy"])
    table["gap"] = table["accuracy"] - table["confidence"]
    return table


def expected_calibration_error(probabilities, y_true, n_bins: int = 10) -> float:
    """ECE: share-weighted mean of ``|accuracy - confidence|`` over the bins of :func:`reliability_table`."""
    table = reliability_table(probabilities, y_true, n_bins)
    if table.empty:
        return float("nan")
    return float(np.sum(table["n"] * np.abs(table["gap"])) / table["n"].sum())
