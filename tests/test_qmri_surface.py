"""Tests of kneelib.qmri.surface (paper 001, Methods "Bone surface projection") on a sphere phantom.

The phantom: a bone sphere of radius 8 mm (0.5 mm voxels) with a cartilage shell 2 mm thick on
its upper cap (polar-angle cosine > 0.3). Error bounds (stated once here, asserted below):

- surface area: within 1 % of 4 pi R^2 for the mesh of the lightly smoothed mask (sigma one
  voxel); the binary mask's staircase mesh (the paper's) overestimates by less than 12 %;
- normals: every vertex normal within 14 degrees of the radial direction, mean cosine > 0.995;
- bone shape: mean vertex-to-centroid distance within 0.05 mm of R, every vertex within half a
  voxel (0.25 mm);
- projected thickness (cylinder of 0.729 mm): median within 0.1 mm of 2 mm (also with a 1.5 mm
  cylinder, whose voxel count is (1.5 / 0.729)^2 times larger, within 15 %), 90 % of the
  articular vertices within 0.35 mm; a per-voxel map (the z cosine of the voxel's direction)
  averaged in the cylinder within 0.03 of the vertex's own; deep/superficial layers exact.
"""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.qmri import QmriInputError
from kneelib.qmri.relaxometry import cartilage_depth
from kneelib.qmri.surface import (PAPER_CYLINDER_RADIUS_MM, SurfaceMesh, bone_shape, bone_surface_projection,
                                  crop_shaft, mask_centroid_mm, mesh_from_mask, project_cartilage_to_bone)

SPACING = np.array([0.5, 0.5, 0.5])
N = 48
RADIUS, THICKNESS, CAP = 8.0, 2.0, 0.3


@pytest.fixture(scope="module")
def phantom():
    centre = np.full(3, (N - 1) / 2) * SPACING
    offset = np.indices((N, N, N)).transpose(1, 2, 3, 0) * SPACING - centre
    r = np.linalg.norm(offset, axis=-1)
    bone = r <= RADIUS
    cos_z = offset[..., 2] / np.maximum(r, 1e-9)
    cartilage = (r > RADIUS) & (r <= RADIUS + THICKNESS) & (cos_z > CAP)
    mesh = mesh_from_mask(bone, SPACING)
    radial = (mesh.vertices - centre) / np.linalg.norm(mesh.vertices - centre, axis=1)[:, None]
    return dict(centre=centre, r=r, bone=bone, cartilage=cartilage, cos_z=cos_z, mesh=mesh, radial=radial)


def test_mesh_area_and_outward_normals(phantom):
    area = 4 * np.pi * RADIUS ** 2
    smooth = mesh_from_mask(phantom["bone"], SPACING, smoothing_sigma_mm=0.5)
    assert abs(smooth.area_mm2 / area - 1) < 0.01
    assert 1.0 < phantom["mesh"].area_mm2 / area < 1.12  # staircase of the binary mask
    cosine = np.einsum("ij,ij->i", phantom["mesh"].normals, phantom["radial"])
    assert cosine.min() > np.cos(np.radians(14))
    assert cosine.mean() > 0.995
    assert np.allclose(np.linalg.norm(phantom["mesh"].normals, axis=1), 1.0)
    # vertices in mm, origin at voxel 0's centre: the sphere's vertices sit at radius R
    assert abs(np.linalg.norm(smooth.vertices - phantom["centre"], axis=1).mean() - RADIUS) < 0.1


def test_bone_shape_is_the_radius(phantom):
    centroid = mask_centroid_mm(phantom["bone"], SPACING)
    assert np.allclose(centroid, phantom["centre"], atol=1e-9)
    distance = bone_shape(phantom["mesh"], centroid)
    assert abs(distance.mean() - RADIUS) < 0.05
    assert np.abs(distance - RADIUS).max() < 0.5 * SPACING[0]


