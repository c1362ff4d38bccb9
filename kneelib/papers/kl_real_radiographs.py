"""Paper 004 -- Tiulpin & Saarakkala (2020), KL grader on real knee radiographs (Chen et al. 2019 crops).

Composes the stage functions for ``notebooks/kl_real_radiographs.ipynb``; it holds no
algorithm:

- data: :mod:`kneelib.data.chen_kl` (subject-level train / internal validation / val;
  the subject is the OAI participant id of ``labels.csv``);
- preprocessing (*Data Pre-processing*): :func:`kneelib.preprocess.knee_crops.prepare_images`;
- the recipe (issue 14): :class:`kneelib.train.grading.KLRecipe`, trained per held-out fold by
  :func:`kneelib.train.grading.train_kl_folds` (one model with an internal split, or an
  ensemble of subject-level CV models); test-time augmentation, temperature and decoding chosen on held-out
  ``train`` predictions (:func:`kneelib.train.grading.choose_kl_inference`); the
  out-of-distribution reference (:func:`kneelib.train.grading.fit_kl_feature_density`);
- recipe comparison by cross-validation on ``train`` (:func:`compare_recipes`, records in
  :data:`DEVELOPMENT_CV`);
- statistics (*Test-set Performance*, Table 3): :func:`kneelib.train.grading_evaluation.evaluate_kl`,
  subject-level bootstrap CIs; calibration: :mod:`kneelib.stats.calibration`;
- the saved grader and ``grade-kl``: :mod:`kneelib.grade_kl`;
- figures: :mod:`kneelib.figures.grading`;
- published values: ``book/published.yml`` (``values: kl_real_radiographs``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.data.chen_kl import KLCohort, cohort_summary, load_chen_kl_cohort
from kneelib.figures.grading import (plot_confusion, plot_history, plot_kl_grad_cams, plot_metric_bars,
                                     plot_reliability)
from kneelib.grade_kl import grade_kl_folder, load_kl_grader, model_path_for, save_kl_model
from kneelib.preprocess.knee_crops import prepare_images
from kneelib.stats.calibration import apply_temperature
from kneelib.train.grading import (KLRecipe, choose_kl_inference, ensemble_kl_probabilities, fit_kl_feature_density,
                                   set_determinism, train_kl_folds, train_kl_model)
from kneelib.train.grading_evaluation import evaluate_kl, kl_grad_cams

__all__ = [
    "REAL_STUDY", "published", "KLCohort", "load_chen_kl_cohort", "cohort_summary", "prepare_images",
    "set_determinism", "train_kl_model", "evaluate_kl", "kl_grad_cams", "model_path_for", "save_kl_model",
    "grade_kl_folder", "plot_history", "plot_confusion", "plot_metric_bars", "plot_kl_grad_cams",
    "kl_comparisons", "plot_reliability", "load_kl_grader", "KLRecipe", "train_kl_folds", "choose_kl_inference",
    "ensemble_kl_probabilities", "fit_kl_feature_density", "DEVELOPMENT_CV", "training_knees", "cv_metrics",
    "compare_recipes", "development_rows", "append_development_rows", "development_cv", "development_summary",
    "recipe_from_params", "describe_inference",
    "chapter_folds", "model_file_for", "parameter_set", "fold_checkpoint_dir",
    "val_evaluation", "cached_grader_results", "build_demo_folder", "ood_flag_rate", "describe_params", "paper_summary",
    "apply_temperature",
]

#: Name of the real-data notebook (metrics file, model folder, published values).
REAL_STUDY = "kl_real_radiographs"

#: Reproduced metric -> quantity label of the comparison rows (paper's Table 3 metrics).
_TEST_QUANTITIES = {
    "quadratic_kappa": "KL quadratic kappa (test)",
    "balanced_accuracy": "KL balanced accuracy (test)",
    "f1_weighted": "KL F1, support-weighted (test)",
    "mse": "KL mean squared error (test)",
}


def published() -> dict:
    """The chapter's published values (``values: kl_real_radiographs`` of ``book/published.yml``)."""
    from kneelib.report import published_values

    return published_values(REAL_STUDY)


