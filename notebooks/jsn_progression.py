# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 12-month joint-space-narrowing progression from baseline MRI with attention over slices (Schiratti et al., 2021)
#
# **Question.** From a knee's *baseline* MRI and a few clinical variables, can a network that
# attends over the slices of the series tell which knees will lose at least half a millimetre of
# medial joint space within 12 months -- better than the clinical variables alone, and better
# than radiologists -- and does it look where the progression comes from? {footcite}`schiratti2021`

# %% tags=["parameters"]
seed = 0
cohort_preset = "default"  # synthetic cohort preset (ignored when KNEELIB_DATA holds a real OAI download)
n_subjects = None  # participants of the synthetic cohort (None: the preset's count)
series = "COR_IW_TSE"  # the paper's best sequence
variant_series = []  # further sequences for the progression task (SAG_IW_TSE, SAG_3D_DESS)
n_slices = 16  # consecutive slices around the middle one (paper 8 for COR IW TSE)
image_size = 112  # slice side before the CNN (native COR IW TSE grid of the synthetic cohort)
n4_shrink = 4  # N4 fitting grid shrink factor
n_folds = 5
epochs = 20
lr = 0.003
batch_size = 32
weight_decay = 0.1  # decoupled weight decay (fastai Adam)
n_components = 32  # whitened principal axes of the training folds' slice vectors fed to the model (None: all 1280)
conv_channels = 16
gru_hidden = 8
mlp_hidden = 16
dropout = 0.5
n_boot = 500  # bootstrap resamples of every CI (participants)
n_pairs = 150  # reader benchmark pairs (paper 150)
n_gradcam = 12  # progressors whose Grad-CAM is scored against the planted drivers
torch_threads = 1
n_jobs = None  # worker processes for slice features, CV folds and ground truth (None: every core; same results)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from kneelib.config import cache_root
from kneelib.papers import jsn_progression as study
from kneelib.report import comparison_table, save_metrics

notebook_start = time.perf_counter()
torch.set_num_threads(torch_threads)
params = dict(seed=seed, cohort_preset=cohort_preset, n_subjects=n_subjects, series=series,
              variant_series=variant_series, n_slices=n_slices, image_size=image_size, n4_shrink=n4_shrink,
              n_folds=n_folds, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
              n_components=n_components, conv_channels=conv_channels, gru_hidden=gru_hidden, mlp_hidden=mlp_hidden,
              dropout=dropout, n_boot=n_boot, n_pairs=n_pairs, n_gradcam=n_gradcam)
figure_dir = cache_root() / "figures" / study.STUDY
figure_dir.mkdir(parents=True, exist_ok=True)
paper = study.published()  # book/published.yml, values: jsn_progression
for key, value in (("auc", paper["progression"]["roc_auc"]), ("auc_discussion", paper["progression"]["roc_auc_discussion"]),
                   ("precision", paper["progression"]["precision"]), ("recall", paper["progression"]["recall"]),
                   ("pain_auc", paper["pain"]["roc_auc"]), ("pain_pr", paper["pain"]["pr_auc"]),
                   ("pain_f1", paper["pain"]["f1_weighted"]), ("relative_auc", paper["relative_progression"]["roc_auc"]),
                   ("junior", paper["readers"]["junior"]), ("senior", paper["readers"]["senior"]),
                   ("share", 100 * paper["progressor_share"]), ("knees", paper["n_knees"]),
                   ("patients", paper["n_patients"]), ("slices", paper["n_slices"])):
    glue(f"paper_{key}", value, display=False)

