"""Realism of the synthetic cohort, measured: sim-to-real transfer and discriminability (issue 10, item 4).

Two numbers say how close the synthetic knees are to real ones, neither tuned against
anything held out:

- **sim-to-real transfer** (:func:`sim_to_real_transfer`): paper 004's KL grader
  (Tiulpin & Saarakkala 2020, *Training strategy*; :func:`kneelib.train.grading.train_kl_model`)
  trained, and its epoch chosen, only on synthetic radiograph knee crops (a subject-level
  internal validation split of the *synthetic* subjects), then tested once on the real
  ``val`` crops of ``chen_kl_radiographs``: quadratic kappa on the full KL scale 0-4 with
  a subject-level bootstrap CI (:func:`kneelib.train.grading_evaluation.evaluate_kl`,
  groups = OAI participant id). Higher is more realistic (issue 10 target >= 0.5). No real
  image enters training, selection or calibration: the synthetic training set is refused
  if any of its files lies under the real data root (:func:`refuse_real_images`).
  Beside it stands the measure's ceiling (:func:`real_reference_transfer`): the same
  recipe trained on as many *real* ``train`` crops as the synthetic set has, tested on the
  same ``val`` crops; a perfectly realistic generator could reach about that, not more.
- **discriminability** (:func:`discriminability`): a small CNN (the multi-task network of
  :mod:`kneelib.models.multitask` with one two-class head ``"real"``) trained to tell real
  from synthetic images, subject-level split (no subject on both sides), same
  preprocessing for both; ROC AUC with a subject-level bootstrap CI
  (:func:`kneelib.stats.roc.auc_with_ci`). Lower is more realistic (target <= 0.85); what
  the network keys on is summarised by Grad-CAM (:mod:`kneelib.explain.gradcam`): the mean
  map over real and over synthetic test images (figure:
  :func:`kneelib.figures.realism.plot_discriminator_gradcam`). Radiographs: synthetic
  crops against the Chen ``train`` crops (the ``val`` crops stay the transfer test).
  MRI (:func:`mri_discriminability`): sagittal 3D DESS slices against the one real DESS
  exam of ``pykneer_knee_mri``.

Synthetic crops (:func:`synthetic_knee_crops`) are cut by
:func:`kneelib.preprocess.knee_crops.prepare_knees` at the *ground-truth* landmarks
(:class:`GroundTruthLocaliser`), so localiser error does not blur the comparison. Each is
framed on its knee as the Chen crops are (cut from detected knee boxes, so every knee
fills its crop alike): the side is ``width_per_plateau`` times the distance of the outer
plateau margins (:func:`plateau_framed_crop_mm`); a fixed field of view (``crop_mm``) made
small knees look small and large ones large, which real crops never do. Left knees are
mirrored in both sets.

The single entry point for the cohort chapter is :func:`measure_realism`.

One module (about 660 lines) because its guarantee is read as a whole: every function that
lets a crop into a training set (synthetic crops, the ceiling's real ``train`` crops, the
discriminators' sets) sits beside :func:`refuse_real_images` and the one place that grades
``val``, so that "no real image in synthetic training, ``val`` tested once" can be checked
in one file.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.errors import KneelibDataError
from kneelib.preprocess.knee_crops import CHEN_WIDTH_PER_PLATEAU

__all__ = ["DEFAULT_SETTINGS", "TRANSFER_SCHEDULE", "RealImageLeakError", "refuse_real_images", "GroundTruthLocaliser",
           "plateau_framed_crop_mm", "synthetic_knee_crops", "ground_truth_crops", "real_knee_crops", "sim_to_real_transfer", "real_reference_transfer", "quadratic_kappa_row",
           "grade_synthetic_crops",
           "subject_split",
           "discriminability", "radiograph_discriminability", "dess_slices", "real_dess_slices",
           "mri_discriminability", "measure_realism"]

#: Training schedule of the transfer grader (:func:`kneelib.train.multitask.transfer_phases`
#: keywords): heads alone at 1e-2 for one epoch, all layers at 3e-3 up to 75 % of the epochs,
#: then 3e-4 (the OARSI chapter's schedule). Chosen on real-to-real learning only (Chen
#: ``train`` split, half of its subjects to train on, the other half to test on; ``val``
#: unread, no synthetic image involved): at 128 px and 4 epochs on about 1,180 real crops it
#: reached a quadratic kappa of 0.67 on about 1,410 held-out crops, where paper 004's
#: schedule cut to 4 epochs (heads at 1e-2 for two epochs, all layers at 1e-3 for one, then
#: 1e-4) reached 0.39. A measure whose own ceiling is 0.39 cannot show a 0.5 target met.
#: ``None``: paper 004's schedule.
TRANSFER_SCHEDULE: dict = {"head_epochs": 1, "lrs": (1e-2, 3e-3, 3e-4), "decay_at": 0.75}

#: Settings of :func:`measure_realism` (the light ``default``; a key not here is refused).
DEFAULT_SETTINGS: dict = {
    "image_size": 128,             # network input of the radiograph networks (px)
    "crop_mm": None,               # side of every synthetic knee crop (mm); None: framed per knee, as below
    "width_per_plateau": CHEN_WIDTH_PER_PLATEAU,  # crop side / outer plateau margins' distance
    "n_synthetic_subjects": None,  # None: every participant of the cohort (both knees, both visits)
    "transfer_backbone": "efficientnet_lite0",
    "transfer_imagenet": True,
    "transfer_epochs": 4,          # light: the real-data chapter trains 5 epochs on ~2,400 crops
    "transfer_schedule": TRANSFER_SCHEDULE,
    "real_reference": True,        # also train the recipe on as many real train crops (the ceiling)
    "internal_fraction": 0.15,     # synthetic subjects held out for the epoch choice
    "batch_size": 32,
    "disc_backbone": "efficientnet_lite0",
    "disc_imagenet": True,
    "disc_epochs": 3,
    "disc_test_fraction": 0.3,     # share of subjects (each class) in the discriminator test set
    "n_real_subjects": 300,        # Chen ``train`` subjects for the radiograph discriminator
    "n_cam": 32,                   # test images per class in the Grad-CAM summary
    "mri_subjects": 40,            # synthetic SAG_3D_DESS_RIGHT exams (baseline)
    "mri_slices_per_exam": 4,
    "mri_image_size": 112,
    "mri_pixel_mm": 1.0,
    "mri_fov_mm": 124.0,
    "mri_central_fraction": 0.7,   # slices kept: the central share of each sagittal volume
    "mri_real_slabs": 4,           # contiguous slabs of the one real exam, alternately train/test
    "mri_gap_slices": 2,           # slices dropped either side of a train/test slab border
    "n_boot": 1000,
    "threads": 1,
    "progress": False,
}


class RealImageLeakError(KneelibDataError):
    """A file of a synthetic training set lies under the real data root."""


def refuse_real_images(paths, real_root) -> None:
    """Raise :class:`RealImageLeakError` if any of ``paths`` lies under ``real_root``.

    The guard of every synthetic training set of this module: a real image in training,
    epoch choice or calibration would make the transfer kappa meaningless.
    """
    if real_root is None:
        return
    root = Path(real_root).resolve()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved == root or root in resolved.parents:
            raise RealImageLeakError(f"{path}: a real image (under {root}) in a synthetic training set",
                                     path=path, reason="real image in a synthetic training set")


class GroundTruthLocaliser:
    """Stands in for the trained knee localiser: returns the cohort's ground-truth landmarks.

    Lets :func:`kneelib.preprocess.knee_crops.prepare_knees` crop every synthetic knee at
    its planted joint centre and plateau angle. It trained on nobody, so
    :meth:`check_unseen` accepts every subject. :meth:`predict` recognises the radiograph
    by the identity of the pixel array of ``radiographs`` (the dict that
    ``prepare_knees`` receives).
    """

    names = ("joint_centre", "plateau_lateral", "plateau_medial")
    trained_on: frozenset = frozenset()

    def __init__(self, knees: pd.DataFrame, radiographs: dict):
        self._path_of = {id(pixels): path for path, (pixels, _) in radiographs.items()}
        self._points = {(row.path, row.side): {name: (getattr(row, f"{name}_row"), getattr(row, f"{name}_col"))
                                               for name in self.names}
                        for row in knees.itertuples(index=False)}

    def check_unseen(self, subjects) -> None:
        """Nothing to refuse: no subject trained this 'localiser'."""

    def predict(self, image, spacing_mm: float, sides=("R", "L")) -> dict:
        """Ground-truth landmarks ``name -> (row, col)`` of the knees on ``sides`` of ``image``."""
        path = self._path_of.get(id(image))
        if path is None:
            raise KeyError("GroundTruthLocaliser: image is not one of the radiographs it was built with")
        return {side: self._points[(path, side)] for side in sides}


def plateau_framed_crop_mm(knees: pd.DataFrame, radiographs: dict, width_per_plateau: float) -> np.ndarray:
    """Side (mm) of each knee's crop: ``width_per_plateau`` times its outer plateau margins' distance.

    Frames every knee as a knee detector's box does (Chen et al. 2019 cut their crops from
    detected knee boxes and resized them): the knee's size, not a fixed field of view,
    sets the crop (:data:`kneelib.preprocess.knee_crops.CHEN_WIDTH_PER_PLATEAU`). ``knees``
    has ``path`` and ``plateau_margin_{lateral,medial}_{row,col}``
    (:func:`kneelib.data.knee_radiographs.load_synthetic_knees`); ``radiographs`` maps
    ``path`` to ``(pixels, spacing_mm)``.
    """
    if not width_per_plateau > 0:
        raise ValueError(f"width_per_plateau must be positive, got {width_per_plateau}")
    lateral = knees[["plateau_margin_lateral_row", "plateau_margin_lateral_col"]].to_numpy(float)
    medial = knees[["plateau_margin_medial_row", "plateau_margin_medial_col"]].to_numpy(float)
    spacing = np.array([float(radiographs[path][1]) for path in knees["path"]])
    return width_per_plateau * np.hypot(*(lateral - medial).T) * spacing


def synthetic_knee_crops(synthetic_root, image_size: int, crop_mm: float | None = None,
                         n_subjects: int | None = None, seed: int = 0, real_root=None, progress: bool = False,
                         width_per_plateau: float = CHEN_WIDTH_PER_PLATEAU):
    """Knee crops of a synthetic OAI-format cohort at the ground-truth landmarks.

    ``crop_mm`` fixes the crop side for every knee; ``None`` (default) frames each knee
    like the real Chen crops (:func:`plateau_framed_crop_mm`, ``width_per_plateau``).

    Returns
    -------
    PreparedKnees
        ``images`` (n, S, S) uint8 with S = ``resize_for_crop(image_size)``, ``targets``
        (KL first), ``knees`` with ``participant_id``.

    Raises
    ------
    RealImageLeakError
        If a radiograph of the cohort lies under ``real_root``.
    """
    from kneelib.data.chen_kl import stratified_subject_subset
    from kneelib.data.knee_radiographs import load_synthetic_knees, read_radiographs

    knees = load_synthetic_knees(synthetic_root)
    knees = stratified_subject_subset(knees, n_subjects, seed=seed, subject_column="participant_id")
    refuse_real_images(knees["path"], real_root)
    radiographs = read_radiographs(knees, progress=progress)
    return ground_truth_crops(knees, radiographs, image_size, crop_mm, width_per_plateau, progress=progress)


def ground_truth_crops(knees: pd.DataFrame, radiographs: dict, image_size: int, crop_mm: float | None = None,
                       width_per_plateau: float = CHEN_WIDTH_PER_PLATEAU, progress: bool = False):
    """Crops of synthetic radiographs at their ground-truth landmarks (the realism measures' crops).

    ``knees`` as :func:`kneelib.data.knee_radiographs.load_synthetic_knees` (``path`` keys
    ``radiographs``, which maps it to ``(pixels, spacing_mm)``); ``crop_mm`` fixes the
    crop side, ``None`` frames each knee (:func:`plateau_framed_crop_mm`).
    """
    from kneelib.preprocess.knee_crops import prepare_knees

    sizes_mm = crop_mm if crop_mm is not None else plateau_framed_crop_mm(knees, radiographs, width_per_plateau)
    return prepare_knees(knees, radiographs, GroundTruthLocaliser(knees, radiographs), image_size,
                         size_mm=sizes_mm, progress=progress)


def real_knee_crops(real_root, split: str, image_size: int, n_subjects: int | None = None, seed: int = 0,
                    progress: bool = False, n_crops: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Chen KL crops of one split (``real_root/chen_kl_radiographs``), prepared like the synthetic ones.

    Left knees are mirrored (as the synthetic crops); histogram clipping 5-99% and the
    310/300 resize of :func:`kneelib.preprocess.knee_crops.prepare_images`.
    ``n_subjects``: about that many subjects, grade-stratified; ``n_crops`` instead: the
    fewest subjects, drawn in a seeded random order, whose knees make at least ``n_crops``
    crops (all of a subject's knees or none).
    """
    from kneelib.data.chen_kl import CHEN_KL_FOLDER, read_chen_kl, stratified_subject_subset
    from kneelib.preprocess.knee_crops import prepare_images

    if n_subjects is not None and n_crops is not None:
        raise ValueError("give n_subjects or n_crops, not both")
    table = read_chen_kl(Path(real_root) / CHEN_KL_FOLDER)
    table = table[table["split"] == split].reset_index(drop=True)
    if n_crops is not None:
        per_subject = table.groupby("oai_id").size()
        order = np.random.default_rng(seed).permutation(per_subject.index.to_numpy())
        needed = int(np.searchsorted(per_subject[order].cumsum().to_numpy(), n_crops)) + 1
        table = table[table["oai_id"].isin(set(order[:needed]))].reset_index(drop=True)
    else:
        table = stratified_subject_subset(table, n_subjects, seed=seed, subject_column="oai_id")
    return prepare_images(table, image_size, mirror_side="L", progress=progress), table


def quadratic_kappa_row(evaluation: dict) -> pd.Series:
    """The model's quadratic-kappa row (``estimate``, ``ci_low``, ``ci_high``, ``unit``) of
    :func:`kneelib.train.grading_evaluation.evaluate_kl`'s agreement table."""
    table = evaluation["table"]
    return table[(table["model"] == "model") & (table["metric"] == "quadratic_kappa")].iloc[0]


def grade_synthetic_crops(model, crops, image_size: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """Real-to-synthetic: a KL grader trained on real crops only grades synthetic crops.

    The reverse of :func:`sim_to_real_transfer`, and the "GAN-test" of Shmelkov et al.
    (ECCV 2018, "How good is my GAN?"): a classifier trained on real images, applied to
    generated ones, scores how well they carry the real class signs. Here the class is each
    synthetic knee's planted KL grade: a knee drawn as KL 3 that looks like a real KL 3
    knee is graded 3. No network is trained on synthetic images, so the number moves only
    with the films.

    Parameters
    ----------
    model : MultiTaskNet or list of MultiTaskNet
        A KL grader trained on real crops (its ``kl`` head), or several: their mean
        probabilities grade, and ``kappa_per_grader`` holds each one's kappa.
    crops : PreparedKnees
        Synthetic crops (:func:`synthetic_knee_crops`; planted KL in ``targets[:, 0]``).
    image_size, n_boot, seed
        Network input; bootstrap resamples (over synthetic subjects) and their seed.

    Returns
    -------
    dict
        ``kappa``, ``ci_low``, ``ci_high`` (quadratic kappa, planted vs predicted KL, CI over
        synthetic subjects), ``unit``, ``confusion`` (DataFrame, planted x predicted, knee
        counts), ``mean_probabilities`` (DataFrame, planted grade x predicted grade),
        ``expected_grade`` (mean predicted grade per planted grade), ``predicted_counts``,
        ``planted_counts``, ``n_crops``, ``n_subjects``, ``kappa_per_grader``.
    """
    from kneelib.stats.agreement import quadratic_kappa
    from kneelib.stats.bootstrap import bootstrap_ci
    from kneelib.train.multitask import predict_probabilities

    models = list(model) if isinstance(model, (list, tuple)) else [model]
    each = [predict_probabilities(m, crops.images, image_size)["kl"] for m in models]
    probabilities = np.mean(each, axis=0)
    planted = np.asarray(crops.targets[:, 0]).astype(int)
    predicted = probabilities.argmax(axis=1)
    subjects = np.asarray(crops.subjects).astype(str)
    kappa = bootstrap_ci(lambda y, p: quadratic_kappa(y, p, grades=range(5)), planted, predicted, n_boot=n_boot,
                         seed=seed, groups=subjects)
    grades = pd.Index(range(5), name="planted KL")
    confusion = pd.crosstab(pd.Categorical(planted, categories=range(5)),
                            pd.Categorical(predicted, categories=range(5)), dropna=False)
    confusion.index, confusion.columns = grades, pd.Index(range(5), name="predicted KL")
    mean_probabilities = pd.DataFrame([probabilities[planted == g].mean(axis=0) if (planted == g).any()
                                       else np.full(5, np.nan) for g in range(5)], index=grades,
                                      columns=pd.Index(range(5), name="predicted KL"))
    return {"kappa": kappa.estimate, "ci_low": kappa.ci_low, "ci_high": kappa.ci_high, "unit": kappa.unit,
            "confusion": confusion, "mean_probabilities": mean_probabilities,
            "expected_grade": (mean_probabilities * np.arange(5)).sum(axis=1, min_count=1),
            "predicted_counts": np.bincount(predicted, minlength=5).tolist(),
            "planted_counts": np.bincount(planted, minlength=5).tolist(), "n_crops": int(len(planted)),
            "n_subjects": int(len(np.unique(subjects))),
            "kappa_per_grader": [float(quadratic_kappa(planted, p.argmax(axis=1), grades=range(5))) for p in each]}


def _grade_val_after_training(images, grades, subjects, real_root, image_size: int, backbone: str, imagenet: bool,
                              max_epochs: int, internal_fraction: float, batch_size: int,
                              transfer_schedule: dict | None, n_boot: int, seed: int, threads: int,
                              progress: bool, synthetic_crops=None) -> dict:
    """Carve a subject-level internal split, train the KL grader, grade the real ``val`` crops once.

    The one implementation behind :func:`sim_to_real_transfer` and
    :func:`real_reference_transfer`: they differ only in the crops they train on. With
    ``synthetic_crops`` the trained grader also grades them (:func:`grade_synthetic_crops`,
    under ``real_to_synthetic``; for a grader trained on real crops only).
    """
    from kneelib.data.chen_kl import carve_internal_validation
    from kneelib.train.grading import set_determinism, train_kl_model
    from kneelib.train.grading_evaluation import evaluate_kl
    from kneelib.train.multitask import predict_probabilities

    table = pd.DataFrame({"row": np.arange(len(images)), "kl_grade": np.asarray(grades).astype(int),
                          "subject": np.asarray(subjects).astype(str)})
    train, internal = carve_internal_validation(table, internal_fraction, seed=seed, grade_column="kl_grade",
                                                subject_column="subject")
    train_rows, internal_rows = train["row"].to_numpy(), internal["row"].to_numpy()
    grades = table["kl_grade"].to_numpy()
    set_determinism(seed, threads)
    model, history, best_epoch = train_kl_model(
        images[train_rows], grades[train_rows], images[internal_rows], grades[internal_rows],
        image_size, max_epochs, backbone=backbone, imagenet=imagenet, batch_size=batch_size,
        show_progress=progress, transfer_schedule=transfer_schedule)
    real_images, real_table = real_knee_crops(real_root, "val", image_size, progress=progress)
    probabilities = predict_probabilities(model, real_images, image_size)["kl"]
    evaluation = evaluate_kl(real_table["kl_grade"], probabilities, grades[train_rows], real_table["oai_id"],
                             n_boot=n_boot, seed=seed)
    kappa = quadratic_kappa_row(evaluation)
    agreement = evaluation["table"]
    return {"kappa": float(kappa["estimate"]), "ci_low": float(kappa["ci_low"]), "ci_high": float(kappa["ci_high"]),
            "unit": str(kappa.get("unit", "subjects")), "n_test_crops": len(real_table),
            "n_test_subjects": int(real_table["oai_id"].nunique()), "n_train_crops": len(train_rows),
            "n_internal_crops": len(internal_rows), "best_epoch": int(best_epoch) if best_epoch else None,
            "n_train_subjects": int(train["subject"].nunique()),
            "table": agreement, "history": history, "predicted": evaluation["predicted"],
            "real_to_synthetic": (None if synthetic_crops is None else
                                  grade_synthetic_crops(model, synthetic_crops, image_size, n_boot, seed))}


def sim_to_real_transfer(synthetic_root, real_root, image_size: int = 128, crop_mm: float | None = None,
                         backbone: str = "efficientnet_lite0", imagenet: bool = True, max_epochs: int = 4,
                         internal_fraction: float = 0.15, batch_size: int = 32, n_synthetic_subjects=None,
                         n_boot: int = 1000, seed: int = 0, threads: int = 1, crops=None,
                         progress: bool = False, width_per_plateau: float = CHEN_WIDTH_PER_PLATEAU,
                         transfer_schedule: dict | None = TRANSFER_SCHEDULE) -> dict:
    """KL grader trained and selected on synthetic crops only, tested once on the real ``val`` crops.

    Parameters
    ----------
    synthetic_root : path
        Synthetic OAI-format cohort (:func:`kneelib.synth.cohort.generate_cohort`).
    real_root : path
        Data root holding ``chen_kl_radiographs/`` (``$KNEELIB_DATA``).
    image_size, crop_mm, backbone, imagenet, max_epochs, batch_size
        The grader; ``crop_mm`` and ``width_per_plateau`` frame the synthetic crops
        (:func:`synthetic_knee_crops`).
    transfer_schedule : dict or None
        :data:`TRANSFER_SCHEDULE` (default); ``None``: paper 004's schedule cut to ``max_epochs``.
    internal_fraction : float
        Share of the *synthetic* subjects held out to choose the epoch (best kappa).
    crops : PreparedKnees, optional
        Synthetic crops already made (:func:`synthetic_knee_crops`); checked against
        ``real_root`` again.

    Returns
    -------
    dict
        ``kappa``, ``ci_low``, ``ci_high``, ``unit`` (subjects), ``n_test_crops``,
        ``n_test_subjects``, ``n_train_crops``, ``n_internal_crops``, ``n_train_subjects``,
        ``best_epoch``, ``table`` (model / majority / chance agreement on real ``val``),
        ``history``, ``predicted``.

    Raises
    ------
    RealImageLeakError
        If a training or internal-validation file lies under ``real_root``.
    """
    if crops is None:
        crops = synthetic_knee_crops(synthetic_root, image_size, crop_mm, n_synthetic_subjects, seed=seed,
                                     real_root=real_root, progress=progress, width_per_plateau=width_per_plateau)
    refuse_real_images(crops.knees["path"], real_root)
    return _grade_val_after_training(crops.images, crops.targets[:, 0], crops.knees["participant_id"], real_root,
                                     image_size, backbone, imagenet, max_epochs, internal_fraction, batch_size,
                                     transfer_schedule, n_boot, seed, threads, progress)


def real_reference_transfer(real_root, n_crops: int, image_size: int = 128, backbone: str = "efficientnet_lite0",
                            imagenet: bool = True, max_epochs: int = 4, internal_fraction: float = 0.15,
                            batch_size: int = 32, transfer_schedule: dict | None = TRANSFER_SCHEDULE,
                            n_boot: int = 1000, seed: int = 0, threads: int = 1, progress: bool = False,
                            synthetic_crops=None) -> dict:
    """The sim-to-real measure's ceiling: its recipe trained on ``n_crops`` *real* crops, tested on ``val``.

    The grader of :func:`sim_to_real_transfer` (same network, schedule, epochs, internal
    split and test crops), trained on about ``n_crops`` real Chen ``train`` crops (all knees
    of subjects drawn at random, :func:`real_knee_crops` ``n_crops``) instead of synthetic
    ones. A generator whose films were indistinguishable from the OAI's would reach about
    this kappa with as many crops; the sim-to-real kappa reads against it. It chooses
    nothing: no setting and no generator change is picked by it. With ``synthetic_crops``
    the same real-trained grader also grades the synthetic knees (``real_to_synthetic``,
    :func:`grade_synthetic_crops`).

    Returns
    -------
    dict
        As :func:`sim_to_real_transfer` (``kappa``, ``ci_low``, ``ci_high``, ``n_train_crops``,
        ``n_train_subjects``, ...), and ``real_to_synthetic`` (``None`` without ``synthetic_crops``).
    """
    images, table = real_knee_crops(real_root, "train", image_size, seed=seed, progress=progress, n_crops=n_crops)
    return _grade_val_after_training(images, table["kl_grade"], table["oai_id"], real_root, image_size, backbone,
                                     imagenet, max_epochs, internal_fraction, batch_size, transfer_schedule, n_boot,
                                     seed, threads, progress, synthetic_crops=synthetic_crops)


def subject_split(subjects, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean test mask: a random ``test_fraction`` of the distinct subjects, all their rows."""
    subjects = np.asarray(subjects).astype(str)
    unique = np.unique(subjects)
    if len(unique) < 2:
        raise ValueError(f"a subject-level split needs at least 2 subjects, got {len(unique)}")
    rng = np.random.default_rng(seed)
    n_test = min(len(unique) - 1, max(1, int(round(test_fraction * len(unique)))))
    test_subjects = set(rng.choice(unique, size=n_test, replace=False))
    return np.array([s in test_subjects for s in subjects])


def discriminability(synthetic_images: np.ndarray, synthetic_subjects, real_images: np.ndarray, real_subjects,
                     image_size: int, backbone: str = "efficientnet_lite0", imagenet: bool = True,
                     max_epochs: int = 3, batch_size: int = 32, test_fraction: float = 0.3,
                     synthetic_test=None, real_test=None, n_boot: int = 1000, n_cam: int = 32,
                     seed: int = 0, threads: int = 1, progress: bool = False) -> dict:
    """Real-vs-synthetic CNN: AUC with a subject-level CI and a Grad-CAM summary.

    The network (:func:`kneelib.models.multitask.build_multitask_model` with one head
    ``{"real": 2}``) trains a fixed ``max_epochs`` on the training subjects of both
    classes (the larger class subsampled to the smaller, so the loss is balanced), with
    paper 004's augmentation; no epoch choice, the last weights are tested. Nothing of
    the test subjects steers training.

    Parameters
    ----------
    synthetic_images, real_images : ndarray, (n, S, S) uint8
        Prepared the same way, ``S >= image_size`` (central crop at test time).
    synthetic_subjects, real_subjects : array-like
        Subject of each image (the unit of the split and of the bootstrap).
    synthetic_test, real_test : boolean arrays, optional
        Given test masks (e.g. slabs of one real exam); default a random
        ``test_fraction`` of the subjects of each class (:func:`subject_split`).

    Returns
    -------
    dict
        ``auc``, ``ci_low``, ``ci_high``, ``unit``, ``n_test_real``, ``n_test_synthetic``,
        ``n_train_real``, ``n_train_synthetic``, ``history``, and ``gradcam``:
        ``mean_image`` / ``sd_image`` (class -> (image_size, image_size) mean and standard
        deviation of the network input over every test image of the class: how alike its
        images are, pixel by pixel), ``spread`` (class -> the SD image's mean),
        ``mean_cam`` (mean Grad-CAM of the predicted class over up to ``n_cam`` test
        images), ``examples`` (class -> (inputs, cams)), ``border_share`` (class -> mean
        share of the CAM mass in the outer eighth of the image).

    Raises
    ------
    ValueError
        If a subject is on both sides of the split.
    """
    import torch

    from kneelib.explain.gradcam import grad_cam, upsample_cams
    from kneelib.models.multitask import build_multitask_model
    from kneelib.stats.roc import auc_with_ci
    from kneelib.train.grading import set_determinism
    from kneelib.train.multitask import (RadiographDataset, build_learner, fit_phases, make_dataloaders,
                                         predict_probabilities, transfer_phases, scratch_phases)

    images = np.concatenate([np.asarray(synthetic_images), np.asarray(real_images)])
    labels = np.r_[np.zeros(len(synthetic_images), int), np.ones(len(real_images), int)]
    groups = np.r_[[f"synthetic:{s}" for s in synthetic_subjects], [f"real:{s}" for s in real_subjects]]
    if synthetic_test is None:
        synthetic_test = subject_split(synthetic_subjects, test_fraction, seed)
    if real_test is None:
        real_test = subject_split(real_subjects, test_fraction, seed + 1)
    test = np.r_[np.asarray(synthetic_test, bool), np.asarray(real_test, bool)]
    both = set(groups[test]) & set(groups[~test])
    if both:
        raise ValueError(f"subject(s) on both sides of the discriminator split: {sorted(both)[:5]}")
    rng = np.random.default_rng(seed)
    train_rows = [np.flatnonzero(~test & (labels == c)) for c in (0, 1)]
    n_each = min(len(r) for r in train_rows)
    if n_each == 0 or test[labels == 0].sum() == 0 or test[labels == 1].sum() == 0:
        raise ValueError("each class needs training and test images")
    train_rows = np.sort(np.concatenate([rng.choice(r, size=n_each, replace=False) for r in train_rows]))
    set_determinism(seed, threads)
    model = build_multitask_model(backbone, {"real": 2}, imagenet=imagenet)
    monitor = train_rows[rng.choice(len(train_rows), size=min(64, len(train_rows)), replace=False)]
    dls = make_dataloaders(RadiographDataset(images[train_rows], labels[train_rows], image_size, augment=True),
                           RadiographDataset(images[monitor], labels[monitor], image_size, augment=False),
                           batch_size=batch_size)
    learn = build_learner(model, dls, monitor_task="real")
    phases = transfer_phases(max_epochs) if imagenet else scratch_phases(max_epochs, 1e-3)
    # monitored on training images only: no choice
    history = fit_phases(learn, phases, restore_best=False, show_progress=progress)
    model.eval()
    test_rows = np.flatnonzero(test)
    score = predict_probabilities(model, images[test_rows], image_size)["real"][:, 1]
    auc = auc_with_ci(labels[test_rows], score, method="bootstrap", n_boot=n_boot, seed=seed,
                      groups=groups[test_rows])
    summary = {"mean_image": {}, "sd_image": {}, "spread": {}, "mean_cam": {}, "examples": {}, "border_share": {}}
    dataset = RadiographDataset(images, labels, image_size, augment=False)
    for c, name in ((1, "real"), (0, "synthetic")):
        rows = test_rows[labels[test_rows] == c]
        # mean and spread of the network inputs over every test image of the class: how alike
        # the knees are (anatomy, positioning, framing), pixel by pixel; the Grad-CAM batch
        # is a subset of these inputs, not built again
        every_input = torch.stack([dataset.image_tensor(i) for i in rows])
        first_channel = every_input[:, 0].numpy()
        summary["mean_image"][name] = first_channel.mean(axis=0)
        summary["sd_image"][name] = first_channel.std(axis=0)
        summary["spread"][name] = float(summary["sd_image"][name].mean())
        chosen = np.sort(rng.choice(rows, size=min(n_cam, len(rows)), replace=False))
        batch = every_input[np.searchsorted(rows, chosen)]
        del every_input, first_channel
        cams, _ = grad_cam(model, batch, "real")
        cams_up = upsample_cams(cams, (image_size, image_size))
        inputs = batch[:, 0].numpy()
        edge = max(1, image_size // 8)
        inner = np.zeros((image_size, image_size), bool)
        inner[edge:-edge, edge:-edge] = True
        mass = cams_up.reshape(len(chosen), -1).sum(axis=1)
        border = np.where(mass > 0, cams_up[:, ~inner].sum(axis=1) / np.maximum(mass, 1e-12), np.nan)
        summary["mean_cam"][name] = cams_up.mean(axis=0)
        summary["examples"][name] = (inputs[:4], cams_up[:4])
        summary["border_share"][name] = float(np.nanmean(border)) if np.isfinite(border).any() else float("nan")
    return {"auc": auc.auc, "ci_low": auc.ci_low, "ci_high": auc.ci_high, "unit": auc.unit,
            "n_test_real": int((labels[test_rows] == 1).sum()), "n_test_synthetic": int((labels[test_rows] == 0).sum()),
            "n_test_real_subjects": len({g for g in groups[test_rows] if g.startswith("real:")}),
            "n_test_synthetic_subjects": len({g for g in groups[test_rows] if g.startswith("synthetic:")}),
            "n_train_real": int(n_each), "n_train_synthetic": int(n_each), "history": history, "gradcam": summary}


def radiograph_discriminability(crops, real_root, image_size: int = 128, n_real_subjects: int | None = 300,
                                seed: int = 0, progress: bool = False, **options) -> dict:
    """:func:`discriminability` of synthetic knee crops against Chen ``train`` crops (subjects = OAI ids)."""
    refuse_real_images(crops.knees["path"], real_root)
    real_images, real_table = real_knee_crops(real_root, "train", image_size, n_real_subjects, seed=seed,
                                              progress=progress)
    result = discriminability(crops.images, crops.subjects, real_images, real_table["oai_id"].to_numpy(),
                              image_size, seed=seed, progress=progress, **options)
    result["caveat"] = "real = Chen train crops (OAI); their val crops are kept for the transfer test"
    return result


def _slice_image(plane: np.ndarray, spacing_rc, pixel_mm: float, fov_mm: float) -> np.ndarray:
    """One sagittal slice -> ``pixel_mm`` grid, central ``fov_mm`` square, 1-99.5% clipped, uint8."""
    from scipy import ndimage

    plane = ndimage.zoom(np.asarray(plane, np.float32), (spacing_rc[0] / pixel_mm, spacing_rc[1] / pixel_mm),
                         order=1)
    size = int(round(fov_mm / pixel_mm))
    out = np.full((size, size), float(plane.min()), np.float32)
    rows, cols = plane.shape
    top, left = (rows - size) // 2, (cols - size) // 2
    src = plane[max(top, 0):max(top, 0) + min(size, rows), max(left, 0):max(left, 0) + min(size, cols)]
    out[max(-top, 0):max(-top, 0) + src.shape[0], max(-left, 0):max(-left, 0) + src.shape[1]] = src
    low, high = np.percentile(out, [1.0, 99.5])
    return np.round(np.clip((out - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def _volume_slices(volume, indices, pixel_mm: float, fov_mm: float) -> np.ndarray:
    """Sagittal slices (RAS axis 0) of a volume in the common orientation, displayed superior up."""
    _, sy, sz = volume.spacing_mm
    return np.stack([_slice_image(volume.array[i].T[::-1], (sz, sy), pixel_mm, fov_mm) for i in indices])


def _central_indices(n: int, fraction: float) -> np.ndarray:
    margin = int(round(n * (1 - fraction) / 2))
    return np.arange(margin, n - margin)


def dess_slices(synthetic_root, n_subjects: int, slices_per_exam: int, pixel_mm: float = 1.0,
                fov_mm: float = 124.0, central_fraction: float = 0.7, seed: int = 0, real_root=None,
                series: str = "SAG_3D_DESS_RIGHT") -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced central sagittal DESS slices of ``n_subjects`` baseline exams of a synthetic cohort.

    Participants are drawn in a seeded random order; a series the reader refuses (a
    planted artefact such as missing slices) is passed over for the next participant.
    Returns ``(images uint8 (n, F, F), participant id per image)``.
    """
    from kneelib.data import read_image_index
    from kneelib.data.dicom import read_dicom_series, to_common_orientation

    table = read_image_index(Path(synthetic_root) / "contents.csv").table
    table = table[(table["SeriesDescription"] == series) & (table["VISIT"] == 0)]
    refuse_real_images(table["path"], real_root)
    table = table.assign(participant=table["ParticipantID"].astype(str)).drop_duplicates("participant")
    order = np.random.default_rng(seed).permutation(np.sort(table["participant"].to_numpy()))
    path_of = dict(zip(table["participant"], table["path"]))
    images, subjects, skipped = [], [], []
    for participant in order:
        if len(images) >= n_subjects:
            break
        try:  # a series with a planted artefact (e.g. missing slices) is refused by the reader: take the next
            volume = read_dicom_series(path_of[participant])
        except KneelibDataError as error:
            skipped.append((participant, str(error.reason)))
            continue
        volume = to_common_orientation(volume, side="R" if series.endswith("RIGHT") else "L")
        central = _central_indices(volume.shape[0], central_fraction)
        picks = central[np.linspace(0, len(central) - 1, slices_per_exam).round().astype(int)]
        images.append(_volume_slices(volume, picks, pixel_mm, fov_mm))
        subjects += [participant] * len(picks)
    if not images:
        raise KneelibDataError(f"no readable {series} series in {synthetic_root} ({len(skipped)} refused)",
                               path=synthetic_root, reason="no readable DESS series")
    return np.concatenate(images), np.array(subjects)


def real_dess_slices(real_root, n_slabs: int = 4, gap_slices: int = 2, pixel_mm: float = 1.0,
                     fov_mm: float = 124.0, central_fraction: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central sagittal slices of the one real DESS exam (``pykneer_knee_mri/DESS_echo1``), by contiguous slab.

    The central slices are cut into ``n_slabs`` contiguous slabs, alternately training
    and test (odd slabs test); ``gap_slices`` either side of each border are dropped so
    that neighbouring slices do not straddle the split.

    Returns
    -------
    images : ndarray uint8 (n, F, F)
    slabs : ndarray of str
        ``"slab<k>"``: the cluster of the bootstrap (one exam: a CI over slabs, not over people).
    test : ndarray of bool
    """
    from kneelib.data.dicom import read_dicom_series, to_common_orientation

    volume = to_common_orientation(read_dicom_series(Path(real_root) / "pykneer_knee_mri" / "DESS_echo1"), side="R")
    central = _central_indices(volume.shape[0], central_fraction)
    slab_of = np.minimum((np.arange(len(central)) * n_slabs) // len(central), n_slabs - 1)
    keep = np.ones(len(central), bool)
    for border in np.flatnonzero(np.diff(slab_of)) + 1:
        keep[max(0, border - gap_slices):border + gap_slices] = False
    indices, slab_of = central[keep], slab_of[keep]
    return (_volume_slices(volume, indices, pixel_mm, fov_mm), np.array([f"slab{k}" for k in slab_of]),
            slab_of % 2 == 1)


def mri_discriminability(synthetic_root, real_root, n_subjects: int = 40, slices_per_exam: int = 4,
                         image_size: int = 112, pixel_mm: float = 1.0, fov_mm: float = 124.0,
                         central_fraction: float = 0.7, n_slabs: int = 4, gap_slices: int = 2,
                         seed: int = 0, **options) -> dict:
    """:func:`discriminability` of synthetic SAG 3D DESS slices against the real DESS exam.

    Caveat: there is one real exam (pyKNEEr demo, GE 3 T, not OAI). Its slices are split
    by contiguous slab (:func:`real_dess_slices`), so the test measures how well the
    network recognises *this* knee and scanner in unseen slabs; the CI resamples synthetic
    subjects and real slabs and says nothing about variation between real exams.
    """
    synthetic, subjects = dess_slices(synthetic_root, n_subjects, slices_per_exam, pixel_mm, fov_mm,
                                      central_fraction, seed=seed, real_root=real_root)
    real, slabs, real_test = real_dess_slices(real_root, n_slabs, gap_slices, pixel_mm, fov_mm, central_fraction)
    result = discriminability(synthetic, subjects, real, slabs, image_size, real_test=real_test, seed=seed,
                              **options)
    result["caveat"] = ("one real DESS exam (pyKNEEr demo, GE 3 T): real slices split by contiguous slab, "
                        "the CI resamples slabs, not real people")
    return result


def measure_realism(synthetic_root, real_root, settings: dict | None = None, seed: int = 0) -> dict:
    """Both realism numbers of issue 10 (item 4) for one synthetic cohort: the cohort chapter's entry point.

    Parameters
    ----------
    synthetic_root : path
        A synthetic OAI-format cohort folder.
    real_root : path
        The real data root (``$KNEELIB_DATA``) with ``chen_kl_radiographs/`` and
        ``pykneer_knee_mri/``.
    settings : dict, optional
        Overrides of :data:`DEFAULT_SETTINGS` (an unknown key raises ``ValueError``).
    seed : int

    Returns
    -------
    dict
        ``transfer`` (:func:`sim_to_real_transfer`: ``kappa, ci_low, ci_high, ...``),
        ``real_reference`` (:func:`real_reference_transfer` with as many crops as the
        synthetic grader saw, its ``real_to_synthetic`` grading every synthetic crop;
        ``None`` when the ``real_reference`` setting is off),
        ``radiograph_discriminability`` and ``mri_discriminability``
        (:func:`discriminability`: ``auc, ci_low, ci_high, ..., gradcam`` with the
        figure data of :func:`kneelib.figures.realism.plot_discriminator_gradcam`,
        ``caveat``), ``settings`` (the merged settings), ``seconds`` (wall time per part and total).
    """
    unknown = set(settings or {}) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown realism setting(s) {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
    s = {**DEFAULT_SETTINGS, **(settings or {})}
    seconds, start = {}, time.perf_counter()
    crops = synthetic_knee_crops(synthetic_root, s["image_size"], s["crop_mm"], s["n_synthetic_subjects"], seed=seed,
                                 real_root=real_root, progress=s["progress"], width_per_plateau=s["width_per_plateau"])
    seconds["synthetic_crops"] = time.perf_counter() - start
    mark = time.perf_counter()
    transfer = sim_to_real_transfer(
        synthetic_root, real_root, s["image_size"], s["crop_mm"], s["transfer_backbone"], s["transfer_imagenet"],
        s["transfer_epochs"], s["internal_fraction"], s["batch_size"], n_boot=s["n_boot"], seed=seed,
        threads=s["threads"], crops=crops, progress=s["progress"], transfer_schedule=s["transfer_schedule"])
    seconds["transfer"] = time.perf_counter() - mark
    reference = None
    if s["real_reference"]:
        mark = time.perf_counter()
        reference = real_reference_transfer(
            real_root, transfer["n_train_crops"] + transfer["n_internal_crops"], s["image_size"],
            s["transfer_backbone"], s["transfer_imagenet"], s["transfer_epochs"], s["internal_fraction"],
            s["batch_size"], s["transfer_schedule"], s["n_boot"], seed, s["threads"], s["progress"],
            synthetic_crops=crops)
        seconds["real_reference"] = time.perf_counter() - mark
    common = dict(backbone=s["disc_backbone"], imagenet=s["disc_imagenet"], max_epochs=s["disc_epochs"],
                  batch_size=s["batch_size"], test_fraction=s["disc_test_fraction"], n_boot=s["n_boot"],
                  n_cam=s["n_cam"], threads=s["threads"])
    mark = time.perf_counter()
    radiograph = radiograph_discriminability(crops, real_root, s["image_size"], s["n_real_subjects"], seed=seed,
                                             progress=s["progress"], **common)
    seconds["radiograph_discriminability"] = time.perf_counter() - mark
    mark = time.perf_counter()
    mri = mri_discriminability(synthetic_root, real_root, s["mri_subjects"], s["mri_slices_per_exam"],
                               s["mri_image_size"], s["mri_pixel_mm"], s["mri_fov_mm"], s["mri_central_fraction"],
                               s["mri_real_slabs"], s["mri_gap_slices"], seed=seed, progress=s["progress"], **common)
    seconds["mri_discriminability"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return {"transfer": transfer, "real_reference": reference, "radiograph_discriminability": radiograph,
            "mri_discriminability": mri, "settings": s, "seconds": seconds}
