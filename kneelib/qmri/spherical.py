"""2-D spherical maps of bone-surface biomarkers (paper 001) and their inverse, back onto the surface.

Paper 001 (Morales et al.), Methods, "Spherical transformation": the surface points are
described about the centre of the bone by "the angle along the x-y plane from the positive
x-axis (theta), the elevation angle from the x-y plane (phi) and the distance from the center
[...] to the sampled point in the surface (rho)"; theta is sampled from -pi to +pi and phi from
-pi/2 to +pi/8 on a 224 x 224 grid ("to conform to the ImageNet image size") and "bicubic
interpolation was performed between the sampled points". Results / Fig. 5: "we leveraged the
invertible property of our spherical transformation method to generate articular surface
importance heat maps" (Grad-CAM on the map, carried back to the surface).

- :class:`SphericalGrid` holds the grid (:data:`PAPER_GRID` the paper's): column ``j`` is centred
  at ``theta_min + (j + 0.5) dtheta`` (so -pi and +pi are the outer edges of the first and last
  columns, no column twice), row ``i`` at ``phi_max - (i + 0.5) dphi`` (row 0 on top, the
  highest elevation, as an image is shown).
- :func:`spherical_coordinates` gives (theta, phi, rho) of points about a centre in a chosen
  frame (:func:`frame_from_axes`; the paper's phi range puts the articular surface at negative
  elevation, so ``z`` points from the joint towards the shaft).
- :func:`spherical_map`: per-vertex values to the grid by scipy ``griddata`` (``"cubic"``:
  Clough-Tocher, the bicubic-type interpolant on scattered points) in the (theta, phi) plane.
  theta wraps around: vertices within a margin of +-pi are copied 2 pi across, and vertices near
  a pole are mirrored over it (``(theta + pi, -pi - phi)``), so the pixels at the seam and next
  to the pole are interpolated, not extrapolated. Vertices without a value (NaN, e.g. bone
  without cartilage) keep their place: pixels nearer to such a vertex than to any valued one are
  ``fill_value``.
- :func:`surface_values_from_map` is the inverse: the 2-D map (a biomarker map or a Grad-CAM)
  sampled at each vertex's (theta, phi), bicubic (``order=3``) or bilinear (``order=1``) with
  theta wrapped; :func:`vertices_in_pixel` lists the vertices behind one pixel.

A surface that a ray from the centre meets more than once (e.g. the intercondylar notch seen
from the femur's centroid) maps several vertices to one (theta, phi); the map then mixes their
values and the inverse gives them the same value, as in the paper's transformation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage
from scipy.interpolate import griddata
from scipy.spatial import cKDTree

from kneelib.qmri import QmriInputError

__all__ = [
    "SphericalGrid",
    "PAPER_GRID",
    "frame_from_axes",
    "spherical_coordinates",
    "spherical_map",
    "spherical_maps",
    "surface_values_from_map",
    "vertices_in_pixel",
]


@dataclass(frozen=True)
class SphericalGrid:
    """The pixel grid of a spherical map (paper 001, "Spherical transformation").

    Attributes
    ----------
    n_theta, n_phi : int
        Columns (theta) and rows (phi); 224 x 224 in the paper.
    theta_min, theta_max : float
        -pi to pi in the paper; a 2 pi span wraps around.
    phi_min, phi_max : float
        Elevation range, -pi/2 to pi/8 in the paper; row 0 is at ``phi_max``.
    """

    n_theta: int = 224
    n_phi: int = 224
    theta_min: float = -np.pi
    theta_max: float = np.pi
    phi_min: float = -np.pi / 2
    phi_max: float = np.pi / 8

    def __post_init__(self):
        if self.n_theta < 2 or self.n_phi < 2:
            raise QmriInputError(f"needs at least 2 x 2 pixels, got {self.n_phi} x {self.n_theta}",
                                 what="spherical grid")
        if not (self.theta_max > self.theta_min and self.theta_max - self.theta_min <= 2 * np.pi + 1e-9):
            raise QmriInputError(f"theta range ({self.theta_min}, {self.theta_max}) must be increasing, at most 2 pi",
                                 what="spherical grid")
        if not (-np.pi / 2 - 1e-9 <= self.phi_min < self.phi_max <= np.pi / 2 + 1e-9):
            raise QmriInputError(f"phi range ({self.phi_min}, {self.phi_max}) must be increasing within "
                                 "[-pi/2, pi/2]", what="spherical grid")

    @property
    def wraps(self) -> bool:
        """True when theta spans the full circle (the left and right edges meet)."""
        return bool(np.isclose(self.theta_max - self.theta_min, 2 * np.pi))

    @property
    def d_theta(self) -> float:
        return (self.theta_max - self.theta_min) / self.n_theta

    @property
    def d_phi(self) -> float:
        return (self.phi_max - self.phi_min) / self.n_phi

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) = (n_phi, n_theta)."""
        return (self.n_phi, self.n_theta)

    @property
    def theta_centres(self) -> np.ndarray:
        return self.theta_min + (np.arange(self.n_theta) + 0.5) * self.d_theta

    @property
    def phi_centres(self) -> np.ndarray:
        return self.phi_max - (np.arange(self.n_phi) + 0.5) * self.d_phi

    def angles(self) -> tuple[np.ndarray, np.ndarray]:
        """theta and phi of every pixel centre, each of shape :attr:`shape`."""
        return np.meshgrid(self.theta_centres, self.phi_centres)

    def pixel_coordinates(self, theta, phi) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, column) of angles; pixel centres are integers, theta wrapped into the range."""
        theta = np.asarray(theta, dtype=float)
        if self.wraps:
            theta = self.theta_min + np.mod(theta - self.theta_min, 2 * np.pi)
        column = (theta - self.theta_min) / self.d_theta - 0.5
        row = (self.phi_max - np.asarray(phi, dtype=float)) / self.d_phi - 0.5
        return row, column


#: The grid of paper 001: 224 x 224, theta -pi..pi, phi -pi/2..pi/8.
PAPER_GRID = SphericalGrid()


def frame_from_axes(z_axis, x_axis) -> np.ndarray:
    """Right-handed orthonormal frame (rows: x, y, z unit vectors) from a z direction and an x direction.

    ``x_axis`` is made orthogonal to ``z_axis`` (Gram-Schmidt). For the paper's phi range
    (-pi/2 to pi/8) ``z_axis`` should point from the articular surface towards the shaft (e.g.
    superior for the femur, inferior for the tibia), so the articular surface lies at negative
    elevation.
    """
    z = np.asarray(z_axis, dtype=float).reshape(-1)
    x = np.asarray(x_axis, dtype=float).reshape(-1)
    if z.size != 3 or x.size != 3 or np.linalg.norm(z) == 0:
        raise QmriInputError("z_axis and x_axis need 3 values each, z non-zero", what="spherical frame")
    z = z / np.linalg.norm(z)
    x = x - (x @ z) * z
    if np.linalg.norm(x) < 1e-9:
        raise QmriInputError("x_axis is parallel to z_axis", what="spherical frame")
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def spherical_coordinates(points, centre, frame=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """theta (azimuth from +x in the x-y plane), phi (elevation from the x-y plane) and rho of points.

    Paper 001, "Spherical transformation" (Fig. 3a).

    Parameters
    ----------
    points : ndarray, (n, 3)
        E.g. the vertices of a bone-surface mesh (mm).
    centre : sequence of 3 float
        The bone's centre (e.g. its volumetric centroid).
    frame : ndarray (3, 3), optional
        Rows: the x, y, z unit vectors in the points' coordinates (:func:`frame_from_axes`);
        default the identity.

    Returns
    -------
    theta : ndarray, in (-pi, pi]
    phi : ndarray, in [-pi/2, pi/2]
    rho : ndarray
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3:
        raise QmriInputError(f"points need shape (n, 3), got {points.shape}", what="spherical coordinates")
    centre = np.asarray(centre, dtype=float).reshape(-1)
    if centre.size != 3:
        raise QmriInputError(f"centre needs 3 values, got {centre.size}", what="spherical coordinates")
    local = points - centre
    if frame is not None:
        frame = np.asarray(frame, dtype=float)
        if frame.shape != (3, 3) or not np.allclose(frame @ frame.T, np.eye(3), atol=1e-6):
            raise QmriInputError("frame must be a 3 x 3 orthonormal matrix (rows x, y, z)",
                                 what="spherical coordinates")
        local = local @ frame.T
    rho = np.linalg.norm(local, axis=1)
    theta = np.arctan2(local[:, 1], local[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.arcsin(np.clip(np.where(rho > 0, local[:, 2] / rho, 0.0), -1.0, 1.0))
    return theta, phi, rho


def _check_angles_values(theta, phi, values, what):
    theta = np.asarray(theta, dtype=float).reshape(-1)
    phi = np.asarray(phi, dtype=float).reshape(-1)
    if theta.shape != phi.shape:
        raise QmriInputError(f"theta ({theta.size}) and phi ({phi.size}) differ in length", what=what)
    if values is not None:
        values = np.asarray(values, dtype=float).reshape(-1)
        if values.shape != theta.shape:
            raise QmriInputError(f"{values.size} values for {theta.size} vertices", what=what)
    if np.any(~np.isfinite(theta) | ~np.isfinite(phi)):
        raise QmriInputError("theta and phi must be finite", what=what)
    return theta, phi, values


def _pad_angles(theta, phi, grid: SphericalGrid, margin_pixels: float):
    """Copies of the vertices across the poles and the theta seam, so interpolation reaches the edges.

    Returns the padded angles and, per padded point, the index of the vertex it copies.
    """
    # at least three typical vertex spacings (a sphere's vertices spread evenly), so the copies
    # surround the edge pixels even for a coarse mesh
    spacing = float(np.sqrt(4 * np.pi / max(theta.size, 1)))
    margin_phi = max(margin_pixels * grid.d_phi, 3 * spacing)
    margin_theta = max(margin_pixels * grid.d_theta, 3 * spacing)
    source = np.arange(theta.size)
    theta_all, phi_all, source_all = [theta], [phi], [source]
    for pole, sign in ((-np.pi / 2, -1.0), (np.pi / 2, 1.0)):
        edge = grid.phi_min if sign < 0 else grid.phi_max
        if abs(edge - pole) <= margin_phi:  # the grid reaches the pole: mirror over it
            near = np.abs(phi - pole) <= margin_phi
            theta_all.append(np.mod(theta[near] + 2 * np.pi, 2 * np.pi) - np.pi)  # theta + pi, wrapped
            phi_all.append(2 * pole - phi[near])
            source_all.append(source[near])
    theta, phi, source = (np.concatenate(a) for a in (theta_all, phi_all, source_all))
    if grid.wraps:
        theta = grid.theta_min + np.mod(theta - grid.theta_min, 2 * np.pi)
        low = theta < grid.theta_min + margin_theta
        high = theta > grid.theta_max - margin_theta
        theta = np.concatenate([theta, theta[low] + 2 * np.pi, theta[high] - 2 * np.pi])
        phi = np.concatenate([phi, phi[low], phi[high]])
        source = np.concatenate([source, source[low], source[high]])
    keep = (phi >= grid.phi_min - margin_phi) & (phi <= grid.phi_max + margin_phi)
    return theta[keep], phi[keep], source[keep]


def _bin_means(theta, phi, values, grid: SphericalGrid, oversample: int):
    """Mean angles and values (``values``: (n, k)) of the points in each bin of ``1 / oversample`` grid pixel."""
    if int(oversample) < 1:
        raise QmriInputError(f"oversample must be a positive integer, got {oversample}", what="spherical map")
    column = np.floor((theta - grid.theta_min) / grid.d_theta * oversample).astype(np.int64)
    row = np.floor((grid.phi_max - phi) / grid.d_phi * oversample).astype(np.int64)
    column -= column.min()
    row -= row.min()
    key = row * (int(column.max()) + 1) + column
    unique, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    def mean(a):
        return np.bincount(inverse, weights=a, minlength=unique.size) / counts
    return mean(theta), mean(phi), np.stack([mean(v) for v in values.T], axis=1)


def spherical_map(theta, phi, values, grid: SphericalGrid = PAPER_GRID, *, method: str = "cubic",
                  fill_value: float = np.nan, margin_pixels: float = 8.0, wrap: bool = True,
                  oversample: int = 2) -> np.ndarray:
    """2-D spherical map of per-vertex values (paper 001, "Spherical transformation", Fig. 3b-d).

    The valued vertices are first averaged in bins of ``1 / oversample`` pixel (angles and
    values): a surface that a ray from the centre meets more than once puts vertices with
    different values at almost the same (theta, phi), and the cubic interpolant through such
    near-duplicates swings far beyond the data (a bone shape of -50 mm). The map is then
    clipped to the range of the vertex values. One map of :func:`spherical_maps`.

    Parameters
    ----------
    theta, phi : ndarray, (n,)
        Angles of the vertices (:func:`spherical_coordinates`).
    values : ndarray, (n,)
        One value per vertex (bone shape, thickness, T2); NaN where there is none (e.g. bone
        without cartilage).
    grid : SphericalGrid
        Default the paper's 224 x 224 grid.
    method : {"cubic", "linear", "nearest"}
        scipy ``griddata`` method; "cubic" (Clough-Tocher) is the paper's bicubic interpolation.
    fill_value : float
        Pixels nearer to a vertex without a value than to any valued one, and pixels the vertices
        do not surround.
    margin_pixels : float
        Width (pixels) of the copies across the theta seam and over a pole.
    wrap : bool
        Copy vertices across the theta seam (for a 2 pi grid); False only to show what the
        seam looks like without it.
    oversample : int
        Bins per pixel along each axis for the averaging of near-duplicate vertices.

    Returns
    -------
    ndarray, :attr:`SphericalGrid.shape`

    Raises
    ------
    QmriInputError
        Lengths differ, non-finite angles, unknown method, fewer than 4 valued vertices.
    """
    return spherical_maps(theta, phi, {"map": values}, grid, method=method, fill_value=fill_value,
                          margin_pixels=margin_pixels, wrap=wrap, oversample=oversample)["map"]


def spherical_maps(theta, phi, values: Mapping[str, np.ndarray], grid: SphericalGrid = PAPER_GRID, *,
                   method: str = "cubic", fill_value: float = np.nan, margin_pixels: float = 8.0,
                   wrap: bool = True, oversample: int = 2) -> dict[str, np.ndarray]:
    """:func:`spherical_map` of several per-vertex values of one surface, sharing the work.

    The padding over the seam and poles and the nearest-vertex lookup are done once, and the
    values with the same valued vertices share one triangulation (``griddata`` of a (n, k)
    array interpolates each column as on its own): the same maps as one call per value, in
    a fraction of the time (a knee's 18 maps, paper 001 "Spherical transformation").

    Parameters
    ----------
    theta, phi : ndarray, (n,)
    values : mapping of str to ndarray (n,)
    grid, method, fill_value, margin_pixels, wrap, oversample
        As :func:`spherical_map`.

    Returns
    -------
    dict of str to ndarray, :attr:`SphericalGrid.shape`
        Same keys as ``values``.

    Raises
    ------
    QmriInputError
        As :func:`spherical_map`, for any of the values.
    """
    theta, phi, _ = _check_angles_values(theta, phi, None, "spherical map")
    values = {name: _check_angles_values(theta, phi, v, "spherical map")[2] for name, v in values.items()}
    if method not in ("cubic", "linear", "nearest"):
        raise QmriInputError(f"method must be 'cubic', 'linear' or 'nearest', got {method!r}", what="spherical map")
    source = np.arange(theta.size)
    if wrap:
        theta, phi, source = _pad_angles(theta, phi, grid, margin_pixels)
    grid_theta, grid_phi = grid.angles()
    values = {name: v[source] for name, v in values.items()}  # the padded copies carry their vertex's value
    groups: dict[bytes, list[str]] = {}
    valued_of = {}
    for name, v in values.items():
        valued = np.isfinite(v)
        if valued.sum() < 4:
            raise QmriInputError(f"{int(valued.sum())} vertices with a value in the map's range; needs at least 4",
                                 what="spherical map")
        valued_of[name] = valued
        groups.setdefault(np.packbits(valued).tobytes(), []).append(name)
    nearest = None
    out = {}
    for names in groups.values():
        valued = valued_of[names[0]]
        stacked = np.stack([values[n][valued] for n in names], axis=1)
        bin_theta, bin_phi, bin_values = _bin_means(theta[valued], phi[valued], stacked, grid, oversample)
        images = griddata((bin_theta, bin_phi), bin_values, (grid_theta, grid_phi), method=method,
                          fill_value=np.nan)
        if not valued.all() and nearest is None:
            # pixels whose nearest vertex has no value lie outside the valued region
            scale = np.array([1.0 / grid.d_theta, 1.0 / grid.d_phi])
            _, nearest = cKDTree(np.c_[theta, phi] * scale).query(np.c_[grid_theta.ravel(), grid_phi.ravel()] * scale)
        for k, name in enumerate(names):
            # the cubic interpolant overshoots next to steep changes; no pixel leaves the values' range
            image = np.clip(images[..., k], stacked[:, k].min(), stacked[:, k].max())
            if not valued.all():
                image[~valued[nearest].reshape(image.shape)] = np.nan
            out[name] = np.where(np.isfinite(image), image, fill_value)
    return {name: out[name] for name in values}


def surface_values_from_map(image, theta, phi, grid: SphericalGrid = PAPER_GRID, *, order: int = 3,
                            wrap: bool = True) -> np.ndarray:
    """Inverse spherical map: the 2-D map sampled at each vertex's (theta, phi) (paper 001, Fig. 5).

    Carries a spherical biomarker map, or a Grad-CAM heat map of it, back onto the surface
    vertices. Pixel centres are the grid's; theta wraps around for a 2 pi grid; vertices with phi
    outside the grid's range get NaN. NaN pixels give NaN to the vertices whose interpolation
    would use them.

    Parameters
    ----------
    image : ndarray, :attr:`SphericalGrid.shape`
    theta, phi : ndarray, (n,)
        Angles of the vertices (:func:`spherical_coordinates`, same centre and frame as the map).
    grid : SphericalGrid
    order : {1, 3}
        1 bilinear, 3 bicubic (cubic spline; scipy ``ndimage.map_coordinates``).
    wrap : bool
        Wrap theta (only False to demonstrate the seam).

    Returns
    -------
    ndarray, (n,)

    Raises
    ------
    QmriInputError
        Image shape not the grid's, lengths differ, non-finite angles, bad order.
    """
    image = np.asarray(image, dtype=float)
    if image.shape != grid.shape:
        raise QmriInputError(f"image shape {image.shape} is not the grid's {grid.shape}", what="inverse spherical map")
    if order not in (1, 3):
        raise QmriInputError(f"order must be 1 or 3, got {order}", what="inverse spherical map")
    theta, phi, _ = _check_angles_values(theta, phi, None, "inverse spherical map")
    row, column = grid.pixel_coordinates(theta, phi)
    pad = 4
    theta_mode = "wrap" if (wrap and grid.wraps) else "edge"
    missing = ~np.isfinite(image)
    padded = np.pad(np.where(missing, 0.0, image), ((pad, pad), (0, 0)), mode="edge")
    padded = np.pad(padded, ((0, 0), (pad, pad)), mode=theta_mode)
    coordinates = np.stack([row + pad, column + pad])
    values = ndimage.map_coordinates(padded, coordinates, order=order, mode="nearest")
    if missing.any():
        holes = np.pad(np.pad(missing.astype(float), ((pad, pad), (0, 0)), mode="edge"), ((0, 0), (pad, pad)),
                       mode=theta_mode)
        values[ndimage.map_coordinates(holes, coordinates, order=1, mode="nearest") > 0] = np.nan
    outside = (row < -0.5) | (row > grid.n_phi - 0.5)
    if not (wrap and grid.wraps):
        outside |= (column < -0.5) | (column > grid.n_theta - 0.5)
    values[outside] = np.nan
    return values


def vertices_in_pixel(theta, phi, row: int, column: int, grid: SphericalGrid = PAPER_GRID) -> np.ndarray:
    """The vertices whose (theta, phi) fall in one pixel of the map (boolean mask, theta wrapped)."""
    theta, phi, _ = _check_angles_values(theta, phi, None, "vertices in pixel")
    if not (0 <= row < grid.n_phi and 0 <= column < grid.n_theta):
        raise QmriInputError(f"pixel ({row}, {column}) outside the {grid.shape} grid", what="vertices in pixel")
    r, c = grid.pixel_coordinates(theta, phi)
    return (np.floor(r + 0.5) == row) & (np.floor(c + 0.5) == column)