def kl_comparisons(table: pd.DataFrame, data: str, model_description: str = "single model",
                   study: str = REAL_STUDY, label: str | None = None) -> list:
    """Paper-vs-reproduced rows for the KL head (:class:`kneelib.report.Comparison`).

    Our held-out ``val`` numbers are set beside the paper's *test-set* numbers only
    (Table 3): the paper's OAI cross-validation kappa (Table 2) is out-of-fold on the
    training data, which this chapter does not compute, so no row compares with it.
    ``model_description`` says what was trained; it goes into each row's note.
    """
    from kneelib.report import Comparison

    test = published()["test"]
    chen = published()["chen2019"]
    prefix = f"{label}: " if label else ""
    model_rows = table[table["model"] == "model"].set_index("metric")
    note = (f"published on {test['measured_on']}; val is class-balanced (paper: MOST natural mix); "
            f"{model_description}, not the SE-ResNet/SE-ResNeXt ensemble")
    rows = []
    for metric, quantity in _TEST_QUANTITIES.items():
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=prefix + quantity, published=test[metric],
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source=test["source"], data=data, note=note))
    for metric, name in (("accuracy", "KL accuracy"), ("mae", "KL mean absolute error")):
        est = model_rows.loc[metric]
        rows.append(Comparison(study=study, quantity=prefix + name, published=chen[metric],
                               reproduced=float(est["estimate"]), ci_low=float(est["ci_low"]),
                               ci_high=float(est["ci_high"]), source=chen["source"], data=data,
                               note=f"published: {chen['measured_on']}; paper 004 gives no value; {model_description}"))
    return rows


#: Development records: the recipe comparison by subject-level cross-validation on ``train``
#: (written by :func:`compare_recipes`; ``val`` never enters it).
DEVELOPMENT_CV = Path(__file__).resolve().parents[2] / "params" / REAL_STUDY / "development_cv.csv"


def training_knees(cohort: KLCohort) -> pd.DataFrame:
    """Every knee of the ``train`` split: the training part and the internal validation part, in that order."""
    parts = []
    for part in (cohort.train, cohort.internal_val):
        part = part.copy()
        part.attrs = {}
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cv_metrics(grades, probabilities, folds) -> dict:
    """Out-of-fold agreement of one set of probabilities: kappa (arg-max and cross-fitted cut-points) and more."""
    from kneelib.stats.agreement import balanced_accuracy, quadratic_kappa
    from kneelib.stats.calibration import expected_calibration_error, negative_log_likelihood
    from kneelib.stats.ordinal import cross_fitted_grades

    grades = np.asarray(grades).astype(int)
    predicted = probabilities.argmax(axis=1)
    crossed = cross_fitted_grades(probabilities, grades, folds)
    return {"kappa": quadratic_kappa(grades, predicted, grades=range(5)),
            "kappa_cutpoints": quadratic_kappa(grades, crossed, grades=range(5)),
            "balanced_accuracy": balanced_accuracy(grades, predicted),
            "accuracy": float(np.mean(predicted == grades)), "mae": float(np.mean(np.abs(predicted - grades))),
            "nll": negative_log_likelihood(probabilities, grades),
            "ece": expected_calibration_error(probabilities, grades)}


def compare_recipes(recipes: dict, n_folds: int = 3, seed: int = 0, out_csv=None, mirror_side: str | None = "L",
                    n_subjects: int | None = None) -> pd.DataFrame:
    """Subject-level K-fold cross-validation of KL recipes on the ``train`` split only.

    Every recipe is trained on the same folds (:func:`kneelib.train.grading.kl_subject_folds`)
    and scored on its out-of-fold predictions under each test-time augmentation option; a row is
    appended to ``out_csv`` as soon as a recipe finishes.

    Parameters
    ----------
    recipes : dict
        Name -> :class:`kneelib.train.grading.KLRecipe`.
    """
    from kneelib.train.grading import kl_subject_folds, train_kl_folds

    train = training_knees(load_chen_kl_cohort(internal_fraction=0.15, n_subjects=n_subjects, seed=seed))
    grades = train["kl_grade"].to_numpy()
    folds = kl_subject_folds(grades, train["subject_id"].to_numpy(), n_folds, seed)
    prepared = {}
    rows = []
    for name, recipe in recipes.items():
        if recipe.image_size not in prepared:
            prepared[recipe.image_size] = prepare_images(train, recipe.image_size, mirror_side, progress=False)
        result = train_kl_folds(prepared[recipe.image_size], grades, folds, recipe, seed=seed)
        rows.extend(development_rows(name, recipe, result, grades, mirror_side))
        if out_csv is not None:
            append_development_rows(rows, out_csv)
    return pd.DataFrame(rows)


