"""Where the Siamese network's CAM points: the lesion under the hot spot and the pointing game (paper 000, Fig. 3I).

Paper 000 (Chang et al. 2020), Methods "Class activation mapping and radiologist review":
a radiologist named the lesion under the CAM hot spot of the painful knee's top slice for
107 test subjects (Fig. 3I). On the synthetic cohort the planted lesion masks replace the
reader: :func:`hot_spot_rows` reads which planted lesion (order of
:data:`kneelib.preprocess.siamese_inputs.LESION_NAMES`) holds the CAM maximum
(:func:`kneelib.explain.pointing.lesion_under_hot_spot`), with two chance levels (the
slice's lesion area fraction, and a random map on the same slice). :func:`lesion_table` and
:func:`pointing_table` summarise them; the pointing-game CI resamples subjects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kneelib.preprocess.siamese_inputs import LESION_NAMES, PreprocessedCohort

__all__ = ["LESION_LABELS", "hot_spot_rows", "out_of_fold_hot_spots", "lesion_table", "pointing_table"]

#: Display names of the lesions of Fig. 3I (and ``"none"``: no planted lesion under the hot spot).
LESION_LABELS = {"effusion_synovitis": "Effusion/Synovitis", "bml": "Bone Marrow Lesion",
                 "hoffa_synovitis": "Hoffa Fat Pad", "cartilage_loss": "Cartilage Loss",
                 "meniscal_damage": "Meniscus Damage", "none": "No planted lesion"}


def hot_spot_rows(model: str, data: PreprocessedCohort, subjects: np.ndarray, painful_cams: np.ndarray,
                   top_slice: np.ndarray, probability_right: np.ndarray, rng: np.random.Generator) -> list:
    """One row per subject: the planted lesion under the CAM maximum of the painful knee's top slice."""
    from kneelib.explain.pointing import lesion_under_hot_spot, pointing_hit

    labels = data.cohort["label"].to_numpy()
    rows = []
    for i, subject in enumerate(subjects):
        knee, s = int(labels[subject]), int(top_slice[i])
        masks = data.lesion_masks(subject, knee, s)
        union = np.logical_or.reduce(list(masks.values()))
        random_map = rng.random(painful_cams.shape[-2:])
        rows.append({
            "model": model, "participant_id": data.cohort["participant_id"].iloc[subject],
            "label": knee, "probability_right": float(probability_right[i]),
            "correct": bool((probability_right[i] >= 0.5) == bool(knee)), "top_slice": s,
            "lesion": lesion_under_hot_spot(painful_cams[i, s], masks),
            "hit": bool(union.any() and pointing_hit(painful_cams[i, s], union)),
            "lesion_area_fraction": float(union.mean()),
            "random_map_hit": bool(union.any() and pointing_hit(random_map, union)),
            "any_lesion_on_knee": bool(data.lesions[subject, knee].any()),
        })
    return rows


def out_of_fold_hot_spots(data: PreprocessedCohort, model, seed: int = 0,
                          name: str = "siamese, out-of-fold") -> pd.DataFrame:
    """Score every subject's CAM with the cross-validation fold model that never saw the subject.

    The paper's review covered a 15% test split (n = 107 of 710); a small synthetic cohort
    leaves only a handful of subjects there, so the same scoring is also run out-of-fold over
    the whole cross-validated cohort (``cross_validated_auc(..., keep_models=True)``). No
    subject is explained by a model trained on it.
    """
    from kneelib.explain.cam import painful_knee_cams, siamese_cams, top_cam_slice

    if not model.result.models or model.subjects is None:
        raise ValueError(f"{model.name} was cross-validated without keep_models=True: no fold models to explain with")
    labels = data.cohort["label"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for k, (network, standardization) in sorted(model.result.models.items()):
        subjects = model.subjects[model.result.fold == k]
        maps = siamese_cams(network, data.images[subjects], target_class=labels[subjects],
                            standardization=standardization)
        painful = painful_knee_cams(maps.cams, labels[subjects])
        rows += hot_spot_rows(name, data, subjects, painful, top_cam_slice(painful), maps.probability_right, rng)
    return pd.DataFrame(rows)


def lesion_table(hits: pd.DataFrame, model: str = "siamese", paper_counts=None,
                 paper_total: int | None = None) -> pd.DataFrame:
    """Fig. 3I: subjects by the lesion under the hot spot, split by correct / wrong prediction.

    Parameters
    ----------
    hits : DataFrame
        From :func:`hot_spot_rows` (one row per subject and model).
    model : str
        Which model's rows to count.
    paper_counts : mapping, optional
        Lesion name -> subjects the paper's reader counted (published values); adds the
        ``paper subjects`` and ``paper percent`` columns.
    paper_total : int, optional
        Subjects the paper reviewed (107), the denominator of ``paper percent``.

    Returns
    -------
    DataFrame
        One row per lesion of :data:`LESION_NAMES` and ``none``.
    """
    part = hits[hits["model"] == model]
    total = len(part)
    rows = []
    for name in (*LESION_NAMES, "none"):
        chosen = part[part["lesion"] == name]
        row = {"lesion": LESION_LABELS[name], "subjects": len(chosen),
               "percent": 100 * len(chosen) / total if total else np.nan,
               "pred. correct": int(chosen["correct"].sum()), "pred. wrong": int((~chosen["correct"]).sum())}
        if paper_counts is not None:
            paper = paper_counts.get(name)
            row["paper subjects"] = "" if paper is None else int(paper)
            row["paper percent"] = ("" if paper is None or not paper_total
                                    else round(100 * paper / paper_total, 1))
        rows.append(row)
    return pd.DataFrame(rows)


def pointing_table(hits: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Pointing game (hot spot inside any planted lesion) per model with a bootstrap 95% CI.

    Scored over the subjects whose top slice shows a lesion, against the two chance
    levels. The CI resamples subjects (``groups`` = ``participant_id``, one row per
    subject and model; :func:`kneelib.stats.bootstrap.bootstrap_ci`); the ``unit``
    column says so.
    """
    from kneelib.stats.bootstrap import bootstrap_ci

    rows = []
    for model, part in hits.groupby("model", sort=False):
        scored = part[part["lesion_area_fraction"] > 0]
        if scored.empty:
            rows.append({"model": model, "n scored": 0})
            continue
        subjects = scored["participant_id"].astype(str).to_numpy()
        if len(np.unique(subjects)) < len(subjects):
            raise ValueError(f"hits of model {model!r} hold a subject more than once; "
                             "one hot spot per subject is scored")
        hit = scored["hit"].to_numpy(float)
        ci = bootstrap_ci(lambda _, x: float(np.mean(x)), hit, hit, n_boot=n_boot, stratify=False, seed=seed,
                          groups=subjects)
        rows.append({"model": model, "n scored": len(scored), "pointing game": hit.mean(),
                     "ci_low": ci.ci_low, "ci_high": ci.ci_high, "unit": ci.unit,
                     "chance (lesion area fraction)": scored["lesion_area_fraction"].mean(),
                     "random 8x8 map": scored["random_map_hit"].mean(),
                     "correct predictions": scored.loc[scored["correct"], "hit"].mean(),
                     "wrong predictions": scored.loc[~scored["correct"], "hit"].mean()})
    return pd.DataFrame(rows)
