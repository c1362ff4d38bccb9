"""Writer -> reader round trips and every bad-input case of kneelib.data.dicom (tiny volumes)."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from kneelib.data.cache import load_series_cached, series_cache_key
from kneelib.data.dicom import (
    group_series_folders,
    read_dicom_series,
    read_radiograph,
    to_common_orientation,
)
from kneelib.data.errors import DicomReadError, LateralityError, MixedGeometryError, SliceGapError
from kneelib.synth.oai_writer import SliceGeometry, write_dicom_series, write_radiograph

N_SLICES, N_ROWS, N_COLS = 5, 6, 7


def sagittal_affine(side: str = "R") -> np.ndarray:
    """RAS affine of a small sagittal stack: i -> posterior, j -> inferior, k -> toward the patient's left."""
    x0 = 60.0 if side == "R" else -80.0  # RAS: the patient's right is +x
    return np.array([
        [0.0, 0.0, 3.0, x0],
        [-0.5, 0.0, 0.0, 40.0],
        [0.0, -0.4, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ])


def pixels(seed: int = 0, shape=(N_SLICES, N_ROWS, N_COLS)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape, dtype=np.uint16)


def header(side: str = "R", **extra) -> dict:
    word = "RIGHT" if side == "R" else "LEFT"
    return {"SeriesDescription": f"SAG_IW_TSE_{word}", "Laterality": side, "EchoTime": 30.0,
            "RepetitionTime": 3200.0, "PatientID": "9000001", "StudyDate": "20050101",
            "StudyDescription": f"OAI^MR^ENROLLMENT^{word}", "SeriesNumber": 3, **extra}


def write(folder, side="R", array=None, geometry=None, seed=0, **extra):
    array = pixels(seed) if array is None else array
    geometry = geometry or SliceGeometry.from_affine(sagittal_affine(side), array.shape[-3])
    return write_dicom_series(folder, array, geometry, header(side, **extra), uid_seed=seed)


@pytest.mark.parametrize("compression", ["none", "jpeg-ls"])
@pytest.mark.parametrize("n_echoes", [1, 3])
def test_series_files_are_the_bytes_pydicom_writes(tmp_path, n_echoes, compression):
    """The series encoder re-encodes only per-file elements; each file must still be
    exactly what ``pydicom.dcmwrite(..., enforce_file_format=True)`` writes for it,
    uncompressed or with encapsulated JPEG-LS pixel data."""
    shape = (n_echoes, N_SLICES, N_ROWS, N_COLS) if n_echoes > 1 else (N_SLICES, N_ROWS, N_COLS)
    echo = [10.0 * (e + 1) for e in range(n_echoes)] if n_echoes > 1 else 30.0
    array = pixels(shape=shape)
    geometry = SliceGeometry.from_affine(sagittal_affine("R"), N_SLICES)
    files = write_dicom_series(tmp_path / "s", array, geometry, header(EchoTime=echo, PatientName="Doe^Jane"),
                               uid_seed=0, compression=compression)
    assert len(files) == n_echoes * N_SLICES
    expected_syntax = "1.2.840.10008.1.2.4.80" if compression == "jpeg-ls" else "1.2.840.10008.1.2.1"
    assert all(pydicom.dcmread(f).file_meta.TransferSyntaxUID == expected_syntax for f in files)
    volume = read_dicom_series(tmp_path / "s")  # the same pixel values read back
    for echo in range(n_echoes):
        np.testing.assert_array_equal(volume.slices(echo) if n_echoes > 1 else volume.slices(),
                                      array[echo] if n_echoes > 1 else array)
    for path in files:
        dataset = pydicom.dcmread(path)
        for tag in list(dataset.keys()):  # decode every element, so pydicom re-encodes it
            dataset[tag].value
        dataset.file_meta = pydicom.dataset.FileMetaDataset(dataset.file_meta)
        again = tmp_path / "again"
        dataset.save_as(again, enforce_file_format=True)
        assert path.read_bytes() == again.read_bytes(), path.name


def test_round_trip_affine_pixels_and_side(tmp_path):
    array = pixels()
    files = write(tmp_path / "s", array=array)
    assert [f.name for f in files] == ["001", "002", "003", "004", "005"]
    volume = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(volume.affine, sagittal_affine("R"), atol=1e-6)
    assert volume.shape == (N_COLS, N_ROWS, N_SLICES)
    np.testing.assert_array_equal(volume.slices(), array)
    assert volume.laterality == "R" and volume.laterality_source == "tag"
    assert volume.echo_times_ms == (30.0,)
    assert volume.spacing_mm == pytest.approx((0.5, 0.4, 3.0))


def test_files_in_shuffled_order_read_right(tmp_path):
    """Slices are ordered by position along the normal, not by file name or InstanceNumber."""
    array = pixels(1)
    geometry = SliceGeometry.from_affine(sagittal_affine(), N_SLICES)
    permutation = np.array([3, 0, 4, 2, 1])
    shuffled = SliceGeometry(geometry.image_orientation_patient,
                             tuple(geometry.image_positions_patient[i] for i in permutation),
                             geometry.pixel_spacing_mm, geometry.slice_thickness_mm)
    write(tmp_path / "s", array=array[permutation], geometry=shuffled)
    volume = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.slices(), array)
    np.testing.assert_allclose(volume.affine, sagittal_affine(), atol=1e-6)


