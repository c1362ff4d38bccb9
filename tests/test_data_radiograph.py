"""The one radiograph reader (issue 9, items 9 and 10): spacing, LUTs, MONOCHROME1, compressed DICOM."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         SecondaryCaptureImageStorage, generate_uid)

from kneelib.data.errors import KneelibDataError, RadiographReadError
from kneelib.data.radiograph import read_knee_image, read_radiograph


def _dataset(pixels, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("radiograph", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _pixels(seed=0, shape=(48, 40)):
    return np.random.default_rng(seed).integers(0, 4096, size=shape).astype(np.uint16)


def test_spacing_prefers_calibrated_pixel_spacing_then_corrected_imager_spacing(tmp_path):
    image = _pixels()
    cases = {
        "calibrated": ({"PixelSpacing": [0.125, 0.125], "ImagerPixelSpacing": [0.15, 0.15],
                        "EstimatedRadiographicMagnificationFactor": 1.2}, (0.125, 0.125), "PixelSpacing"),
        "magnified": ({"ImagerPixelSpacing": [0.15, 0.18], "EstimatedRadiographicMagnificationFactor": 1.2},
                      (0.125, 0.15), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"),
        "detector": ({"ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15), "ImagerPixelSpacing"),
    }
    for name, (tags, spacing, source) in cases.items():
        _dataset(image, **tags).save_as(tmp_path / name, enforce_file_format=True)
        radiograph = read_radiograph(tmp_path / name)
        assert radiograph.pixel_spacing_mm == pytest.approx(spacing), name
        assert radiograph.spacing_source == source, name
    _dataset(image).save_as(tmp_path / "none", enforce_file_format=True)
    with pytest.raises(RadiographReadError, match=r"none: no PixelSpacing or ImagerPixelSpacing"):
        read_radiograph(tmp_path / "none")
    assert read_radiograph(tmp_path / "none", require_spacing=False).pixel_spacing_mm is None


def test_modality_and_voi_lut_applied_with_pydicom_functions(tmp_path):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    raw = _pixels(1)
    ds = _dataset(raw, PixelSpacing=[0.2, 0.2], RescaleSlope=2, RescaleIntercept=-100,
                  WindowCenter=3000, WindowWidth=2000)
    ds.save_as(tmp_path / "xr.dcm", enforce_file_format=True)
    radiograph = read_radiograph(tmp_path / "xr.dcm")
    stored = pydicom.dcmread(tmp_path / "xr.dcm")
    expected = apply_voi_lut(apply_modality_lut(raw, stored), stored)
    np.testing.assert_allclose(radiograph.pixels, expected)
    assert radiograph.metadata["modality_lut"] and radiograph.metadata["voi_lut"] == "window"
    modality_only = read_radiograph(tmp_path / "xr.dcm", voi_lut=False)
    np.testing.assert_allclose(modality_only.pixels, raw * 2.0 - 100)
    assert modality_only.metadata["voi_lut"] == "none"
    # The window really clips: values below centre - width/2 all map to the window's minimum.
    low = raw * 2.0 - 100 < 2000
    assert low.any() and np.ptp(radiograph.pixels[low]) == 0


def test_monochrome1_is_inverted_after_the_luts(tmp_path):
    raw = _pixels(2)
    _dataset(raw, PixelSpacing=[0.2, 0.2], PhotometricInterpretation="MONOCHROME1",
             RescaleSlope=1, RescaleIntercept=-1000).save_as(tmp_path / "m1", enforce_file_format=True)
    radiograph = read_radiograph(tmp_path / "m1")
    values = raw.astype(float) - 1000
    np.testing.assert_allclose(radiograph.pixels, values.min() + values.max() - values)
    assert radiograph.metadata["inverted"]


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless],
                         ids=["RLE", "JPEG-LS", "JPEG2000"])
def test_compressed_radiograph_reads_back_the_same_pixels(tmp_path, syntax):
    raw = _pixels(3)
    ds = _dataset(raw, PixelSpacing=[0.2, 0.2])
    ds.compress(syntax)
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "c.dcm").file_meta.TransferSyntaxUID == syntax
    radiograph = read_radiograph(tmp_path / "c.dcm")
    np.testing.assert_array_equal(radiograph.pixels, raw)
    assert radiograph.metadata["TransferSyntaxUID"] == str(syntax)
    np.testing.assert_array_equal(read_knee_image(tmp_path / "c.dcm"), raw.astype(np.float32))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless],
                         ids=["RLE", "JPEG-LS", "JPEG2000"])
def test_compressed_mri_series_reads_back_the_same_volume(tmp_path, syntax):
    from kneelib.data.dicom import read_dicom_series

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir(), packed.mkdir()
    uid = generate_uid()
    for k in range(3):
        ds = _dataset(_pixels(10 + k, (40, 36)), PixelSpacing=[0.5, 0.5], ImagePositionPatient=[0, 0, 2.0 * k],
                      ImageOrientationPatient=[1, 0, 0, 0, 1, 0], FrameOfReferenceUID=uid, Modality="MR")
        ds.save_as(plain / f"{k:03d}", enforce_file_format=True)
        ds.compress(syntax)
        ds.save_as(packed / f"{k:03d}", enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom_series(packed).array, read_dicom_series(plain).array)


def test_undecodable_compressed_file_is_a_typed_error_naming_file_and_reason(tmp_path):
    from pydicom.encaps import encapsulate

    ds = _dataset(_pixels(4), PixelSpacing=[0.2, 0.2])
    ds.compress(JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])  # a broken JPEG 2000 codestream
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    with pytest.raises(RadiographReadError, match=r"broken\.dcm.*JPEG 2000.*cannot be decoded") as info:
        read_radiograph(tmp_path / "broken.dcm")
    assert isinstance(info.value, KneelibDataError) and info.value.path.name == "broken.dcm"


def test_one_radiograph_reader():
    import kneelib.data
    import kneelib.data.dicom
    import kneelib.preprocess.radiograph as preprocess

    assert kneelib.data.dicom.read_radiograph is read_radiograph is kneelib.data.read_radiograph
    assert preprocess.read_knee_image is read_knee_image
    assert not hasattr(preprocess, "pydicom")  # the preprocess module reads no DICOM itself
