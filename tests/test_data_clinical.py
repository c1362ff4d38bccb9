"""OAI clinical tables: writer -> reader round trip, decoding, tidy knee table, missing variables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.data.clinical import (
    chronic_pain,
    decode_oai_column,
    find_table,
    knee_table,
    read_oai_table,
    widespread_pain,
)
from kneelib.data.errors import MissingTableError, MissingVariableError, TableFormatError
from kneelib.data.oai_layout import MISSING_FORM, NOT_EXPECTED
from kneelib.data.variables import load_variable_config
from kneelib.synth.oai_writer import write_oai_table

YES_NO = {0: "No", 1: "Yes"}
SIDE_LABELS = {1: "Right", 2: "Left"}


@pytest.fixture()
def oai_root(tmp_path):
    """Three participants' tables in the OAI layout (one knee missing from the X-ray reading)."""
    find_table.cache_clear()
    ids = ["9000001", "9000002", "9000003"]
    write_oai_table(pd.DataFrame({
        "ID": ids, "VERSION": ["2.2"] * 3,
        "V00AGE": [61, 70, 55], "P01BMI": [28.3, 31.0, np.nan],
        "P01KPNREV": [1, 0, 0], "P01KPNLEV": [0, 1, np.nan],
        "V00WOMKPR": [7.0, 0.0, 2.5], "V00WOMKPL": [0, 12, 3],
        "V00KPNR12": [1, 0, 1], "V00KPNL12": [1, 1, 0], "V00KPNR12M": [8, 0, 3], "V00KPNL12M": [2, 12, 0],
    }), tmp_path / "AllClinical_ASCII" / "AllClinical00.txt",
        value_labels={"P01KPNREV": YES_NO, "P01KPNLEV": YES_NO, "V00KPNR12": YES_NO, "V00KPNL12": YES_NO})
    write_oai_table(pd.DataFrame({
        "ID": ids, "V01WOMKPR": [5, 1, 0], "V01WOMKPL": [0, 10, np.nan],
    }), tmp_path / "AllClinical_ASCII" / "AllClinical01.txt")
    write_oai_table(pd.DataFrame({"ID": ids, "P02SEX": [2, 1, 2], "P02RACE": [1, 2, 1]}),
                    tmp_path / "Enrollees.txt",
                    value_labels={"P02SEX": {1: "Male", 2: "Female"}, "P02RACE": {1: "White or Caucasian",
                                                                               2: "Black or African American"}})
    write_oai_table(pd.DataFrame({
        "ID": ["9000001", "9000001", "9000002", "9000003"], "SIDE": [1, 2, 1, 2],
        "READPRJ": [15, 15, 15, 15], "V00XRKL": [2, 0, 3, 1], "V00XRJSM": [1, 0, 2, 0],
    }), tmp_path / "kxr_sq_bu00.txt", value_labels={"SIDE": SIDE_LABELS})
    write_oai_table(pd.DataFrame({
        "ID": ["9000001", "9000001", "9000002"], "SIDE": [1, 2, 1], "V00MCMJSW": [4.2, 5.1, 3.3],
    }), tmp_path / "kXR_QJSW_Duryea00.txt", value_labels={"SIDE": SIDE_LABELS})
    write_oai_table(pd.DataFrame({
        "ID": ["9000001", "9000002"], "SIDE": [1, 1], "V01MCMJSW": [3.6, 3.2],
    }), tmp_path / "kXR_QJSW_Duryea01.txt", value_labels={"SIDE": SIDE_LABELS})
    return tmp_path


def test_table_file_format_is_oai_pipe_ascii(oai_root):
    lines = (oai_root / "AllClinical_ASCII" / "AllClinical00.txt").read_text().splitlines()
    assert lines[0].startswith("ID|VERSION|V00AGE|P01BMI|P01KPNREV")
    assert lines[1].split("|")[:5] == ["9000001", "2.2", "61", "28.3", "1: Yes"]
    assert lines[3].split("|")[3] == MISSING_FORM


def test_read_decodes_codes_and_missing_case_insensitively(oai_root):
    table = read_oai_table(oai_root / "AllClinical_ASCII" / "AllClinical00.txt", ["v00age", "p01bmi", "P01KPNLEV"])
    assert list(table.columns) == ["ID", "VERSION", "V00AGE", "P01BMI", "P01KPNLEV"]
    assert table["ID"].tolist() == ["9000001", "9000002", "9000003"]
    assert table["V00AGE"].tolist() == [61, 70, 55]
    assert table["P01BMI"].iloc[0] == pytest.approx(28.3) and np.isnan(table["P01BMI"].iloc[2])
    assert table["P01KPNLEV"].iloc[:2].tolist() == [0, 1] and np.isnan(table["P01KPNLEV"].iloc[2])


def test_decode_column_values():
    decoded = decode_oai_column(pd.Series(["1: Yes", "0: No", MISSING_FORM, NOT_EXPECTED, ".", ""]))
    assert decoded.iloc[:2].tolist() == [1.0, 0.0] and decoded.iloc[2:].isna().all()
    text = decode_oai_column(pd.Series(["P", ".: Missing Form/Incomplete Workbook"]))
    assert text.iloc[0] == "P" and text.iloc[1] is None


