"""Rigid ICP and value transfer to a reference surface (kneelib.qmri.correspondence)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kneelib.qmri.correspondence import rigid_icp, values_on_reference


def _ellipsoid(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points * np.array([30.0, 20.0, 12.0])


def test_icp_recovers_a_small_rigid_motion():
    target = _ellipsoid()
    rotation = Rotation.from_euler("xyz", [8, -5, 6], degrees=True).as_matrix()
    source = (target - [2.0, -1.0, 3.0]) @ rotation.T
    result = rigid_icp(source, target)
    assert result.rms_mm < 0.05
    assert np.allclose(result.apply(source), target, atol=0.2)


def test_values_follow_their_points_to_the_reference():
    reference = _ellipsoid(seed=1)
    moved = reference @ Rotation.from_euler("z", 7, degrees=True).as_matrix().T + 1.5
    values = reference[:, 0] > 10  # a lateral cap
    carried, icp = values_on_reference(reference, moved, values.astype(float))
    assert icp is not None and np.mean(carried == values) > 0.99
    with pytest.raises(ValueError):
        values_on_reference(reference, moved, values[:5])
    with pytest.raises(ValueError):
        rigid_icp(np.zeros((2, 3)), reference)