def test_left_knee_side_and_common_orientation_mirror(tmp_path):
    array = pixels(2)
    write(tmp_path / "left", side="L", array=array)
    write(tmp_path / "right", side="R", array=array)
    left, right = read_dicom_series(tmp_path / "left"), read_dicom_series(tmp_path / "right")
    assert left.laterality == "L" and right.laterality == "R"
    common_left, common_right = to_common_orientation(left), to_common_orientation(right)
    # Pure function: the inputs are untouched.
    assert not left.mirrored and left.shape == (N_COLS, N_ROWS, N_SLICES)
    assert common_left.mirrored and not common_right.mirrored
    # RAS+ axes: sagittal slices on axis 0; the left knee's slice order is reversed.
    assert common_right.shape == (N_SLICES, N_COLS, N_ROWS)
    assert np.all(np.diag(common_right.affine)[:3] > 0) and np.all(np.diag(common_left.affine)[:3] > 0)
    np.testing.assert_array_equal(common_left.array, common_right.array[::-1])
    # Mirrored world x: the mirrored left knee spans -x of the real one.
    x_left = left.affine[0, 3] + left.affine[0, 2] * np.arange(N_SLICES)
    x_common = common_left.affine[0, 3] + common_left.affine[0, 0] * np.arange(N_SLICES)
    np.testing.assert_allclose(np.sort(x_common), np.sort(-x_left))


def test_side_from_description_then_position(tmp_path):
    hdr = header("L")
    hdr.pop("Laterality")
    write_dicom_series(tmp_path / "d", pixels(), SliceGeometry.from_affine(sagittal_affine("L"), N_SLICES), hdr, 0)
    volume = read_dicom_series(tmp_path / "d")
    assert (volume.laterality, volume.laterality_source) == ("L", "description")
    hdr = {**hdr, "SeriesDescription": "SAG DESS", "StudyDescription": "knee"}
    write_dicom_series(tmp_path / "p", pixels(), SliceGeometry.from_affine(sagittal_affine("R"), N_SLICES), hdr, 0)
    volume = read_dicom_series(tmp_path / "p")
    assert (volume.laterality, volume.laterality_source) == ("R", "position")
    with pytest.raises(LateralityError, match="contradicts"):
        read_dicom_series(tmp_path / "d", laterality="R")