def test_missing_variable_names_variable_and_file(oai_root):
    path = oai_root / "AllClinical_ASCII" / "AllClinical00.txt"
    with pytest.raises(MissingVariableError, match=r"V00WOMKPX missing from table .*AllClinical00\.txt") as info:
        read_oai_table(path, ["V00WOMKPX"])
    assert info.value.variable == "V00WOMKPX"


def test_missing_table_and_bad_format(oai_root, tmp_path):
    with pytest.raises(MissingTableError, match="kXR_SQ_BU01 not found"):
        find_table(oai_root, "kXR_SQ_BU01")
    bad = tmp_path / "bad.txt"
    bad.write_text("ID,V00AGE\n1,2\n")
    with pytest.raises(TableFormatError, match="no '|' separator"):
        read_oai_table(bad)


def test_knee_table_tidy_per_knee_and_visit(oai_root):
    names = ["frequent_pain", "kl_grade", "jsn_medial", "min_medial_jsw_mm", "age_years", "sex"]
    table = knee_table(oai_root, names, visits=[0])
    assert list(table.columns) == ["ID", "SIDE", "VISIT", "frequent_pain", "kl_grade", "jsn_medial",
                                   "min_medial_jsw_mm", "age_years", "sex"]
    assert len(table) == 6  # 3 participants x 2 knees x 1 visit
    row = table.set_index(["ID", "SIDE"])
    assert row.loc[("9000001", 1), "frequent_pain"] == 1 and row.loc[("9000002", 2), "frequent_pain"] == 1
    assert row.loc[("9000001", 2), "kl_grade"] == 0 and row.loc[("9000002", 1), "kl_grade"] == 3
    assert np.isnan(row.loc[("9000002", 2), "kl_grade"])  # knee not read
    assert row.loc[("9000001", 2), "min_medial_jsw_mm"] == pytest.approx(5.1)
    assert row.loc[("9000003", 1), "age_years"] == 55 and row.loc[("9000003", 2), "sex"] == 2


def test_knee_table_two_visits(oai_root):
    table = knee_table(oai_root, ["womac_pain", "min_medial_jsw_mm", "age_years"], visits=[0, 12])
    assert len(table) == 12
    row = table.set_index(["ID", "SIDE", "VISIT"])
    assert row.loc[("9000001", 1, 0), "womac_pain"] == 7 and row.loc[("9000001", 1, 12), "womac_pain"] == 5
    assert row.loc[("9000001", 1, 12), "min_medial_jsw_mm"] == pytest.approx(3.6)
    assert row.loc[("9000001", 1, 12), "age_years"] == 61  # baseline value copied to every visit
    change = row.xs(1, level="SIDE")["min_medial_jsw_mm"].unstack("VISIT")
    assert change.loc["9000001", 12] - change.loc["9000001", 0] == pytest.approx(-0.6)


def test_knee_table_missing_variable_in_table(oai_root):
    with pytest.raises(MissingVariableError, match=r"V00XROSFL missing from table .*kxr_sq_bu00\.txt"):
        knee_table(oai_root, ["osteophyte_fl"], visits=[0])
    with pytest.raises(KeyError, match="unknown study variable"):
        knee_table(oai_root, ["no_such_variable"])


def test_chronic_pain_definition(oai_root):
    table = knee_table(oai_root, ["knee_pain_any_12m", "knee_pain_months_12m"], visits=[0]).set_index(["ID", "SIDE"])
    label = chronic_pain(table)
    assert label.loc[("9000001", 1)] == 1       # 8 months
    assert label.loc[("9000002", 1)] == 0       # no pain in 12 months
    assert np.isnan(label.loc[("9000003", 1)])  # some pain, 3 months: neither group


