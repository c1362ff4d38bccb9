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
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The data: what this book runs on
#
# **Question.** Which images and tables do the four studies start from, and what do they
# look like? The studies use the Osteoarthritis Initiative (OAI) and its MRI protocol
# {footcite}`peterfy2008`, which cannot be redistributed. This book therefore runs on a
# *synthetic cohort in the OAI on-disk format*: DICOM series, radiographs and clinical tables
# drawn from a documented causal model, with the truth behind every image kept beside it.
# This chapter shows that cohort -- its causal model, demographics, labels, images and QC --
# next to the OAI's published figures and the real public data under `KNEELIB_DATA`: OAI
# knee radiographs with Kellgren-Lawrence (KL) grades, one real knee MRI exam, and the
# per-knee table a published study released.

# %% tags=["parameters"]
# Parameters (papermill injects params/cohort/<set>.yaml after this cell).
preset = "default"  # synthetic cohort preset: smoke, default or paper
n_subjects = None  # participants of the image cohort (None: the preset's)
seed = 0  # cohort seed; also seeds the causal-model sample and the image sampling
n_model_sample = 5000  # participants of the no-image sample of the causal model
qc_n_subjects = None  # participants whose series are all loaded for the QC table (None: all)
crops_per_grade = 2  # real and synthetic radiograph crops shown per KL grade
crop_width_per_plateau = 1.3  # side of a synthetic knee crop / distance of the outer plateau margins
data_root = None  # None: $KNEELIB_DATA
montage_per_grade = 4  # real radiographs shown per KL grade
image_size = 224  # display size of each radiograph crop (pixels)
kl_split = "train"  # split of the real radiographs shown: train or val

# %%
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from kneelib.papers import cohort
from kneelib.report import comparison_table, save_metrics

pd.set_option("display.max_rows", 200)
pd.set_option("display.max_colwidth", 120)
inventory = cohort.dataset_inventory(data_root)
root = cohort.resolve_root(data_root)
present = dict(zip(inventory["dataset"], inventory["present"]))
inventory

# %% [markdown]
# ## The claim
#
# A data chapter makes no claim of its own. It checks that the synthetic cohort looks like
# the OAI where the papers say what the OAI looks like -- age, sex, the KL distribution of
# Morales et al. {footcite}`morales2021`, the share of unilateral frequent pain of Chang et
# al. {footcite}`chang2020`, chronic pain {footcite}`morales2021` and 12-month progressors of
# Schiratti et al. {footcite}`schiratti2021` -- and it checks the number of knees in the
# chronic-pain regression of Morales et al. (Table 3) against the table its authors released.
#
# ## Data
#
# ### The synthetic OAI-format cohort
#
# `kneelib.synth.cohort.generate_cohort` writes, per participant, SAG IW TSE, COR IW TSE and
# SAG 3D DESS series of both knees, the right knee's MSME T2 map (7 echoes) and a bilateral
# PA fixed-flexion radiograph, at baseline and 12 months, plus the OAI clinical tables
# (`Enrollees`, `AllClinical00/01`, `kXR_SQ_BU00/01`, `kXR_QJSW_Duryea00/01`) and
# `contents.csv`. The folder `ground_truth/` holds what the causal model planted. Everything
# below is read back with `kneelib.data`, as a real OAI download would be.

# %%
cohort_root = cohort.synthetic_cohort(preset, seed=seed, n_subjects=n_subjects, progress=False)
knees = cohort.cohort_knee_table(cohort_root)
n_participants = knees["ID"].nunique()
cohort_label = f"image cohort ({preset}, n = {n_participants})"
display(Markdown(f"Cohort root: `{cohort.cohort_location(cohort_root)}` -- {n_participants} participants, "
                 f"{len(knees)} knee time points."))

# %% [markdown]
# ## Method: the causal model
#
# Every participant is drawn from a small causal model (`kneelib.synth.causal`). Age, sex,
# BMI and race set a latent OA liability shared by both knees; each knee adds its own part.
# Severity, split between the medial, lateral and patellofemoral compartments, narrows the
# joint space and grows osteophytes, sclerosis, cartilage loss and T2 elevation, meniscal
# damage, effusion-synovitis, Hoffa-synovitis and bone marrow lesions (BMLs). The KL grade
# follows from the OARSI JSN and osteophyte grades. Knee pain adds what the images show
# (effusion-synovitis and BMLs weigh most) to a subject's pain sensitivity and to knee pain
# that no image shows; it sets WOMAC pain, frequent pain and the months of pain behind the
# chronic-pain label. Medial severity, BMI, meniscal damage and effusion set the 12-month
# medial joint-space loss, measured with noise. The structures are then rendered into MR
# signal and X-ray projections of one anatomy per knee.

# %%
dag_figure = cohort.plot_causal_dag()

# %% [markdown]
# The effect sizes the cohort was generated with (from its `ground_truth/effect_sizes.csv`),
# grouped by block of the graph. Values marked *calibrated* were tuned on a large sample so
# that the marginals match the published figures below.

# %%
cohort.effect_sizes_by_block(cohort_root)

