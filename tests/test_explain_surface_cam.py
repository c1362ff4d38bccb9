"""Grad-CAM on the bone surface, weighted and compartment averages, pointing and overlap (paper 001)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kneelib.explain.surface_cam import (cam_on_surface, compartment_averages, region_overlap, surface_pointing,
                                         weighted_average)
from kneelib.qmri.spherical import PAPER_GRID


def test_a_cam_peak_comes_back_to_the_vertices_under_it():
    rng = np.random.default_rng(0)
    theta = rng.uniform(-np.pi, np.pi, 4000)
    phi = rng.uniform(-np.pi / 2, np.pi / 8, 4000)
    bone = SimpleNamespace(values_from_map=lambda image, grid, order: __import__(
        "kneelib.qmri.spherical", fromlist=["x"]).surface_values_from_map(image, theta, phi, grid, order=order))
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 1.0  # a peak on the feature grid
    values = cam_on_surface(bone, cam)
    peak = np.nanargmax(values)
    row, column = PAPER_GRID.pixel_coordinates(theta[peak], phi[peak])
    assert int(row // 56) == 1 and int(column // 56) == 2
    assert np.nanmin(values) >= 0


def test_weighted_and_compartment_averages():
    values = np.array([1.0, 2.0, 3.0, np.nan])
    assert weighted_average(values, [0, 1, 1, 5]) == pytest.approx(2.5)
    assert np.isnan(weighted_average(values, [0, 0, 0, 1]))
    bone = SimpleNamespace(vertices=np.array([[1.0, 0, 0], [-1.0, 0, 0], [2.0, 0, 0], [-3.0, 0, 0]]),
                           centroid_mm=np.zeros(3))
    lateral, medial = compartment_averages(bone, np.array([1.0, 5.0, 3.0, 7.0]), right=[1.0, 0, 0])
    assert (lateral, medial) == (2.0, 6.0)  # a right knee: medial towards the left (-right)


def test_pointing_and_overlap_against_chance():
    region = np.zeros(100, bool)
    region[:10] = True
    cam = np.linspace(0, 1, 100)
    assert surface_pointing(cam, region)["hit"] is False
    result = surface_pointing(cam[::-1], region)
    assert result["hit"] is True and result["chance"] == pytest.approx(0.1)
    assert surface_pointing(np.zeros(100), region)["hit"] is None
    found = np.zeros(100, bool)
    found[5:15] = True
    overlap = region_overlap(found, region)
    assert overlap["dice"] == pytest.approx(0.5) and overlap["precision"] == pytest.approx(0.5)
    assert overlap["chance"] == pytest.approx(0.1)