def test_projection_thickness_articular_region_and_maps(phantom):
    cartilage, bone = phantom["cartilage"], phantom["bone"]
    depth = cartilage_depth(cartilage, bone, SPACING)
    t2 = np.where(cartilage, np.where(depth <= 0.5, 30.0, 50.0), np.nan)
    direction_map = np.where(cartilage, phantom["cos_z"], np.nan)
    projection = project_cartilage_to_bone(phantom["mesh"], cartilage, SPACING,
                                           maps={"t2": t2, "cos_z": direction_map}, depth=depth)
    assert projection.radius_mm == PAPER_CYLINDER_RADIUS_MM
    vertex_cos_z = phantom["radial"][:, 2]
    inner, outer = vertex_cos_z > CAP + 0.1, vertex_cos_z < CAP - 0.1
    assert projection.articular[inner].all() and not projection.articular[outer].any()
    thickness = projection.thickness_mm[inner]
    assert abs(np.median(thickness) - THICKNESS) < 0.1
    assert np.mean(np.abs(thickness - THICKNESS) < 0.35) >= 0.9
    assert np.isnan(projection.thickness_mm[~projection.articular]).all()
    assert np.abs(projection.values["cos_z"][inner] - vertex_cos_z[inner]).max() < 0.03
    assert np.allclose(projection.values["t2_deep"][inner], 30.0)
    assert np.allclose(projection.values["t2_superficial"][inner], 50.0)
    total = projection.values["t2"][inner]
    assert total.min() > 30.0 and total.max() < 50.0 and abs(np.median(total) - 40.0) < 3.0


def test_cylinder_stops_at_the_first_gap(phantom):
    # a second shell 2 mm beyond the cartilage (e.g. the cartilage across a notch) is not counted
    far_shell = (phantom["r"] > RADIUS + THICKNESS + 2.0) & (phantom["r"] <= RADIUS + THICKNESS + 3.0)
    near = project_cartilage_to_bone(phantom["mesh"], phantom["cartilage"], SPACING)
    both = project_cartilage_to_bone(phantom["mesh"], phantom["cartilage"] | far_shell, SPACING)
    inner = phantom["radial"][:, 2] > CAP + 0.1
    assert np.array_equal(near.n_voxels[inner], both.n_voxels[inner])
    # the far shell alone starts too far from the bone: no articular vertex
    alone = project_cartilage_to_bone(phantom["mesh"], far_shell, SPACING)
    assert not alone.articular.any()


def test_thickness_does_not_depend_on_the_cylinder_radius(phantom):
    # the voxel count grows with the cross-section; the thickness (volume / cross-section) does not
    inner = phantom["radial"][:, 2] > CAP + 0.2
    paper = project_cartilage_to_bone(phantom["mesh"], phantom["cartilage"], SPACING)
    wide = project_cartilage_to_bone(phantom["mesh"], phantom["cartilage"], SPACING, radius_mm=1.5)
    assert abs(np.median(wide.thickness_mm[inner]) - THICKNESS) < 0.1
    ratio = np.median(wide.n_voxels[inner]) / np.median(paper.n_voxels[inner])
    assert abs(ratio / (1.5 / PAPER_CYLINDER_RADIUS_MM) ** 2 - 1) < 0.15


def _bone_with_shaft(joint_low: bool):
    """A 20 mm wide (mediolateral, axis 2) epiphysis 10 mm long and a 6 mm wide shaft, 1 mm voxels."""
    bone = np.zeros((30, 80, 30), dtype=bool)
    rows = slice(5, 15) if joint_low else slice(65, 75)
    bone[5:25, rows, 5:25] = True  # epiphysis: 20 voxels mediolaterally
    shaft = slice(15, 75) if joint_low else slice(5, 65)
    bone[12:18, shaft, 12:18] = True
    return bone


@pytest.mark.parametrize("joint_low", [True, False])
def test_crop_shaft_to_mediolateral_width(joint_low):
    bone = _bone_with_shaft(joint_low)
    cropped = crop_shaft(bone, (1.0, 1.0, 1.0), long_axis=1, mediolateral_axis=2)
    kept = np.flatnonzero(cropped.any(axis=(0, 2)))
    assert kept.size == 20  # the 20 mm mediolateral width
    assert (kept[0] == 5) if joint_low else (kept[-1] == 74)
    explicit = crop_shaft(bone, (1.0, 1.0, 1.0), joint_end="low" if joint_low else "high")
    assert np.array_equal(explicit, cropped)
    assert not (cropped & ~bone).any()


def test_bone_surface_projection_composes(phantom):
    result = bone_surface_projection(phantom["bone"], SPACING, cartilage_mask=phantom["cartilage"], crop=False)
    assert result.mesh.n_vertices == phantom["mesh"].n_vertices
    assert np.allclose(result.bone_shape_mm, bone_shape(phantom["mesh"], phantom["centre"]))
    assert result.cartilage.articular.sum() > 0


