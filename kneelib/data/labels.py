"""Label definitions shared by the studies, named after the OAI variables they read.

One definition per label (chronic pain, 12-month JSN progressor, unilateral pain, ...),
used by every chapter that needs it, and the exclusion of subjects with missing
covariates (recorded, never a crash).
"""
from __future__ import annotations


# ------------------------------------------------------------------------------------------
# Unilateral frequent knee pain (paper 000, Chang et al. 2020, Methods "Data")
# ------------------------------------------------------------------------------------------
#: Covariates every study of the book stratifies or adjusts on; a subject missing one is
#: excluded (with its reason) by :func:`exclude_missing_covariates`.
REQUIRED_COVARIATES: tuple[str, ...] = ("age", "bmi", "sex")
_COVARIATE_NAMES = {"age": "age", "bmi": "BMI", "sex": "sex"}
#: Absolute tolerance of a WOMAC difference compared with a threshold: WOMAC pain is a sum of
#: answers in steps of 0.5 at most, so differences within 1e-6 of the threshold are equal to it.
WOMAC_TOLERANCE = 1e-6


def womac_difference_exceeds(difference, threshold: float) -> "np.ndarray":
    """``difference > threshold``, float-safe: a difference equal to the threshold up to rounding is not above it.

    Paper 000 (Chang et al. 2020), Methods "Data": Model B keeps subjects whose knees
    differ in WOMAC pain by "greater than 2". OAI WOMAC pain can be fractional (2.5
    points), and ``5.1 - 3.1`` is ``1.9999999999999996`` in floating point, so the
    comparison allows :data:`WOMAC_TOLERANCE`.

    Parameters
    ----------
    difference : array-like of float
        Absolute WOMAC pain difference between the knees (NaN: not above).
    threshold : float
        The paper's 2.

    Returns
    -------
    ndarray of bool
    """
    import numpy as np

    values = np.asarray(difference, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(values, nan=-np.inf) - float(threshold) > WOMAC_TOLERANCE


def unilateral_pain_cohort(root, womac_difference_above: float = 2.0):
    """Subjects with frequent pain in exactly one knee (paper 000, Methods "Data"; Table 1a).

    Read with :func:`kneelib.data.knee_table` from the OAI baseline tables (P01KPNREV /
    P01KPNLEV frequent pain, V00WOMKPR / V00WOMKPL, V00XRKL, V00AGE, P01BMI, P02SEX).
    Unilateral frequent pain: "yes" in one knee and "no" in the other; a subject with a
    missing pain answer is not unilateral. Covariates are returned as read (possibly
    missing): :func:`exclude_missing_covariates` removes subjects that lack one, with a
    recorded reason.

    Parameters
    ----------
    root : path
        OAI root (real or synthetic).
    womac_difference_above : float
        Model B keeps subjects whose knees differ by strictly more than this in WOMAC pain
        (the paper: "difference greater than 2"; compared by :func:`womac_difference_exceeds`).

    Returns
    -------
    DataFrame
        One row per subject, sorted by ``participant_id``: ``participant_id``, ``label``
        (0 left knee painful, 1 right), ``painful_side``, ``womac_left``, ``womac_right``,
        ``age``, ``bmi``, ``sex`` (1 male, 2 female), ``kl_left``, ``kl_right``,
        ``womac_difference``, ``kl_painful_knee``, ``model_b`` (bool).
    """
    import numpy as np
    import pandas as pd

    from kneelib.data import knee_table

    knees = knee_table(root, ["frequent_pain", "womac_pain", "kl_grade", "age_years", "bmi_kg_m2", "sex"],
                       visits=(0,))
    wide = knees.pivot(index="ID", columns="SIDE")
    right, left = wide["frequent_pain"][1], wide["frequent_pain"][2]
    unilateral = ((right == 1) & (left == 0)) | ((right == 0) & (left == 1))
    wide = wide[unilateral.fillna(False).astype(bool)]
    label = (wide["frequent_pain"][1] == 1).astype(int)
    cohort = pd.DataFrame({
        "participant_id": wide.index.astype(str),
        "label": label.to_numpy(),
        "painful_side": np.where(label == 1, "R", "L"),
        "womac_left": wide["womac_pain"][2].to_numpy(float),
        "womac_right": wide["womac_pain"][1].to_numpy(float),
        "age": wide["age_years"][1].to_numpy(float),
        "bmi": wide["bmi_kg_m2"][1].to_numpy(float),
        "sex": wide["sex"][1].to_numpy(),
        "kl_left": wide["kl_grade"][2].to_numpy(float),
        "kl_right": wide["kl_grade"][1].to_numpy(float),
    })
    cohort["womac_difference"] = (cohort["womac_left"] - cohort["womac_right"]).abs()
    cohort["kl_painful_knee"] = np.where(cohort["label"] == 1, cohort["kl_right"], cohort["kl_left"])
    cohort["model_b"] = womac_difference_exceeds(cohort["womac_difference"], womac_difference_above)
    return cohort.sort_values("participant_id", kind="stable").reset_index(drop=True)


def exclude_missing_covariates(cohort, covariates=REQUIRED_COVARIATES, id_column: str = "participant_id"):
    """Drop subjects missing a covariate and say why (never a crash further down).

    Stratified cross-validation (paper 000: strata by sex, age and BMI), Table 1 and the
    subgroup AUCs all need every covariate; a subject with a missing age, BMI or sex is
    therefore excluded here, once, with a recorded reason, instead of stopping the
    stratification with an error.

    Parameters
    ----------
    cohort : DataFrame
        One row per subject with ``id_column`` and the ``covariates`` columns.
    covariates : sequence of str
        Columns that must be present and finite.
    id_column : str

    Returns
    -------
    kept : DataFrame
        The rows with every covariate, index reset.
    exclusions : DataFrame
        One row per excluded subject: ``participant_id``, ``side`` (empty: the whole
        subject), ``step`` (``"covariates"``) and ``reason`` (e.g. ``"missing BMI"``).

    Raises
    ------
    kneelib.data.errors.KneelibDataError
        When a covariate column is absent from the table altogether.
    """
    import numpy as np
    import pandas as pd

    from kneelib.data.errors import KneelibDataError

    absent = [c for c in (id_column, *covariates) if c not in cohort.columns]
    if absent:
        raise KneelibDataError(f"cohort table has no column(s) {absent}: cannot check covariates "
                               f"(columns: {list(cohort.columns)})", reason=f"missing columns {absent}")
    values = cohort[list(covariates)].apply(pd.to_numeric, errors="coerce")
    missing = ~np.isfinite(values.to_numpy(float))
    rows = []
    for position in np.flatnonzero(missing.any(axis=1)):
        names = [_COVARIATE_NAMES.get(c, c) for c, m in zip(covariates, missing[position]) if m]
        rows.append({"participant_id": str(cohort[id_column].iloc[position]), "side": "",
                     "step": "covariates", "reason": f"missing {', '.join(names)}"})
    kept = cohort[~missing.any(axis=1)].reset_index(drop=True)
    return kept, pd.DataFrame(rows, columns=["participant_id", "side", "step", "reason"])


# ------------------------------------------------------------------------------------------
# Chronic pain (paper 001) and 12-month JSN progression (paper 002), per knee and visit
# ------------------------------------------------------------------------------------------
#: Radiographic progression threshold of paper 002 (Schiratti et al. 2021, Methods): a knee
#: whose medial minimum joint space width changes by at most this (mm) in 12 months progresses.
PROGRESSION_THRESHOLD_MM = -0.5


def jsw_change_12m(table):
    """12-month change of the medial minimum JSW per knee (paper 002, Methods).

    ``JSN(12 months) = JSW(12) - JSW(0)`` from the ``min_medial_jsw_mm`` column of a
    per-knee table (:func:`kneelib.data.knee_table`: ``ID``, ``SIDE``, ``VISIT``), put on
    every row of that knee (both visits). NaN when either visit is missing.

    Returns
    -------
    ndarray of float, one value per row of ``table``.
    """
    import numpy as np
    import pandas as pd

    from kneelib.data.errors import KneelibDataError

    absent = [c for c in ("ID", "SIDE", "VISIT", "min_medial_jsw_mm") if c not in table.columns]
    if absent:
        raise KneelibDataError(f"knee table has no column(s) {absent}: cannot compute the 12-month JSW change",
                               reason=f"missing columns {absent}")
    jsw = table.pivot_table(index=["ID", "SIDE"], columns="VISIT", values="min_medial_jsw_mm", aggfunc="first")
    change = (jsw[12] - jsw[0]) if {0, 12} <= set(jsw.columns) else pd.Series(np.nan, index=jsw.index)
    return change.reindex(pd.MultiIndex.from_frame(table[["ID", "SIDE"]])).to_numpy(float)


def progressor_12m(jsw_change_mm, threshold_mm: float = PROGRESSION_THRESHOLD_MM):
    """12-month JSN progressor (paper 002, Methods): JSW change ``<= threshold_mm``.

    Returns 1.0 / 0.0 per knee, NaN where the change is unknown.
    """
    import numpy as np

    change = np.asarray(jsw_change_mm, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(change), np.nan, (change <= threshold_mm).astype(float))


def add_derived_labels(table, threshold_mm: float = PROGRESSION_THRESHOLD_MM):
    """A copy of a per-knee table with the derived study labels added.

    - ``chronic_pain`` (paper 001, Methods): :func:`kneelib.data.chronic_pain`;
    - ``jsw_change_12m_mm`` and ``progressor`` (paper 002, Methods):
      :func:`jsw_change_12m` and :func:`progressor_12m`.

    Parameters
    ----------
    table : DataFrame
        ``ID``, ``SIDE``, ``VISIT``, ``knee_pain_months_12m``, ``knee_pain_any_12m`` and
        ``min_medial_jsw_mm`` (as :func:`kneelib.data.knee_table` names them).
    threshold_mm : float
        Progression threshold (:data:`PROGRESSION_THRESHOLD_MM`).
    """
    from kneelib.data.clinical import chronic_pain

    table = table.copy()
    table["chronic_pain"] = chronic_pain(table)
    table["jsw_change_12m_mm"] = jsw_change_12m(table)
    table["progressor"] = progressor_12m(table["jsw_change_12m_mm"], threshold_mm)
    return table


#: Relative progression threshold of paper 002 (Discussion, post hoc analysis): a knee whose
#: medial minimum JSW changes by at most this fraction of its baseline width in 12 months.
RELATIVE_PROGRESSION_THRESHOLD = -0.25
#: Pain classes of paper 002, section 3.3: WOMAC pain >= 2 is "painful", < 1 "not painful";
#: knees in between are left out.
WOMAC_PAIN_HIGH = 2.0
WOMAC_PAIN_LOW = 1.0


def relative_progressor_12m(jsw_change_mm, jsw_baseline_mm, threshold: float = RELATIVE_PROGRESSION_THRESHOLD):
    """Relative 12-month progressor (paper 002, Discussion): ``JSN(12) / JSW(0) <= threshold``.

    Parameters
    ----------
    jsw_change_mm, jsw_baseline_mm : array-like of float
        ``JSW(12) - JSW(0)`` and ``JSW(0)`` per knee.
    threshold : float
        -0.25 in the paper ("-25 % relative to JSW(baseline)").

    Returns
    -------
    ndarray of float
        1.0 / 0.0, NaN where either value is missing or the baseline width is not positive
        (bone on bone: no relative change is defined).
    """
    import numpy as np

    change = np.asarray(jsw_change_mm, dtype=float)
    baseline = np.asarray(jsw_baseline_mm, dtype=float)
    if change.shape != baseline.shape:
        raise ValueError(f"jsw_change_mm {change.shape} and jsw_baseline_mm {baseline.shape} differ in shape")
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(change) & np.isfinite(baseline) & (baseline > 0)
        relative = np.where(valid, change / np.where(valid, baseline, 1.0), np.nan)
        return np.where(valid, (relative <= threshold).astype(float), np.nan)


def womac_pain_class(womac, high: float = WOMAC_PAIN_HIGH, low: float = WOMAC_PAIN_LOW):
    """Binary pain task of paper 002, section 3.3: 1 when WOMAC pain >= ``high``, 0 when < ``low``.

    Knees in between (and missing values) get NaN: the paper leaves them out.

    Raises
    ------
    ValueError
        When ``low > high`` (the classes would overlap).
    """
    import numpy as np

    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    values = np.asarray(womac, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(values >= high, 1.0, np.where(values < low, 0.0, np.nan))


#: Baseline clinical variables read for the JSN chapter (paper 002, section 2.5 lists age,
#: gender, BMI, height, weight and minimum medial JSW as the clinical data shown to readers).
JSN_COHORT_VARIABLES: tuple[str, ...] = ("min_medial_jsw_mm", "womac_pain", "kl_grade", "age_years",
                                         "bmi_kg_m2", "sex", "height_mm", "weight_kg")


def jsn_progression_cohort(root):
    """One row per knee with the labels of paper 002 (sections 2.2.1, 2.2.2, 3.3; Discussion).

    Read with :func:`kneelib.data.knee_table` at months 0 and 12: minimum medial JSW
    (``V00MCMJSW`` / ``V01MCMJSW`` of ``kXR_QJSW_Duryea``), baseline WOMAC pain
    (``V00WOMKPR/L``), KL grade, age, BMI, sex, height and weight.

    Returns
    -------
    knees : DataFrame
        Every knee of the cohort, sorted by ``participant_id`` and ``side``: ``jsw_0``,
        ``jsw_12``, ``jsn_12m_mm`` (:func:`jsw_change_12m`), ``progressor``
        (:func:`progressor_12m`), ``relative_progressor``
        (:func:`relative_progressor_12m`), ``womac_0``, ``pain_class``
        (:func:`womac_pain_class`), ``kl_0``, ``age``, ``bmi``, ``sex``, ``height_mm``,
        ``weight_kg``. Labels are NaN where undefined (missing JSW, WOMAC in [1, 2)).
    exclusions : DataFrame
        One row per knee without both JSW readings (``participant_id``, ``side``,
        ``step``, ``reason``): excluded from the progression tasks and counted.
    """
    import numpy as np
    import pandas as pd

    from kneelib.data import knee_table

    table = knee_table(root, list(JSN_COHORT_VARIABLES), visits=(0, 12))
    table["jsn"] = jsw_change_12m(table)
    base = table[table["VISIT"] == 0].set_index(["ID", "SIDE"])
    follow = table[table["VISIT"] == 12].set_index(["ID", "SIDE"])
    knees = pd.DataFrame({
        "participant_id": base.index.get_level_values("ID").astype(str),
        "side": np.where(base.index.get_level_values("SIDE") == 1, "R", "L"),
        "jsw_0": base["min_medial_jsw_mm"].to_numpy(float),
        "jsw_12": follow["min_medial_jsw_mm"].reindex(base.index).to_numpy(float),
        "jsn_12m_mm": base["jsn"].to_numpy(float),
        "womac_0": base["womac_pain"].to_numpy(float),
        "kl_0": base["kl_grade"].to_numpy(float),
        "age": base["age_years"].to_numpy(float),
        "bmi": base["bmi_kg_m2"].to_numpy(float),
        "sex": base["sex"].to_numpy(float),
        "height_mm": base["height_mm"].to_numpy(float),
        "weight_kg": base["weight_kg"].to_numpy(float),
    })
    knees["progressor"] = progressor_12m(knees["jsn_12m_mm"])
    knees["relative_progressor"] = relative_progressor_12m(knees["jsn_12m_mm"], knees["jsw_0"])
    knees["pain_class"] = womac_pain_class(knees["womac_0"])
    missing = ~np.isfinite(knees["jsn_12m_mm"].to_numpy(float))
    reasons = np.where(np.isfinite(knees["jsw_0"]), "no 12-month JSW", "no baseline JSW")
    exclusions = pd.DataFrame({"participant_id": knees["participant_id"][missing], "side": knees["side"][missing],
                               "step": "labels", "reason": reasons[missing]})
    knees = knees.sort_values(["participant_id", "side"], kind="stable").reset_index(drop=True)
    return knees, exclusions.reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# Chronic knee pain from qMRI biomarkers (paper 001, Morales et al. 2021)
# ------------------------------------------------------------------------------------------
#: Variables (names of ``oai_variables.yaml``) of the chronic-pain cohort of paper 001: the
#: pain label (VxxKPNR12 / VxxKPNR12M), widespread pain (VxxOJPN*, VxxHPR30CV, VxxBP30, ...),
#: and the radiographic features of Table 2 (VxxXRJSM, VxxXRJSL, VxxMCMJSW).
CHRONIC_PAIN_VARIABLES: tuple[str, ...] = (
    "knee_pain_any_12m", "knee_pain_months_12m", "widespread_pain_above_waist", "widespread_pain_below_waist",
    "widespread_pain_axial", "jsn_medial", "jsn_lateral", "min_medial_jsw_mm",
)
#: KL grade from which a knee counts as radiographic OA (paper 001, Methods: KL 0-1 healthy, 2-4 OA).
OA_KL_THRESHOLD = 2


def chronic_pain_cohort(root, visits=(0, 12)):
    """Right knees of paper 001's chronic-pain study, every time point, with their labels.

    Paper 001, Methods "Clinical outcome definition" and "Patient inclusion": a right knee at a
    visit with a SAG 3D DESS, a SAG MSME T2 series and a KL grade
    (:func:`kneelib.data.qmri_cohort.qmri_knee_table`); ``chronic_pain`` 1 for pain, aching or
    stiffness on more than half the days of a month for more than 6 of the past 12 months
    (``VxxKPNR12M >= 7``), 0 for no knee pain at all in the past 12 months (``VxxKPNR12 == 0``),
    NaN in between (:func:`kneelib.data.clinical.chronic_pain`); a participant with widespread
    pain at the visit (above-waist, below-waist and axial joints in the past 30 days;
    :func:`kneelib.data.clinical.widespread_pain`) leaves the pain study at that visit.
    ``oa`` is the OA pretraining label, ``KL >= 2`` (:data:`OA_KL_THRESHOLD`), defined for
    every knee of the table.

    Returns
    -------
    knees : DataFrame
        One row per right knee and visit: ``participant_id``, ``visit_month``, ``kl_grade``,
        ``age``, ``bmi``, ``sex``, ``oa``, ``chronic_pain`` (NaN: not in the pain study),
        ``widespread_pain``, ``jsn_medial``, ``jsn_lateral``, ``min_medial_jsw_mm``,
        ``knee_pain_months_12m``, ``knee_pain_any_12m``.
    exclusions : DataFrame
        Why a knee of the table is not in the pain study (``participant_id``,
        ``visit_month``, ``step``, ``reason``): widespread pain, pain between the two
        definitions, a pain answer missing.
    """
    import numpy as np
    import pandas as pd

    from kneelib.data import knee_table
    from kneelib.data.clinical import chronic_pain, widespread_pain
    from kneelib.data.qmri_cohort import qmri_knee_table

    knees = qmri_knee_table(root, visits=visits)
    table = knee_table(root, list(CHRONIC_PAIN_VARIABLES), visits=tuple(visits))
    table = table[table["SIDE"] == 1].copy()
    table["widespread_pain"] = widespread_pain(table)
    table["chronic_pain"] = chronic_pain(table)
    table = table.rename(columns={"ID": "participant_id", "VISIT": "visit_month"})
    table["participant_id"] = table["participant_id"].astype(str)
    table["visit_month"] = table["visit_month"].astype(int)
    columns = ["chronic_pain", "widespread_pain", "jsn_medial", "jsn_lateral", "min_medial_jsw_mm",
               "knee_pain_months_12m", "knee_pain_any_12m"]
    knees = knees.merge(table[["participant_id", "visit_month", *columns]], on=["participant_id", "visit_month"],
                        how="left")
    knees["oa"] = (knees["kl_grade"] >= OA_KL_THRESHOLD).astype(int)
    reasons = np.full(len(knees), "", dtype=object)
    months, any_pain = knees["knee_pain_months_12m"], knees["knee_pain_any_12m"]
    reasons[(months.isna() & any_pain.isna()).to_numpy()] = "no 12-month knee pain answer"
    reasons[(knees["chronic_pain"].isna() & (reasons == "")).to_numpy()] = \
        "knee pain in the past 12 months, on most days for at most 6 months"
    reasons[(knees["widespread_pain"] == 1).to_numpy() & (reasons == "")] = "widespread pain"
    knees.loc[reasons != "", "chronic_pain"] = np.nan
    out = reasons != ""
    exclusions = pd.DataFrame({"participant_id": knees["participant_id"][out], "visit_month": knees["visit_month"][out],
                               "step": "chronic-pain label", "reason": reasons[out]})
    return knees.reset_index(drop=True), exclusions.reset_index(drop=True)
