"""Contracts between the parts of the synthetic cohort generator.

The causal model (:mod:`kneelib.synth.causal`) draws one :class:`SubjectSpec` per
participant and one :class:`KneeSpec` per knee and visit. The anatomy and imaging
physics (:mod:`kneelib.synth.anatomy`, :mod:`kneelib.synth.mri`,
:mod:`kneelib.synth.radiograph`) turn a ``KneeSpec`` into images and ground-truth
label volumes; :mod:`kneelib.synth.cohort` writes both in the OAI layout.

Everything here is plain data: frozen dataclasses of floats, ints and strings,
so that a spec can be logged to the ground-truth tables and hashed for caching.

Coordinates
-----------
Knee-local millimetres, right-knee convention before mirroring: ``x`` lateral (+)
to medial (-) for a right knee, ``y`` anterior (+) to posterior (-), ``z``
superior (+) to inferior (-). The origin is the centre of the tibio-femoral joint
space on the posterior cruciate ligament (PCL) plane. A left knee is the mirror
image in ``x``; the MRI renderer writes DICOM patient coordinates (LPS) so that
the reader recovers the true side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Label codes of the tissue label volumes (ground truth ``*_labels.nii.gz``).
TISSUE_LABELS: dict[str, int] = {
    "background": 0,
    "femur": 1,
    "tibia": 2,
    "patella": 3,
    "fibula": 4,
    "femoral_cartilage": 5,
    "tibial_cartilage_medial": 6,
    "tibial_cartilage_lateral": 7,
    "patellar_cartilage": 8,
    "meniscus_medial": 9,
    "meniscus_lateral": 10,
    "acl": 11,
    "pcl": 12,
    "joint_fluid": 13,          # physiological fluid and effusion-synovitis
    "hoffa_fat_pad": 14,
    "muscle": 15,
    "subcutaneous_fat": 16,
    "skin": 17,
    "patellar_tendon": 18,
    "marrow_fat": 19,           # trabecular bone is femur/tibia/patella; kept for T1 contrast
    "collateral_ligament": 20,  # medial and lateral collateral ligaments (added by the anatomy)
}

#: Lesion mask names written beside the tissue labels (one binary mask each).
LESION_MASKS: tuple[str, ...] = (
    "effusion_synovitis",
    "bml",
    "hoffa_synovitis",
    "cartilage_loss",
    "meniscal_damage",
    "osteophyte",
    "foreign_object",
)

#: Cartilage plates / regions used for thickness loss and T2 elevation.
CARTILAGE_REGIONS: tuple[str, ...] = ("FM", "FL", "TM", "TL", "P", "TR")  # TR = trochlea

#: OARSI compartments for radiographic osteophytes.
OSTEOPHYTE_SITES: tuple[str, ...] = ("FL", "FM", "TL", "TM")


@dataclass(frozen=True)
class SubjectSpec:
    """One participant (OAI ``Enrollees`` and ``AllClinical`` level).

    Attributes
    ----------
    participant_id : str
        Seven-digit OAI-style ID, e.g. ``"9000001"``.
    age_years, bmi_kg_m2 : float
        At baseline.
    sex : int
        OAI coding ``P02SEX``: 1 = male, 2 = female.
    race : int
        OAI coding ``P02RACE``: 0 other non-white, 1 white, 2 black, 3 asian.
    widespread_pain : bool
        Pain in several body sites (excludes a subject from chronic-knee-pain
        analyses as in paper 001).
    seed : int
        Per-subject seed; every random draw for this subject derives from it.
    """

    participant_id: str
    age_years: float
    bmi_kg_m2: float
    sex: int
    race: int
    widespread_pain: bool
    seed: int
    height_scale: float = 1.0   # body size factor, scales the knee (about 0.9-1.1)


@dataclass(frozen=True)
class KneeSpec:
    """One knee at one visit: geometry, pose and planted findings.

    All findings are what the causal model decided; the renderer must plant them
    exactly so that the ground truth is true by construction.

    Attributes
    ----------
    participant_id : str
    side : str
        ``"R"`` or ``"L"`` (OAI ``SIDE`` 1 = right, 2 = left).
    visit_month : int
        0 (baseline, OAI ``V00``) or 12 (``V01``).
    seed : int
        Seed of this knee's shape deformation and noise; the same knee at 0 and 12
        months shares the shape seed (``shape_seed``) and differs in ``seed``.
    shape_seed : int
    size_scale : float
        Isotropic scale of the bones (about 0.9-1.1).
    flexion_deg, rotation_deg, varus_deg : float
        Pose in the scanner (flexion about x, internal/external rotation about z,
        varus (+)/valgus (-) about y).
    offset_mm : tuple of float
        Translation of the knee in the field of view (x, y, z).
    oa_severity : float
        Latent OA severity (0 healthy, about 1 moderate, 2 severe).
    jsw_medial_mm, jsw_lateral_mm : float
        Minimum joint space width of each tibio-femoral compartment on the
        fixed-flexion radiograph (what ``V00MCMJSW`` measures for medial).
    cartilage_thickness_mm : dict
        Mean thickness per region in ``CARTILAGE_REGIONS`` before focal loss.
    cartilage_loss_fraction : dict
        Focal full/partial-thickness loss per region (0 none .. 1 full thickness).
    cartilage_t2_elevation_ms : dict
        T2 added in each region's degenerating cartilage (MSME T2 maps, paper 001).
    osteophyte_grade : dict
        OARSI radiographic osteophyte grade 0-3 per site in ``OSTEOPHYTE_SITES``;
        the MRI shows bone outgrowths of matching size.
    jsn_grade_medial, jsn_grade_lateral : int
        OARSI JSN grade 0-3 (follows from JSW).
    sclerosis_medial, sclerosis_lateral : int
        Subchondral sclerosis 0-3 (denser bone on the radiograph).
    kl_grade : int
        Kellgren-Lawrence grade 0-4 derived from osteophytes and JSN.
    effusion_grade : int
        MOAKS effusion-synovitis 0-3 (fluid volume in the suprapatellar recess
        and joint).
    hoffa_synovitis_grade : int
        MOAKS Hoffa-synovitis 0-3 (signal in Hoffa's fat pad).
    bml_sites : tuple of (str, int)
        Bone marrow lesions as (region, size grade 1-3); region among
        ``"FM","FL","TM","TL","P"``.
    meniscal_damage_medial, meniscal_damage_lateral : int
        0 intact .. 3 macerated.
    frequent_pain : bool
        Pain on most days of a month in the past 12 months (``P01KPN?EV``).
    womac_pain : float
        WOMAC pain 0-20 (``V00WOMKP?``).
    chronic_pain : bool
        Chronic pain at this visit: pain on most days for more than 6 of the past
        12 months (paper 001 definition, before the widespread-pain exclusion).
    doubtful_osteophyte : bool
        Possible osteophytic lipping without a definite osteophyte (makes KL 1).
    jsw_medial_measured_mm : float
        Minimum medial JSW as the semi-automated reading gives it (true value plus
        measurement noise); what the ``kXR_QJSW_Duryea`` tables hold.
    any_pain_past_12m : bool
        Any knee pain, aching or stiffness in the past 12 months (paper 001's "no
        chronic pain" label is the absence of it).
    pain_months_past_12m : int
        Months of the past 12 with pain on more than half of the days; chronic pain
        is ``> 6`` (paper 001, Methods "Clinical outcome definition").
    pain_liability : float
        The causal model's latent knee pain (not an OAI variable; for analysis).
    artefact : str
        ``""`` or one of ``"motion"``, ``"missing_slices"``, ``"foreign_object"``
        (planted scan defects for QC).
    subcutaneous_fat_mm : float
        Thickness of the subcutaneous fat layer around the knee (follows BMI).
    """

    participant_id: str
    side: str
    visit_month: int
    seed: int
    shape_seed: int
    size_scale: float = 1.0
    flexion_deg: float = 5.0
    rotation_deg: float = 0.0
    varus_deg: float = 0.0
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    oa_severity: float = 0.0
    jsw_medial_mm: float = 5.0
    jsw_lateral_mm: float = 6.0
    cartilage_thickness_mm: dict[str, float] = field(
        default_factory=lambda: {"FM": 2.2, "FL": 2.0, "TM": 1.8, "TL": 2.4, "P": 2.6, "TR": 2.3}
    )
    cartilage_loss_fraction: dict[str, float] = field(default_factory=dict)
    cartilage_t2_elevation_ms: dict[str, float] = field(default_factory=dict)
    osteophyte_grade: dict[str, int] = field(
        default_factory=lambda: {"FL": 0, "FM": 0, "TL": 0, "TM": 0}
    )
    jsn_grade_medial: int = 0
    jsn_grade_lateral: int = 0
    sclerosis_medial: int = 0
    sclerosis_lateral: int = 0
    kl_grade: int = 0
    effusion_grade: int = 0
    hoffa_synovitis_grade: int = 0
    bml_sites: tuple[tuple[str, int], ...] = ()
    meniscal_damage_medial: int = 0
    meniscal_damage_lateral: int = 0
    frequent_pain: bool = False
    womac_pain: float = 0.0
    chronic_pain: bool = False
    artefact: str = ""
    # --- added by the causal model (kneelib.synth.causal); defaults keep older callers valid ---
    doubtful_osteophyte: bool = False        # possible osteophytic lipping (KL 1 without JSN)
    jsw_medial_measured_mm: float = float("nan")  # V00MCMJSW as read: true JSW + reading noise
    any_pain_past_12m: bool = False          # any knee pain, aching or stiffness in past 12 months
    pain_months_past_12m: int = 0            # months with pain on most days (chronic: > 6)
    pain_liability: float = 0.0              # latent knee pain (causal model, for analysis only)

    def as_record(self) -> dict:
        """Flat dict for the ground-truth table (nested dicts become ``key_sub``)."""
        flat: dict = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    flat[f"{key}_{sub}"] = v
            elif key == "bml_sites":
                flat[key] = ";".join(f"{r}:{g}" for r, g in value)
            elif key == "offset_mm":
                flat.update({f"offset_{a}_mm": v for a, v in zip("xyz", value)})
            else:
                flat[key] = value
        return flat
