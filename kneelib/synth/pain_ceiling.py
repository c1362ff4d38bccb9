"""How well the images of the synthetic cohort can tell the painful knee at best (paper 000).

The causal model (:mod:`kneelib.synth.causal`) makes knee pain depend on findings an MRI
shows (effusion-synovitis, BML, Hoffa-synovitis, cartilage loss, meniscal damage, JSN)
and on what it does not (subject-level pain sensitivity, noise). The part carried by the
images is :func:`kneelib.synth.causal.knee_pain_image_liability`; its right-minus-left
difference is the best score an image-only model can give to the question of paper 000
(Chang et al. 2020) "which knee hurts". Its AUC is the ceiling the Siamese network's AUC
is measured against.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["knee_image_liability", "image_liability_ceiling_auc"]


def knee_image_liability(knees: pd.DataFrame, effects=None) -> pd.Series:
    """:func:`kneelib.synth.causal.knee_pain_image_liability` of every row of ``ground_truth/knees.csv``.

    Parameters
    ----------
    knees : DataFrame
        Columns of ``ground_truth/knees.csv`` (``effusion_grade``, ``bml_sites`` as
        ``"FM:3;TM:1"``, ``hoffa_synovitis_grade``, ``cartilage_loss_fraction_*``,
        ``meniscal_damage_medial/lateral``, ``jsn_grade_medial/lateral``).
    effects : kneelib.synth.causal.EffectSizes, optional
        Default :data:`kneelib.synth.causal.DEFAULT_EFFECTS` (the generator's).

    Returns
    -------
    Series
    """
    from kneelib.synth.causal import DEFAULT_EFFECTS

    e = DEFAULT_EFFECTS if effects is None else effects
    sites = knees["bml_sites"].fillna("").astype(str)
    largest_bml = [max((int(s.split(":")[1]) for s in v.split(";") if ":" in s), default=0) for v in sites]
    loss = knees[[c for c in knees.columns if c.startswith("cartilage_loss_fraction_")]].max(axis=1)
    return (e.pain_effusion * knees["effusion_grade"] + e.pain_bml * np.asarray(largest_bml, float)
            + e.pain_hoffa * knees["hoffa_synovitis_grade"] + e.pain_cartilage_loss * loss
            + e.pain_meniscus * knees[["meniscal_damage_medial", "meniscal_damage_lateral"]].max(axis=1)
            + e.pain_jsn * knees[["jsn_grade_medial", "jsn_grade_lateral"]].max(axis=1))


def image_liability_ceiling_auc(cohort_root: str | Path, cohort: pd.DataFrame, visit_month: int = 0):
    """AUC of the right-minus-left image liability for the painful side of ``cohort``'s subjects.

    Parameters
    ----------
    cohort_root : path
        A synthetic cohort (with ``ground_truth/knees.csv``).
    cohort : DataFrame
        ``participant_id`` and ``label`` (1 = right knee painful).
    visit_month : int

    Returns
    -------
    kneelib.stats.roc.AucResult or None
        DeLong CI over subjects; ``None`` when the root has no ground truth (a real OAI
        download) or the subjects hold one class only.
    """
    from kneelib.stats.roc import auc_with_ci

    path = Path(cohort_root) / "ground_truth" / "knees.csv"
    if not path.is_file() or len(np.unique(cohort["label"])) < 2:
        return None
    knees = pd.read_csv(path, dtype={"participant_id": str, "artefact": str})
    knees = knees[knees["visit_month"] == visit_month]
    liability = knees.assign(liability=knee_image_liability(knees)).pivot(
        index="participant_id", columns="side", values="liability")
    ids = cohort["participant_id"].astype(str)
    difference = (liability["R"] - liability["L"]).reindex(ids).to_numpy(float)
    known = np.isfinite(difference)
    return auc_with_ci(cohort["label"].to_numpy()[known], difference[known], groups=ids.to_numpy()[known])
