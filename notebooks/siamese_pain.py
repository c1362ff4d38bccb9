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
# # Knee pain from paired knee MRI with a convolutional Siamese network (Chang et al., 2020)
#
# **Question.** Given sagittal MRI of *both* knees of a person with frequent pain in exactly one
# knee, can a convolutional Siamese network tell which knee hurts, and do its class activation
# maps (CAMs) point at the lesions that cause the pain? {footcite}`chang2020`

# %% tags=["parameters"]
seed = 0
cohort_preset = "default"  # synthetic cohort preset (ignored when KNEELIB_DATA holds a real OAI download)
n_subjects = None  # participants of the synthetic cohort (None: the preset's count)
womac_difference_above = 2.0  # Model B: WOMAC pain difference between the knees strictly greater than this
image_size = 64  # network input (paper 224)
n_each_side = 3  # slices each side of the centre slice (paper 11)
slice_step = 3  # take every slice_step-th slice (paper 1)
center_slice = "auto"  # "auto" (PCL detection) or "middle"
widths = [16, 32, 64, 128]  # channel widths of a slice branch (paper 64, 128, 256, 512)
n_folds = 10
max_epochs = 10
batch_size = 16  # paper 64
lr = 0.05
torch_threads = 2

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from kneelib.config import cache_root
from kneelib.papers import siamese_pain as study
from kneelib.report import comparison_table, save_metrics
from kneelib.synth.ground_truth import image_liability_ceiling_auc
from kneelib.train.siamese import TrainConfig
from kneelib.widgets import SubjectExplorer, render_subject_view

notebook_start = time.perf_counter()
torch.set_num_threads(torch_threads)
params = dict(seed=seed, cohort_preset=cohort_preset, n_subjects=n_subjects, image_size=image_size,
              n_each_side=n_each_side, slice_step=slice_step, center_slice=center_slice, widths=widths,
              n_folds=n_folds, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
              womac_difference_above=womac_difference_above)
figure_dir = cache_root() / "figures" / study.STUDY
figure_dir.mkdir(parents=True, exist_ok=True)
paper = study.published()  # book/published.yml, values: siamese_pain
glue("paper_n_model_a", paper["n_subjects"]["Model A"], display=False)
glue("paper_n_model_b", paper["n_subjects"]["Model B"], display=False)
glue("paper_auc_model_a", paper["auc"]["Model A"], display=False)
glue("paper_auc_model_b", paper["auc"]["Model B"], display=False)
glue("paper_womac_above", paper["model_b_womac_difference_above"], display=False)
glue("paper_lesions_reviewed", paper["lesions_reviewed"], display=False)
for lesion, counts in paper["lesions"].items():
    glue(f"paper_{lesion}_percent", 100 * counts["subjects"] / paper["lesions_reviewed"], display=False)
    glue(f"paper_{lesion}_subjects", counts["subjects"], display=False)

# %% [markdown]
# ## The paper's claim
#
# Chang et al. trained a Siamese network on the SAG IW TSE MRI of both knees of {glue:text}`paper_n_model_a:,.0f` OAI
# participants with unilateral frequent knee pain. Ten-fold cross-validation gave an ROC AUC of
# **{glue:text}`paper_auc_model_a:.3f`** (Model A) and **{glue:text}`paper_auc_model_b:.3f`** when only
# subjects whose knees differ by more than {glue:text}`paper_womac_above` WOMAC pain points were kept
# (Model B, n = {glue:text}`paper_n_model_b`). A radiologist reading the CAMs of
# {glue:text}`paper_lesions_reviewed` test subjects found effusion-synovitis under the hot spot in
# **{glue:text}`paper_effusion_synovitis_percent:.1f`%** of them (BML {glue:text}`paper_bml_percent:.1f`%,
# Hoffa {glue:text}`paper_hoffa_synovitis_percent:.1f`%, cartilage loss
# {glue:text}`paper_cartilage_loss_percent:.1f`%, meniscus {glue:text}`paper_meniscal_damage_subjects`
# subject; Fig. 3I).
#
# ## Data
#
# The cohort comes from `kneelib.data` -- a real OAI download when `KNEELIB_DATA` holds one, else
# the synthetic OAI-format cohort of this book, whose causal model plants the lesions that drive
# pain (so the CAMs can be scored against the truth). Unilateral frequent pain: P01KPNREV /
# P01KPNLEV yes in one knee and no in the other; label 1 = right knee
# (`kneelib.data.labels.unilateral_pain_cohort`). Model B keeps the subjects whose WOMAC pain
# differs between the knees by strictly more than `womac_difference_above` points (OAI WOMAC pain
# can be fractional: a difference of two and a half points is kept).

