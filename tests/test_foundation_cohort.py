"""The data chapter's stages: real-data inventory (kneelib.data.inventory), labels and prevalences
(kneelib.data.labels, kneelib.data.summary), ground truth (kneelib.synth.ground_truth), QC join
(kneelib.data.qc), the DAG figure, and their composition in kneelib.papers.cohort."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneelib.data import KneelibDataError, inventory, labels, qc, summary
from kneelib.papers import cohort
from kneelib.synth import ground_truth


def _labels(tmp_path):
    rows = [{"relpath": f"images/{s}/{k}/{i}.png", "split": s, "kl_grade": k, "oai_id": 9000000 + i,
             "side": "R"} for i, (s, k) in enumerate([("train", 0)] * 3 + [("train", 2)] * 2
                                                   + [("val", 0), ("val", 4)])]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)


def test_kl_label_counts(tmp_path):
    _labels(tmp_path)
    counts = inventory.kl_label_counts(tmp_path)
    assert counts.loc["train", "KL 0"] == 3 and counts.loc["train", "KL 2"] == 2
    assert counts.loc["total", "all"] == 7 and counts.loc["val", "KL 4"] == 1


def test_sample_is_seeded_and_capped(tmp_path):
    _labels(tmp_path)
    first = inventory.sample_kl_images(tmp_path, per_grade=2, seed=1)
    assert first.equals(inventory.sample_kl_images(tmp_path, per_grade=2, seed=1))
    assert first.groupby("kl_grade").size().to_dict() == {0: 2, 2: 2}
    with pytest.raises(KneelibDataError, match="split 'test'"):
        inventory.sample_kl_images(tmp_path, per_grade=1, split="test")


def test_missing_dataset_is_reported_not_raised(tmp_path):
    table = inventory.dataset_inventory(tmp_path)
    assert set(table["dataset"]) == {"chen_kl_radiographs", "pykneer_knee_mri", "deep_pain_regression",
                                     "pymskt_knee_mri"}
    assert not table["present"].any()
    assert not table["location"].str.contains(str(tmp_path)).any()
    message = inventory.missing_dataset_message("chen_kl_radiographs", tmp_path)
    assert str(tmp_path) not in message
    assert "not found" in message and "KNEELIB_DATA" in message
    assert all(c.reproduced is None for c in cohort.cohort_comparisons(None))


@pytest.mark.realdata
def test_real_data_tables(real_data_root):
    counts = inventory.kl_label_counts(real_data_root / "chen_kl_radiographs")
    assert counts.loc["total", "all"] == 2978
    tables = inventory.load_deep_pain_tables(real_data_root / "deep_pain_regression")
    assert {b: len(t) for b, t in tables.items()} == {"femur": 2149, "tibia": 2141, "patella": 2131}
    summary = inventory.deep_pain_summary(tables)
    assert 25 < summary.loc["femur", "chronic pain (%)"] < 40
    comparisons = cohort.cohort_comparisons(tables)
    assert [c.reproduced for c in comparisons] == [2149, 2141, 2131]
    selection = inventory.deep_pain_model_selection(real_data_root / "deep_pain_regression")
    assert set(selection.index) == {"Femur", "Tibia", "Patella"}


@pytest.mark.realdata
def test_real_dess_and_t1rho_read_with_kneelib_data(real_data_root):
    import matplotlib
    matplotlib.use("Agg")
    from kneelib.figures import mri_sequences

    fig, info = mri_sequences.plot_dess_and_t1rho(real_data_root / "pykneer_knee_mri")
    assert list(info["series"]) == ["DESS echo 1", "T1rho (4 spin locks)"]
    assert info.loc[1, "echo times ms"] == "1, 10, 30, 60"
    assert info.loc[0, "slices"] == 80
    assert len(fig.axes) == 6


def test_effect_sizes_every_parameter_has_a_block(tmp_path):
    from kneelib.synth.causal import effect_sizes_table

    (tmp_path / "ground_truth").mkdir()
    effect_sizes_table().to_csv(tmp_path / "ground_truth" / "effect_sizes.csv", index=False)
    table = ground_truth.effect_sizes_by_block(tmp_path)
    blocks = table.index.get_level_values("block")
    assert "other" not in set(blocks)
    assert table.loc[("12-month progression", "severity_per_mm_loss"), "value"] == "0.45"
    assert table.loc[("pain", "pain_effusion"), "value"] == "0.8"
    with pytest.raises(ground_truth.MissingGroundTruthError, match="effect_sizes.csv"):
        ground_truth.effect_sizes_by_block(tmp_path / "nowhere")


def _knee_rows(pid, pain_r, pain_l, womac_r, womac_l, jsw0, jsw12, widespread=0.0, months=(0, 0)):
    rows = []
    for side, pain, womac, month_count in ((1, pain_r, womac_r, months[0]), (2, pain_l, womac_l, months[1])):
        for visit, jsw in ((0, jsw0), (12, jsw12)):
            rows.append({"ID": pid, "SIDE": side, "VISIT": visit, "frequent_pain": pain, "womac_pain": womac,
                         "knee_pain_any_12m": float(month_count > 0), "knee_pain_months_12m": month_count,
                         "widespread_pain": widespread, "min_medial_jsw_mm": jsw, "kl_grade": 2,
                         "age_years": 60, "sex": 2, "bmi_kg_m2": 28.0, "race": 1})
    return rows


def test_label_prevalences_follow_the_papers_definitions():
    table = pd.DataFrame(
        _knee_rows("1", 1, 0, 8, 2, 4.0, 3.4, months=(9, 0))       # unilateral, WOMAC diff 6, progressor
        + _knee_rows("2", 1, 1, 5, 5, 4.0, 3.9, months=(3, 3))     # bilateral pain: neither label
        + _knee_rows("3", 0, 1, 3, 4, 4.0, 4.0, widespread=1.0, months=(8, 8))  # unilateral, excluded
        + _knee_rows("4", 0, 0, 0, 0, 4.0, 3.5, months=(0, 0)))    # no pain; -0.5 mm counts
    table = labels.add_derived_labels(table)
    found = summary.label_prevalences(table).set_index("key")
    assert (found.loc["unilateral_frequent_pain", ["count", "of"]] == [2, 4]).all()
    assert (found.loc["womac_difference_above_2", ["count", "of"]]
            == [1, 2]).all()
    # right knees, widespread pain excluded: subject 1 chronic (2 visits), subject 4 no pain (2), 2 unlabelled
    chronic = found.loc["chronic_pain"]
    assert (chronic["count"], chronic["of"]) == (2, 4)
    progress = found.loc["progressor_12m"]
    assert (progress["count"], progress["of"]) == (4, 8)


def test_causal_model_table_is_seeded_and_matches_the_reader_columns():
    first = ground_truth.causal_model_knee_table(12, seed=3)
    assert first.equals(ground_truth.causal_model_knee_table(12, seed=3))
    assert len(first) == 12 * 4 and set(first["VISIT"]) == {0, 12} and set(first["SIDE"]) == {1, 2}
    for column in cohort.CLINICAL_VARIABLES:
        if not column.startswith("widespread_pain_"):
            assert column in first.columns, column
    # frequent pain is a baseline-only OAI item: the 12-month row repeats it
    pivot = first.pivot_table(index=["ID", "SIDE"], columns="VISIT", values="frequent_pain")
    assert (pivot[0] == pivot[12]).all()
    assert first["chronic_pain"].isin([0.0, 1.0]).sum() + first["chronic_pain"].isna().sum() == len(first)
    demographics = cohort.demographics_table({"model": first})
    assert demographics.loc["participants", "model"] == "12"
    assert "8,103 (38.4 %)" == demographics.loc["KL 0", "published (OAI)"]


def test_comparison_quantities_are_unique_and_tagged():
    table = ground_truth.causal_model_knee_table(20, seed=0)
    comparisons = cohort.cohort_comparisons(None, table, "image", table, "model")
    quantities = [c.quantity for c in comparisons]
    assert len(quantities) == len(set(quantities))
    assert sum(q.endswith("[image cohort]") for q in quantities) == sum(
        q.endswith("[causal model sample]") for q in quantities) == 11
    assert all(c.reproduced is not None for c in comparisons[3:])


def test_planted_artefacts_are_joined_with_the_qc_table(tmp_path):
    from kneelib.synth.causal import sample_cohort_specs, specs_to_frames

    _, knees = specs_to_frames(*sample_cohort_specs(2, 0))
    knees["artefact"] = ""
    knees.loc[(knees["participant_id"] == "9000001") & (knees["side"] == "R") & (knees["visit_month"] == 0),
              "artefact"] = "motion"
    knees.loc[(knees["participant_id"] == "9000002") & (knees["side"] == "L") & (knees["visit_month"] == 12),
              "artefact"] = "missing_slices"
    knees.loc[(knees["participant_id"] == "9000001") & (knees["side"] == "L") & (knees["visit_month"] == 12),
              "artefact"] = "foreign_object"  # a knee visit whose MR series the cohort does not write
    (tmp_path / "ground_truth").mkdir()
    knees.to_csv(tmp_path / "ground_truth" / "knees.csv", index=False)
    imaged = knees[~((knees["side"] == "L") & (knees["visit_month"] == 12) & (knees["participant_id"] == "9000001"))]
    imaged[["participant_id", "side", "visit_month"]].to_csv(tmp_path / "ground_truth" / "series.csv", index=False)
    qc = pd.DataFrame([{"participant_id": "9000002", "side": "L", "visit_month": 12, "series": "SAG_IW_TSE_LEFT",
                        "reason": "gap", "error_type": "SliceGapError", "path": ""}])
    joined = cohort.planted_artefacts_vs_qc(tmp_path, qc).set_index("planted artefact")
    assert "foreign_object" not in joined.index and len(joined) == 2
    assert joined.loc["motion", "QC reason"] == "loaded: not caught by the reader"
    assert joined.loc["missing_slices", "QC reason"] == "SliceGapError"
    assert joined.loc["missing_slices", "series excluded"] == "SAG_IW_TSE_LEFT"


def test_labels_written_in_reverse_slice_order_are_put_on_the_volume_grid(tmp_path):
    import nibabel as nib

    from kneelib.data import Volume

    affine = np.array([[0, 0, 2.0, -10], [-0.5, 0, 0, 30], [0, -0.5, 0, 40], [0, 0, 0, 1]])
    array = np.arange(4 * 3 * 5).reshape(4, 3, 5)
    volume = Volume(array=array, affine=affine, metadata={"folders": ["x"]})
    flipped = affine.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 2] * 4  # last slice first
    nib.save(nib.Nifti1Image(array[:, :, ::-1].astype(np.int16), flipped), tmp_path / "labels.nii.gz")
    on_grid = ground_truth.on_volume_grid(tmp_path / "labels.nii.gz", volume)
    assert np.array_equal(on_grid, np.transpose(array, (2, 1, 0)))
    shifted = affine.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(array.astype(np.int16), shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(KneelibDataError, match="not on the grid"):
        ground_truth.on_volume_grid(tmp_path / "shifted.nii.gz", volume)


def test_dag_figure_has_every_node():
    import matplotlib
    matplotlib.use("Agg")
    from kneelib.synth.causal import DEFAULT_EFFECTS

    from kneelib.figures import causal_dag

    nodes, edges = causal_dag.dag_layout(DEFAULT_EFFECTS)
    assert all(e[0] in nodes and e[1] in nodes for e in edges)
    fig = causal_dag.plot_causal_dag()
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert all(node[2] in texts for node in nodes.values())
    assert f"{DEFAULT_EFFECTS.pain_effusion:g}/grade" in texts
