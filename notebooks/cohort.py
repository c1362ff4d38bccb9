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
# look like? Every later chapter reads its data through `kneelib`; this chapter shows the
# real public data the book has at hand under `KNEELIB_DATA`: OAI knee radiographs with
# Kellgren-Lawrence (KL) grades, one real knee MRI exam, and the per-knee table a
# published study released. A synthetic cohort in the OAI on-disk format joins them once
# the data layer lands.

# %% tags=["parameters"]
# Parameters (papermill injects params/cohort/<set>.yaml after this cell).
data_root = None  # None: $KNEELIB_DATA
seed = 0  # sampling seed of the radiograph montage
montage_per_grade = 4  # radiographs shown per KL grade
image_size = 224  # display size of each radiograph crop (pixels)
kl_split = "train"  # split the montage samples from: train or val
max_slices = None  # DICOM slices read per series around the centre (None: all)

# %%
from IPython.display import Markdown, display

from kneelib.papers import cohort
from kneelib.report import comparison_table, save_metrics

inventory = cohort.dataset_inventory(data_root)
root = cohort.resolve_root(data_root)
present = dict(zip(inventory["dataset"], inventory["present"]))
inventory

# %% [markdown]
# ## The claim
#
# A data chapter makes no claim of its own. It checks what the studies say about their
# data where the data are public: here, the number of knees in the chronic-pain regression
# of Morales et al. {footcite}`morales2021` (Table 3) against the table its authors
# released. The studies all use the Osteoarthritis Initiative (OAI) and its MRI protocol
# {footcite}`peterfy2008`.
#
# ## Data
#
# ### Knee radiographs with KL grades
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
# ### One real knee MRI exam
#
# A sagittal 3D double-echo steady-state (DESS) scan, the sequence the OAI acquires for
# cartilage morphometry, and a T1rho series of the same knee at four spin-lock times (TSL,
# stored in the EchoTime tag) {footcite}`bonaretti2020`. It is not an OAI scan
# (another scanner and grid), but it gives real anatomy, intensities and headers for the
# synthetic-next-to-real figures of later chapters. Signal falls with TSL as
# $S = S_0\, e^{-\mathrm{TSL}/T_{1\rho}}$.

# %%
if present["pykneer_knee_mri"]:
    mri_figure, series_table = cohort.plot_dess_and_t1rho(root / "pykneer_knee_mri",
                                                          max_slices=max_slices)
    display(series_table)
else:
    display(Markdown(cohort.missing_dataset_message("pykneer_knee_mri", data_root)))

# %% [markdown]
# ### Per-knee data of the chronic-pain regression
#
# Morales et al. released the per-knee variables behind their Table 3: age, BMI, sex,
# the lateral (LF) and medial (MF) compartment averages of cartilage thickness, the
# DL-guided thickness (DLROI) and chronic pain (Outcome); and the test AUCs of the models
# they chose between (Supplementary Fig. S4).

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
# ## Results: published and found

# %%
comparisons = cohort.cohort_comparisons(deep_pain_tables)
save_metrics("cohort", comparisons, params=dict(
    seed=seed, montage_per_grade=montage_per_grade, image_size=image_size, kl_split=kl_split,
    max_slices=max_slices))
comparison_table(comparisons)

# %% [markdown]
# ## Deviations
#
# - Only the public real data are shown; the synthetic OAI-format cohort and the OAI
#   readers of `kneelib.data` replace the minimal DICOM reading of this chapter later.
# - The released regression tables hold slightly fewer rows for the tibia and patella
#   than the single n the paper reports.
#
# ## References
#
# ```{footbibliography}
# ```
