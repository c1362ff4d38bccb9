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
# # qMRI biomarkers: bone and cartilage segmentation, thickness, bone shape, T2 and spherical maps (Morales et al., 2021)
#
# **Question.** Can the pipeline of Morales et al. -- segment bones and cartilage on the 3D DESS,
# measure cartilage thickness, bone shape and cartilage T2, project them on the bone surface and
# unroll them into 2D spherical maps -- be rebuilt from public tools, and how accurate is each
# step against a knee whose anatomy is known? {footcite}`morales2021`

# %% tags=["parameters"]
seed = 0
cohort_preset = "default"  # synthetic cohort preset (ignored when KNEELIB_DATA holds a real OAI download)
n_subjects = None  # participants of the synthetic cohort (None: the preset's count)
visits = [0]  # visit months whose right knees are segmented
n_train = 16  # subjects per segmentation split (paper, bone network: 57/15/30 volumes)
n_valid = 4
n_test = 12
bone_grid_mm = 2.0  # voxel size the bone network sees (None: the DESS grid)
cartilage_grid_mm = None  # voxel size of the cartilage network (None: the DESS grid)
architecture = "unet"  # "unet" (CPU) or "vnet" (the supplement's)
losses = ["mixed", "dice"]  # one ensemble member per loss (paper: all five)
max_steps = 300  # optimiser steps per member
patch_size = 48
bone_learning_rate = 0.003  # Adam (supplement: 5e-4 bones, 1e-4 cartilage, for up to 500 epochs)
cartilage_learning_rate = 0.003
batch_size = 2
validate_every = 50
keep_components = True  # keep each class's anatomical number of connected components (supplement: no such step)
n_boot = 1000
n_biomarker_knees = 6  # test knees through the biomarker extraction
real_label_stride = 1  # keep every n-th voxel of the real pymskt segmentation (1: its full grid)
torch_threads = 2

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from kneelib.config import cache_root, data_root
from kneelib.figures import qmri as figures
from kneelib.papers import qmri_biomarkers as study
from kneelib.report import comparison_table, save_metrics

notebook_start = time.perf_counter()
torch.set_num_threads(torch_threads)
params = dict(seed=seed, cohort_preset=cohort_preset, n_subjects=n_subjects, n_train=n_train, n_valid=n_valid,
              n_test=n_test, bone_grid_mm=bone_grid_mm, cartilage_grid_mm=cartilage_grid_mm,
              architecture=architecture, losses=losses, max_steps=max_steps, patch_size=patch_size,
              keep_components=keep_components)
figure_dir = cache_root() / "figures" / study.STUDY
figure_dir.mkdir(parents=True, exist_ok=True)
paper = study.published()
s1_paper = paper["table_s1"]["structures"]
for name, values in s1_paper.items():
    glue(f"paper_dsc_{name}", values["dsc_percent"], display=False)
glue("paper_mpts_min", min(v["mpts_mm"] for v in s1_paper.values()), display=False)
glue("paper_mpts_max", max(v["mpts_mm"] for v in s1_paper.values()), display=False)
glue("paper_qc_excluded", paper["qc_excluded"]["count"], display=False)
glue("paper_qc_of", paper["qc_excluded"]["of"], display=False)
glue("paper_radius", paper["cylinder_radius_mm"]["value"], display=False)