def test_multi_echo_series_becomes_4d(tmp_path):
    echo_times = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    array = pixels(3, shape=(7, N_SLICES, N_ROWS, N_COLS))
    write_dicom_series(tmp_path / "t2", array, SliceGeometry.from_affine(sagittal_affine(), N_SLICES),
                       {**header(), "SeriesDescription": "SAG_T2_MAP_RIGHT", "EchoTime": echo_times}, 5)
    volume = read_dicom_series(tmp_path / "t2")
    assert volume.shape == (N_COLS, N_ROWS, N_SLICES, 7)
    assert volume.echo_times_ms == tuple(echo_times)
    for echo in range(7):
        np.testing.assert_array_equal(volume.slices(echo), array[echo])
    assert volume.array.flags.f_contiguous  # the NIfTI layout, without a transpose copy


def test_fresh_read_and_cache_hit_share_the_fortran_layout(tmp_path):
    write(tmp_path / "s")
    fresh = read_dicom_series(tmp_path / "s")
    assert fresh.array.flags.f_contiguous and fresh.array.shape == (N_COLS, N_ROWS, N_SLICES)
    first = load_series_cached(tmp_path / "s", cache_dir=tmp_path / "cache")
    hit = load_series_cached(tmp_path / "s", cache_dir=tmp_path / "cache")
    for volume in (first, hit):
        assert volume.array.flags.f_contiguous
        np.testing.assert_array_equal(volume.array, fresh.array)


def test_several_folders_grouped_by_frame_of_reference(tmp_path):
    """Like the real T1rho: one folder per spin-lock time, time in EchoTime, one frame of reference."""
    geometry = SliceGeometry.from_affine(sagittal_affine(), N_SLICES)
    folders = []
    for n, tsl in enumerate([60.0, 1.0, 30.0, 10.0]):
        folder = tmp_path / f"TSL{int(tsl):02d}ms"
        write_dicom_series(folder, pixels(10 + int(tsl)), geometry,
                           {**header(), "SeriesDescription": "cubequant T1rho", "EchoTime": tsl,
                            "SeriesNumber": 7 + n, "FrameOfReferenceUID": "1.2.3.4"}, uid_seed=n)
        folders.append(folder)
    write(tmp_path / "other", seed=99)  # another series of a different frame of reference
    groups = group_series_folders(folders + [tmp_path / "other"])
    assert sorted(groups[("1.2.3.4", "cubequant T1rho")]) == sorted(folders)
    volume = read_dicom_series(groups[("1.2.3.4", "cubequant T1rho")])
    assert volume.echo_times_ms == (1.0, 10.0, 30.0, 60.0)
    np.testing.assert_array_equal(volume.slices(echo=2), pixels(40))
    with pytest.raises(MixedGeometryError, match="frame of reference"):
        read_dicom_series([folders[0], tmp_path / "other"])


def test_writer_is_deterministic_and_seed_dependent(tmp_path):
    a, b, c = write(tmp_path / "a"), write(tmp_path / "b"), write(tmp_path / "c", seed=0, SeriesNumber=4)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert pydicom.dcmread(a[0]).SeriesInstanceUID != pydicom.dcmread(c[0]).SeriesInstanceUID
    ds = pydicom.dcmread(a[0])
    assert (ds.Manufacturer, ds.ManufacturerModelName, float(ds.MagneticFieldStrength)) == ("SIEMENS", "Trio", 3.0)
    assert ds.BodyPartExamined == "KNEE" and ds.StudyDate == "20050101"


def test_truncated_file_names_the_file(tmp_path):
    files = write(tmp_path / "s")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 20])
    with pytest.raises(DicomReadError, match=r"003.*truncated pixel data"):
        read_dicom_series(tmp_path / "s")
    files[2].write_bytes(data[:60])
    with pytest.raises(DicomReadError, match=r"003"):
        read_dicom_series(tmp_path / "s")


def test_missing_pixel_data_names_the_file(tmp_path):
    files = write(tmp_path / "s")
    ds = pydicom.dcmread(files[1])
    del ds.PixelData
    ds.save_as(files[1])
    with pytest.raises(DicomReadError, match=r"002.*no pixel data"):
        read_dicom_series(tmp_path / "s")


