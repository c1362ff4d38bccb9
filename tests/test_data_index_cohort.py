"""Image index lookup and cohort loading with a QC exclusion table (tiny synthetic cohort)."""
from __future__ import annotations

import numpy as np
import pytest

from kneelib.data.cohort import QCLog, SeriesRequest, iter_series_volumes, requests_for
from kneelib.data.dicom import read_dicom_series
from kneelib.data.errors import AmbiguousSeriesError, UnknownSeriesError
from kneelib.data.image_index import read_image_index, visit_month_of
from kneelib.synth.oai_writer import SliceGeometry, write_dicom_series, write_image_index

AFFINE = np.array([[0.0, 0.0, 3.0, 60.0], [-0.5, 0.0, 0.0, 40.0], [0.0, -0.4, 0.0, 30.0], [0, 0, 0, 1.0]])


def _series(root, pid, visit, side, seed, *, skip=()):
    word = "RIGHT" if side == "R" else "LEFT"
    affine = AFFINE.copy()
    if side == "L":
        affine[0, 3] = -80.0
    folder = f"{0 if visit == 0 else 1}.C.2/{pid}/2005010{1 + visit // 12}/{seed:08d}"
    geometry = SliceGeometry.from_affine(affine, 4 + len(skip), skip_slices=skip)
    pixels = np.full((4, 3, 3), seed, dtype=np.uint16)
    write_dicom_series(root / folder, pixels, geometry,
                       {"SeriesDescription": f"SAG_IW_TSE_{word}", "Laterality": side, "PatientID": pid,
                        "EchoTime": 30.0, "StudyDescription": f"OAI^MR^ENROLLMENT^{word}"}, uid_seed=seed)
    return {"Folder": folder, "ParticipantID": pid, "StudyDate": "20050101", "Barcode": f"0166{seed:08d}",
            "StudyDescription": f"OAI^MR^{'ENROLLMENT' if visit == 0 else '12 MONTH'}^{word}",
            "SeriesDescription": f"SAG_IW_TSE_{word}"}


@pytest.fixture()
def cohort(tmp_path):
    rows = [
        _series(tmp_path, "9000001", 0, "R", 1),
        _series(tmp_path, "9000001", 0, "L", 2),
        _series(tmp_path, "9000001", 12, "R", 3),
        _series(tmp_path, "9000002", 0, "R", 4, skip=[1]),  # planted gap
        _series(tmp_path, "9000003", 0, "R", 5),
    ]
    # 9000003's left knee: listed in the index, but its one file is truncated.
    rows.append(_series(tmp_path, "9000003", 0, "L", 6))
    broken = tmp_path / rows[-1]["Folder"] / "002"
    broken.write_bytes(broken.read_bytes()[:200])
    write_image_index(rows, tmp_path / "contents.csv")
    return tmp_path


def test_index_columns_visit_and_lookup(cohort):
    index = read_image_index(cohort)
    assert index.table["VISIT"].tolist() == [0, 0, 12, 0, 0, 0]
    assert index.table["SIDE"].tolist() == [1, 2, 1, 1, 1, 2]
    assert index.table["Barcode"].iloc[0] == "016600000001"  # text: leading zeros kept
    folder = index.find_series("9000001", 12, "sag_iw_tse_right")
    assert read_dicom_series(folder).slices()[0, 0, 0] == 3


def test_unknown_series_message_lists_what_exists(cohort):
    index = read_image_index(cohort / "contents.csv")
    with pytest.raises(UnknownSeriesError, match=r"no series 'SAG_3D_DESS_RIGHT' for participant 9000001 at "
                                                 r"month 0; that visit has \['SAG_IW_TSE_LEFT', 'SAG_IW_TSE_RIGHT'\]"):
        index.find_series("9000001", 0, "SAG_3D_DESS_RIGHT")
    with pytest.raises(UnknownSeriesError, match="participant not in the index"):
        index.find_series("9999999", 0, "SAG_IW_TSE_RIGHT")


def test_ambiguous_series(cohort):
    index = read_image_index(cohort)
    index.table.loc[len(index.table)] = index.table.iloc[0]
    with pytest.raises(AmbiguousSeriesError, match="2 series"):
        index.find_series("9000001", 0, "SAG_IW_TSE_RIGHT")


def test_visit_from_folder_or_description():
    assert visit_month_of("3.C.2/9000001/x/y") == 24
    assert visit_month_of("weird/path", "OAI^MR^12 MONTH^LEFT") == 12
    assert visit_month_of("weird/path", "OAI^MR^ENROLLMENT^LEFT") == 0
    assert np.isnan(visit_month_of("weird/path", "knee"))


def test_cohort_loader_records_exclusions_and_continues(cohort):
    index = read_image_index(cohort)
    requests = requests_for(["9000001", "9000002", "9000003", "9000004"], [0], ["SAG_IW_TSE_RIGHT", "SAG_IW_TSE_LEFT"])
    qc = QCLog()
    loaded = [(r, v.slices()[0, 0, 0]) for r, v in iter_series_volumes(index, requests, qc=qc, loader=read_dicom_series)]
    assert [(r.participant_id, r.side, int(value)) for r, value in loaded] == [
        ("9000001", "R", 1), ("9000001", "L", 2), ("9000003", "R", 5)]
    table = qc.to_frame()
    assert list(table.columns) == ["participant_id", "side", "visit_month", "series", "reason", "error_type", "path"]
    reasons = {(row.participant_id, row.side): row for row in table.itertuples()}
    assert len(table) == 5
    assert reasons[("9000002", "R")].error_type == "SliceGapError" and "gap" in reasons[("9000002", "R")].reason
    assert reasons[("9000002", "L")].error_type == "UnknownSeriesError"
    assert reasons[("9000003", "L")].error_type == "DicomReadError" and "002" in reasons[("9000003", "L")].reason
    assert reasons[("9000004", "R")].error_type == "UnknownSeriesError"
    assert (table["visit_month"] == 0).all()


def test_series_request_side():
    assert SeriesRequest("1", 0, "SAG_3D_DESS_LEFT").side == "L"
    assert SeriesRequest("1", 0, "Bilateral PA Fixed Flexion Knee").side == ""
