"""Where the slice-attention model looks, scored against the planted drivers (paper 002, 3.4, Fig. 6).

Schiratti et al. 2021, 3.4: Grad-CAM on the inputs showed "JSN progression-related regions
... in the internal femoro-tibial compartment" (the medial compartment). On the synthetic
cohort the causal model (:func:`kneelib.synth.causal._progress`) drives 12-month medial JSW
loss by medial compartment severity, BMI, medial meniscal damage and effusion-synovitis; the
image shows medial severity as focal cartilage loss, medial meniscal damage, and
effusion-synovitis as joint fluid, all written as lesion masks. :func:`progression_driver_mask`
keeps cartilage loss and meniscal damage where they lie in the medial compartment (within a
few voxels of the medial tibial cartilage or the medial meniscus) and effusion-synovitis
wherever it lies (a whole-joint driver, mostly in the suprapatellar recess). Two checks, each
against its chance level:

- :func:`attention_on_drivers` -- the share of a knee's attention mass on slices that show a
  driver vs the share of its slices that do (chance: attention spread evenly);
- :func:`slice_grad_cams` + :func:`kneelib.explain.pointing.cell_pointing_hit` -- Grad-CAM
  (:func:`kneelib.explain.gradcam.grad_cam`) of the progression logit through the attention
  model down to the slice CNN's last convolutional maps, on the driver slice the model
  attends to most; a hit when the hottest cell overlaps the driver mask (chance: the share
  of cells that overlap it).

Reading a knee's series and its ground truth is the slow part of both checks (a DICOM series,
a label volume and its lesion masks per knee); :func:`knee_driver_slices` and
:func:`knee_network_slices` spread it over worker processes through
:func:`kneelib.executor.map_tasks`, one knee per task, each worker single-threaded.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from kneelib.synth.spec import TISSUE_LABELS

__all__ = ["MEDIAL_LABELS", "DRIVER_LESIONS", "JOINT_DRIVER_LESIONS", "PAIN_DRIVER_LESIONS", "progression_driver_mask",
           "pain_driver_mask", "attention_on_drivers",
           "attention_summary", "SliceGradCamModel", "slice_grad_cams", "KneeSeries", "knee_driver_slices",
           "knee_network_slices"]

#: Tissue codes of the synthetic labels that mark the medial compartment (medial tibial
#: cartilage, medial meniscus).
MEDIAL_LABELS: tuple[int, ...] = (TISSUE_LABELS["tibial_cartilage_medial"], TISSUE_LABELS["meniscus_medial"])
#: Lesion masks that carry planted progression drivers when they lie in the medial compartment.
DRIVER_LESIONS: tuple[str, ...] = ("cartilage_loss", "meniscal_damage")
#: Lesion masks that carry planted progression drivers wherever they lie (effusion-synovitis:
#: the causal model's progression logit has an effusion term, ``kneelib.synth.causal``).
JOINT_DRIVER_LESIONS: tuple[str, ...] = ("effusion_synovitis",)
#: Lesion masks behind the planted knee pain (``kneelib.synth.causal``: effusion-synovitis, BML,
#: Hoffa-synovitis, focal cartilage loss and meniscal damage raise the pain liability).
PAIN_DRIVER_LESIONS: tuple[str, ...] = ("effusion_synovitis", "bml", "hoffa_synovitis", "cartilage_loss",
                                        "meniscal_damage")


def _checked_labels(labels, masks: dict) -> np.ndarray:
    labels = np.asarray(labels)
    for name, mask in masks.items():
        if np.shape(mask) != labels.shape:
            raise ValueError(f"mask {name!r} {np.shape(mask)} differs from labels {labels.shape}")
    return labels


def progression_driver_mask(labels: np.ndarray, masks: dict, margin_voxels: int = 3) -> np.ndarray:
    """Voxels of planted drivers of 12-month JSN progression: medial-compartment lesions and effusion.

    Parameters
    ----------
    labels : ndarray of int
        Tissue labels of one series.
    masks : dict
        Lesion name -> boolean mask on the same grid (absent names: no such lesion).
    margin_voxels : int
        Dilation of the medial tibial cartilage and medial meniscus that defines the
        medial compartment (reaches the femoral cartilage above them).

    Returns
    -------
    ndarray of bool, same shape as ``labels``.

    Raises
    ------
    ValueError
        When a mask's shape differs from the labels'.
    """
    labels = _checked_labels(labels, masks)
    medial = np.isin(labels, MEDIAL_LABELS)
    if margin_voxels > 0 and medial.any():
        medial = ndimage.binary_dilation(medial, iterations=int(margin_voxels))
    lesion = np.zeros(labels.shape, bool)
    for name in DRIVER_LESIONS:
        if name in masks:
            lesion |= np.asarray(masks[name], bool)
    joint = np.zeros(labels.shape, bool)
    for name in JOINT_DRIVER_LESIONS:
        if name in masks:
            joint |= np.asarray(masks[name], bool)
    return (lesion & medial) | joint


def pain_driver_mask(labels: np.ndarray, masks: dict) -> np.ndarray:
    """Voxels of the planted drivers of knee pain (:data:`PAIN_DRIVER_LESIONS`), wherever they lie.

    Paper 002, Fig. 6 (bottom row) shows Grad-CAM for the pain task; on the synthetic cohort it
    is scored against these lesions. Same inputs, output and errors as :func:`progression_driver_mask`.
    """
    labels = _checked_labels(labels, masks)
    out = np.zeros(labels.shape, bool)
    for name in PAIN_DRIVER_LESIONS:
        if name in masks:
            out |= np.asarray(masks[name], bool)
    return out


def attention_on_drivers(attention: np.ndarray, mask: np.ndarray, driver_slices: list) -> pd.DataFrame:
    """Attention mass on driver slices vs their share of slices, per knee.

    Parameters
    ----------
    attention : ndarray, shape (knees, slices)
    mask : ndarray of bool, shape (knees, slices)
        Slices that exist.
    driver_slices : list of ndarray of bool
        Per knee, which of its existing slices show a driver (length = that knee's slices),
        or ``None`` when unknown.

    Returns
    -------
    DataFrame
        One row per knee with ``n_slices``, ``n_driver_slices``, ``slice_share``,
        ``attention_mass`` and ``informative`` (some but not all slices show a driver:
        only there can attention prefer them).
    """
    attention, mask = np.asarray(attention, float), np.asarray(mask, bool)
    if attention.shape != mask.shape or len(driver_slices) != len(mask):
        raise ValueError(f"attention {attention.shape}, mask {mask.shape} and {len(driver_slices)} driver "
                         f"rows do not match")
    rows = []
    for weights, present, drivers in zip(attention, mask, driver_slices):
        n = int(present.sum())
        if drivers is None:
            rows.append({"n_slices": n, "n_driver_slices": np.nan, "slice_share": np.nan,
                         "attention_mass": np.nan, "informative": False})
            continue
        drivers = np.asarray(drivers, bool)
        if len(drivers) != n:
            raise ValueError(f"driver flags for {len(drivers)} slices but the knee has {n}")
        w = weights[present]
        rows.append({"n_slices": n, "n_driver_slices": int(drivers.sum()), "slice_share": float(drivers.mean()),
                     "attention_mass": float(w[drivers].sum() / max(w.sum(), 1e-12)),
                     "informative": bool(0 < drivers.sum() < n)})
    return pd.DataFrame(rows)


def attention_summary(table: pd.DataFrame, groups, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean attention mass on driver slices, their mean share of slices, and the paired
    difference with a participant-bootstrap CI, over the informative knees."""
    from kneelib.stats.bootstrap import bootstrap_ci

    keep = table["informative"].to_numpy(bool)
    if keep.sum() < 2:
        return {"n": int(keep.sum()), "attention_mass": np.nan, "slice_share": np.nan, "difference": np.nan,
                "ci_low": np.nan, "ci_high": np.nan, "unit": "subjects"}
    diff = (table["attention_mass"] - table["slice_share"]).to_numpy(float)[keep]
    result = bootstrap_ci(lambda y, d: float(np.mean(d)), np.zeros(len(diff)), diff, n_boot=n_boot, seed=seed,
                          stratify=False, groups=np.asarray(groups)[keep])
    return {"n": int(keep.sum()), "attention_mass": float(table["attention_mass"][keep].mean()),
            "slice_share": float(table["slice_share"][keep].mean()), "difference": result.estimate,
            "ci_low": result.ci_low, "ci_high": result.ci_high, "unit": result.unit}


class SliceGradCamModel(nn.Module):
    """One knee's slices through the slice CNN and a trained attention model, in the interface
    :func:`kneelib.explain.gradcam.grad_cam` expects (``forward_features``, ``forward_heads``,
    ``task_slices``).

    The batch is the knee's slices; ``forward_heads`` pools each slice's maps, standardises
    them as in training, runs the attention model once and repeats the knee's two logits for
    every slice, so the gradient that reaches slice ``s``'s maps is that of the one knee score.
    """

    def __init__(self, encoder, attention_model, standardisation, clinical_row, task: str = "progression"):
        super().__init__()
        self.encoder_network = encoder.network
        self._encoder = encoder
        self.attention_model = attention_model
        self.task = task
        self.standardisation = standardisation
        clin = (np.asarray(clinical_row, float) - standardisation.clinical_mean) / standardisation.clinical_sd
        self.register_buffer("clinical", torch.as_tensor(np.atleast_1d(clin), dtype=torch.float32)[None])

    def task_slices(self) -> dict:
        return {self.task: slice(0, 2)}

    def forward_features(self, inputs):
        return self._encoder.forward_features(inputs)

    def forward_heads(self, maps):
        pooled = self.standardisation.transform_torch(self._encoder.pool(maps))
        mask = torch.ones(1, len(pooled), dtype=torch.bool, device=pooled.device)
        logits = self.attention_model(pooled[None], mask, self.clinical)
        return logits.expand(len(pooled), -1)


def slice_grad_cams(encoder, attention_model, standardisation, images, clinical_row) -> np.ndarray:
    """Grad-CAM of the class-1 logit on every slice of one knee, ``(slices, h, w)``, each map
    scaled to a maximum of 1 (:func:`kneelib.explain.gradcam.grad_cam`)."""
    from kneelib.explain.gradcam import grad_cam

    model = SliceGradCamModel(encoder, attention_model, standardisation, clinical_row)
    cams, _ = grad_cam(model, encoder.to_input(images), model.task, target_grades=1)
    return cams


@dataclass(frozen=True)
class KneeSeries:
    """One knee's baseline series in a synthetic cohort, small enough to send to a worker.

    Attributes
    ----------
    root : Path
        The cohort root (``ground_truth/`` beside the OAI folders).
    index : kneelib.data.ImageIndex
        The image index restricted to this participant's rows.
    truth : pandas.DataFrame
        The :func:`kneelib.synth.ground_truth.series_truth_table` row of this series.
    participant_id : str
    description : str
        The OAI series description (side included).
    visit_month : int
    """

    root: Path
    index: object
    truth: pd.DataFrame
    participant_id: str
    description: str
    visit_month: int = 0

    @classmethod
    def of(cls, root, index, truth: pd.DataFrame, participant_id: str, description: str,
           visit_month: int = 0) -> "KneeSeries":
        """The knee's series, with ``index`` cut to its participant and ``truth`` to its series.

        Raises
        ------
        kneelib.data.errors.KneelibDataError
            The participant has no such series (or several) at that visit.
        """
        pid = str(participant_id).strip()
        sub_index = replace(index, table=index.table[index.table["ParticipantID"] == pid])
        folder = sub_index.find_series(pid, visit_month, description).relative_to(index.root).as_posix()
        return cls(Path(root), sub_index, truth[truth["folder"] == folder], pid, description, int(visit_month))

    def load(self):
        """``(volume, labels, lesion masks)`` (:func:`kneelib.synth.ground_truth.load_series_with_truth`)."""
        from kneelib.synth.ground_truth import load_series_with_truth

        return load_series_with_truth(self.root, self.index, self.truth, self.participant_id, self.visit_month,
                                      self.description)


def _driver_slices_task(job: tuple) -> np.ndarray:
    from kneelib.executor import single_threaded
    from kneelib.preprocess.slice_features import label_slices

    knee, config, driver_mask = job
    with single_threaded():
        volume, labels, masks = knee.load()
        return label_slices(driver_mask(labels, masks).astype(np.uint8), volume, config) > 0


def _network_slices_task(job: tuple) -> np.ndarray:
    from kneelib.data import read_dicom_series
    from kneelib.executor import single_threaded
    from kneelib.preprocess.slice_features import prepare_slices

    knee, config = job
    with single_threaded():
        folder = knee.index.find_series(knee.participant_id, knee.visit_month, knee.description)
        return prepare_slices(read_dicom_series(folder), config)[0]


def knee_driver_slices(knees: list, config, driver_mask: Callable = progression_driver_mask,
                       n_jobs: int | None = None, progress: bool = False) -> list:
    """The planted-driver mask of each knee on the slices the network sees (paper 002, 3.4).

    Parameters
    ----------
    knees : list of KneeSeries
    config : kneelib.preprocess.slice_features.SliceFeatureConfig
        Which slices, at what size (:func:`~kneelib.preprocess.slice_features.label_slices`).
    driver_mask : callable
        ``driver_mask(labels, masks)``: :func:`progression_driver_mask` or :func:`pain_driver_mask`.
    n_jobs : int, optional
        Worker processes (:func:`kneelib.executor.map_tasks`; None: every core, 1: this process).

    Returns
    -------
    list of ndarray, each bool ``(n_slices, image_size, image_size)``, in the order of ``knees``.
    """
    from kneelib.executor import map_tasks

    return map_tasks(_driver_slices_task, [(knee, config, driver_mask) for knee in knees], n_jobs=n_jobs,
                     progress=progress, desc="driver masks", unit="knee")


def knee_network_slices(knees: list, config, n_jobs: int | None = None, progress: bool = False) -> list:
    """The network-ready slices of each knee (:func:`~kneelib.preprocess.slice_features.prepare_slices`),
    read in worker processes; float32 ``(n_slices, image_size, image_size)`` in the order of ``knees``."""
    from kneelib.executor import map_tasks

    return map_tasks(_network_slices_task, [(knee, config) for knee in knees], n_jobs=n_jobs, progress=progress,
                     desc="network slices", unit="knee")
