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
crop_width_per_plateau = 1.15  # side of a synthetic knee crop / distance of the outer plateau margins
data_root = None  # None: $KNEELIB_DATA
montage_per_grade = 4  # real radiographs shown per KL grade
image_size = 224  # display size of each radiograph crop (pixels)
kl_split = "train"  # split of the real radiographs shown: train or val
mesh_mm = 1.5  # grid edge (mm) of the marching-cubes bone surfaces
realism = {}  # overrides of kneelib.train.realism.DEFAULT_SETTINGS ({}: its defaults)

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
# `kneelib.synth.cohort.generate_cohort` writes, per participant, a bilateral PA
# fixed-flexion radiograph at baseline and 12 months and the MRI series the book's chapters
# read: at baseline the SAG IW TSE and COR IW TSE of both knees and the right knee's SAG 3D
# DESS and MSME T2 map (7 echoes), at 12 months the right knee's DESS and T2 map
# (`python -m kneelib synth --all-series` writes the whole OAI knee protocol, every series of
# both knees at both visits, the same bytes for the series both write). Beside them are the
# OAI clinical tables (`Enrollees`, `AllClinical00/01`, `kXR_SQ_BU00/01`,
# `kXR_QJSW_Duryea00/01`) and `contents.csv`. The folder `ground_truth/` holds what the causal
# model planted. Everything below is read back with `kneelib.data`, as a real OAI download
# would be.
#
# Every knee is built from one real knee: the segmentation of a right knee at OAI DESS
# geometry that pymskt ships (bones, cartilage plates, menisci), kept in the package as a
# compact template (`kneelib.synth.template`). Per knee it is bent by a smooth random
# deformation, scaled by body size and in width and depth, mirrored for a left knee, and its
# cartilage cover keeps the template's thickness pattern scaled to each region's planted
# mean. Soft tissues the segmentation lacks (cruciate and collateral ligaments, tendons,
# Hoffa's fat pad, fluid recesses, muscle, fat, skin, vessels) are placed relative to the
# template's bones. The findings of the causal model are edits of this anatomy: the joint
# opened to the planted minimum joint space width per compartment, cartilage thinned and
# focally lost, osteophytes grown at the template's articular margins, sclerosis and bone
# marrow lesions under the compartment's surfaces, effusion in the suprapatellar recess,
# meniscal tears, so every ground-truth mask is exact.

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
# Each synthetic image below comes from the cohort this run reads, so the figures show
# whatever anatomy and renderer generated it. All planes are in patient orientation, read
# from each series' affine: sagittal views anterior left, coronal views the patient's right
# on the left, on a millimetre scale. The real series carry no labels; their planes are
# fixed slice positions chosen by eye (`kneelib.figures.synthetic_vs_real`).
#
# **SAG 3D DESS.** A sagittal slice through the medial condyle and a coronal reformat
# through both tibial plateaus, beside the same planes of the real DESS of the pyKNEEr demo
# exam {footcite}`bonaretti2020` (not an OAI scan: another scanner and grid).

# %%
if present["pykneer_knee_mri"]:
    dess_figure, dess_table = cohort.plot_dess_planes(cohort_root, showcase_id, root / "pykneer_knee_mri" / "DESS_echo1")
    display(dess_table)
else:
    display(Markdown(cohort.missing_dataset_message("pykneer_knee_mri", data_root)))

# %% [markdown]
# **MSME echoes and T2 maps.** Echoes of one sagittal slice of the synthetic T2 mapping
# series beside a real multi-echo spin-echo series of another knee (pymskt test data), each
# with the T2 map of the three-parameter fit of paper 001 (`kneelib.qmri.relaxometry`).

# %%
if cohort.dataset_present(root, "pymskt_knee_mri"):
    msme_real_figure, msme_table = cohort.plot_msme_synthetic_vs_real(cohort_root, showcase_id,
                                                                      root / "pymskt_knee_mri" / "MESE_T2")
    display(msme_table)
else:
    display(Markdown(cohort.missing_dataset_message("pymskt_knee_mri", data_root)))

# %% [markdown]
# **Bone surfaces.** Marching-cubes surfaces of the femur, tibia, patella and fibula of the
# same synthetic right knee (its DESS ground-truth labels) beside those of the real knee
# segmentation the synthetic anatomy's template is derived from (pymskt, OAI DESS grid).

