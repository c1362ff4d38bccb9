"""kneelib.papers.cohort: label counts, montage sampling, minimal DICOM reading, tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.papers import cohort


def _write_dicom(path, position_x, orientation=(0, 1, 0, 0, 0, -1), value=0, rows=4, cols=5,
                 echo_time=7.0, frame="1.2.3"):
    """A minimal single-frame MR DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesDescription = "test series"
    ds.FrameOfReferenceUID = frame
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [position_x, -10.0, 20.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.EchoTime = echo_time
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((rows, cols), value, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_read_dicom_folder_orders_slices_along_the_normal(tmp_path):
    # file names in the wrong order; value encodes the true x position
    for name, x in (("a.dcm", -3.0), ("b.dcm", -1.0), ("c.dcm", -2.0)):
        _write_dicom(tmp_path / name, x, value=int(-x))
    volume = cohort.read_dicom_folder(tmp_path)
    assert volume.pixels.shape == (3, 4, 5)
    assert volume.slice_axis == "x"
    # normal = row x col cosines = (-1, 0, 0): ascending along the normal is descending x
    assert list(volume.slice_coordinate_mm) == [-1.0, -2.0, -3.0]
    assert [int(v[0, 0]) for v in volume.pixels] == [1, 2, 3]
    centre = cohort.read_dicom_folder(tmp_path, max_slices=1)
    assert list(centre.slice_coordinate_mm) == [-2.0]


def test_read_dicom_folder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .dcm files"):
        cohort.read_dicom_folder(tmp_path)
    _write_dicom(tmp_path / "a.dcm", 0.0)
    _write_dicom(tmp_path / "b.dcm", 1.0, orientation=(1, 0, 0, 0, 1, 0))
    with pytest.raises(ValueError, match="b.dcm: orientation differs"):
        cohort.read_dicom_folder(tmp_path)


def test_t1rho_series_keyed_by_spin_lock_and_aligned(tmp_path):
    for tsl in (1.0, 10.0):
        folder = tmp_path / f"TSL{int(tsl):02d}ms"
        folder.mkdir()
        for x in (0.0, 1.5):
            _write_dicom(folder / f"{x}.dcm", x, echo_time=tsl)
    series = cohort.read_t1rho_series(tmp_path)
    assert list(series) == [1.0, 10.0]
    misaligned = tmp_path / "TSL30ms"
    misaligned.mkdir()
    _write_dicom(misaligned / "x.dcm", 5.0, echo_time=30.0)
    with pytest.raises(ValueError, match="not voxel-aligned"):
        cohort.read_t1rho_series(tmp_path)


def _labels(tmp_path):
    rows = [{"relpath": f"images/{s}/{k}/{i}.png", "split": s, "kl_grade": k, "oai_id": 9000000 + i,
             "side": "R"} for i, (s, k) in enumerate([("train", 0)] * 3 + [("train", 2)] * 2
                                                   + [("val", 0), ("val", 4)])]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)


def test_kl_label_counts(tmp_path):
    _labels(tmp_path)
    counts = cohort.kl_label_counts(tmp_path)
    assert counts.loc["train", "KL 0"] == 3 and counts.loc["train", "KL 2"] == 2
    assert counts.loc["total", "all"] == 7 and counts.loc["val", "KL 4"] == 1


def test_sample_is_seeded_and_capped(tmp_path):
    _labels(tmp_path)
    first = cohort.sample_kl_images(tmp_path, per_grade=2, seed=1)
    assert first.equals(cohort.sample_kl_images(tmp_path, per_grade=2, seed=1))
    assert first.groupby("kl_grade").size().to_dict() == {0: 2, 2: 2}
    with pytest.raises(ValueError, match="split 'test'"):
        cohort.sample_kl_images(tmp_path, per_grade=1, split="test")


def test_missing_dataset_is_reported_not_raised(tmp_path):
    inventory = cohort.dataset_inventory(tmp_path)
    assert not inventory["present"].any()
    message = cohort.missing_dataset_message("chen_kl_radiographs", tmp_path)
    assert "not found" in message and "KNEELIB_DATA" in message
    assert all(c.reproduced is None for c in cohort.cohort_comparisons(None))


@pytest.mark.realdata
def test_real_data_tables(real_data_root):
    counts = cohort.kl_label_counts(real_data_root / "chen_kl_radiographs")
    assert counts.loc["total", "all"] == 2978
    tables = cohort.load_deep_pain_tables(real_data_root / "deep_pain_regression")
    assert {b: len(t) for b, t in tables.items()} == {"femur": 2149, "tibia": 2141, "patella": 2131}
    summary = cohort.deep_pain_summary(tables)
    assert 25 < summary.loc["femur", "chronic pain (%)"] < 40
    comparisons = cohort.cohort_comparisons(tables)
    assert [c.reproduced for c in comparisons] == [2149, 2141, 2131]
    selection = cohort.deep_pain_model_selection(real_data_root / "deep_pain_regression")
    assert set(selection.index) == {"Femur", "Tibia", "Patella"}


@pytest.mark.realdata
def test_real_t1rho_is_aligned_with_dess_frame(real_data_root):
    mri = real_data_root / "pykneer_knee_mri"
    t1rho = cohort.read_t1rho_series(mri / "cubequant_T1rho", max_slices=2)
    assert list(t1rho) == [1.0, 10.0, 30.0, 60.0]
    dess = cohort.read_dicom_folder(mri / "DESS_echo1", max_slices=2)
    assert dess.frame_of_reference == next(iter(t1rho.values())).frame_of_reference
    # signal decays with spin-lock time (whole-slice mean, first vs last)
    means = [v.pixels.mean() for v in t1rho.values()]
    assert means[0] > means[-1]