def development_rows(name: str, recipe, result, grades, mirror_side: str | None) -> list[dict]:
    """The development records of one recipe's fold models, one per TTA option (:func:`cv_metrics`).

    ``result`` is :func:`kneelib.train.grading.train_kl_folds`'s, trained with subject-level
    K-fold folds over all of ``train`` (e.g. by :func:`compare_recipes`, or the ``paper``
    chapter run's fold checkpoints, which use the same folds).
    """
    from dataclasses import asdict

    grades = np.asarray(grades).astype(int)
    rows = []
    for tta, p in result.held_out_tta.items():
        rows.append({"recipe": name, "inference": tta, **cv_metrics(grades, p, result.folds),
                     "n_folds": len(result.models), "n_knees": len(grades), "mirror_side": mirror_side,
                     "train_seconds": round(result.seconds, 1),
                     **{k: v for k, v in asdict(recipe).items() if k not in ("gamma_range", "scale_range")},
                     "scale_low": recipe.scale_range[0], "scale_high": recipe.scale_range[1]})
    return rows


def append_development_rows(rows: list[dict], out_csv) -> pd.DataFrame:
    """Write ``rows`` into the development record ``out_csv``, replacing older rows of the same recipes."""
    table = pd.DataFrame(rows)
    if Path(out_csv).is_file():
        old = pd.read_csv(out_csv)
        table = pd.concat([old[~old["recipe"].isin(table["recipe"])], table], ignore_index=True)
    table.to_csv(out_csv, index=False, float_format="%.4f")
    return table


#: Columns of :data:`DEVELOPMENT_CV` the chapter shows.
DEVELOPMENT_COLUMNS = ["recipe", "inference", "kappa", "kappa_cutpoints", "balanced_accuracy", "accuracy", "mae",
                       "ece", "backbone", "image_size", "max_epochs", "schedule", "frozen_blocks", "rotation_deg",
                       "scale_low", "scale_high", "n_folds", "n_knees", "train_seconds"]

#: Values of recipe fields that older development records predate (their runs used the defaults).
_DEVELOPMENT_DEFAULTS = {"rotation_deg": KLRecipe.rotation_deg, "scale_low": KLRecipe.scale_range[0],
                         "scale_high": KLRecipe.scale_range[1]}


def development_cv() -> pd.DataFrame:
    """The committed recipe comparison (:data:`DEVELOPMENT_CV`); an empty table when there is none yet."""
    if not DEVELOPMENT_CV.is_file():
        return pd.DataFrame(columns=DEVELOPMENT_COLUMNS)
    table = pd.read_csv(DEVELOPMENT_CV)
    return table.reindex(columns=DEVELOPMENT_COLUMNS).fillna(_DEVELOPMENT_DEFAULTS)