def test_bad_input_raises_typed_errors(phantom):
    with pytest.raises(QmriInputError, match="3-D"):
        mesh_from_mask(np.ones((4, 4)), SPACING)
    with pytest.raises(QmriInputError, match="empty"):
        mesh_from_mask(np.zeros((4, 4, 4), bool), SPACING)
    with pytest.raises(QmriInputError, match="spacing"):
        mesh_from_mask(phantom["bone"], (1.0, -1.0, 1.0))
    with pytest.raises(QmriInputError, match="shape"):
        project_cartilage_to_bone(phantom["mesh"], phantom["cartilage"], SPACING, maps={"t2": np.zeros((3, 3, 3))})
    with pytest.raises(QmriInputError, match="different axes"):
        crop_shaft(phantom["bone"], SPACING, long_axis=2, mediolateral_axis=2)
    mesh = phantom["mesh"]
    broken = SurfaceMesh(vertices=np.where(np.arange(mesh.n_vertices)[:, None] == 3, np.nan, mesh.vertices),
                         faces=mesh.faces, normals=mesh.normals)
    with pytest.raises(QmriInputError, match="non-finite"):
        project_cartilage_to_bone(broken, phantom["cartilage"], SPACING)
    with pytest.raises(QmriInputError, match=r"\(n, 3\)"):
        project_cartilage_to_bone(SurfaceMesh(mesh.vertices, mesh.faces, mesh.normals[:-1]), phantom["cartilage"],
                                  SPACING)
    with pytest.raises(QmriInputError, match="max_gap_mm"):
        project_cartilage_to_bone(mesh, phantom["cartilage"], SPACING, max_gap_mm=0.0)
    with pytest.raises(QmriInputError, match="chunk"):
        project_cartilage_to_bone(mesh, phantom["cartilage"], SPACING, chunk=0)
    with pytest.raises(QmriInputError, match="radius_mm"):
        project_cartilage_to_bone(mesh, phantom["cartilage"], SPACING, radius_mm=-1.0)


# --- the cylinder lookup against a brute-force cylinder test -------------------------------------
# A random phantom: cartilage blobs (thresholded smoothed noise) on an anisotropic grid, vertices
# anywhere in and around it (some exactly at voxel centres with axis-aligned normals, so voxel
# centres fall on slab boundaries and on the cylinder's axis), random unit normals. The brute force
# tests every (vertex, voxel) pair; the lookup must give exactly the same voxel sets.