# %% [markdown]
# ## The paper's claim
#
# Schiratti et al. passed every slice of the baseline MRI of OAI knees through an ImageNet CNN
# (1280 features per slice), weighted the slices with an attention sub-model (1-D convolution
# along the slices, GRU, softmax), added standardised clinical variables and classified with an
# MLP. With {glue:text}`paper_slices` coronal IW TSE slices and BMI, five-fold cross-validation
# on {glue:text}`paper_knees:,.0f` knees of {glue:text}`paper_patients:,.0f` patients
# ({glue:text}`paper_share:.0f`% progressors) gave a ROC AUC of **{glue:text}`paper_auc:.2f`**
# (precision {glue:text}`paper_precision:.2f`, recall {glue:text}`paper_recall:.2f`; the Discussion
# repeats it as {glue:text}`paper_auc_discussion:.2f`), beside two radiologists at
# {glue:text}`paper_junior:.4f` and {glue:text}`paper_senior:.4f` on 150 progressor /
# non-progressor pairs. Contemporary WOMAC pain (>= 2 vs < 1) was predicted with ROC AUC
# **{glue:text}`paper_pain_auc:.3f`**, PR AUC {glue:text}`paper_pain_pr:.3f` and weighted F1
# {glue:text}`paper_pain_f1:.3f`; a relative criterion (JSN <= -25% of baseline JSW) reached
# {glue:text}`paper_relative_auc:.2f`. Grad-CAM highlighted the medial femoro-tibial compartment.
#
# ## Data
#
# The cohort comes from `kneelib.data`: a real OAI download when `KNEELIB_DATA` holds one, else
# the book's synthetic OAI-format cohort, whose causal model drives 12-month medial JSW loss by
# medial severity, BMI, medial meniscal damage and effusion (`kneelib.synth.causal`). Labels per
# knee (`kneelib.data.labels.jsn_progression_cohort`): JSN(12 m) = `V01MCMJSW` - `V00MCMJSW`
# (`kXR_QJSW_Duryea`), progressor when <= -0.5 mm; the relative variant at -25% of baseline JSW;
# the pain task from baseline WOMAC pain (`V00WOMKPR/L`), knees between 1 and 2 left out.

# %%
root, data_label = study.cohort_root(cohort_preset, seed, n_subjects)
knees, exclusions = study.jsn_progression_cohort(root)
balance = study.class_balance(knees, exclusions)
print(f"{data_label}: {knees.participant_id.nunique()} participants, {len(knees)} knees; "
      f"{len(exclusions)} knees without both JSW readings excluded from the progression tasks")
display(balance.round(3))

# %% [markdown]
# ## Method
#
# ### Preprocessing: N4 on the real DESS
#
# Series are read through `kneelib.data` (DICOM to a NIfTI-like volume), put in one orientation
# (left knees mirrored to look like right knees), and corrected with N4 {footcite}`tustison2010`
# (SimpleITK) before the intensities are divided by their 99.5th percentile. On the real pyKNEEr
# DESS the coefficient of variation inside a box drawn on the gastrocnemius (yellow) should drop.

# %%
n4 = study.n4_on_real_dess(shrink=n4_shrink)
fig = study.plot_n4(n4["before"], n4["after"], n4["bias"], n4["region"], n4["cv_before"], n4["cv_after"])
fig.savefig(figure_dir / "n4.png", dpi=100)
plt.show()
glue("cv_before", float(n4["cv_before"]), display=False)
glue("cv_after", float(n4["cv_after"]), display=False)

# %% [markdown]
# The muscle box's CV goes from {glue:text}`cv_before:.3f` to {glue:text}`cv_after:.3f`.
#
# ### Slice features (Fig. 2)
#
# `n_slices` consecutive slices around the middle one, resized to `image_size`, each through
# EfficientNet-Lite0 with the offline ImageNet weights (the paper's network is unnamed; its 1280
# descriptors match this family), computed once per series and cached on disk, keyed by the
# DICOM files' content and every parameter. Series the reader refuses (the synthetic cohort
# plants scan artefacts such as missing slices) are excluded and listed. Uncached series are
# spread over `n_jobs` worker processes with one thread each; the features do not depend on
# how many.

# %%
config = study.SliceFeatureConfig(series=series, n_slices=n_slices, image_size=image_size, n4_shrink=n4_shrink)
features = study.slice_features(root, knees, config, n_jobs)
status = features.knees["status"].value_counts().to_dict()
print(f"{config.series}: {features.features.shape[1]} slices x {features.features.shape[2]} features per knee; "
      f"{status}; cache {features.cache_bytes / 2**20:.1f} MiB; "
      f"{features.seconds['total']:.0f} s " + (f"(CNN {features.slices_per_second:.1f} slices/s per worker, "
                                                f"{features.n_jobs} worker(s))"
                                                if status.get("computed") else "(all from the cache)"))