def development_summary(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The development records as the page shows them: one row per recipe and inference, the
    out-of-fold agreement, the knees cross-validated and the training minutes.

    The recipe's name says what it trains; :func:`development_cv` has every recipe field.
    """
    table = development_cv() if table is None else table
    summary = pd.DataFrame({
        "recipe": table["recipe"], "inference": table["inference"], "kappa": table["kappa"],
        "kappa, cut-points": table["kappa_cutpoints"], "balanced accuracy": table["balanced_accuracy"],
        "MAE": table["mae"], "ECE": table["ece"], "knees": table["n_knees"],
        "training (min)": (table["train_seconds"] / 60).round(1)})
    return summary.set_index(["recipe", "inference"])


def recipe_from_params(params: dict):
    """The :class:`kneelib.train.grading.KLRecipe` of a chapter parameter set."""
    return KLRecipe(backbone=params["backbone"], image_size=int(params["image_size"]),
                    max_epochs=int(params["max_epochs"]), schedule=params["schedule"],
                    imagenet=bool(params["imagenet"]), lr=float(params["lr"]), lr_mult=float(params["lr_mult"]),
                    head_lr=float(params["head_lr"]), head_epochs=int(params["head_epochs"]),
                    batch_size=int(params["batch_size"]), noise_std=float(params["noise_std"]),
                    gamma_range=(float(params["gamma_low"]), float(params["gamma_high"])),
                    frozen_blocks=int(params.get("frozen_blocks", 0)),
                    rotation_deg=float(params.get("rotation_deg", KLRecipe.rotation_deg)),
                    scale_range=(float(params.get("scale_low", KLRecipe.scale_range[0])),
                                 float(params.get("scale_high", KLRecipe.scale_range[1]))))


def chapter_folds(cohort: KLCohort, n_folds: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Training knees and their held-out folds.

    ``n_folds == 1``: one model; the internal validation subjects are fold 0 and the rest
    ``-1`` (always trained on). ``n_folds >= 2``: subject-level K-fold over all training knees
    (an ensemble of K models, each with its own held-out fold).
    """
    from kneelib.train.grading import kl_subject_folds

    knees = training_knees(cohort)
    if n_folds == 1:
        folds = np.r_[np.full(len(cohort.train), -1), np.zeros(len(cohort.internal_val), dtype=int)]
    elif n_folds >= 2:
        folds = kl_subject_folds(knees["kl_grade"].to_numpy(), knees["subject_id"].to_numpy(), n_folds, seed)
    else:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    return knees, folds


def model_file_for(params: dict) -> Path:
    """Where a parameter set's grader is saved (:func:`kneelib.grade_kl.model_path_for`)."""
    return model_path_for(params["backbone"], int(params["image_size"]), int(params["max_epochs"]),
                          int(params["seed"]), params.get("n_subjects"), n_models=max(1, int(params["n_folds"])))


def fold_checkpoint_dir(params: dict) -> Path:
    """Where each finished fold of a parameter set's training is kept (resumable; see :func:`train_kl_folds`)."""
    model_file = model_file_for(params)
    return model_file.parent / "folds" / model_file.stem


def parameter_set(name: str) -> dict:
    """A committed parameter set of this chapter (``params/kl_real_radiographs/<name>.yaml``)."""
    import yaml

    return yaml.safe_load((DEVELOPMENT_CV.parent / f"{name}.yaml").read_text())


def val_evaluation(probabilities: np.ndarray, cohort: KLCohort, cutpoints=None, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """:func:`evaluate_kl` of ``val`` probabilities, plus calibration (ECE, reliability table)."""
    from kneelib.stats.calibration import expected_calibration_error, reliability_table

    grades = cohort.val["kl_grade"].to_numpy()
    result = evaluate_kl(grades, probabilities, cohort.train["kl_grade"].to_numpy(),
                         subjects=cohort.val["subject_id"].to_numpy(), n_boot=n_boot, seed=seed, cutpoints=cutpoints)
    result["ece"] = expected_calibration_error(probabilities, grades)
    result["reliability"] = reliability_table(probabilities, grades)
    return result


def cached_grader_results(params: dict, cohort: KLCohort, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """``val`` results of a saved grader (e.g. the ``paper`` one) when its file exists, else None.

    The grader is applied exactly as ``grade-kl`` applies it (its saved input size,
    mirroring, test-time augmentation, temperature and decoding).
    """
    from kneelib.grade_kl import load_kl_grader
    from kneelib.train.grading import ensemble_kl_probabilities

    path = model_file_for(params)
    if not path.is_file():
        return None
    models, metadata = load_kl_grader(path)
    size = int(metadata["image_size"])
    images = prepare_images(cohort.val, size, metadata.get("mirror_side"), progress=False)
    probabilities = ensemble_kl_probabilities(models, images, size, tta=metadata["tta"],
                                              temperature=float(metadata.get("temperature") or 1.0))
    result = val_evaluation(probabilities, cohort, metadata.get("cutpoints"), n_boot, seed)
    result.update(path=path, metadata=metadata, probabilities=probabilities, ood_percent=None)
    if metadata.get("feature_density"):
        from kneelib.stats.feature_density import density_from_dict

        density = density_from_dict(metadata["feature_density"])
        result["ood_percent"] = 100 * ood_flag_rate(density, models[0], images, size)
    return result


def build_demo_folder(cohort: KLCohort, demo_dir: Path, per_grade: int = 2, seed: int = 0) -> dict:
    """A folder a new user might grade: ``val`` knees under new names, and things that are not knees.

    Writes two ``val`` knees per grade (``knee_<i>_<side>.png``), a damaged PNG, a DICOM
    slice with Modality MR (a knee crop's pixels: refused for its modality), a
    non-radiograph PNG (a smooth synthetic pattern, to be flagged out of distribution) and
    a wide image standing in for a full bilateral radiograph (two ``val`` knees side by
    side: refused when ``grade-kl`` is given no knee localiser).
    Returns ``file name -> reference KL grade`` for the knees.
    """
    import shutil

    from PIL import Image

    demo_dir = Path(demo_dir)
    (demo_dir / "knees").mkdir(parents=True, exist_ok=True)
    reference = {}
    for i, row in enumerate(cohort.val.groupby("kl_grade").head(per_grade).itertuples()):
        name = f"knees/knee_{i:02d}_{row.side}.png"
        shutil.copy(row.path, demo_dir / name)
        reference[name] = int(row.kl_grade)
    (demo_dir / "damaged_R.png").write_bytes(b"this is not a PNG")
    with Image.open(cohort.val["path"].iloc[0]) as knee:
        pixels = np.asarray(knee.convert("L"), dtype=np.uint16) * 16
    _write_demo_dicom(demo_dir / "sagittal_mri_slice.dcm", pixels, modality="MR")
    y, x = np.mgrid[0:224, 0:224] / 224.0
    pattern = 127.5 * (1 + np.sin(12 * x) * np.cos(9 * y))
    Image.fromarray(pattern.astype(np.uint8)).save(demo_dir / "not_a_knee_R.png")
    pair = [np.asarray(Image.open(path).convert("L")) for path in cohort.val["path"].iloc[:2]]
    Image.fromarray(np.concatenate(pair, axis=1)).save(demo_dir / "bilateral_pa.png")
    return reference


def ood_flag_rate(density, model, images: np.ndarray, image_size: int) -> float:
    """Share of prepared images the out-of-distribution screen flags (e.g. the real ``val`` knees).

    ``density`` is :func:`fit_kl_feature_density`'s, ``model`` the first ensemble member, as
    ``grade-kl`` applies them (:func:`kneelib.grade_kl.ood_scores`).
    """
    from kneelib.grade_kl import ood_scores

    return float(np.mean(ood_scores(density, model, images, image_size) > density.threshold))


def _write_demo_dicom(path: Path, pixels: np.ndarray, modality: str) -> Path:
    """A minimal single-frame secondary-capture DICOM (uint16 MONOCHROME2) with the given Modality."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name), modality])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "DEMO"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.asarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def describe_params(params: dict) -> str:
    """One line saying what a parameter set trains."""
    k = max(1, int(params["n_folds"]))
    members = "one model" if k == 1 else f"ensemble of {k} subject-level CV models"
    frozen = int(params.get("frozen_blocks", 0))
    augmentation = recipe_from_params(params).augmentation()
    geometric = []
    if augmentation.rotation_deg > 0:
        geometric.append(f"rotation up to {augmentation.rotation_deg:g} degrees")
    if augmentation.scale_range != (1.0, 1.0):
        geometric.append("zoom {:g}-{:g}".format(*augmentation.scale_range))
    return (f"{members}, {params['backbone']} {params['image_size']} px, {params['max_epochs']} epochs, "
            f"{params['schedule']} schedule" + (f", stem + {frozen} blocks frozen" if frozen else "")
            + (f", {' and '.join(geometric)} in training" if geometric else ""))


def describe_inference(tta: str, temperature: float, cutpoints) -> str:
    """One line saying how a grader turns images into grades (test-time augmentation, temperature, decoding)."""
    decoding = ("arg-max" if cutpoints is None else
                "cut-points " + " / ".join(f"{float(c):.2f}" for c in cutpoints) + " on the expected grade")
    return f"test-time augmentation: {tta}; temperature {float(temperature):.2f}; decoding: {decoding}"


def paper_summary(result: dict | None) -> str:
    """A sentence on the cached ``paper`` grader's ``val`` results (or on its absence)."""
    if result is None:
        return ("No `paper` grader was in the cache for this run, so only the parameters above are "
                "reported.")
    row = result["table"][result["table"]["model"] == "model"].set_index("metric")
    meta = result["metadata"]

    def cell(metric):
        est = row.loc[metric]
        return f"{est['estimate']:.2f} [{est['ci_low']:.2f}, {est['ci_high']:.2f}]"

    return (f"The cached `paper` grader ({describe_params(meta['params'])}; trained in "
            f"{meta['train_seconds'] / 60:.0f} min on this machine's CPU; "
            f"{describe_inference(meta['tta'], meta['temperature'], meta['cutpoints'])}) reaches a quadratic kappa of "
            f"{cell('quadratic_kappa')}, a balanced accuracy of {cell('balanced_accuracy')}, an accuracy of "
            f"{cell('accuracy')} and a mean absolute error of {cell('mae')} on `val`, with an expected "
            f"calibration error of {result['ece']:.3f}." + (
                "" if result.get("ood_percent") is None else
                f" Its out-of-distribution screen flags {result['ood_percent']:.1f}% of the `val` knees."))
