"""Out-of-distribution score: distance of a network's features from the training images' features.

A grader answers for any input, also for images unlike its training data (an MRI slice,
a photograph, a hip radiograph). Following Lee et al. (2018), "A simple unified framework
for detecting out-of-distribution samples", the pooled features of the training images
are summarised by their mean and a low-rank covariance (the leading principal
components, plus one isotropic variance for the rest), and a new image is scored by
its Mahalanobis distance under that Gaussian. The threshold is a high quantile of the
scores of *held-out* training-distribution images (rows the network did not train on),
so about ``1 - quantile`` of in-distribution images are flagged by chance.

The pooled features alone are blind to inputs whose low-level statistics are
unlike a radiograph's but whose final features happen to be knee-like (a smooth synthetic
pattern). As in Lee et al.'s feature ensemble, :class:`LayeredDensity` keeps one
Gaussian per feature stage of the network (per-channel mean and standard deviation of
its activations, :func:`kneelib.train.multitask.layer_features`) and scores an image by
its largest stage score relative to that stage's held-out threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureDensity", "fit_feature_density", "LayeredDensity", "fit_layered_density", "density_from_dict"]


@dataclass(frozen=True)
class FeatureDensity:
    """A low-rank Gaussian of features and a flagging threshold.

    Attributes
    ----------
    mean : ndarray, (d,)
    components : ndarray, (k, d)
        Orthonormal leading principal directions.
    variances : ndarray, (k,)
        Variance along each component.
    residual_variance : float
        Mean variance per dimension outside the components.
    threshold : float
        Scores above it are flagged (:meth:`flag`).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float = float("inf")

    def score(self, features) -> np.ndarray:
        """Mahalanobis distance per row, normalised by the square root of the dimension."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"features must be (n, {len(self.mean)}), got shape {x.shape}")
        centred = x - self.mean
        projected = centred @ self.components.T
        residual = np.sum(centred ** 2, axis=1) - np.sum(projected ** 2, axis=1)
        squared = np.sum(projected ** 2 / self.variances, axis=1) + np.clip(residual, 0, None) / self.residual_variance
        return np.sqrt(squared / len(self.mean))

    def flag(self, features) -> np.ndarray:
        """True where the score exceeds the threshold."""
        return self.score(features) > self.threshold

    def with_threshold(self, held_out_features, quantile: float = 0.995) -> "FeatureDensity":
        """A copy whose threshold is the ``quantile`` of the scores of held-out in-distribution rows."""
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        scores = self.score(held_out_features)
        if len(scores) == 0:
            raise ValueError("the threshold needs at least one held-out row")
        return FeatureDensity(self.mean, self.components, self.variances, self.residual_variance,
                              float(np.quantile(scores, quantile)))

    def to_dict(self) -> dict:
        """Plain Python data (lists and floats), e.g. for a model file's metadata."""
        return {"mean": self.mean.astype(float).tolist(), "components": self.components.astype(float).tolist(),
                "variances": self.variances.astype(float).tolist(),
                "residual_variance": float(self.residual_variance), "threshold": float(self.threshold)}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureDensity":
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["components"], dtype=np.float64),
                   np.asarray(data["variances"], dtype=np.float64), float(data["residual_variance"]),
                   float(data["threshold"]))


def fit_feature_density(features, n_components: int = 32, eps: float = 1e-6) -> FeatureDensity:
    """Mean, leading principal components and residual variance of training features.

    Parameters
    ----------
    features : array-like, (n, d)
        Pooled features of the training images.
    n_components : int
        Principal directions kept (at most ``min(n - 1, d)``).
    eps : float
        Added to every variance (a feature that never varies must not divide by zero).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"features must be (n >= 3, d), got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = int(max(1, min(n_components, len(x) - 1, x.shape[1])))
    variances = singular[:k] ** 2 / (len(x) - 1) + eps
    rest = singular[k:] ** 2 / (len(x) - 1)
    residual = float(rest.sum() / max(1, x.shape[1] - k)) + eps
    return FeatureDensity(mean, vt[:k], variances, residual)


@dataclass(frozen=True)
class LayeredDensity:
    """One :class:`FeatureDensity` per feature stage; an image's score is its worst stage.

    Attributes
    ----------
    names : tuple of str
        Feature stages, keys of the feature dictionaries (:func:`kneelib.train.multitask.layer_features`).
    densities : tuple of FeatureDensity
        Per stage; each one's ``threshold`` is that stage's held-out quantile and
        normalises its scores.
    threshold : float
        The flagging threshold of the combined score (held-out quantile of it).
    """

    names: tuple
    densities: tuple
    threshold: float = float("inf")

    def stage_scores(self, features: dict) -> np.ndarray:
        """``(n, n_stages)`` scores, each divided by its stage's held-out threshold."""
        missing = [name for name in self.names if name not in features]
        if missing:
            raise ValueError(f"features lack the stages {missing}")
        return np.column_stack([d.score(features[name]) / d.threshold for name, d in zip(self.names, self.densities)])

    def score(self, features: dict) -> np.ndarray:
        """The largest normalised stage score of every row."""
        return self.stage_scores(features).max(axis=1)

    def flag(self, features: dict) -> np.ndarray:
        """True where the score exceeds the threshold."""
        return self.score(features) > self.threshold

    def to_dict(self) -> dict:
        """Plain Python data (lists and floats), e.g. for a model file's metadata."""
        return {"kind": "layered", "names": list(self.names), "threshold": float(self.threshold),
                "densities": [d.to_dict() for d in self.densities]}

    @classmethod
    def from_dict(cls, data: dict) -> "LayeredDensity":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["names"]), tuple(FeatureDensity.from_dict(d) for d in data["densities"]),
                   float(data["threshold"]))


def fit_layered_density(reference: dict, held_out: dict, quantile: float = 0.995,
                        n_components: int = 32) -> LayeredDensity:
    """A :class:`LayeredDensity` from training-row and held-out-row features of every stage.

    Each stage's Gaussian is fitted on ``reference`` and normalised by the ``quantile`` of
    its ``held_out`` scores; the combined threshold is the ``quantile`` of the held-out
    combined scores, so about ``1 - quantile`` of in-distribution images are flagged.

    Parameters
    ----------
    reference, held_out : dict
        Stage name -> ``(n, d)`` features (same stages in both).
    """
    if set(reference) != set(held_out):
        raise ValueError(f"reference stages {sorted(reference)} differ from held-out stages {sorted(held_out)}")
    names = tuple(reference)
    densities = tuple(fit_feature_density(reference[name], n_components).with_threshold(held_out[name], quantile)
                      for name in names)
    unscaled = LayeredDensity(names, densities)
    return LayeredDensity(names, densities, float(np.quantile(unscaled.score(held_out), quantile)))


def density_from_dict(data: dict):
    """A :class:`LayeredDensity` or (older model files) a :class:`FeatureDensity` from :meth:`to_dict` data."""
    if data.get("kind") == "layered":
        return LayeredDensity.from_dict(data)
    return FeatureDensity.from_dict(data)
