"""Per-knee biomarker extraction, cache and the Fig. 4 input strategies (paper 001, Methods)."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.qmri import QmriInputError
from kneelib.qmri.biomarkers import (biomarker_cache_key, cached_knee_biomarkers, extract_knee_biomarkers,
                                     extract_many, load_biomarkers, save_biomarkers, structure_masks)
from kneelib.qmri.inputs import STRATEGIES, group_ranges, strategy_image, strategy_images
from kneelib.synth.spec import TISSUE_LABELS as L

SPACING = (0.5, 0.5, 0.5)
TE = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])


def phantom_knee():
    """Array axes R, A, S (no affine). Slabs of cartilage 2 mm (femur, tibia) and 1 mm (patella) thick."""
    labels = np.zeros((40, 44, 60), np.uint8)
    labels[8:32, 8:30, 34:58] = L["femur"]
    labels[10:30, 10:28, 30:34] = L["femoral_cartilage"]          # 4 voxels = 2 mm, below the femur
    labels[8:32, 8:30, 1:25] = L["tibia"]
    labels[10:20, 10:28, 25:29] = L["tibial_cartilage_medial"]     # 2 mm, on the tibia
    labels[20:30, 10:28, 25:29] = L["tibial_cartilage_lateral"]
    labels[14:26, 33:38, 36:50] = L["patella"]
    labels[15:25, 31:33, 38:48] = L["patellar_cartilage"]         # 2 voxels = 1 mm, behind the patella
    return labels


def t2_phantom(labels, seed=0):
    """Echoes with T2 30 ms in the deep half and 50 ms in the superficial half of each cartilage, 40 ms elsewhere."""
    t2 = np.full(labels.shape, 40.0)
    t2[:, :, 32:34][labels[:, :, 32:34] == L["femoral_cartilage"]] = 30.0   # next to the femur
    t2[:, :, 30:32][labels[:, :, 30:32] == L["femoral_cartilage"]] = 50.0
    tib = np.isin(labels, [L["tibial_cartilage_medial"], L["tibial_cartilage_lateral"]])
    t2[:, :, 25:27][tib[:, :, 25:27]] = 30.0
    t2[:, :, 27:29][tib[:, :, 27:29]] = 50.0
    t2[:, 32, :][labels[:, 32, :] == L["patellar_cartilage"]] = 30.0
    t2[:, 31, :][labels[:, 31, :] == L["patellar_cartilage"]] = 50.0
    rng = np.random.default_rng(seed)
    echoes = 1000.0 * np.exp(-TE / t2[..., None]) + 20.0 + rng.normal(0, 2.0, labels.shape + (TE.size,))
    return echoes.astype(np.float32)


@pytest.fixture(scope="module")
def knee():
    labels = phantom_knee()
    return labels, t2_phantom(labels), extract_knee_biomarkers(labels, SPACING, echoes=t2_phantom(labels),
                                                               echo_times_ms=TE)


def test_thickness_per_slice_and_on_the_surface(knee):
    _, _, result = knee
    for bone, planted in (("femur", 2.0), ("tibia", 2.0), ("patella", 1.0)):
        b = result.bones[bone]
        # the paper's doubled distance transform: between the thickness and one pixel more
        assert planted <= b.summary["thickness_median_mm"] <= planted + 0.5 + 1e-9, bone
        surface = b.vertex_values["thickness"][b.articular]
        assert planted <= np.nanmedian(surface) <= planted + 0.5 + 1e-9, bone
        # the cylinder's own thickness (voxel centres counted in a 0.729 mm disc: on a 0.5 mm grid the
        # count over-covers the disc's area by up to 9 x 0.25 / (pi 0.729^2) = 1.35)
        assert planted <= np.nanmedian(b.vertex_values["thickness_normal"]) <= 1.36 * planted, bone
        # per-slice arrays are per sagittal (left-right, axis 0) slice
        assert b.slice_thickness_median_mm.shape == (40,)


def test_t2_layers_match_the_phantom(knee):
    _, _, result = knee
    for bone in ("femur", "tibia", "patella"):
        s = result.bones[bone].summary
        assert s["t2_deep_ms"] == pytest.approx(30.0, abs=1.0), bone
        # 3-D depth: at the open side edges of a slab some deep voxels are nearer the joint than
        # the bone and count as superficial, pulling its mean a little below 50 ms
        assert s["t2_superficial_ms"] == pytest.approx(49.0, abs=1.5), bone
        assert s["t2_total_ms"] == pytest.approx(40.0, abs=1.5), bone
    v = result.bones["femur"].vertex_values
    assert np.nanmedian(v["t2_deep"]) == pytest.approx(30.0, abs=1.5)
    assert np.nanmedian(v["t2_superficial"]) == pytest.approx(50.0, abs=2.0)
    assert np.nanmedian(v["t2_total"]) == pytest.approx(40.0, abs=2.0)


def test_bone_shape_and_spherical_maps_with_inverse(knee):
    _, _, result = knee
    femur = result.bones["femur"]
    # bone shape = distance from the vertex to the centroid
    np.testing.assert_allclose(femur.vertex_values["bone_shape"],
                               np.linalg.norm(femur.vertices - femur.centroid_mm, axis=1), rtol=1e-5)
    assert femur.maps["bone_shape"].shape == (224, 224)
    assert femur.maps["thickness"].shape == (224, 224)
    # cartilage lies below the femur's centroid: its map sits at negative elevation (lower rows)
    rows = np.flatnonzero(np.isfinite(femur.maps["thickness"]).any(axis=1))
    assert rows.min() > 224 * (np.pi / 8) / (np.pi / 2 + np.pi / 8)
    # inverse map: the bone-shape map carried back to the vertices it came from
    back = femur.values_from_map(femur.maps["bone_shape"])
    inside = np.isfinite(back)
    assert inside.mean() > 0.5
    assert np.median(np.abs(back[inside] - femur.vertex_values["bone_shape"][inside])) < 0.2
    # the map average is close to the surface average (what Fig. S3 compares)
    assert femur.map_mean("thickness") == pytest.approx(femur.surface_mean("thickness"), abs=0.3)


def test_cache_round_trip_and_key(tmp_path, knee):
    labels, echoes, result = knee
    path = save_biomarkers(result, tmp_path / "k.npz")
    loaded = load_biomarkers(path)
    for bone in ("femur", "tibia", "patella"):
        a, b = result.bones[bone], loaded.bones[bone]
        np.testing.assert_allclose(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.articular, b.articular)
        # maps are stored as float16: ~3.5 significant digits (STORED_DTYPES), read back as float32
        assert b.maps["t2_total"].dtype == np.float32 and b.normals.dtype == np.float32
        np.testing.assert_allclose(a.maps["t2_total"], b.maps["t2_total"], rtol=2 ** -11, equal_nan=True)
        # angles are not stored: derived again from the float32 vertices, as the extraction derives them
        for name in ("theta", "phi", "rho"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(a.faces, b.faces)
        assert a.summary == pytest.approx(b.summary, nan_ok=True)
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    key = biomarker_cache_key(labels, SPACING)
    changed = labels.copy()
    changed[0, 0, 0] = L["femur"]
    assert biomarker_cache_key(changed, SPACING) != key
    assert biomarker_cache_key(labels, (0.5, 0.5, 0.6)) != key
    assert biomarker_cache_key(labels, SPACING, echoes=echoes, echo_times_ms=TE) != key
    assert biomarker_cache_key(labels.copy(), SPACING) == key
    first = cached_knee_biomarkers(labels, SPACING, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1
    again = cached_knee_biomarkers(labels, SPACING, cache_dir=tmp_path / "cache")
    assert again.key == first.key == key
    # the knee just computed is what the entry holds: the same arrays as the cached read
    for name in ("thickness", "bone_shape"):
        np.testing.assert_array_equal(again.bones["tibia"].maps[name], first.bones["tibia"].maps[name])
    np.testing.assert_array_equal(again.bones["femur"].normals, first.bones["femur"].normals)
    assert not first.t2_fitted and np.isnan(first.bones["femur"].maps["t2_total"]).all()


def test_parallel_equals_serial(tmp_path):
    labels = phantom_knee()
    knees = [{"labels": labels, "spacing_mm": SPACING}, {"labels": labels[:, :, ::-1].copy(), "spacing_mm": SPACING}]
    parallel = extract_many(knees, n_jobs=2, cache_dir=tmp_path / "parallel", backend="threading")
    serial = extract_many(knees, n_jobs=1, cache_dir=tmp_path / "serial")
    uncached = [extract_knee_biomarkers(**k) for k in knees]
    for p, s, u in zip(parallel, serial, uncached):
        np.testing.assert_array_equal(p.bones["femur"].vertex_values["thickness"],
                                      s.bones["femur"].vertex_values["thickness"])
        # the cache stores values as float16 (STORED_DTYPES)
        np.testing.assert_allclose(p.bones["femur"].vertex_values["thickness"],
                                   u.bones["femur"].vertex_values["thickness"], rtol=2 ** -11, equal_nan=True)


def test_label_conventions_and_errors():
    labels = phantom_knee()
    masks = structure_masks(labels, "tissue")
    assert masks["tibial_cartilage"].sum() == 20 * 18 * 4
    bone = np.zeros_like(labels)
    cart = np.zeros_like(labels)
    bone[labels == L["femur"]] = 1
    cart[labels == L["femoral_cartilage"]] = 1
    cart[labels == L["meniscus_medial"]] = 4
    pair = structure_masks((bone, cart), "network")
    np.testing.assert_array_equal(pair["femoral_cartilage"], masks["femoral_cartilage"])
    np.testing.assert_array_equal(pair["femur"], masks["femur"])
    with pytest.raises(QmriInputError, match="lacks"):
        structure_masks(labels, {"femur": [1]})
    with pytest.raises(QmriInputError, match="unknown label convention"):
        structure_masks(labels, "oai")
    with pytest.raises(QmriInputError, match="echoes"):
        extract_knee_biomarkers(labels, SPACING, echoes=np.zeros((2, 2, 2, 3)), echo_times_ms=[1, 2, 3])
    empty = labels.copy()
    empty[empty == L["patella"]] = 0
    with pytest.raises(QmriInputError, match="patella"):
        extract_knee_biomarkers(empty, SPACING)


def test_input_strategies_reproduce_the_papers_example():
    # Fig. 4e example: deep and superficial T2 elevated (0.8 of the range), thin cartilage (0.1)
    maps = {"t2_deep": np.full((4, 4), 80.0), "t2_superficial": np.full((4, 4), 80.0),
            "thickness": np.full((4, 4), 1.0), "bone_shape": np.full((4, 4), 30.0), "t2_total": np.full((4, 4), 80.0)}
    maps["thickness"][0, 0] = np.nan
    ranges = {"t2_deep": (0.0, 100.0), "t2_superficial": (0.0, 100.0), "thickness": (0.0, 10.0),
              "bone_shape": (20.0, 40.0), "t2_total": (0.0, 100.0)}
    image = strategy_image(maps, "t2_thickness", ranges)
    assert image.dtype == np.uint8 and image.shape == (4, 4, 3)
    assert tuple(image[1, 1]) == (204, 204, 26)
    assert image[0, 0, 2] == 0  # no value -> 0
    images = strategy_images(maps, ranges)
    assert set(images) == set(STRATEGIES)
    assert (images["thickness_bone_shape"][..., 2] == 0).all()
    assert tuple(images["all"][1, 1]) == (26, 128, 204)
    np.testing.assert_array_equal(images["thickness"][..., 0], images["thickness"][..., 2])
    # group normalisation: min and max over all knees, each map separately
    ranges2 = group_ranges([{"a": np.array([1.0, np.nan])}, {"a": np.array([5.0, 3.0])}])
    assert ranges2 == {"a": (1.0, 5.0)}
    with pytest.raises(QmriInputError, match="strategy"):
        strategy_image(maps, "texture", ranges)
    with pytest.raises(QmriInputError, match="needs maps"):
        strategy_image({"thickness": maps["thickness"]}, "all", ranges)
