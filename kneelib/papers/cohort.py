"""The data chapter (``notebooks/cohort.ipynb``): what the book runs on.

This module only composes stage functions for the notebook; each job has its own home:

- label definitions (chronic pain, 12-month progressor): :mod:`kneelib.data.labels`;
- demographics and label prevalences with CIs: :mod:`kneelib.data.summary`
  (intervals: :mod:`kneelib.stats.proportions`);
- whole-cohort QC: :mod:`kneelib.data.qc`; the public real data and its tables:
  :mod:`kneelib.data.inventory`;
- the ground truth of the synthetic cohort and the no-image causal-model sample:
  :mod:`kneelib.synth.ground_truth`;
- figures: :mod:`kneelib.figures.causal_dag`, :mod:`kneelib.figures.mri_sequences`,
  :mod:`kneelib.figures.radiograph_crops`, :mod:`kneelib.figures.cohort_distributions`,
  :mod:`kneelib.figures.synthetic_vs_real` (DESS planes, MSME echoes and T2 maps, bone
  surfaces), :mod:`kneelib.figures.realism` (the discriminator's Grad-CAM);
- the realism numbers (sim-to-real KL kappa, real-vs-synthetic discriminator AUCs):
  :func:`kneelib.train.realism.measure_realism` (issue 10, item 4).

Published reference numbers are read from ``book/published.yml`` (``values: cohort:``)
with :func:`kneelib.report.published_values`: KL counts of paper 001 (Methods, "Chronic
pain model training"), the chronic-pain case ratio of paper 001 (Table 1), unilateral
frequent pain and the WOMAC-difference subgroup of paper 000 (Table 1a; Methods), the
12-month progressor share of paper 002 (Results, section 3.1), the knees of the
regression of Morales et al. 2021 (Table 3); the realism targets of issue 10 and the real-data
KL kappa of paper 004 (``values: kl_real_radiographs:``) beside the realism numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.inventory import (  # noqa: F401  (the notebook calls these through this module)
    DEEP_PAIN_BONES,
    REAL_DATASETS,
    dataset_inventory,
    deep_pain_model_selection,
    deep_pain_summary,
    kl_label_counts,
    load_deep_pain_tables,
    missing_dataset_message,
    resolve_root,
    sample_kl_images,
)
from kneelib.data.qc import qc_display_table
from kneelib.figures.causal_dag import plot_causal_dag
from kneelib.figures.cohort_distributions import plot_kl_distribution, plot_label_prevalences, plot_thickness_by_pain
from kneelib.figures.mri_sequences import (
    plot_dess_and_t1rho,
    plot_msme_echoes,
    plot_sequence_gallery,
)
from kneelib.figures.radiograph_crops import plot_kl_montage, plot_radiograph_crops, plot_radiograph_truth
from kneelib.figures.synthetic_vs_real import plot_dess_planes, plot_msme_synthetic_vs_real
from kneelib.report import Comparison, published_values
from kneelib.synth.ground_truth import (
    causal_model_knee_table,
    choose_showcase_participant,
    effect_sizes_by_block,
    synthetic_knee_crops,
    truth_knee_table,
)

__all__ = [
    "REAL_DATASETS", "resolve_root", "dataset_inventory", "missing_dataset_message", "kl_label_counts",
    "sample_kl_images", "load_deep_pain_tables", "deep_pain_summary", "deep_pain_model_selection",
    "published", "synthetic_cohort", "cohort_location", "CLINICAL_VARIABLES", "cohort_knee_table",
    "causal_model_knee_table", "effect_sizes_by_block", "demographics_table", "label_prevalences_by_source",
    "prevalence_table", "published_prevalence_percent", "load_every_series", "qc_display_table", "planted_artefacts_vs_qc",
    "choose_showcase_participant", "synthetic_knee_crops", "cohort_comparisons", "headline_numbers",
    "plot_causal_dag", "plot_kl_montage", "plot_dess_and_t1rho", "plot_thickness_by_pain", "plot_sequence_gallery",
    "plot_msme_echoes", "plot_radiograph_truth", "plot_radiograph_crops",
    "plot_kl_distribution", "plot_label_prevalences", "plot_dess_planes", "plot_msme_synthetic_vs_real",
    "TEMPLATE_LABEL_MAP", "dataset_present", "plot_bone_surfaces_vs_template", "measure_realism", "realism_table",
    "realism_numbers", "realism_comparisons", "plot_realism_gradcam",
]

#: The real knee segmentation the synthetic anatomy's template is derived from (under ``$KNEELIB_DATA``).
TEMPLATE_LABEL_MAP = Path("pymskt_knee_mri") / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"


#: Study variables read back from the written OAI tables (names of ``oai_variables.yaml``).
CLINICAL_VARIABLES = (
    "age_years", "bmi_kg_m2", "sex", "race", "frequent_pain", "womac_pain", "knee_pain_any_12m",
    "knee_pain_months_12m", "widespread_pain_above_waist", "widespread_pain_below_waist",
    "widespread_pain_axial", "kl_grade", "jsn_medial", "jsn_lateral", "min_medial_jsw_mm",
)


def published() -> dict:
    """The chapter's published values: ``values: cohort:`` of ``book/published.yml``."""
    return published_values("cohort")