# %% [markdown]
# ## The papers' claim
#
# Morales et al. segmented femur, tibia and patella with an ensemble of five 3D V-Nets and the
# three cartilages and menisci with three 2D and three 3D V-Nets (supplement, Table S1): test DSC
# femur {glue:text}`paper_dsc_femur`%, tibia {glue:text}`paper_dsc_tibia`%, patella
# {glue:text}`paper_dsc_patella`%, femoral cartilage {glue:text}`paper_dsc_femoral_cartilage`%,
# tibial {glue:text}`paper_dsc_tibial_cartilage`%, patellar {glue:text}`paper_dsc_patellar_cartilage`%,
# mean point-to-surface distances {glue:text}`paper_mpts_min` to {glue:text}`paper_mpts_max` mm.
# Segmentations whose volume lay beyond 3 SD of the training volumes were excluded
# ({glue:text}`paper_qc_excluded` of {glue:text}`paper_qc_of:,` DESS volumes). From the
# segmentations: cartilage thickness per sagittal slice (skeleton, distance transform, doubled),
# bone shape (distance from the bone centroid), cartilage T2 (three-parameter mono-exponential on
# the MSME aligned to the DESS), each projected on the bone surface in a cylinder of radius
# {glue:text}`paper_radius` mm along the normal and unrolled into 224 x 224 spherical maps.
#
# ## Data
#
# Right knees with a SAG 3D DESS, a SAG MSME T2 series and a KL grade, per visit, from
# `kneelib.data`: a real OAI download when `KNEELIB_DATA` holds one, else the synthetic cohort,
# whose ground-truth tissue labels train and test the networks. Subjects are split as in Table 4
# (no subject in two splits), with the paper's independence tests (Pearson chi-square for sex,
# one-way MANOVA for age and BMI).

# %%
root, data_label = study.cohort_root(cohort_preset, seed, n_subjects)
knees = study.qmri_knee_table(root, visits=(0, 12))
splits = study.segmentation_splits(knees, {"train": n_train, "valid": n_valid, "test": n_test}, seed=seed,
                                   visits=visits)
table4 = study.table4(splits)
print(f"{data_label}: {len(knees)} right knee time points with DESS, MSME and KL "
      f"({knees.participant_id.nunique()} subjects)")
display(table4)
display(pd.DataFrame({"ours": table4.attrs["p"], "paper (bone row)": {
    k: paper["table4"]["bone"][k] for k in ("chi_square_sex_p", "manova_age_bmi_p")}}).round(3))

# %% [markdown]
# ## Method
#
# ### Segmentation (supplement 003)
#
# MONAI networks (a small 3D UNet on the CPU, the V-Net at `paper`), one ensemble member per
# distance-weighted loss, softmax outputs averaged; volumes divided by their 85th intensity
# percentile, flip and +-5 degree rotation augmentation, Adam, early stopping on the validation
# split. The bone network sees a coarser grid than the cartilage network; both predictions come
# back to the DESS grid, where they are scored against the truth. With `keep_components` each
# class then keeps its anatomical number of connected components (one bone, two tibial cartilage
# plates, two menisci, ...; a piece at least a quarter of the largest stays too) and each
# cartilage only the components on its segmented bone.

# %%
settings = study.SegmentationSettings(grid_mm={"bone": bone_grid_mm, "cartilage": cartilage_grid_mm},
                                      learning_rate={"bone": bone_learning_rate, "cartilage": cartilage_learning_rate},
                                      losses=tuple(losses), architecture=architecture, n_steps=max_steps,
                                      patch_size=(patch_size,) * 3, batch_size=batch_size,
                                      validate_every=validate_every, seed=seed, keep_components=keep_components)
volumes = {name: study.load_dess_volumes(root, splits[splits.split == name]) for name in ("train", "valid", "test")}
start = time.perf_counter()
ensembles = study.train_segmenters(volumes["train"], volumes["valid"], settings)
training_minutes = (time.perf_counter() - start) / 60
per_volume, structures, qc, predictions, seconds_per_volume = study.evaluate_segmentation(
    ensembles, volumes["test"], volumes["train"], settings, n_boot=n_boot, seed=seed)
print(f"training {training_minutes:.1f} min for {sum(len(m) for m in ensembles.values())} members; "
      f"inference {seconds_per_volume:.1f} s per knee (both ensembles); DESS grid {volumes['test'].spacing_mm} mm")
display(qc[qc.excluded][["subject_id", "task", "reason"]] if qc.excluded.any() else "QC: no test volume excluded")

# %% [markdown]
# ## Results
#
# ### Table S1: DSC and MPTS on the held-out synthetic test split

