"""A quick realism check for work on the radiograph renderer, on real ``train`` crops only (issue 10).

:func:`kneelib.train.realism.measure_realism` is the number the book reports: it needs a
whole generated cohort (minutes of MR rendering the radiographs do not use) and it tests
the sim-to-real grader on the real ``val`` crops, which must be looked at once, not after
every change of the renderer. This module is the development loop beside it:

- :func:`render_development_films` renders only the bilateral radiographs of the first
  ``n_subjects`` participants of a cohort seed, with the generator's own functions
  (:func:`kneelib.synth.causal.sample_subject`, :func:`~kneelib.synth.anatomy.build_knee`,
  :func:`~kneelib.synth.radiograph.render_radiograph`) and the generator's per-visit
  random streams, so each film is pixel for pixel the one
  :func:`kneelib.synth.cohort.generate_cohort` writes for that participant (test). No DICOM
  is written; the participants run on :func:`kneelib.executor.map_tasks`. The few lines
  that set up a visit's film repeat those of ``kneelib.synth.cohort._render_subject``:
  moving them into a function both call changes the generator's code hash, which
  regenerates every cached cohort, so that waits for the next generator change (the
  test of :func:`render_development_films` holds the two together until then).
- :func:`development_check` crops them as the realism measures do
  (:func:`kneelib.train.realism.plateau_framed_crop_mm`, ground-truth landmarks) and
  measures two proxies on the Chen ``train`` crops only, split by subject into two
  disjoint halves:

  * discriminator AUC (:func:`kneelib.train.realism.discriminability`) of synthetic crops
    against the first half;
  * sim-to-real proxy: the KL grader trained and its epoch chosen on synthetic crops
    (as :func:`kneelib.train.realism.sim_to_real_transfer`), tested on the second half:
    quadratic kappa with a subject-level CI and the predicted grade distribution (a
    grader that sends most real knees to one grade has not transferred).

  The real ``val`` split is never read (:data:`REAL_SPLIT`). Use a cohort seed other than
  the book's (``seed``, default :data:`DEVELOPMENT_SEED`), so that the final measure runs on
  participants the development never saw.

About 5 minutes on 2 cores for 200 participants (1.5 s CPU per participant to render, 3-4
minutes of training).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from kneelib.preprocess.knee_crops import CHEN_WIDTH_PER_PLATEAU
from kneelib.train.realism import TRANSFER_SCHEDULE

__all__ = ["DEVELOPMENT_SEED", "REAL_SPLIT", "render_development_films", "development_crops",
           "development_check", "real_grader", "real_to_synthetic_check"]

#: Cohort seed of the development films (the book's cohorts use seed 0, 1 and 2).
DEVELOPMENT_SEED = 7

#: The only split of ``chen_kl_radiographs`` this module reads.
REAL_SPLIT = "train"

#: OARSI heads of the knee table, from the knee's planted grades (``kl`` first).
_SITE_COLUMNS = {"osteophyte_fl": "FL", "osteophyte_fm": "FM", "osteophyte_tl": "TL", "osteophyte_tm": "TM"}


def _participant_films(task: dict) -> list[dict]:
    """The radiographs of both visits of one participant (a :func:`map_tasks` task)."""
    from kneelib.synth import anatomy, causal, protocols, radiograph
    from kneelib.synth.cohort import PRESETS

    preset = PRESETS[task["preset"]]
    subject = causal.sample_subject(task["index"], task["seed"], task["variant"])
    by_key = {(k.side, k.visit_month): k for k in causal.sample_knees(subject)}
    films = []
    for visit_month in sorted({month for _, month in by_key}):
        models = {side: anatomy.build_knee(by_key[(side, visit_month)], preset.anatomy_voxel_mm) for side in ("R", "L")}
        protocol = protocols.xr_protocol(preset.name, site=task["variant"])
        # the generator's stream of this visit's film (kneelib.synth.cohort._render_subject)
        rng = np.random.default_rng(np.random.SeedSequence(by_key[("R", visit_month)].seed, spawn_key=(99,)))
        film = radiograph.render_radiograph(models["R"], models["L"], protocol, rng)
        del models
        films.append({"participant_id": subject.participant_id, "visit_month": visit_month,
                      "pixels": film.pixels, "pixel_spacing_mm": film.pixel_spacing_mm,
                      "landmarks_px": film.landmarks_px,
                      "knees": {side: by_key[(side, visit_month)] for side in ("R", "L")}})
    return films


def render_development_films(n_subjects: int, seed: int = DEVELOPMENT_SEED, preset: str = "default",
                             variant: str = "oai", n_jobs: int | None = None,
                             progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Radiographs of participants ``0 .. n_subjects - 1`` of a cohort seed, without writing files.

    Returns
    -------
    knees : DataFrame
        One row per knee and visit, as :func:`kneelib.data.knee_radiographs.load_synthetic_knees`:
        ``participant_id``, ``visit_month``, ``side``, ``path`` (a key of ``radiographs``,
        not a file), ``kl_grade`` and one column per grading head (planted grades;
        JSN from the knee's ``jsn_grade_*``), ``<landmark>_row/_col``.
    radiographs : dict
        ``path`` -> ``(pixels float32, pixel_spacing_mm)``.
    """
    from kneelib.executor import map_tasks

    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    tasks = [{"index": i, "seed": int(seed), "preset": preset, "variant": variant} for i in range(int(n_subjects))]
    results = map_tasks(_participant_films, tasks, n_jobs=n_jobs, progress=progress, desc="development films")
    rows, radiographs = [], {}
    for films in results:
        for film in films:
            key = f"development/{variant}_seed{seed}/{film['participant_id']}/{film['visit_month']}"
            radiographs[key] = (film["pixels"].astype(np.float32), float(film["pixel_spacing_mm"]))
            for side, knee in film["knees"].items():
                row = {"participant_id": film["participant_id"], "visit_month": film["visit_month"], "side": side,
                       "path": key, "kl_grade": int(knee.kl_grade), "kl": int(knee.kl_grade),
                       "jsn_lateral": int(knee.jsn_grade_lateral), "jsn_medial": int(knee.jsn_grade_medial),
                       "pixel_spacing_mm": float(film["pixel_spacing_mm"])}
                row.update({column: int(knee.osteophyte_grade.get(site, 0)) for column, site in _SITE_COLUMNS.items()})
                for name, (r, c) in film["landmarks_px"][side].items():
                    row[f"{name}_row"], row[f"{name}_col"] = float(r), float(c)
                rows.append(row)
    return pd.DataFrame(rows), radiographs


