import json

import numpy as np

from kneelib.report import Comparison, comparison_table, load_metrics, save_metrics


def test_metrics_round_trip_and_table(tmp_path):
    rows = [
        Comparison("demo", "AUC, Model A", 0.808, np.float64(0.71), 0.65, 0.77, "Fig. 4A", "synthetic"),
        Comparison("demo", "kappa", None, float("nan")),
    ]
    path = save_metrics("demo", rows, params={"seed": np.int64(1)}, out_dir=tmp_path)
    payload = json.loads(path.read_text())
    assert payload["params"] == {"seed": 1}
    assert payload["comparisons"][0]["reproduced"] == 0.71
    assert payload["comparisons"][1]["reproduced"] is None  # NaN is stored as null
    assert load_metrics(tmp_path)["demo"]["study"] == "demo"
    table = comparison_table(rows)
    assert list(table["reproduced"]) == ["0.710 [0.650, 0.770]", "undefined"]
    assert table.loc[0, "published"] == "0.808"