# %%
root, data_label = study.cohort_root(cohort_preset, seed, n_subjects)
cohort = study.unilateral_pain_cohort(root, womac_difference_above)
print(f"{data_label}: {cohort.shape[0]} subjects with unilateral frequent pain "
      f"({(cohort.label == 0).sum()} left, {(cohort.label == 1).sum()} right), "
      f"{cohort.model_b.sum()} with a WOMAC difference above {womac_difference_above}")

# %% [markdown]
# ### Preprocessing (Fig. 1)
#
# Per knee: the centre slice (the most complete PCL; the paper picked it by hand, here it is
# detected automatically), left knees mirrored so a slice index means the same side in both
# knees, every kept slice registered rigidly (SimpleITK, Euclidean) to the same slice of a
# template knee, a 105 mm square crop around the joint resized to `image_size`, and
# `2 * n_each_side + 1` slices every `slice_step`-th. Knees are cached as content-addressed
# files, so an interrupted run resumes. Subjects missing age, BMI or sex (needed for the
# stratified folds) and knees failing the artefact QC are excluded automatically; the table below
# records each reason.

# %%
config = study.PreprocessConfig(image_size=image_size, n_each_side=n_each_side, step=slice_step,
                                seed=seed, center_slice=center_slice)
data = study.preprocess_cohort(root, cohort, config)
print(f"{len(data.cohort)} of {len(cohort)} subjects pass QC; images {data.images.shape}")
display(data.exclusions)
if "planted_artefact" in data.knees:
    display(pd.crosstab(data.knees["planted_artefact"].replace("", "none"), data.knees["excluded"],
                        margins=True).rename_axis(index="planted artefact", columns="excluded by QC"))

# %%
accuracy = study.center_slice_accuracy(data.knees)
display(accuracy.round(1))

# %% [markdown]
# ### Table 1: demographics by painful side
#
# Unpaired t-tests (age, BMI) and Fisher's exact test (sex), as in the paper.

# %%
model_b_rows = np.flatnonzero(data.cohort["model_b"].to_numpy())
tables = {"Model A": study.table1(data.cohort), "Model B": study.table1(data.cohort.iloc[model_b_rows])}
for name, table in tables.items():
    print(name)
    display(table)

# %% [markdown]
# ## Method
#
# The network (Fig. 2): one branch per slice position (7x7 stride-2 convolution, batch norm,
# ReLU, max-pool, 3x3 convolution blocks with a second max-pool), the same weights on the left
# and the right knee's slice; pooled features of both knees go through the slice's
# fully-connected layer, and all slice outputs into one two-class prediction. Training: SGD
# with momentum and cross-entropy (fastai one-cycle), subject-level 10-fold cross-validation
# stratified on side, sex, age >= 60 and BMI >= 30.

# %%
train_config = TrainConfig(epochs=max_epochs, lr=lr, batch_size=batch_size, seed=seed)
models = {
    "Model A": study.cross_validated_auc("Model A", data, np.arange(len(data.cohort)), n_folds, train_config,
                                         widths, seed, keep_models=True),
    "Model B": study.cross_validated_auc("Model B", data, model_b_rows, n_folds, train_config, widths, seed),
}

# %% [markdown]
# ## Results
#
# ### ROC curves (Fig. 4A-B) and per-fold AUC