# %% [markdown]
# ## Results
#
# ### Demographics
#
# The image cohort's numbers come from its *written* OAI tables read back with
# `kneelib.data.knee_table`. At the `smoke` and `default` presets that cohort is small, so
# the same numbers are also computed on a large sample of the causal model drawn without
# images (`kneelib.synth.causal.sample_cohort_specs`); that column shows what the model
# itself produces, the image-cohort column how far a small cohort strays from it.

# %%
model_knees = cohort.causal_model_knee_table(n_model_sample, seed=seed)
model_label = f"causal model sample (n = {n_model_sample}, no images)"
sources = {cohort_label: knees, model_label: model_knees}
display(cohort.demographics_table(sources))
kl_figure = cohort.plot_kl_distribution(sources, cohort.published()["kl_counts"]["counts"])

# %% [markdown]
# ### Label prevalences
#
# The studies' labels with their own definitions: unilateral frequent pain and the
# WOMAC-difference subgroup (paper 000), chronic pain after the widespread-pain exclusion
# (paper 001), 12-month progression (paper 002); then how often the lesions behind them are
# planted (ground truth). Each share has a 95 % CI: a Wilson interval for shares of
# participants, a cluster bootstrap over participants for shares of knees (a participant's
# knees and visits are not independent).

# %%
prevalences = cohort.label_prevalences_by_source({"image": knees, "model": model_knees})
display(cohort.prevalence_table(sources))
prevalence_figure = cohort.plot_label_prevalences(
    {cohort_label: prevalences["image"], model_label: prevalences["model"]},
    cohort.published_prevalence_percent())
for name, value in cohort.headline_numbers(prevalences, knees).items():
    glue(name, value, display=False)

# %% [markdown]
# In the causal-model sample, {glue:text}`model_unilateral_frequent_pain_percent:.1f` % of
# participants have unilateral frequent pain (95 % CI
# {glue:text}`model_unilateral_frequent_pain_ci_low:.1f`-{glue:text}`model_unilateral_frequent_pain_ci_high:.1f` %;
# published {glue:text}`published_unilateral_frequent_pain_percent:.1f` %) and
# {glue:text}`model_progressor_12m_percent:.1f` % of knees progress within 12 months
# (published {glue:text}`published_progressor_12m_percent:.1f` %).

# %% [markdown]
# ### Every sequence with its ground truth
#
# One participant (the one whose right knee shows the most lesion kinds, without a planted
# artefact): one slice of each MRI sequence as the DICOM files hold it, the tissue labels,
# and the lesion masks as contours. Labels are stored on each series' own grid; the reader
# checks that they match the DICOM geometry.

# %%
showcase_id = cohort.choose_showcase_participant(cohort_root)
gallery_figure = cohort.plot_sequence_gallery(cohort_root, showcase_id)

# %% [markdown]
# The MSME T2 map: signal falls with echo time as $S(\mathrm{TE}) = S_0\, e^{-\mathrm{TE}/T_2}$;
# a mono-exponential fit of the mean cartilage signal gives the cartilage T2 the MRI
# studies use.

# %%
msme_figure = cohort.plot_msme_echoes(cohort_root, showcase_id)

# %%
radiograph_figure = cohort.plot_radiograph_truth(cohort_root, showcase_id, knees)

# %% [markdown]
# ### Synthetic next to real
#
# The synthetic SAG 3D DESS beside the real DESS of the pyKNEEr demo exam {footcite}`bonaretti2020`
# (not an OAI scan: another scanner and grid), on one millimetre scale.

# %%
if present["pykneer_knee_mri"]:
    dess_figure, dess_table = cohort.plot_dess_synthetic_vs_real(
        cohort_root, showcase_id, root / "pykneer_knee_mri" / "DESS_echo1")
    display(dess_table)
else:
    display(Markdown(cohort.missing_dataset_message("pykneer_knee_mri", data_root)))

# %% [markdown]
# Knee-joint crops of the synthetic bilateral radiographs (square, centred on the
# ground-truth joint centre, 1.3 times the plateau width) beside real OAI crops of the same
# KL grade {footcite}`chen2019,chen2018data`; both clipped to their 5th-99th percentiles.

# %%
synthetic_crops = cohort.synthetic_knee_crops(cohort_root, knees, width_per_plateau=crop_width_per_plateau)
if present["chen_kl_radiographs"]:
    crops_figure = cohort.plot_radiograph_crops(root / "chen_kl_radiographs", synthetic_crops,
                                                per_grade=crops_per_grade, image_size=image_size,
                                                split=kl_split, seed=seed)
else:
    display(Markdown(cohort.missing_dataset_message("chen_kl_radiographs", data_root)))

# %% [markdown]
# ### Quality control: every series loaded
#
# Every expected series of every participant is loaded through
# `kneelib.data.iter_series_volumes`: what does not load is excluded and recorded with its
# reason, and loading carries on. The inventory shows what loaded; the QC table what did
# not; the last table puts each artefact the generator planted next to what the QC caught.

# %%
qc_table, series_inventory = cohort.load_every_series(cohort_root, n_participants=qc_n_subjects,
                                                      progress=False)