# --------------------------------------------------------------------------- the synthetic cohort
def synthetic_cohort(preset: str = "smoke", seed: int = 0, n_subjects: int | None = None,
                     progress: bool = True) -> Path:
    """Root of the synthetic OAI-format cohort (generated on first use, then cached).

    Thin wrapper of :func:`kneelib.synth.cohort.generate_cohort` (cache folder
    ``$KNEELIB_CACHE/synthetic/oai_<preset>_seed<seed>[_n<n>]``; ``make data`` makes the
    ``default`` one ahead of the book build).
    """
    from kneelib.synth.cohort import generate_cohort

    return generate_cohort(preset, seed=seed, n_subjects=n_subjects, progress=progress)


def cohort_location(cohort_root: str | Path) -> str:
    """``$KNEELIB_CACHE/<path>`` for a cohort under the cache (else its folder name): no local path on a page."""
    from kneelib.config import cache_root

    root = Path(cohort_root).resolve()
    try:
        return f"$KNEELIB_CACHE/{root.relative_to(cache_root()).as_posix()}"
    except ValueError:
        return root.name


def cohort_knee_table(cohort_root: str | Path) -> pd.DataFrame:
    """One row per knee and visit (0, 12) of a cohort, from its OAI clinical tables.

    The tables are read back with :func:`kneelib.data.knee_table` exactly as a real OAI
    download would be (:data:`CLINICAL_VARIABLES`); widespread pain with
    :func:`kneelib.data.widespread_pain`; chronic pain, the 12-month JSW change and the
    progressor label with :func:`kneelib.data.labels.add_derived_labels`. The
    ground-truth lesion columns (:func:`kneelib.synth.ground_truth.truth_knee_table`)
    are joined on ID, SIDE and VISIT.
    """
    from kneelib.data import knee_table, widespread_pain
    from kneelib.data.labels import add_derived_labels

    table = knee_table(cohort_root, CLINICAL_VARIABLES, visits=(0, 12))
    table["widespread_pain"] = widespread_pain(table)
    table = add_derived_labels(table)
    return table.merge(truth_knee_table(cohort_root), on=["ID", "SIDE", "VISIT"], how="left")