# %%
fig = study.plot_roc_panels(models, paper_auc=paper["auc"], n_folds=n_folds)
fig.savefig(figure_dir / "roc.png", dpi=100)
plt.show()
display(pd.concat({name: m.per_fold.round(3) for name, m in models.items()}, axis=1))

# %% [markdown]
# ### Subgroups (Fig. 4C)

# %%
subgroups = pd.concat({name: m.subgroups.set_index("subgroup") for name, m in models.items()}, axis=1)
for name in models:
    subgroups[(name, "paper")] = pd.Series(paper["subgroup_auc"][name])
display(subgroups.sort_index(axis=1, level=0, sort_remaining=False).round(3))

# %% [markdown]
# ### Saliency (Fig. 3)
#
# On a 70:15:15 split (stratified like the folds) the Siamese network and a VGG16-CAM network
# (same head, VGG16 trunk without its last block, no ImageNet weights) are trained on 70% and
# monitored on 15%. For the remaining 15% the CAM of the knee with confirmed pain is computed on
# every slice, and the slice with the highest mean CAM is kept (as in the paper). Where the
# paper's radiologist named the lesion under the hot spot, the planted lesion masks are read.

# %%
saliency = study.saliency_study(data, train_config, widths, seed)
lesions = study.lesion_table(saliency.hits)
display(lesions.round(1))

# %% [markdown]
# The 15% test split holds few subjects in a small cohort, so the same scoring also runs
# **out-of-fold** over all of Model A: each subject's CAM comes from the cross-validation fold
# model that never saw that subject.

# %%
out_of_fold_hits = study.out_of_fold_hot_spots(data, models["Model A"], seed=seed)
display(study.lesion_table(out_of_fold_hits, model="siamese, out-of-fold").round(1))
pointing = study.pointing_table(pd.concat([saliency.hits, out_of_fold_hits], ignore_index=True), seed=seed)
display(pointing.round(3))

# %%
test_images = data.images[saliency.test]
labels_test = data.cohort["label"].to_numpy()[saliency.test]
fig = study.plot_cam_comparison(data, saliency, n_show=4)
fig.savefig(figure_dir / "cams.png", dpi=100)
plt.show()

# %% [markdown]
# ### Explorer
#
# Choose a test subject, move through the slices of both knees and fade the CAM: live in JupyterLab
# (`SubjectExplorer`), from pre-rendered frames behind the sliders on this page (no kernel needed).

# %%
explorer = SubjectExplorer(test_images, saliency.cams["siamese"], saliency.probability["siamese"], labels_test,
                           subject_ids=list(data.cohort["participant_id"].iloc[saliency.test]))
view = render_subject_view(test_images[0], saliency.cams["siamese"][0],
                           slice_index=sorted({0, int(saliency.top_slice["siamese"][0]), test_images.shape[2] - 1}),
                           probability=float(saliency.probability["siamese"][0]), label=int(labels_test[0]),
                           subject_id=data.cohort["participant_id"].iloc[saliency.test[0]])
view.savefig(figure_dir / "explorer.png", dpi=100)
plt.close(view)
explorer

# %% [markdown]
# ### Paper vs reproduced

# %%
rows = study.comparisons(models, saliency, pointing, tables, data_label, out_of_fold_hits)
save_metrics(study.STUDY, rows, params)
display(comparison_table(rows))
minutes = (time.perf_counter() - notebook_start) / 60
auc_a, auc_b = models["Model A"].auc, models["Model B"].auc
siamese_pointing = pointing.set_index("model").loc["siamese, out-of-fold"]
print(f"Model A AUC {auc_a} (n = {auc_a.n}); Model B AUC {auc_b} (n = {auc_b.n}); "
      f"Siamese pointing game {siamese_pointing['pointing game']:.2f} "
      f"[{siamese_pointing['ci_low']:.2f}, {siamese_pointing['ci_high']:.2f}] vs chance "
      f"{siamese_pointing['chance (lesion area fraction)']:.2f} (n = {int(siamese_pointing['n scored'])}); "
      f"whole chapter {minutes:.1f} min with {torch_threads} threads")
