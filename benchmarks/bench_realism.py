"""Realism of the default synthetic cohort (issue 10, item 4): sim-to-real transfer kappa and discriminability AUCs.

Runs :func:`kneelib.train.realism.measure_realism` once on the ``default`` cohort of seed 0
(``kneelib.synth.cohort.default_out_dir("default", 0)``, generated beforehand, e.g. by a
chapter run) against ``$KNEELIB_DATA`` (Chen KL crops, pyKNEEr DESS) and prints:

- the KL grader trained and selected on synthetic crops only, tested once on the real
  Chen ``val`` crops: quadratic kappa with a subject-level CI (higher = more realistic;
  issue 10 target >= 0.5), and its ceiling: the same recipe trained on as many real Chen
  ``train`` crops, tested on the same crops;
- real-vs-synthetic discriminator AUC on radiograph crops and on DESS slices (lower =
  more realistic; target <= 0.85), with subject-level CIs and the Grad-CAM border share.

Light settings (:data:`kneelib.train.realism.DEFAULT_SETTINGS`: 128 px, 4 + 3 epochs, one
thread); about 10-15 minutes on the shared 2-core machine. Override them with a JSON
object in ``KNEELIB_BENCH_REALISM_SETTINGS``. Skipped, with the reason, when the default
cohort or the real data are absent. Run with::

    pytest benchmarks/bench_realism.py --benchmark-only -s
"""
import json
import os

import pytest

from kneelib.config import data_root
from kneelib.synth.cohort import default_out_dir
from kneelib.train.realism import measure_realism

SETTINGS = json.loads(os.environ.get("KNEELIB_BENCH_REALISM_SETTINGS", "{}"))


def _inputs():
    cohort = default_out_dir("default", 0)
    real = data_root()
    if not (cohort / "contents.csv").is_file():
        pytest.skip(f"default cohort not generated at {cohort} (run a chapter at default, or "
                    f"kneelib.synth.cohort.generate_cohort('default', seed=0))")
    missing = [name for name in ("chen_kl_radiographs", "pykneer_knee_mri") if not (real / name).is_dir()]
    if missing:
        pytest.skip(f"real data {missing} not found under KNEELIB_DATA={real}")
    return cohort, real


