"""Tests of the synthetic cohort generator (kneelib.synth.cohort).

Two levels:

- the orchestration (layout, tables, ground truth, resume, determinism) with tiny stand-in
  renderers injected for the test only (``fake_renderers``), so it runs in a second;
- the real smoke cohort (real anatomy, MRI and radiograph renderers) generated twice and
  hashed, and read back by :mod:`kneelib.data`. The renderers are part of kneelib, so a
  failing import is a failure of this test, never a reason to skip it.
"""
import hashlib
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kneelib.synth import cohort as cohort_module
from kneelib.synth.cohort import generate_cohort
from kneelib.synth.oai_writer import SliceGeometry
from kneelib.synth.spec import TISSUE_LABELS


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ stand-in renderers
class _Rendered(types.SimpleNamespace):
    pass


def _fake_modules():
    anatomy = types.ModuleType("kneelib.synth.anatomy")
    anatomy.build_knee = lambda spec, voxel_mm: types.SimpleNamespace(spec=spec, voxel_mm=voxel_mm)
    protocols = types.ModuleType("kneelib.synth.protocols")
    protocols.mr_protocols = lambda preset, site: {
        key: types.SimpleNamespace(key=key, right_only=key == "sag_t2_map")
        for key in ("sag_iw_tse", "cor_iw_tse", "sag_dess", "sag_t2_map")}
    protocols.xr_protocol = lambda preset, site: {"site": site}
    mri = types.ModuleType("kneelib.synth.mri")

    def render_series(model, protocol, rng):
        n_slices, rows, cols = 6, 8, 10
        pixels = rng.integers(0, 1000, (n_slices, rows, cols)).astype(np.uint16)
        if protocol.key == "sag_t2_map":
            pixels = np.stack([pixels] * 3)
        labels = np.zeros((n_slices, rows, cols), np.uint8)
        labels[3, 2:4, 2:4] = TISSUE_LABELS["pcl"]
        effusion = np.zeros_like(labels, bool)
        effusion[1, 1, 1] = model.spec.effusion_grade > 0
        geometry = SliceGeometry(
            image_orientation_patient=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
            image_positions_patient=tuple((float(3 * k), 0.0, 0.0) for k in range(n_slices)),
            pixel_spacing_mm=(0.5, 0.4), slice_thickness_mm=3.0, spacing_between_slices_mm=3.0)
        header = {"RepetitionTime": 3200.0, "EchoTime": [10.0, 20.0, 30.0] if pixels.ndim == 4 else 30.0}
        return _Rendered(pixels=pixels, geometry=geometry, header=header, labels=labels,
                         lesion_masks={"effusion_synovitis": effusion}, pcl_slice_index=3)

    mri.render_series = render_series
    radiograph = types.ModuleType("kneelib.synth.radiograph")

    def render_radiograph(right, left, protocol, rng):
        return _Rendered(pixels=rng.integers(0, 4000, (12, 20)).astype(np.uint16), pixel_spacing_mm=0.2,
                         header={}, landmarks_px={"R": {"joint_centre": (5.0, 4.0)}, "L": {"joint_centre": (5.0, 15.0)}},
                         beam_tilt_deg={"R": 0.5, "L": -0.3})

    radiograph.render_radiograph = render_radiograph
    return {"anatomy": anatomy, "protocols": protocols, "mri": mri, "radiograph": radiograph}


@pytest.fixture
def fake_renderers(monkeypatch):
    import kneelib.synth as synth

    for name, module in _fake_modules().items():
        monkeypatch.setitem(sys.modules, f"kneelib.synth.{name}", module)
        monkeypatch.setattr(synth, name, module, raising=False)


