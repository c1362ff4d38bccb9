"""The causal model of the synthetic cohort: who the participants are and what their knees show.

The model is a small directed acyclic graph (the book draws it in the data chapter)::

    age, sex, BMI, race ─┬─> latent OA severity per knee (shared subject part + knee part)
                         │        │
                         │        ├─> medial / lateral compartment severity
                         │        │      ├─> JSW  ─> OARSI JSN 0-3 ─┐
                         │        │      ├─> osteophytes 0-3 per site ├─> Kellgren-Lawrence 0-4
                         │        │      ├─> sclerosis 0-3            ┘
                         │        │      ├─> cartilage thinning, focal loss, T2 elevation
                         │        │      └─> meniscal damage
                         │        └─> effusion-synovitis, Hoffa-synovitis, bone marrow lesions
                         │
    sex, widespread pain ─> subject pain sensitivity ─┐
    effusion, BML, Hoffa, cartilage loss, menisci, JSN ─> knee pain liability
                                                      ├─> WOMAC pain 0-20 (past 7 days)
                                                      ├─> frequent pain (P01KPN?EV)
                                                      └─> months of frequent pain in the past
                                                          12 months -> chronic pain (> 6 months)
    baseline severity, BMI, effusion, meniscal damage -> 12-month structural progression
                                                      -> medial JSW loss (+ measurement noise)

Every effect size is a field of :class:`EffectSizes` with its meaning and source; the book
prints :func:`effect_sizes_table`. The values were chosen so that the cohort's marginals are
close to the OAI baseline (age 61 +/- 9 years, 58 % women, BMI 28.6 +/- 4.8; KL counts of
paper 001, Methods "Chronic pain model training": 38/19/25/14/4 %; 14 % 12-month medial JSN
progressors in paper 002, section 3.1; unilateral frequent pain in a third of the subjects,
1,606 of 4,796 in paper 000, Table 1a) and so that the studies' tasks are learnable but not
trivial: the left-versus-right pain difference carried by what an image shows predicts the
painful side with an AUC near 0.85 (paper 000 reports 0.81-0.85 for a Siamese network), and
most of the knee-to-knee pain difference that images can see is effusion-synovitis and BMLs
(paper 000, Results: effusion-synovitis in 89 % of the reviewed hot spots).

All draws come from one ``numpy.random.Generator`` per subject, seeded from
``numpy.random.SeedSequence(base_seed).spawn``; a subject's specs therefore do not depend on
how many other subjects are drawn or in which process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np

from kneelib.synth.spec import CARTILAGE_REGIONS, OSTEOPHYTE_SITES, KneeSpec, SubjectSpec

__all__ = [
    "EffectSizes",
    "DEFAULT_EFFECTS",
    "effect_sizes_table",
    "kl_from_oarsi",
    "jsn_grade_from_jsw",
    "subject_seed_sequence",
    "sample_subject",
    "sample_knees",
    "sample_cohort_specs",
    "specs_to_frames",
    "knee_pain_image_liability",
    "VARIANT_SEED_OFFSET",
    "VARIANT_ID_BASE",
]

#: Added to the base seed of a variant so that the MOST-like cohort shares no subject with the
#: OAI-like one (paper 004 trains on OAI and tests on the independent MOST cohort).
VARIANT_SEED_OFFSET: dict[str, int] = {"oai": 0, "most": 1_000_003}

#: First participant ID of each variant (seven digits; OAI IDs start with 9, ours with 9 too;
#: the MOST-like cohort uses 8 so that IDs never collide when both are loaded together).
VARIANT_ID_BASE: dict[str, int] = {"oai": 9_000_001, "most": 8_000_001}

_KNEE_FIELDS = frozenset(f.name for f in fields(KneeSpec))

#: Bone-marrow-lesion regions and which tibio-femoral compartment drives each.
_BML_REGIONS: tuple[tuple[str, str], ...] = (
    ("FM", "medial"), ("TM", "medial"), ("FL", "lateral"), ("TL", "lateral"), ("P", "pf"),
)


@dataclass(frozen=True)
class EffectSizes:
    """Parameters of the causal model (documented effect sizes).

    Each field carries ``metadata['doc']``: what it means, its unit and where the value
    comes from. Values marked *calibrated* were tuned on 20,000 sampled subjects so that the
    marginal distributions match the cited figures; they are checked by
    ``tests/test_synth_causal.py``.
    """

    # --- demographics (OAI baseline; paper 000 Table 1b, paper 001 Table 4) -------------------
    age_mean_years: float = field(default=60.3, metadata={"doc": "mean age at baseline, OAI enrolment 45-79 y"})
    age_sd_years: float = field(default=17.0, metadata={"doc": "SD of the untruncated age normal; 9.1 after truncation to 45-79"})
    age_min_years: float = field(default=45.0, metadata={"doc": "OAI inclusion: 45-79 years"})
    age_max_years: float = field(default=79.0, metadata={"doc": "OAI inclusion: 45-79 years"})
    female_fraction: float = field(default=0.58, metadata={"doc": "P(P02SEX = 2); OAI 58 % women"})
    bmi_mean: float = field(default=28.6, metadata={"doc": "mean BMI kg/m2 (OAI 28.6 +/- 4.8)"})
    bmi_sd: float = field(default=4.8, metadata={"doc": "SD of BMI (log-normal with this mean and SD)"})
    bmi_per_decade: float = field(default=-0.3, metadata={"doc": "BMI change per 10 years of age (slightly lower in the old)"})
    race_probabilities: tuple[float, float, float, float] = field(
        default=(0.02, 0.80, 0.17, 0.01),
        metadata={"doc": "P02RACE 0 other, 1 white, 2 black, 3 asian (OAI ~80 % white, ~17 % black)"})
    widespread_pain_base: float = field(default=0.13, metadata={"doc": "P(widespread pain) for a man of mean BMI"})
    widespread_pain_or_female: float = field(default=1.6, metadata={"doc": "odds ratio of widespread pain, women vs men"})
    widespread_pain_or_per_5bmi: float = field(default=1.3, metadata={"doc": "odds ratio of widespread pain per 5 kg/m2 BMI"})

    # --- latent OA severity (calibrated to the KL counts of paper 001) ------------------------
    severity_intercept: float = field(default=-0.28, metadata={"doc": "liability of a 61-year-old white man of BMI 28.6 (calibrated)"})
    severity_per_decade: float = field(default=0.38, metadata={"doc": "liability per 10 years of age"})
    severity_per_5bmi: float = field(default=0.42, metadata={"doc": "liability per 5 kg/m2 BMI"})
    severity_female: float = field(default=0.05, metadata={"doc": "liability shift for women"})
    severity_black: float = field(default=0.10, metadata={"doc": "liability shift for black participants"})
    severity_subject_sd: float = field(default=0.85, metadata={"doc": "SD of the subject part (shared by both knees)"})
    severity_knee_sd: float = field(default=0.5, metadata={"doc": "SD of the knee part; between-knee correlation = 0.75^2/(0.75^2+0.55^2) = 0.65"})
    medial_share_beta: tuple[float, float] = field(default=(3.0, 1.4), metadata={"doc": "Beta prior of the medial share of a knee's damage (mean 0.68: medial OA predominates)"})

    # --- structure from severity ---------------------------------------------------------------
    jsw_medial_healthy_mm: float = field(default=5.0, metadata={"doc": "healthy minimum medial JSW of an average-size knee (fixed-flexion radiograph)"})
    jsw_lateral_healthy_mm: float = field(default=6.3, metadata={"doc": "healthy minimum lateral JSW"})
    jsw_healthy_sd_mm: float = field(default=0.55, metadata={"doc": "between-knee SD of healthy JSW"})
    jsw_loss_per_severity_mm: float = field(default=1.55, metadata={"doc": "JSW lost per unit compartment severity (power 1.4)"})
    jsn_fraction_thresholds: tuple[float, float, float] = field(
        default=(0.17, 0.38, 0.95),
        metadata={"doc": "narrowing (1 - JSW/healthy JSW) at which OARSI JSN reaches 1, 2, 3 (3 = bone on bone)"})
    osteophyte_per_severity: float = field(default=1.35, metadata={"doc": "osteophyte liability per unit compartment severity"})
    osteophyte_noise_sd: float = field(default=0.45, metadata={"doc": "site-level noise of osteophyte liability"})
    osteophyte_thresholds: tuple[float, float, float] = field(default=(0.90, 1.80, 2.60), metadata={"doc": "liability at OARSI osteophyte grades 1, 2, 3"})
    doubtful_lipping_logit: tuple[float, float] = field(default=(-0.9, 2.2), metadata={"doc": "logit(P doubtful osteophytic lipping | no definite osteophyte) = a + b * severity (KL 1)"})
    sclerosis_thresholds: tuple[float, float, float] = field(default=(1.1, 1.7, 2.4), metadata={"doc": "compartment severity (+ noise 0.3) at sclerosis grades 1, 2, 3"})
    cartilage_loss_per_severity: float = field(default=0.28, metadata={"doc": "focal cartilage loss fraction per unit severity above 0.3"})
    cartilage_t2_ms_per_severity: float = field(default=4.0, metadata={"doc": "T2 elevation (ms) of degenerating cartilage per unit regional severity (Baum 2012; paper 001)"})
    cartilage_t2_noise_ms: float = field(default=1.5, metadata={"doc": "SD of regional T2 elevation noise"})
    meniscal_per_severity: float = field(default=0.9, metadata={"doc": "meniscal damage liability per unit compartment severity"})
    meniscal_per_decade: float = field(default=0.25, metadata={"doc": "meniscal damage liability per 10 years of age"})
    effusion_per_severity: float = field(default=0.75, metadata={"doc": "effusion-synovitis liability per unit severity"})
    effusion_subject_sd: float = field(default=0.35, metadata={"doc": "SD of a subject's inflammatory tendency (shared by both knees)"})
    effusion_knee_sd: float = field(default=0.65, metadata={"doc": "knee-level SD of effusion liability"})
    effusion_thresholds: tuple[float, float, float] = field(default=(0.5, 1.3, 2.1), metadata={"doc": "liability at MOAKS effusion-synovitis grades 1, 2, 3 (about 45/18/5 % of knees at >=1/2/3)"})
    hoffa_per_effusion: float = field(default=0.45, metadata={"doc": "Hoffa-synovitis liability per effusion grade"})
    hoffa_thresholds: tuple[float, float, float] = field(default=(0.85, 1.7, 2.5), metadata={"doc": "liability at Hoffa-synovitis grades 1, 2, 3"})
    bml_rate_intercept: float = field(default=0.25, metadata={"doc": "expected BMLs in a healthy knee"})
    bml_rate_per_severity: float = field(default=0.9, metadata={"doc": "expected extra BMLs per unit severity"})

    # --- pain (paper 000, paper 001) --------------------------------------------------------
    pain_effusion: float = field(default=0.8, metadata={"doc": "knee pain liability per effusion-synovitis grade (strongest)"})
    pain_bml: float = field(default=0.5, metadata={"doc": "pain liability per grade of the largest BML"})
    pain_hoffa: float = field(default=0.35, metadata={"doc": "pain liability per Hoffa-synovitis grade"})
    pain_cartilage_loss: float = field(default=0.6, metadata={"doc": "pain liability per unit of the largest focal cartilage loss fraction"})
    pain_meniscus: float = field(default=0.15, metadata={"doc": "pain liability per meniscal damage grade (largest)"})
    pain_jsn: float = field(default=0.15, metadata={"doc": "pain liability per JSN grade (largest)"})
    pain_subject_sd: float = field(default=0.8, metadata={"doc": "SD of subject pain sensitivity (same for both knees)"})
    pain_female: float = field(default=0.25, metadata={"doc": "pain sensitivity shift for women"})
    pain_widespread: float = field(default=0.8, metadata={"doc": "pain sensitivity shift with widespread pain"})
    pain_knee_sd: float = field(default=1.1, metadata={"doc": "SD of knee pain not visible in images (sets the image-only left-vs-right AUC)"})
    pain_visit_sd: float = field(default=0.35, metadata={"doc": "SD of visit-to-visit fluctuation of a knee's pain"})
    frequent_pain_threshold: float = field(default=1.55, metadata={"doc": "pain liability above which pain occurs on most days of a month (calibrated: unilateral in ~1/3 of subjects)"})
    any_pain_threshold: float = field(default=0.85, metadata={"doc": "pain liability above which any knee pain occurred in the past 12 months"})
    pain_months_per_unit: float = field(default=7.0, metadata={"doc": "months of frequent pain per unit liability above the frequent threshold"})
    womac_per_unit: float = field(default=1.4, metadata={"doc": "WOMAC pain points (0-20) per unit liability above the WOMAC threshold (calibrated: WOMAC differs by >= 3 in 47 % of unilateral-pain subjects, paper 000 Table 1a 721/1529)"})
    womac_threshold: float = field(default=0.55, metadata={"doc": "pain liability at WOMAC pain 0"})
    womac_noise_sd: float = field(default=1.0, metadata={"doc": "SD of the past-week fluctuation behind WOMAC"})

    # --- 12-month progression (paper 002) ---------------------------------------------------
    rapid_logit_intercept: float = field(default=-2.42, metadata={"doc": "logit P(rapid medial progression) of a healthy average knee (calibrated to 14 % progressors)"})
    rapid_logit_severity: float = field(default=0.75, metadata={"doc": "per unit medial severity"})
    rapid_logit_bmi: float = field(default=0.30, metadata={"doc": "per 5 kg/m2 BMI"})
    rapid_logit_meniscus: float = field(default=0.35, metadata={"doc": "per medial meniscal damage grade"})
    rapid_logit_effusion: float = field(default=0.25, metadata={"doc": "per effusion-synovitis grade"})
    rapid_loss_mean_mm: float = field(default=0.85, metadata={"doc": "mean 12-month medial JSW loss of a rapid progressor"})
    rapid_loss_sd_mm: float = field(default=0.30, metadata={"doc": "SD of the rapid loss"})
    slow_loss_mean_mm: float = field(default=0.06, metadata={"doc": "mean 12-month JSW loss otherwise (OAI ~0.1 mm/year)"})
    slow_loss_sd_mm: float = field(default=0.08, metadata={"doc": "SD of the slow loss"})
    jsw_measurement_sd_mm: float = field(default=0.15, metadata={"doc": "SD of the semi-automated JSW measurement (Duryea) per reading"})
    severity_per_mm_loss: float = field(default=0.45, metadata={"doc": "rise of compartment severity per mm of true JSW loss"})

    # --- scans --------------------------------------------------------------------------------
    artefact_probability: float = field(default=0.025, metadata={"doc": "P(an MRI visit of a knee has an artefact); paper 000 lost 24 of 1,529 to QC"})
    artefact_kinds: tuple[tuple[str, float], ...] = field(
        default=(("motion", 0.5), ("missing_slices", 0.3), ("foreign_object", 0.2)),
        metadata={"doc": "artefact kinds and their shares"})
    flexion_mean_deg: float = field(default=8.0, metadata={"doc": "knee flexion in the coil"})
    flexion_sd_deg: float = field(default=3.0, metadata={"doc": "SD of flexion"})
    rotation_sd_deg: float = field(default=4.0, metadata={"doc": "SD of internal/external rotation"})
    offset_sd_mm: float = field(default=4.0, metadata={"doc": "SD of the knee's position in the field of view, per axis"})

    def documented(self) -> list[tuple[str, object, str]]:
        """``(name, value, meaning)`` for every parameter, in declaration order."""
        return [(f.name, getattr(self, f.name), f.metadata.get("doc", "")) for f in fields(self)]


#: The effect sizes used unless a caller passes others.
DEFAULT_EFFECTS = EffectSizes()


def effect_sizes_table(effects: EffectSizes = DEFAULT_EFFECTS):
    """The effect sizes as a :class:`pandas.DataFrame` (parameter, value, meaning) for the book."""
    import pandas as pd

    return pd.DataFrame(effects.documented(), columns=["parameter", "value", "meaning"])


# --------------------------------------------------------------------------------------------
# grading rules
# --------------------------------------------------------------------------------------------
def jsn_grade_from_jsw(jsw_mm: float, healthy_jsw_mm: float,
                       thresholds: tuple[float, float, float] = EffectSizes.jsn_fraction_thresholds) -> int:
    """OARSI joint-space-narrowing grade 0-3 from the narrowing relative to the healthy width.

    OARSI atlas (Altman & Gold 2007) grades JSN by the visible loss of joint space: 1 mild,
    2 moderate, 3 severe (bone on bone). Here the loss is ``1 - jsw / healthy_jsw``.
    """
    if not healthy_jsw_mm > 0:
        raise ValueError(f"healthy_jsw_mm must be positive, got {healthy_jsw_mm}")
    narrowing = 1.0 - jsw_mm / healthy_jsw_mm
    return int(np.searchsorted(np.asarray(thresholds), narrowing, side="right"))


def kl_from_oarsi(osteophyte_grade: dict[str, int], jsn_grade_medial: int, jsn_grade_lateral: int,
                  doubtful_osteophyte: bool = False) -> int:
    """Kellgren-Lawrence grade from OARSI osteophyte and JSN grades.

    The KL definitions (Kellgren & Lawrence 1957) operationalised on the OARSI features, as
    used for the labels of paper 004 (Methods, "Data"):

    - KL 0: no osteophyte, no narrowing, no doubtful lipping;
    - KL 1: no definite osteophyte, but doubtful narrowing (JSN 1) or possible lipping;
    - KL 2: definite osteophyte (any site grade >= 1), narrowing at most mild (JSN <= 1);
    - KL 3: definite osteophyte and moderate narrowing (JSN 2), or severe narrowing with
      only small osteophytes;
    - KL 4: large osteophytes (grade >= 2) and severe narrowing (JSN 3, bone on bone).

    Without a definite osteophyte the grade stays at most 1 whatever the narrowing, because
    KL 2 and above require one.
    """
    max_osteophyte = max(int(g) for g in osteophyte_grade.values()) if osteophyte_grade else 0
    max_jsn = max(int(jsn_grade_medial), int(jsn_grade_lateral))
    if max_osteophyte == 0:
        return 1 if (max_jsn >= 1 or doubtful_osteophyte) else 0
    if max_jsn == 3 and max_osteophyte >= 2:
        return 4
    if max_jsn >= 2:
        return 3
    return 2


def _graded(value: float, thresholds) -> int:
    return int(np.searchsorted(np.asarray(thresholds, dtype=float), value, side="right"))


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def subject_seed_sequence(base_seed: int, index: int, variant: str = "oai") -> np.random.SeedSequence:
    """Seed sequence of subject ``index``: child ``index`` of ``SeedSequence(base + offset)``.

    Equal to ``SeedSequence(base).spawn(n)[index]`` for any ``n > index``, so a subject's
    draws do not depend on the cohort size.
    """
    if variant not in VARIANT_SEED_OFFSET:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_SEED_OFFSET)}")
    return np.random.SeedSequence(int(base_seed) + VARIANT_SEED_OFFSET[variant], spawn_key=(int(index),))


def _seed_int(seed_sequence: np.random.SeedSequence) -> int:
    return int(seed_sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_subject(index: int, base_seed: int = 0, variant: str = "oai",
                   effects: EffectSizes = DEFAULT_EFFECTS) -> SubjectSpec:
    """Draw participant ``index`` (demographics and widespread pain).

    Parameters
    ----------
    index : int
        Position of the participant in the cohort (0-based).
    base_seed : int
        Seed of the cohort.
    variant : {'oai', 'most'}
        Cohort; 'most' uses other seeds and IDs (independent test cohort of paper 004).
    effects : EffectSizes

    Returns
    -------
    SubjectSpec
    """
    seed = _seed_int(subject_seed_sequence(base_seed, index, variant))
    rng = np.random.default_rng(seed)
    e = effects
    while True:  # truncated normal by rejection (acceptance ~ 0.9)
        age = rng.normal(e.age_mean_years, e.age_sd_years)
        if e.age_min_years <= age <= e.age_max_years:
            break
    sex = 2 if rng.random() < e.female_fraction else 1
    mean_bmi = e.bmi_mean + e.bmi_per_decade * (age - e.age_mean_years) / 10.0
    sigma2 = math.log(1.0 + (e.bmi_sd / mean_bmi) ** 2)
    bmi = float(np.clip(rng.lognormal(math.log(mean_bmi) - sigma2 / 2, math.sqrt(sigma2)), 16.0, 55.0))
    race = int(rng.choice(4, p=np.asarray(e.race_probabilities) / sum(e.race_probabilities)))
    logit = (math.log(e.widespread_pain_base / (1 - e.widespread_pain_base))
             + (math.log(e.widespread_pain_or_female) if sex == 2 else 0.0)
             + math.log(e.widespread_pain_or_per_5bmi) * (bmi - e.bmi_mean) / 5.0)
    widespread = bool(rng.random() < _logistic(logit))
    height_scale = float(np.clip((1.04 if sex == 1 else 0.96) * rng.normal(1.0, 0.03), 0.85, 1.15))
    return SubjectSpec(
        participant_id=str(VARIANT_ID_BASE[variant] + int(index)),
        age_years=round(float(age), 1), bmi_kg_m2=round(bmi, 1), sex=sex, race=race,
        widespread_pain=widespread, seed=seed, height_scale=round(height_scale, 4),
    )


@dataclass
class _KneeState:
    """Mutable structural state of one knee, advanced from baseline to 12 months."""

    severity: float
    medial_share: float
    severity_medial: float
    severity_lateral: float
    severity_pf: float
    jsw_medial_healthy_mm: float
    jsw_lateral_healthy_mm: float
    jsw_medial_mm: float
    jsw_lateral_mm: float
    osteophyte_liability: dict[str, float]
    osteophyte_grade: dict[str, int]
    doubtful_osteophyte: bool
    sclerosis_noise: tuple[float, float]
    meniscal_liability: tuple[float, float]
    effusion_persistent: float
    hoffa_noise: float
    t2_noise: dict[str, float]
    loss_noise: dict[str, float]
    bml_persistent: tuple[tuple[str, int], ...]
    pain_knee: float


def _compartment_severity(severity: float, medial_share: float) -> tuple[float, float, float]:
    medial = severity * (0.3 + 1.4 * medial_share)
    lateral = severity * (0.3 + 1.4 * (1.0 - medial_share))
    patellofemoral = severity * 0.8
    return medial, lateral, patellofemoral


def _region_severity(state: _KneeState) -> dict[str, float]:
    return {"FM": state.severity_medial, "TM": state.severity_medial,
            "FL": state.severity_lateral, "TL": state.severity_lateral,
            "P": state.severity_pf, "TR": state.severity_pf}


def _jsw_loss_mm(compartment_severity: float, e: EffectSizes) -> float:
    return e.jsw_loss_per_severity_mm * max(compartment_severity, 0.0) ** 1.4


def _bmls(rng: np.random.Generator, state: _KneeState, e: EffectSizes) -> tuple[tuple[str, int], ...]:
    compartment = {"medial": state.severity_medial, "lateral": state.severity_lateral,
                   "pf": state.severity_pf}
    weights = np.array([0.2 + compartment[c] for _, c in _BML_REGIONS])
    rate = e.bml_rate_intercept + e.bml_rate_per_severity * state.severity
    count = min(int(rng.poisson(rate)), 4)
    if count == 0:
        return ()
    regions = rng.choice(len(_BML_REGIONS), size=count, replace=False, p=weights / weights.sum())
    found = []
    for r in sorted(int(i) for i in regions):
        name, comp = _BML_REGIONS[r]
        size = 1 + _graded(0.6 * compartment[comp] + rng.normal(0, 0.5), (0.6, 1.3))
        found.append((name, int(min(size, 3))))
    return tuple(found)


def knee_pain_image_liability(knee: KneeSpec, effects: EffectSizes = DEFAULT_EFFECTS) -> float:
    """The part of a knee's pain liability carried by findings an MRI shows.

    ``pain_effusion * effusion + pain_bml * largest BML + pain_hoffa * Hoffa
    + pain_cartilage_loss * largest focal loss + pain_meniscus * largest meniscal damage
    + pain_jsn * largest JSN``. The left-minus-right difference of this quantity is the best
    any image-only model can do for the Siamese task of paper 000.
    """
    e = effects
    largest_bml = max((g for _, g in knee.bml_sites), default=0)
    largest_loss = max(knee.cartilage_loss_fraction.values(), default=0.0)
    return (e.pain_effusion * knee.effusion_grade + e.pain_bml * largest_bml
            + e.pain_hoffa * knee.hoffa_synovitis_grade + e.pain_cartilage_loss * largest_loss
            + e.pain_meniscus * max(knee.meniscal_damage_medial, knee.meniscal_damage_lateral)
            + e.pain_jsn * max(knee.jsn_grade_medial, knee.jsn_grade_lateral))


def _knee_spec(subject: SubjectSpec, side: str, visit_month: int, state: _KneeState,
               rng: np.random.Generator, pose: dict, shape_seed: int, pain_subject: float,
               effusion_subject: float, e: EffectSizes, previous: KneeSpec | None) -> KneeSpec:
    """Grade a knee state into a :class:`KneeSpec` (one visit)."""
    region_severity = _region_severity(state)
    jsn_m = jsn_grade_from_jsw(state.jsw_medial_mm, state.jsw_medial_healthy_mm, e.jsn_fraction_thresholds)
    jsn_l = jsn_grade_from_jsw(state.jsw_lateral_mm, state.jsw_lateral_healthy_mm, e.jsn_fraction_thresholds)
    osteophytes = dict(state.osteophyte_grade)
    scl_m = _graded(state.severity_medial + state.sclerosis_noise[0], e.sclerosis_thresholds)
    scl_l = _graded(state.severity_lateral + state.sclerosis_noise[1], e.sclerosis_thresholds)
    men_m = _graded(e.meniscal_per_severity * state.severity_medial + state.meniscal_liability[0], (0.9, 1.6, 2.4))
    men_l = _graded(e.meniscal_per_severity * state.severity_lateral + state.meniscal_liability[1], (1.1, 1.8, 2.6))
    if previous is not None:  # paired reading: structural grades never regress
        jsn_m = max(jsn_m, previous.jsn_grade_medial)
        jsn_l = max(jsn_l, previous.jsn_grade_lateral)
        osteophytes = {s: max(osteophytes[s], previous.osteophyte_grade[s]) for s in OSTEOPHYTE_SITES}
        scl_m, scl_l = max(scl_m, previous.sclerosis_medial), max(scl_l, previous.sclerosis_lateral)
        men_m = max(men_m, previous.meniscal_damage_medial)
        men_l = max(men_l, previous.meniscal_damage_lateral)
    doubtful = state.doubtful_osteophyte or (previous is not None and previous.kl_grade >= 1)
    kl = kl_from_oarsi(osteophytes, jsn_m, jsn_l, doubtful)

    scale = subject.height_scale
    base_thickness = {"FM": 2.2, "FL": 2.0, "TM": 1.8, "TL": 2.4, "P": 2.6, "TR": 2.3}
    narrowing = {"FM": 1 - state.jsw_medial_mm / state.jsw_medial_healthy_mm,
                 "TM": 1 - state.jsw_medial_mm / state.jsw_medial_healthy_mm,
                 "FL": 1 - state.jsw_lateral_mm / state.jsw_lateral_healthy_mm,
                 "TL": 1 - state.jsw_lateral_mm / state.jsw_lateral_healthy_mm,
                 "P": 0.25 * state.severity_pf, "TR": 0.2 * state.severity_pf}
    thickness = {r: round(float(base_thickness[r] * scale * max(0.15, 1 - 0.8 * max(narrowing[r], 0.0))), 3)
                 for r in CARTILAGE_REGIONS}
    loss = {}
    t2 = {}
    for r in CARTILAGE_REGIONS:
        focal = e.cartilage_loss_per_severity * (region_severity[r] - 0.3) + state.loss_noise[r]
        loss[r] = round(float(np.clip(focal, 0.0, 1.0)), 3)
        t2[r] = round(float(max(0.0, e.cartilage_t2_ms_per_severity * region_severity[r] + state.t2_noise[r])), 2)

    effusion_liability = e.effusion_per_severity * state.severity + effusion_subject + state.effusion_persistent \
        + rng.normal(0, 0.3)
    effusion = _graded(effusion_liability, e.effusion_thresholds)
    hoffa = _graded(e.hoffa_per_effusion * effusion + 0.3 * state.severity + state.hoffa_noise + rng.normal(0, 0.25),
                    e.hoffa_thresholds)
    if previous is None:
        bmls = state.bml_persistent
    else:  # BMLs wax and wane: keep each with P 0.7, add new ones from the new severity
        kept = tuple((r, g) for r, g in state.bml_persistent if rng.random() < 0.7)
        new = _bmls(rng, state, replace(e, bml_rate_intercept=0.1, bml_rate_per_severity=0.3 * e.bml_rate_per_severity))
        merged = dict(kept)
        for r, g in new:
            merged[r] = max(merged.get(r, 0), g)
        bmls = tuple(sorted(merged.items()))

    knee = KneeSpec(
        participant_id=subject.participant_id, side=side, visit_month=visit_month,
        seed=int(rng.integers(0, 2**62)), shape_seed=shape_seed,
        size_scale=round(float(scale * pose["size_jitter"]), 4),
        flexion_deg=round(float(rng.normal(e.flexion_mean_deg, e.flexion_sd_deg)), 2),
        rotation_deg=round(float(rng.normal(0.0, e.rotation_sd_deg)), 2),
        varus_deg=round(float(pose["varus_deg"]), 2),
        offset_mm=tuple(round(float(v), 2) for v in rng.normal(0.0, e.offset_sd_mm, 3)),
        oa_severity=round(float(state.severity), 4),
        jsw_medial_mm=round(float(state.jsw_medial_mm), 3),
        jsw_lateral_mm=round(float(state.jsw_lateral_mm), 3),
        cartilage_thickness_mm=thickness, cartilage_loss_fraction=loss, cartilage_t2_elevation_ms=t2,
        osteophyte_grade=osteophytes, jsn_grade_medial=jsn_m, jsn_grade_lateral=jsn_l,
        sclerosis_medial=scl_m, sclerosis_lateral=scl_l, kl_grade=kl,
        effusion_grade=effusion, hoffa_synovitis_grade=hoffa, bml_sites=bmls,
        meniscal_damage_medial=men_m, meniscal_damage_lateral=men_l,
        doubtful_osteophyte=bool(doubtful),
        jsw_medial_measured_mm=round(float(max(0.0, state.jsw_medial_mm + rng.normal(0, e.jsw_measurement_sd_mm))), 3),
    )
    # pain: what the images show + what they do not (subject sensitivity, knee, visit)
    image_part = knee_pain_image_liability(knee, e)
    liability = image_part + pain_subject + state.pain_knee + rng.normal(0, e.pain_visit_sd)
    frequent = liability > e.frequent_pain_threshold
    months = 0
    if frequent:
        months = int(min(12, 1 + math.floor(e.pain_months_per_unit * (liability - e.frequent_pain_threshold))))
    any_pain = bool(liability > e.any_pain_threshold)
    womac = float(np.clip(round(e.womac_per_unit * (liability + rng.normal(0, e.womac_noise_sd) - e.womac_threshold)),
                          0, 20))
    artefact = ""
    if rng.random() < e.artefact_probability:
        kinds, shares = zip(*e.artefact_kinds)
        artefact = str(kinds[int(rng.choice(len(kinds), p=np.asarray(shares) / sum(shares)))])
    extra = {}
    if "subcutaneous_fat_mm" in _KNEE_FIELDS:  # body habitus seen by the renderers
        extra["subcutaneous_fat_mm"] = round(float(np.clip(
            4.0 + 0.9 * (subject.bmi_kg_m2 - 22.0) + (3.0 if subject.sex == 2 else 0.0), 3.0, 30.0)), 2)
    return replace(knee, frequent_pain=bool(frequent), womac_pain=womac, chronic_pain=months > 6,
                   any_pain_past_12m=any_pain, pain_months_past_12m=months,
                   pain_liability=round(float(liability), 4), artefact=artefact, **extra)


def sample_knees(subject: SubjectSpec, effects: EffectSizes = DEFAULT_EFFECTS) -> list[KneeSpec]:
    """Draw both knees of a subject at baseline and 12 months.

    Returns
    -------
    list of KneeSpec
        ``[R@0, L@0, R@12, L@12]``.
    """
    e = effects
    rng = np.random.default_rng(np.random.SeedSequence(subject.seed, spawn_key=(1,)))
    female = subject.sex == 2
    bmi_z5 = (subject.bmi_kg_m2 - e.bmi_mean) / 5.0
    subject_liability = (e.severity_intercept + e.severity_per_decade * (subject.age_years - e.age_mean_years) / 10
                         + e.severity_per_5bmi * bmi_z5 + (e.severity_female if female else 0.0)
                         + (e.severity_black if subject.race == 2 else 0.0)
                         + rng.normal(0, e.severity_subject_sd))
    pain_subject = (rng.normal(0, e.pain_subject_sd) + (e.pain_female if female else 0.0)
                    + (e.pain_widespread if subject.widespread_pain else 0.0))
    effusion_subject = rng.normal(0, e.effusion_subject_sd)
    knees: dict[tuple[str, int], KneeSpec] = {}
    for side in ("R", "L"):
        shape_seed = int(rng.integers(0, 2**62))
        liability = subject_liability + rng.normal(0, e.severity_knee_sd)
        severity = math.log1p(math.exp(3.0 * liability)) / 3.0  # soft-plus: >= 0, ~0 when healthy
        medial_share = float(rng.beta(*e.medial_share_beta))
        sev_m, sev_l, sev_pf = _compartment_severity(severity, medial_share)
        healthy_m = float(max(3.0, rng.normal(e.jsw_medial_healthy_mm, e.jsw_healthy_sd_mm) * subject.height_scale))
        healthy_l = float(max(3.5, rng.normal(e.jsw_lateral_healthy_mm, e.jsw_healthy_sd_mm) * subject.height_scale))
        ost_liability = {s: float(rng.normal(0, e.osteophyte_noise_sd)) for s in OSTEOPHYTE_SITES}
        state = _KneeState(
            severity=severity, medial_share=medial_share,
            severity_medial=sev_m, severity_lateral=sev_l, severity_pf=sev_pf,
            jsw_medial_healthy_mm=healthy_m, jsw_lateral_healthy_mm=healthy_l,
            jsw_medial_mm=max(0.0, healthy_m - _jsw_loss_mm(sev_m, e)),
            jsw_lateral_mm=max(0.0, healthy_l - _jsw_loss_mm(sev_l, e)),
            osteophyte_liability=ost_liability, osteophyte_grade={},
            doubtful_osteophyte=False,
            sclerosis_noise=(float(rng.normal(0, 0.3)), float(rng.normal(0, 0.3))),
            meniscal_liability=(float(rng.normal(e.meniscal_per_decade * (subject.age_years - 61) / 10, 0.6)),
                                float(rng.normal(e.meniscal_per_decade * (subject.age_years - 61) / 10, 0.6))),
            effusion_persistent=float(rng.normal(0, e.effusion_knee_sd)),
            hoffa_noise=float(rng.normal(0, 0.45)),
            t2_noise={r: float(rng.normal(0, e.cartilage_t2_noise_ms)) for r in CARTILAGE_REGIONS},
            loss_noise={r: float(rng.normal(0, 0.08)) for r in CARTILAGE_REGIONS},
            bml_persistent=(), pain_knee=float(rng.normal(0, e.pain_knee_sd)),
        )
        _grade_osteophytes(state, e)
        if max(state.osteophyte_grade.values()) == 0:
            a, b = e.doubtful_lipping_logit
            state.doubtful_osteophyte = bool(rng.random() < _logistic(a + b * severity))
        state.bml_persistent = _bmls(rng, state, e)
        pose = {"varus_deg": rng.normal(2.0 + 6.0 * (medial_share - 0.68) + 1.5 * (sev_m - sev_l), 1.5),
                "size_jitter": rng.normal(1.0, 0.015)}
        baseline = _knee_spec(subject, side, 0, state, rng, pose, shape_seed, pain_subject,
                              effusion_subject, e, previous=None)
        knees[(side, 0)] = baseline
        _progress(state, subject, baseline, rng, e)
        knees[(side, 12)] = _knee_spec(subject, side, 12, state, rng, pose, shape_seed, pain_subject,
                                       effusion_subject, e, previous=baseline)
    return [knees[("R", 0)], knees[("L", 0)], knees[("R", 12)], knees[("L", 12)]]


def _grade_osteophytes(state: _KneeState, e: EffectSizes) -> None:
    compartment = {"FM": state.severity_medial, "TM": state.severity_medial,
                   "FL": state.severity_lateral, "TL": state.severity_lateral}
    state.osteophyte_grade = {
        s: _graded(e.osteophyte_per_severity * compartment[s] + state.osteophyte_liability[s], e.osteophyte_thresholds)
        for s in OSTEOPHYTE_SITES}


def _progress(state: _KneeState, subject: SubjectSpec, baseline: KneeSpec, rng: np.random.Generator,
              e: EffectSizes) -> None:
    """Advance a knee's structure by 12 months (paper 002: medial JSN progression)."""
    bmi_z5 = (subject.bmi_kg_m2 - e.bmi_mean) / 5.0
    logit = (e.rapid_logit_intercept + e.rapid_logit_severity * state.severity_medial + e.rapid_logit_bmi * bmi_z5
             + e.rapid_logit_meniscus * baseline.meniscal_damage_medial
             + e.rapid_logit_effusion * baseline.effusion_grade)
    rapid = rng.random() < _logistic(logit)
    if rapid:
        loss_m = max(0.1, rng.normal(e.rapid_loss_mean_mm, e.rapid_loss_sd_mm))
    else:
        loss_m = max(0.0, rng.normal(e.slow_loss_mean_mm, e.slow_loss_sd_mm))
    loss_m = min(loss_m, state.jsw_medial_mm)
    loss_l = min(max(0.0, rng.normal(0.5 * e.slow_loss_mean_mm, e.slow_loss_sd_mm)), state.jsw_lateral_mm)
    state.jsw_medial_mm -= loss_m
    state.jsw_lateral_mm -= loss_l
    state.severity_medial += e.severity_per_mm_loss * loss_m
    state.severity_lateral += e.severity_per_mm_loss * loss_l
    state.severity += e.severity_per_mm_loss * (0.7 * loss_m + 0.3 * loss_l)
    state.severity_pf += 0.2 * e.severity_per_mm_loss * loss_m
    _grade_osteophytes(state, e)


def sample_cohort_specs(n_subjects: int, base_seed: int = 0, variant: str = "oai",
                        effects: EffectSizes = DEFAULT_EFFECTS) -> tuple[list[SubjectSpec], list[KneeSpec]]:
    """Draw a whole cohort's specs without images (fast: about 1 ms per subject).

    Returns
    -------
    subjects : list of SubjectSpec
    knees : list of KneeSpec
        Four per subject (right and left, baseline and 12 months).
    """
    if n_subjects < 0:
        raise ValueError(f"n_subjects must be >= 0, got {n_subjects}")
    subjects = [sample_subject(i, base_seed, variant, effects) for i in range(int(n_subjects))]
    knees = [k for s in subjects for k in sample_knees(s, effects)]
    return subjects, knees


def specs_to_frames(subjects: list[SubjectSpec], knees: list[KneeSpec]):
    """``(subjects_df, knees_df)``: one row per subject and one per knee and visit."""
    import pandas as pd
    from dataclasses import asdict

    subject_df = pd.DataFrame([asdict(s) for s in subjects])
    knee_df = pd.DataFrame([k.as_record() for k in knees])
    return subject_df, knee_df