fisher = study.paper_fisher_check().set_index("model")
display(fisher.round(3))
for name in ("Model A", "Model B"):
    key = name.replace(" ", "_").lower()
    glue(f"fisher_{key}_recomputed", float(fisher.loc[name, "recomputed p"]), display=False)
    glue(f"fisher_{key}_printed", float(fisher.loc[name, "printed p"]), display=False)
    glue(f"auc_{key}", float(models[name].auc.auc), display=False)
    ceiling = image_liability_ceiling_auc(root, models[name].cohort)
    glue(f"ceiling_auc_{key}", float("nan") if ceiling is None else ceiling.auc, display=False)
glue("n_cohort", len(cohort), display=False)
glue("n_model_a", len(models["Model A"].cohort), display=False)
glue("n_model_b", len(models["Model B"].cohort), display=False)

# %% [markdown]
# ## Deviations
#
# - **Data.** The default run uses the book's synthetic OAI-format cohort
#   ({glue:text}`n_cohort` subjects with unilateral frequent pain, {glue:text}`n_model_a` of them in
#   Model A after QC and {glue:text}`n_model_b` in Model B), not the OAI participants of the paper
#   (Model A n = {glue:text}`paper_n_model_a:,.0f`, Model B n = {glue:text}`paper_n_model_b`). The pain
#   labels follow the causal model's planted lesions, so the AUCs measure whether the pipeline
#   recovers a known signal, not the paper's clinical claim. With a fraction of the paper's subjects,
#   confidence intervals are wide and the AUCs sit below the paper's: the images carry the left-right
#   pain difference with an AUC of {glue:text}`ceiling_auc_model_a:.2f` at best in Model A (the
#   right-minus-left image-visible pain liability of the causal model,
#   `kneelib.synth.ground_truth`), and a network trained from scratch on a few dozen pairs per fold
#   recovers only part of it (Model A {glue:text}`auc_model_a:.2f`, Model B {glue:text}`auc_model_b:.2f`).
# - **Confidence intervals.** Each subject contributes one prediction, so every CI is over subjects
#   (the `unit` columns): DeLong for the AUCs, a subject bootstrap for the pointing game.
# - **Saliency scoring.** Besides the paper's 15% test split (a handful of subjects here), the
#   lesion-under-hot-spot table and the pointing game are also computed out-of-fold over all
#   of Model A, each subject explained by the fold model that never saw it.
# - **Centre slice.** Detected automatically (PCL band detector), not picked by hand; its
#   accuracy against the planted PCL slice is shown above. The `smoke` run takes the middle slice.
# - **Template and crop.** The template is the first subject's right knee and the crop centre
#   the intensity centroid of its centre slice (the paper chose both by eye).
# - **Sizes.** `default` uses 64 px, 7 slices (every 3rd, spanning the paper's 23), a quarter of
#   the paper's channel widths and batch 16; `paper.yaml` holds the published settings.
# - **Optimisation.** The paper gives neither learning rate nor epochs; fastai one-cycle SGD
#   with momentum, `lr` and `max_epochs` from the parameters.
# - **Strata.** Folds are stratified on side, sex, age >= 60 and BMI >= 30; a stratum with fewer
#   subjects than folds is merged into the largest stratum of its side (a small cohort cannot
#   keep every risk-factor cell in every fold).
# - **VGG16-CAM.** Trained from scratch at 1/8 width (no ImageNet weights offline; the paper
#   fine-tuned an ImageNet VGG16).
# - **Radiologist review.** Replaced by the planted lesion masks: the lesion under the CAM
#   maximum of the top slice, and a pointing game against two chance levels.
# - **Table 1 p-values.** The paper's Fisher p-values for percent female do not follow from its
#   own percentages (recomputed above: Model A {glue:text}`fisher_model_a_recomputed:.3f` vs printed
#   {glue:text}`fisher_model_a_printed:.3f`, Model B {glue:text}`fisher_model_b_recomputed:.3f` vs
#   {glue:text}`fisher_model_b_printed:.3f`).
#
# ## References
#
# ```{footbibliography}
# ```
