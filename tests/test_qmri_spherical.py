"""Tests of kneelib.qmri.spherical (paper 001, Methods "Spherical transformation", Fig. 5).

Vertices: 6000 evenly spread points (Fibonacci sphere) of radius 10 mm about a centre that is
not the origin. Smooth field ``f = x + z^2/2 + 0.6 x y + 0.4 y z`` (unit sphere, written in
theta and phi), amplitude about 1. Error bounds (asserted below):

- map of a field of theta and phi vs the analytic image at the pixel centres: every pixel
  within 0.005 (within 0.001 away from the south pole, phi > -pi/2 + 0.15, and in the seam
  columns theta = +-pi), no pixel missing;
- round trip vertices -> map -> inverse -> vertices: within 0.005 (bicubic) and 0.005
  (bilinear) at every vertex in the map's phi range; vertices outside it are NaN;
- inverse of a hot spot (Gaussian, sigma 1.5 pixels) drawn on the map: the vertices above half
  maximum are exactly those within the half-maximum radius (+-0.35 pixel), also for a spot on
  the theta = +-pi seam; vertex values within 0.05 of the analytic Gaussian.
"""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.qmri import QmriInputError
from kneelib.qmri.spherical import (PAPER_GRID, SphericalGrid, frame_from_axes, spherical_coordinates,
                                    spherical_map, spherical_maps, surface_values_from_map, vertices_in_pixel)

CENTRE = np.array([3.0, -2.0, 5.0])


def _field(theta, phi):
    x, y, z = np.cos(theta) * np.cos(phi), np.sin(theta) * np.cos(phi), np.sin(phi)
    return x + 0.5 * z ** 2 + 0.6 * x * y + 0.4 * y * z


@pytest.fixture(scope="module")
def sphere():
    i = np.arange(6000) + 0.5
    z = 1 - 2 * i / i.size
    azimuth = np.pi * (1 + 5 ** 0.5) * i
    unit = np.c_[np.sqrt(1 - z * z) * np.cos(azimuth), np.sqrt(1 - z * z) * np.sin(azimuth), z]
    theta, phi, rho = spherical_coordinates(10.0 * unit + CENTRE, CENTRE)
    return dict(unit=unit, theta=theta, phi=phi, rho=rho)


def test_spherical_coordinates_and_frame(sphere):
    assert np.allclose(sphere["rho"], 10.0)
    assert np.allclose(np.cos(sphere["phi"]) * np.cos(sphere["theta"]), sphere["unit"][:, 0])
    assert np.allclose(np.sin(sphere["phi"]), sphere["unit"][:, 2])
    # a frame whose z is the old -z (e.g. the tibia: shaft downwards) flips the elevation
    frame = frame_from_axes([0, 0, -1], [1, 0, 0])
    _, phi, _ = spherical_coordinates(10.0 * sphere["unit"] + CENTRE, CENTRE, frame)
    assert np.allclose(phi, -sphere["phi"])
    assert np.allclose(frame @ frame.T, np.eye(3)) and np.isclose(np.linalg.det(frame), 1.0)


def test_grid_of_the_paper():
    assert PAPER_GRID.shape == (224, 224) and PAPER_GRID.wraps
    assert np.isclose(PAPER_GRID.theta_centres[0] - PAPER_GRID.d_theta / 2, -np.pi)
    assert np.isclose(PAPER_GRID.theta_centres[-1] + PAPER_GRID.d_theta / 2, np.pi)
    assert np.isclose(PAPER_GRID.phi_centres[0] + PAPER_GRID.d_phi / 2, np.pi / 8)  # row 0 on top
    assert np.isclose(PAPER_GRID.phi_centres[-1] - PAPER_GRID.d_phi / 2, -np.pi / 2)
    row, column = PAPER_GRID.pixel_coordinates(PAPER_GRID.theta_centres[5] + 2 * np.pi, PAPER_GRID.phi_centres[7])
    assert np.isclose(row, 7) and np.isclose(column, 5)


def test_map_of_a_theta_phi_field_is_the_analytic_image(sphere):
    image = spherical_map(sphere["theta"], sphere["phi"], _field(sphere["theta"], sphere["phi"]))
    theta, phi = PAPER_GRID.angles()
    error = np.abs(image - _field(theta, phi))
    assert image.shape == (224, 224) and np.isfinite(image).all()
    assert error.max() < 0.005
    away = phi > -np.pi / 2 + 0.15
    assert error[away].max() < 0.001
    seam = np.zeros_like(away)
    seam[:, [0, 1, -2, -1]] = True
    assert error[seam & away].max() < 0.001


def test_round_trip_surface_map_surface(sphere):
    values = _field(sphere["theta"], sphere["phi"])
    image = spherical_map(sphere["theta"], sphere["phi"], values)
    inside = (sphere["phi"] >= PAPER_GRID.phi_min) & (sphere["phi"] <= PAPER_GRID.phi_max)
    for order in (3, 1):
        back = surface_values_from_map(image, sphere["theta"], sphere["phi"], order=order)
        assert np.isfinite(back[inside]).all() and np.isnan(back[~inside]).all()
        assert np.abs(back[inside] - values[inside]).max() < 0.005