def test_widespread_pain_combines_three_regions():
    table = pd.DataFrame({"widespread_pain_above_waist": [1, 1, 0, np.nan],
                          "widespread_pain_below_waist": [1, 1, 1, 1],
                          "widespread_pain_axial": [1, 0, 1, 1]})
    result = widespread_pain(table)
    assert result.iloc[:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(result.iloc[3])


def test_variable_config_documents_best_guesses():
    config = load_variable_config()
    assert config["frequent_pain"].pair_for(0) == ("P01KPNREV", "P01KPNLEV")
    assert config["min_medial_jsw_mm"].variables_for(12) == ["V01MCMJSW"]
    assert config["kl_grade"].table_for(12) == "kXR_SQ_BU01"
    for name in ("knee_pain_months_12m", "widespread_pain_axial"):
        assert not config[name].confirmed and config[name].note


# --------------------------------------------------------------------------------------
# Issue 9, items 6 and 7: reading projects, coded-value variants, encodings, table search
# --------------------------------------------------------------------------------------

def _two_project_root(tmp_path):
    """kXR_SQ_BU00 read by projects 37 (listed first, 2 knees) and 15 (3 knees); they disagree."""
    find_table.cache_clear()
    ids = ["9000001", "9000002", "9000003"]
    write_oai_table(pd.DataFrame({"ID": ids, "P02SEX": [2, 1, 2]}), tmp_path / "Enrollees.txt")
    write_oai_table(pd.DataFrame({
        "ID": ["9000001", "9000003", "9000001", "9000001", "9000002"],
        "SIDE": [1, 2, 1, 2, 1],
        "READPRJ": [37, 37, 15, 15, 15],
        "V00XRKL": [3, 4, 2, 0, 1],
    }), tmp_path / "kXR_SQ_BU00.txt", value_labels={"SIDE": SIDE_LABELS})
    return tmp_path


def test_knee_table_takes_each_variable_from_one_reading_project(tmp_path):
    root = _two_project_root(tmp_path)
    table = knee_table(root, ["kl_grade"], visits=[0])
    kl = table.set_index(["ID", "SIDE"])["kl_grade"]
    # Default rule: the project with the most readings (15: 3 knees) and only that project.
    assert table.attrs["reading_project"] == {"kl_grade": {0: 15}}
    assert kl.loc[("9000001", 1)] == 2          # project 15, not 37's 3 (first in the file)
    assert kl.loc[("9000002", 1)] == 1
    assert np.isnan(kl.loc[("9000003", 2)])     # read by 37 only: not mixed in
    preferred = knee_table(root, ["kl_grade"], visits=[0], reading_projects=[37])
    kl37 = preferred.set_index(["ID", "SIDE"])["kl_grade"]
    assert preferred.attrs["reading_project"] == {"kl_grade": {0: 37}}
    assert kl37.loc[("9000001", 1)] == 3 and kl37.loc[("9000003", 2)] == 4
    assert np.isnan(kl37.loc[("9000001", 2)])
    per_variable = knee_table(root, ["kl_grade"], visits=[0], reading_projects={"kl_grade": [99, 37]})
    assert per_variable.attrs["reading_project"] == {"kl_grade": {0: 37}}


def test_choose_reading_project_ties_and_absent_column():
    from kneelib.data.clinical import choose_reading_project

    frame = pd.DataFrame({"READPRJ": [42, 42, 15, 15, 37], "V00XRKL": [1, 2, 3, 4, np.nan]})
    assert choose_reading_project(frame, "V00XRKL") == 15        # tie 2 vs 2: smallest code
    assert choose_reading_project(frame, "V00XRKL", [37, 42]) == 42  # 37 read nothing
    assert choose_reading_project(frame.drop(columns="READPRJ"), "V00XRKL") is None


def test_coded_value_variants_parse():
    decoded = decode_oai_column(pd.Series(["1:Yes", "0 : No", "2:", " 1: Yes ", ".:Missing Form/Incomplete Workbook",
                                           ".A:Not Expected", ". : Missing", ".B: Don't Know/Unknown/Uncertain"]))
    assert decoded.iloc[:4].tolist() == [1, 0, 2, 1] and decoded.iloc[4:].isna().all()
    assert decoded.dtype.kind == "f"


def test_latin1_table_is_read_with_a_warning_and_binary_is_a_typed_error(tmp_path):
    from kneelib.data.errors import KneelibDataWarning

    path = tmp_path / "AllClinical00.txt"
    path.write_bytes("ID|V00AGE|V00COMMENT\n9000001|61|caf\xe9\n9000002|1: Yes|ok\n".encode("latin-1"))
    with pytest.warns(KneelibDataWarning, match=r"AllClinical00\.txt is not UTF-8.*Latin-1"):
        table = read_oai_table(path)
    assert table["V00COMMENT"].tolist() == ["caf\xe9", "ok"] and table["V00AGE"].tolist() == [61, 1]
    binary = tmp_path / "Enrollees.txt"
    binary.write_bytes(b"ID|P02SEX\n9000001|\x00\x01\x02\n")
    with pytest.raises(TableFormatError, match=r"Enrollees\.txt.*binary content"):
        read_oai_table(binary)


def test_find_table_searches_clinical_folders_not_the_image_tree(tmp_path, monkeypatch):
    import os

    find_table.cache_clear()
    real = tmp_path / "X-Ray Image Assessments_ASCII" / "Semi-Quant Scoring_ASCII" / "kxr_sq_bu00.txt"
    real.parent.mkdir(parents=True)
    real.write_text("ID|SIDE\n9000001|1\n")
    # An image release tree (0.E.1/<participant>/<date>/<barcode>/...) with a decoy of the same name.
    image_folder = tmp_path / "0.E.1" / "9000001" / "20050101" / "10000001"
    image_folder.mkdir(parents=True)
    (image_folder / "kXR_SQ_BU00.txt").write_text("decoy")
    (tmp_path / "0.E.1" / "kXR_SQ_BU00.txt").write_text("decoy")
    visited = []
    original = os.scandir

    def recording_scandir(path="."):
        visited.append(str(path))
        return original(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert find_table(tmp_path, "kXR_SQ_BU00") == real
    assert visited and not [v for v in visited if "0.E.1" in v]
    find_table.cache_clear()