def _random_phantom(spacing, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (22, 20, 12)
    cartilage = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.08
    extent = (np.array(shape) - 1) * spacing
    n_random = 400
    # anywhere in the grid and up to 1 mm beyond it
    vertices = rng.uniform(0, 1, size=(n_random, 3)) * extent + rng.uniform(-1.0, 1.0, size=(n_random, 3))
    normals = rng.normal(size=(n_random, 3))
    centres = rng.integers(0, shape, size=(60, 3)) * spacing
    axes = np.eye(3)[rng.integers(0, 3, 60)] * rng.choice([-1.0, 1.0], size=(60, 1))
    vertices = np.vstack([vertices, centres])
    normals = np.vstack([normals, axes])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return cartilage, vertices, normals


def _brute_force_cylinders(cartilage, spacing, vertices, normals, radius, max_depth):
    """Set of (vertex, voxel id) with the voxel centre in the vertex's cylinder, and t of each."""
    points = np.argwhere(cartilage) * spacing
    d = points[None, :, :] - vertices[:, None, :]
    t = np.einsum("vpk,vk->vp", d, normals)
    perp2 = np.einsum("vpk,vpk->vp", d, d) - t * t
    inside = (t >= 0) & (t <= max_depth) & (perp2 <= radius * radius)
    rows, cols = np.nonzero(inside)
    return rows, cols, t[rows, cols]


def _brute_force_first_runs(rows, cols, t, start_limit, gap_limit):
    kept = set()
    for row in np.unique(rows):
        mine = np.flatnonzero(rows == row)
        mine = mine[np.argsort(t[mine], kind="stable")]
        if t[mine[0]] > start_limit:
            continue
        end = len(mine)
        for j in range(1, len(mine)):
            if t[mine[j]] - t[mine[j - 1]] > gap_limit:
                end = j
                break
        kept.update((int(row), int(col)) for col in cols[mine[:end]])
    return kept


@pytest.mark.parametrize("spacing, seed", [((0.5, 0.5, 1.0), 1), ((0.3646, 0.3646, 0.7), 2), ((0.3, 0.45, 0.6), 3)])
def test_cylinder_lookup_equals_brute_force(spacing, seed):
    from kneelib.qmri.surface import _ball_offsets, _CartilageLookup, _cylinder_pairs, _first_runs

    spacing = np.asarray(spacing)
    radius, max_depth = PAPER_CYLINDER_RADIUS_MM, 4.0
    start_limit, gap_limit = spacing.max() + radius, 2 * spacing.max()
    cartilage, vertices, normals = _random_phantom(spacing, seed)
    voxels = np.argwhere(cartilage)
    step = float(min(radius, spacing.min()))
    lookup = _CartilageLookup(voxels, _ball_offsets(spacing, float(np.hypot(radius, step / 2))))
    expected_rows, expected_cols, expected_t = _brute_force_cylinders(cartilage, spacing, vertices, normals,
                                                                      radius, max_depth)
    assert expected_rows.size > 1000  # the phantom exercises the test
    # the whole cylinder, no early stop: the same pairs, each once
    rows, cols, t = _cylinder_pairs(lookup, voxels * spacing, spacing, vertices, normals, radius, max_depth, step)
    assert rows.size == len(set(zip(rows.tolist(), cols.tolist())))
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip(expected_rows.tolist(), expected_cols.tolist()))
    # with the early stop, the first runs are still exactly the brute force's
    expected_runs = _brute_force_first_runs(expected_rows, expected_cols, expected_t, start_limit, gap_limit)
    assert 100 < len(expected_runs) < expected_rows.size  # some runs are cut by a gap or start too far
    rows, cols, t = _cylinder_pairs(lookup, voxels * spacing, spacing, vertices, normals, radius, max_depth, step,
                                    stop_start=start_limit, stop_gap=gap_limit)
    run_rows, run_cols = _first_runs(rows, cols, t, start_limit, gap_limit)
    assert set(zip(run_rows.tolist(), run_cols.tolist())) == expected_runs
    # the public function (small chunks): voxel counts and a per-voxel map's mean over the same sets
    mesh = SurfaceMesh(vertices=vertices, faces=np.zeros((0, 3), dtype=np.int64), normals=normals)
    values = np.random.default_rng(seed).uniform(0, 100, cartilage.shape)
    values[values < 15] = np.nan  # NaN values in the cartilage are left out of the mean
    value_map = np.where(cartilage, values, np.nan)
    projection = project_cartilage_to_bone(mesh, cartilage, spacing, maps={"v": value_map}, radius_mm=radius,
                                           max_depth_mm=max_depth, chunk=37)
    values_at = value_map[tuple(voxels.T)]
    for row in range(len(vertices)):
        mine = [col for r, col in expected_runs if r == row]
        assert projection.n_voxels[row] == len(mine)
        assert projection.articular[row] == bool(mine)
        finite = values_at[mine][np.isfinite(values_at[mine])]
        if finite.size:
            assert projection.values["v"][row] == pytest.approx(finite.mean(), rel=1e-12)
        else:
            assert np.isnan(projection.values["v"][row])


@pytest.mark.parametrize("spacing", [(0.3646, 0.3646, 0.7), (0.3, 0.45, 0.6)])
def test_cylinder_lookup_finds_voxels_at_the_slab_corners(spacing):
    # the hardest voxels for the lookup: at the rim of the cylinder (perp just under the radius) and
    # at either end of a slab along the axis, i.e. farthest from the slab's mid-point; random
    # directions put them at every position relative to the voxel grid
    spacing = np.asarray(spacing)
    radius, step = PAPER_CYLINDER_RADIUS_MM, float(min(PAPER_CYLINDER_RADIUS_MM, spacing.min()))
    cartilage = np.zeros((9, 9, 9), dtype=bool)
    cartilage[4, 4, 4] = True
    voxel = np.full(3, 4) * spacing
    rng = np.random.default_rng(7)
    n = 4000
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    across = np.cross(normals, rng.normal(size=(n, 3)))
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    slab = rng.integers(0, 4, n)
    end = rng.integers(0, 2, n)  # 0: just after the slab's start, 1: just before its end
    along = (slab + np.where(end == 0, 1e-4, 1 - 1e-4)) * step
    vertices = voxel - along[:, None] * normals - radius * (1 - 1e-7) * across
    mesh = SurfaceMesh(vertices=vertices, faces=np.zeros((0, 3), dtype=np.int64), normals=normals)
    projection = project_cartilage_to_bone(mesh, cartilage, spacing, max_depth_mm=5 * step, max_start_mm=5 * step)
    assert projection.n_voxels.tolist() == [1] * n
    # scaled normals are directions: the same result
    longer = SurfaceMesh(vertices=vertices, faces=mesh.faces, normals=2.5 * normals)
    assert np.array_equal(project_cartilage_to_bone(longer, cartilage, spacing, max_depth_mm=5 * step,
                                                    max_start_mm=5 * step).n_voxels, projection.n_voxels)