# %%
s1 = study.table_s1(structures)
display(s1.round(2))

# %% [markdown]
# ### Segmentations and their errors (Fig. S2)
#
# A test knee: the truth and the ensemble's labels, then the error map (green agreement, cyan
# false positive, magenta false negative).

# %%
from kneelib.models.segmentation import network_classes, network_targets

test = volumes["test"]
image, truth = test.images[0], test.tissue_labels[0]
truths = {task: network_targets(truth, task) for task in ("bone", "cartilage")}
middle = image.shape[0] // 2
slices = sorted({max(0, middle - image.shape[0] // 5), middle, min(image.shape[0] - 1, middle + image.shape[0] // 5)})
for task in ("bone", "cartilage"):
    fig = figures.plot_segmentation_overlay(image, {"truth": truths[task], "ensemble": predictions[0][task]}, slices,
                                            test.spacing_mm, f"{task} network, test knee {test.knees.participant_id[0]}",
                                            legend=dict(enumerate(network_classes(task))))
    fig.savefig(figure_dir / f"overlay_{task}.png", dpi=90)
    plt.show()
fig = figures.plot_error_maps(image, predictions[0], truths, slices, test.spacing_mm, "Fig. S2: segmentation errors")
fig.savefig(figure_dir / "errors.png", dpi=90)
plt.show()

# %% [markdown]
# ### Biomarkers of the test knees (Figs. 3-4)
#
# Per knee (`kneelib.qmri.biomarkers`, run in parallel and cached by content): thickness per
# sagittal slice, bone shape, the MSME aligned to the DESS through the DICOM patient coordinates
# and fitted voxel by voxel, the projection on each bone surface, and the spherical maps. Each
# test knee is measured twice: on its ground-truth labels (to check the measurements against
# what the generator planted) and on the ensemble's segmentation when it passes the QC rule.

# %%
chosen = list(range(min(n_biomarker_knees, len(test.images))))
names = [f"{test.knees.participant_id[k]}/{test.knees.visit_month[k]}" for k in chosen]
passed = [k for k in chosen if not qc[qc.subject_id == test.knees.participant_id[k]].excluded.any()]
start = time.perf_counter()
truth_inputs = study.biomarker_inputs(root, test, chosen)
truth_biomarkers, truth_failures = study.knee_biomarkers(truth_inputs, n_jobs=torch_threads)
biomarker_seconds = (time.perf_counter() - start) / max(1, len(chosen))
segmented_inputs = study.biomarker_inputs(root, test, passed, predictions)
segmented_biomarkers, segmented_failures = study.knee_biomarkers(segmented_inputs, n_jobs=torch_threads)
print(f"{len(truth_biomarkers)} knees from the truth in {biomarker_seconds:.1f} s each; "
      f"{len(segmented_biomarkers)} of {len(passed)} QC-passing segmentations measured; "
      f"failed: {truth_failures + segmented_failures or 'none'}")
display(study.biomarker_summary(truth_biomarkers, names).round(2))

# %% [markdown]
# ### Thickness and T2 against the synthetic truth
#
# Errors of the paper's per-slice thickness and of an independent thickness along the bone
# normals against the planted regional means, and of the fitted deep / superficial / total T2
# against the planted T2 (`kneelib.qmri.validation`): on the truth labels, then on the segmentation.

# %%
from kneelib.qmri.validation import median_absolute_errors

errors = {}
for source, rows_, inputs_ in (("truth labels", chosen, truth_inputs), ("segmentation", passed, segmented_inputs)):
    if rows_:
        errors[source] = study.validation_tables(root, test.knees.iloc[rows_], inputs_)
for source, (thickness_errors, t2_errors) in errors.items():
    print(source)
    display(median_absolute_errors(thickness_errors, ["error_per_slice_mm", "error_normals_mm"]).round(2))
    if len(t2_errors):
        display(median_absolute_errors(t2_errors, ["error_ms"], by=("cartilage", "layer")).round(1))

# %%
if truth_biomarkers:
    knee = truth_biomarkers[0]
    fig = figures.plot_surface_views(knee.bones, "thickness", "cartilage thickness (mm)")
    fig.savefig(figure_dir / "surface_thickness.png", dpi=90)
    plt.show()
    fig = figures.plot_surface_views(knee.bones, "t2_total", "cartilage T2 (ms)", cmap="magma")
    fig.savefig(figure_dir / "surface_t2.png", dpi=90)
    plt.show()
    fig = figures.plot_spherical_maps(knee.bones, ["bone_shape", "thickness", "t2_deep", "t2_superficial"])
    fig.savefig(figure_dir / "spherical_maps.png", dpi=90)
    plt.show()
    fig = figures.plot_strategies(study.strategy_images(truth_biomarkers), f"Fig. 4 input strategies, femur, knee {names[0]}")
    fig.savefig(figure_dir / "strategies.png", dpi=90)
    plt.show()

# %% [markdown]
# ### Spherical maps against the surface (Fig. S3)

# %%
pairs, agreement = study.spherical_vs_surface(truth_biomarkers, names, n_boot=n_boot, seed=seed)
fig = figures.plot_bland_altman(pairs, agreement)
fig.savefig(figure_dir / "bland_altman.png", dpi=90)
plt.show()
display(agreement.round(3))

# %% [markdown]
# ### Real MRI
#
# The trained ensembles on the real pyKNEEr DESS (resampled to the training grid), the
# biomarkers of the real pymskt segmentation (OAI DESS geometry), and the three-parameter fit on
# the real MSME (T2) and cubequant (T1rho) series.

# %%
real = {}
real_root = data_root()
dess, dess_spacing, _ = study.read_volume_slices(real_root / "pykneer_knee_mri" / "DESS_echo1")
real_image, real_labels = study.segment_real_dess(ensembles, dess, dess_spacing, test.spacing_mm, settings)
real_slices = list(np.linspace(real_image.shape[0] * 0.3, real_image.shape[0] * 0.7, 4).astype(int))
fig = figures.plot_segmentation_overlay(real_image, {"bone network": real_labels["bone"],
                                                     "cartilage network": real_labels["cartilage"]},
                                        real_slices, test.spacing_mm, "Real DESS (pyKNEEr), synthetic-trained ensembles")
fig.savefig(figure_dir / "real_dess_overlay.png", dpi=90)
plt.show()
real_fractions = study.real_label_fractions(real_labels, test.spacing_mm)
display(real_fractions.round(1))

# %%
pymskt = study.pymskt_biomarkers(real_root / "pymskt_knee_mri" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd",
                                 stride=real_label_stride)
display(study.biomarker_summary([pymskt], ["pymskt knee"]).round(2))
fig = figures.plot_surface_views(pymskt.bones, "thickness", "cartilage thickness (mm)")
fig.savefig(figure_dir / "real_surface_thickness.png", dpi=90)
plt.show()
fig = figures.plot_spherical_maps(pymskt.bones, ["bone_shape", "thickness"])
fig.savefig(figure_dir / "real_spherical_maps.png", dpi=90)
plt.show()
real["femoral_thickness_mm"] = float(pymskt.bones["femur"].summary["thickness_mean_mm"])

# %%
mese, mese_spacing, mese_te = study.read_volume_slices(real_root / "pymskt_knee_mri" / "MESE_T2")
centre = mese.shape[0] // 2
t2_map = study.real_relaxation_map(mese[centre - 1:centre + 2], mese_te)[1]
rois = study.mese_regions(t2_map.shape)
t2_regions = study.roi_statistics(t2_map, rois)
fig = figures.plot_relaxation_map(mese[centre, ..., 0], t2_map, rois, mese_spacing[1:],
                                  f"Real MSME (pymskt), slice {centre}: three-parameter T2 fit", vmax=100)
fig.savefig(figure_dir / "real_t2_map.png", dpi=90)
plt.show()
display(t2_regions.round(1))

# %%
t1rho = study.real_t1rho(real_root / "pykneer_knee_mri", real_labels["cartilage"], dess.shape)
t1rho_regions, slab = t1rho["table"], t1rho["slab"]
real["t1rho_femoral_ms"] = float(t1rho_regions.loc["femoral cartilage (drawn)", "2-parameter fit of the mean signal, ms"])
real["t1rho_voxel_median_ms"] = float(t1rho_regions.loc["femoral cartilage (drawn)", "median ms"])
real["t1rho_model_mask_ms"] = float(t1rho_regions.loc["femoral cartilage (model)", "median ms"])
fig = figures.plot_relaxation_map(t1rho["signal"][slab, ..., 0], t1rho["map_ms"][slab],
                                  {k: v[slab] for k, v in t1rho["rois"].items()}, t1rho["spacing_mm"][1:],
                                  f"Real cubequant (pyKNEEr), slice {slab}: three-parameter T1rho fit",
                                  vmax=120, label="T1rho (ms)")
fig.savefig(figure_dir / "real_t1rho_map.png", dpi=90)
plt.show()
display(t1rho_regions.round(1).fillna("no fit in range"))

# %% [markdown]
# ### Viewer
#
# Scroll the slices of a test knee with either overlay: live in JupyterLab (`segmentation_viewer`),
# from pre-rendered frames on this page (no kernel needed).

# %%
figures.segmentation_viewer(image, {"truth (cartilage)": truths["cartilage"], "ensemble (cartilage)": predictions[0]["cartilage"],
                                    "truth (bone)": truths["bone"], "ensemble (bone)": predictions[0]["bone"]})

# %% [markdown]
# ### Published and found

# %%
rows = study.comparisons(s1, table4.attrs["p"], real, data_label, len(test.images))
save_metrics(study.STUDY, rows, params)
display(comparison_table(rows))
minutes = (time.perf_counter() - notebook_start) / 60
for name in s1.index:
    glue(f"dsc_{name}", float(s1.loc[name].get("DSC %", np.nan)), display=False)
glue("n_test", len(test.images), display=False)
glue("n_excluded", int(qc.groupby("subject_id").excluded.any().sum()), display=False)
glue("qc_sentence", study.qc_sentence(qc), display=False)
glue("real_femoral_thickness", real["femoral_thickness_mm"], display=False)
glue("real_t1rho", real["t1rho_femoral_ms"], display=False)
glue("real_t1rho_model", real["t1rho_model_mask_ms"], display=False)
glue("real_t1rho_voxels", real["t1rho_voxel_median_ms"], display=False)
glue("real_cartilage_ml", float(real_fractions.loc["femoral_cartilage", "volume mL"]), display=False)
glue("pymskt_cartilage_ml", float(pymskt.bones["femur"].summary["n_cartilage_voxels"]
                                  * np.prod(pymskt.spacing_mm) / 1000), display=False)
glue("minutes", minutes, display=False)
glue("dess_grid", " x ".join(f"{v:.2f}" for v in test.spacing_mm), display=False)
glue("oai_grid", " x ".join(f"{v:.2f}" for v in study.read_pymskt_segmentation(
    real_root / "pymskt_knee_mri" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd")[1]), display=False)
print(f"whole chapter {minutes:.1f} min with {torch_threads} threads")

# %% [markdown]
# On the synthetic test split ({glue:text}`n_test` knees) the ensembles reach a femur DSC of
# {glue:text}`dsc_femur:.1f`% and a femoral cartilage DSC of {glue:text}`dsc_femoral_cartilage:.1f`%
# (paper {glue:text}`paper_dsc_femur`% and {glue:text}`paper_dsc_femoral_cartilage`%). The error
# maps show where the rest goes: the cartilage network labels about one voxel too many along the
# cartilage surfaces and some fat between the condyles as meniscus, so its volumes run large.
# {glue:text}`qc_sentence` The real pymskt knee's femoral cartilage is
# {glue:text}`real_femoral_thickness:.2f` mm thick on average. On the real pyKNEEr slab, in a
# femoral cartilage region drawn by hand (shown on the map), the mean signal's two-parameter
# fit gives a T1rho of {glue:text}`real_t1rho:.0f` ms, the value set beside the reference; the
# paper's three-parameter fit per voxel has a median of {glue:text}`real_t1rho_voxels:.0f` ms there,
# because with four spin-lock times the offset `C` is poorly determined and trades off against
# T1rho. In the femoral cartilage that the network labels on the real DESS the per-voxel median is
# {glue:text}`real_t1rho_model:.0f` ms. The whole chapter ran in {glue:text}`minutes:.1f` minutes.
#
# **Transfer to real MRI.** On the real pyKNEEr DESS the cartilage network calls
# {glue:text}`real_cartilage_ml:.1f` mL femoral cartilage, where a real knee holds about
# {glue:text}`pymskt_cartilage_ml:.1f` mL (the pymskt segmentation); the overlays show where it
# goes wrong. Networks trained only on synthetic DESS do not yet segment a real scan reliably:
# what would help is real labelled DESS (the OAI's hand segmentations) for training or at least
# for fine-tuning, intensity and contrast augmentation wide enough to cover other scanners
# (domain randomisation), and training at the real resolution. The T1rho in the transferred mask
# inherits its errors, which is why the reported T1rho reads the drawn region.
#
# ## Deviations
#
# - **Data.** Synthetic DESS with ground-truth labels instead of the OAI knees the authors
#   segmented by hand; this run's DESS grid ({glue:text}`dess_grid` mm) is coarser than the
#   OAI's (pymskt's segmentation shows that grid: {glue:text}`oai_grid` mm), so thin cartilage is a
#   few voxels thick and its DSC is not comparable to Table S1.
# - **Networks.** A small MONAI UNet with two losses per network (`default`) instead of five
#   3D V-Nets (bones) and three 2D + three 3D V-Nets (cartilage); the bone network sees a
#   2 mm grid; a few hundred steps instead of up to 500 epochs. `paper.yaml` holds the V-Net and
#   all five losses. Adam's learning rate is raised (`bone_learning_rate`,
#   `cartilage_learning_rate`; the supplement's at `paper`) to converge in that budget, and
#   training uses random patches rather than whole volumes.
# - **Splits.** Subjects at one time point; sizes from the parameters, not Table 4's.
# - **Post-processing.** The supplement reports none; at `default` the small networks leave
#   islands (patellar cartilage on the trochlea, bone in the fat pad) that dominate the mean
#   point-to-surface distance, so each class keeps its anatomical connected components
#   (`keep_components`; `paper.yaml` turns it off).
# - **QC rule.** Table S1 scores every test volume (as the supplement's test set); the 3-SD
#   volume rule of "Patient inclusion" decides which segmentations go on to the biomarkers, and
#   its reference is the ground-truth volumes of our training split (the paper's: its training
#   segmentations).
# - **Fig. S3 and the error tables** use the biomarkers of the ground-truth labels (every test
#   knee has them); the segmented knees that pass QC are measured and checked the same way.
# - **Reference values.** The real-data thickness and T1rho are set beside the descriptions of
#   the public data sets (`SOURCE.md`), not beside numbers of paper 001.
# - **Real data.** The networks never saw a real scan: on the real pyKNEEr DESS (another scanner,
#   another contrast and resolution) the labels above show how far they transfer; the real
#   thickness and spherical maps use the real pymskt segmentation instead, and the T1rho of
#   femoral cartilage is read in a region drawn by hand on three slices of the posterior
#   condyle (`t1rho_cartilage_region`), as the reference was measured on small hand-placed
#   regions; the value in the transferred mask is shown beside it.
#
# ## References
#
# ```{footbibliography}
# ```
