"""Tests of the causal model of the synthetic cohort (kneelib.synth.causal): no images, fast."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kneelib.synth import causal
from kneelib.synth.causal import (DEFAULT_EFFECTS, kl_from_oarsi, jsn_grade_from_jsw, knee_pain_image_liability,
                                  sample_cohort_specs, sample_knees, sample_subject, specs_to_frames)

N_SUBJECTS = 1500


@pytest.fixture(scope="module")
def cohort():
    subjects, knees = sample_cohort_specs(N_SUBJECTS, base_seed=11)
    subject_df, knee_df = specs_to_frames(subjects, knees)
    return subjects, knees, subject_df, knee_df


def test_demographic_marginals_are_oai_like(cohort):
    _, _, s, _ = cohort
    assert s.age_years.between(45, 79).all()
    assert s.age_years.mean() == pytest.approx(61.0, abs=1.0)
    assert s.age_years.std() == pytest.approx(9.1, abs=0.8)
    assert (s.sex == 2).mean() == pytest.approx(0.58, abs=0.04)
    assert s.bmi_kg_m2.mean() == pytest.approx(28.6, abs=0.6)
    assert s.bmi_kg_m2.std() == pytest.approx(4.8, abs=0.6)
    race = s.race.value_counts(normalize=True)
    assert race[1] == pytest.approx(0.80, abs=0.04) and race[2] == pytest.approx(0.17, abs=0.03)
    assert 0.08 < s.widespread_pain.mean() < 0.25
    assert s.participant_id.str.fullmatch(r"9\d{6}").all() and s.participant_id.is_unique


def test_kl_distribution_near_oai_baseline(cohort):
    _, _, _, k = cohort
    kl = k[k.visit_month == 0].kl_grade.value_counts(normalize=True).sort_index()
    target = {0: 0.38, 1: 0.19, 2: 0.25, 3: 0.14, 4: 0.04}  # paper 001 KL counts
    for grade, share in target.items():
        assert kl.get(grade, 0.0) == pytest.approx(share, abs=0.05), (grade, kl.to_dict())


def test_kl_follows_its_definition(cohort):
    _, knees, _, _ = cohort
    for knee in knees:
        assert knee.kl_grade == kl_from_oarsi(knee.osteophyte_grade, knee.jsn_grade_medial,
                                              knee.jsn_grade_lateral, knee.doubtful_osteophyte)
        if knee.kl_grade >= 2:
            assert max(knee.osteophyte_grade.values()) >= 1  # KL >= 2 needs a definite osteophyte
        if knee.kl_grade == 4:
            assert max(knee.jsn_grade_medial, knee.jsn_grade_lateral) == 3
        if knee.kl_grade == 0:
            assert max(knee.osteophyte_grade.values()) == 0
            assert knee.jsn_grade_medial == knee.jsn_grade_lateral == 0


@pytest.mark.parametrize("osteophytes, jsn_m, jsn_l, doubtful, expected", [
    ({"FL": 0, "FM": 0, "TL": 0, "TM": 0}, 0, 0, False, 0),
    ({"FL": 0, "FM": 0, "TL": 0, "TM": 0}, 0, 0, True, 1),
    ({"FL": 0, "FM": 0, "TL": 0, "TM": 0}, 2, 0, False, 1),
    ({"FL": 0, "FM": 1, "TL": 0, "TM": 0}, 1, 0, False, 2),
    ({"FL": 0, "FM": 1, "TL": 0, "TM": 0}, 2, 0, False, 3),
    ({"FL": 0, "FM": 1, "TL": 0, "TM": 0}, 0, 3, False, 3),
    ({"FL": 0, "FM": 2, "TL": 0, "TM": 0}, 3, 0, False, 4),
])
def test_kl_rule_table(osteophytes, jsn_m, jsn_l, doubtful, expected):
    assert kl_from_oarsi(osteophytes, jsn_m, jsn_l, doubtful) == expected


def test_jsn_grade_from_jsw_and_bad_input():
    assert jsn_grade_from_jsw(5.0, 5.0) == 0
    assert jsn_grade_from_jsw(0.2, 5.0) == 3
    assert [jsn_grade_from_jsw(w, 5.0) for w in (5.0, 3.8, 2.8, 1.5, 0.1)] == sorted(
        jsn_grade_from_jsw(w, 5.0) for w in (5.0, 3.8, 2.8, 1.5, 0.1))
    with pytest.raises(ValueError, match="healthy_jsw_mm"):
        jsn_grade_from_jsw(3.0, 0.0)
    with pytest.raises(ValueError, match="variant"):
        sample_subject(0, 0, variant="mars")


def test_planted_effects_have_the_stated_sign(cohort):
    _, knees, s, k = cohort
    b = k[k.visit_month == 0].merge(s[["participant_id", "age_years", "bmi_kg_m2"]], on="participant_id")
    # severity rises with age and BMI
    assert np.corrcoef(b.age_years, b.oa_severity)[0, 1] > 0.1
    assert np.corrcoef(b.bmi_kg_m2, b.oa_severity)[0, 1] > 0.1
    # structure follows severity; JSW falls with it
    assert np.corrcoef(b.oa_severity, b.kl_grade)[0, 1] > 0.6
    assert np.corrcoef(b.oa_severity, b.jsw_medial_mm)[0, 1] < -0.4
    assert b.groupby("jsn_grade_medial").jsw_medial_mm.mean().is_monotonic_decreasing
    assert b.groupby("kl_grade").cartilage_t2_elevation_ms_FM.mean().is_monotonic_increasing
    # knees of one subject are correlated
    right = b[b.side == "R"].set_index("participant_id").oa_severity
    left = b[b.side == "L"].set_index("participant_id").oa_severity.loc[right.index]
    assert 0.4 < np.corrcoef(right, left)[0, 1] < 0.9
    # pain: effusion-synovitis is the strongest image finding, BML next; both raise pain
    assert DEFAULT_EFFECTS.pain_effusion == max(DEFAULT_EFFECTS.pain_effusion, DEFAULT_EFFECTS.pain_bml,
                                                DEFAULT_EFFECTS.pain_hoffa, DEFAULT_EFFECTS.pain_meniscus,
                                                DEFAULT_EFFECTS.pain_jsn)
    assert b.groupby("effusion_grade").frequent_pain.mean().is_monotonic_increasing
    assert b.groupby(b.bml_sites != "").womac_pain.mean().is_monotonic_increasing
    assert b.groupby("kl_grade").womac_pain.mean().iloc[-1] > b.groupby("kl_grade").womac_pain.mean().iloc[0]


def test_pain_labels_support_the_studies(cohort):
    _, knees, s, k = cohort
    b = k[k.visit_month == 0]
    right = b[b.side == "R"].set_index("participant_id")
    left = b[b.side == "L"].set_index("participant_id").loc[right.index]
    unilateral = right.frequent_pain != left.frequent_pain
    assert 0.25 < unilateral.mean() < 0.42  # paper 000: 1,606 of 4,796
    # image-only information separates the painful side well but not perfectly (paper 000 AUC 0.81)
    image = {(kn.participant_id, kn.side): knee_pain_image_liability(kn) for kn in knees if kn.visit_month == 0}
    ids = right.index[unilateral]
    score = [image[(i, "R")] - image[(i, "L")] for i in ids]
    auc = roc_auc_score(right.frequent_pain[unilateral].astype(int), score)
    assert 0.78 < auc < 0.93, auc
    assert ((right.womac_pain - left.womac_pain).abs()[unilateral] >= 3).mean() > 0.3  # model B exists
    assert b.womac_pain.between(0, 20).all() and (b.womac_pain == b.womac_pain.round()).all()
    # chronic pain: > 6 of 12 months; "no chronic pain" means no pain at all
    assert (b.chronic_pain == (b.pain_months_past_12m > 6)).all()
    assert (b.frequent_pain == (b.pain_months_past_12m >= 1)).all()
    assert not (b.frequent_pain & ~b.any_pain_past_12m).any()
    widespread = b.participant_id.map(s.set_index("participant_id").widespread_pain)
    included = b[~widespread & (b.chronic_pain | ~b.any_pain_past_12m)]
    assert 0.2 < included.chronic_pain.mean() < 0.5  # paper 001: 33 %


def test_twelve_month_progression(cohort):
    _, _, _, k = cohort
    base = k[k.visit_month == 0].set_index(["participant_id", "side"])
    follow = k[k.visit_month == 12].set_index(["participant_id", "side"]).loc[base.index]
    true_change = follow.jsw_medial_mm - base.jsw_medial_mm
    measured_change = follow.jsw_medial_measured_mm - base.jsw_medial_measured_mm
    assert (true_change <= 1e-9).all()  # cartilage does not grow back
    progressors = (measured_change <= -0.5).mean()
    assert progressors == pytest.approx(0.14, abs=0.03)  # paper 002, section 3.1
    assert 0.1 < (measured_change - true_change).std() < 0.3  # measurement noise of two readings
    assert (follow.kl_grade >= base.kl_grade).all()
    assert (follow.shape_seed == base.shape_seed).all() and (follow.seed != base.seed).all()


def test_artefacts_are_rare_and_typed(cohort):
    _, _, _, k = cohort
    assert 0.005 < (k.artefact != "").mean() < 0.06
    assert set(k.artefact) <= {"", "motion", "missing_slices", "foreign_object"}


def test_subjects_do_not_depend_on_cohort_size_and_variants_differ():
    small, _ = sample_cohort_specs(3, base_seed=5)
    large, _ = sample_cohort_specs(6, base_seed=5)
    assert small == large[:3]
    assert sample_knees(small[1]) == sample_knees(large[1])
    most = sample_subject(0, 5, variant="most")
    assert most.participant_id.startswith("8") and most.seed != small[0].seed


def test_effect_sizes_are_documented():
    table = causal.effect_sizes_table()
    assert len(table) > 40 and (table.meaning.str.len() > 5).all()