# %%
if cohort.dataset_present(root, "pymskt_knee_mri"):
    bones_figure = cohort.plot_bone_surfaces_vs_template(cohort_root, showcase_id, root, mesh_mm=mesh_mm)
else:
    display(Markdown(cohort.missing_dataset_message("pymskt_knee_mri", data_root)))

# %% [markdown]
# **Radiograph crops.** Knee-joint crops of the synthetic bilateral radiographs beside real OAI
# crops of the same KL grade {footcite}`chen2019,chen2018data`; both clipped to their
# 5th-99th percentiles. Each synthetic crop is square, centred on the ground-truth joint
# centre and framed on its knee as the real crops are (they were cut from detected knee
# boxes): its side is the parameter `crop_width_per_plateau` times the distance of the outer
# plateau margins, the share a real crop shows. The realism measures below cut their
# synthetic crops with the same framing.

# %%
synthetic_crops = cohort.synthetic_knee_crops(cohort_root, knees, width_per_plateau=crop_width_per_plateau)
if present["chen_kl_radiographs"]:
    crops_figure = cohort.plot_radiograph_crops(root / "chen_kl_radiographs", synthetic_crops,
                                                per_grade=crops_per_grade, image_size=image_size,
                                                split=kl_split, seed=seed)
else:
    display(Markdown(cohort.missing_dataset_message("chen_kl_radiographs", data_root)))

# %% [markdown]
# ### Realism, measured
#
# Looking is not measuring. Two numbers say how close the synthetic radiographs are to real
# ones, and a third does the same for the DESS (`kneelib.train.realism.measure_realism`);
# none is tuned against anything held out. **Sim-to-real transfer**: the KL grader of the
# radiograph-grading study {footcite}`tiulpin2020`, trained and its epoch chosen on synthetic
# knee crops only, tested once on the real `val` crops, beside its ceiling: the same grader
# trained on as many real crops. **Discriminability**: a small CNN
# trained to tell real from synthetic images, split by subject; its ROC AUC (lower is more
# realistic), and where it looks (Grad-CAM). Every CI resamples subjects.

# %%
realism_result = None
missing = [name for name in ("chen_kl_radiographs", "pykneer_knee_mri") if not present[name]]
if not missing:
    realism_result = cohort.measure_realism(cohort_root, root, {"width_per_plateau": crop_width_per_plateau,
                                                                 **realism}, seed=seed)
    display(cohort.realism_table(realism_result))
    gradcam_figures = cohort.plot_realism_gradcam(realism_result)
for name in missing:
    display(Markdown(cohort.missing_dataset_message(name, data_root)))
for name, value in cohort.realism_numbers(realism_result).items():
    glue(name, value, display=False)

# %% [markdown]
# The grader trained only on synthetic crops reaches a quadratic kappa of
# {glue:text}`realism_transfer_kappa:.2f` (95 % CI {glue:text}`realism_transfer_kappa_ci_low:.2f` to
# {glue:text}`realism_transfer_kappa_ci_high:.2f`) on the real crops of
# {glue:text}`realism_transfer_test_subjects:,.0f` subjects; the target is at least
# {glue:text}`realism_transfer_kappa_target:.2f`. The same grader trained on as many *real*
# crops reaches {glue:text}`realism_reference_kappa:.2f` ({glue:text}`realism_reference_kappa_ci_low:.2f`
# to {glue:text}`realism_reference_kappa_ci_high:.2f`) on the same crops: about what a perfectly
# realistic generator could give at this size; graders trained on all of a large real set
# reached {glue:text}`realism_real_trained_kappa:.2f` in paper 004 (on another test set). Turned
# round, that real-trained grader grades the synthetic crops against their planted KL grades with a
# kappa of {glue:text}`realism_real_to_synthetic_kappa:.2f`
# ({glue:text}`realism_real_to_synthetic_kappa_ci_low:.2f` to
# {glue:text}`realism_real_to_synthetic_kappa_ci_high:.2f`, resampling synthetic subjects; the
# "GAN-test" of Shmelkov et al. {footcite}`shmelkov2018gan`): a synthetic KL 0 knee reads as grade
# {glue:text}`realism_real_to_synthetic_expected_kl0:.1f` on average and a KL 4 knee as
# {glue:text}`realism_real_to_synthetic_expected_kl4:.1f`, so a grader that knows real knees sees
# the planted grades only faintly. The
# discriminator tells real from synthetic crops with an AUC of
# {glue:text}`realism_radiograph_auc:.2f` ({glue:text}`realism_radiograph_auc_ci_low:.2f` to
# {glue:text}`realism_radiograph_auc_ci_high:.2f`; target at most
# {glue:text}`realism_discriminator_auc_target:.2f`), and real from synthetic DESS slices with
# {glue:text}`realism_dess_auc:.2f` ({glue:text}`realism_dess_auc_ci_low:.2f` to
# {glue:text}`realism_dess_auc_ci_high:.2f`; one real exam, so this CI resamples slabs of that
# exam, not people). The radiograph figure also shows how alike the crops of each class are:
# the standard deviation of the network input across the test crops, pixel by pixel. The
# synthetic knees vary less (mean SD {glue:text}`realism_radiograph_spread_synthetic:.2f` against
# {glue:text}`realism_radiograph_spread_real:.2f` for the real ones), and their variation sits on
# thin outlines where the real crops vary broadly: one anatomy, posed and framed alike.