def test_gap_in_slice_positions(tmp_path):
    geometry = SliceGeometry.from_affine(sagittal_affine(), N_SLICES + 1, skip_slices=[2])
    write(tmp_path / "s", geometry=geometry)
    with pytest.raises(SliceGapError, match=r"gap of 6\.000 mm.*expected 3\.000 mm") as info:
        read_dicom_series(tmp_path / "s")
    assert str(tmp_path / "s") in str(info.value)
    assert len(info.value.positions_mm) == N_SLICES


def test_duplicate_slice_position(tmp_path):
    geometry = SliceGeometry.from_affine(sagittal_affine(), N_SLICES)
    positions = list(geometry.image_positions_patient)
    positions[3] = positions[2]
    write(tmp_path / "s", geometry=SliceGeometry(geometry.image_orientation_patient, tuple(positions),
                                                  geometry.pixel_spacing_mm, 3.0))
    with pytest.raises(SliceGapError, match="duplicate slice position"):
        read_dicom_series(tmp_path / "s")


def _rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_mixed_orientation(tmp_path):
    files = write(tmp_path / "s")
    _rewrite(files[4], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(MixedGeometryError, match=r"mixed orientation.*005"):
        read_dicom_series(tmp_path / "s")


def test_mixed_spacing(tmp_path):
    files = write(tmp_path / "s")
    _rewrite(files[0], PixelSpacing=[0.6, 0.5])
    with pytest.raises(MixedGeometryError, match=r"mixed pixel spacing.*0\.6"):
        read_dicom_series(tmp_path / "s")


def test_mixed_slice_thickness(tmp_path):
    files = write(tmp_path / "s")
    _rewrite(files[3], SliceThickness=1.5)
    with pytest.raises(MixedGeometryError, match="mixed slice thickness"):
        read_dicom_series(tmp_path / "s")


def test_cache_returns_equal_volume_and_invalidates(tmp_path, monkeypatch):
    monkeypatch.setenv("KNEELIB_CACHE", str(tmp_path / "cache"))
    files = write(tmp_path / "s")
    first = load_series_cached(tmp_path / "s")
    key = series_cache_key(tmp_path / "s", laterality=None)
    entry = tmp_path / "cache" / "volumes" / key[:2] / f"{key}.nii.gz"
    assert entry.is_file() and not list(entry.parent.glob(".*tmp*"))
    second = load_series_cached(tmp_path / "s")
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_array_equal(first.affine, second.affine)
    assert (second.laterality, second.echo_times_ms, second.array.dtype) == ("R", (30.0,), first.array.dtype)
    shutil.rmtree(tmp_path / "s")
    write(tmp_path / "s", seed=7)
    third = load_series_cached(tmp_path / "s")
    np.testing.assert_array_equal(third.slices(), pixels(7))


def test_cache_hit_returns_the_exact_affine_of_the_first_read(tmp_path, monkeypatch):
    """A 144-pixel field of 160 mm has 1.1111... mm pixels, which NIfTI's float32 header rounds;
    a cache hit must give the reader's float64 affine, or a registration of the same knee differs
    between the first run and later ones (the Siamese chapter did)."""
    from kneelib.preprocess.registration import sagittal_slices

    monkeypatch.setenv("KNEELIB_CACHE", str(tmp_path / "cache"))
    affine = sagittal_affine("R")
    affine[1, 0], affine[2, 1] = -1 / 0.9, -1 / 0.9
    assert float(np.float32(1 / 0.9)) != 1 / 0.9
    write(tmp_path / "s", geometry=SliceGeometry.from_affine(affine, N_SLICES))
    fresh = read_dicom_series(tmp_path / "s")
    first, second = load_series_cached(tmp_path / "s"), load_series_cached(tmp_path / "s")  # a miss, then a hit
    for volume in (first, second):
        np.testing.assert_array_equal(volume.affine, fresh.affine)
        assert volume.spacing_mm == fresh.spacing_mm
        assert sagittal_slices(volume)[1] == sagittal_slices(fresh)[1]


def test_radiograph_round_trip(tmp_path):
    image = np.random.default_rng(4).integers(0, 4095, size=(40, 60), dtype=np.uint16)
    path = write_radiograph(tmp_path / "xr" / "001", image, 0.14,
                            {"PatientID": "9000001", "StudyDescription": "OAI^XR^ENROLLMENT"}, uid_seed=1)
    radiograph = read_radiograph(path.parent)
    np.testing.assert_array_equal(radiograph.pixels, image)
    assert radiograph.pixel_spacing_mm == (0.14, 0.14)
    assert radiograph.metadata["ViewPosition"] == "PA" and radiograph.metadata["Modality"] == "CR"
    again = write_radiograph(tmp_path / "xr2" / "001", image, 0.14,
                             {"PatientID": "9000001", "StudyDescription": "OAI^XR^ENROLLMENT"}, uid_seed=1)
    assert path.read_bytes() == again.read_bytes()
    compressed = write_radiograph(tmp_path / "xr3" / "001", image, 0.14,
                                  {"PatientID": "9000001", "StudyDescription": "OAI^XR^ENROLLMENT"}, uid_seed=1,
                                  compression="jpeg-ls")
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    np.testing.assert_array_equal(read_radiograph(compressed.parent).pixels, image)
    assert compressed.read_bytes() == write_radiograph(
        tmp_path / "xr4" / "001", image, 0.14, {"PatientID": "9000001", "StudyDescription": "OAI^XR^ENROLLMENT"},
        uid_seed=1, compression="jpeg-ls").read_bytes()
    with pytest.raises(ValueError, match="compression must be one of"):
        write_radiograph(tmp_path / "xr5" / "001", image, 0.14, {"PatientID": "1"}, compression="zip")


def test_cache_key_follows_content_not_mtime_name_or_place(tmp_path):
    """Issue 9, item 11: the 'content-addressed' key hashes the bytes, not name/size/mtime."""
    import os

    files = write(tmp_path / "s")
    key = series_cache_key(tmp_path / "s")
    for path in files:  # touch: new modification time, same bytes
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert series_cache_key(tmp_path / "s") == key
    shutil.copytree(tmp_path / "s", tmp_path / "elsewhere")  # moved/copied data keep their entry
    assert series_cache_key(tmp_path / "elsewhere") == key
    # One pixel byte changed, same size, and the old modification time restored.
    target = files[2]
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    assert series_cache_key(tmp_path / "s") != key
    assert series_cache_key(tmp_path / "s", laterality="R") != series_cache_key(tmp_path / "s")


@pytest.mark.parametrize("keyword, raw, reason", [
    ("EchoTime", b"3x.0", r"EchoTime is not a number"),
    ("ImagePositionPatient", b"1\\nan\\2 ", r"ImagePositionPatient .* is not finite"),
    ("PixelSpacing", b"0.5\\\xff", r"PixelSpacing is not a number"),
])
def test_non_numeric_text_number_names_the_file(tmp_path, keyword, raw, reason):
    """A DS element is parsed from its raw bytes; garbage there is a typed error naming the file."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    files = write(tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    tag = Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)
    ds.save_as(files[3])
    with pytest.raises(DicomReadError, match=rf"004.*{reason}"):
        read_dicom_series(tmp_path / "s")


def test_text_numbers_read_from_raw_bytes_equal_pydicom_values(tmp_path):
    from kneelib.data.dicom import _NUMERIC_KEYWORDS, _numbers_of

    files = write(tmp_path / "s")
    raw, converted = pydicom.dcmread(files[0]), pydicom.dcmread(files[0])
    for keyword in _NUMERIC_KEYWORDS:
        value = converted.get(keyword)
        expected = None if value in (None, "") else [float(v) for v in (value if isinstance(
            value, pydicom.multival.MultiValue) else [value])]
        assert _numbers_of(raw, keyword) == expected, keyword