def load_every_series(cohort_root: str | Path, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`kneelib.data.qc.load_every_series`, expecting the MR series the cohort was asked to write.

    A synthetic cohort written with the book's series set (``mr_series="book"``) is checked
    against that set (:func:`kneelib.synth.cohort.expected_mr_descriptions_by_visit`); any
    other folder against the whole OAI knee protocol.
    """
    from kneelib.data.qc import load_every_series as load
    from kneelib.synth.cohort import expected_mr_descriptions_by_visit

    return load(cohort_root, expected_mr=expected_mr_descriptions_by_visit(cohort_root), **options)


def planted_artefacts_vs_qc(cohort_root: str | Path, qc: pd.DataFrame, participants=None) -> pd.DataFrame:
    """:func:`kneelib.data.qc.planted_artefacts_vs_qc` with the cohort's ground-truth knee table.

    Only knee visits with an MR series written are listed (an artefact planted in a knee
    visit whose series the cohort does not write has nothing to catch).
    """
    from kneelib.data.qc import planted_artefacts_vs_qc as join
    from kneelib.synth.ground_truth import series_truth_table

    knees = truth_knee_table(cohort_root)
    series = series_truth_table(cohort_root)
    imaged = set(zip(series["participant_id"].astype(str), series["side"].map({"R": 1, "L": 2}),
                     series["visit_month"].astype(int)))
    keep = [(str(i), int(s), int(v)) in imaged for i, s, v in zip(knees["ID"], knees["SIDE"], knees["VISIT"])]
    return join(knees[keep], qc, participants=participants)


# --------------------------------------------------------------------------- demographics and labels
def _published_demographics(values: dict) -> dict[str, str]:
    oai, subjects = values["oai_baseline"], values["paper000_subjects"]
    counts = values["kl_counts"]["counts"]
    total = sum(counts.values())
    return {
        "participants": f"{oai['participants']:,} (paper 000, Table 1a)",
        "age, years (mean ± SD)": f"{oai['age_mean_years']:g} ± {oai['age_sd_years']:g} "
                                  f"(paper 000: {subjects['age_mean_years']:g} ± {subjects['age_sd_years']:g})",
        "women": f"{oai['female_percent']:g} % (paper 000: {subjects['female_percent']:g} %)",
        "BMI, kg/m² (mean ± SD)": f"paper 000: {subjects['bmi_mean']:g} ± {subjects['bmi_sd']:g}",
        "white / black": "",
        "knee time points with a KL grade": f"{total:,} (paper 001)",
        **{f"KL {g}": f"{n:,} ({100.0 * n / total:.1f} %)" for g, n in counts.items()},
    }


def demographics_table(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`kneelib.data.summary.demographics_table` with the published OAI column."""
    from kneelib.data.summary import demographics_table as describe

    return describe(sources, published=_published_demographics(published()))


def published_prevalence_percent(values: dict | None = None) -> dict[str, float]:
    """Label key -> published share in percent (``count / of`` or ``share``)."""
    values = values or published()
    shares = {}
    for key, entry in values["prevalences"].items():
        shares[key] = 100.0 * (entry["count"] / entry["of"] if "count" in entry else entry["share"])
    return shares


def label_prevalences_by_source(sources: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """:func:`kneelib.data.summary.label_prevalences` (with CIs) of each source."""
    from kneelib.data.summary import label_prevalences

    return {label: label_prevalences(table) for label, table in sources.items()}


def prevalence_table(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`kneelib.data.summary.prevalence_table` with the published shares."""
    from kneelib.data.summary import prevalence_table as tabulate

    values = published()
    percent = published_prevalence_percent(values)
    text = {k: f"{percent[k]:.1f} %: {values['prevalences'][k]['source']}" for k in percent}
    return tabulate(sources, published=text)


# --------------------------------------------------------------------------- published vs found
def _synthetic_comparisons(table: pd.DataFrame, data: str, tag: str, values: dict) -> list[Comparison]:
    """Published OAI figures vs one synthetic knee table (image cohort or model sample)."""
    from kneelib.data.summary import label_prevalences

    subjects = table.drop_duplicates("ID")
    kl = pd.to_numeric(table["kl_grade"], errors="coerce").dropna()
    counts = values["kl_counts"]["counts"]
    kl_total = sum(counts.values())
    prevalences = label_prevalences(table).set_index("key")
    oai, paper000 = values["oai_baseline"], values["paper000_subjects"]
    rows = [
        Comparison("cohort", f"mean age at baseline, years [{tag}]", oai["age_mean_years"],
                   round(float(subjects["age_years"].mean()), 1) if len(subjects) else None,
                   source=f"OAI baseline {oai['age_mean_years']:g} +/- {oai['age_sd_years']:g} (paper 000 subjects: "
                          f"{paper000['age_mean_years']:g} +/- {paper000['age_sd_years']:g})", data=data),
        Comparison("cohort", f"women, % of participants [{tag}]", oai["female_percent"],
                   round(100.0 * float((subjects["sex"] == 2).mean()), 1) if len(subjects) else None,
                   source=f"OAI baseline {oai['female_percent']:g} % (paper 000 subjects: "
                          f"{paper000['female_percent']:g} %)", data=data),
    ]
    for grade, count in counts.items():
        rows.append(Comparison(
            "cohort", f"knee time points with KL {grade}, % [{tag}]", round(100.0 * count / kl_total, 1),
            round(100.0 * float((kl == grade).mean()), 1) if len(kl) else None,
            source=f"{values['kl_counts']['source']}: {count:,} of {kl_total:,}", data=data,
            note="baseline and 12-month knees"))
    for key, percent in published_prevalence_percent(values).items():
        found = prevalences.loc[key] if key in prevalences.index else None
        reproduced = round(float(found["percent"]), 1) if found is not None and np.isfinite(found["percent"]) else None
        ci = (round(float(found["ci_low"]), 1), round(float(found["ci_high"]), 1)) \
            if reproduced is not None and np.isfinite(found["ci_low"]) else (None, None)
        rows.append(Comparison("cohort", f"{found['quantity'] if found is not None else key}, % [{tag}]",
                               round(percent, 1), reproduced, ci_low=ci[0], ci_high=ci[1],
                               source=values["prevalences"][key]["source"], data=data,
                               note=f"counted over {found['unit']}; 95 % CI: {found['ci_method']}"
                               if found is not None else ""))
    return rows


def cohort_comparisons(tables: dict[str, pd.DataFrame] | None, cohort_table: pd.DataFrame | None = None,
                       cohort_data: str = "", model_table: pd.DataFrame | None = None,
                       model_data: str = "") -> list[Comparison]:
    """Published vs found numbers of the data chapter.

    - sizes of the released regression data (Morales et al. 2021, Table 3: one n for
      every bone; reproduced: rows of each released table);
    - OAI demographics, the KL distribution of paper 001 and the label shares of papers
      000, 001 and 002 for the synthetic image cohort (``cohort_table``, read back from its
      OAI tables) and for the large no-image sample of the causal model (``model_table``).
      Quantities end in ``[image cohort]`` or ``[causal model sample]``.
    """
    values = published()
    n_knees = values["morales_table3_n_knees"]
    comparisons = []
    for bone in DEEP_PAIN_BONES:
        found = None if not tables or bone not in tables else len(tables[bone])
        comparisons.append(Comparison(
            study="cohort", quantity=f"knees in the chronic-pain thickness regression, {bone}",
            published=n_knees["value"], reproduced=found, source=n_knees["source"],
            data="real: deep_pain_regression (released per-knee table)",
            note="rows of the released table; the paper gives one n for all bones"))
    if cohort_table is not None:
        comparisons += _synthetic_comparisons(cohort_table, cohort_data, "image cohort", values)
    if model_table is not None:
        comparisons += _synthetic_comparisons(model_table, model_data, "causal model sample", values)
    return comparisons


def headline_numbers(prevalences: dict[str, pd.DataFrame], knees: pd.DataFrame,
                     deep_pain_tables: dict[str, pd.DataFrame] | None = None) -> dict[str, float]:
    """Numbers the chapter's text quotes, by glue name (computed here, glued in the notebook).

    ``prevalences`` maps ``"image"`` and ``"model"`` to :func:`label_prevalences_by_source`
    tables; published values come from :func:`published`.
    """
    values = published()
    numbers = {
        "n_participants": float(knees["ID"].nunique()),
        "n_knee_visits": float(len(knees)),
        "paper000_age_mean": values["paper000_subjects"]["age_mean_years"],
        "paper000_age_sd": values["paper000_subjects"]["age_sd_years"],
        "paper000_female_percent": values["paper000_subjects"]["female_percent"],
        "paper000_n_subjects": float(values["paper000_subjects"]["n"]),
        "morales_n_knees": float(values["morales_table3_n_knees"]["value"]),
    }
    for source, table in prevalences.items():
        for row in table.itertuples():
            for field in ("percent", "ci_low", "ci_high"):
                numbers[f"{source}_{row.key}_{field}"] = float(getattr(row, field))
    for key, percent in published_prevalence_percent(values).items():
        numbers[f"published_{key}_percent"] = percent
    if deep_pain_tables:
        for bone, table in deep_pain_tables.items():
            numbers[f"deep_pain_{bone}_rows"] = float(len(table))
    return numbers


# --------------------------------------------------------------------------- synthetic next to real (issue 10)
def plot_bone_surfaces_vs_template(cohort_root: str | Path, participant_id: str, data_root: str | Path,
                                   visit_month: int = 0, mesh_mm: float = 1.5):
    """Bone surfaces of a synthetic right knee (its SAG 3D DESS ground-truth labels) next to the template's.

    The template is the real label map the synthetic anatomy is built from
    (:data:`TEMPLATE_LABEL_MAP`, pymskt); surfaces by :func:`kneelib.figures.synthetic_vs_real.bone_meshes`.
    """
    from kneelib.figures.synthetic_vs_real import (
        PYMSKT_BONE_LABELS,
        bone_meshes,
        plot_bone_surfaces,
        read_template_labels,
        synthetic_bone_labels,
    )

    labels, affine, codes = synthetic_bone_labels(cohort_root, participant_id, visit_month)
    template_labels, template_affine = read_template_labels(Path(data_root) / TEMPLATE_LABEL_MAP)
    return plot_bone_surfaces({
        f"synthetic {participant_id}, right knee\n(SAG 3D DESS ground-truth labels)": bone_meshes(
            labels, affine, codes, mesh_mm),
        "template\n(the real pymskt label map)": bone_meshes(template_labels, template_affine, PYMSKT_BONE_LABELS,
                                                           mesh_mm)})


def dataset_present(root: str | Path, name: str) -> bool:
    """Whether the real data set ``name`` (a folder under the data root) is there."""
    return (Path(root) / name).is_dir()


def measure_realism(cohort_root: str | Path, data_root: str | Path, settings: dict | None = None,
                    seed: int = 0) -> dict:
    """:func:`kneelib.train.realism.measure_realism` of the chapter's cohort (``settings``: overrides)."""
    from kneelib.train.realism import measure_realism as measure

    return measure(cohort_root, data_root, settings=dict(settings or {}), seed=seed)


def _realism_targets() -> dict:
    return published()["realism_targets"]


def _real_kl_kappa() -> dict:
    return published_values("kl_real_radiographs")["test"]


def realism_table(result: dict) -> pd.DataFrame:
    """The realism numbers with their subject-level 95 % CIs, the issue's targets and what they are.

    The sim-to-real kappa is followed by its ceiling when measured (``real_reference``: the
    same recipe trained on as many real crops, tested on the same crops) and by that
    real-trained grader's kappa on the synthetic crops against their planted grades
    (real-to-synthetic, :func:`kneelib.train.realism.grade_synthetic_crops`).
    """
    targets = _realism_targets()
    transfer = result["transfer"]
    radiograph, mri = result["radiograph_discriminability"], result["mri_discriminability"]
    history = transfer.get("history")
    internal = (f" (its kappa on held-out synthetic subjects, the epoch it kept: "
                f"{float(history['kl_kappa'].max()):.2f})"
                if isinstance(history, pd.DataFrame) and "kl_kappa" in history else "")
    rows = [
        ("sim-to-real transfer: quadratic kappa, KL 0-4", transfer, "kappa", f">= {targets['transfer_kappa_min']:g}",
         "higher", f"grader trained and selected on synthetic crops only{internal}; tested once on "
         f"{transfer['n_test_crops']:,} real val crops of {transfer['n_test_subjects']:,} subjects"),
    ]
    reference = result.get("real_reference")
    if reference:
        rows.append(("its ceiling: the same grader trained on real crops", reference, "kappa", "none (a reference)",
                     "", f"same recipe trained on {reference['n_train_crops']:,} real train crops of "
                         f"{reference['n_train_subjects']:,} subjects (as many crops as the synthetic grader), "
                         f"tested on the same val crops"))
        graded = reference.get("real_to_synthetic")
        if graded:
            rows.append(("real-to-synthetic: that real-trained grader on the synthetic crops", graded, "kappa",
                         "none set", "higher",
                         f"planted KL of {graded['n_crops']:,} synthetic crops of {graded['n_subjects']:,} "
                         f"subjects against the grade it reads; a realistic knee reads near the ceiling"))
    rows += [
        ("real vs synthetic radiograph crops: discriminator AUC", radiograph, "auc",
         f"<= {targets['discriminator_auc_max']:g}", "lower",
         f"test: {radiograph['n_test_real']:,} real, {radiograph['n_test_synthetic']:,} synthetic crops"),
        ("real vs synthetic DESS slices: discriminator AUC", mri, "auc", "none set", "lower",
         f"test: {mri['n_test_real']:,} real, {mri['n_test_synthetic']:,} synthetic slices; {mri.get('caveat', '')}"),
    ]
    return pd.DataFrame([{
        "measure": name, "value": round(float(part[key]), 3),
        "95 % CI": f"{part['ci_low']:.3f} to {part['ci_high']:.3f} (resampling {part.get('unit', 'subjects')})",
        "target (issue 10)": target, "more realistic": better, "what": what,
    } for name, part, key, target, better, what in rows])


def realism_numbers(result: dict | None) -> dict[str, float]:
    """Glue names -> numbers of the "Realism, measured" section (and the issue's targets).

    ``result`` is :func:`measure_realism`; ``None`` (real data absent) gives NaN for every
    measured number, so the section's glue names always exist.
    """
    targets = _realism_targets()
    numbers = {"realism_transfer_kappa_target": float(targets["transfer_kappa_min"]),
               "realism_discriminator_auc_target": float(targets["discriminator_auc_max"]),
               "realism_real_trained_kappa": float(_real_kl_kappa()["quadratic_kappa"])}
    empty = {"kappa": np.nan, "auc": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_test_subjects": np.nan}
    result = result or {}
    for prefix, part, key in (("realism_transfer_kappa", "transfer", "kappa"),
                              ("realism_radiograph_auc", "radiograph_discriminability", "auc"),
                              ("realism_dess_auc", "mri_discriminability", "auc")):
        values = result.get(part, empty)
        numbers[prefix] = float(values[key])
        numbers[f"{prefix}_ci_low"] = float(values["ci_low"])
        numbers[f"{prefix}_ci_high"] = float(values["ci_high"])
    numbers["realism_transfer_test_subjects"] = float(result.get("transfer", empty)["n_test_subjects"])
    spread = result.get("radiograph_discriminability", {}).get("gradcam", {}).get("spread", {})
    for name in ("real", "synthetic"):
        numbers[f"realism_radiograph_spread_{name}"] = float(spread.get(name, np.nan))
    reference = result.get("real_reference") or empty
    numbers["realism_reference_kappa"] = float(reference["kappa"])
    numbers["realism_reference_kappa_ci_low"] = float(reference["ci_low"])
    numbers["realism_reference_kappa_ci_high"] = float(reference["ci_high"])
    graded = (result.get("real_reference") or {}).get("real_to_synthetic") or empty
    numbers["realism_real_to_synthetic_kappa"] = float(graded["kappa"])
    numbers["realism_real_to_synthetic_kappa_ci_low"] = float(graded["ci_low"])
    numbers["realism_real_to_synthetic_kappa_ci_high"] = float(graded["ci_high"])
    expected = graded.get("expected_grade")
    for grade in (0, 4):
        numbers[f"realism_real_to_synthetic_expected_kl{grade}"] = (
            float(expected.loc[grade]) if expected is not None else np.nan)
    return numbers


def realism_comparisons(result: dict, cohort_data: str) -> list[Comparison]:
    """Published (or target) vs found rows of the realism numbers for the metrics file.

    The sim-to-real kappa stands beside paper 004's test kappa of a grader trained on real
    radiographs (another test set: the ceiling, not a like-for-like number); the
    discriminator AUCs have no published counterpart, only the issue's target (in the note).
    """
    targets, real = _realism_targets(), _real_kl_kappa()
    transfer = result["transfer"]
    rows = [Comparison("cohort", "sim-to-real transfer: KL quadratic kappa on real val crops",
                       real["quadratic_kappa"], round(float(transfer["kappa"]), 3),
                       ci_low=round(float(transfer["ci_low"]), 3), ci_high=round(float(transfer["ci_high"]), 3),
                       source=f"paper 004 {real['source']}: trained on real radiographs ({real['measured_on']})",
                       data=f"trained on {cohort_data}; tested on real: chen_kl_radiographs val",
                       note=f"issue 10 target >= {targets['transfer_kappa_min']:g}; CI resamples "
                            f"{transfer.get('unit', 'subjects')}")]
    reference = result.get("real_reference")
    if reference:
        rows.append(Comparison(
            "cohort", "ceiling of the sim-to-real kappa: the same grader trained on as many real crops", None,
            round(float(reference["kappa"]), 3), ci_low=round(float(reference["ci_low"]), 3),
            ci_high=round(float(reference["ci_high"]), 3), source="no published value (a reference)",
            data=f"trained on {reference['n_train_crops']:,} real chen_kl_radiographs train crops; tested on val",
            note=f"CI resamples {reference.get('unit', 'subjects')}"))
        graded = reference.get("real_to_synthetic")
        if graded:
            rows.append(Comparison(
                "cohort", "real-to-synthetic: the real-trained grader's KL quadratic kappa on the synthetic crops",
                None, round(float(graded["kappa"]), 3), ci_low=round(float(graded["ci_low"]), 3),
                ci_high=round(float(graded["ci_high"]), 3), source="no published value (a diagnostic)",
                data=f"trained on real chen_kl_radiographs train crops; tested on {cohort_data} (planted KL)",
                note=f"CI resamples synthetic {graded.get('unit', 'subjects')}"))
    for quantity, part, data in (
            ("real-vs-synthetic discriminator AUC, radiograph crops", result["radiograph_discriminability"],
             "real: chen_kl_radiographs train"),
            ("real-vs-synthetic discriminator AUC, DESS slices", result["mri_discriminability"],
             "real: pykneer_knee_mri DESS (one exam)")):
        rows.append(Comparison("cohort", quantity, None, round(float(part["auc"]), 3),
                               ci_low=round(float(part["ci_low"]), 3), ci_high=round(float(part["ci_high"]), 3),
                               source=f"no published value; issue 10 target <= {targets['discriminator_auc_max']:g}"
                               if "radiograph" in quantity else "no published value, no target",
                               data=f"{cohort_data} vs {data}",
                               note=f"lower is more realistic; CI resamples {part.get('unit', 'subjects')}"))
    return rows


def plot_realism_gradcam(result: dict):
    """Grad-CAM figures of both discriminators (:func:`kneelib.figures.realism.plot_discriminator_gradcam`)."""
    from kneelib.figures.realism import plot_discriminator_gradcam

    return [plot_discriminator_gradcam(result[part]["gradcam"], title=title) for part, title in (
        ("radiograph_discriminability", "What the real-vs-synthetic radiograph discriminator keys on (Grad-CAM, test "
                                        "crops)"),
        ("mri_discriminability", "What the real-vs-synthetic DESS discriminator keys on (Grad-CAM, test slices)"))]