# %% [markdown]
# ### Quality control: every series loaded
#
# Every expected series of every participant (those the cohort was written with) is loaded
# through `kneelib.data.iter_series_volumes`: what does not load is excluded and recorded
# with its reason, and loading carries on. The inventory shows what loaded; the QC table what
# did not (each reason up to its first clause); the last table puts each artefact the
# generator planted in a knee visit with MRI next to what the QC caught.

# %%
qc_table, series_inventory = cohort.load_every_series(cohort_root, n_participants=qc_n_subjects,
                                                      progress=False)
display(series_inventory)
display(cohort.qc_display_table(qc_table) if len(qc_table) else Markdown("No series was excluded."))
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
if realism_result is not None:
    comparisons += cohort.realism_comparisons(realism_result, f"synthetic {cohort_label}")
save_metrics("cohort", comparisons, params=dict(
    preset=preset, n_subjects=n_subjects, seed=seed, n_model_sample=n_model_sample,
    qc_n_subjects=qc_n_subjects, crops_per_grade=crops_per_grade, crop_width_per_plateau=crop_width_per_plateau,
    montage_per_grade=montage_per_grade, image_size=image_size, kl_split=kl_split, mesh_mm=mesh_mm,
    realism=realism))
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
#   The synthetic planes, T2 maps and bone surfaces show the preset's voxels (blocky at
#   `smoke`), the real ones their own.
# - The real MRI beside the synthetic series are single exams of other knees on another
#   scanner (GE 3 T), not OAI scans: the DESS of the pyKNEEr demo and the multi-echo
#   spin-echo of pymskt differ from the OAI protocol in grid, echo times and contrast, so
#   the comparison is of anatomy, texture and T2 contrast, not a protocol match. Their planes
#   are fixed by eye; the synthetic planes are chosen from the ground-truth labels. The T2 maps
#   fit every tissue voxel of the slice; outside cartilage and fluid (marrow fat, muscle) a
#   mono-exponential is only a description.
# - The template in the bone-surface figure is the real label map the synthetic anatomy is
#   derived from, meshed at the same grid as the synthetic bones.
# - The realism numbers are measured with light settings (the `realism` parameter: a small
#   network, a few epochs); at `smoke` they only show that the measurement runs. The
#   sim-to-real grader is trained with the OARSI chapter's schedule (one epoch of heads, then
#   all layers at a higher rate), not paper 004's schedule cut to a few epochs: on real crops
#   alone (half of the `train` subjects against the other half; `val` unread) the paper's cut
#   schedule learnt too little for the measure to show its target met
#   (`kneelib.train.realism.TRANSFER_SCHEDULE`). The sim-to-real kappa is not the same
#   measurement as paper 004's kappa (a grader trained on a large real set, another test
#   set); its ceiling at this size is the real-trained reference beside it. The DESS
#   discriminator sees one real exam.
# - The released regression tables hold slightly fewer rows for the tibia and patella
#   than the single n the paper reports.
#
# ## References
#
# ```{footbibliography}
# ```
