"""Describe a per-knee cohort table: demographics, KL distribution and label prevalences.

Input is one row per knee and visit with the columns :func:`kneelib.data.knee_table`
reads (``ID``, ``SIDE``, ``VISIT``, ``age_years``, ``sex``, ``bmi_kg_m2``, ``race``,
``kl_grade``, ``frequent_pain``, ``womac_pain``, ``widespread_pain``) and the derived labels
of :func:`kneelib.data.labels.add_derived_labels`; optionally the ground-truth lesion
columns of :func:`kneelib.synth.ground_truth.truth_knee_table`. The same functions
describe a synthetic cohort read back from its OAI tables, a no-image sample of the
causal model and a real OAI download.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["KL_GRADES", "PREVALENCE_LABELS", "demographics_table", "label_prevalences", "prevalence_table"]

#: KL grades counted in :func:`demographics_table`.
KL_GRADES = (0, 1, 2, 3, 4)

#: Study labels of :func:`label_prevalences`: key -> quantity as displayed.
PREVALENCE_LABELS = {
    "unilateral_frequent_pain": "unilateral frequent pain (paper 000)",
    "womac_difference_above_2": "WOMAC pain difference > 2, of unilateral (paper 000 Model B)",
    "chronic_pain": "chronic pain, right knees, widespread pain excluded (paper 001)",
    "progressor_12m": "12-month progressor, JSW change <= -0.5 mm (paper 002)",
}


def _mean_sd(values: pd.Series, digits: int = 1) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    sd = values.std() if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def _count_percent(hit: pd.Series, total: int) -> str:
    count = int(hit.sum())
    return f"{count} ({100.0 * count / total:.1f} %)" if total else "-"


def demographics_table(sources: dict[str, pd.DataFrame], published: dict[str, str] | None = None,
                       published_label: str = "published (OAI)") -> pd.DataFrame:
    """Demographics and KL distribution of each knee table, side by side.

    Parameters
    ----------
    sources : dict
        Column label -> per-knee table.
    published : dict, optional
        Row -> text of a published column (same row names), added as ``published_label``.

    Returns
    -------
    pandas.DataFrame
        Rows: participants, age, women, BMI, race, KL 0-4 over all knee time points
        (as paper 001 counts time points); one column per source.
    """
    columns = {}
    for label, table in sources.items():
        subjects = table.drop_duplicates("ID")
        n = len(subjects)
        kl = pd.to_numeric(table["kl_grade"], errors="coerce").dropna()
        column = {
            "participants": f"{n:,}",
            "age, years (mean ± SD)": _mean_sd(subjects["age_years"]),
            "women": _count_percent(subjects["sex"] == 2, n),
            "BMI, kg/m² (mean ± SD)": _mean_sd(subjects["bmi_kg_m2"]),
            "white / black": f"{100.0 * (subjects['race'] == 1).mean():.0f} % / "
                             f"{100.0 * (subjects['race'] == 2).mean():.0f} %" if n else "-",
            "knee time points with a KL grade": f"{len(kl):,}",
        }
        for grade in KL_GRADES:
            column[f"KL {grade}"] = _count_percent(kl == grade, len(kl))
        columns[label] = column
    if published is not None:
        columns[published_label] = published
    return pd.DataFrame(columns)


def label_prevalences(table: pd.DataFrame, level: float = 0.95, n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """How often each study label and lesion occurs in one knee table, with a CI.

    Definitions (the studies' own):

    - ``unilateral_frequent_pain`` (paper 000, Methods "Data"): at baseline, frequent
      pain in exactly one knee; per participant with both knees known;
    - ``womac_difference_above_2`` (paper 000, Model B: WOMAC pain "difference greater
      than 2", :func:`kneelib.data.labels.womac_difference_exceeds`): among those participants;
    - ``chronic_pain`` (paper 001, Methods): right-knee time points (baseline and 12
      months; the MSME series exists for right knees only) with a chronic-pain label,
      participants with widespread pain excluded; share labelled chronic;
    - ``progressor_12m`` (paper 002, Methods): baseline knees with a measured medial JSW
      change <= -0.5 mm (:func:`kneelib.data.labels.progressor_12m`);
    - lesions (ground truth, when its columns are present): baseline knees with
      effusion-synovitis grade >= 1 and >= 2, Hoffa-synovitis >= 1, at least one BML,
      meniscal damage, focal cartilage loss of at least 10 % in a region; knee visits
      with a planted scan artefact.

    Intervals (:func:`kneelib.stats.proportions.proportion_with_ci`): Wilson for shares
    of participants, a cluster bootstrap over participants for shares of knees.

    Returns
    -------
    pandas.DataFrame
        key, quantity, count, of (denominator), percent, ci_low, ci_high (percent),
        unit, ci_method.
    """
    from kneelib.data.labels import womac_difference_exceeds
    from kneelib.stats.proportions import proportion_with_ci

    rows = []

    def add(key, quantity, hit, denominator_mask, unit, ids=None):
        mask = np.asarray(denominator_mask, dtype=bool)
        hits = np.asarray(hit, dtype=bool)[mask]
        groups = None if ids is None else np.asarray(ids)[mask]
        ci = proportion_with_ci(hits, groups=groups, level=level, n_boot=n_boot, seed=seed)
        rows.append({"key": key, "quantity": quantity, "count": ci.count, "of": ci.of,
                     "percent": 100.0 * ci.proportion, "ci_low": 100.0 * ci.ci_low,
                     "ci_high": 100.0 * ci.ci_high, "unit": unit, "ci_method": ci.method})

    base = table[table["VISIT"] == 0]
    pain = base.pivot_table(index="ID", columns="SIDE", values="frequent_pain", aggfunc="first")
    womac = base.pivot_table(index="ID", columns="SIDE", values="womac_pain", aggfunc="first")
    both_known = pain.notna().all(axis=1) if {1, 2} <= set(pain.columns) else pd.Series(False, index=pain.index)
    unilateral = both_known & ((pain.get(1, 0) > 0) != (pain.get(2, 0) > 0))
    add("unilateral_frequent_pain", PREVALENCE_LABELS["unilateral_frequent_pain"], unilateral, both_known,
        "participants")
    if {1, 2} <= set(womac.columns):
        difference = (womac[1] - womac[2]).abs()
    else:
        difference = pd.Series(np.nan, index=womac.index)
    above = pd.Series(womac_difference_exceeds(difference, 2.0), index=womac.index)
    add("womac_difference_above_2", PREVALENCE_LABELS["womac_difference_above_2"],
        above.reindex(unilateral.index, fill_value=False), unilateral, "participants")
    right = table[(table["SIDE"] == 1) & (table["widespread_pain"] == 0)]
    add("chronic_pain", PREVALENCE_LABELS["chronic_pain"], right["chronic_pain"] == 1,
        right["chronic_pain"].notna(), "knee time points", ids=right["ID"])
    knees = base[base["progressor"].notna()]
    add("progressor_12m", PREVALENCE_LABELS["progressor_12m"], knees["progressor"] == 1,
        np.ones(len(knees), bool), "knees", ids=knees["ID"])
    everyone = np.ones(len(base), bool)
    if "effusion_grade" in base.columns:
        for key, quantity, hit in (
                ("effusion_1", "effusion-synovitis grade >= 1", base["effusion_grade"] >= 1),
                ("effusion_2", "effusion-synovitis grade >= 2", base["effusion_grade"] >= 2),
                ("hoffa_1", "Hoffa-synovitis grade >= 1", base["hoffa_synovitis_grade"] >= 1),
                ("bml", "at least one bone marrow lesion", base["bml_count"] >= 1),
                ("meniscal_damage", "meniscal damage", base["meniscal_damage"] >= 1),
                ("cartilage_loss_10", "focal cartilage loss >= 10 % in a region", base["cartilage_loss_max"] >= 0.1)):
            add(key, quantity, hit, everyone, "baseline knees", ids=base["ID"])
        add("artefact", "planted scan artefact", table["artefact"].fillna("") != "", np.ones(len(table), bool),
            "knee visits", ids=table["ID"])
    return pd.DataFrame(rows)


def prevalence_table(sources: dict[str, pd.DataFrame], published: dict[str, str] | None = None,
                     **ci_options) -> pd.DataFrame:
    """:func:`label_prevalences` of each source side by side.

    Cells read ``count / of (percent % [CI low, high])``. ``published`` maps a label
    key (:data:`PREVALENCE_LABELS`) to the text of a ``published`` column.
    """
    columns, units, names = {}, {}, {}
    for label, table in sources.items():
        prevalences = label_prevalences(table, **ci_options)
        columns[label] = {r.key: f"{r.count} / {r.of} ({r.percent:.1f} % [{r.ci_low:.1f}, {r.ci_high:.1f}])"
                          if r.of else "- (none)" for r in prevalences.itertuples()}
        units.update(dict(zip(prevalences["key"], prevalences["unit"])))
        names.update(dict(zip(prevalences["key"], prevalences["quantity"])))
    frame = pd.DataFrame(columns)
    frame.insert(0, "counted over", [units[k] for k in frame.index])
    if published is not None:
        frame["published"] = [published.get(k, "") for k in frame.index]
    frame.index = [names[k] for k in frame.index]
    return frame