display(features.knees.loc[features.knees["status"].isin(["missing", "unreadable"])])
glue("cache_mib", features.cache_bytes / 2**20, display=False)
glue("feature_seconds", features.seconds["total"], display=False)

# %% [markdown]
# ### Attention over slices (Fig. 3) and evaluation
#
# Each fold standardises the slice vectors with its training knees' slices and, with
# `n_components`, projects them on those slices' leading principal axes (whitened), so a few hundred
# training knees do not meet 1280 inputs per slice. Then Conv1d along the slices, a bidirectional
# GRU, one score per slice, masked softmax, the attention-weighted mean of the slice vectors
# concatenated with standardised clinical variables, an MLP and two logits ({footcite}`ilse2018` for
# attention pooling). A fastai `Learner` trains it (Adam with weight decay, one-cycle,
# class-weighted cross-entropy, a fixed number of epochs: nothing is selected on a test fold).
# Five subject-level folds stratified on the label; every knee is predicted by the model that
# never saw its participant. Baselines on the same folds: logistic regressions on the
# clinical variables, on baseline KL alone and on baseline JSW alone. On the synthetic cohort a
# further logistic regression on the *planted* baseline drivers of progression (latent OA severity,
# medial meniscal damage, effusion grade) and BMI shows how far any model could get there.

# %%
train_config = study.AttentionTrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                                          conv_channels=conv_channels, gru_hidden=gru_hidden, mlp_hidden=mlp_hidden,
                                          dropout=dropout, n_components=n_components, seed=seed)
results = {task: study.run_task(task, knees, features, "BMI", n_folds, train_config, n_boot, seed, n_jobs=n_jobs)
           for task in study.TASKS}
study.planted_driver_ceiling(root, results["progression"], n_boot, seed)  # synthetic only: the planted bound
variants = [study.run_task("progression", knees, features, "Table 1", n_folds, train_config, n_boot, seed,
                           baselines=False, n_jobs=n_jobs)]
for extra in variant_series:
    extra_features = study.slice_features(root, knees, study.SliceFeatureConfig(
        series=extra, n_slices=n_slices, image_size=image_size, n4_shrink=n4_shrink), n_jobs)
    variant = study.run_task("progression", knees, extra_features, "BMI", n_folds, train_config, n_boot, seed,
                             baselines=False, n_jobs=n_jobs)
    variant.model, variant.metrics = f"{extra}: " + variant.model, {f"{extra}: " + variant.model: variant.metrics[variant.model]}
    variants.append(variant)

# %% [markdown]
# ## Results
#
# ### ROC curves per fold (Fig. 4, 5) and confusion matrices

# %%
fig = study.plot_task_rocs({t: (r.labels, r.cv.probability, r.fold) for t, r in results.items()},
                           {"progression": paper["progression"]["roc_auc"], "pain": paper["pain"]["roc_auc"],
                            "relative progression": paper["relative_progression"]["roc_auc"]},
                           {t: tuple(r.metrics[r.model].loc["roc_auc", ["value", "ci_low", "ci_high"]])
                            for t, r in results.items()})
fig.savefig(figure_dir / "roc.png", dpi=100)
plt.show()
fig = study.plot_confusions({t: study.confusion_matrix(r.labels, r.cv.probability) for t, r in results.items()})
fig.savefig(figure_dir / "confusion.png", dpi=100)
plt.show()

# %% [markdown]
# ### Image model vs baselines on the same folds
#
# Metric [95% CI over participants]; threshold 0.5 for F1, precision and recall.

# %%
table = study.results_table(list(results.values()) + variants)
display(table)

# %% [markdown]
# ### Reader benchmark (the paper's human benchmark)
#
# Pairs of one progressor and one non-progressor with the paper's mix of "almost certain",
# typical and "doubtful" progressors (`kneelib.stats.binary.PAPER_PAIR_MIX`; reused in turn when the
# cohort has fewer than the paper's 150); the share of pairs in which the progressor is ranked
# higher, for the model, a reader who ranks by baseline KL (ties by the narrower JSW) and one who
# ranks by baseline JSW alone.