def _check_tables_against_truth(root: Path, n_subjects: int) -> None:
    """The OAI tables, read by kneelib.data, say what the causal model planted."""
    from kneelib.data.clinical import chronic_pain, knee_table, widespread_pain

    table = knee_table(root, ["kl_grade", "womac_pain", "frequent_pain", "min_medial_jsw_mm", "jsn_medial",
                              "osteophyte_fm", "knee_pain_months_12m", "knee_pain_any_12m",
                              "widespread_pain_above_waist", "widespread_pain_below_waist",
                              "widespread_pain_axial"], visits=(0, 12))
    assert len(table) == n_subjects * 2 * 2
    truth = pd.read_csv(root / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    truth["SIDE"] = truth.side.map({"R": 1, "L": 2})
    merged = table.merge(truth, left_on=["ID", "SIDE", "VISIT"], right_on=["participant_id", "SIDE", "visit_month"],
                         validate="one_to_one")
    assert len(merged) == len(table)
    assert (merged.kl_grade_x == merged.kl_grade_y).all()
    assert (merged.jsn_medial == merged.jsn_grade_medial).all()
    assert (merged.osteophyte_fm == merged.osteophyte_grade_FM).all()
    assert (merged.womac_pain_x == merged.womac_pain_y).all()
    assert np.allclose(merged.min_medial_jsw_mm, merged.jsw_medial_measured_mm)
    baseline = merged[merged.VISIT == 0]
    assert (baseline.frequent_pain_x == baseline.frequent_pain_y.astype(int)).all()
    label = chronic_pain(merged)
    assert (label[merged.chronic_pain] == 1).all() and (label[~merged.any_pain_past_12m] == 0).all()
    subjects = pd.read_csv(root / "ground_truth" / "subjects.csv", dtype={"participant_id": str})
    planted = merged.ID.map(subjects.set_index("participant_id").widespread_pain).astype(float)
    assert (widespread_pain(merged) == planted).all()


def test_orchestration_layout_tables_and_truth(fake_renderers, tmp_path):
    root = generate_cohort("smoke", out_dir=tmp_path / "c", seed=3, n_subjects=3, n_workers=1, progress=False)
    for name in ("contents.csv", "Enrollees.txt", "AllClinical00.txt", "AllClinical01.txt", "kXR_SQ_BU00.txt",
                 "kXR_SQ_BU01.txt", "kXR_QJSW_Duryea00.txt", "kXR_QJSW_Duryea01.txt",
                 "ground_truth/subjects.csv", "ground_truth/knees.csv", "ground_truth/series.csv",
                 "ground_truth/radiograph_landmarks.csv", "ground_truth/README.md"):
        assert (root / name).is_file(), name
    from kneelib.data.clinical import read_oai_table
    from kneelib.data.image_index import read_image_index

    frame = read_image_index(root).table
    # the book's series set: baseline 6 MR series + radiograph, 12 months right DESS and T2 map + radiograph
    assert len(frame) == 3 * ((6 + 1) + (2 + 1))
    assert set(frame.SeriesDescription) >= {"SAG_IW_TSE_RIGHT", "SAG_IW_TSE_LEFT", "COR_IW_TSE_LEFT",
                                            "SAG_3D_DESS_RIGHT", "SAG_T2_MAP_RIGHT"}
    assert "SAG_3D_DESS_LEFT" not in set(frame.SeriesDescription)
    assert set(frame[frame.VISIT == 12].SeriesDescription) == {"SAG_3D_DESS_RIGHT", "SAG_T2_MAP_RIGHT",
                                                               "Bilateral PA Fixed Flexion Knee"}
    for folder in frame.Folder:
        assert (root / folder / "001").is_file(), folder
    _check_tables_against_truth(root, n_subjects=3)
    enrollees = read_oai_table(root / "Enrollees.txt")
    assert list(enrollees.columns[:3]) == ["ID", "P02SEX", "P02RACE"]
    series = pd.read_csv(root / "ground_truth" / "series.csv")
    sagittal = series[series.series_key.str.startswith("sag")]
    # The fake series is written along -normal (x rises while the normal row x column is -x), so
    # the reader reverses it: ground truth follows the reader's order, rendered slice 3 of 6 -> 2.
    assert (sagittal.pcl_center_slice == 2).all()
    assert (root / series.labels_path.iloc[0]).is_file()
    assert not (root / ".work").exists() and not (root / ".done").exists()


def test_orchestration_is_deterministic_reused_and_resumes(fake_renderers, tmp_path):
    first = generate_cohort("smoke", out_dir=tmp_path / "a", seed=1, n_subjects=2, n_workers=1, progress=False)
    second = generate_cohort("smoke", out_dir=tmp_path / "b", seed=1, n_subjects=2, n_workers=1, progress=False)
    digest = _tree_digest(first)
    assert digest == _tree_digest(second)
    # complete -> reused without touching files
    marker = first / cohort_module.COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert generate_cohort("smoke", out_dir=first, seed=1, n_subjects=2, n_workers=1, progress=False) == first
    assert marker.stat().st_mtime_ns == stamp
    # interrupted run: drop the marker and the tables, leave a half-written subject -> same files
    marker.unlink()
    (first / "contents.csv").unlink()
    (first / ".work" / "9000001" / "junk").mkdir(parents=True)
    generate_cohort("smoke", out_dir=first, seed=1, n_subjects=2, n_workers=1, progress=False)
    assert _tree_digest(first) == digest
    # other parameters in a user folder: a clear error, nothing wiped
    with pytest.raises(FileExistsError, match="other parameters"):
        generate_cohort("smoke", out_dir=first, seed=2, n_subjects=2, n_workers=1, progress=False)
    with pytest.raises(ValueError, match="preset"):
        generate_cohort("huge", out_dir=tmp_path / "x")


def test_book_series_set_writes_the_same_bytes_as_the_whole_protocol(fake_renderers, tmp_path):
    """Leaving out the series no chapter reads changes no byte of the series that are written."""
    from kneelib.data.image_index import read_image_index
    from kneelib.synth.cohort import expected_mr_descriptions_by_visit

    book = generate_cohort("smoke", out_dir=tmp_path / "book", seed=2, n_subjects=2, n_workers=1, progress=False)
    full = generate_cohort("smoke", out_dir=tmp_path / "all", seed=2, n_subjects=2, n_workers=1, progress=False,
                           mr_series="all")
    assert len(read_image_index(full).table) == 2 * 2 * (7 + 1)  # 2 subjects x 2 visits x (7 MR + radiograph)
    book_files, full_files = _tree_digest(book), _tree_digest(full)
    images = {name for name in book_files if name[:1].isdigit() or name.startswith("ground_truth/series/")}
    assert len(images) > 0 and images < set(full_files)
    assert all(book_files[name] == full_files[name] for name in images)
    assert expected_mr_descriptions_by_visit(book) == {
        0: ["SAG_IW_TSE_RIGHT", "SAG_IW_TSE_LEFT", "COR_IW_TSE_RIGHT", "COR_IW_TSE_LEFT", "SAG_3D_DESS_RIGHT",
            "SAG_T2_MAP_RIGHT"], 12: ["SAG_3D_DESS_RIGHT", "SAG_T2_MAP_RIGHT"]}
    assert len(expected_mr_descriptions_by_visit(full)[12]) == 7
    assert expected_mr_descriptions_by_visit(tmp_path) is None  # not a synthetic cohort: the whole protocol
    most = generate_cohort("smoke", out_dir=tmp_path / "most", seed=2, n_subjects=1, n_workers=1, progress=False,
                           variant="most")
    assert set(read_image_index(most).table.SeriesDescription) == {"Bilateral PA Fixed Flexion Knee"}
    assert pd.read_csv(most / "ground_truth" / "series.csv").empty
    assert cohort_module.default_out_dir("smoke", mr_series="all").name == "oai_smoke_seed0_allseries"
    assert cohort_module.default_out_dir("paper", mr_series="all").name == "oai_paper_seed0"
    with pytest.raises(ValueError, match="mr_series"):
        generate_cohort("smoke", out_dir=tmp_path / "x", n_subjects=1, mr_series="some")


# ------------------------------------------------------------------ the real smoke cohort
def test_renderers_import():
    """An ImportError anywhere in the renderers fails here (it used to skip the cohort test)."""
    for name in ("anatomy", "mri", "radiograph", "protocols"):
        importlib.import_module(f"kneelib.synth.{name}")


def test_real_smoke_cohort_is_byte_identical_and_readable(tmp_path):
    first = generate_cohort("smoke", out_dir=tmp_path / "a", seed=0, n_subjects=2, n_workers=2, progress=False)
    second = generate_cohort("smoke", out_dir=tmp_path / "b", seed=0, n_subjects=2, n_workers=1, progress=False)
    assert _tree_digest(first) == _tree_digest(second)
    from kneelib.data.dicom import read_dicom_series, read_radiograph
    from kneelib.data.image_index import read_image_index

    frame = read_image_index(first).table
    for row in frame.itertuples():
        if "Flexion" in row.SeriesDescription:
            read_radiograph(first / row.Folder / "001")
        else:
            volume = read_dicom_series(first / row.Folder)
            assert volume.laterality == ("R" if row.SeriesDescription.endswith("RIGHT") else "L")
    _check_tables_against_truth(first, n_subjects=2)


def test_compressed_and_uncompressed_cohorts_hold_the_same_pixels(tmp_path):
    """The default JPEG-LS storage is lossless: an uncompressed cohort of the same seed reads back identically."""
    import pydicom

    from kneelib.data.dicom import read_dicom_series, read_radiograph
    from kneelib.data.image_index import read_image_index
    from kneelib.synth.cohort import default_out_dir

    compressed = generate_cohort("smoke", out_dir=tmp_path / "c", seed=0, n_subjects=1, n_workers=1, progress=False)
    plain = generate_cohort("smoke", out_dir=tmp_path / "u", seed=0, n_subjects=1, n_workers=1, progress=False,
                            dicom_compression="none")
    frame = read_image_index(compressed).table
    assert frame.drop(columns="path").equals(read_image_index(plain).table.drop(columns="path")) and len(frame) > 2
    for row in frame.itertuples():
        if "Flexion" in row.SeriesDescription:
            a, b = read_radiograph(compressed / row.Folder / "001"), read_radiograph(plain / row.Folder / "001")
            np.testing.assert_array_equal(a.pixels, b.pixels)
        else:
            a, b = read_dicom_series(compressed / row.Folder), read_dicom_series(plain / row.Folder)
            np.testing.assert_array_equal(a.array, b.array)
            np.testing.assert_array_equal(a.affine, b.affine)
        first = sorted((compressed / row.Folder).iterdir())[0]
        assert pydicom.dcmread(first, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    size = lambda root: sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.parent.name != "ground_truth")
    assert size(compressed) < size(plain)
    assert default_out_dir("smoke", dicom_compression="none").name.endswith("_uncompressed")
    with pytest.raises(ValueError, match="dicom_compression"):
        generate_cohort("smoke", out_dir=tmp_path / "x", n_subjects=1, dicom_compression="zip")


def test_cache_key_ignores_docstrings_and_comments():
    from kneelib.synth.cohort import _code_without_docs

    plain = "def f(x):\n    return x + 1\n"
    documented = 'def f(x):\n    """Add one."""\n    # a comment\n    return x + 1\n'
    changed = "def f(x):\n    return x + 2\n"
    assert _code_without_docs(plain) == _code_without_docs(documented)
    assert _code_without_docs(plain) != _code_without_docs(changed)
