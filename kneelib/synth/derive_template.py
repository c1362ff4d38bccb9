"""Derive the compact anatomical template of the synthetic knee from a real segmentation.

Run once, by hand, when the template changes (issue 10, item 1)::

    python -m kneelib.synth.derive_template \\
        $KNEELIB_DATA/pymskt_knee_mri/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd

It reads the real right-knee label map that pymskt ships as test data (Gatti, "pymskt: Python
musculoskeletal toolkit", MIT licence; OAI SAG 3D DESS grid, 0.365 x 0.365 x 0.7 mm) and writes
``kneelib/synth/data/knee_template.npz`` (a few hundred kB), which :mod:`kneelib.synth.template`
loads. The raw label map stays outside the repository; this derived form is the one
exception to "never copy the shared data into the repo".

What is stored, on a 1 mm grid in the canonical *shape space* of
:mod:`kneelib.synth.anatomy` (``x`` lateral, ``y`` anterior, ``z`` superior, right knee):

* the signed distance (mm, negative inside) of each bone and meniscus, quantised to 0.1 mm
  (int8, clipped at 8 mm);
* per bone that carries cartilage (femur, tibia, patella), the template's cartilage
  thickness (mm) and cartilage region (``CARTILAGE_REGIONS`` index + 1) of the bone surface
  point nearest to each voxel within 12 mm of the bone, 0 where the surface is bare;
* landmarks (compartment centres, condyle low points, articular margins, patellar poles,
  tibial tuberosity, notch) and the mean template thickness per cartilage region.

Frames: the femur group (femur, femoral cartilage, patella, patellar cartilage) and the tibia
group (tibia, tibial cartilages, menisci, fibula) are each sheared vertically (``z -= a + b
x``) so that the medial and lateral femoral condyles have their lowest points on ``z = 0``
(femoral space); the tibial space is sheared so that, at the medio-lateral position of each
compartment's minimum joint space width as a radiograph sees it (lowest femur point minus
highest tibia point over all antero-posterior positions), the tibia reaches the height of the
femur there. A vertical shear keeps vertical distances, so the joint space the anatomy opens
between the two spaces is exactly the planted minimum joint space width (landmarks
``jsw_femur_*`` and ``jsw_tibia_*``). ``x = 0`` is
midway between the condyle low points, ``y = 0`` their mean antero-posterior position.

Bones cut by the scan's field of view (femoral and tibial shafts, fibula) are padded by
repeating the last slice before the distance transform, so the cut is not a surface; the
template module extrudes them beyond the grid.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

#: pymskt label code -> (kneelib structure name, space: "f" femoral or "t" tibial).
PYMSKT_LABELS: dict[int, tuple[str, str]] = {
    1: ("femoral_cartilage", "f"),
    2: ("tibial_cartilage_medial", "t"),
    3: ("tibial_cartilage_lateral", "t"),
    4: ("patellar_cartilage", "f"),
    5: ("femur", "f"),
    6: ("tibia", "t"),
    7: ("patella", "f"),
    8: ("fibula", "t"),
    9: ("meniscus_lateral", "t"),
    10: ("meniscus_medial", "t"),
}
#: Grid spacing (mm) of the stored fields.
GRID_MM = 1.0
#: Quantisation of the stored signed distances (mm per int8 step) and their clip (mm): only
#: the near-surface distance is used (cartilage, cortex, lesions within a few mm), and a
#: constant far field compresses to nothing.
SDF_STEP_MM = 0.1
SDF_CLIP_MM = 8.0
#: Structures whose signed distance is stored (cartilage is stored as the cover of its bone).
SDF_STRUCTURES = ("femur", "tibia", "patella", "fibula", "meniscus_medial", "meniscus_lateral")
#: Quantisation of the stored cartilage thickness (mm per uint8 step).
THICKNESS_STEP_MM = 0.05
#: Band (mm) around a bone within which the cartilage cover is stored.
COVER_BAND_MM = 12.0
#: Margin (mm) of each structure's box beyond its extent.
BOX_MARGIN_MM = 10.0
#: Half width (mm) of the window around each condyle low point searched for the minimum
#: joint space width (keeps the tibial spines out).
JSW_WINDOW_MM = 9.0
#: Rows repeated above and below the field of view (bones cut by it continue as shafts).
PAD_ROWS = 64
OUT = Path(__file__).parent / "data" / "knee_template.npz"
CARTILAGE_REGIONS = ("FM", "FL", "TM", "TL", "P", "TR")     # as kneelib.synth.spec


def _read_label_map(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image)           # (slice k, row r, column c)
    spacing = image.GetSpacing()                     # (column, row, slice) mm
    if labels.ndim != 3 or set(np.unique(labels).tolist()) - set(range(11)):
        raise ValueError(f"{path}: expected a 3-D label map with pymskt codes 0-10")
    # voxel sizes along (k, r, c): slice spacing, row spacing, column spacing
    return labels.astype(np.uint8), (float(spacing[2]), float(spacing[1]), float(spacing[0]))


def _template_coordinates(spacing):
    """Callables from native indices (k, r, c) to raw template mm (x lateral, y ant., z sup.).

    The label map is a right knee in a sagittal DESS: slices run medial -> lateral, columns
    anterior -> posterior, rows superior -> inferior.
    """
    dk, dr, dc = spacing
    return (lambda k: k * dk), (lambda c: -c * dc), (lambda r: -r * dr)


def _low_point(points: np.ndarray, tolerance_mm: float = 0.4) -> np.ndarray:
    lowest = points[:, 2].min()
    return points[points[:, 2] < lowest + tolerance_mm].mean(axis=0)


def _frames(labels, spacing):
    """Origin and the two vertical shears (femoral and tibial spaces) in raw template mm."""
    fx, fy, fz = _template_coordinates(spacing)

    def points(code):
        k, r, c = np.nonzero(labels == code)
        return np.stack([fx(k), fy(c), fz(r)], axis=1)

    femur, tibia = points(5), points(6)
    centre_medial = points(2)[:, 0].mean()
    centre_lateral = points(3)[:, 0].mean()
    lows = []
    for centre in (centre_medial, centre_lateral):
        lows.append(_low_point(femur[np.abs(femur[:, 0] - centre) < 6.0]))
    low_m, low_l = lows
    origin_xy = np.array([(low_m[0] + low_l[0]) / 2, (low_m[1] + low_l[1]) / 2])

    def shear(x_m, z_m, x_l, z_l):
        slope = (z_l - z_m) / (x_l - x_m)
        return z_m - slope * x_m, slope                    # z_surface(x) = a + b x

    shear_f = shear(low_m[0], low_m[2], low_l[0], low_l[2])
    # joint space width as the radiograph sees it: per medio-lateral position, the lowest
    # femur point over all y minus the highest tibia point over all y; its minimum over the
    # compartment (away from the tibial spines) is the minimum JSW
    width = spacing[0]
    jsw_points = []
    for low in lows:
        best = None
        for x in np.arange(low[0] - JSW_WINDOW_MM, low[0] + JSW_WINDOW_MM, width):
            f_col = femur[np.abs(femur[:, 0] - x) < width / 2]
            t_col = tibia[np.abs(tibia[:, 0] - x) < width / 2]
            if len(f_col) == 0 or len(t_col) == 0:
                continue
            f_low, t_top = f_col[np.argmin(f_col[:, 2])], t_col[np.argmax(t_col[:, 2])]
            gap = f_low[2] - t_top[2]
            if best is None or gap < best[0]:
                best = (gap, f_low, t_top)
        jsw_points.append(best[1:])
    # tibial space: the tibia's highest point at each compartment's minimum-JSW position sits
    # as high as the femur's lowest point there (in femoral space), so the opened joint has
    # exactly the planted width there
    heights = []
    for f_low, t_top in jsw_points:
        f_height = f_low[2] - (shear_f[0] + shear_f[1] * f_low[0])
        heights.append((t_top[0], t_top[2] - f_height))
    shear_t = shear(heights[0][0], heights[0][1], heights[1][0], heights[1][1])
    return origin_xy, shear_f, shear_t, (low_m, low_l), jsw_points


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def _cartilage_cover(bone: np.ndarray, cartilage_region: np.ndarray, spacing):
    """Thickness and region of the cartilage over the nearest bone surface point, per voxel.

    ``cartilage_region`` holds ``CARTILAGE_REGIONS`` index + 1 on cartilage voxels of this
    bone. For each cartilage voxel the nearest bone voxel is found; a bone surface voxel's
    thickness is the largest bone distance of the cartilage voxels that map to it (plus half
    a voxel). Voxels outside the bone within ``COVER_BAND_MM`` take the thickness and region
    of their nearest bone surface voxel, if that voxel lies within 1 mm of a covered one.
    """
    distance, nearest = ndimage.distance_transform_edt(~bone, sampling=spacing, return_indices=True)
    cart = cartilage_region > 0
    half_voxel = 0.5 * min(spacing)
    flat = np.ravel_multi_index(tuple(n[cart] for n in nearest), bone.shape)
    thickness = np.zeros(bone.size, np.float32)
    np.maximum.at(thickness, flat, distance[cart] + half_voxel)
    region = np.zeros(bone.size, np.uint8)
    region[flat] = cartilage_region[cart]
    thickness = thickness.reshape(bone.shape)
    region = region.reshape(bone.shape)
    hit = thickness > 0
    to_hit, nearest_hit = ndimage.distance_transform_edt(~hit, sampling=spacing, return_indices=True)
    band = (distance > 0) & (distance < COVER_BAND_MM)
    surface = tuple(n[band] for n in nearest)                  # nearest bone voxel
    covered = to_hit[surface] < 1.0
    source = tuple(n[surface] for n in nearest_hit)             # nearest covered surface voxel
    band_thickness = np.where(covered, thickness[source], 0.0)
    band_region = np.where(covered, region[source], 0)
    out_t = np.zeros(bone.shape, np.float32)
    out_r = np.zeros(bone.shape, np.uint8)
    out_t[band] = band_thickness
    out_r[band] = band_region
    means = {}
    for code in np.unique(region[hit]):
        means[CARTILAGE_REGIONS[int(code) - 1]] = float(thickness[hit & (region == code)].mean())
    return out_t, out_r, means


def derive(path: Path) -> dict[str, np.ndarray]:
    """Every array of ``knee_template.npz`` from the pymskt label map at ``path``."""
    labels, spacing = _read_label_map(path)
    origin_xy, shear_f, shear_t, lows, jsw_points = _frames(labels, spacing)
    # pad: rows (z) by repetition (the shafts continue), slices and columns by background
    labels = np.pad(labels, ((0, 0), (PAD_ROWS, PAD_ROWS), (0, 0)), mode="edge")
    labels = np.pad(labels, ((24, 24), (0, 0), (24, 24)), mode="constant")
    fx, fy, fz = _template_coordinates(spacing)
    k0, r0, c0 = 24, PAD_ROWS, 24                      # native index of the original (0, 0, 0)
    dk, dr, dc = spacing
    out: dict[str, np.ndarray] = {"grid_mm": np.float32(GRID_MM), "sdf_step_mm": np.float32(SDF_STEP_MM),
                                  "thickness_step_mm": np.float32(THICKNESS_STEP_MM)}

    def to_canonical_index(x, y, z, space):
        """Native (k, r, c) float indices of canonical points (x, y, z) of a space."""
        a, b = shear_f if space == "f" else shear_t
        xr = x + origin_xy[0]
        yr = y + origin_xy[1]
        zr = z + a + b * xr
        return (xr / dk + k0, -zr / dr + r0, -yr / dc + c0)

    def extent(mask, space):
        k, r, c = np.nonzero(mask)
        xr, yr, zr = fx(k - k0), fy(c - c0), fz(r - r0)
        a, b = shear_f if space == "f" else shear_t
        pts = np.stack([xr - origin_xy[0], yr - origin_xy[1], zr - (a + b * xr)], axis=1)
        return pts.min(axis=0), pts.max(axis=0), pts

    def resample(volume, lo, shape, space, order):
        axes = [lo[i] + GRID_MM * np.arange(shape[i]) for i in range(3)]
        X, Y, Z = np.meshgrid(*axes, indexing="ij")
        idx = to_canonical_index(X, Y, Z, space)
        return ndimage.map_coordinates(volume, idx, order=order, mode="nearest")

    structures = {}
    for code, (name, space) in PYMSKT_LABELS.items():
        mask = labels == code
        lo, hi, pts = extent(mask, space)
        structures[name] = (mask, space, lo, hi, pts)
        # do not store far into the padding: the template extrudes beyond the grid
        lo = np.floor(lo - BOX_MARGIN_MM)
        hi = np.ceil(hi + BOX_MARGIN_MM)
        shape = tuple(int(n) for n in np.round((hi - lo) / GRID_MM) + 1)
        out[f"origin_{name}"] = lo.astype(np.float32)
        out[f"shape_{name}"] = np.array(shape, np.int32)
        out[f"space_{name}"] = np.array(space)
        if name in SDF_STRUCTURES:
            sdf = np.clip(_signed_distance(mask, spacing), -SDF_CLIP_MM, SDF_CLIP_MM)
            q = resample(sdf, lo, shape, space, order=1)
            out[f"sdf_{name}"] = np.round(q / SDF_STEP_MM).astype(np.int8)
            del sdf

    # cartilage cover of each bone
    fem_cart = labels == 1
    fem_cart_pts = structures["femoral_cartilage"][4]          # same voxel order as fem_cart
    xr, yr = fem_cart_pts[:, 0], fem_cart_pts[:, 1]
    tib_front = max(structures["tibial_cartilage_medial"][4][:, 1].max(),
                    structures["tibial_cartilage_lateral"][4][:, 1].max())
    fem_region = np.where(yr > tib_front, CARTILAGE_REGIONS.index("TR") + 1,
                          np.where(xr < 0, CARTILAGE_REGIONS.index("FM") + 1, CARTILAGE_REGIONS.index("FL") + 1))
    means = {}
    for bone_name, bone_code, cart in (
            ("femur", 5, ((fem_cart, fem_region),)),
            ("tibia", 6, ((labels == 2, CARTILAGE_REGIONS.index("TM") + 1),
                          (labels == 3, CARTILAGE_REGIONS.index("TL") + 1))),
            ("patella", 7, ((labels == 4, CARTILAGE_REGIONS.index("P") + 1),))):
        region = np.zeros(labels.shape, np.uint8)
        for mask, code in cart:
            region[mask] = code
        thickness, cover_region, bone_means = _cartilage_cover(labels == bone_code, region, spacing)
        means.update(bone_means)
        lo = out[f"origin_{bone_name}"]
        shape = tuple(out[f"shape_{bone_name}"])
        space = structures[bone_name][1]
        t = resample(thickness, lo, shape, space, order=0)
        out[f"cover_thickness_{bone_name}"] = np.clip(np.round(t / THICKNESS_STEP_MM), 0, 255).astype(np.uint8)
        out[f"cover_region_{bone_name}"] = resample(cover_region, lo, shape, space, order=0).astype(np.uint8)
    out["mean_thickness_mm"] = np.array([means.get(r, np.nan) for r in CARTILAGE_REGIONS], np.float32)

    # landmarks (canonical mm, their own space)
    pts = {name: s[4] for name, s in structures.items()}
    land = {}
    for side, low in zip(("medial", "lateral"), lows):
        x = low[0] - origin_xy[0]
        y = low[1] - origin_xy[1]
        land[f"condyle_low_{side}"] = (x, y, 0.0)
        plate = pts[f"tibial_cartilage_{side}"]
        land[f"plateau_centre_{side}"] = (plate[:, 0].mean(), plate[:, 1].mean(), 0.0)
    for side, (f_low, t_top) in zip(("medial", "lateral"), jsw_points):
        x = f_low[0] - origin_xy[0]
        f_height = f_low[2] - (shear_f[0] + shear_f[1] * f_low[0])
        land[f"jsw_femur_{side}"] = (x, f_low[1] - origin_xy[1], f_height)
        land[f"jsw_tibia_{side}"] = (t_top[0] - origin_xy[0], t_top[1] - origin_xy[1],
                                     t_top[2] - (shear_t[0] + shear_t[1] * t_top[0]))
    femur, tibia, patella = pts["femur"], pts["tibia"], pts["patella"]
    for name, p, zr in (("femur", femur, (3.0, 9.0)), ("tibia", tibia, (-7.0, -2.0))):
        level = p[(p[:, 2] > zr[0]) & (p[:, 2] < zr[1])]
        land[f"{name}_margin_medial"] = tuple(level[np.argmin(level[:, 0])])
        land[f"{name}_margin_lateral"] = tuple(level[np.argmax(level[:, 0])])
    land["patella_centre"] = tuple(patella.mean(axis=0))
    land["patella_inferior_pole"] = tuple(patella[np.argmin(patella[:, 2])])
    land["patella_superior_pole"] = tuple(patella[np.argmax(patella[:, 2])])
    land["patella_posterior"] = tuple(patella[np.argmin(patella[:, 1])])
    front = tibia[(tibia[:, 2] < -15.0) & (tibia[:, 2] > -45.0)]
    land["tibial_tuberosity"] = tuple(front[np.argmax(front[:, 1])])
    # intercondylar notch: lowest femur point over the midline band, posterior half
    mid = femur[(np.abs(femur[:, 0]) < 3.0) & (femur[:, 1] < 0.0) & (femur[:, 1] > -25.0)]
    land["notch_roof"] = tuple(_low_point(mid, 1.0))
    back = tibia[(np.abs(tibia[:, 0]) < 4.0) & (tibia[:, 2] > -12.0)]
    land["tibia_posterior_midline"] = tuple(back[np.argmin(back[:, 1])])
    land["trochlea_centre"] = tuple(fem_cart_pts[fem_region == CARTILAGE_REGIONS.index("TR") + 1].mean(0))
    keys = sorted(land)
    out["landmark_names"] = np.array(keys)
    out["landmarks_mm"] = np.array([land[k] for k in keys], np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label_map", type=Path, help="pymskt SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.label_map.is_file():
        print(f"{args.label_map}: no such file", file=sys.stderr)
        return 2
    arrays = derive(args.label_map)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