# %%
readers = study.reader_benchmark(results["progression"], n_pairs=n_pairs, n_boot=n_boot, seed=seed)
print("pairs per band:", readers.attrs["bands"], "| bands without progressors:", readers.attrs["skipped_bands"])
display(readers.round(3))

# %% [markdown]
# ### Where the model looks (Fig. 6)
#
# For the progressors: the attention mass on slices that show a planted driver (cartilage loss or
# meniscal damage next to the medial tibial cartilage or meniscus, or effusion-synovitis) against the
# share of slices that show one, and Grad-CAM of the progression logit through the attention model
# into the slice CNN on the most attended driver slice, scored as a pointing game on the CNN's
# own cells (chance: the share of cells the driver overlaps).

# %%
looks = study.where_the_model_looks(root, results["progression"], config, n_gradcam=n_gradcam, n_boot=n_boot, seed=seed,
                                    n_jobs=n_jobs)
main = results["progression"]
fig = study.plot_attention_profile(main.cv.attention, main.cv.attention > 0, main.labels,
                                   None if looks is None else looks["driver_share_by_slice"])
fig.savefig(figure_dir / "attention.png", dpi=100)
plt.show()
if looks is not None:
    print(pd.Series(looks["summary"]).to_string())
    display(looks["gradcam"].round(3))
    fig = study.plot_slice_cams(*zip(*looks["examples"][:6])) if looks["examples"] else None
    if fig is not None:
        fig.savefig(figure_dir / "gradcam.png", dpi=100)
        plt.show()

# %% [markdown]
# The same two checks for the painful knees of the pain task (Fig. 6, bottom row), against the
# planted drivers of pain: effusion-synovitis, bone marrow lesions, Hoffa-synovitis, focal
# cartilage loss and meniscal damage, wherever they lie.

# %%
pain_looks = study.where_the_model_looks(root, results["pain"], config, n_gradcam=n_gradcam, n_boot=n_boot,
                                         seed=seed, driver_mask=study.pain_driver_mask, n_jobs=n_jobs)
if pain_looks is not None:
    print(pd.Series(pain_looks["summary"]).to_string())
    display(pain_looks["gradcam"].round(3))
    if pain_looks["examples"]:
        fig = study.plot_slice_cams(*zip(*pain_looks["examples"][:6]))
        fig.savefig(figure_dir / "gradcam_pain.png", dpi=100)
        plt.show()

# %% [markdown]
# ### Paper vs reproduced

# %%
rows = study.comparisons(results, readers, looks, data_label)
save_metrics(study.STUDY, rows, params)
display(comparison_table(rows))
minutes = (time.perf_counter() - notebook_start) / 60
m = main.metrics[main.model].loc["roc_auc"]
clin = main.metrics["clinical + KL + JSW"].loc["roc_auc"]
ceiling = main.metrics.get("planted drivers + BMI (truth)")
pain = results["pain"].metrics[results["pain"].model].loc["roc_auc"]
print(f"progression ROC AUC {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] vs clinical + KL + JSW "
      f"{clin['value']:.3f} [{clin['ci_low']:.3f}, {clin['ci_high']:.3f}]; pain {pain['value']:.3f} "
      f"[{pain['ci_low']:.3f}, {pain['ci_high']:.3f}]; {len(main.labels)} knees; whole chapter {minutes:.1f} min "
      f"with {torch_threads} thread(s)")
glue("auc", float(m["value"]), display=False)
glue("auc_clinical", float(clin["value"]), display=False)
glue("auc_clinical_only", float(main.metrics["clinical (age, sex, BMI)"].loc["roc_auc", "value"]), display=False)
glue("auc_ceiling", np.nan if ceiling is None else float(ceiling.loc["roc_auc", "value"]), display=False)
best_clinical = max(main.metrics[b].loc["roc_auc", "value"] for b in ("clinical (age, sex, BMI)", "clinical + KL + JSW"))
glue("auc_verdict", "no better than" if m["value"] <= best_clinical else "above", display=False)
glue("auc_low", float(m["ci_low"]), display=False)
glue("auc_high", float(m["ci_high"]), display=False)
glue("n_knees", len(main.labels), display=False)
glue("n_positive", int(main.labels.sum()), display=False)
glue("minutes", minutes, display=False)