def development_crops(knees: pd.DataFrame, radiographs: dict, image_size: int = 128,
                      width_per_plateau: float = CHEN_WIDTH_PER_PLATEAU):
    """Crops of :func:`render_development_films`, framed and prepared as the realism measures'."""
    from kneelib.train.realism import ground_truth_crops

    return ground_truth_crops(knees, radiographs, image_size, width_per_plateau=width_per_plateau)


def development_check(real_root, n_subjects: int = 200, seed: int = DEVELOPMENT_SEED, preset: str = "default",
                      image_size: int = 128,
                      n_real_subjects: int | None = 600, transfer_epochs: int = 4, disc_epochs: int = 3,
                      n_boot: int = 200, n_jobs: int | None = None, crops=None, progress: bool = False,
                      transfer_schedule: dict | None = TRANSFER_SCHEDULE, n_graders: int = 3) -> dict:
    """Discriminator AUC and sim-to-real proxy kappa of the current renderer, on real ``train`` crops only.

    Parameters
    ----------
    real_root : path
        Data root holding ``chen_kl_radiographs/`` (``$KNEELIB_DATA``).
    n_subjects, seed : int
        Synthetic participants (both knees, both visits) of the development seed.
    preset : str
        Cohort preset of the films (``default``: the book's radiographs).
    n_real_subjects : int or None
        Chen ``train`` subjects drawn (grade-stratified), then halved by subject.
    crops : PreparedKnees, optional
        Synthetic crops already made (:func:`development_crops`).
    transfer_schedule : dict or None
        The grader's schedule: the book measure's by default
        (:data:`kneelib.train.realism.TRANSFER_SCHEDULE`), so the proxy reads like it;
        ``None``: paper 004's.
    n_graders : int
        Graders trained with seeds ``seed, seed + 1, ...`` on the same synthetic split; the
        proxy grades with their mean probabilities. One grader's proxy moved by about 0.12
        between three seeds of the same renderer (session 15: 0.13, 0.10, 0.02), more than
        any renderer change screened, so a single seed cannot tell such changes apart.

    Returns
    -------
    dict
        ``discriminator_auc`` (with ``_ci_low``/``_ci_high``), ``proxy_kappa`` (with CI; of
        the graders' mean probabilities), ``proxy_kappa_per_grader`` (each grader alone),
        ``proxy_predicted_counts`` (real crops per predicted KL grade 0-4),
        ``proxy_reference_counts``, ``synthetic_internal_kappa`` (the grader on held-out
        synthetic subjects, the graders' mean), ``n_synthetic_crops``, ``n_real_disc``, ``n_real_proxy``,
        ``seconds``.
    """
    from kneelib.data.chen_kl import carve_internal_validation
    from kneelib.train.grading import set_determinism, train_kl_model
    from kneelib.train.grading_evaluation import evaluate_kl
    from kneelib.train.multitask import predict_probabilities
    from kneelib.train.realism import discriminability, quadratic_kappa_row, real_knee_crops, subject_split
    from sklearn.metrics import cohen_kappa_score

    if n_graders < 1:
        raise ValueError(f"n_graders must be >= 1, got {n_graders}")
    start = time.time()
    if crops is None:
        crops = development_crops(*render_development_films(n_subjects, seed, preset, n_jobs=n_jobs,
                                                             progress=progress),
                                  image_size=image_size)
    rendered = time.time()
    real_images, real_table = real_knee_crops(real_root, REAL_SPLIT, image_size, n_real_subjects, seed=seed)
    real_subjects = real_table["oai_id"].astype(str).to_numpy()
    proxy = subject_split(real_subjects, 0.5, seed=seed)

    disc = discriminability(crops.images, crops.subjects, real_images[~proxy], real_subjects[~proxy], image_size,
                            max_epochs=disc_epochs, n_boot=n_boot, seed=seed, progress=progress)

    table = crops.knees.assign(row=np.arange(len(crops.knees)))
    train, internal = carve_internal_validation(table, 0.15, seed=seed, grade_column="kl_grade",
                                                subject_column="participant_id")
    grades = crops.targets[:, 0]
    reference = real_table["kl_grade"].to_numpy()[proxy].astype(int)
    each, internal_kappas = [], []
    for grader_seed in range(seed, seed + n_graders):
        set_determinism(grader_seed, 1)
        model, history, _ = train_kl_model(crops.images[train["row"]], grades[train["row"]],
                                           crops.images[internal["row"]], grades[internal["row"]], image_size,
                                           transfer_epochs, show_progress=progress,
                                           transfer_schedule=transfer_schedule)
        each.append(predict_probabilities(model, real_images[proxy], image_size)["kl"])
        internal_kappas.append(float(history["kl_kappa"].max()))
    per_grader = [float(cohen_kappa_score(reference, p.argmax(axis=1), weights="quadratic")) for p in each]
    probabilities = np.mean(each, axis=0)
    evaluation = evaluate_kl(reference, probabilities, grades[train["row"]], real_subjects[proxy], n_boot=n_boot,
                             seed=seed)
    kappa = quadratic_kappa_row(evaluation)
    internal_kappa = float(np.mean(internal_kappas))
    return {"discriminator_auc": float(disc["auc"]), "discriminator_auc_ci_low": float(disc["ci_low"]),
            "discriminator_auc_ci_high": float(disc["ci_high"]),
            "proxy_kappa_per_grader": per_grader,
            "proxy_kappa": float(kappa["estimate"]), "proxy_kappa_ci_low": float(kappa["ci_low"]),
            "proxy_kappa_ci_high": float(kappa["ci_high"]),
            "proxy_predicted_counts": np.bincount(np.asarray(evaluation["predicted"], int), minlength=5).tolist(),
            "proxy_reference_counts": np.bincount(reference, minlength=5).tolist(),
            "synthetic_internal_kappa": internal_kappa,
            "n_synthetic_crops": int(len(crops.images)), "n_real_disc": int((~proxy).sum()),
            "n_real_proxy": int(proxy.sum()),
            "seconds": {"render": rendered - start, "total": time.time() - start}}


