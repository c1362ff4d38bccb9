"""Knee radiograph preprocessing of paper 004 (clipping, GCN, rotation, mirroring, crops) and reading."""
import numpy as np
import pytest
import torch
from PIL import Image

from kneelib.data.errors import RadiographReadError
from kneelib.data.radiograph import read_knee_image
from kneelib.preprocess.radiograph import (clip_histogram, crop_around, crop_centre, crop_mm,
                                           global_contrast_normalise, mirror, prepare_image_stack,
                                           prepare_knee_image, resize, rotate, standardise_side)


def _ramp(size=50):
    return np.tile(np.arange(size, dtype=np.float32), (size, 1))


def test_clip_histogram_to_percentiles():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    clipped = clip_histogram(image, 5, 99)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert (clipped[image <= np.percentile(image, 5)] == 0).all()
    assert (clipped[image >= np.percentile(image, 99)] == 1).all()
    assert (clip_histogram(np.full((5, 5), 7.0)) == 0).all()
    with pytest.raises(ValueError):
        clip_histogram(image, 50, 10)


def test_global_contrast_normalisation_numpy_and_torch():
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32) * 40 + 3
    normalised = global_contrast_normalise(image)
    assert abs(normalised.mean()) < 1e-5 and abs(normalised.std() - 1) < 1e-4
    batch = torch.from_numpy(np.stack([image, image * 2]))[:, None]
    out = global_contrast_normalise(batch)
    assert torch.allclose(out[0], out[1], atol=1e-5)
    assert torch.allclose(out.mean(dim=(-2, -1)), torch.zeros(2, 1), atol=1e-5)


def test_rotation_and_mirroring():
    image = np.zeros((41, 41), np.float32)
    image[20, 25:35] = 1.0  # a horizontal bar right of the centre
    turned = rotate(image, 90, order=0)
    assert turned[10:15, 20].sum() >= 4  # counter-clockwise: the bar now points up
    assert np.array_equal(mirror(_ramp())[:, 0], _ramp()[:, -1])
    left = _ramp()
    assert np.array_equal(standardise_side(left, "L"), mirror(left))
    assert np.array_equal(standardise_side(left, "R"), left)
    with pytest.raises(ValueError, match="side"):
        standardise_side(left, "X")


def test_crops_and_resize():
    image = _ramp(50)
    assert crop_centre(image, 10).shape == (10, 10)
    corner = crop_around(image, (0, 0), 10, fill=-1)
    assert corner.shape == (10, 10) and corner[0, 0] == -1 and corner[5, 5] == image[0, 0]
    assert crop_mm(image, (25, 25), size_mm=14.0, pixel_spacing_mm=0.7).shape == (20, 20)
    with pytest.raises(ValueError):
        crop_centre(image, 60)
    small = resize(image, 25)
    assert small.shape == (25, 25)
    assert np.all(np.diff(small[10]) > 0)  # the ramp survives bilinear resizing


def test_prepare_knee_image_range_and_mirroring():
    image = _ramp(60) * 10
    out = prepare_knee_image(image, 40, side="L", mirror_side="L")
    assert out.shape == (40, 40) and out.min() >= 0 and out.max() <= 1
    assert out[0, 0] > out[0, -1]  # left knee mirrored: the ramp now falls
    assert prepare_knee_image(image, 40, side="R", mirror_side="L")[0, 0] < 0.1


def test_read_png_rgb_and_stack(tmp_path):
    grey = (_ramp(40) * 6).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "b.png")
    a, b = read_knee_image(tmp_path / "a.png"), read_knee_image(tmp_path / "b.png")
    assert a.shape == b.shape == (40, 40) and np.allclose(a, b, atol=1)
    stack = prepare_image_stack([tmp_path / "a.png", tmp_path / "b.png"], 32, progress=False)
    assert stack.shape == (2, 32, 32) and stack.dtype == np.uint8


def _write_dicom(path, pixels, photometric="MONOCHROME2"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_read_dicom_and_monochrome1_inversion(tmp_path):
    pixels = (_ramp(32) * 100).astype(np.uint16)
    _write_dicom(tmp_path / "k2.dcm", pixels)
    _write_dicom(tmp_path / "k1", pixels, photometric="MONOCHROME1")
    normal = read_knee_image(tmp_path / "k2.dcm")
    inverted = read_knee_image(tmp_path / "k1")  # no extension: read as DICOM
    assert np.array_equal(normal, pixels.astype(np.float32))
    assert np.array_equal(inverted, pixels.max() - pixels.astype(np.float32))


def test_bad_files_raise_typed_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.dcm").write_bytes(b"not dicom either")
    with pytest.raises(RadiographReadError, match="broken.png"):
        read_knee_image(tmp_path / "broken.png")
    with pytest.raises(RadiographReadError, match="broken.dcm"):
        read_knee_image(tmp_path / "broken.dcm")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_knee_image(tmp_path / "absent.png")