# %% [markdown]
# ## Deviations
#
# - **Data.** The default run uses the book's synthetic OAI-format cohort
#   ({glue:text}`n_knees` knees, {glue:text}`n_positive` progressors), not the paper's
#   {glue:text}`paper_knees:,.0f` OAI knees. Progression follows the causal model, so the numbers
#   say whether the pipeline recovers a planted signal, not whether the paper's clinical claim
#   holds. Here the image model reached {glue:text}`auc:.2f` ({glue:text}`auc_low:.2f` to
#   {glue:text}`auc_high:.2f`) against {glue:text}`auc_clinical_only:.2f` for the logistic regression
#   on age, sex and BMI and {glue:text}`auc_clinical:.2f` with KL and JSW added: the image model is
#   {glue:text}`auc_verdict` the better clinical regression. That the images carry little beyond
#   the clinical variables is what the cohort plants:
#   `kneelib.synth.causal` draws rapid medial JSW loss from a logistic model whose intercept leaves
#   most of it to chance, driven by latent medial severity, BMI, medial meniscal damage and
#   effusion, and adds JSW measurement noise to the label. Even the planted drivers themselves
#   with BMI, which no image shows exactly, reach only {glue:text}`auc_ceiling:.2f` out of fold,
#   so an image model can gain at most the small gap between that bound and BMI, KL and JSW
#   (which already read severity), and a 1280-d feature per slice learnt from a few hundred knees
#   recovers only part of it.
# - **Model selection on a development cohort.** The attention model's settings (principal axes
#   `n_components` of the training folds' slice vectors, whitened, instead of all 1280 features;
#   widths, dropout, weight decay, learning rate, epochs) were chosen once on another synthetic
#   cohort, never on the one reported here; the development runs (progression, attention + BMI,
#   the same five subject-level folds) are listed below. With all 1280 features and the
#   first settings (the table's first row) BMI was one input among 1281 and the network overfit
#   the image features; on the development cohort, settings that differ by less than the spread
#   between two training seeds of one setting are not told apart.
#
# %%
development = study.development_runs()
print(development.attrs["cohort"], "| the chosen row with training seed", development.attrs["seed_repeat"]["seed"],
      "instead of 0:", development.attrs["seed_repeat"]["roc_auc"])
display(development)

# %% [markdown]
# - **Slices and sizes.** `default` uses `n_slices` central COR IW TSE slices at `image_size`
#   pixels (the paper: {glue:text}`paper_slices` slices, input size unstated); `paper.yaml` holds 8
#   slices at 224 pixels and adds the SAG IW TSE and SAG 3D DESS variants.
# - **Network.** EfficientNet-Lite0 with offline ImageNet weights (the paper's network is not
#   named). Conv1d width, GRU size, MLP, dropout, optimiser, epochs and class weighting are not in
#   the paper; they are parameters here. No early stopping, so test folds never choose a model.
# - **Orientation.** Left knees are mirrored to look like right knees (the paper mirrored the
#   other side); either way all knees share one orientation.
# - **Clinical variables.** The paper's Table 1 is in supplementary material that we do not have;
#   the "Table 1" variant uses the baseline variables of the paper's human benchmark without JSW.
# - **Metrics.** Pooled out-of-fold metrics with participant-bootstrap CIs; the paper averages
#   fold metrics. Precision, recall and F1 use the 0.5 threshold of the class-weighted model.
# - **Reader benchmark.** A rule-based reader (baseline KL, then JSW) replaces the two
#   radiologists; with fewer progressors than the paper, progressors are reused across pairs.
# - **Where the model looks.** Scored against the planted drivers instead of being read by eye;
#   the pain task's Grad-CAM (Fig. 6, bottom row) is scored against the planted pain lesions.
# - **Time.** The whole chapter took {glue:text}`minutes:.1f` minutes in this run; slice features
#   took {glue:text}`feature_seconds:.0f` s ({glue:text}`cache_mib:.1f` MiB of cache).
#
# ## References
#
# ```{footbibliography}
# ```