display(series_inventory)
display(qc_table if len(qc_table) else Markdown("No series was excluded."))
loaded_ids = sorted(knees["ID"].unique())[:qc_n_subjects]
cohort.planted_artefacts_vs_qc(cohort_root, qc_table, participants=loaded_ids)

# %% [markdown]
# ### The real public data
#
# #### Knee radiographs with KL grades
#
# Real crops of baseline bilateral PA fixed-flexion radiographs of the OAI, labelled with
# the OAI central KL reading {footcite}`chen2019,chen2018data`. The radiograph-grading
# study {footcite}`tiulpin2020` grades these features; its real-data chapter trains on
# the `train` split and reports on `val`.

# %%
if present["chen_kl_radiographs"]:
    kl_dir = root / "chen_kl_radiographs"
    display(cohort.kl_label_counts(kl_dir))
    cohort.plot_kl_montage(kl_dir, per_grade=montage_per_grade, split=kl_split,
                           image_size=image_size, seed=seed)
else:
    display(Markdown(cohort.missing_dataset_message("chen_kl_radiographs", data_root)))

# %% [markdown]
# #### One real knee MRI exam
#
# The pyKNEEr demo exam: a sagittal 3D DESS scan, the sequence the OAI acquires for
# cartilage morphometry, and a T1rho series of the same knee at four spin-lock times (TSL,
# stored in the EchoTime tag) {footcite}`bonaretti2020`, both read with
# `kneelib.data.read_dicom_series` (the four spin-lock folders as one 4-D volume).
# Signal falls with TSL as $S = S_0\, e^{-\mathrm{TSL}/T_{1\rho}}$.

# %%
if present["pykneer_knee_mri"]:
    mri_figure, series_table = cohort.plot_dess_and_t1rho(root / "pykneer_knee_mri")
    display(series_table)
else:
    display(Markdown(cohort.missing_dataset_message("pykneer_knee_mri", data_root)))

# %% [markdown]
# #### Per-knee data of the chronic-pain regression
#
# Morales et al. released the per-knee variables behind their Table 3: age, BMI, sex,
# the lateral (LF) and medial (MF) compartment averages of cartilage thickness, the
# DL-guided thickness (DLROI) and chronic pain (Outcome); and the test AUCs of the models
# they chose between (Supplementary Fig. S4) {footcite}`morales2021supp`.

# %%
deep_pain_tables = None
if present["deep_pain_regression"]:
    deep_pain_dir = root / "deep_pain_regression"
    deep_pain_tables = cohort.load_deep_pain_tables(deep_pain_dir)
    display(cohort.deep_pain_summary(deep_pain_tables))
    display(cohort.deep_pain_model_selection(deep_pain_dir))
    cohort.plot_thickness_by_pain(deep_pain_tables)
else:
    display(Markdown(cohort.missing_dataset_message("deep_pain_regression", data_root)))

# %% [markdown]
# ## Published and found
#
# Each synthetic quantity appears twice: `[image cohort]` from the written tables of the
# cohort the other chapters read, `[causal model sample]` from the large no-image sample.

# %%
comparisons = cohort.cohort_comparisons(deep_pain_tables, knees, f"synthetic {cohort_label}",
                                        model_knees, f"synthetic {model_label}")
save_metrics("cohort", comparisons, params=dict(
    preset=preset, n_subjects=n_subjects, seed=seed, n_model_sample=n_model_sample,
    qc_n_subjects=qc_n_subjects, crops_per_grade=crops_per_grade, crop_width_per_plateau=crop_width_per_plateau,
    montage_per_grade=montage_per_grade, image_size=image_size, kl_split=kl_split))
comparison_table(comparisons)

# %% [markdown]
# ## Deviations
#
# - The cohort is synthetic: its images are rendered from a causal model, not acquired. The
#   effect sizes are chosen, not estimated; the numbers above check only marginals the papers
#   report, not the joint structure of real OAI data.
# - The `smoke` and `default` image cohorts are small (and the `smoke` preset uses a seed
#   whose few participants include planted artefacts, so that the QC table has something to
#   show); their shares scatter widely around the model's. Compare the model-sample column
#   with the published figures.
# - The published age and sex figures are the OAI baseline targets of the model; the closest
#   numbers printed in the papers are those of paper 000's
#   {glue:text}`paper000_n_subjects:,.0f` subjects ({glue:text}`paper000_age_mean:.1f` ±
#   {glue:text}`paper000_age_sd:.1f` years, {glue:text}`paper000_female_percent:.1f` % women).
#   Paper 001's KL counts and chronic-pain share are over all its time points, ours over
#   baseline and 12 months.
# - The loader's QC catches what breaks reading (missing series, slice gaps, unreadable
#   files). Motion ghosts and foreign objects load as valid volumes: finding them needs image
#   QC, which the studies did by eye; the last QC table shows which planted artefacts pass.
# - Matrices and resolution are reduced at `smoke` and `default`; only `paper` uses the OAI's.
# - The released regression tables hold slightly fewer rows for the tibia and patella
#   than the single n the paper reports.
#
# ## References
#
# ```{footbibliography}
# ```