def test_vertices_without_value_stay_out_of_the_map(sphere):
    # e.g. thickness: NaN on bone without cartilage (here: theta > 0)
    values = np.where(sphere["theta"] > 0, np.nan, 2.0)
    image = spherical_map(sphere["theta"], sphere["phi"], values, fill_value=0.0)
    theta, phi = PAPER_GRID.angles()
    # a few vertex spacings from the two borders (theta = 0, pi) and from the pole, where the two
    # halves meet physically (the mirrored copies make the nearest vertex the one across the pole)
    clear = (np.abs(np.sin(theta)) > 0.1) & (phi > -np.pi / 2 + 0.15)
    assert np.allclose(image[clear & (theta < 0)], 2.0)
    assert np.all(image[clear & (theta > 0)] == 0.0)


def test_maps_of_several_values_equal_each_map_alone(sphere):
    # a knee's bone: bone shape on every vertex, two cartilage values sharing their NaNs (one
    # triangulation), a T2 with NaNs of its own; each must come out as if mapped alone
    theta, phi = sphere["theta"], sphere["phi"]
    field = _field(theta, phi)
    cartilage = phi < -0.3
    t2_valued = cartilage & (theta < 1.0)
    values = {"bone_shape": 10 * field, "thickness": np.where(cartilage, 2 + field, np.nan),
              "thickness_normal": np.where(cartilage, 3 - 5 * field, np.nan),
              "t2": np.where(t2_valued, 40 + 8 * field, np.nan)}
    together = spherical_maps(theta, phi, values)
    assert list(together) == list(values)
    for name, v in values.items():
        np.testing.assert_array_equal(together[name], spherical_map(theta, phi, v))
    assert np.isfinite(together["t2"]).sum() < np.isfinite(together["thickness"]).sum()
    with pytest.raises(QmriInputError, match="at least 4"):
        spherical_maps(theta, phi, {"bone_shape": field, "empty": np.full(theta.size, np.nan)})


def _gaussian_spot(row0, column0, sigma):
    rows, columns = np.indices(PAPER_GRID.shape, dtype=float)
    d_column = np.mod(columns - column0 + PAPER_GRID.n_theta / 2, PAPER_GRID.n_theta) - PAPER_GRID.n_theta / 2
    return np.exp(-((rows - row0) ** 2 + d_column ** 2) / (2 * sigma ** 2))


@pytest.mark.parametrize("column0", [100.0, 223.3])  # in the middle, and on the theta = +-pi seam
def test_inverse_puts_a_hot_spot_on_the_right_vertices(column0):
    # a dense sample of directions near the spot: 200 000 Fibonacci points, those near phi of the spot
    i = np.arange(200_000) + 0.5
    z = 1 - 2 * i / i.size
    theta = np.mod(np.pi * (1 + 5 ** 0.5) * i + np.pi, 2 * np.pi) - np.pi
    phi = np.arcsin(z)
    row0, sigma = 60.0, 1.5
    row, column = PAPER_GRID.pixel_coordinates(theta, phi)
    d_column = np.mod(column - column0 + 112, 224) - 112
    near = (np.abs(row - row0) < 8) & (np.abs(d_column) < 8)
    distance = np.hypot(row - row0, d_column)[near]
    back = surface_values_from_map(_gaussian_spot(row0, column0, sigma), theta[near], phi[near])
    assert np.abs(back - np.exp(-distance ** 2 / (2 * sigma ** 2))).max() < 0.05
    half = sigma * np.sqrt(2 * np.log(2))
    hot = back > 0.5
    assert np.all(distance[hot] < half + 0.35) and np.all(hot[distance < half - 0.35])
    # the vertices behind the spot's pixel take (nearly) its value
    in_pixel = vertices_in_pixel(theta[near], phi[near], int(row0), int(round(column0)) % 224)
    assert in_pixel.any() and back[in_pixel].min() > 0.8


def test_bad_input_raises_typed_errors(sphere):
    with pytest.raises(QmriInputError, match="values"):
        spherical_map(sphere["theta"], sphere["phi"], np.zeros(3))
    with pytest.raises(QmriInputError, match="shape"):
        surface_values_from_map(np.zeros((10, 10)), sphere["theta"], sphere["phi"])
    with pytest.raises(QmriInputError, match="phi range"):
        SphericalGrid(phi_min=0.5, phi_max=0.1)
    with pytest.raises(QmriInputError, match="finite"):
        spherical_map([np.nan, 0, 1, 2], [0, 0, 0, 0], [1, 2, 3, 4])
    with pytest.raises(QmriInputError, match="at least 4"):
        spherical_map(sphere["theta"], sphere["phi"], np.full(sphere["theta"].size, np.nan))


def test_map_of_a_surface_met_twice_by_a_ray_stays_within_the_values():
    """Two layers of vertices at nearly the same angles (a notch seen from the centroid) with
    different values: the map averages them and never leaves the values' range."""
    rng = np.random.default_rng(3)
    n = 6000
    theta = rng.uniform(-np.pi, np.pi, n)
    phi = rng.uniform(-np.pi / 2, np.pi / 8, n)
    values = np.where(np.arange(n) % 2 == 0, 20.0, 60.0) + rng.normal(0.0, 0.5, n)
    theta2 = theta + rng.normal(0.0, 1e-4, n)  # near-duplicate angles, other layer's value
    image = spherical_map(np.r_[theta, theta2], np.r_[phi, phi], np.r_[values, values[::-1]])
    finite = image[np.isfinite(image)]
    assert finite.size > 0.9 * image.size
    assert finite.min() >= min(values.min(), values[::-1].min()) - 1e-9
    assert finite.max() <= max(values.max(), values[::-1].max()) + 1e-9
    assert abs(np.median(finite) - 40.0) < 5.0
    with pytest.raises(QmriInputError, match="oversample"):
        spherical_map(theta, phi, values, oversample=0)