# --------------------------------------------------------------------------------------------
# real-to-synthetic: a grader that knows real knees grades the synthetic ones
# --------------------------------------------------------------------------------------------
#: Modules whose source decides the real grader's weights (part of its cache key).
_REAL_GRADER_CODE = ("kneelib.train.grading", "kneelib.train.multitask", "kneelib.models.multitask",
                     "kneelib.preprocess.knee_crops", "kneelib.data.chen_kl")


def _real_grader_key(settings: dict, table: pd.DataFrame) -> str:
    import importlib
    import inspect

    import torch

    from kneelib.cache import content_key

    sources = [inspect.getsource(importlib.import_module(name)) for name in _REAL_GRADER_CODE]
    files = table[["relpath", "kl_grade"]].astype(str).to_numpy().tolist()
    return content_key(settings, files, *sources, version=f"real-grader-1 torch {torch.__version__}")


def real_grader(real_root, image_size: int = 128, seed: int = DEVELOPMENT_SEED, max_epochs: int = 4,
                internal_fraction: float = 0.15, transfer_schedule: dict | None = TRANSFER_SCHEDULE,
                n_crops: int | None = None, cache_dir=None, progress: bool = False) -> dict:
    """A KL grader trained on the real Chen ``train`` crops only, for :func:`real_to_synthetic_check`.

    The recipe of the sim-to-real measure (:func:`kneelib.train.realism.sim_to_real_transfer`:
    EfficientNet-Lite0, ``TRANSFER_SCHEDULE``, epoch of best kappa on a subject-level internal
    split of 15%), trained on every ``train`` crop outside that split. ``val`` is never read.
    The weights are cached under ``cache_dir`` (default ``<cache>/models``), keyed by the
    settings, the crops' files and grades, and the source of the training code, so the grader is
    trained once (about 8 minutes on 2 cores) and every renderer change is graded by the same
    network. ``n_crops`` trains on a seeded draw of whole subjects instead of every crop (tests).

    Returns
    -------
    dict
        ``model`` (in eval mode), ``internal_kappa`` (quadratic kappa on the held-out real
        ``train`` subjects at the chosen epoch: what the grader achieves on real knees it did
        not see), ``n_train_crops``, ``n_internal_crops``, ``best_epoch``, ``path`` (the cached
        weights).
    """
    import torch

    from kneelib import config
    from kneelib.cache import atomic_write
    from kneelib.data.chen_kl import carve_internal_validation
    from kneelib.models.multitask import KL_ONLY, build_multitask_model
    from kneelib.train.grading import set_determinism, train_kl_model
    from kneelib.train.realism import real_knee_crops

    images, table = real_knee_crops(real_root, REAL_SPLIT, image_size, seed=seed, progress=progress, n_crops=n_crops)
    settings = {"image_size": int(image_size), "seed": int(seed), "max_epochs": int(max_epochs),
                "internal_fraction": float(internal_fraction), "transfer_schedule": transfer_schedule,
                "backbone": "efficientnet_lite0", "split": REAL_SPLIT}
    key = _real_grader_key(settings, table)
    folder = Path(cache_dir) if cache_dir is not None else config.cache_root() / "models"
    path = folder / f"realism_real_grader_{key[:16]}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=False)
        model = build_multitask_model("efficientnet_lite0", KL_ONLY, imagenet=False)
        model.load_state_dict(stored["state_dict"])
        model.eval()
        return {**stored["summary"], "model": model, "path": path}
    rows = pd.DataFrame({"row": np.arange(len(table)), "kl_grade": table["kl_grade"].to_numpy().astype(int),
                         "subject": table["oai_id"].astype(str).to_numpy()})
    train, internal = carve_internal_validation(rows, internal_fraction, seed=seed, grade_column="kl_grade",
                                                subject_column="subject")
    grades = rows["kl_grade"].to_numpy()
    set_determinism(seed, 1)
    model, history, best_epoch = train_kl_model(
        images[train["row"]], grades[train["row"]], images[internal["row"]], grades[internal["row"]], image_size,
        max_epochs, show_progress=progress, transfer_schedule=transfer_schedule)
    summary = {"internal_kappa": float(history["kl_kappa"].max()), "n_train_crops": int(len(train)),
               "n_internal_crops": int(len(internal)), "best_epoch": int(best_epoch) if best_epoch else None}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"state_dict": model.state_dict(), "summary": summary,
                                               "settings": settings}, tmp))
    return {**summary, "model": model, "path": path}


