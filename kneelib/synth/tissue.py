"""Physical properties of knee tissues for the MR signal equations and X-ray projection.

Step 2 of "A synthetic knee from physics" (``DESIGN.md``; issue 3, section 2): each
tissue label gets a proton density (relative to free water), T1 and T2 at 3 T, a fat
fraction (fat has its own T1/T2) and an X-ray linear attenuation coefficient. Values
are textbook-typical, rounded: relaxation times at 3 T after Gold GE et al., AJR
2004;183:343-51 and Stanisz GJ et al., MRM 2005;54:507-12 (cartilage T2 deep to
superficial about 30 to 55 ms as in OAI MSME T2 maps, Joseph GB et al. / paper 001);
X-ray attenuation at an effective energy near 40 keV, the mean energy of a 70 kVp knee
beam after the knee's own filtration (NIST XCOM mass attenuation times density: water
0.0268/mm, muscle 0.028/mm, adipose 0.0224/mm, ICRU cortical bone 0.128/mm). Trabecular
bone is a mixture by volume: about 20% bone tissue (0.128/mm) in fatty marrow
(0.023/mm) gives 0.045/mm in the epiphyses; diaphyseal fatty marrow (about 5% bone)
0.029/mm; sclerotic subchondral bone (about 40%) 0.068/mm. The bone to soft-tissue
ratio (about 1.7 for trabecular, 4.8 for cortical bone) is what makes condyles, cortical
rims and the patella stand out on a knee film.

Lesions are alternative tissues: bone marrow lesions are marrow with oedema (more
water, long T2, less fat), effusion is free fluid, Hoffa-synovitis is oedematous fat
pad; all three are bright on fat-suppressed intermediate-weighted images, as MOAKS
reads them (Hunter et al. 2011).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneelib.synth.spec import TISSUE_LABELS

__all__ = [
    "Tissue", "TISSUES", "LESION_TISSUES", "CARTILAGE_T2_DEEP_MS", "CARTILAGE_T2_SUPERFICIAL_MS",
    "FAT_T1_MS", "FAT_T2_MS", "MARROW_T2STAR_MS", "TRABECULAR_GRAIN_MM", "property_table", "cartilage_t2_ms",
    "trabecular_contrast",
]

#: Fat relaxation at 3 T (T2 is the apparent TSE value, lengthened by J-coupling).
FAT_T1_MS = 380.0
FAT_T2_MS = 110.0
#: Apparent T2* of trabecular marrow water at 3 T: the trabecular lattice's susceptibility
#: dephases gradient echoes (a few ms in the epiphyses; Wehrli FW et al., Radiology
#: 1991;179:615-21; Majumdar S, NMR Biomed 2006), so marrow is dark on DESS.
MARROW_T2STAR_MS = 4.0
#: Correlation lengths (Gaussian sigma, mm) of the marrow texture along the principal
#: trabeculae (superior-inferior) and across them; trabecular spacing is about 0.5-1.5 mm.
TRABECULAR_GRAIN_MM = (1.1, 0.6)
#: Relative SD of marrow signal from the trabecular lattice in a 1 mm^3 voxel.
TRABECULAR_CONTRAST_1MM3 = 0.14
#: Cartilage T2 at the bone (deep zone) and at the articular surface.
CARTILAGE_T2_DEEP_MS = 30.0
CARTILAGE_T2_SUPERFICIAL_MS = 52.0


@dataclass(frozen=True)
class Tissue:
    """Physical properties of one tissue.

    Attributes
    ----------
    proton_density : float
        Relative to free water (1.0).
    t1_ms, t2_ms : float
        Water-compartment relaxation times at 3 T.
    fat_fraction : float
        Fraction of the proton density that is fat (relaxing with ``FAT_T1_MS``,
        ``FAT_T2_MS``); fat suppression removes it.
    attenuation_per_mm : float
        X-ray linear attenuation coefficient at an effective energy of about 40 keV.
    """

    proton_density: float
    t1_ms: float
    t2_ms: float
    fat_fraction: float
    attenuation_per_mm: float


_T = Tissue
#: Properties by tissue name (keys of ``TISSUE_LABELS``).
TISSUES: dict[str, Tissue] = {
    "background": _T(0.0, 1000.0, 1.0, 0.0, 0.0),
    # trabecular bone: fatty marrow between trabeculae (attenuation includes the trabeculae)
    "femur": _T(0.80, 1100.0, 45.0, 0.82, 0.045),
    "tibia": _T(0.80, 1100.0, 45.0, 0.82, 0.045),
    "patella": _T(0.80, 1100.0, 45.0, 0.80, 0.045),
    "fibula": _T(0.80, 1100.0, 45.0, 0.82, 0.045),
    "femoral_cartilage": _T(0.78, 1200.0, 40.0, 0.0, 0.029),
    "tibial_cartilage_medial": _T(0.78, 1200.0, 40.0, 0.0, 0.029),
    "tibial_cartilage_lateral": _T(0.78, 1200.0, 40.0, 0.0, 0.029),
    "patellar_cartilage": _T(0.78, 1200.0, 40.0, 0.0, 0.029),
    "meniscus_medial": _T(0.35, 1000.0, 9.0, 0.0, 0.03),
    "meniscus_lateral": _T(0.35, 1000.0, 9.0, 0.0, 0.03),
    "acl": _T(0.40, 1000.0, 14.0, 0.0, 0.03),
    "pcl": _T(0.30, 1000.0, 8.0, 0.0, 0.03),
    "joint_fluid": _T(1.00, 3000.0, 500.0, 0.0, 0.0268),
    "hoffa_fat_pad": _T(0.92, 900.0, 40.0, 0.92, 0.0224),
    "muscle": _T(0.65, 1420.0, 32.0, 0.04, 0.028),
    "subcutaneous_fat": _T(0.92, 900.0, 40.0, 0.93, 0.0224),
    "skin": _T(0.70, 1000.0, 30.0, 0.15, 0.0285),
    "patellar_tendon": _T(0.25, 1000.0, 6.0, 0.0, 0.031),
    "marrow_fat": _T(0.85, 1100.0, 45.0, 0.88, 0.029),
    "collateral_ligament": _T(0.25, 1000.0, 6.0, 0.0, 0.031),
}

#: Properties of lesion and special tissues that override a label's properties.
LESION_TISSUES: dict[str, Tissue] = {
    "bml": _T(0.95, 1400.0, 75.0, 0.35, 0.043),              # marrow oedema
    "hoffa_synovitis": _T(0.95, 1600.0, 95.0, 0.30, 0.0245),  # oedematous fat pad
    "cortex": _T(0.05, 1000.0, 1.0, 0.0, 0.128),             # cortical bone / subchondral plate
    "sclerosis": _T(0.45, 1100.0, 30.0, 0.60, 0.068),        # dense subchondral bone
    "foreign_object": _T(0.0, 1000.0, 1.0, 0.0, 0.60),       # metal: void on MRI
}


def property_table() -> dict[str, np.ndarray]:
    """Per-label lookup arrays indexed by ``TISSUE_LABELS`` code.

    Returns
    -------
    dict of str -> ndarray of float32
        ``proton_density``, ``t1_ms``, ``t2_ms``, ``fat_fraction``,
        ``attenuation_per_mm``, each of length ``max(code) + 1``.
    """
    n = max(TISSUE_LABELS.values()) + 1
    table = {k: np.zeros(n, np.float32) for k in
             ("proton_density", "t1_ms", "t2_ms", "fat_fraction", "attenuation_per_mm")}
    table["t1_ms"][:] = 1000.0
    table["t2_ms"][:] = 1.0
    for name, code in TISSUE_LABELS.items():
        tissue = TISSUES[name]
        table["proton_density"][code] = tissue.proton_density
        table["t1_ms"][code] = tissue.t1_ms
        table["t2_ms"][code] = tissue.t2_ms
        table["fat_fraction"][code] = tissue.fat_fraction
        table["attenuation_per_mm"][code] = tissue.attenuation_per_mm
    return table


def cartilage_t2_ms(depth: np.ndarray, elevation_ms: np.ndarray | float = 0.0) -> np.ndarray:
    """Cartilage T2 at relative depth (0 bone .. 1 surface) plus degeneration.

    The laminar T2 profile of healthy cartilage rises from the deep radial zone to the
    superficial zone; degeneration (collagen disruption, more water) adds
    ``elevation_ms`` (``KneeSpec.cartilage_t2_elevation_ms`` per region, paper 001).
    """
    depth = np.clip(np.asarray(depth, np.float32), 0.0, 1.0)
    return (CARTILAGE_T2_DEEP_MS + (CARTILAGE_T2_SUPERFICIAL_MS - CARTILAGE_T2_DEEP_MS) * depth ** 1.5
            + np.asarray(elevation_ms, np.float32))


def trabecular_contrast(voxel_mm3: float) -> float:
    """Relative SD of the trabecular marrow texture in a voxel of ``voxel_mm3``.

    A voxel averages about ``voxel_mm3`` independent trabecular cells (about 1 mm
    apart), so the texture's SD falls as ``1 / sqrt(volume)``; capped at twice the
    1 mm^3 value for sub-millimetre voxels, which resolve single trabeculae only
    partly (the marrow image is never binary).
    """
    return float(min(2.0 * TRABECULAR_CONTRAST_1MM3, TRABECULAR_CONTRAST_1MM3 / np.sqrt(max(voxel_mm3, 1e-6))))