def test_realism_of_default_cohort(benchmark):
    cohort, real = _inputs()
    result = benchmark.pedantic(measure_realism, args=(cohort, real, SETTINGS, 0), rounds=1, iterations=1)
    transfer = result["transfer"]
    lines = [f"\nrealism of {cohort} (seed 0), wall {result['seconds']['total'] / 60:.1f} min",
             f"  sim-to-real transfer: KL quadratic kappa on real Chen val {transfer['kappa']:.2f} "
             f"[{transfer['ci_low']:.2f}, {transfer['ci_high']:.2f}] ({transfer['n_test_crops']} crops, "
             f"CI over {transfer['unit']}); target >= 0.5"]
    reference = result["real_reference"]
    if reference:
        lines.append(f"  its ceiling, the same grader trained on {reference['n_train_crops']} real train crops: "
                     f"{reference['kappa']:.2f} [{reference['ci_low']:.2f}, {reference['ci_high']:.2f}]")
        graded = reference["real_to_synthetic"]
        lines.append(f"  real-to-synthetic: that real-trained grader on {graded['n_crops']} synthetic crops, kappa "
                     f"against the planted KL {graded['kappa']:.2f} [{graded['ci_low']:.2f}, {graded['ci_high']:.2f}]"
                     f"; mean grade read per planted KL 0-4: "
                     f"{', '.join(f'{g:.2f}' for g in graded['expected_grade'])}")
    for part, label in (("radiograph_discriminability", "radiograph crops"), ("mri_discriminability", "DESS slices")):
        r = result[part]
        lines.append(f"  discriminability, {label}: AUC {r['auc']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                     f"(test {r['n_test_real']} real / {r['n_test_synthetic']} synthetic; Grad-CAM border share "
                     f"real {r['gradcam']['border_share']['real']:.0%}, synthetic "
                     f"{r['gradcam']['border_share']['synthetic']:.0%}); target <= 0.85")
    lines.append(f"  caveat (MRI): {result['mri_discriminability']['caveat']}")
    print("\n".join(lines))
    benchmark.extra_info.update({"transfer_kappa": transfer["kappa"],
                                 "reference_kappa": reference["kappa"] if reference else None,
                                 "radiograph_auc": result["radiograph_discriminability"]["auc"],
                                 "mri_auc": result["mri_discriminability"]["auc"]})
    assert -1 <= transfer["kappa"] <= 1


def test_realism_development_check(benchmark):
    """The renderer's development loop (:mod:`kneelib.train.realism_development`): real ``train`` crops only.

    200 participants of the development seed (radiographs only, no files), three graders, about
    8 minutes on 2 cores. Select it with ``-k development``.
    """
    from kneelib.train.realism_development import DEVELOPMENT_SEED, development_check

    real = data_root()
    if not (real / "chen_kl_radiographs").is_dir():
        pytest.skip(f"Chen KL crops not found under KNEELIB_DATA={real}")
    result = benchmark.pedantic(development_check, args=(real,), rounds=1, iterations=1)
    print(f"\nrealism development check (seed {DEVELOPMENT_SEED}, {result['n_synthetic_crops']} synthetic crops; "
          f"real train crops only), {result['seconds']['total'] / 60:.1f} min\n"
          f"  discriminator AUC {result['discriminator_auc']:.3f} [{result['discriminator_auc_ci_low']:.3f}, "
          f"{result['discriminator_auc_ci_high']:.3f}] against {result['n_real_disc']} real crops\n"
          f"  sim-to-real proxy kappa {result['proxy_kappa']:.3f} [{result['proxy_kappa_ci_low']:.3f}, "
          f"{result['proxy_kappa_ci_high']:.3f}] on {result['n_real_proxy']} real crops (the graders' mean; "
          f"each alone: {', '.join(f'{k:.3f}' for k in result['proxy_kappa_per_grader'])}); predicted grades "
          f"{result['proxy_predicted_counts']} against reference {result['proxy_reference_counts']}; "
          f"grader on held-out synthetic subjects {result['synthetic_internal_kappa']:.2f}")
    benchmark.extra_info.update({key: result[key] for key in ("discriminator_auc", "proxy_kappa",
                                                               "synthetic_internal_kappa")})


def test_realism_real_to_synthetic_check(benchmark):
    """The renderer's quick screen: three graders trained once on real ``train`` crops grade the development films.

    100 participants of the development seed (400 crops); each grader is trained on first use
    (about 4 minutes on 2 cores, then cached), after which a screen takes about 45 s. Select
    it with ``-k real_to_synthetic``.
    """
    from kneelib.train.realism_development import DEVELOPMENT_SEED, real_to_synthetic_check

    real = data_root()
    if not (real / "chen_kl_radiographs").is_dir():
        pytest.skip(f"Chen KL crops not found under KNEELIB_DATA={real}")
    result = benchmark.pedantic(real_to_synthetic_check, args=(real,), rounds=1, iterations=1)
    print(f"\nreal-to-synthetic check (seed {DEVELOPMENT_SEED}, {result['n_crops']} synthetic crops; graders trained "
          f"on real train crops only, {result['real_internal_kappa']:.2f} on held-out real subjects)\n"
          f"  kappa against the planted KL {result['kappa']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
          f"(each grader alone: {', '.join(f'{k:.3f}' for k in result['kappa_per_grader'])}); "
          f"mean grade read per planted KL 0-4: {', '.join(f'{g:.2f}' for g in result['expected_grade'])}; "
          f"predicted grades {result['predicted_counts']} against planted {result['planted_counts']}")
    benchmark.extra_info.update({"real_to_synthetic_kappa": result["kappa"]})