def real_to_synthetic_check(real_root, n_subjects: int = 100, seed: int = DEVELOPMENT_SEED,
                            preset: str = "default", image_size: int = 128, crops=None,
                            graders: list[dict] | None = None, n_graders: int = 3, n_boot: int = 200,
                            n_jobs: int | None = None, progress: bool = False) -> dict:
    """Grade synthetic development crops with graders trained on real knees only.

    :func:`kneelib.train.realism.grade_synthetic_crops` (the "GAN-test" of Shmelkov et al.
    2018) with ``n_graders`` cached :func:`real_grader` networks (seeds ``seed, seed + 1,
    ...``), grading with their mean probabilities. No network is trained per renderer change,
    so the number moves only with the films, and a screen costs the films' rendering plus
    seconds (session 16: 100 participants, 400 crops, about 45 s on 2 cores). One grader is
    not enough: on the same films two real graders gave 0.20 and 0.08, and a combination of
    renderer settings that gained 0.11 with the first lost 0.02 with the second (session 16).

    Parameters
    ----------
    real_root : path
        Data root holding ``chen_kl_radiographs/`` (``train`` only is read).
    n_subjects, seed, preset, image_size
        The development films (:func:`render_development_films`); ``seed`` also seeds the
        first grader.
    crops : PreparedKnees, optional
        Development crops already made (:func:`development_crops`).
    graders : list of dict, optional
        :func:`real_grader` results (trained or loaded when not given).
    n_graders : int
        Graders loaded or trained when ``graders`` is not given.

    Returns
    -------
    dict
        :func:`~kneelib.train.realism.grade_synthetic_crops`' result (``kappa`` of the graders'
        mean with a CI over synthetic subjects, ``kappa_per_grader``, ``confusion``,
        ``mean_probabilities``, ``expected_grade``, ...) and ``real_internal_kappa`` (the
        graders' mean kappa on held-out real knees: the value a realistic renderer would
        approach), ``seconds``.
    """
    from kneelib.train.realism import grade_synthetic_crops

    if graders is None and n_graders < 1:
        raise ValueError(f"n_graders must be >= 1, got {n_graders}")
    start = time.time()
    if graders is None:
        graders = [real_grader(real_root, image_size, seed=grader_seed, progress=progress)
                   for grader_seed in range(seed, seed + n_graders)]
    if crops is None:
        crops = development_crops(*render_development_films(n_subjects, seed, preset, n_jobs=n_jobs,
                                                             progress=progress),
                                  image_size=image_size)
    result = grade_synthetic_crops([g["model"] for g in graders], crops, image_size, n_boot=n_boot, seed=seed)
    return {**result, "real_internal_kappa": float(np.mean([g["internal_kappa"] for g in graders])),
            "seconds": time.time() - start}
