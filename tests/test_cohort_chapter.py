"""The data chapter (notebooks/cohort.py) and the stages it composes: issue 9, items 14, 16-19, 21.

- published values come from book/published.yml only (no restated constants);
- label shares carry CIs whose unit fits (Wilson for participants, cluster bootstrap for knees);
- the WOMAC subgroup follows paper 000 ("difference greater than 2");
- QC tables and the inventory show no local paths;
- the parameters cell equals params/cohort/default.yaml;
- numbers in the prose are glued from computed values;
- the executed smoke page carries no stderr, no local path, and every published quantity
  has a reproduced value.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kneelib.data import labels, qc, summary
from kneelib.papers import cohort
from kneelib.stats.proportions import proportion_with_ci, wilson_interval
from kneelib.synth import ground_truth

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "cohort.py"


def _two_knee_table(womac_pairs):
    rows = []
    for i, (right, left) in enumerate(womac_pairs):
        for side, womac, pain in ((1, right, 1.0), (2, left, 0.0)):
            for visit in (0, 12):
                rows.append({"ID": str(i), "SIDE": side, "VISIT": visit, "frequent_pain": pain, "womac_pain": womac,
                             "knee_pain_any_12m": 0.0, "knee_pain_months_12m": 0.0, "widespread_pain": 0.0,
                             "min_medial_jsw_mm": 4.0, "kl_grade": 1})
    return labels.add_derived_labels(pd.DataFrame(rows))


def test_womac_subgroup_is_a_difference_greater_than_2():
    # paper 000, Methods: "a WOMAC pain score difference greater than 2"; OAI WOMAC can be fractional
    table = _two_knee_table([(4.5, 2.0), (4.0, 2.0), (5.0, 2.0), (2.0, 2.0)])
    found = summary.label_prevalences(table).set_index("key").loc["womac_difference_above_2"]
    assert (found["count"], found["of"]) == (2, 4)  # 2.5 and 3 count; exactly 2 does not


def test_participant_shares_use_the_wilson_interval():
    from statsmodels.stats.proportion import proportion_confint

    ci = proportion_with_ci([True] * 3 + [False] * 7)
    assert (ci.count, ci.of) == (3, 10) and ci.method.startswith("Wilson")
    assert np.allclose((ci.ci_low, ci.ci_high), proportion_confint(3, 10, method="wilson"))
    assert np.isnan(wilson_interval(0, 0)[0])


def test_knee_shares_resample_participants():
    # both knees of a participant agree: 40 independent answers, not 80
    hit = np.repeat(np.arange(40) % 4 == 0, 2)
    groups = np.repeat(np.arange(40), 2)
    clustered = proportion_with_ci(hit, groups=groups, seed=1)
    naive_low, naive_high = wilson_interval(int(hit.sum()), len(hit))
    assert clustered.method.startswith("cluster bootstrap")
    assert clustered.ci_high - clustered.ci_low > 1.15 * (naive_high - naive_low)
    assert proportion_with_ci(hit, groups=groups, seed=1) == clustered


def test_published_values_are_read_from_published_yml_only():
    values = yaml.safe_load((ROOT / "book" / "published.yml").read_text())["values"]["cohort"]
    table = ground_truth.causal_model_knee_table(10, seed=0)
    comparisons = {c.quantity: c for c in cohort.cohort_comparisons(None, table, "image")}
    assert comparisons["knees in the chronic-pain thickness regression, femur"].published == \
        values["morales_table3_n_knees"]["value"]
    counts = values["kl_counts"]["counts"]
    assert comparisons["knee time points with KL 0, % [image cohort]"].published == \
        round(100.0 * counts[0] / sum(counts.values()), 1)
    unilateral = values["prevalences"]["unilateral_frequent_pain"]
    assert comparisons["unilateral frequent pain (paper 000), % [image cohort]"].published == \
        round(100.0 * unilateral["count"] / unilateral["of"], 1)
    # no module of the chapter restates a published number
    for path in (ROOT / "kneelib" / "papers" / "cohort.py", NOTEBOOK):
        numbers = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, (int, float))}
        assert not numbers & {8103, 3972, 5335, 2897, 811, 0.329, 1606, 4796, 721, 1529, 0.14, 2151, 60.7, 56.9}, path


def test_qc_paths_are_relative_to_the_cohort_root(tmp_path):
    table = pd.DataFrame({"path": [str(tmp_path / "1.C.2" / "x")],
                          "reason": [f"cannot read DICOM file {tmp_path.resolve()}/1.C.2/x: truncated"]})
    shown = qc.relative_to_root(table, tmp_path)
    assert shown.loc[0, "path"] == "<cohort>/1.C.2/x"
    assert str(tmp_path) not in shown.loc[0, "reason"] and "<cohort>/1.C.2/x" in shown.loc[0, "reason"]


def test_whole_cohort_qc_is_the_same_on_one_or_two_workers(tmp_path):
    """load_every_series spreads participants over workers; the tables do not change."""
    import shutil

    from kneelib.synth.cohort import generate_cohort

    source = generate_cohort(preset="smoke", seed=0, n_subjects=2, progress=False)
    root = tmp_path / "cohort"
    shutil.copytree(source, root)
    contents = pd.read_csv(root / "contents.csv", dtype=str, keep_default_na=False)
    first_series = contents[contents["SeriesDescription"].str.startswith("SAG_IW_TSE")]["Folder"].iloc[0]
    shutil.rmtree(root / first_series)  # an excluded series, recorded with its reason
    one, inventory_one = cohort.load_every_series(root, progress=False, n_jobs=1)  # the series it was written with
    two, inventory_two = cohort.load_every_series(root, progress=False, n_jobs=2)
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(inventory_one, inventory_two)
    assert len(one) == 1 and one.loc[0, "series"].startswith("SAG_IW_TSE") and str(tmp_path) not in one.loc[0, "path"]
    assert inventory_one["loaded"].sum() == inventory_one["requested"].sum() - 1


def test_qc_display_table_keeps_each_reason_to_its_first_clause():
    positions = ", ".join(f"{50 + 1.75 * i:.3f}" for i in range(62))
    table = pd.DataFrame({
        "series": ["SAG_3D_DESS_RIGHT", "SAG_IW_TSE_LEFT", "COR_IW_TSE_LEFT"],
        "reason": [f"uneven slice spacing in <cohort>/0.C.2/9000011/x: gap of 5.250 mm; slice positions: [{positions}]",
                   "series missing from the image index",
                   "word " * 60],
        "path": ["<cohort>/0.C.2/9000011/x", "", ""]})
    shown = qc.qc_display_table(table, max_reason_chars=80)
    assert "path" not in shown.columns and "path" in table.columns
    assert shown.loc[0, "reason"] == "uneven slice spacing in <cohort>/0.C.2/9000011/x: gap of 5.250 mm ..."
    assert shown.loc[1, "reason"] == "series missing from the image index"
    assert len(shown.loc[2, "reason"]) <= 84 and shown.loc[2, "reason"].endswith("word ...")
    with pytest.raises(ValueError, match="max_reason_chars"):
        qc.qc_display_table(table, max_reason_chars=5)


def test_cohort_location_hides_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KNEELIB_CACHE", str(tmp_path))
    assert cohort.cohort_location(tmp_path / "synthetic" / "oai_smoke_seed0") == "$KNEELIB_CACHE/synthetic/oai_smoke_seed0"


def _cells(kind):
    import jupytext

    return [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == kind]


def test_parameters_cell_equals_the_default_parameter_set():
    cell = next(c for c in _cells("code") if "parameters" in c.metadata.get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == yaml.safe_load((ROOT / "params" / "cohort" / "default.yaml").read_text())


def test_prose_numbers_are_glued_from_computed_values():
    prose = "\n".join(c.source for c in _cells("markdown"))
    used = set(re.findall(r"\{glue:text\}`([a-z0-9_]+)", prose))
    table = ground_truth.causal_model_knee_table(10, seed=0)
    prevalences = cohort.label_prevalences_by_source({"image": table, "model": table})
    assert used and used <= set(cohort.headline_numbers(prevalences, table)) | set(cohort.realism_numbers(None))
    # numbers once typed into the prose are glued now
    for typed in ("60.7", "9.1 years", "56.9"):
        assert typed not in prose, typed


def test_modules_of_the_chapter_stay_small():
    for name in ("papers/cohort.py", "data/qc.py", "data/inventory.py", "data/summary.py", "synth/ground_truth.py",
                 "stats/proportions.py", "figures/causal_dag.py", "figures/mri_sequences.py",
                 "figures/radiograph_crops.py", "figures/cohort_distributions.py", "figures/synthetic_vs_real.py"):
        lines = len((ROOT / "kneelib" / name).read_text().splitlines())
        assert lines <= 600, f"{name}: {lines} lines"


@pytest.mark.notebook
def test_executed_smoke_page_is_clean_and_complete(tmp_path, monkeypatch):
    import json

    import nbformat

    from kneelib.runner import run_notebook

    monkeypatch.setenv("KNEELIB_METRICS_DIR", str(tmp_path))
    executed = run_notebook("cohort", params="smoke", out_dir=tmp_path, progress=False)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert [o for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"] == []
    local = re.compile(r"(/root/|/home/|/work/|/tmp/|site-packages|\.cache/)")
    for output in outputs:
        for mime, text in output.get("data", {}).items():
            if mime.startswith("text/"):
                assert not local.search(text if isinstance(text, str) else "".join(text)), text[:300]
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in outputs}
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert set(re.findall(r"\{glue:text\}`([a-z0-9_]+)", prose)) <= glued
    metrics = json.loads((tmp_path / "cohort.metrics.json").read_text())
    rows = metrics["comparisons"] if isinstance(metrics, dict) else metrics
    synthetic = [r for r in rows if "[" in r["quantity"]]
    assert synthetic and all(r["reproduced"] is not None for r in synthetic)


def test_ground_truth_reader_is_not_part_of_the_generator_hash(tmp_path, monkeypatch):
    from kneelib.synth import cohort as generator

    before = generator._generator_code_hash()
    source = Path(generator.__file__).parent / "ground_truth.py"
    assert source.is_file() and "ground_truth.py" in generator._READER_MODULES
    assert generator._generator_code_hash() == before
